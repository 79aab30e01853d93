package controller

import (
	"bytes"
	"compress/flate"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// mergedFSM restores backup into a copy of f's state as the leader does
// (mergeSnapshots) and installs the result in a fresh FSM, as every node
// does.
func mergedFSM(t *testing.T, f *FSM, backup []byte, r restoreInfo) (*FSM, error) {
	t.Helper()
	b, _, err := mergeSnapshots(snapshotBytes(t, f), backup, t.TempDir(), r)
	if err != nil {
		return nil, err
	}
	g := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err := g.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
		t.Fatal(err)
	}
	return g, nil
}

// TestRestoreKeepsHistory: a restore rolls the registry back (an agency
// and a gateway added since, the policy) and keeps what happened since:
// the audit chain, a revocation, the certificate of the gateway it
// decommissions (revoked now), the policy versions, with the restore's own
// entry on the chain.
func TestRestoreKeepsHistory(t *testing.T) {
	f, next := historyFSM(t)
	backup := snapshotBytes(t, f)
	policyBefore := f.State().policies[len(f.State().policies)-1]

	at := t0.Add(100 * time.Hour)
	m := func(actor string) Meta { return Meta{Actor: actor, At: at} }
	for i, c := range []histCmd{
		{CmdAgencyUpsert, &AgencyUpsertRequest{Meta: m("op"), Code: "000.00.00.H31", Name: "Ủy ban nhân dân thành phố Hải Phòng"}},
		{CmdGatewayRegister, &GatewayAddRequest{Meta: m("op"), ID: "late", Agency: "000.00.00.H31", LANs: []netip.Prefix{netip.MustParsePrefix("10.33.0.0/16")}}},
		{CmdTokenIssue, &TokenIssueRequest{Meta: m("off"), Gateway: "late", TokenHash: "hl", Expires: at.Add(time.Hour)}},
		{CmdGatewayEnroll, &GatewayEnrollRequest{Meta: m("gateway:late"), Gateway: "late", TokenHash: "hl", PublicKey: "kl", CertSerial: "1a7e", CertExpires: at.Add(24 * time.Hour),
			Cert: &api.Certificate{Serial: "1a7e", Kind: "gateway", Subject: "late", Gateway: "late", Agency: "000.00.00.H31", Issuer: "abcd", NotBefore: at, NotAfter: at.Add(24 * time.Hour)}}},
		{CmdCertRevoke, &CertRevokeRequest{Meta: m("off"), Gateway: "gw1", Reason: int(ca.ReasonKeyCompromise)}},
		{CmdPolicyPublish, &PolicyPublishRequest{Meta: m("off"), Name: "p3.yaml", Source: "version: 1\n# later\n"}},
	} {
		if err := applyCmd(t, f, next+uint64(i), c.t, c.req); err != nil {
			t.Fatalf("command %d (%s): %v", i, c.t, err)
		}
	}
	late, _ := f.State().Gateway("late")
	chainBefore, err := f.State().Audit(0)
	if err != nil {
		t.Fatal(err)
	}
	versionBefore := f.State().policies[len(f.State().policies)-1].Version
	indexBefore := f.State().Index()

	r := restoreInfo{Actor: "off2", Role: "officer", At: at.Add(time.Hour), BackupSHA256: strings.Repeat("ab", 32), RequestID: "r9"}
	g, err := mergedFSM(t, f, backup, r)
	if err != nil {
		t.Fatal(err)
	}
	s := g.State()

	// Rolled back: the agency added since; the gateway added since is
	// decommissioned, out of every view (its address and key stay its
	// own, as a decommissioning leaves them).
	if _, ok := s.agencies["000.00.00.H31"]; ok {
		t.Error("the agency added after the backup is still there")
	}
	if g, ok := s.Gateway("late"); !ok || g.Status != api.StatusDecommissioned || g.OverlayIP != late.OverlayIP {
		t.Errorf("the gateway added after the backup: %+v", g)
	}
	if _, ok := views(t, s)["late"]; ok {
		t.Error("the decommissioned gateway still has a view")
	}
	// Its certificate stays in the inventory, revoked by the restorer; its
	// issuer's CRL is due again.
	if c, ok := s.Certificate("1a7e"); !ok || c.Status != api.CertRevoked || c.Reason != int(ca.ReasonCessationOfOperation) || c.RevokedBy != "off2" || !c.RevokedAt.Equal(r.At) {
		t.Errorf("the decommissioned gateway's certificate: %+v", c)
	}
	if ir, _ := s.issuer("abcd"); ir.LastRevocation != indexBefore+1 {
		t.Errorf("issuer's last revocation %d, want the restore's index %d", ir.LastRevocation, indexBefore+1)
	}
	// Kept: gw1's revocation after the backup, and the token used since.
	if gw1, _ := s.Gateway("gw1"); gw1.Status != api.StatusRevoked {
		t.Errorf("gw1 revoked after the backup is %s after the restore", gw1.Status)
	}
	if tok := s.tokens["hl"]; tok == nil || !tok.Used {
		t.Errorf("the token used after the backup: %+v", tok)
	}
	// The backup's policy is the current one again, as a new version.
	last := s.policies[len(s.policies)-1]
	if last.Version != versionBefore+1 || last.Source != policyBefore.Source || last.Actor != "off2" {
		t.Errorf("policy after the restore %+v; want version %d with the backup's source", last, versionBefore+1)
	}
	// The chain: the one before, intact, then the restore.
	chain, err := s.Audit(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != len(chainBefore)+1 || !slices.Equal(chain[:len(chainBefore)], chainBefore) {
		t.Fatalf("chain of %d entries after the restore, %d before: the history was not kept", len(chain), len(chainBefore))
	}
	if err := api.VerifyAudit(chain); err != nil {
		t.Fatal(err)
	}
	e := chain[len(chain)-1]
	if e.Action != ActionRestore || e.Actor != "off2" || e.Role != "officer" || e.Object != "sha256:"+r.BackupSHA256+" request:r9" || e.RaftIndex != indexBefore+1 {
		t.Errorf("restore entry %+v", e)
	}
	if s.Index() != indexBefore+1 {
		t.Errorf("index %d after the restore, want %d", s.Index(), indexBefore+1)
	}

	// The restored state goes on: the decommissioned gateway's LAN is
	// free for another gateway; its id is never given again.
	lan := []netip.Prefix{netip.MustParsePrefix("10.33.0.0/16")}
	if err := applyCmd(t, g, indexBefore+5, CmdGatewayRegister, &GatewayAddRequest{Meta: m("op"), ID: "late2", Agency: "000.00.00.H29", LANs: lan}); err != nil {
		t.Fatal(err)
	}
	if err := applyCmd(t, g, indexBefore+6, CmdGatewayRegister, &GatewayAddRequest{Meta: m("op"), ID: "late", Agency: "000.00.00.H29"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("the decommissioned gateway's id registered again: %v", err)
	}
}

// TestRestoreRefusesOtherClusters: a backup of another network, or of
// another cluster into one that has gateways, is refused.
func TestRestoreRefusesOtherClusters(t *testing.T) {
	f, _ := historyFSM(t)
	r := restoreInfo{Actor: "off", At: t0.Add(time.Hour), BackupSHA256: "ab"}
	for _, c := range []struct {
		name string
		cmds []histCmd
		want string
	}{
		{"another overlay", []histCmd{{CmdInitNetwork, &InitNetworkRequest{Meta: meta("node:ctl1"), OverlayPrefix: netip.MustParsePrefix("100.65.0.0/24")}}}, "another network"},
		{"another chain", []histCmd{
			{CmdInitNetwork, &InitNetworkRequest{Meta: meta("node:ctl9"), OverlayPrefix: netip.MustParsePrefix("100.64.0.0/24")}},
		}, "restores only into a new cluster"},
	} {
		t.Run(c.name, func(t *testing.T) {
			other := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
			for i, cmd := range c.cmds {
				if err := applyCmd(t, other, uint64(i+1), cmd.t, cmd.req); err != nil {
					t.Fatal(err)
				}
			}
			before := snapshotBytes(t, f)
			_, err := mergedFSM(t, f, snapshotBytes(t, other), r)
			if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want a conflict saying %q", err, c.want)
			}
			if !bytes.Equal(before, snapshotBytes(t, f)) {
				t.Fatal("a refused restore changed the state")
			}
		})
	}
}

// TestRestoreIntoNewCluster: the backup of a lost cluster restored into a
// new one (initialised, people registered, no gateway) brings back the
// lost cluster's state and audit chain, and keeps what the new cluster
// holds: its members, issuers, certificates and people's credentials.
func TestRestoreIntoNewCluster(t *testing.T) {
	old, _ := historyFSM(t)
	backup := snapshotBytes(t, old)
	oldChain, err := old.State().Audit(0)
	if err != nil {
		t.Fatal(err)
	}

	f := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	at := t0.Add(200 * time.Hour)
	m := func(actor string) Meta { return Meta{Actor: actor, At: at} }
	for i, c := range []histCmd{
		{CmdInitNetwork, &InitNetworkRequest{Meta: m("node:ctl7"), OverlayPrefix: netip.MustParsePrefix("100.64.0.0/24")}},
		{CmdMemberUpsert, &MemberUpsertRequest{Meta: m("node:ctl7"), Node: "ctl7", RaftAddr: "127.0.0.17:7000", APIAddr: "127.0.0.17:7443"}},
		{CmdPersonUpsert, &PersonUpsertRequest{Meta: m("node:ctl7"), Name: "off", Role: "officer", Serial: "9c", Status: api.PersonActive}},
		{CmdPersonUpsert, &PersonUpsertRequest{Meta: m("node:ctl7"), Name: "newop", Role: "operator", Serial: "9d", Status: api.PersonActive}},
		{CmdIssuerUpsert, &IssuerUpsertRequest{Meta: m("node:ctl7"), Issuer: "ef99", Node: "ctl7", HTTPAddr: "127.0.0.17:7444"}},
		{CmdCertRecord, &CertRecordRequest{Meta: m("node:ctl7"), Certs: []api.Certificate{
			{Serial: "9f", Kind: "node", Subject: "ctl7", Issuer: "ef99", NotBefore: at, NotAfter: at.Add(365 * 24 * time.Hour)},
		}}},
	} {
		if err := applyCmd(t, f, uint64(i+1), c.t, c.req); err != nil {
			t.Fatalf("command %d (%s): %v", i, c.t, err)
		}
	}
	newChain, err := f.State().Audit(0)
	if err != nil {
		t.Fatal(err)
	}
	r := restoreInfo{Actor: "off", Role: "officer", At: at.Add(time.Hour), BackupSHA256: "cd"}
	g, err := mergedFSM(t, f, backup, r)
	if err != nil {
		t.Fatal(err)
	}
	s := g.State()
	if gw, ok := s.Gateway("gw1"); !ok || gw.Status != api.StatusEnrolled {
		t.Errorf("the lost cluster's gateway gw1: %+v", gw)
	}
	if p, _ := s.Person("off"); p.Serial != "9c" {
		t.Errorf("officer off holds %s after the restore, want the new cluster's 9c", p.Serial)
	}
	for _, name := range []string{"newop", "dave"} {
		if _, ok := s.Person(name); !ok {
			t.Errorf("person %s is gone", name)
		}
	}
	for _, serial := range []string{"9f", "2c"} {
		if _, ok := s.Certificate(serial); !ok {
			t.Errorf("certificate %s is gone", serial)
		}
	}
	for _, id := range []string{"ef99", "abcd"} {
		if _, ok := s.issuer(id); !ok {
			t.Errorf("issuer %s is gone", id)
		}
	}
	if ms := s.membersSorted(); len(ms) != 1 || ms[0].Node != "ctl7" {
		t.Errorf("members %+v, want the new cluster's", ms)
	}
	chain, err := s.Audit(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != len(oldChain)+1 || !slices.Equal(chain[:len(oldChain)], oldChain) {
		t.Fatalf("chain of %d entries, want the lost cluster's %d and the restore", len(chain), len(oldChain))
	}
	if err := api.VerifyAudit(chain); err != nil {
		t.Fatal(err)
	}
	head := newChain[len(newChain)-1]
	want := fmt.Sprintf("sha256:cd replaces:%d:%s", len(newChain), head.Hash)
	if e := chain[len(chain)-1]; e.Action != ActionRestore || e.Object != want {
		t.Errorf("restore entry %+v, want object %q", e, want)
	}
}

// TestRestoreApprovalSpent: an approved restore request is good for one
// restore: the same officer cannot restore the same file again with it,
// undoing (decommissioning) what was registered since. The node an
// officer calls checks the approval against its own state, which may
// lag; the leader checks it again, on its state: a restore forwarded
// after its approval was spent is refused too.
func TestRestoreApprovalSpent(t *testing.T) {
	cfg, n, op, off1, off2 := fourEyesNode(t)
	ctx := context.Background()
	var backup bytes.Buffer
	if err := op.SaveSnapshot(ctx, &backup); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(backup.Bytes())
	req, err := off1.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestRestore, BackupSHA256: hex.EncodeToString(sum[:]), Reason: "undo"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := off2.ApproveRequest(ctx, req.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := off1.RestoreSnapshot(ctx, bytes.NewReader(backup.Bytes())); err != nil {
		t.Fatal(err)
	}
	// Work done after the approved restore.
	if _, err := op.AddGateway(ctx, api.Gateway{ID: "after", Agency: "000.00.00.H29"}); err != nil {
		t.Fatal(err)
	}
	if r, _ := n.State().Request(req.ID); r.Restored == 0 {
		t.Fatalf("the request does not say it was spent: %+v", r)
	}
	// officer1 alone, no new approval.
	_, err = off1.RestoreSnapshot(ctx, bytes.NewReader(backup.Bytes()))
	wantStatus(t, err, 403, "needs a restore request for it")
	// The same restore as a follower that had checked the approval
	// before it was spent forwards it (/v1/internal/restore, after
	// internalNode admitted the node).
	r := httptest.NewRequest(http.MethodPost, "/v1/internal/restore", bytes.NewReader(backup.Bytes()))
	r.Header.Set(actorHeader, "officer1")
	w := httptest.NewRecorder()
	n.handleInternalRestore(w, r, ca.Identity{Kind: ca.KindNode, Name: cfg.Node})
	if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "no restore has used") {
		t.Errorf("a forwarded restore under a spent approval: HTTP %d %s", w.Code, w.Body.String())
	}
	if g, _ := n.State().Gateway("after"); g.Status != api.StatusPending {
		t.Fatalf("a refused restore decommissioned the gateway registered since: %+v", g)
	}
}

// TestRecoveryIndexMovesOn: a lost cluster's backup restored into a new
// cluster, whose raft log is shorter than the backup's index: the
// state's index never goes back (views, streams and agents compare it),
// so a revocation after the recovery reaches the other gateways.
func TestRecoveryIndexMovesOn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The lost cluster: two gateways, and a history longer than the new
	// cluster's.
	cfgA := testConfig(t)
	nA := startNode(t, cfgA)
	opA, offA := person(t, cfgA, nA, "operator1"), person(t, cfgA, nA, "officer1")
	if _, err := opA.AddAgency(ctx, api.Agency{Code: "000.00.00.H29", Name: "Quảng Ninh"}); err != nil {
		t.Fatal(err)
	}
	const pol = "version: 1\ngroups:\n  provinces:\n    level: province\nrules:\n  - from: [provinces]\n    to: [provinces]\n    ports: [tcp/22]\n"
	if _, err := offA.PublishPolicy(ctx, "p.yaml", pol); err != nil {
		t.Fatal(err)
	}
	enrollNew(t, ctx, cfgA, nA, opA, offA, "gw-a", "000.00.00.H29")
	enrollNew(t, ctx, cfgA, nA, opA, offA, "gw-b", "000.00.00.H29")
	for i := 1; i <= 40; i++ {
		if _, err := opA.AddAgency(ctx, api.Agency{Code: fmt.Sprintf("000.00.00.H%02d", 30+i), Name: fmt.Sprintf("P%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	var backup bytes.Buffer
	if err := opA.SaveSnapshot(ctx, &backup); err != nil {
		t.Fatal(err)
	}
	// The lost cluster goes on after its backup: its gateways hold views
	// stamped with indexes the backup never reached.
	for i := 41; i <= 60; i++ {
		if _, err := opA.AddAgency(ctx, api.Agency{Code: fmt.Sprintf("000.00.00.H%02d", 30+i), Name: fmt.Sprintf("P%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := offA.PublishPolicy(ctx, "p.yaml", pol+"  - from: [provinces]\n    to: [provinces]\n    ports: [tcp/443]\n"); err != nil {
		t.Fatal(err)
	}
	var lost uint64
	waitFor(t, 10*time.Second, "gw-a's last view on the lost cluster", func() error {
		if v, ok := nA.hub.view("gw-a"); ok && v.head.RaftIndex >= nA.State().Index()-1 {
			lost = v.head.RaftIndex
			return nil
		}
		return fmt.Errorf("not yet")
	})
	nA.Close()

	// The new cluster, same overlay and root, no gateway: it takes the
	// backup.
	cfgB := testConfigUnder(t, cfgA)
	nB := startNode(t, cfgB)
	t.Cleanup(func() { nB.Close() })
	offB := person(t, cfgB, nB, "officer1")
	if _, err := offB.RestoreSnapshot(ctx, bytes.NewReader(backup.Bytes())); err != nil {
		t.Fatal(err)
	}
	// The restore's own index (a command the node makes on its own, a
	// CRL's, may follow it before the state is read here, and change no
	// view).
	var restored uint64
	chain, err := nB.State().Audit(0)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range chain {
		if e.Action == ActionRestore {
			restored = e.RaftIndex
		}
	}
	waitFor(t, 10*time.Second, "gw-a's view after the restore", func() error {
		if v, ok := nB.hub.view("gw-a"); !ok || v.head.RaftIndex < restored || v.peers.Len() != 1 {
			return fmt.Errorf("no view at %d with gw-b yet", restored)
		}
		return nil
	})
	t.Logf("state index after the restore %d, raft last index %d", restored, nB.raft.LastIndex())

	// A revocation after the restore: gw-a must lose gw-b as a peer.
	if _, err := offB.Revoke(ctx, api.RevokeRequest{Gateway: "gw-b", Reason: "keyCompromise"}); err != nil {
		t.Fatal(err)
	}
	after := nB.State().Index()
	t.Logf("state index after the revocation %d", after)
	if after <= restored {
		t.Errorf("the state's index went back from %d to %d with the first command after the restore", restored, after)
	}
	waitFor(t, 10*time.Second, "gw-a's view without gw-b", func() error {
		if v, ok := nB.hub.view("gw-a"); !ok || v.peers.Len() != 0 {
			return fmt.Errorf("gw-b still a peer")
		}
		return nil
	})
	// A gateway resuming from the lost cluster's last view gets the
	// recovered cluster's.
	if _, v := nB.viewsToSend("gw-a", lost, nil, false); v == nil {
		cur, _ := nB.hub.view("gw-a")
		t.Errorf("gw-a's stream resuming at %d (the lost cluster's view after its backup) sends nothing: the recovered view is stamped %d", lost, cur.head.RaftIndex)
	}
	// A stream that sent gw-a the restored view (since = restored) sends
	// the new one.
	if _, v := nB.viewsToSend("gw-a", restored, nil, false); v == nil {
		cur, _ := nB.hub.view("gw-a")
		t.Errorf("gw-a's stream at %d sends nothing after gw-b's revocation: the view is stamped %d (%d peers)", restored, cur.head.RaftIndex, cur.peers.Len())
	}

	// A restart: raft's log has a hole at the recovery's snapshot; the
	// node comes back at the index it had, with the revocation.
	nB.Close()
	nB = startNode(t, cfgB)
	t.Cleanup(func() { nB.Close() })
	if got := nB.State().Index(); got < after {
		t.Errorf("after a restart the index is %d, before it %d", got, after)
	}
	waitFor(t, 10*time.Second, "gw-a's view after the restart", func() error {
		if v, ok := nB.hub.view("gw-a"); !ok || v.head.RaftIndex < after || v.peers.Len() != 0 {
			return fmt.Errorf("no view at %d without gw-b yet", after)
		}
		return nil
	})
	if _, err := person(t, cfgB, nB, "operator1").AddAgency(ctx, api.Agency{Code: "000.00.00.H95", Name: "P95"}); err != nil {
		t.Fatalf("a write after the restart: %v", err)
	}
}

func restoredBy(at time.Time) restoreInfo {
	return restoreInfo{Actor: "off2", Role: "officer", At: at, BackupSHA256: strings.Repeat("ab", 32)}
}

// TestRestoreNewerBackupAfterOlder: b0, then "late" registered, then b1
// (holds late). Restoring b0 decommissions late; restoring b1 next (the
// officer undoing the first restore) is accepted, and late stays
// decommissioned: a restore never takes back a revocation.
func TestRestoreNewerBackupAfterOlder(t *testing.T) {
	f, next := historyFSM(t)
	b0 := snapshotBytes(t, f)
	at := t0.Add(100 * time.Hour)
	if err := applyCmd(t, f, next, CmdGatewayRegister, &GatewayAddRequest{Meta: Meta{Actor: "op", At: at}, ID: "late", Agency: "000.00.00.H29", LANs: []netip.Prefix{netip.MustParsePrefix("10.33.0.0/16")}}); err != nil {
		t.Fatal(err)
	}
	b1 := snapshotBytes(t, f)
	g, err := mergedFSM(t, f, b0, restoredBy(at.Add(time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	h, err := mergedFSM(t, g, b1, restoredBy(at.Add(2*time.Hour)))
	if err != nil {
		t.Fatalf("the newer backup after an older one: %v", err)
	}
	if late, _ := h.State().Gateway("late"); late.Status != api.StatusDecommissioned {
		t.Fatalf("late after the newer backup: %+v", late)
	}
}

// TestRestoreRefusesTruncatedBackup: a backup cut off before its audit
// chain (a partial download, a full disk: the format has no end marker)
// is refused; taken for a backup of this cluster, it would drop every
// gateway after the cut and revoke its certificates, for good.
func TestRestoreRefusesTruncatedBackup(t *testing.T) {
	f, _ := historyFSM(t)
	full := snapshotBytes(t, f)
	// Keep the header and the records up to the first gateway.
	var cut []byte
	for _, line := range bytes.SplitAfter(full, []byte("\n")) {
		if bytes.Contains(line, []byte(`"type":"gateway"`)) {
			break
		}
		cut = append(cut, line...)
	}
	for _, b := range [][]byte{cut, cut[:bytes.IndexByte(cut, '\n')+1]} {
		if _, err := mergedFSM(t, f, b, restoredBy(t0.Add(200*time.Hour))); !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "cut short") {
			t.Errorf("a backup of %d of %d bytes: %v", len(b), len(full), err)
		}
	}
}

// TestRecoveryOnlyIntoNewCluster: a cluster whose gateways all came
// after a backup restores that backup (no gateway left): it is not a new
// cluster, and another cluster's backup does not replace its chain.
func TestRecoveryOnlyIntoNewCluster(t *testing.T) {
	// This cluster: an overlay, an agency, a backup, then a gateway.
	f := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	m := func(a string) Meta { return Meta{Actor: a, At: t0} }
	cmds := []histCmd{
		{CmdInitNetwork, &InitNetworkRequest{Meta: m("node:ctl1"), OverlayPrefix: netip.MustParsePrefix("100.64.0.0/24")}},
		{CmdPersonUpsert, &PersonUpsertRequest{Meta: m("node:ctl1"), Name: "off2", Role: "officer", Serial: "0d", Status: api.PersonActive}},
		{CmdAgencyUpsert, &AgencyUpsertRequest{Meta: m("op"), Code: "000.00.00.H29", Name: "Quảng Ninh"}},
	}
	for i, c := range cmds {
		if err := applyCmd(t, f, uint64(i+1), c.t, c.req); err != nil {
			t.Fatal(err)
		}
	}
	b0 := snapshotBytes(t, f)
	if err := applyCmd(t, f, 4, CmdGatewayRegister, &GatewayAddRequest{Meta: m("op"), ID: "gw1", Agency: "000.00.00.H29"}); err != nil {
		t.Fatal(err)
	}
	g, err := mergedFSM(t, f, b0, restoredBy(t0.Add(time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	chainBefore, _ := g.State().Audit(0)
	// Another cluster's backup.
	other, _ := historyFSM(t)
	if _, err := mergedFSM(t, g, snapshotBytes(t, other), restoredBy(t0.Add(2*time.Hour))); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "only into a new cluster") {
		t.Fatalf("another cluster's backup into a cluster of %d audit entries, one a restore: %v", len(chainBefore), err)
	}
}

// TestRestoreRejectsRequestsOfDecommissioned: a token request for a
// gateway the restore decommissions is rejected with it, and cannot be
// approved after; each such gateway's unused token goes, the others'
// stay.
func TestRestoreRejectsRequestsOfDecommissioned(t *testing.T) {
	f, next := historyFSM(t)
	backup := snapshotBytes(t, f)
	at := t0.Add(100 * time.Hour)
	m := func(a string) Meta { return Meta{Actor: a, At: at} }
	for i, c := range []histCmd{
		{CmdGatewayRegister, &GatewayAddRequest{Meta: m("op"), ID: "late", Agency: "000.00.00.H29", LANs: []netip.Prefix{netip.MustParsePrefix("10.33.0.0/16")}}},
		{CmdRequestCreate, &RequestCreateRequest{Meta: m("op"), ID: "rq-late", Role: "operator", Kind: api.RequestToken, Gateway: "late", TTL: time.Hour, Reason: "new Hạ Long gateway"}},
		{CmdGatewayRegister, &GatewayAddRequest{Meta: m("op"), ID: "later", Agency: "000.00.00.H29"}},
		{CmdTokenIssue, &TokenIssueRequest{Meta: m("off"), Gateway: "later", TokenHash: "h-later", Expires: at.Add(time.Hour)}},
	} {
		if err := applyCmd(t, f, next+uint64(i), c.t, c.req); err != nil {
			t.Fatal(err)
		}
	}
	g, err := mergedFSM(t, f, backup, restoredBy(at.Add(time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	idx := g.State().Index() + 2
	if r, _ := g.State().Request("rq-late"); r.Status != api.RequestRejected || r.Approver != "off2" {
		t.Fatalf("request rq-late for the decommissioned gateway: %+v", r)
	}
	for _, id := range []string{"late", "later"} {
		if gw, _ := g.State().Gateway(id); gw.Status != api.StatusDecommissioned {
			t.Errorf("gateway %s registered since the backup: %s after the restore", id, gw.Status)
		}
	}
	if tok := g.State().tokens["h-later"]; tok != nil {
		t.Errorf("the unused token of a decommissioned gateway: %+v", tok)
	}
	if len(g.State().tokens) == 0 {
		t.Error("the restore removed every token")
	}
	if err := applyCmd(t, g, idx, CmdRequestDecide, &RequestDecideRequest{Meta: m("off"), ID: "rq-late", Role: "officer", Approve: true, TokenHash: "hz"}); err == nil {
		t.Errorf("a token request for the decommissioned gateway was approved")
	}
}

// TestRestoreKeepsViewsComputable: a backup taken before any policy was
// published has none to publish again, so the current policy stays; it
// names a gateway registered since, which the restore decommissions:
// the policy still compiles (a decommissioned gateway is named, not a
// member) and every view is computed.
func TestRestoreKeepsViewsComputable(t *testing.T) {
	x := newHubFixture(t)
	x.agency("000.00.00.H29")
	x.gateway("gw1", "000.00.00.H29", netip.MustParsePrefix("10.1.0.0/16"))
	x.enroll("gw1")
	backup := snapshotBytes(t, x.f) // no policy yet
	x.gateway("gw2", "000.00.00.H29", netip.MustParsePrefix("10.2.0.0/16"))
	x.enroll("gw2")
	x.apply(CmdPolicyPublish, &PolicyPublishRequest{Meta: meta("off"), Name: "p.yaml",
		Source: "version: 1\nrules:\n  - from: [gw1]\n    to: [gw2]\n    ports: [tcp/22]\n"})
	if err := x.h.recompute(); err != nil {
		t.Fatalf("before the restore: %v", err)
	}
	g, err := mergedFSM(t, x.f, backup, restoredBy(t0.Add(time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	h := newViewHub(g.State(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := h.recompute(); err != nil {
		t.Fatalf("views after the restore: %v", err)
	}
	if v, ok := h.view("gw1"); !ok || v.peers.Len() != 0 {
		t.Fatalf("gw1's view after the restore: %v peers", v.peers.Len())
	}
}

// TestRestoreRefusesAlteredBackup: a gateway's LANs never change once
// registered, so a backup (with this cluster's real chain) that gives
// one other LANs was altered, and is refused: its LANs would go into
// every peer's firewall without the checks a registration makes. So is
// one whose policy is not the one published here as that version.
func TestRestoreRefusesAlteredBackup(t *testing.T) {
	f, _ := historyFSM(t)
	backup := snapshotBytes(t, f)
	altered := bytes.Replace(backup, []byte(`"lans":["10.29.0.0/16"]`), []byte(`"lans":["0.0.0.0/0"]`), 1)
	if bytes.Equal(altered, backup) {
		t.Fatal("gw1's LANs not found in the backup")
	}
	_, err := mergedFSM(t, f, altered, restoredBy(t0.Add(time.Hour)))
	if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "gateway gw1 the LANs [0.0.0.0/0]") {
		t.Fatalf("a backup with gw1's LANs altered: %v", err)
	}
	// A policy this cluster never published as that version.
	i := bytes.LastIndex(backup, []byte(`"type":"policy"`))
	j := i + bytes.Index(backup[i:], []byte(`"source":"`)) + len(`"source":"`)
	altered = append(append(bytes.Clone(backup[:j]), `rules: []\n`...), backup[j:]...)
	_, err = mergedFSM(t, f, altered, restoredBy(t0.Add(time.Hour)))
	if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "is not the one this cluster published") {
		t.Fatalf("a backup with its policy altered: %v", err)
	}
	if _, err := mergedFSM(t, f, backup, restoredBy(t0.Add(time.Hour))); err != nil {
		t.Fatalf("the backup as saved: %v", err)
	}
}

// TestRestoreRefusesForgedAgency: a backup whose district says it is a
// province (no import, merger or re-parenting can make that) is refused:
// its gateway would join the provinces' group, and reach their firewalls.
func TestRestoreRefusesForgedAgency(t *testing.T) {
	x := newHubFixture(t)
	x.agency("000.00.00.H29")
	x.agency("000.00.00.H31")
	x.agency("000.00.04.H29") // a district of H29
	x.gateway("gw-h29", "000.00.00.H29", netip.MustParsePrefix("10.29.0.0/16"))
	x.gateway("gw-h31", "000.00.00.H31", netip.MustParsePrefix("10.31.0.0/16"))
	x.gateway("gw-d", "000.00.04.H29", netip.MustParsePrefix("10.40.0.0/16"))
	for _, id := range []string{"gw-h29", "gw-h31", "gw-d"} {
		x.enroll(id)
	}
	x.publish("version: 1\ngroups:\n  provinces:\n    level: province\nrules:\n  - from: [provinces]\n    to: [provinces]\n    ports: [tcp/22]\n")
	if hasPeerOf(views(t, x.f.State())["gw-h29"], "gw-d") {
		t.Fatal("the district is a peer of a province before")
	}
	backup := snapshotBytes(t, x.f)
	forged := bytes.Replace(backup, []byte(`"code":"000.00.04.H29","name":"agency 000.00.04.H29","parent":"000.00.00.H29","level":"district"`),
		[]byte(`"code":"000.00.04.H29","name":"agency 000.00.04.H29","parent":"000.00.00.H29","level":"province"`), 1)
	if bytes.Equal(forged, backup) {
		t.Fatal("district record not found")
	}
	_, err := mergedFSM(t, x.f, forged, restoredBy(t0.Add(time.Hour)))
	if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), `agency 000.00.04.H29: level "province", its code's is district`) {
		t.Fatalf("a backup that calls a district a province: %v", err)
	}
}

// TestRecoveryPolicySameVersion: a new cluster published a policy
// (version 1) before it recovered a lost cluster whose current policy is
// also version 1, with another source: the view hub compiles the
// recovered registry with the state's policy, not the one it had parsed
// for that version.
func TestRecoveryPolicySameVersion(t *testing.T) {
	lost := newHubFixture(t)
	lost.agency("000.00.00.H29")
	lost.agency("000.00.00.H31")
	lost.gateway("gw-h29", "000.00.00.H29", netip.MustParsePrefix("10.29.0.0/16"))
	lost.gateway("gw-h31", "000.00.00.H31", netip.MustParsePrefix("10.31.0.0/16"))
	lost.enroll("gw-h29")
	lost.enroll("gw-h31")
	lost.publish("version: 1\ngroups:\n  provinces:\n    level: province\nrules:\n  - from: [provinces]\n    to: [provinces]\n    ports: [tcp/22]\n")
	backup := snapshotBytes(t, lost.f)

	x := newHubFixture(t) // the new cluster, same overlay
	x.publish("version: 1\nrules: []\n")
	if err := x.h.recompute(); err != nil {
		t.Fatal(err)
	}
	merged, _, err := mergeSnapshots(snapshotBytes(t, x.f), backup, t.TempDir(), restoredBy(t0.Add(time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	if err := x.f.Restore(io.NopCloser(bytes.NewReader(merged))); err != nil {
		t.Fatal(err)
	}
	if err := x.h.recompute(); err != nil {
		t.Fatal(err)
	}
	want := hasPeerOf(views(t, x.f.State())["gw-h29"], "gw-h31")
	v, ok := x.h.view("gw-h29")
	got := ok && v.peers.Len() == 1
	if !want || got != want {
		t.Errorf("gw-h29's view after the recovery: peer gw-h31 %v; the state's policy gives %v (hub policy version %d)", got, want, x.h.polVersion)
	}
}

// TestRestoreThenRestart: a node restarted after a restore and a command
// after it keeps the chain, the command and the restored registry.
func TestRestoreThenRestart(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	ctx := context.Background()
	op, off := person(t, cfg, n, "operator1"), person(t, cfg, n, "officer1")
	if _, err := op.AddAgency(ctx, api.Agency{Code: "000.00.00.H29", Name: "Quảng Ninh"}); err != nil {
		t.Fatal(err)
	}
	var backup bytes.Buffer
	if err := op.SaveSnapshot(ctx, &backup); err != nil {
		t.Fatal(err)
	}
	if _, err := op.AddAgency(ctx, api.Agency{Code: "000.00.00.H31", Name: "Hải Phòng"}); err != nil {
		t.Fatal(err)
	}
	if _, err := off.RestoreSnapshot(ctx, bytes.NewReader(backup.Bytes())); err != nil {
		t.Fatal(err)
	}
	restored := n.State().Index()
	if _, err := op.AddAgency(ctx, api.Agency{Code: "000.00.00.H49", Name: "Hà Tĩnh"}); err != nil {
		t.Fatal(err)
	}
	after := n.State().Index()
	head, _ := n.State().AuditHead()
	t.Logf("restored %d, after %d, raft last %d", restored, after, n.raft.LastIndex())
	n.Close()
	n = startNode(t, cfg)
	t.Cleanup(func() { n.Close() })
	op = person(t, cfg, n, "operator1")
	if _, err := op.Agencies(ctx); err != nil {
		t.Fatal(err)
	}
	h2, _ := n.State().AuditHead()
	t.Logf("after restart: index %d, head %d", n.State().Index(), h2.Seq)
	e, err := n.State().audit.entry(head.Seq)
	if n.State().Index() < after || err != nil || e.Hash != head.Hash {
		t.Errorf("after restart index %d head %d, before %d head %d", n.State().Index(), h2.Seq, after, head.Seq)
	}
	if _, ok := agencyByCode(n.State(), "000.00.00.H49"); !ok {
		t.Error("H49 lost after restart")
	}
	if _, ok := agencyByCode(n.State(), "000.00.00.H31"); ok {
		t.Error("H31 back after restart")
	}
}

func agencyByCode(s *State, code string) (api.Agency, bool) {
	for _, a := range s.Agencies() {
		if a.Code == code {
			return a, true
		}
	}
	return api.Agency{}, false
}

// TestForwardedRestoreStaysHere: a restore another node forwarded runs
// on this node only while it leads, and otherwise fails with
// ErrNotLeader for the forwarding node to retry: it is never forwarded on
// (it could come back to that node, busy with the same restore, whose
// officer would then hear that a restore is already in progress).
func TestForwardedRestoreStaysHere(t *testing.T) {
	nodes, leader := inProcessCluster(t)
	ran := 0
	local := func(context.Context) error { ran++; return nil }
	for _, n := range nodes {
		err := n.onLeaderHere(context.Background(), local)
		switch {
		case n == leader && err != nil:
			t.Errorf("%s, the leader: %v", n.cfg.Node, err)
		case n != leader && !errors.Is(err, ErrNotLeader):
			t.Errorf("%s, a follower: %v, want ErrNotLeader", n.cfg.Node, err)
		}
	}
	if ran != 1 {
		t.Errorf("the restore ran %d times, want once (on the leader)", ran)
	}
}

// TestBackupRestoreCommand: a backup of this cluster restored by the
// command every node applies, carrying what the restore takes from the
// backup (CmdBackupRollBack) or, as an earlier release wrote it, the
// whole backup (CmdBackupRestore). Two nodes that apply either end with
// the same state, in which the gateway registered since the backup is
// decommissioned and the restore's entry, at the command's index, ends
// the chain. A command whose backup is not one, is of another network,
// or is cut short, and a command that does not decode, is refused alike
// and changes nothing.
func TestBackupRestoreCommand(t *testing.T) {
	f0, _ := historyFSM(t)
	backup := snapshotBytes(t, f0)
	since := histCmd{CmdGatewayRegister, &GatewayAddRequest{Meta: meta("op"), ID: "gw9", Agency: "000.00.00.H29"}}
	sum := strings.Repeat("cd", 32)
	rb := rollbackFrom(t, backup)
	restores := []histCmd{
		{CmdBackupRollBack, &BackupRestoreRequest{Meta: meta("off2"), Role: "officer", BackupSHA256: sum, RollBack: rb}},
		{CmdBackupRollBack, &BackupRestoreRequest{Meta: meta("off2"), Role: "officer", BackupSHA256: sum, RollBack: rb}},
		{CmdBackupRestore, &BackupRestoreRequest{Meta: meta("off2"), Role: "officer", BackupSHA256: sum, State: backup}},
	}

	var snaps [][]byte
	for _, restore := range restores {
		f, next := historyFSM(t, since)
		// What the restore leaves, merged into a copy of the state.
		want, _, err := mergeSnapshots(snapshotBytes(t, f), backup, t.TempDir(), restoreInfo{Actor: "off2", Role: "officer", At: t0, BackupSHA256: sum})
		if err != nil {
			t.Fatal(err)
		}
		if err := applyCmd(t, f, next, restore.t, restore.req); err != nil {
			t.Fatal(err)
		}
		if g, _ := f.State().Gateway("gw9"); g.Status != api.StatusDecommissioned {
			t.Errorf("gw9, registered after the backup: %s", g.Status)
		}
		if i := f.State().Index(); i != next {
			t.Errorf("index %d after the restore at %d", i, next)
		}
		chain, err := f.State().Audit(0)
		if err != nil {
			t.Fatal(err)
		}
		if err := api.VerifyAudit(chain); err != nil {
			t.Fatal(err)
		}
		if e := chain[len(chain)-1]; e.Action != ActionRestore || e.RaftIndex != next || e.Actor != "off2" || e.Role != "officer" || e.RequestSHA256 != sum {
			t.Errorf("the chain ends with %+v", e)
		}
		snaps = append(snaps, snapshotBytes(t, f))
		if !bytes.Equal(snaps[len(snaps)-1], want) {
			t.Errorf("the restore, applied in place, left another state than merged into a copy:\n%s\n---\n%s", snaps[len(snaps)-1], want)
		}
	}
	if !bytes.Equal(snaps[0], snaps[1]) {
		t.Error("two nodes that applied the same restore hold different states")
	}
	if !bytes.Equal(snaps[0], snaps[2]) {
		t.Error("a restore carrying the whole backup (an earlier release's) left another state")
	}
	rollbackCmd := func(change func(*rollback)) []byte {
		c := rollbackFrom(t, backup)
		change(c)
		b, err := encodeCommand(CmdBackupRollBack, &BackupRestoreRequest{Meta: meta("off2"), RollBack: c})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var notJSON bytes.Buffer
	zw, _ := flate.NewWriter(&notJSON, flate.BestSpeed)
	zw.Write([]byte(`{"overlay":`))
	zw.Close()

	cut := backup[:bytes.IndexByte(backup, '\n')+1] // the header alone
	other := bytes.Replace(backup, []byte(`"100.64.0.0/24"`), []byte(`"100.65.0.0/24"`), 1)
	head, _ := json.Marshal(&BackupRestoreRequest{Meta: meta("off2")})
	plain := append(append(append([]byte{byte(CmdBackupRestore)}, binary.AppendUvarint(nil, uint64(len(head)))...), head...), "plain text"...)
	for _, tc := range []struct {
		name, want string
		data       []byte
	}{
		{"not a snapshot", "the backup", mustEncode(t, &BackupRestoreRequest{Meta: meta("off2"), State: []byte("not a snapshot")})},
		{"cut short", "no network", mustEncode(t, &BackupRestoreRequest{Meta: meta("off2"), State: cut})},
		{"another network", "another network", mustEncode(t, &BackupRestoreRequest{Meta: meta("off2"), State: other})},
		{"altered LANs", "the LANs", mustEncode(t, &BackupRestoreRequest{Meta: meta("off2"), State: bytes.Replace(backup, []byte(`"10.29.0.0/16"`), []byte(`"10.30.0.0/16"`), 1)})},
		{"policy not published here", "not the one this cluster published", mustEncode(t, &BackupRestoreRequest{Meta: meta("off2"), State: bytes.Replace(backup, []byte(`"source":"version: 1\n"`), []byte(`"source":"version: 1\n# altered\n"`), -1)})},
		{"head longer than the body", "no head", []byte{byte(CmdBackupRestore), 0xff, 0x01, '{'}},
		{"head not JSON", "decode command", []byte{byte(CmdBackupRestore), 1, '{'}},
		{"state not compressed", "the backup", plain},
		{"rollback: another network", "another network", rollbackCmd(func(c *rollback) { c.Overlay = netip.MustParsePrefix("100.65.0.0/24") })},
		{"rollback: altered LANs", "the LANs", rollbackCmd(func(c *rollback) { c.Gateways[0].LANs = []netip.Prefix{netip.MustParsePrefix("10.30.0.0/16")} })},
		{"rollback: a gateway twice", "gateway gw1 is listed twice", rollbackCmd(func(c *rollback) { c.Gateways = append(c.Gateways, c.Gateways[0]) })},
		{"rollback: an agency twice", "is listed twice", rollbackCmd(func(c *rollback) { c.Agencies = append(c.Agencies, c.Agencies[0]) })},
		{"rollback: an unregistered agency", "is not registered", rollbackCmd(func(c *rollback) { c.Gateways[0].Agency = "000.00.00.H30" })},
		{"rollback: empty", "no network", rollbackCmd(func(c *rollback) { *c = rollback{} })},
		{"rollback: not JSON", "the backup", append(append(append([]byte{byte(CmdBackupRollBack)}, binary.AppendUvarint(nil, uint64(len(head)))...), head...), notJSON.Bytes()...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, next := historyFSM(t, since)
			before := snapshotBytes(t, f)
			res := f.Apply(&raft.Log{Index: next, Type: raft.LogCommand, Data: tc.data}).(ApplyResult)
			if res.Err == nil || !strings.Contains(res.Err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q", res.Err, tc.want)
			}
			after := snapshotBytes(t, f)
			if !bytes.Equal(before[bytes.IndexByte(before, '\n'):], after[bytes.IndexByte(after, '\n'):]) {
				t.Fatal("a refused restore changed the state")
			}
		})
	}
}

// rollbackFrom is what a restore takes from backup.
func rollbackFrom(t *testing.T, backup []byte) *rollback {
	t.Helper()
	bk, err := readSnapshot(bytes.NewReader(backup), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer bk.close()
	return rollbackOf(bk)
}

func mustEncode(t *testing.T, r *BackupRestoreRequest) []byte {
	t.Helper()
	b, err := encodeCommand(CmdBackupRestore, r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBackupRestoreDeterministic: the nodes applying a four-eyes restore
// spend the same approved request when two name the backup (map order
// picked one per node), and a node that replays the restore from a
// snapshot taken before it ends where the nodes that applied it live did.
func TestBackupRestoreDeterministic(t *testing.T) {
	f0, _ := historyFSM(t)
	backup := snapshotBytes(t, f0)
	sum := strings.Repeat("ef", 32)
	more := []histCmd{
		{CmdRequestCreate, &RequestCreateRequest{Meta: meta("off"), ID: "ra", Role: "officer", Kind: api.RequestRestore, BackupSHA256: sum}},
		{CmdRequestDecide, &RequestDecideRequest{Meta: meta("off2"), ID: "ra", Role: "officer", Approve: true}},
		{CmdRequestCreate, &RequestCreateRequest{Meta: meta("off"), ID: "rb", Role: "officer", Kind: api.RequestRestore, BackupSHA256: sum}},
		{CmdRequestDecide, &RequestDecideRequest{Meta: meta("off2"), ID: "rb", Role: "officer", Approve: true}},
		{CmdGatewayRegister, &GatewayAddRequest{Meta: meta("op"), ID: "gw9", Agency: "000.00.00.H29"}},
	}
	restore := &BackupRestoreRequest{Meta: meta("off2"), Role: "officer", BackupSHA256: sum, FourEyes: true, State: backup}
	var first []byte
	for i := range 6 {
		f, next := historyFSM(t, more...)
		if err := applyCmd(t, f, next, CmdBackupRestore, restore); err != nil {
			t.Fatal(err)
		}
		snap := snapshotBytes(t, f)
		if i == 0 {
			first = snap
			if !bytes.Contains(snap, []byte(" request:ra")) {
				t.Fatal("the restore did not spend ra, the first approved")
			}
		} else if !bytes.Equal(snap, first) {
			t.Fatalf("node %d holds another state after the same restore", i)
		}
	}
	// Replayed after a restart from the snapshot before it.
	f, next := historyFSM(t, more...)
	re := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err := re.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, f)))); err != nil {
		t.Fatal(err)
	}
	if err := applyCmd(t, re, next, CmdBackupRestore, restore); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshotBytes(t, re), first) {
		t.Fatal("the restore replayed after a restart left another state")
	}
}

// TestChainExtendsReportsDisk: a chain that cannot be read is an error
// (the node stops), not "another cluster's backup" (a refusal on this
// node alone).
func TestChainExtendsReportsDisk(t *testing.T) {
	f0, _ := historyFSM(t)
	bk, err := readSnapshot(bytes.NewReader(snapshotBytes(t, f0)), "")
	if err != nil {
		t.Fatal(err)
	}
	defer bk.close()
	f, _ := historyFSM(t, histCmd{CmdGatewayRegister, &GatewayAddRequest{Meta: meta("op"), ID: "gw9", Agency: "000.00.00.H29"}})
	m, err := f.copyState()
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := chainExtends(m, rollbackOf(bk)); !ok || err != nil {
		t.Fatalf("a backup of this cluster: %v, %v", ok, err)
	}
	m.audit.f.Close() // this node's disk fails
	if _, err := chainExtends(m, rollbackOf(bk)); !errors.Is(err, errSpillIO) {
		t.Fatalf("a chain that cannot be read: %v", err)
	}
}

// TestBoundedReader: a state past the bound fails; one at it reads whole.
func TestBoundedReader(t *testing.T) {
	if b, err := io.ReadAll(newBoundedReader(strings.NewReader("abcdef"), 6)); err != nil || string(b) != "abcdef" {
		t.Fatalf("at the bound: %q, %v", b, err)
	}
	if _, err := io.ReadAll(newBoundedReader(strings.NewReader("abcdef"), 5)); err == nil || !strings.Contains(err.Error(), "is over 5 bytes") {
		t.Fatalf("past the bound: %v", err)
	}
}
