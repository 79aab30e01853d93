package controller

import (
	"bytes"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/hashicorp/raft"
)

var t0 = time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)

func meta(actor string) Meta { return Meta{Actor: actor, At: t0} }

// history is a run of commands that exercises every command type.
func history() []struct {
	t   CommandType
	req any
} {
	return []struct {
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
		{CmdStateRestored, &StateRestoredRequest{Meta: meta("off"), BackupSHA256: "ab", BackupIndex: 7}},
	}
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
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	return sink.Bytes()
}

type memSink struct{ bytes.Buffer }

func (*memSink) ID() string    { return "mem" }
func (*memSink) Cancel() error { return nil }
func (*memSink) Close() error  { return nil }

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
	if p, _ := f.State().Policy(); p.Version != 2 || p.Actor != "off2" {
		t.Fatalf("policy approved by off2: %+v", p)
	}
	if tok, ok := f.State().token("h3"); !ok || tok.Gateway != "gw2" || tok.Issuer != "off" || !tok.Expires.Equal(t0.Add(time.Hour)) {
		t.Fatalf("token from the approved request: %+v", tok)
	}
	gw, _ := f.State().Gateway("gw1")
	if gw.Status != api.StatusEnrolled || gw.OverlayIP != netip.MustParseAddr("100.64.0.1") || gw.Report.At != t0 {
		t.Fatalf("gw1 %+v", gw)
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
		{"token for enrolled", CmdTokenIssue, &TokenIssueRequest{Gateway: "gw1", TokenHash: "h9", Expires: t0.Add(time.Hour)}},
		{"token reuse", CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("x"), Gateway: "gw1", TokenHash: "h1", PublicKey: "k9"}},
		{"token expired", CmdGatewayEnroll, &GatewayEnrollRequest{Meta: Meta{At: t0.Add(2 * time.Hour)}, Gateway: "gw2", TokenHash: "h2", PublicKey: "k9"}},
		{"token other gateway", CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("x"), Gateway: "gw1", TokenHash: "h2", PublicKey: "k9"}},
		{"duplicate wg key", CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("x"), Gateway: "gw2", TokenHash: "h2", PublicKey: "k1"}},
		{"report unknown", CmdGatewayReport, &GatewayReportRequest{Gateway: "nope"}},
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
	for _, c := range history() {
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
		fsm := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
		for i, c := range history() {
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
