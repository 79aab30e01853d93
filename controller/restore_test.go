package controller

import (
	"bytes"
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
	"github.com/govnet/govnet/ca"
)

// mergedFSM restores backup into a copy of f's state as the leader does
// (mergeSnapshots) and installs the result in a fresh FSM, as every node
// does.
func mergedFSM(t *testing.T, f *FSM, backup []byte, r restoreInfo) (*FSM, error) {
	t.Helper()
	b, err := mergeSnapshots(snapshotBytes(t, f), backup, t.TempDir(), r)
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
// removes (revoked now), the policy versions, with the restore's own
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

	// Rolled back: the agency and the gateway added since.
	if _, ok := s.agencies["000.00.00.H31"]; ok {
		t.Error("the agency added after the backup is still there")
	}
	if _, ok := s.Gateway("late"); ok {
		t.Error("the gateway added after the backup is still there")
	}
	if _, ok := s.addrInUse[late.OverlayIP]; ok || !late.OverlayIP.IsValid() {
		t.Errorf("the removed gateway's address %s is still in use", late.OverlayIP)
	}
	if _, ok := s.keyOwner["kl"]; ok {
		t.Error("the removed gateway's WireGuard key is still held")
	}
	// Its certificate stays in the inventory, revoked by the restorer; its
	// issuer's CRL is due again.
	if c, ok := s.Certificate("1a7e"); !ok || c.Status != api.CertRevoked || c.Reason != int(ca.ReasonCessationOfOperation) || c.RevokedBy != "off2" || !c.RevokedAt.Equal(r.At) {
		t.Errorf("the removed gateway's certificate: %+v", c)
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

	// The restored state goes on: the gateway removed may register again.
	if err := applyCmd(t, g, indexBefore+5, CmdGatewayRegister, &GatewayAddRequest{Meta: m("op"), ID: "late", Agency: "000.00.00.H29", LANs: []netip.Prefix{netip.MustParsePrefix("10.33.0.0/16")}}); err != nil {
		t.Fatal(err)
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
