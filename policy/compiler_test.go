package policy

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/govnet/govnet/api"
)

// TestCompilerUpdate drives a Compiler through random gateway changes
// (join, leave, rejoin, new LANs, a move to another agency, new gateways)
// and checks after each that its views are exactly those a fresh Compile
// of the same registry gives, and that CompileFor, CompileJoin and
// CompileAround agree with the Policy functions of the same name.
func TestCompilerUpdate(t *testing.T) {
	src, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	agencies, gateways := smallNational()
	cases := []struct {
		name  string
		reg   *Registry
		src   string
		steps int
	}{
		{"example", testRegistry(), string(src), 60},
		{"national", &Registry{Agencies: agencies, Gateways: gateways}, bigPolicy, 40},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := mustParse(t, "p.yaml", c.src)
			reg := &Registry{Agencies: c.reg.Agencies, Gateways: slices.Clone(c.reg.Gateways)}
			comp, err := p.NewCompiler(reg)
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(3, 4))
			same := func(step int, what string, got, want any) {
				t.Helper()
				gj, _ := json.Marshal(got)
				wj, _ := json.Marshal(want)
				if string(gj) != string(wj) {
					t.Fatalf("step %d: %s differs from a fresh compile:\n got %.400s\nwant %.400s", step, what, gj, wj)
				}
			}
			for step := range c.steps {
				var changed []api.Gateway
				for range 1 + rng.IntN(3) {
					g := changeGateway(rng, reg, step)
					changed = append(changed, g)
				}
				comp.Update(changed)
				// A later change to the caller's registry must not reach the Compiler.
				reg.Gateways = slices.Clone(reg.Gateways)

				all, err := p.Compile(reg)
				if err != nil {
					t.Fatal(err)
				}
				same(step, "All", comp.All(), all)
				ids := []string{changed[0].ID, reg.Gateways[rng.IntN(len(reg.Gateways))].ID}
				want, _ := p.CompileFor(reg, ids)
				same(step, fmt.Sprintf("CompileFor(%v)", ids), comp.CompileFor(ids), want)
				wantOwn, wantAdded, _ := p.CompileJoin(reg, ids[:1])
				own, added := comp.CompileJoin(ids[:1])
				same(step, "CompileJoin own", own, wantOwn)
				same(step, "CompileJoin added", added, wantAdded)
				wantAround, _ := p.CompileAround(reg, ids[:1], ids[1:])
				same(step, "CompileAround", comp.CompileAround(ids[:1], ids[1:]), wantAround)
			}
		})
	}
}

// smallNational is a national-shaped registry small enough to compile
// from scratch after every step.
func smallNational() ([]api.Agency, []api.Gateway) {
	reg := bigRegistry()
	var gws []api.Gateway
	for i, g := range reg.Gateways {
		if i%40 == 0 || i < 40 {
			gws = append(gws, g)
		}
	}
	return reg.Agencies, gws
}

// changeGateway makes one random change to reg's gateways and returns the
// changed gateway as it is now.
func changeGateway(rng *rand.Rand, reg *Registry, step int) api.Gateway {
	gws := reg.Gateways
	switch k := rng.IntN(6); {
	case k == 0: // a new gateway in a random agency, enrolled at once
		a := reg.Agencies[rng.IntN(len(reg.Agencies))]
		g := api.Gateway{ID: fmt.Sprintf("zz-new-%d-%d", step, rng.IntN(1000)), Agency: a.Code, Status: api.StatusEnrolled,
			PublicKey: fmt.Sprintf("key-%d", rng.Int()), Endpoint: "192.0.2.1:51820",
			OverlayIP: netip.AddrFrom4([4]byte{100, 65, byte(step), byte(rng.IntN(250))})}
		if slices.ContainsFunc(gws, func(x api.Gateway) bool { return x.ID == g.ID }) {
			return changeGateway(rng, reg, step)
		}
		i, _ := slices.BinarySearchFunc(gws, g.ID, func(x api.Gateway, id string) int { return cmpString(x.ID, id) })
		reg.Gateways = slices.Insert(gws, i, g)
		return g
	default:
		i := rng.IntN(len(gws))
		g := &gws[i]
		switch k {
		case 1: // leave
			g.Status = api.StatusRevoked
		case 2: // join or rejoin
			g.Status = api.StatusEnrolled
			if !g.OverlayIP.IsValid() {
				g.OverlayIP = netip.AddrFrom4([4]byte{100, 66, byte(step), byte(i)})
			}
			if g.PublicKey == "" {
				g.PublicKey = fmt.Sprintf("key-%d", rng.Int())
			}
		case 3: // new LANs
			g.LANs = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, byte(step), 0}), 24)}
		case 4: // moved to another agency
			g.Agency = reg.Agencies[rng.IntN(len(reg.Agencies))].Code
		case 5: // a new endpoint
			g.Endpoint = fmt.Sprintf("192.0.2.%d:51820", 1+rng.IntN(200))
		}
		return *g
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
