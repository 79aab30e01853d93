package policy

import (
	"encoding/json"
	"math/rand/v2"
	"os"
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
