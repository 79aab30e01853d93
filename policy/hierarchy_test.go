package policy

import (
	"bytes"
	"encoding/base64"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/govnet/govnet/api"
)

// Groups select by the registry's hierarchy, not the codes': after the
// 2025 reform a commune's code still says Quảng Nam (H49) while the
// registry keeps it under Đà Nẵng (H48).
const hierarchyPolicy = `version: 1
groups:
  h48: {subtree: 000.00.00.H48}
  h49: {subtree: 000.00.00.H49}
  h48-communes: {subtree: 000.00.00.H48, level: commune}
  districts: {level: district}
services:
  web: {gateways: [h48-gw], ports: [tcp/443]}
rules:
  - {from: [h48-communes], to: [web]}
  - {from: [h49], to: [h49], ports: [tcp/22]}
  - {from: [districts], to: [web]}
tests:
  - {from: 000.00.00.H49, to: web, port: tcp/443, expect: deny}
`

// hierarchyRegistry: H49 merged into H48 (closed); its district moved
// under H48 with its commune; another commune of H49 placed directly
// under H48 (districts abolished); a gateway whose agency the registry
// does not have, which falls back to its code.
func hierarchyRegistry(parentOfMoved string) *Registry {
	key := func(b byte) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, 32)) }
	gw := func(id, code string, n byte) api.Gateway {
		return api.Gateway{ID: id, Agency: code, Status: api.StatusEnrolled, PublicKey: key(n), OverlayIP: netip.AddrFrom4([4]byte{100, 64, 0, n})}
	}
	return &Registry{
		Agencies: []api.Agency{
			{Code: "000.00.00.H48", Name: "Đà Nẵng", Level: "province", Status: api.AgencyActive},
			{Code: "000.00.00.H49", Name: "Quảng Nam", Level: "province", Status: api.AgencyClosed, MergedInto: "000.00.00.H48"},
			{Code: "000.00.04.H49", Name: "Huyện Duy Xuyên", Level: "district", Parent: "000.00.00.H48"},
			{Code: "000.12.04.H49", Name: "Xã Duy Hải", Level: "commune", Parent: "000.00.04.H49"},
			{Code: "000.13.04.H49", Name: "Xã Duy Nghĩa", Level: "commune", Parent: parentOfMoved},
		},
		Gateways: []api.Gateway{
			gw("h48-gw", "000.00.00.H48", 1),
			gw("h49d-gw", "000.00.04.H49", 2),
			gw("h49c-gw", "000.12.04.H49", 3),
			gw("h49c2-gw", "000.13.04.H49", 4),
			gw("h50d-gw", "000.00.04.H50", 5), // agency not in the registry: its code says district of H50
		},
	}
}

func TestHierarchyFollowsRegistry(t *testing.T) {
	p := mustParse(t, "h.yaml", hierarchyPolicy)
	reg := hierarchyRegistry("000.00.00.H48")
	views, err := p.Compile(reg)
	if err != nil {
		t.Fatalf("a policy naming a closed code must compile: %v", err)
	}
	for _, c := range []struct {
		from, to string
		port     uint16
		want     bool
	}{
		{"h49c-gw", "h48-gw", 443, true},   // commune under a moved district: in H48's subtree
		{"h49c2-gw", "h48-gw", 443, true},  // commune placed directly under H48
		{"h49d-gw", "h48-gw", 443, true},   // level: the stored level
		{"h50d-gw", "h48-gw", 443, true},   // unknown agency: level from its code
		{"h49c-gw", "h49c2-gw", 22, false}, // the closed code's group selects nothing
	} {
		if got := p.Allowed(views, reg, c.from, c.to, api.ProtoTCP, c.port); got != c.want {
			t.Errorf("%s -> %s tcp/%d: %v, want %v", c.from, c.to, c.port, got, c.want)
		}
	}
	refs := p.ClosedRefs(reg)
	var got []string
	for _, r := range refs {
		got = append(got, r.Where()+" "+r.What+" "+r.Code)
	}
	want := []string{"h.yaml:4:18 group h49: subtree 000.00.00.H49", "h.yaml:14:12 test 1: from 000.00.00.H49"}
	if !slices.Equal(got, want) {
		t.Errorf("closed refs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if p.ClosedRefs(testRegistry()) != nil {
		t.Error("closed refs without closed codes")
	}
}

// A cycle in the stored parents (a corrupt registry) must not hang a
// compile: the walk up the chain is bounded.
func TestHierarchyCycle(t *testing.T) {
	reg := hierarchyRegistry("000.13.04.H49") // its own parent
	reg.Agencies[2].Parent = "000.12.04.H49"  // the district under its commune, the commune under the district
	p := mustParse(t, "h.yaml", hierarchyPolicy)
	views, err := p.Compile(reg)
	if err != nil {
		t.Fatal(err)
	}
	if p.Allowed(views, reg, "h49c-gw", "h48-gw", api.ProtoTCP, 443) {
		t.Error("a commune on a cycle is in H48's subtree")
	}
	// Subtree members are listed once each, also under an agency on the
	// cycle.
	onCycle := mustParse(t, "c.yaml", "version: 1\ngroups:\n  c: {subtree: 000.13.04.H49}\n  d: {subtree: "+reg.Agencies[2].Code+"}\n"+
		"rules:\n  - {from: [c], to: [d], ports: [tcp/22]}\n")
	r, err := onCycle.resolve(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range onCycle.Groups {
		if g.Subtree == nil {
			continue
		}
		slots := r.subtree(g.Subtree.Name)
		if len(slots) != len(slices.Compact(slices.Sorted(slices.Values(slots)))) {
			t.Errorf("subtree %s lists a member twice: %v", g.Subtree.Name, slots)
		}
	}
}
