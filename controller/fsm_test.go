package controller

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/hashicorp/raft"
)

var t0 = time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)

// peerErrorGW1 is why gw1 reports, in history(), two peers left out.
const peerErrorGW1 = "invalid peer: peer 0 (gw2, k2): allowed IP 10.49.0.0/16 already belongs to k9\n" +
	"invalid peer: peer 3 (cổng-4, bad): public key: wgtypes: failed to parse base64-encoded key"

func meta(actor string) Meta { return Meta{Actor: actor, At: t0} }

// history is a run of commands that exercises every command type.
func history() []struct {
	t   CommandType
	req any
} {
	h := []struct {
		t   CommandType
		req any
	}{
		{CmdInitNetwork, &InitNetworkRequest{Meta: meta("node:ctl1"), OverlayPrefix: netip.MustParsePrefix("100.64.0.0/24")}},
		{CmdAgencyUpsert, &AgencyUpsertRequest{Meta: meta("op"), Code: "000.00.00.H29", Name: "Ủy ban nhân dân tỉnh Quảng Ninh"}},
		{CmdAgencyUpsert, &AgencyUpsertRequest{Meta: meta("op"), Code: "000.00.00.H49", Name: "Ủy ban nhân dân tỉnh Quảng Nam"}},
		{CmdGatewayAdd, &GatewayAddRequest{Meta: meta("op"), ID: "gw1", Agency: "000.00.00.H29", LANs: []netip.Prefix{netip.MustParsePrefix("10.29.0.0/16")}}},
		{CmdGatewayAdd, &GatewayAddRequest{Meta: meta("op"), ID: "gw2", Agency: "000.00.00.H49"}},
		{CmdTokenIssue, &TokenIssueRequest{Meta: meta("off"), Gateway: "gw1", TokenHash: "h1", Expires: t0.Add(time.Hour)}},
		{CmdTokenIssue, &TokenIssueRequest{Meta: meta("off"), Gateway: "gw2", TokenHash: "h2", Expires: t0.Add(time.Hour)}},
		{CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("gateway:gw1"), Gateway: "gw1", TokenHash: "h1", PublicKey: "k1", CertSerial: "01", CertExpires: t0.Add(24 * time.Hour)}},
		{CmdPolicyPublish, &PolicyPublishRequest{Meta: meta("off"), Name: "p.yaml", Source: "version: 1\n"}},
		{CmdGatewayReport, &GatewayReportRequest{Meta: meta("gateway:gw1"), Gateway: "gw1", Report: api.Report{PolicyVersion: 1, RaftIndex: 9, RulesetDigest: "sha256:x"}}},
		{CmdMemberUpsert, &MemberUpsertRequest{Meta: meta("node:ctl1"), Node: "ctl1", RaftAddr: "127.0.0.11:7000", APIAddr: "127.0.0.11:7443"}},
		{CmdMemberUpsert, &MemberUpsertRequest{Meta: meta("op"), Node: "ctl2", RaftAddr: "127.0.0.12:7000", APIAddr: "127.0.0.12:7443"}},
		{CmdMemberUpsert, &MemberUpsertRequest{Meta: meta("op"), Node: "ctl3", RaftAddr: "127.0.0.13:7000", APIAddr: "127.0.0.13:7443"}},
		{CmdMemberRemove, &MemberRemoveRequest{Meta: meta("op"), Node: "ctl3"}},
		{CmdPersonUpsert, &PersonUpsertRequest{Meta: meta("node:ctl1"), Name: "op", Role: "operator", Serial: "0a1b", Status: api.PersonActive}},
		{CmdPersonUpsert, &PersonUpsertRequest{Meta: meta("node:ctl1"), Name: "off", Role: "officer", Serial: "0c", Status: api.PersonActive}},
		{CmdPersonUpsert, &PersonUpsertRequest{Meta: meta("off"), Name: "off2", Role: "officer", Serial: "0d", Status: api.PersonActive}},
		{CmdPersonUpsert, &PersonUpsertRequest{Meta: meta("off"), Name: "aud", Role: "auditor", Serial: "0e", Status: api.PersonRevoked}},
		{CmdRequestCreate, &RequestCreateRequest{Meta: meta("op"), ID: "r1", Role: "operator", Kind: api.RequestToken, Gateway: "gw2", TTL: time.Hour}},
		{CmdRequestDecide, &RequestDecideRequest{Meta: meta("off"), ID: "r1", Role: "officer", Approve: true, TokenHash: "h3"}},
		{CmdRequestCreate, &RequestCreateRequest{Meta: meta("off"), ID: "r2", Role: "officer", Kind: api.RequestPolicy, PolicyName: "p2.yaml", PolicySource: "version: 1\n"}},
		{CmdRequestDecide, &RequestDecideRequest{Meta: meta("off2"), ID: "r2", Role: "officer", Approve: true}},
		{CmdRequestCreate, &RequestCreateRequest{Meta: meta("op"), ID: "r3", Role: "operator", Kind: api.RequestRevoke, Gateway: "gw1", Reason: "test"}},
		{CmdRequestDecide, &RequestDecideRequest{Meta: meta("off"), ID: "r3", Role: "officer", Approve: false}},
		{CmdRequestCreate, &RequestCreateRequest{Meta: meta("off"), ID: "r4", Role: "officer", Kind: api.RequestRevoke, Gateway: "gw1"}},
		{CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("gateway:gw2"), Gateway: "gw2", TokenHash: "h3", PublicKey: "k2", CertSerial: "2a", CertExpires: t0.Add(24 * time.Hour),
			Cert: &api.Certificate{Serial: "2a", Kind: "gateway", Subject: "gw2", Gateway: "gw2", Agency: "000.00.00.H49", SANs: []string{"gw2.gateway.govnet"}, Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(24 * time.Hour)}}},
		{CmdCertRecord, &CertRecordRequest{Meta: meta("node:ctl1"), Certs: []api.Certificate{
			{Serial: "c", Kind: "person", Subject: "off", Role: "officer", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(90 * 24 * time.Hour)},
			{Serial: "f", Kind: "node", Subject: "ctl1", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(365 * 24 * time.Hour)},
		}}},
		{CmdGatewayRenew, &GatewayRenewRequest{Meta: meta("gateway:gw2"), Gateway: "gw2", OldSerial: "2a",
			Cert: api.Certificate{Serial: "2b", Kind: "gateway", Subject: "gw2", Gateway: "gw2", Agency: "000.00.00.H49", Issuer: "abcd", NotBefore: t0.Add(16 * time.Hour), NotAfter: t0.Add(40 * time.Hour)}}},
		{CmdGatewayRenews, &GatewayRenewsRequest{Meta: meta("node:ctl1"), Renewals: []GatewayRenewRequest{
			{Meta: meta("gateway:gw2"), Gateway: "gw2", OldSerial: "2b",
				Cert: api.Certificate{Serial: "2c", Kind: "gateway", Subject: "gw2", Gateway: "gw2", Agency: "000.00.00.H49", Issuer: "abcd", NotBefore: t0.Add(32 * time.Hour), NotAfter: t0.Add(56 * time.Hour)}}}}},
		{CmdIssuerUpsert, &IssuerUpsertRequest{Meta: meta("node:ctl1"), Issuer: "abcd", Node: "ctl1", HTTPAddr: "127.0.0.11:7444"}},
		{CmdCertRevoke, &CertRevokeRequest{Meta: meta("off"), Serial: "2a", Reason: 4}},
		{CmdCRLPublish, &CRLPublishRequest{Meta: meta("node:ctl1"), Issuer: "abcd", Number: 1, Covers: 30, ThisUpdate: t0, NextUpdate: t0.Add(24 * time.Hour), DER: []byte{0x30, 0x00}}},
		{CmdRequestCreate, &RequestCreateRequest{Meta: meta("op"), ID: "r5", Role: "operator", Kind: api.RequestRevoke, Gateway: "gw2", ReasonCode: 1, Reason: "key lost"}},
		{CmdRequestDecide, &RequestDecideRequest{Meta: meta("off2"), ID: "r5", Role: "officer", Approve: true}},
		{CmdGatewayReports, &GatewayReportsRequest{Meta: meta("node:ctl1"), Reports: []GatewayReportRequest{
			{Meta: meta("gateway:gw1"), Gateway: "gw1", Report: api.Report{PolicyVersion: 1, RaftIndex: 10, RulesetDigest: "sha256:y",
				PeersLeftOut: 2, PeerError: peerErrorGW1}}}}},
		{CmdGatewayRefreshes, &GatewayReportsRequest{Meta: meta("node:ctl2"), Reports: []GatewayReportRequest{
			{Meta: Meta{Actor: "gateway:gw1", At: t0.Add(time.Minute)}, Gateway: "gw1", Report: api.Report{PolicyVersion: 1, RaftIndex: 10, RulesetDigest: "sha256:y", LastHandshake: t0,
				PeersLeftOut: 2, PeerError: peerErrorGW1}}}}},
		// The same, packed (controller/reportcodec.go): gw2 failed to
		// apply a newer view, then refreshed.
		{CmdGatewayReportsPacked, &GatewayReportsRequest{Meta: meta("node:ctl3"), Reports: []GatewayReportRequest{
			{Meta: meta("gateway:gw2"), Gateway: "gw2", Report: api.Report{PolicyVersion: 1, RaftIndex: 9, RulesetDigest: "sha256:z", Peers: 1,
				FailedIndex: 10, ApplyError: "nft: netlink: cannot allocate memory"}}}}},
		{CmdGatewayRefreshesPacked, &GatewayReportsRequest{Meta: meta("node:ctl3"), Reports: []GatewayReportRequest{
			{Meta: Meta{Actor: "gateway:gw2", At: t0.Add(time.Minute)}, Gateway: "gw2", Report: api.Report{PolicyVersion: 1, RaftIndex: 9, RulesetDigest: "sha256:z", Peers: 1,
				LastHandshake: t0.Add(30 * time.Second), FailedIndex: 10, ApplyError: "nft: netlink: cannot allocate memory"}}}}},
		{CmdStateRestored, &StateRestoredRequest{Meta: meta("off"), BackupSHA256: "ab", BackupIndex: 7}},
		{CmdRenewCall, &RenewCallRequest{Meta: meta("off"), Reason: "intermediate re-keyed"}},
		{CmdRequestCreate, &RequestCreateRequest{Meta: meta("off"), ID: "r6", Role: "officer", Kind: api.RequestRestore, BackupSHA256: strings.Repeat("ab", 32)}},
		{CmdRequestDecide, &RequestDecideRequest{Meta: meta("off2"), ID: "r6", Role: "officer", Approve: true}},
		{CmdRequestCreate, &RequestCreateRequest{Meta: meta("off"), ID: "r7", Role: "officer", Kind: api.RequestPerson, PersonName: "carol", PersonRole: "auditor", Serial: "0f"}},
		{CmdRequestDecide, &RequestDecideRequest{Meta: meta("off2"), ID: "r7", Role: "officer", Approve: true}},
		// People's credentials after init (controller/personcert.go):
		// dave invited, enrolled and renewed; frank invited in four eyes.
		{CmdPersonInvite, &PersonInviteRequest{Meta: meta("off"), Name: "dave", Role: "operator", TokenHash: "h4", Expires: t0.Add(time.Hour)}},
		{CmdPersonEnroll, &PersonEnrollRequest{Meta: meta("dave"), Name: "dave", TokenHash: "h4",
			Cert: api.Certificate{Serial: "d1", Kind: "person", Subject: "dave", Role: "operator", Issuer: "abcd", KeySHA256: "aa", NotBefore: t0, NotAfter: t0.Add(90 * 24 * time.Hour)}}},
		{CmdPersonRenew, &PersonRenewRequest{Meta: meta("dave"), Name: "dave", From: "d1",
			Cert: api.Certificate{Serial: "d2", Kind: "person", Subject: "dave", Role: "operator", Issuer: "abcd", KeySHA256: "bb", NotBefore: t0, NotAfter: t0.Add(90 * 24 * time.Hour)}}},
		{CmdRequestCreate, &RequestCreateRequest{Meta: meta("off"), ID: "r8", Role: "officer", Kind: api.RequestInvite, PersonName: "frank", PersonRole: "auditor", TTL: time.Hour, KeySHA256: strings.Repeat("cd", 32)}},
		{CmdRequestDecide, &RequestDecideRequest{Meta: meta("off2"), ID: "r8", Role: "officer", Approve: true, TokenHash: "h5"}},
		// The registry's operations (controller/agency.go): a province
		// with a district and a commune, the commune moved under the
		// province (districts abolished), the province merged into H29
		// (its gateway gw4 with it), its empty district closed, gw4
		// decommissioned.
		{CmdAgencyImport, &AgencyImportRequest{Meta: meta("op"), Agencies: []api.AgencyRow{
			{Code: "000.00.00.H01", Name: "Ủy ban nhân dân tỉnh Hà Giang", Line: 2},
			{Code: "000.00.04.H01", Name: "Huyện Vị Xuyên", Line: 3},
			{Code: "000.12.04.H01", Name: "Xã Đạo Đức", Parent: "000.00.04.H01", Line: 4},
			{Code: "000.00.00.H49", Name: "Ủy ban nhân dân thành phố Đà Nẵng", Line: 5},
		}}},
		{CmdGatewayAdd, &GatewayAddRequest{Meta: meta("op"), ID: "gw3", Agency: "000.12.04.H01"}},
		{CmdGatewayAdd, &GatewayAddRequest{Meta: meta("op"), ID: "gw4", Agency: "000.00.00.H01"}},
		{CmdAgencyReparent, &AgencyReparentRequest{Meta: meta("op"), Code: "000.12.04.H01", Parent: "000.00.00.H01"}},
		{CmdAgencyMerge, &AgencyMergeRequest{Meta: meta("op"), Sources: []string{"000.00.00.H01"}, Code: "000.00.00.H29"}},
		{CmdAgencyClose, &AgencyCloseRequest{Meta: meta("op"), Code: "000.00.04.H01"}},
		{CmdCertRecord, &CertRecordRequest{Meta: meta("node:ctl1"), Certs: []api.Certificate{
			{Serial: "e5", Kind: "gateway", Subject: "gw4", Gateway: "gw4", Agency: "000.00.00.H01", Issuer: "ef01", NotBefore: t0, NotAfter: t0.Add(24 * time.Hour)},
		}}},
		{CmdGatewayDecommission, &GatewayDecommissionRequest{Meta: meta("off"), Gateway: "gw4", Reason: "replaced"}},
		// gw1 enrolls again (a re-enrollment token): a new key, the same
		// address; the revocation request r4 is decided first.
		{CmdRequestDecide, &RequestDecideRequest{Meta: meta("off2"), ID: "r4", Role: "officer", Approve: false}},
		{CmdTokenIssue, &TokenIssueRequest{Meta: meta("off"), Gateway: "gw1", TokenHash: "h6", Expires: t0.Add(time.Hour), Reenroll: true}},
		{CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("gateway:gw1"), Gateway: "gw1", TokenHash: "h6", PublicKey: "k1b", CertSerial: "1b", CertExpires: t0.Add(24 * time.Hour)}},
		// A gateway registered with its LANs checked in Apply.
		{CmdGatewayRegister, &GatewayAddRequest{Meta: meta("op"), ID: "gw8", Agency: "000.00.00.H29", LANs: []netip.Prefix{netip.MustParsePrefix("10.31.0.0/16")}}},
		// Four days on: gw2's first two certificates (2a revoked) go to
		// the archive; 2c, its current one, stays, as do 99 (unknown)
		// and c (not expired).
		{CmdCertArchive, &CertArchiveRequest{Meta: Meta{Actor: "node:ctl1", At: t0.Add(96 * time.Hour)}, Before: t0.Add(72 * time.Hour), Serials: []string{"2a", "2b", "2c", "99", "c"}}},
		// Levels (controller/level.go): ctl1 recorded at level 2, ctl2,
		// added by an operator, reports it; the cluster, initialised
		// before levels (level 1), is raised.
		{CmdMemberUpsert, &MemberUpsertRequest{Meta: meta("node:ctl1"), Node: "ctl1", RaftAddr: "127.0.0.11:7000", APIAddr: "127.0.0.11:7443", Level: 2}},
		{CmdMemberUpsert, &MemberUpsertRequest{Meta: meta("node:ctl2"), Node: "ctl2", RaftAddr: "127.0.0.12:7000", APIAddr: "127.0.0.12:7443", Level: 2, Report: true}},
		{CmdClusterLevel, &ClusterLevelRequest{Meta: meta("node:ctl1"), Level: 2}},
	}
	// A checkpoint of the chain's third entry, as the commands above make it.
	scratch := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	for i, c := range h {
		b, _ := encodeCommand(c.t, c.req)
		scratch.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: b})
	}
	after, err := scratch.State().Audit(2)
	if err != nil || len(after) == 0 {
		panic(fmt.Sprintf("audit chain after 2: %v, %v", after, err))
	}
	third := after[0]
	cp := api.AuditCheckpoint{Seq: third.Seq, Hash: third.Hash, At: t0, Node: "ctl1", Signature: "c2ln", Chain: "-----BEGIN CERTIFICATE-----"}
	h = append(h, struct {
		t   CommandType
		req any
	}{CmdAuditCheckpoint, &AuditCheckpointRequest{Meta: meta("node:ctl1"), Node: "ctl1", Checkpoint: cp}})
	// Last, a backup of the state so far restored: nothing was
	// registered since, so it adds its audit entry and changes nothing
	// else.
	b, _ := encodeCommand(h[len(h)-1].t, h[len(h)-1].req)
	scratch.Apply(&raft.Log{Index: uint64(len(h)), Type: raft.LogCommand, Data: b})
	snap, err := scratch.Snapshot()
	var backup memSnapshotSink
	if err == nil {
		err = snap.Persist(&backup)
	}
	if err != nil {
		panic(fmt.Sprintf("backup of the history: %v", err))
	}
	// Restored as an earlier release wrote it (the whole backup), then as
	// this one does (what the restore takes from it).
	bk, err := readSnapshot(bytes.NewReader(backup.Bytes()), "")
	if err != nil {
		panic(fmt.Sprintf("backup of the history: %v", err))
	}
	defer bk.close()
	return append(h, histCmd{CmdBackupRestore, &BackupRestoreRequest{Meta: meta("off2"), Role: "officer", BackupSHA256: strings.Repeat("ab", 32), State: backup.Bytes()}},
		histCmd{CmdBackupRollBack, &BackupRestoreRequest{Meta: meta("off"), Role: "officer", BackupSHA256: strings.Repeat("ab", 32), RollBack: rollbackOf(bk)}})
}

// histCmd is one command of a test history.
type histCmd = struct {
	t   CommandType
	req any
}

// historyFSM is an FSM that applied history() and then more; it returns
// the next raft index.
func historyFSM(t testing.TB, more ...histCmd) (*FSM, uint64) {
	t.Helper()
	f := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	for i, c := range append(history(), more...) {
		if err := applyCmd(t, f, uint64(i+1), c.t, c.req); err != nil {
			t.Fatalf("command %d (%s): %v", i+1, c.t, err)
		}
	}
	return f, uint64(len(history()) + len(more) + 1)
}

func manySerials(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%x", i+1)
	}
	return out
}

func applyCmd(t testing.TB, f *FSM, index uint64, typ CommandType, req any) error {
	t.Helper()
	b, err := encodeCommand(typ, req)
	if err != nil {
		t.Fatal(err)
	}
	return f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: b}).(ApplyResult).Err
}

func snapshotBytes(t testing.TB, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSnapshotSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	return sink.Bytes()
}

// TestSnapshotIsACopy takes a snapshot after every command of the history
// and persists it only after the rest of the history was applied (which
// changes gateways, tokens and certificates in place): each must write
// the state as it was when it was taken, as Persist runs off the lock.
func TestSnapshotIsACopy(t *testing.T) {
	f := NewFSM(slog.Default(), nil)
	var want [][]byte
	var snaps []raft.FSMSnapshot
	for i, c := range history() {
		if err := applyCmd(t, f, uint64(i+1), c.t, c.req); err != nil {
			t.Fatalf("%s: %v", c.t, err)
		}
		want = append(want, snapshotBytes(t, f))
		snap, err := f.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, snap)
	}
	for i, snap := range snaps {
		sink := &memSnapshotSink{}
		if err := snap.Persist(sink); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(sink.Bytes(), want[i]) {
			t.Errorf("the snapshot taken after command %d (%s) wrote later changes:\n%s\n---\n%s", i+1, history()[i].t, want[i], sink.Bytes())
		}
	}
}

// TestSnapshotRoundTrip applies the history one command at a time and, after
// each, checks that a snapshot restored into a fresh FSM reproduces the
// state exactly: every command type survives snapshot and restore.
func TestSnapshotRoundTrip(t *testing.T) {
	f := NewFSM(slog.Default(), nil)
	for i, c := range history() {
		t.Run(c.t.String(), func(t *testing.T) {
			if err := applyCmd(t, f, uint64(i+1), c.t, c.req); err != nil {
				t.Fatalf("apply: %v", err)
			}
			before := snapshotBytes(t, f)
			g := NewFSM(slog.Default(), nil)
			if err := g.Restore(io.NopCloser(bytes.NewReader(before))); err != nil {
				t.Fatal(err)
			}
			if after := snapshotBytes(t, g); !bytes.Equal(before, after) {
				t.Fatalf("restore changed the state:\n%s\n---\n%s", before, after)
			}
			if g.State().Index() != uint64(i+1) {
				t.Fatalf("index %d", g.State().Index())
			}
		})
	}
	if p, ok := f.State().Person("carol"); !ok || p.Role != "auditor" || p.Serial != "0f" || p.Status != api.PersonActive {
		t.Fatalf("carol, registered through an approved request: %+v", p)
	}
	if p, _ := f.State().Policy(); p.Version != 2 || p.Actor != "off2" {
		t.Fatalf("policy approved by off2: %+v", p)
	}
	if tok, ok := f.State().token("h3"); !ok || tok.Gateway != "gw2" || tok.Issuer != "off" || !tok.Expires.Equal(t0.Add(time.Hour)) || tok.Enrolled != "2a" {
		t.Fatalf("token from the approved request: %+v", tok)
	}
	gw, _ := f.State().Gateway("gw1")
	if gw.Status != api.StatusEnrolled || gw.OverlayIP != netip.MustParseAddr("100.64.0.1") || !gw.Report.At.Equal(t0.Add(time.Minute)) || !gw.Report.LastHandshake.Equal(t0) {
		t.Fatalf("gw1 %+v", gw)
	}
	// The peers gw1 left out, as applied and as a snapshot restores them.
	restored := NewFSM(slog.Default(), nil)
	if err := restored.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, f)))); err != nil {
		t.Fatal(err)
	}
	for name, st := range map[string]*State{"applied": f.State(), "restored": restored.State()} {
		if rep := st.gatewayReport("gw1"); rep == nil || rep.PeersLeftOut != 2 || rep.PeerError != peerErrorGW1 {
			t.Errorf("%s: gw1's report %+v", name, rep)
		}
		// gw2's, packed: the refresh moved only its times on.
		if rep := st.gatewayReport("gw2"); rep == nil || rep.RulesetDigest != "sha256:z" || rep.FailedIndex != 10 || rep.ApplyError != "nft: netlink: cannot allocate memory" ||
			rep.Peers != 1 || !rep.At.Equal(t0.Add(time.Minute)) || !rep.LastHandshake.Equal(t0.Add(30*time.Second)) {
			t.Errorf("%s: gw2's report %+v", name, rep)
		}
	}
	// The inventory: gw2 enrolled with 2a (token asked by op, approved by
	// off), renewed to 2b, then in a batch to 2c, 2a revoked as
	// superseded, then the gateway revoked through a four-eyes request,
	// which revoked its valid certificates.
	if gw2, _ := f.State().Gateway("gw2"); gw2.Status != api.StatusRevoked || gw2.CertSerial != "2c" {
		t.Fatalf("gw2 %+v", gw2)
	}
	if c, _ := f.State().Certificate("2c"); c.Status != api.CertRevoked || c.Requester != "gateway:gw2" {
		t.Fatalf("2c %+v", c)
	}
	chain, err := f.State().Audit(0)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(chain, func(e api.AuditEntry) bool {
		return e.Action == "gateway-renews" && e.Actor == "node:ctl1" && e.Object == "gw2"
	}) {
		t.Fatal("no audit entry names the gateway the batch renewed")
	}
	if !slices.ContainsFunc(chain, func(e api.AuditEntry) bool {
		return e.Action == "gateway-reports-packed" && e.Actor == "node:ctl3" && e.Role == "node" && e.At.Equal(t0)
	}) {
		t.Fatal("no audit entry for the packed reports, with the batch's actor and time")
	}
	if !slices.ContainsFunc(chain, func(e api.AuditEntry) bool {
		return e.Action == "cert-archive" && e.Object == "2a,2b,2c,99,c"
	}) {
		t.Fatal("no audit entry names the certificates an archive command named")
	}
	// 2a and 2b were archived, and are still found as they were.
	if c, _ := f.State().Certificate("2a"); c.Status != api.CertRevoked || c.ReasonName != "superseded" || c.Requester != "op" || c.Approver != "off" || !c.Archived {
		t.Fatalf("2a %+v", c)
	}
	if c, _ := f.State().Certificate("02B"); c.Status != api.CertRevoked || c.Reason != 1 || c.RevokedBy != "off2" || c.Requester != "gateway:gw2" || !c.Archived {
		t.Fatalf("2b %+v", c)
	}
	if n := f.State().ArchivedCount(); n != 2 {
		t.Fatalf("%d archived, want 2a and 2b", n)
	}
	if c, _ := f.State().Certificate("2c"); c.Archived {
		t.Fatalf("gw2's current certificate was archived: %+v", c)
	}
	// In the inventory, 2c and gw4's e5 (revoked when gw4 was
	// decommissioned) are revoked; the metrics count the archived too.
	if got := f.State().Certificates(CertFilter{Revoked: true}); len(got) != 2 {
		t.Fatalf("revoked: %+v", got)
	}
	if cs := f.State().certStats(t0); cs.issued["gateway"] != 4 || cs.revokedN != 2 || cs.archived != 2 || cs.revoked["superseded"] != 1 {
		t.Fatalf("metrics: %+v", cs)
	}
	if c, _ := f.State().Certificate("e5"); c.Status != api.CertRevoked || c.ReasonName != "cessationOfOperation" {
		t.Fatalf("e5 %+v", c)
	}
	if gw4, _ := f.State().Gateway("gw4"); gw4.Status != api.StatusDecommissioned || gw4.Agency != "000.00.00.H29" {
		t.Fatalf("gw4 %+v", gw4)
	}
	if got := f.State().Certificates(CertFilter{Agency: "000.00.00.H49"}); len(got) != 1 {
		t.Fatalf("of H49: %+v", got)
	}
	if c, _ := f.State().Certificate("2c"); c.RenewedFrom != "2b" {
		t.Fatalf("2c renewed from %q, want 2b", c.RenewedFrom)
	}
	if gw1, _ := f.State().Gateway("gw1"); gw1.PublicKey != "k1b" || gw1.CertSerial != "1b" || gw1.OverlayIP != netip.MustParseAddr("100.64.0.1") || gw1.Status != api.StatusEnrolled {
		t.Fatalf("gw1 after re-enrolling: %+v", gw1)
	}
	if dave, _ := f.State().Person("dave"); dave.Serial != "d2" || dave.Previous != "d1" || dave.Role != "operator" || dave.Status != api.PersonActive {
		t.Fatalf("dave %+v", dave)
	}
	if c, _ := f.State().Certificate("d1"); c.Requester != "off" || c.Approver != "off" || c.Status != api.CertValid {
		t.Fatalf("d1 %+v", c)
	}
	if tok, ok := f.State().token("h5"); !ok || tok.Person != "frank" || tok.Role != "auditor" || tok.Requester != "off" || tok.Issuer != "off2" {
		t.Fatalf("frank's invitation %+v", tok)
	}
	if got := f.State().Certificates(CertFilter{Expiring: 100 * 24 * time.Hour, Now: t0}); len(got) != 3 || got[0].Serial != "c" {
		t.Fatalf("expiring: %+v", got)
	}
	if ir, _ := f.State().issuer("abcd"); ir.CRL == nil || ir.CRL.Number != 1 || ir.LastRevocation != 34 || ir.HTTPAddr != "127.0.0.11:7444" {
		t.Fatalf("issuer %+v", ir)
	}
}

// TestApplyRejects checks that every refused command leaves the state as it was.
func TestApplyRejects(t *testing.T) {
	for _, tt := range []struct {
		name string
		t    CommandType
		req  any
	}{
		{"second overlay", CmdInitNetwork, &InitNetworkRequest{OverlayPrefix: netip.MustParsePrefix("10.0.0.0/8")}},
		{"bad code", CmdAgencyUpsert, &AgencyUpsertRequest{Code: "H29", Name: "x"}},
		{"orphan", CmdAgencyUpsert, &AgencyUpsertRequest{Code: "000.00.01.H01", Name: "x"}},
		{"no name", CmdAgencyUpsert, &AgencyUpsertRequest{Code: "000.00.00.H01", Name: " "}},
		{"dup gateway", CmdGatewayAdd, &GatewayAddRequest{ID: "gw1", Agency: "000.00.00.H29"}},
		{"bad id", CmdGatewayAdd, &GatewayAddRequest{ID: "GW 1", Agency: "000.00.00.H29"}},
		{"unmasked lan", CmdGatewayAdd, &GatewayAddRequest{ID: "gw3", Agency: "000.00.00.H29", LANs: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/8")}}},
		{"register a LAN of a gateway in service", CmdGatewayRegister, &GatewayAddRequest{ID: "gw9", Agency: "000.00.00.H29", LANs: []netip.Prefix{netip.MustParsePrefix("10.29.7.0/24")}}},
		{"register a default route", CmdGatewayRegister, &GatewayAddRequest{ID: "gw9", Agency: "000.00.00.H29", LANs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}}},
		{"register the overlay", CmdGatewayRegister, &GatewayAddRequest{ID: "gw9", Agency: "000.00.00.H29", LANs: []netip.Prefix{netip.MustParsePrefix("100.64.0.9/32")}}},
		{"token for enrolled", CmdTokenIssue, &TokenIssueRequest{Gateway: "gw1", TokenHash: "h9", Expires: t0.Add(time.Hour)}},
		{"token reuse", CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("x"), Gateway: "gw1", TokenHash: "h1", PublicKey: "k9"}},
		{"token expired", CmdGatewayEnroll, &GatewayEnrollRequest{Meta: Meta{At: t0.Add(2 * time.Hour)}, Gateway: "gw2", TokenHash: "h2", PublicKey: "k9"}},
		{"token other gateway", CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("x"), Gateway: "gw1", TokenHash: "h2", PublicKey: "k9"}},
		{"duplicate wg key", CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("x"), Gateway: "gw2", TokenHash: "h2", PublicKey: "k1b"}},
		{"re-enroll a pending gateway", CmdTokenIssue, &TokenIssueRequest{Meta: meta("off"), Gateway: "gw3", TokenHash: "h9", Expires: t0.Add(time.Hour), Reenroll: true}},
		{"a plain token for an enrolled gateway", CmdTokenIssue, &TokenIssueRequest{Meta: meta("off"), Gateway: "gw1", TokenHash: "h9", Expires: t0.Add(time.Hour)}},
		{"report unknown", CmdGatewayReport, &GatewayReportRequest{Gateway: "nope"}},
		{"reports empty", CmdGatewayReports, &GatewayReportsRequest{}},
		{"refreshes empty", CmdGatewayRefreshes, &GatewayReportsRequest{}},
		{"renew call without reason", CmdRenewCall, &RenewCallRequest{Meta: meta("off"), Reason: " "}},
		{"renew call on two lines", CmdRenewCall, &RenewCallRequest{Meta: meta("off"), Reason: "a\nb"}},
		{"refreshes one unknown", CmdGatewayRefreshes, &GatewayReportsRequest{Reports: []GatewayReportRequest{{Gateway: "gw1"}, {Gateway: "nope"}}}},
		{"renewals empty", CmdGatewayRenews, &GatewayRenewsRequest{}},
		{"renewals one stale", CmdGatewayRenews, &GatewayRenewsRequest{Renewals: []GatewayRenewRequest{
			{Meta: meta("gateway:gw1"), Gateway: "gw1", OldSerial: "01", Cert: api.Certificate{Serial: "1d", Kind: "gateway", Subject: "gw1", Gateway: "gw1", Agency: "000.00.00.H29", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(24 * time.Hour)}},
			{Meta: meta("gateway:gw2"), Gateway: "gw2", OldSerial: "2a", Cert: api.Certificate{Serial: "2d", Kind: "gateway", Subject: "gw2", Gateway: "gw2", Agency: "000.00.00.H49", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(24 * time.Hour)}}}}},
		{"renewals one gateway twice", CmdGatewayRenews, &GatewayRenewsRequest{Renewals: []GatewayRenewRequest{
			{Meta: meta("gateway:gw1"), Gateway: "gw1", OldSerial: "01", Cert: api.Certificate{Serial: "1d", Kind: "gateway", Subject: "gw1", Gateway: "gw1", Agency: "000.00.00.H29", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(24 * time.Hour)}},
			{Meta: meta("gateway:gw1"), Gateway: "gw1", OldSerial: "01", Cert: api.Certificate{Serial: "1e", Kind: "gateway", Subject: "gw1", Gateway: "gw1", Agency: "000.00.00.H29", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(24 * time.Hour)}}}}},
		{"reports one unknown", CmdGatewayReports, &GatewayReportsRequest{Reports: []GatewayReportRequest{{Gateway: "gw1"}, {Gateway: "nope"}}}},
		{"packed reports empty", CmdGatewayReportsPacked, &GatewayReportsRequest{}},
		{"packed reports one unknown", CmdGatewayReportsPacked, &GatewayReportsRequest{Reports: []GatewayReportRequest{{Gateway: "gw1"}, {Gateway: "nope"}}}},
		{"packed refreshes one unknown", CmdGatewayRefreshesPacked, &GatewayReportsRequest{Reports: []GatewayReportRequest{{Gateway: "gw1"}, {Gateway: "nope"}}}},
		{"member bad name", CmdMemberUpsert, &MemberUpsertRequest{Node: "CTL 9", RaftAddr: "127.0.0.19:7000", APIAddr: "127.0.0.19:7443"}},
		{"member bad addr", CmdMemberUpsert, &MemberUpsertRequest{Node: "ctl9", RaftAddr: "ctl9:7000", APIAddr: "127.0.0.19:7443"}},
		{"member addr taken", CmdMemberUpsert, &MemberUpsertRequest{Node: "ctl9", RaftAddr: "127.0.0.11:7000", APIAddr: "127.0.0.19:7443"}},
		{"member unknown", CmdMemberRemove, &MemberRemoveRequest{Node: "ctl9"}},
		{"person bad role", CmdPersonUpsert, &PersonUpsertRequest{Name: "x", Role: "admin", Serial: "01", Status: api.PersonActive}},
		{"person bad serial", CmdPersonUpsert, &PersonUpsertRequest{Name: "x", Role: "operator", Serial: "zz", Status: api.PersonActive}},
		{"person unrevoke", CmdPersonUpsert, &PersonUpsertRequest{Name: "aud", Role: "auditor", Serial: "0e", Status: api.PersonActive}},
		{"request unknown kind", CmdRequestCreate, &RequestCreateRequest{Meta: meta("op"), ID: "r9", Role: "operator", Kind: "reboot"}},
		{"request by auditor", CmdRequestCreate, &RequestCreateRequest{Meta: meta("aud"), ID: "r9", Role: "auditor", Kind: api.RequestRevoke, Gateway: "gw1"}},
		{"request dup id", CmdRequestCreate, &RequestCreateRequest{Meta: meta("op"), ID: "r1", Role: "operator", Kind: api.RequestRevoke, Gateway: "gw1"}},
		{"token for enrolled", CmdRequestCreate, &RequestCreateRequest{Meta: meta("op"), ID: "r9", Role: "operator", Kind: api.RequestToken, Gateway: "gw1", TTL: time.Hour}},
		{"approve own request", CmdRequestDecide, &RequestDecideRequest{Meta: meta("off"), ID: "r4", Role: "officer", Approve: true}},
		{"reject own request", CmdRequestDecide, &RequestDecideRequest{Meta: meta("off"), ID: "r4", Role: "officer"}},
		{"approve as operator", CmdRequestDecide, &RequestDecideRequest{Meta: meta("op"), ID: "r4", Role: "operator", Approve: true}},
		{"decide twice", CmdRequestDecide, &RequestDecideRequest{Meta: meta("off2"), ID: "r1", Role: "officer", Approve: true, TokenHash: "h8"}},
		{"decide unknown", CmdRequestDecide, &RequestDecideRequest{Meta: meta("off2"), ID: "nope", Role: "officer", Approve: true}},
		{"revoke request bad reason", CmdRequestCreate, &RequestCreateRequest{Meta: meta("op"), ID: "r9", Role: "operator", Kind: api.RequestRevoke, Gateway: "gw1", ReasonCode: 7}},
		{"revoke request unknown serial", CmdRequestCreate, &RequestCreateRequest{Meta: meta("op"), ID: "r9", Role: "operator", Kind: api.RequestRevoke, Serial: "99"}},
		{"record nothing", CmdCertRecord, &CertRecordRequest{Meta: meta("node:ctl1")}},
		{"record twice", CmdCertRecord, &CertRecordRequest{Meta: meta("node:ctl1"), Certs: []api.Certificate{{Serial: "c", Kind: "person", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}}},
		{"record dup in batch", CmdCertRecord, &CertRecordRequest{Meta: meta("node:ctl1"), Certs: []api.Certificate{
			{Serial: "d1", Kind: "node", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}, {Serial: "d1", Kind: "node", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}}},
		{"record bad serial", CmdCertRecord, &CertRecordRequest{Meta: meta("node:ctl1"), Certs: []api.Certificate{{Serial: "0D1", Kind: "node", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}}},
		{"record bad kind", CmdCertRecord, &CertRecordRequest{Meta: meta("node:ctl1"), Certs: []api.Certificate{{Serial: "d1", Kind: "root", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}}},
		{"record backwards validity", CmdCertRecord, &CertRecordRequest{Meta: meta("node:ctl1"), Certs: []api.Certificate{{Serial: "d1", Kind: "node", Issuer: "abcd", NotBefore: t0, NotAfter: t0}}}},
		{"revoke unknown serial", CmdCertRevoke, &CertRevokeRequest{Meta: meta("off"), Serial: "99"}},
		{"revoke twice", CmdCertRevoke, &CertRevokeRequest{Meta: meta("off"), Serial: "2a", Reason: 1}},
		{"revoke bad reason", CmdCertRevoke, &CertRevokeRequest{Meta: meta("off"), Serial: "c", Reason: 8}},
		{"revoke both", CmdCertRevoke, &CertRevokeRequest{Meta: meta("off"), Serial: "c", Gateway: "gw1"}},
		{"revoke nothing", CmdCertRevoke, &CertRevokeRequest{Meta: meta("off")}},
		{"revoke revoked gateway", CmdCertRevoke, &CertRevokeRequest{Meta: meta("off"), Gateway: "gw2"}},
		{"renew stale serial", CmdGatewayRenew, &GatewayRenewRequest{Meta: meta("gateway:gw1"), Gateway: "gw1", OldSerial: "2a",
			Cert: api.Certificate{Serial: "e1", Kind: "gateway", Gateway: "gw1", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}},
		{"renew revoked gateway", CmdGatewayRenew, &GatewayRenewRequest{Meta: meta("gateway:gw2"), Gateway: "gw2", OldSerial: "2b",
			Cert: api.Certificate{Serial: "e1", Kind: "gateway", Gateway: "gw2", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}},
		{"renew into another gateway", CmdGatewayRenew, &GatewayRenewRequest{Meta: meta("gateway:gw1"), Gateway: "gw1", OldSerial: "01",
			Cert: api.Certificate{Serial: "e1", Kind: "gateway", Gateway: "gw2", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}},
		{"renew reuses a serial", CmdGatewayRenew, &GatewayRenewRequest{Meta: meta("gateway:gw1"), Gateway: "gw1", OldSerial: "01",
			Cert: api.Certificate{Serial: "2b", Kind: "gateway", Gateway: "gw1", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}},
		{"crl number repeated", CmdCRLPublish, &CRLPublishRequest{Issuer: "abcd", Number: 1, ThisUpdate: t0, NextUpdate: t0.Add(time.Hour), DER: []byte{1}}},
		{"crl number zero", CmdCRLPublish, &CRLPublishRequest{Issuer: "ef", Number: 0, ThisUpdate: t0, NextUpdate: t0.Add(time.Hour), DER: []byte{1}}},
		{"crl empty", CmdCRLPublish, &CRLPublishRequest{Issuer: "abcd", Number: 2, ThisUpdate: t0, NextUpdate: t0.Add(time.Hour)}},
		{"issuer bad addr", CmdIssuerUpsert, &IssuerUpsertRequest{Issuer: "abcd", Node: "ctl1", HTTPAddr: "ctl1:80"}},
		{"checkpoint beyond the chain", CmdAuditCheckpoint, &AuditCheckpointRequest{Node: "ctl1", Checkpoint: api.AuditCheckpoint{Seq: 999, Hash: "x", Node: "ctl1", Signature: "s", Chain: "c"}}},
		{"checkpoint wrong hash", CmdAuditCheckpoint, &AuditCheckpointRequest{Node: "ctl1", Checkpoint: api.AuditCheckpoint{Seq: 5, Hash: "x", Node: "ctl1", Signature: "s", Chain: "c"}}},
		{"checkpoint backwards", CmdAuditCheckpoint, &AuditCheckpointRequest{Node: "ctl1", Checkpoint: api.AuditCheckpoint{Seq: 0, Node: "ctl1", Signature: "s", Chain: "c"}}},
		{"issuer bad id", CmdIssuerUpsert, &IssuerUpsertRequest{Issuer: "XYZ", Node: "ctl1", HTTPAddr: "127.0.0.1:80"}},
		{"add a closed code", CmdAgencyUpsert, &AgencyUpsertRequest{Meta: meta("op"), Code: "000.00.00.H01", Name: "again"}},
		{"add under a closed parent", CmdAgencyUpsert, &AgencyUpsertRequest{Meta: meta("op"), Code: "000.00.07.H01", Name: "x"}},
		{"import a closed code", CmdAgencyImport, &AgencyImportRequest{Meta: meta("op"), Agencies: []api.AgencyRow{
			{Code: "000.00.00.H02", Name: "fine"}, {Code: "000.00.04.H01", Name: "again"}}}},
		{"import twice in a batch", CmdAgencyImport, &AgencyImportRequest{Meta: meta("op"), Agencies: []api.AgencyRow{
			{Code: "000.00.00.H02", Name: "a"}, {Code: "000.00.00.H02", Name: "b"}}}},
		{"import a province with a parent", CmdAgencyImport, &AgencyImportRequest{Meta: meta("op"), Agencies: []api.AgencyRow{
			{Code: "000.00.00.H02", Name: "a", Parent: "000.00.00.H29"}}}},
		{"import under a lower level", CmdAgencyImport, &AgencyImportRequest{Meta: meta("op"), Agencies: []api.AgencyRow{
			{Code: "000.00.09.H29", Name: "a", Parent: "000.12.04.H01"}}}},
		{"import moves a parent", CmdAgencyImport, &AgencyImportRequest{Meta: meta("op"), Agencies: []api.AgencyRow{
			{Code: "000.12.04.H01", Name: "Xã Đạo Đức", Parent: "000.00.00.H49"}}}},
		{"import no name", CmdAgencyImport, &AgencyImportRequest{Meta: meta("op"), Agencies: []api.AgencyRow{{Code: "000.00.00.H02", Name: ""}}}},
		{"import nothing", CmdAgencyImport, &AgencyImportRequest{Meta: meta("op")}},
		{"merge into a closed code", CmdAgencyMerge, &AgencyMergeRequest{Meta: meta("op"), Sources: []string{"000.00.00.H49"}, Code: "000.00.00.H01"}},
		{"merge a closed code", CmdAgencyMerge, &AgencyMergeRequest{Meta: meta("op"), Sources: []string{"000.00.00.H01"}, Code: "000.00.00.H49"}},
		{"merge into itself", CmdAgencyMerge, &AgencyMergeRequest{Meta: meta("op"), Sources: []string{"000.00.00.H29"}, Code: "000.00.00.H29"}},
		{"merge into unknown", CmdAgencyMerge, &AgencyMergeRequest{Meta: meta("op"), Sources: []string{"000.00.00.H29"}, Code: "000.00.00.H77"}},
		{"merge into a descendant", CmdAgencyMerge, &AgencyMergeRequest{Meta: meta("op"), Sources: []string{"000.00.00.H29"}, Code: "000.12.04.H01"}},
		{"merge across levels", CmdAgencyMerge, &AgencyMergeRequest{Meta: meta("op"), Sources: []string{"000.12.04.H01"}, Code: "000.00.00.H49"}},
		{"merge nothing", CmdAgencyMerge, &AgencyMergeRequest{Meta: meta("op"), Code: "000.00.00.H49"}},
		{"reparent a province", CmdAgencyReparent, &AgencyReparentRequest{Meta: meta("op"), Code: "000.00.00.H49", Parent: "000.00.00.H29"}},
		{"reparent under itself", CmdAgencyReparent, &AgencyReparentRequest{Meta: meta("op"), Code: "000.12.04.H01", Parent: "000.12.04.H01"}},
		{"reparent where it is", CmdAgencyReparent, &AgencyReparentRequest{Meta: meta("op"), Code: "000.12.04.H01", Parent: "000.00.00.H29"}},
		{"reparent under a closed code", CmdAgencyReparent, &AgencyReparentRequest{Meta: meta("op"), Code: "000.12.04.H01", Parent: "000.00.04.H01"}},
		{"close with gateways", CmdAgencyClose, &AgencyCloseRequest{Meta: meta("op"), Code: "000.12.04.H01"}},
		{"close with children", CmdAgencyClose, &AgencyCloseRequest{Meta: meta("op"), Code: "000.00.00.H29"}},
		{"close twice", CmdAgencyClose, &AgencyCloseRequest{Meta: meta("op"), Code: "000.00.04.H01"}},
		{"close unknown", CmdAgencyClose, &AgencyCloseRequest{Meta: meta("op"), Code: "000.00.00.H77"}},
		{"decommission twice", CmdGatewayDecommission, &GatewayDecommissionRequest{Meta: meta("off"), Gateway: "gw4"}},
		{"decommission unknown", CmdGatewayDecommission, &GatewayDecommissionRequest{Meta: meta("off"), Gateway: "nope"}},
		{"restore asked by an operator", CmdRequestCreate, &RequestCreateRequest{Meta: meta("op"), ID: "r9", Role: "operator", Kind: api.RequestRestore, BackupSHA256: strings.Repeat("ab", 32)}},
		{"person asked by an operator", CmdRequestCreate, &RequestCreateRequest{Meta: meta("op"), ID: "r9", Role: "operator", Kind: api.RequestPerson, PersonName: "eve", PersonRole: "officer", Serial: "1f"}},
		{"person with a revoked certificate", CmdRequestCreate, &RequestCreateRequest{Meta: meta("off"), ID: "r9", Role: "officer", Kind: api.RequestPerson, PersonName: "aud", PersonRole: "auditor", Serial: "0e"}},
		{"person with a bad role", CmdRequestCreate, &RequestCreateRequest{Meta: meta("off"), ID: "r9", Role: "officer", Kind: api.RequestPerson, PersonName: "eve", PersonRole: "root", Serial: "1f"}},
		{"restore of no digest", CmdRequestCreate, &RequestCreateRequest{Meta: meta("off"), ID: "r9", Role: "officer", Kind: api.RequestRestore, BackupSHA256: "abc"}},
		{"archive nothing", CmdCertArchive, &CertArchiveRequest{Meta: meta("node:ctl1"), Before: t0}},
		{"archive a bad serial", CmdCertArchive, &CertArchiveRequest{Meta: meta("node:ctl1"), Before: t0, Serials: []string{"e5", "0E5"}}},
		{"archive a serial twice", CmdCertArchive, &CertArchiveRequest{Meta: meta("node:ctl1"), Before: t0, Serials: []string{"e5", "e5"}}},
		{"archive from the future", CmdCertArchive, &CertArchiveRequest{Meta: meta("node:ctl1"), Before: t0.Add(time.Second), Serials: []string{"e5"}}},
		{"archive with no time", CmdCertArchive, &CertArchiveRequest{Meta: meta("node:ctl1"), Serials: []string{"e5"}}},
		{"archive too many", CmdCertArchive, &CertArchiveRequest{Meta: meta("node:ctl1"), Before: t0, Serials: manySerials(maxArchiveBatch + 1)}},
		{"record an archived serial", CmdCertRecord, &CertRecordRequest{Meta: meta("node:ctl1"), Certs: []api.Certificate{
			{Serial: "2b", Kind: "node", Subject: "ctl1", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}}},
		{"revoke an archived serial", CmdCertRevoke, &CertRevokeRequest{Meta: meta("off"), Serial: "2b", Reason: 1}},
		{"invite a bad role", CmdPersonInvite, &PersonInviteRequest{Meta: meta("off"), Name: "gina", Role: "root", TokenHash: "h9", Expires: t0.Add(time.Hour)}},
		{"invite with a token that exists", CmdPersonInvite, &PersonInviteRequest{Meta: meta("off"), Name: "gina", Role: "auditor", TokenHash: "h5", Expires: t0.Add(time.Hour)}},
		{"enroll a person with a gateway's token", CmdPersonEnroll, &PersonEnrollRequest{Meta: meta("gina"), Name: "gina", TokenHash: "h2",
			Cert: api.Certificate{Serial: "d9", Kind: "person", Subject: "gina", Role: "auditor", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}},
		{"enroll another person", CmdPersonEnroll, &PersonEnrollRequest{Meta: meta("gina"), Name: "gina", TokenHash: "h5",
			Cert: api.Certificate{Serial: "d9", Kind: "person", Subject: "gina", Role: "auditor", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}},
		{"enroll for another role", CmdPersonEnroll, &PersonEnrollRequest{Meta: meta("frank"), Name: "frank", TokenHash: "h5",
			Cert: api.Certificate{Serial: "d9", Kind: "person", Subject: "frank", Role: "officer", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}},
		{"enroll another key than the invitation's", CmdPersonEnroll, &PersonEnrollRequest{Meta: meta("frank"), Name: "frank", TokenHash: "h5",
			Cert: api.Certificate{Serial: "d9", Kind: "person", Subject: "frank", Role: "auditor", Issuer: "abcd", KeySHA256: "ee", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}},
		{"invite request without the invitee's key", CmdRequestCreate, &RequestCreateRequest{Meta: meta("off"), ID: "r9", Role: "officer", Kind: api.RequestInvite, PersonName: "gina", PersonRole: "auditor", TTL: time.Hour}},
		{"enroll with a used token", CmdPersonEnroll, &PersonEnrollRequest{Meta: meta("dave"), Name: "dave", TokenHash: "h4",
			Cert: api.Certificate{Serial: "d9", Kind: "person", Subject: "dave", Role: "operator", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}},
		{"renew from a serial not current", CmdPersonRenew, &PersonRenewRequest{Meta: meta("dave"), Name: "dave", From: "c",
			Cert: api.Certificate{Serial: "d9", Kind: "person", Subject: "dave", Role: "operator", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}},
		{"renew from the previous for another key", CmdPersonRenew, &PersonRenewRequest{Meta: meta("dave"), Name: "dave", From: "d1",
			Cert: api.Certificate{Serial: "d9", Kind: "person", Subject: "dave", Role: "operator", Issuer: "abcd", KeySHA256: "cc", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}},
		{"renew a revoked person", CmdPersonRenew, &PersonRenewRequest{Meta: meta("aud"), Name: "aud", From: "0e",
			Cert: api.Certificate{Serial: "d9", Kind: "person", Subject: "aud", Role: "auditor", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}},
		{"renew to a recorded serial", CmdPersonRenew, &PersonRenewRequest{Meta: meta("dave"), Name: "dave", From: "d2",
			Cert: api.Certificate{Serial: "c", Kind: "person", Subject: "dave", Role: "operator", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}},
		{"renew to another role", CmdPersonRenew, &PersonRenewRequest{Meta: meta("dave"), Name: "dave", From: "d2",
			Cert: api.Certificate{Serial: "d9", Kind: "person", Subject: "dave", Role: "officer", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := NewFSM(slog.Default(), nil)
			for i, c := range history() {
				if err := applyCmd(t, f, uint64(i+1), c.t, c.req); err != nil {
					t.Fatal(err)
				}
			}
			before := snapshotBytes(t, f)
			if err := applyCmd(t, f, 100, tt.t, tt.req); err == nil {
				t.Fatal("applied, want an error")
			}
			after := snapshotBytes(t, f)
			// Only the header's index moves.
			if !bytes.Equal(before[bytes.IndexByte(before, '\n'):], after[bytes.IndexByte(after, '\n'):]) {
				t.Fatalf("a refused command changed the state")
			}
		})
	}
}

// FuzzAPIRequest feeds arbitrary bodies to every command type: the FSM
// must never panic, and a refused command must change nothing.
func FuzzAPIRequest(f *testing.F) {
	h := history()
	for _, c := range h {
		b, _ := encodeCommand(c.t, c.req)
		f.Add(b)
	}
	f.Add([]byte{byte(CmdGatewayEnroll), '{', '}'})
	f.Add([]byte{byte(CmdGatewayReport), 'x'})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		typ := CommandType(data[0])
		if !typ.known() && typ&IgnoreUnknownTypeFlag == 0 {
			return // unknown, non-ignorable types halt the node by design
		}
		var raise ClusterLevelRequest
		if typ == CmdClusterLevel && json.Unmarshal(data[1:], &raise) == nil && raise.Level > releaseLevel {
			return // so does a level past this node's release
		}
		fsm := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
		for i, c := range h {
			if err := applyCmd(t, fsm, uint64(i+1), c.t, c.req); err != nil {
				t.Fatal(err)
			}
		}
		before := snapshotBytes(t, fsm)
		res := fsm.Apply(&raft.Log{Index: 100, Type: raft.LogCommand, Data: data}).(ApplyResult)
		if res.Err != nil {
			after := snapshotBytes(t, fsm)
			if !bytes.Equal(before[bytes.IndexByte(before, '\n'):], after[bytes.IndexByte(after, '\n'):]) {
				t.Fatalf("refused command %q changed the state", data)
			}
		}
	})
}

// TestGatewayAddReplaysUnchecked: the logs of earlier releases replay as
// they were committed (CmdGatewayAdd never checked a LAN against other
// gateways); CmdGatewayRegister refuses the same LAN.
func TestGatewayAddReplaysUnchecked(t *testing.T) {
	f, next := historyFSM(t)
	lan := []netip.Prefix{netip.MustParsePrefix("10.29.7.0/24")} // within gw1's 10.29.0.0/16
	if err := applyCmd(t, f, next, CmdGatewayAdd, &GatewayAddRequest{Meta: meta("op"), ID: "gw9", Agency: "000.00.00.H29", LANs: lan}); err != nil {
		t.Fatalf("gateway-add of an earlier release: %v", err)
	}
	err := applyCmd(t, f, next+1, CmdGatewayRegister, &GatewayAddRequest{Meta: meta("op"), ID: "gw10", Agency: "000.00.00.H29", LANs: lan})
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "of gateway gw1") {
		t.Fatalf("gateway-register of gw1's network: %v", err)
	}
}

// TestEnrollIndexesSurviveRestore: the WireGuard key index refuses a key
// another gateway (even a revoked one) holds, and overlay addresses are
// the lowest free ones, before and after a restore from a snapshot.
func TestEnrollIndexesSurviveRestore(t *testing.T) {
	x := newHubFixture(t)
	x.agency("000.00.00.H29")
	for _, id := range []string{"a", "b", "c"} {
		x.gateway(id, "000.00.00.H29", netip.MustParsePrefix("10.1.0.0/24"))
	}
	x.enroll("a") // key-1, 100.64.0.1
	x.revoke("a")
	reuse := func(f *FSM, index uint64, id, hash string) error {
		if err := applyCmd(t, f, index, CmdTokenIssue, &TokenIssueRequest{Meta: meta("off"), Gateway: id, TokenHash: hash, Expires: t0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		return applyCmd(t, f, index+1, CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("gateway:" + id), Gateway: id, TokenHash: hash,
			PublicKey: "key-1", CertSerial: "99", CertExpires: t0.Add(24 * time.Hour)})
	}
	if err := reuse(x.f, 100, "b", "tb"); err == nil || !strings.Contains(err.Error(), "already used by gateway a") {
		t.Fatalf("b enrolling with a's key: %v", err)
	}
	restored := NewFSM(slog.Default(), nil)
	if err := restored.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, x.f)))); err != nil {
		t.Fatal(err)
	}
	if err := reuse(restored, 200, "c", "tc"); err == nil || !strings.Contains(err.Error(), "already used by gateway a") {
		t.Fatalf("after restore, c enrolling with a's key: %v", err)
	}
	// Both FSMs give the next gateway the same, lowest free address.
	x.index = 300
	x.enroll("b")
	restored2 := NewFSM(slog.Default(), nil)
	if err := restored2.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, x.f)))); err != nil {
		t.Fatal(err)
	}
	x.enroll("c")
	b, _ := x.f.State().Gateway("b")
	c, _ := x.f.State().Gateway("c")
	if b.OverlayIP != netip.MustParseAddr("100.64.0.2") || c.OverlayIP != netip.MustParseAddr("100.64.0.3") {
		t.Fatalf("addresses b %s c %s", b.OverlayIP, c.OverlayIP)
	}
	if err := applyCmd(t, restored2, 400, CmdTokenIssue, &TokenIssueRequest{Meta: meta("off"), Gateway: "c", TokenHash: "tz", Expires: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := applyCmd(t, restored2, 401, CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("gateway:c"), Gateway: "c", TokenHash: "tz",
		PublicKey: "key-z", CertSerial: "98", CertExpires: t0.Add(24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if c2, _ := restored2.State().Gateway("c"); c2.OverlayIP != c.OverlayIP {
		t.Fatalf("restored node gave c %s, the other %s", c2.OverlayIP, c.OverlayIP)
	}
}

// TestRefreshNeverOvertakes: a held refresh committed after a newer
// report (one that changed something, committed at once) leaves the
// newer one in place; a newer refresh that says the same moves the
// report's time on, and one that says something else changes nothing.
func TestRefreshNeverOvertakes(t *testing.T) {
	f := NewFSM(slog.Default(), nil)
	var i uint64
	apply := func(ct CommandType, req any) {
		t.Helper()
		i++
		if err := applyCmd(t, f, i, ct, req); err != nil {
			t.Fatal(err)
		}
	}
	apply(CmdInitNetwork, &InitNetworkRequest{Meta: meta("node:ctl1"), OverlayPrefix: netip.MustParsePrefix("100.64.0.0/24")})
	apply(CmdAgencyUpsert, &AgencyUpsertRequest{Meta: meta("op"), Code: "000.00.00.H29", Name: "Quảng Ninh"})
	apply(CmdGatewayAdd, &GatewayAddRequest{Meta: meta("op"), ID: "gw1", Agency: "000.00.00.H29"})
	report := func(at time.Duration, digest string) GatewayReportRequest {
		return GatewayReportRequest{Meta: Meta{Actor: "gateway:gw1", At: t0.Add(at)}, Gateway: "gw1", Report: api.Report{PolicyVersion: 1, RaftIndex: 5, RulesetDigest: digest}}
	}
	apply(CmdGatewayReports, &GatewayReportsRequest{Meta: meta("node:ctl1"), Reports: []GatewayReportRequest{report(2*time.Minute, "sha256:new")}})
	apply(CmdGatewayRefreshes, &GatewayReportsRequest{Meta: meta("node:ctl2"), Reports: []GatewayReportRequest{report(time.Minute, "sha256:old")}})
	if rep := f.State().gatewayReport("gw1"); rep.RulesetDigest != "sha256:new" || !rep.At.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("an older refresh overtook the report: %+v", rep)
	}
	apply(CmdGatewayRefreshes, &GatewayReportsRequest{Meta: meta("node:ctl2"), Reports: []GatewayReportRequest{report(3*time.Minute, "sha256:new")}})
	if rep := f.State().gatewayReport("gw1"); !rep.At.Equal(t0.Add(3 * time.Minute)) {
		t.Fatalf("a newer refresh was not applied: %+v", rep)
	}
	// A newer refresh that says something else (taken on a node whose
	// clock runs ahead, before a changed report): the report stays.
	apply(CmdGatewayRefreshes, &GatewayReportsRequest{Meta: meta("node:ctl3"), Reports: []GatewayReportRequest{report(4*time.Minute, "sha256:other")}})
	if rep := f.State().gatewayReport("gw1"); rep.RulesetDigest != "sha256:new" || !rep.At.Equal(t0.Add(3*time.Minute)) {
		t.Fatalf("a refresh saying something else changed the report: %+v", rep)
	}
	// So does one that says other peers were left out.
	leftOut := report(4*time.Minute, "sha256:new")
	leftOut.Report.PeersLeftOut, leftOut.Report.PeerError = 1, "invalid peer: peer 0 (gw2, k2): duplicate public key"
	apply(CmdGatewayRefreshes, &GatewayReportsRequest{Meta: meta("node:ctl3"), Reports: []GatewayReportRequest{leftOut}})
	if rep := f.State().gatewayReport("gw1"); rep.PeersLeftOut != 0 || rep.PeerError != "" || !rep.At.Equal(t0.Add(3*time.Minute)) {
		t.Fatalf("a refresh saying other peers were left out changed the report: %+v", rep)
	}
}

// TestInContact: a node takes refreshes (answers them before they are
// committed) only while it leads or has heard from a leader lately.
func TestInContact(t *testing.T) {
	now := time.Now()
	hb := time.Second
	for _, tc := range []struct {
		name string
		st   raft.RaftState
		last time.Time
		want bool
	}{
		{"leader", raft.Leader, time.Time{}, true},
		{"follower, heard lately", raft.Follower, now.Add(-300 * time.Millisecond), true},
		{"follower, cut off", raft.Follower, now.Add(-3 * time.Second), false},
		{"follower, never heard", raft.Follower, time.Time{}, false},
		{"candidate", raft.Candidate, now, false},
		{"shut down", raft.Shutdown, now, false},
	} {
		if got := inContact(tc.st, tc.last, now, hb); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestPersonRevocationSticks: revoking a person revokes their certificate
// in the inventory (CRLs and OCSP say so), and no later registration, even
// after another serial in between, makes that certificate active again.
func TestPersonRevocationSticks(t *testing.T) {
	f := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	h := history()
	for i, c := range h {
		if err := applyCmd(t, f, uint64(i+1), c.t, c.req); err != nil {
			t.Fatal(err)
		}
	}
	i := uint64(len(h))
	apply := func(serial, status string) error {
		i++
		return applyCmd(t, f, i, CmdPersonUpsert, &PersonUpsertRequest{Meta: meta("off2"), Name: "off", Role: "officer", Serial: serial, Status: status})
	}
	if err := apply("0c", api.PersonRevoked); err != nil {
		t.Fatal(err)
	}
	if c, _ := f.State().Certificate("c"); c.Status != api.CertRevoked || c.ReasonName != "privilegeWithdrawn" || c.RevokedBy != "off2" {
		t.Fatalf("off's certificate after off was revoked: %+v", c)
	}
	if err := apply("0c", api.PersonActive); !errors.Is(err, ErrConflict) {
		t.Fatalf("revoked certificate registered again: %v", err)
	}
	if err := apply("77", api.PersonActive); err != nil {
		t.Fatal(err)
	}
	if err := apply("C", api.PersonActive); !errors.Is(err, ErrConflict) {
		t.Fatalf("revoked certificate registered again after another: %v", err)
	}
	if p, _ := f.State().Person("off"); p.Serial != "77" || p.Status != api.PersonActive || !slices.Equal(p.RevokedSerials, []string{"c"}) {
		t.Fatalf("off %+v", p)
	}
	// 77 is registered but was never recorded (issued elsewhere): a
	// revocation of that serial, as a four-eyes request makes it, still
	// revokes the person.
	i++
	if err := applyCmd(t, f, i, CmdCertRevoke, &CertRevokeRequest{Meta: meta("off2"), Serial: "77", Reason: 9}); err != nil {
		t.Fatal(err)
	}
	if p, _ := f.State().Person("off"); p.Status != api.PersonRevoked {
		t.Fatalf("off after the revocation of 77: %+v", p)
	}
	if err := apply("77", api.PersonActive); !errors.Is(err, ErrConflict) {
		t.Fatalf("77 registered again: %v", err)
	}
}

// TestRemovedNodes: the state remembers a removed node until it is added
// again, through snapshots too.
func TestRemovedNodes(t *testing.T) {
	f, _ := historyFSM(t)
	if at, ok := f.State().wasRemoved("ctl3"); !ok || !at.Equal(t0) {
		t.Fatalf("ctl3 removed: %v at %v", ok, at)
	}
	g := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, f)))); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.State().wasRemoved("ctl3"); !ok {
		t.Fatal("a snapshot forgot that ctl3 was removed")
	}
	if err := applyCmd(t, g, 200, CmdMemberUpsert, &MemberUpsertRequest{Meta: meta("op"), Node: "ctl3", RaftAddr: "127.0.0.13:7000", APIAddr: "127.0.0.13:7443"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.State().wasRemoved("ctl3"); ok {
		t.Fatal("ctl3 still counts as removed after an operator added it")
	}
}

// TestPersonRevocationOutrunsRenewal: a revocation asked for with a
// person's certificate that they renewed since (the request names the
// old serial) still withdraws everything they hold, and the requests
// they made or that would invite them are rejected with it.
func TestPersonRevocationOutrunsRenewal(t *testing.T) {
	for _, tt := range []struct {
		name string
		t    CommandType
		req  any
	}{
		{"revoke the serial renewed from", CmdCertRevoke, &CertRevokeRequest{Meta: meta("off"), Serial: "d1", Reason: 1}},
		{"revoke the person by the serial renewed from", CmdPersonUpsert, &PersonUpsertRequest{Meta: meta("off"), Name: "dave", Role: "operator", Serial: "d1", Status: api.PersonRevoked}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, _ := historyFSM(t,
				histCmd{CmdRequestCreate, &RequestCreateRequest{Meta: meta("dave"), ID: "rd", Role: "operator", Kind: api.RequestPolicy, PolicyName: "p.yaml", PolicySource: "version: 1\n"}},
				histCmd{CmdRequestCreate, &RequestCreateRequest{Meta: meta("off"), ID: "ri", Role: "officer", Kind: api.RequestInvite, PersonName: "dave", PersonRole: "officer", TTL: time.Hour, KeySHA256: strings.Repeat("ef", 32)}},
				histCmd{tt.t, tt.req},
			)
			if p, _ := f.State().Person("dave"); p.Status != api.PersonRevoked || !slices.Contains(p.RevokedSerials, "d2") || !slices.Contains(p.RevokedSerials, "d1") {
				t.Fatalf("dave %+v", p)
			}
			for _, serial := range []string{"d1", "d2"} {
				if c, _ := f.State().Certificate(serial); c.Status != api.CertRevoked {
					t.Fatalf("%s %+v", serial, c)
				}
			}
			for _, id := range []string{"rd", "ri"} {
				if r, _ := f.State().Request(id); r.Status != api.RequestRejected || r.Approver != "off" {
					t.Fatalf("request %s: %+v", id, r)
				}
			}
		})
	}
}

// TestGatewayRevocationRaces: a renewal made while a revocation of the
// certificate renewed from waited does not outrun it; a re-enrollment
// waits for a pending revocation; a revoked officer's tokens go with them.
func TestGatewayRevocationRaces(t *testing.T) {
	cert := func(serial, gw string) *api.Certificate {
		return &api.Certificate{Serial: serial, Kind: "gateway", Subject: gw, Gateway: gw, Agency: "000.00.00.H29", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(24 * time.Hour)}
	}
	f, next := historyFSM(t, []histCmd{
		{CmdGatewayAdd, &GatewayAddRequest{Meta: meta("op"), ID: "gw5", Agency: "000.00.00.H29"}},
		{CmdGatewayAdd, &GatewayAddRequest{Meta: meta("op"), ID: "gw6", Agency: "000.00.00.H29"}},
		{CmdGatewayAdd, &GatewayAddRequest{Meta: meta("op"), ID: "gw7", Agency: "000.00.00.H29"}},
		{CmdTokenIssue, &TokenIssueRequest{Meta: meta("off"), Gateway: "gw5", TokenHash: "t5", Expires: t0.Add(time.Hour)}},
		{CmdTokenIssue, &TokenIssueRequest{Meta: meta("off"), Gateway: "gw6", TokenHash: "t6", Expires: t0.Add(time.Hour)}},
		{CmdTokenIssue, &TokenIssueRequest{Meta: meta("off2"), Gateway: "gw7", TokenHash: "t7", Expires: t0.Add(time.Hour)}},
		{CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("gateway:gw5"), Gateway: "gw5", TokenHash: "t5", PublicKey: "k5", CertSerial: "51", CertExpires: t0.Add(24 * time.Hour), Cert: cert("51", "gw5")}},
		{CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("gateway:gw6"), Gateway: "gw6", TokenHash: "t6", PublicKey: "k6", CertSerial: "61", CertExpires: t0.Add(24 * time.Hour), Cert: cert("61", "gw6")}},
		// gw5 renews while a revocation of 51 waits; then it is approved.
		{CmdRequestCreate, &RequestCreateRequest{Meta: meta("op"), ID: "rv5", Role: "operator", Kind: api.RequestRevoke, Serial: "51", ReasonCode: 1}},
		{CmdGatewayRenew, &GatewayRenewRequest{Meta: meta("gateway:gw5"), Gateway: "gw5", OldSerial: "51", Cert: *cert("52", "gw5")}},
		{CmdRequestDecide, &RequestDecideRequest{Meta: meta("off"), ID: "rv5", Role: "officer", Approve: true}},
		// A revocation of gw6's certificate waits.
		{CmdRequestCreate, &RequestCreateRequest{Meta: meta("op"), ID: "rv6", Role: "operator", Kind: api.RequestRevoke, Serial: "61", ReasonCode: 1}},
		// off2, who issued gw7's token, is revoked.
		{CmdPersonUpsert, &PersonUpsertRequest{Meta: meta("off"), Name: "off2", Role: "officer", Serial: "0d", Status: api.PersonRevoked}},
	}...)
	if g, _ := f.State().Gateway("gw5"); g.Status != api.StatusRevoked {
		t.Fatalf("gw5 renewed out of its revocation: %+v", g)
	}
	if c, _ := f.State().Certificate("52"); c.Status != api.CertRevoked {
		t.Fatalf("52 %+v", c)
	}
	err := applyCmd(t, f, next, CmdTokenIssue, &TokenIssueRequest{Meta: meta("off"), Gateway: "gw6", TokenHash: "t6b", Expires: t0.Add(time.Hour), Reenroll: true})
	if err == nil || !strings.Contains(err.Error(), "rv6") {
		t.Fatalf("a re-enrollment token while rv6 waits: %v", err)
	}
	err = applyCmd(t, f, next, CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("gateway:gw7"), Gateway: "gw7", TokenHash: "t7", PublicKey: "k7", CertSerial: "71", CertExpires: t0.Add(24 * time.Hour)})
	if err == nil || !strings.Contains(err.Error(), "cancelled") {
		t.Fatalf("enrollment with a revoked officer's token: %v", err)
	}
}

// TestFormerRoles: a person registered again with another role keeps the
// roles they held before, each once, through snapshot and restore.
func TestFormerRoles(t *testing.T) {
	f := NewFSM(slog.Default(), nil)
	for i, role := range []string{"officer", "operator", "officer", "auditor"} {
		if err := applyCmd(t, f, uint64(i+1), CmdPersonUpsert, &PersonUpsertRequest{Meta: meta("node:ctl1"), Name: "lan", Role: role, Serial: fmt.Sprintf("0%d", i+1), Status: api.PersonActive}); err != nil {
			t.Fatal(err)
		}
	}
	g := NewFSM(slog.Default(), nil)
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, f)))); err != nil {
		t.Fatal(err)
	}
	for _, fsm := range []*FSM{f, g} {
		if p, _ := fsm.State().Person("lan"); p.Role != "auditor" || !slices.Equal(p.FormerRoles, []string{"officer", "operator"}) {
			t.Fatalf("person %+v: want auditor, formerly officer and operator", p)
		}
	}
}

// TestLANClashesInIDOrder registers a gateway whose LAN overlaps those of
// several gateways in service: the refusal names each of them, in id
// order whatever the map's, so that every node applies the same verdict.
func TestLANClashesInIDOrder(t *testing.T) {
	for range 5 {
		f := NewFSM(slog.Default(), nil)
		cmds := []histCmd{
			{CmdInitNetwork, &InitNetworkRequest{OverlayPrefix: netip.MustParsePrefix("100.64.0.0/16")}},
			{CmdAgencyUpsert, &AgencyUpsertRequest{Meta: meta("op"), Code: "000.00.00.H29", Name: "Ủy ban nhân dân tỉnh Quảng Ninh"}},
		}
		for _, id := range []string{"gw-d", "gw-b", "gw-c", "gw-a"} {
			lan := map[string]string{"gw-a": "10.50.2.0/24", "gw-b": "10.50.1.0/24", "gw-c": "10.70.0.0/24", "gw-d": "10.50.3.0/24"}[id]
			cmds = append(cmds, histCmd{CmdGatewayRegister, &GatewayAddRequest{Meta: meta("op"), ID: id, Agency: "000.00.00.H29", LANs: []netip.Prefix{netip.MustParsePrefix(lan)}}})
		}
		for i, c := range cmds {
			if err := applyCmd(t, f, uint64(i+1), c.t, c.req); err != nil {
				t.Fatalf("%s: %v", c.t, err)
			}
		}
		err := applyCmd(t, f, uint64(len(cmds)+1), CmdGatewayRegister, &GatewayAddRequest{Meta: meta("op"), ID: "gw-new", Agency: "000.00.00.H29",
			LANs: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/16"), netip.MustParsePrefix("10.80.0.0/24")}})
		want := "LAN prefix 10.50.0.0/16 overlaps 10.50.2.0/24 of gateway gw-a\n" +
			"LAN prefix 10.50.0.0/16 overlaps 10.50.1.0/24 of gateway gw-b\n" +
			"LAN prefix 10.50.0.0/16 overlaps 10.50.3.0/24 of gateway gw-d"
		if !errors.Is(err, ErrConflict) || !strings.HasSuffix(err.Error(), want) {
			t.Fatalf("got %v, want a conflict ending\n%s", err, want)
		}
		if _, ok := f.State().Gateway("gw-new"); ok {
			t.Fatal("the refused gateway was registered")
		}
		// No LAN at all: nothing to clash with.
		if err := applyCmd(t, f, uint64(len(cmds)+2), CmdGatewayRegister, &GatewayAddRequest{Meta: meta("op"), ID: "gw-e", Agency: "000.00.00.H29"}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSnapshotDue: a node snapshots once at least snapshotMinEntries
// were applied since the last snapshot and their commands add up to that
// snapshot's size, or twice that in a burst of writes; raft's snapshots (Snapshot, Restore) move the mark,
// backups and restores' copies of the state (snapshot) do not.
func TestSnapshotDue(t *testing.T) {
	f := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	t.Cleanup(func() { f.State().close() })
	index := uint64(0)
	apply := func(k int) {
		for range k {
			index++
			if err := applyCmd(t, f, index, CmdAgencyUpsert, &AgencyUpsertRequest{Meta: Meta{Actor: "op", At: t0}, Code: "000.00.00.H29", Name: "Quảng Ninh"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// No snapshot yet: raft's count alone.
	apply(snapshotMinEntries - 1)
	if f.snapshotDue(0) {
		t.Fatalf("due after %d entries", index)
	}
	apply(1)
	if !f.snapshotDue(0) {
		t.Fatalf("not due after %d entries and no snapshot", index)
	}
	// A backup's copy of the state is not a snapshot of raft's.
	snap, err := f.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Persist(&memSnapshotSink{}); err != nil || !f.snapshotDue(0) {
		t.Fatalf("a backup's persist moved the mark (%v)", err)
	}
	// Raft's snapshot: the state is larger than the next 8,192 entries.
	b := snapshotBytes(t, f)
	per := f.applied.Load() / int64(index)
	if f.snapshotDue(0) {
		t.Fatal("due right after a snapshot")
	}
	apply(snapshotMinEntries)
	if int64(len(b)) <= per*snapshotMinEntries {
		t.Fatalf("state of %d bytes, entries of %d: the test needs a larger state", len(b), per)
	}
	if f.snapshotDue(0) {
		t.Fatalf("due after %d entries of %d bytes, since a snapshot of %d bytes", snapshotMinEntries, per*snapshotMinEntries, len(b))
	}
	apply(int(int64(len(b))/per) - snapshotMinEntries + 1)
	if !f.snapshotDue(0) {
		t.Fatalf("not due after %d bytes of entries since a snapshot of %d", f.applied.Load()-f.lastSnap.applied, len(b))
	}
	// In a burst it waits, until the log is twice the snapshot's size.
	burst := int64(len(b))/snapshotQuietShare + 1
	if !f.snapshotDue(burst - 1) {
		t.Fatal("not due after a quiet period")
	}
	if f.snapshotDue(burst) {
		t.Fatalf("due in a burst of %d bytes, with %d bytes of log since a snapshot of %d", burst, f.applied.Load()-f.lastSnap.applied, len(b))
	}
	mark := f.lastSnap
	f.lastSnap.applied = f.applied.Load() - 2*int64(len(b)) + 1
	if f.snapshotDue(burst) {
		t.Fatal("due in a burst before the log is twice the snapshot's size")
	}
	f.lastSnap.applied--
	if !f.snapshotDue(burst) {
		t.Fatal("not due in a burst with a log twice the snapshot's size")
	}
	f.lastSnap = mark
	// A restored snapshot moves the mark too, and an older snapshot
	// written after it does not move it back.
	older := f.lastSnap
	if err := f.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
		t.Fatal(err)
	}
	if f.lastSnap.size != int64(len(b)) || f.snapshotDue(0) {
		t.Fatalf("after a restore: mark %+v", f.lastSnap)
	}
	restored := f.lastSnap
	f.markSnapshot(older)
	if f.lastSnap != restored {
		t.Fatalf("an older snapshot moved the mark back: %+v, want %+v", f.lastSnap, restored)
	}
	// However large the state, snapshotMaxEntries entries make one due,
	// in a burst too.
	f.lastSnap = snapMark{entries: f.entries.Load() - snapshotMaxEntries + 1, applied: f.applied.Load(), size: 1 << 40}
	if f.snapshotDue(0) {
		t.Fatal("due before snapshotMaxEntries entries")
	}
	apply(1)
	if !f.snapshotDue(1 << 40) {
		t.Fatalf("not due after snapshotMaxEntries entries: mark %+v, %d entries", f.lastSnap, f.entries.Load())
	}
}

// TestIgnorableTypes: the command types an older node may skip. A node
// that skips one records it in its audit chain under another name than
// the nodes that know it (IgnoreUnknownTypeFlag), so adding one is an
// upgrade hazard to weigh and document (installer.md, "Upgrades and
// removal"), not a detail: this list changes only with that.
func TestIgnorableTypes(t *testing.T) {
	var got []CommandType
	for i := range 256 {
		if c := CommandType(i); c&IgnoreUnknownTypeFlag != 0 && c.known() {
			got = append(got, c)
		}
	}
	want := []CommandType{CmdGatewayReport, CmdGatewayReports, CmdGatewayRefreshes, CmdGatewayReportsPacked, CmdGatewayRefreshesPacked}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("ignorable command types %v, want %v", got, want)
	}
}
