package policy

import (
	"slices"
	"strings"
	"testing"

	"github.com/govnet/govnet/api"
)

func compileSrc(t *testing.T, reg *Registry, src string) map[string]*api.View {
	t.Helper()
	views, err := mustParse(t, "p.yaml", src).Compile(reg)
	if err != nil {
		t.Fatal(err)
	}
	return views
}

func TestDiff(t *testing.T) {
	reg := testRegistry()
	provincesSSH := "version: 1\ngroups:\n  provinces:\n    level: province\nrules:\n  - from: [provinces]\n    to: [provinces]\n    ports: [tcp/22]\n"
	provincesWeb := strings.Replace(provincesSSH, "tcp/22", "tcp/443", 1)
	ndxp := "version: 1\nservices:\n  ndxp:\n    gateways: [g22-gw1]\n    ports: [tcp/443]\nrules:\n  - from: [h29c-gw1]\n    to: [ndxp]\n"

	t.Run("no change", func(t *testing.T) {
		v := compileSrc(t, reg, provincesSSH)
		p := Diff(v, compileSrc(t, reg, provincesSSH), reg)
		if len(p.Gateways) != 0 || p.Unchanged != 5 || p.TotalGateways != 5 {
			t.Fatalf("%+v", p)
		}
	})
	t.Run("port flip", func(t *testing.T) {
		p := Diff(compileSrc(t, reg, provincesSSH), compileSrc(t, reg, provincesWeb), reg)
		// h29-gw1 and h49-gw1 each swap tcp/22 for tcp/443 from the other's
		// overlay address and LAN: 2 flows gained, 2 lost per gateway.
		if len(p.Gateways) != 2 || p.FlowsGained != 4 || p.FlowsLost != 4 || p.PeersGained+p.PeersLost != 0 {
			t.Fatalf("%s", RenderPlan(p))
		}
		g := p.Gateways[0]
		if g.Gateway != "h29-gw1" || g.Agency != "000.00.00.H29" || g.Gained[0].From != "h49-gw1" || g.Gained[0].Port != 443 || g.Lost[0].Port != 22 {
			t.Fatalf("%+v", g)
		}
		if !strings.Contains(RenderPlan(p), "  + from h49-gw1 (100.64.0.6/32) tcp/443\n") {
			t.Fatalf("rendering:\n%s", RenderPlan(p))
		}
	})
	t.Run("a LAN a retired gateway held", func(t *testing.T) {
		reg := testRegistry()
		reg.Gateways = append(reg.Gateways, api.Gateway{ID: "zz-old", Agency: "000.00.00.H29",
			Status: api.StatusDecommissioned, LANs: reg.Gateways[slices.IndexFunc(reg.Gateways, func(g api.Gateway) bool { return g.ID == "h49-gw1" })].LANs})
		after := compileSrc(t, reg, "version: 1\nrules:\n  - {from: [h49-gw1], to: [g22-gw1], ports: [tcp/443]}\n")
		out := RenderPlan(Diff(nil, after, reg))
		if !strings.Contains(out, "+ from h49-gw1 (10.49.0.0/24) tcp/443") || strings.Contains(out, "zz-old") {
			t.Fatalf("the plan names the retired gateway for the LAN its successor holds:\n%s", out)
		}
	})
	t.Run("new service", func(t *testing.T) {
		p := Diff(compileSrc(t, reg, provincesSSH), compileSrc(t, reg, ndxp), reg)
		want := map[string][2]int{ // gateway -> flows gained, lost
			"g22-gw1":  {3, 0}, // h29c-gw1's overlay address and two LANs
			"h29-gw1":  {0, 2},
			"h29c-gw1": {0, 0}, // gains a peer only
			"h49-gw1":  {0, 2},
		}
		if len(p.Gateways) != len(want) {
			t.Fatalf("%s", RenderPlan(p))
		}
		for _, g := range p.Gateways {
			if w := want[g.Gateway]; len(g.Gained) != w[0] || len(g.Lost) != w[1] {
				t.Errorf("%s: +%d -%d, want +%d -%d", g.Gateway, len(g.Gained), len(g.Lost), w[0], w[1])
			}
		}
		if p.PeersGained != 2 || p.PeersLost != 2 {
			t.Errorf("peers +%d -%d", p.PeersGained, p.PeersLost)
		}
	})
	t.Run("from nothing", func(t *testing.T) {
		p := Diff(nil, compileSrc(t, reg, provincesSSH), reg)
		if p.FlowsGained != 4 || p.FlowsLost != 0 {
			t.Fatalf("%s", RenderPlan(p))
		}
	})
}
