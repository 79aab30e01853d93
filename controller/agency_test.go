package controller

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/text/unicode/norm"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/policy"
)

// registryFSM is a state machine fed commands one index at a time.
type registryFSM struct {
	t     *testing.T
	f     *FSM
	index uint64
}

func (r *registryFSM) apply(typ CommandType, req any) error {
	r.t.Helper()
	r.index++
	return applyCmd(r.t, r.f, r.index, typ, req)
}

func (r *registryFSM) must(typ CommandType, req any) {
	r.t.Helper()
	if err := r.apply(typ, req); err != nil {
		r.t.Fatalf("%s: %v", typ, err)
	}
}

// enroll registers and enrolls a gateway of an agency.
func (r *registryFSM) enroll(id, code string) {
	r.t.Helper()
	r.must(CmdGatewayAdd, &GatewayAddRequest{Meta: meta("op"), ID: id, Agency: code})
	r.must(CmdTokenIssue, &TokenIssueRequest{Meta: meta("off"), Gateway: id, TokenHash: "t-" + id, Expires: t0.Add(time.Hour)})
	r.must(CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("gateway:" + id), Gateway: id, TokenHash: "t-" + id, PublicKey: "key-" + id, CertSerial: "1"})
}

const mergePolicy = `version: 1
groups:
  h29: {subtree: 000.00.00.H29}
  h01: {subtree: 000.00.00.H01}
  h29-communes: {subtree: 000.00.00.H29, level: commune}
services:
  ndxp: {gateways: [g22-gw], ports: [tcp/443]}
rules:
  - {from: [h29-communes], to: [ndxp]}
  - {from: [h01], to: [h01], ports: [tcp/22]}
  - {from: [h29], to: [h29], ports: [tcp/8443]}
tests:
  - {from: 000.00.00.H01, to: 000.12.04.H01, port: tcp/22, expect: allow}
`

// newMergeRegistry is two provinces about to merge (H01 into H29), a
// central body serving NDXP, and a policy that names H01.
func newMergeRegistry(t *testing.T) *registryFSM {
	r := &registryFSM{t: t, f: NewFSM(slog.Default(), nil)}
	r.must(CmdInitNetwork, &InitNetworkRequest{Meta: meta("node:ctl1"), OverlayPrefix: netip.MustParsePrefix("100.64.0.0/24")})
	r.must(CmdAgencyImport, &AgencyImportRequest{Meta: meta("op"), Agencies: []api.AgencyRow{
		{Code: "000.00.00.G22", Name: "Văn phòng Chính phủ"},
		{Code: "000.00.00.H29", Name: "Ủy ban nhân dân tỉnh Quảng Ninh"},
		{Code: "000.00.04.H29", Name: "Thành phố Hạ Long"},
		{Code: "000.12.04.H29", Name: "Phường Hồng Gai"},
		{Code: "000.00.00.H01", Name: "Ủy ban nhân dân tỉnh Hà Giang"},
		{Code: "000.00.04.H01", Name: "Huyện Vị Xuyên"},
		{Code: "000.12.04.H01", Name: "Xã Đạo Đức"},
		{Code: "000.13.04.H01", Name: "Xã Phong Quang", Parent: "000.00.00.H01"}, // districts abolished
	}})
	r.enroll("g22-gw", "000.00.00.G22")
	r.enroll("h29-gw", "000.00.00.H29")
	r.enroll("h29c-gw", "000.12.04.H29")
	r.enroll("h01-gw", "000.00.00.H01")
	r.enroll("h01c-gw", "000.12.04.H01")
	r.enroll("h01p-gw", "000.13.04.H01")
	r.must(CmdPolicyPublish, &PolicyPublishRequest{Meta: meta("off"), Name: "p.yaml", Source: mergePolicy})
	return r
}

// views compiles the current policy against the state, as the hub does.
func views(t *testing.T, s *State) map[string]*api.View {
	t.Helper()
	cur, _ := s.Policy()
	p, err := policy.Parse("p.yaml", []byte(cur.Source))
	if err != nil {
		t.Fatal(err)
	}
	v, err := p.Compile(&policy.Registry{Agencies: s.Agencies(), Gateways: s.Gateways()})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func agencyOf(s *State, code string) api.Agency {
	for _, a := range s.Agencies() {
		if a.Code == code {
			return a
		}
	}
	return api.Agency{}
}

// TestAgencyPlanIsWhatTheChangeDoes previews a change, applies it, and
// checks that the preview said exactly what happened: which agencies and
// gateways moved, which codes closed, and which gateways' views changed.
func TestAgencyPlanIsWhatTheChangeDoes(t *testing.T) {
	for _, tt := range []struct {
		name    string
		kind    string
		sources []string
		into    string
		// what the plan must say
		moved, gateways, closed []string
		changed                 []string
		refs                    int
	}{
		{
			name: "merge H01 into H29", kind: kindMerge, sources: []string{"000.00.00.H01"}, into: "000.00.00.H29",
			moved:    []string{"000.00.04.H01", "000.13.04.H01"},
			gateways: []string{"h01-gw"},
			closed:   []string{"000.00.00.H01"},
			// Every H01 gateway joins H29's subtree: h01-gw and h01c-gw
			// (under the moved district) and h01p-gw (moved commune) gain
			// tcp/8443 peers; the communes gain NDXP; H01's own group is
			// empty now, so tcp/22 among them goes; g22-gw gains the communes.
			changed: []string{"g22-gw", "h01-gw", "h01c-gw", "h01p-gw", "h29-gw", "h29c-gw"},
			refs:    2, // the h01 group's subtree and the test's from
		},
		{
			name: "reparent a commune of H01 under H29", kind: kindReparent, sources: []string{"000.13.04.H01"}, into: "000.00.00.H29",
			moved:   []string{"000.13.04.H01"},
			changed: []string{"g22-gw", "h01-gw", "h01c-gw", "h01p-gw", "h29-gw", "h29c-gw"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newMergeRegistry(t)
			s := r.f.State()
			before := views(t, s)
			agenciesBefore, gatewaysBefore := s.Agencies(), s.Gateways()
			plan, err := s.PlanAgencyChange(tt.kind, tt.sources, tt.into)
			if err != nil {
				t.Fatal(err)
			}
			if got := moveCodes(plan.Agencies); !slices.Equal(got, tt.moved) {
				t.Errorf("plan moves agencies %v, want %v", got, tt.moved)
			}
			if got := gatewayIDs(plan.Gateways); !slices.Equal(got, tt.gateways) {
				t.Errorf("plan moves gateways %v, want %v", got, tt.gateways)
			}
			if !slices.Equal(plan.Closed, tt.closed) && len(plan.Closed)+len(tt.closed) > 0 {
				t.Errorf("plan closes %v, want %v", plan.Closed, tt.closed)
			}
			if got := planGateways(plan.Views); !slices.Equal(got, tt.changed) {
				t.Errorf("plan changes the views of %v, want %v", got, tt.changed)
			}
			if len(plan.PolicyRefs) != tt.refs {
				t.Errorf("policy refs %+v, want %d", plan.PolicyRefs, tt.refs)
			}

			if tt.kind == kindMerge {
				r.must(CmdAgencyMerge, &AgencyMergeRequest{Meta: meta("op"), Sources: tt.sources, Code: tt.into})
			} else {
				r.must(CmdAgencyReparent, &AgencyReparentRequest{Meta: meta("op"), Code: tt.sources[0], Parent: tt.into})
			}

			// What the change did, read from the state.
			var moved, closed []string
			for i, a := range s.Agencies() {
				b := agenciesBefore[i]
				if a.Parent != b.Parent {
					moved = append(moved, a.Code)
					if a.Parent != tt.into {
						t.Errorf("%s moved to %s, want %s", a.Code, a.Parent, tt.into)
					}
				}
				if a.Closed() && !b.Closed() {
					closed = append(closed, a.Code)
					if a.MergedInto != tt.into || !a.ClosedAt.Equal(t0) {
						t.Errorf("closed %+v", a)
					}
				}
			}
			var gws []string
			for i, g := range s.Gateways() {
				if g.Agency != gatewaysBefore[i].Agency {
					gws = append(gws, g.ID)
				}
			}
			after := views(t, s)
			diff := policy.Diff(before, after, &policy.Registry{Agencies: s.Agencies(), Gateways: s.Gateways()})
			if !slices.Equal(moved, moveCodes(plan.Agencies)) || !slices.Equal(gws, gatewayIDs(plan.Gateways)) || !slices.Equal(closed, plan.Closed) && len(closed)+len(plan.Closed) > 0 {
				t.Errorf("the change moved %v and %v and closed %v; the plan said %+v", moved, gws, closed, plan)
			}
			if !reflect.DeepEqual(diff, plan.Views) {
				t.Errorf("views changed:\n%s\nthe plan said:\n%s", policy.RenderPlan(diff), policy.RenderPlan(plan.Views))
			}
			// The moved commune is in H29's subtree: it reaches NDXP.
			p, _ := policy.Parse("p.yaml", []byte(mergePolicy))
			reg := &policy.Registry{Agencies: s.Agencies(), Gateways: s.Gateways()}
			if !p.Allowed(after, reg, "h01p-gw", "g22-gw", api.ProtoTCP, 443) {
				t.Error("the commune moved under H29 does not reach NDXP")
			}
			// A closed code still compiles, selects nothing, and is reported.
			if tt.kind == kindMerge {
				if refs := p.ClosedRefs(reg); len(refs) != 2 || refs[0].Code != "000.00.00.H01" {
					t.Errorf("closed refs %+v", refs)
				}
				if p.Allowed(after, reg, "h01-gw", "h01c-gw", api.ProtoTCP, 22) {
					t.Error("the closed code's group still selects gateways")
				}
			}
		})
	}
}

func moveCodes(ms []api.AgencyMove) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Code)
	}
	return out
}

func gatewayIDs(ms []api.GatewayMove) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Gateway)
	}
	return out
}

func planGateways(p *api.PolicyPlan) []string {
	var out []string
	for _, g := range p.Gateways {
		out = append(out, g.Gateway)
	}
	return out
}

// TestAgencyLifecycle walks a code from import to closed, and checks that
// a closed code is never registered again and what the errors say.
func TestAgencyLifecycle(t *testing.T) {
	r := newMergeRegistry(t)
	s := r.f.State()

	// An import that changes nothing but a name, with a dry run first.
	rows := []api.AgencyRow{{Code: "000.00.00.H29", Name: "Tỉnh Quảng Ninh"}, {Code: "000.00.04.H29", Name: "Thành phố Hạ Long"}, {Code: "000.00.05.H29", Name: "Thị xã Đông Triều"}}
	res, err := s.PreviewImport(rows)
	if err != nil || len(res.Added) != 1 || len(res.Renamed) != 1 || res.Unchanged != 1 {
		t.Fatalf("preview %+v %v", res, err)
	}
	r.must(CmdAgencyImport, &AgencyImportRequest{Meta: meta("op"), Agencies: rows})
	if a := agencyOf(s, "000.00.00.H29"); a.Name != "Tỉnh Quảng Ninh" || a.Status != api.AgencyActive {
		t.Fatalf("renamed %+v", a)
	}

	// The error names the line; nothing of the batch is added.
	err = r.apply(CmdAgencyImport, &AgencyImportRequest{Meta: meta("op"), Agencies: []api.AgencyRow{
		{Code: "000.00.06.H29", Name: "ok", Line: 2}, {Code: "000.00.07.H29", Name: "bad", Parent: "000.00.00.H99", Line: 3}}})
	if err == nil || !strings.HasPrefix(err.Error(), "line 3: ") || !strings.Contains(err.Error(), "000.00.00.H99 of 000.00.07.H29 is not registered") {
		t.Fatalf("err %v", err)
	}
	if agencyOf(s, "000.00.06.H29").Code != "" {
		t.Fatal("a refused import added an agency")
	}

	// Close: refused while gateways and children remain; the errors say what to do.
	r.must(CmdAgencyMerge, &AgencyMergeRequest{Meta: meta("op"), Sources: []string{"000.00.00.H01"}, Code: "000.00.00.H29"})
	err = r.apply(CmdAgencyClose, &AgencyCloseRequest{Meta: meta("op"), Code: "000.12.04.H01"})
	if err == nil || !strings.Contains(err.Error(), "still has gateways h01c-gw") || !strings.Contains(err.Error(), "decommission them") {
		t.Fatalf("close with gateways: %v", err)
	}
	err = r.apply(CmdAgencyClose, &AgencyCloseRequest{Meta: meta("op"), Code: "000.00.04.H01"})
	if err == nil || !strings.Contains(err.Error(), "000.12.04.H01") || !strings.Contains(err.Error(), "reparent") {
		t.Fatalf("close with children: %v", err)
	}
	r.must(CmdGatewayDecommission, &GatewayDecommissionRequest{Meta: meta("off"), Gateway: "h01c-gw"})
	r.must(CmdAgencyClose, &AgencyCloseRequest{Meta: meta("op"), Code: "000.12.04.H01"})
	r.must(CmdAgencyClose, &AgencyCloseRequest{Meta: meta("op"), Code: "000.00.04.H01"})

	for _, code := range []string{"000.00.00.H01", "000.12.04.H01"} {
		err := r.apply(CmdAgencyUpsert, &AgencyUpsertRequest{Meta: meta("op"), Code: code, Name: "again"})
		if err == nil || !strings.Contains(err.Error(), "closed codes are never reused") {
			t.Fatalf("re-adding %s: %v", code, err)
		}
	}
	err = r.apply(CmdAgencyUpsert, &AgencyUpsertRequest{Meta: meta("op"), Code: "000.00.09.H01", Name: "new district"})
	if err == nil || !strings.Contains(err.Error(), "name 000.00.00.H29 (which it was merged into) as the parent") {
		t.Fatalf("under a closed parent: %v", err)
	}
	r.must(CmdAgencyUpsert, &AgencyUpsertRequest{Meta: meta("op"), Code: "000.00.09.H01", Name: "new district", Parent: "000.00.00.H29"})
	if a := agencyOf(s, "000.00.09.H01"); a.Parent != "000.00.00.H29" || a.Level != "district" {
		t.Fatalf("placed %+v", a)
	}
}

// TestDecommission: an enrolled gateway's certificates are revoked as
// cessationOfOperation and it leaves every view; a revoked gateway is
// decommissioned too; neither enrolls or renews again.
func TestDecommission(t *testing.T) {
	r := newMergeRegistry(t)
	s := r.f.State()
	r.must(CmdCertRecord, &CertRecordRequest{Meta: meta("node:ctl1"), Certs: []api.Certificate{
		{Serial: "a1", Kind: "gateway", Gateway: "h29-gw", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)},
		{Serial: "a2", Kind: "gateway", Gateway: "h01-gw", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)},
		{Serial: "a3", Kind: "gateway", Gateway: "h01-gw", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)},
	}})
	r.must(CmdCertRevoke, &CertRevokeRequest{Meta: meta("off"), Serial: "a3", Reason: 1})
	r.must(CmdCertRevoke, &CertRevokeRequest{Meta: meta("off"), Gateway: "h01-gw", Reason: 1}) // revokes a2, the gateway
	if g, _ := s.Gateway("h01-gw"); g.Status != api.StatusRevoked {
		t.Fatalf("h01-gw %+v", g)
	}
	for _, id := range []string{"h29-gw", "h01-gw"} {
		r.must(CmdGatewayDecommission, &GatewayDecommissionRequest{Meta: meta("off"), Gateway: id})
		if g, _ := s.Gateway(id); g.Status != api.StatusDecommissioned {
			t.Fatalf("%s %+v", id, g)
		}
	}
	if c, _ := s.Certificate("a1"); c.Status != api.CertRevoked || c.ReasonName != "cessationOfOperation" || c.RevokedBy != "off" {
		t.Fatalf("a1 %+v", c)
	}
	if ir, _ := s.issuer("abcd"); ir.LastRevocation != r.index-1 {
		t.Fatalf("the CRL publisher is not told: last revocation %d, decommission at %d", ir.LastRevocation, r.index-1)
	}
	for id, v := range views(t, s) {
		if id == "h29-gw" || id == "h01-gw" || hasPeerOf(v, "h29-gw") || hasPeerOf(v, "h01-gw") {
			t.Fatalf("%s's view still has a decommissioned gateway: %+v", id, v)
		}
	}
	if err := r.apply(CmdGatewayRenew, &GatewayRenewRequest{Meta: meta("gateway:h29-gw"), Gateway: "h29-gw", OldSerial: "1",
		Cert: api.Certificate{Serial: "b1", Kind: "gateway", Gateway: "h29-gw", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)}}); err == nil {
		t.Fatal("a decommissioned gateway renewed")
	}
	if err := r.apply(CmdTokenIssue, &TokenIssueRequest{Meta: meta("off"), Gateway: "h29-gw", TokenHash: "again", Expires: t0.Add(time.Hour)}); err == nil {
		t.Fatal("a decommissioned gateway got an enrollment token")
	}
}

func hasPeerOf(v *api.View, id string) bool {
	return slices.ContainsFunc(v.Peers, func(p api.Peer) bool { return p.Gateway == id })
}

// TestAgencyNames: names reach the registry in one form, whatever form
// they were typed or exported in: a name in NFD (as macOS writes files)
// is the same name as in NFC, not a rename, and a name of nothing
// visible is refused, by add and by import.
func TestAgencyNames(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	ctx := context.Background()
	op := person(t, cfg, n, "operator1")
	const qn = "Ủy ban nhân dân tỉnh Quảng Ninh"
	nfd := norm.NFD.String(qn)
	if nfd == qn {
		t.Fatal("the test name has no decomposition")
	}
	if a, err := op.AddAgency(ctx, api.Agency{Code: "000.00.00.H29", Name: nfd}); err != nil || a.Name != qn {
		t.Fatalf("added %+v, %v; want the name in NFC", a, err)
	}
	res, err := op.ImportAgencies(ctx, api.AgencyImport{Agencies: []api.AgencyRow{
		{Code: "000.00.00.H29", Name: " " + nfd + "\u200b", Line: 2},
		{Code: "000.00.04.H29", Name: norm.NFD.String("Thành phố  Hạ Long"), Line: 3},
	}})
	if err != nil || res.Unchanged != 1 || len(res.Renamed) != 0 || len(res.Added) != 1 || res.Added[0].Name != "Thành phố Hạ Long" {
		t.Fatalf("import of the same names in NFD: %+v, %v", res, err)
	}
	_, err = op.AddAgency(ctx, api.Agency{Code: "000.00.00.H01", Name: "\u200b"})
	wantStatus(t, err, 400, "it is empty")
	_, err = op.ImportAgencies(ctx, api.AgencyImport{Agencies: []api.AgencyRow{
		{Code: "000.00.00.H01", Name: "Hà Nội", Line: 2}, {Code: "000.00.00.H02", Name: "\ufeff ", Line: 3}}})
	wantStatus(t, err, 400, "line 3: ")
	if ags, _ := op.Agencies(ctx); len(ags) != 2 {
		t.Fatalf("agencies %+v", ags)
	}
}

// TestAgencyClosedHasNoGateways: from level 3 a gateway is not
// registered under a closed code (it would enroll with a certificate
// naming it, and a policy's subtree of the closed code would select it
// again); at level 2 the command applies as nodes of earlier releases
// apply it.
func TestAgencyClosedHasNoGateways(t *testing.T) {
	r := newMergeRegistry(t)
	r.must(CmdAgencyMerge, &AgencyMergeRequest{Meta: meta("op"), Sources: []string{"000.00.00.H01"}, Code: "000.00.00.H29"})
	r.must(CmdClusterLevel, &ClusterLevelRequest{Meta: meta("node:ctl1"), Level: 2})
	r.must(CmdGatewayRegister, &GatewayAddRequest{Meta: meta("op"), ID: "at-level-2", Agency: "000.00.00.H01"})
	r.must(CmdClusterLevel, &ClusterLevelRequest{Meta: meta("node:ctl1"), Level: 3})
	for _, typ := range []CommandType{CmdGatewayRegister, CmdGatewayAdd} {
		err := r.apply(typ, &GatewayAddRequest{Meta: meta("op"), ID: "late", Agency: "000.00.00.H01"})
		if err == nil || !strings.Contains(err.Error(), "merged into 000.00.00.H29") || !strings.Contains(err.Error(), "active agency") {
			t.Fatalf("%s under a closed code: %v", typ, err)
		}
	}
	if _, ok := r.f.State().Gateway("late"); ok {
		t.Fatal("a gateway was registered under a closed code")
	}
	r.must(CmdGatewayRegister, &GatewayAddRequest{Meta: meta("op"), ID: "late", Agency: "000.00.00.H29"})
}

// TestAgencyAuditObjects: from level 3 the audit entry of a merge names
// the codes it closed, and a re-parenting's the new parent (before, the
// chain named only the survivor and the moved code); at level 2 the
// entries are as earlier releases write them.
func TestAgencyAuditObjects(t *testing.T) {
	r := newMergeRegistry(t)
	last := func() api.AuditEntry {
		t.Helper()
		chain, err := r.f.State().Audit(0)
		if err != nil || len(chain) == 0 {
			t.Fatalf("audit chain: %v (%d entries)", err, len(chain))
		}
		return chain[len(chain)-1]
	}
	r.must(CmdClusterLevel, &ClusterLevelRequest{Meta: meta("node:ctl1"), Level: 2})
	r.must(CmdAgencyReparent, &AgencyReparentRequest{Meta: meta("op"), Code: "000.13.04.H01", Parent: "000.00.04.H01"})
	if e := last(); e.Action != "agency-reparent" || e.Object != "000.13.04.H01" {
		t.Errorf("level 2: %s %q", e.Action, e.Object)
	}
	r.must(CmdClusterLevel, &ClusterLevelRequest{Meta: meta("node:ctl1"), Level: 3})
	r.must(CmdAgencyReparent, &AgencyReparentRequest{Meta: meta("op"), Code: "000.13.04.H01", Parent: "000.00.00.H01"})
	if e := last(); e.Object != "000.13.04.H01 under 000.00.00.H01" {
		t.Errorf("level 3 re-parenting: object %q", e.Object)
	}
	r.must(CmdAgencyMerge, &AgencyMergeRequest{Meta: meta("op"), Sources: []string{"000.00.00.H01"}, Code: "000.00.00.H29"})
	if e := last(); e.Action != "agency-merge" || e.Object != "000.00.00.H29 merged from 000.00.00.H01" {
		t.Errorf("level 3 merge: %s %q", e.Action, e.Object)
	}
}

// TestGatewayNamedLikePolicy: from level 3 a gateway whose id is a group
// or a service of the current policy is refused (the policy would no
// longer compile, and every view would stay as it was); at level 2 it
// is registered, as earlier releases do.
func TestGatewayNamedLikePolicy(t *testing.T) {
	r := newMergeRegistry(t)
	r.must(CmdPolicyPublish, &PolicyPublishRequest{Meta: meta("off"), Name: "p.yaml", Source: "version: 1\ngroups:\n  provinces:\n    level: province\nservices:\n  portal:\n    group: provinces\n    ports: [tcp/443]\nrules:\n  - from: [provinces]\n    to: [portal]\n"})
	r.must(CmdClusterLevel, &ClusterLevelRequest{Meta: meta("node:ctl1"), Level: 2})
	r.must(CmdGatewayRegister, &GatewayAddRequest{Meta: meta("op"), ID: "portal", Agency: "000.00.00.H29"})
	r.must(CmdClusterLevel, &ClusterLevelRequest{Meta: meta("node:ctl1"), Level: 3})
	for _, tt := range []struct{ id, what string }{{"provinces", "group"}, {"portal2", ""}} {
		err := r.apply(CmdGatewayRegister, &GatewayAddRequest{Meta: meta("op"), ID: tt.id, Agency: "000.00.00.H29"})
		switch {
		case tt.what == "" && err != nil:
			t.Errorf("%s: %v", tt.id, err)
		case tt.what != "" && (!errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "name of a "+tt.what)):
			t.Errorf("%s: %v, want a conflict naming the %s", tt.id, err, tt.what)
		}
	}
	// A new policy without the group frees the name.
	r.must(CmdPolicyPublish, &PolicyPublishRequest{Meta: meta("off"), Name: "p.yaml", Source: mergePolicy})
	r.must(CmdGatewayRegister, &GatewayAddRequest{Meta: meta("op"), ID: "provinces", Agency: "000.00.00.H29"})
}

// TestPolicyNamedLikeGateway: from level 3 a publication whose group or
// service is named as a registered gateway is refused in Apply (a
// registration may come between the node's check and the publication);
// at level 2 it is published, as earlier releases do.
func TestPolicyNamedLikeGateway(t *testing.T) {
	r := newMergeRegistry(t)
	r.must(CmdGatewayRegister, &GatewayAddRequest{Meta: meta("op"), ID: "provinces", Agency: "000.00.00.H29"})
	src := "version: 1\ngroups:\n  provinces:\n    level: province\nrules:\n  - from: [provinces]\n    to: [provinces]\n    ports: [tcp/22]\n"
	r.must(CmdClusterLevel, &ClusterLevelRequest{Meta: meta("node:ctl1"), Level: 2})
	r.must(CmdPolicyPublish, &PolicyPublishRequest{Meta: meta("off"), Name: "p.yaml", Source: src})
	r.must(CmdClusterLevel, &ClusterLevelRequest{Meta: meta("node:ctl1"), Level: 3})
	before, _ := r.f.State().Policy()
	err := r.apply(CmdPolicyPublish, &PolicyPublishRequest{Meta: meta("off"), Name: "p.yaml", Source: src})
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "group provinces: name is also a gateway id") {
		t.Fatalf("a policy naming a group as a gateway at level 3: %v", err)
	}
	if after, _ := r.f.State().Policy(); after.Version != before.Version {
		t.Fatalf("the refused policy was published: version %d, before %d", after.Version, before.Version)
	}
}
