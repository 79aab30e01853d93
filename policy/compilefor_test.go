package policy

import (
	"cmp"
	"encoding/json"
	"math/rand/v2"
	"os"
	"slices"
	"testing"

	"github.com/govnet/govnet/api"
)

// TestCompileFor checks that compiling a subset gives exactly the views a
// full compile gives for that subset, on the example policy and on a
// national-size registry.
func TestCompileFor(t *testing.T) {
	src, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		reg  *Registry
		src  []byte
	}{
		{"example", testRegistry(), src},
		{"national", bigRegistry(), []byte(bigPolicy)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := mustParse(t, "p.yaml", string(c.src))
			all, err := p.Compile(c.reg)
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			subsets := [][]string{nil, {"no-such-gateway"}}
			for range 8 {
				var ids []string
				for range 1 + rng.IntN(5) {
					ids = append(ids, c.reg.Gateways[rng.IntN(len(c.reg.Gateways))].ID)
				}
				subsets = append(subsets, ids)
			}
			// The gateways a change to g touches: g and its peers.
			g := c.reg.Gateways[len(c.reg.Gateways)/2].ID
			touched := []string{g}
			for _, peer := range all[g].Peers {
				touched = append(touched, peer.Gateway)
			}
			subsets = append(subsets, touched)
			for _, ids := range subsets {
				got, err := p.CompileFor(c.reg, ids)
				if err != nil {
					t.Fatal(err)
				}
				want := map[string]*api.View{}
				for _, id := range ids {
					if v, ok := all[id]; ok {
						want[id] = v
					}
				}
				gj, _ := json.Marshal(got)
				wj, _ := json.Marshal(want)
				if string(gj) != string(wj) {
					t.Fatalf("CompileFor(%v) differs from Compile:\n got %.300s\nwant %.300s", ids, gj, wj)
				}
			}
		})
	}
}

// BenchmarkCompileFor measures recomputing what one gateway's change
// touches (the gateway and its peers) at national size, beside the full
// compile of BenchmarkCompile.
func BenchmarkCompileFor(b *testing.B) {
	reg := bigRegistry()
	p, err := Parse("big.yaml", []byte(bigPolicy))
	if err != nil {
		b.Fatal(err)
	}
	all, err := p.Compile(reg)
	if err != nil {
		b.Fatal(err)
	}
	g := reg.Gateways[len(reg.Gateways)/2].ID // a commune: peers with NDXP
	ids := []string{g}
	for _, peer := range all[g].Peers {
		ids = append(ids, peer.Gateway)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := p.CompileFor(reg, ids); err != nil {
			b.Fatal(err)
		}
	}
}

// TestCompileJoinAround: when a gateway joins, CompileJoin's own view and
// its parts merged into the views from before, and CompileAround of the
// gateway with its peers before, give what a full compile of the registry
// after gives, on the example policy and at national size.
func TestCompileJoinAround(t *testing.T) {
	src, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	national := bigRegistry()
	cases := []struct {
		name string
		reg  *Registry
		src  []byte
		join string
	}{
		{"example", testRegistry(), src, ""},
		{"national/commune", national, []byte(bigPolicy), national.Gateways[len(national.Gateways)/2].ID},
		{"national/ndxp", national, []byte(bigPolicy), "gw1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := mustParse(t, "p.yaml", string(c.src))
			after, err := p.Compile(c.reg)
			if err != nil {
				t.Fatal(err)
			}
			join := c.join
			if join == "" { // the participating gateway with the most peers
				for id, v := range after {
					if join == "" || len(v.Peers) > len(after[join].Peers) || len(v.Peers) == len(after[join].Peers) && id < join {
						join = id
					}
				}
			}
			// Before: the same registry with the gateway still pending.
			before := &Registry{Agencies: c.reg.Agencies, Gateways: slices.Clone(c.reg.Gateways)}
			for i := range before.Gateways {
				if before.Gateways[i].ID == join {
					before.Gateways[i].Status = api.StatusPending
				}
			}
			old, err := p.Compile(before)
			if err != nil {
				t.Fatal(err)
			}
			same := func(what string, got, want *api.View) {
				t.Helper()
				gj, _ := json.Marshal(got)
				wj, _ := json.Marshal(want)
				if string(gj) != string(wj) {
					t.Fatalf("%s differs from Compile:\n got %.300s\nwant %.300s", what, gj, wj)
				}
			}
			own, added, err := p.CompileJoin(c.reg, []string{join})
			if err != nil {
				t.Fatal(err)
			}
			same("own view of "+join, own[join], after[join])
			if len(added) != len(after[join].Peers) {
				t.Fatalf("%d views gain a part, want %d (the joining gateway's peers)", len(added), len(after[join].Peers))
			}
			for d, part := range added {
				merged := *old[d]
				merged.Peers = slices.SortedFunc(slices.Values(slices.Concat(old[d].Peers, part.Peers)), func(a, b api.Peer) int { return cmp.Compare(a.Gateway, b.Gateway) })
				merged.Rules = slices.SortedFunc(slices.Values(slices.Concat(old[d].Rules, part.Rules)), api.CompareRules)
				if merged.Rules == nil {
					merged.Rules = []api.Rule{}
				}
				same("view of "+d+" with the joining part", &merged, after[d])
			}
			var peersBefore []string
			for id, v := range old {
				if slices.ContainsFunc(v.Peers, func(p api.Peer) bool { return p.Gateway == join }) {
					peersBefore = append(peersBefore, id)
				}
			}
			around, err := p.CompileAround(c.reg, []string{join}, peersBefore)
			if err != nil {
				t.Fatal(err)
			}
			if len(around) != 1+len(after[join].Peers) {
				t.Fatalf("CompileAround gave %d views, want %d", len(around), 1+len(after[join].Peers))
			}
			for id, v := range around {
				same("CompileAround view of "+id, v, after[id])
			}
		})
	}
}
