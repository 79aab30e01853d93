package policy

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/govnet/govnet/api"
)

// flowString renders a flow for a person: "h49-gw1 (100.64.0.6/32) tcp/443".
func flowString(f api.Flow) string {
	who := f.Source.String()
	if f.From != "" {
		who = f.From + " (" + who + ")"
	}
	if f.Protocol == api.ProtoICMP {
		return who + " icmp"
	}
	return fmt.Sprintf("%s %s/%d", who, f.Protocol, f.Port)
}

// Diff compares the views before and after a change. reg names the owners
// of source addresses; gateways absent from one side count as having an
// empty view there.
func Diff(before, after map[string]*api.View, reg *Registry) *api.PolicyPlan {
	owner := map[netip.Prefix]string{}
	agencyOf := map[string]string{}
	if reg != nil {
		// A revoked or decommissioned gateway's LANs are free for the
		// gateway that replaces it: a gateway in service owns its
		// addresses over one out of it, whatever the registry's order.
		for _, inService := range []bool{false, true} {
			for i := range reg.Gateways {
				g := &reg.Gateways[i]
				agencyOf[g.ID] = g.Agency
				if Participates(g) != inService {
					continue
				}
				if a := g.OverlayIP.Unmap(); a.IsValid() {
					owner[netip.PrefixFrom(a, a.BitLen())] = g.ID
				}
				for _, lan := range g.LANs {
					owner[lan.Masked()] = g.ID
				}
			}
		}
	}
	ids := map[string]bool{}
	for id := range before {
		ids[id] = true
	}
	for id := range after {
		ids[id] = true
	}
	p := &api.PolicyPlan{TotalGateways: len(ids)}
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		b, a := viewOrEmpty(before[id]), viewOrEmpty(after[id])
		gp := api.GatewayPlan{Gateway: id, Agency: agencyOf[id]}
		gained, lost := diffSorted(b.Rules, a.Rules, compareRule)
		for _, r := range gained {
			gp.Gained = append(gp.Gained, api.Flow{From: owner[r.Source], Source: r.Source, Protocol: r.Protocol, Port: r.Port})
		}
		for _, r := range lost {
			gp.Lost = append(gp.Lost, api.Flow{From: owner[r.Source], Source: r.Source, Protocol: r.Protocol, Port: r.Port})
		}
		gp.PeersGained, gp.PeersLost = diffSorted(peerIDs(b), peerIDs(a), strings.Compare)
		if len(gp.Gained)+len(gp.Lost)+len(gp.PeersGained)+len(gp.PeersLost) == 0 {
			p.Unchanged++
			continue
		}
		p.FlowsGained += len(gp.Gained)
		p.FlowsLost += len(gp.Lost)
		p.PeersGained += len(gp.PeersGained)
		p.PeersLost += len(gp.PeersLost)
		p.Gateways = append(p.Gateways, gp)
	}
	return p
}

// RenderPlan renders a plan for a person: a summary line, then each
// changing gateway with + and - lines.
func RenderPlan(p *api.PolicyPlan) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%d of %d gateways change: %d flows gained, %d lost; %d peerings gained, %d lost\n",
		len(p.Gateways), p.TotalGateways, p.FlowsGained, p.FlowsLost, p.PeersGained, p.PeersLost)
	for _, g := range p.Gateways {
		fmt.Fprintf(&sb, "\n%s (%s): +%d -%d flows\n", g.Gateway, g.Agency, len(g.Gained), len(g.Lost))
		for _, f := range g.Gained {
			fmt.Fprintf(&sb, "  + from %s\n", flowString(f))
		}
		for _, f := range g.Lost {
			fmt.Fprintf(&sb, "  - from %s\n", flowString(f))
		}
		for _, id := range g.PeersGained {
			fmt.Fprintf(&sb, "  + peer %s\n", id)
		}
		for _, id := range g.PeersLost {
			fmt.Fprintf(&sb, "  - peer %s\n", id)
		}
	}
	return sb.String()
}

func viewOrEmpty(v *api.View) *api.View {
	if v == nil {
		return &api.View{}
	}
	return v
}

func peerIDs(v *api.View) []string {
	ids := make([]string, len(v.Peers))
	for i, p := range v.Peers {
		ids[i] = p.Gateway
	}
	slices.Sort(ids)
	return ids
}

func compareRule(a, b api.Rule) int {
	if c := a.Source.Addr().Compare(b.Source.Addr()); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Source.Bits(), b.Source.Bits()); c != 0 {
		return c
	}
	if c := strings.Compare(a.Protocol, b.Protocol); c != 0 {
		return c
	}
	return cmp.Compare(a.Port, b.Port)
}

// diffSorted returns what after has that before lacks, and the reverse,
// each in cmpf order.
func diffSorted[T any](before, after []T, cmpf func(a, b T) int) (gained, lost []T) {
	before = slices.SortedFunc(slices.Values(before), cmpf)
	after = slices.SortedFunc(slices.Values(after), cmpf)
	i, j := 0, 0
	for i < len(before) || j < len(after) {
		switch {
		case j == len(after) || i < len(before) && cmpf(before[i], after[j]) < 0:
			lost = append(lost, before[i])
			i++
		case i == len(before) || cmpf(before[i], after[j]) > 0:
			gained = append(gained, after[j])
			j++
		default:
			i, j = i+1, j+1
		}
	}
	return gained, lost
}
