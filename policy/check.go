package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/govnet/govnet/api"
)

// maxListed caps how many failing gateways a test failure names.
const maxListed = 10

// Test validates the policy, checks the size of its views against
// MaxViewRules and MaxTotalRules, compiles the views of the gateways its
// embedded tests name (the same views a whole compile gives them), and
// runs the tests on them. Each failure is an *Error at the test's position, such as
//
//	test 2: 000.12.04.H29 -> ndxp tcp/443: expected allow, got deny (gateways h29c-gw1)
//
// A test passes only if every gateway pair it stands for (each gateway of
// from to each gateway of to, a gateway to itself excepted) gives the
// expected answer; a test that stands for no pair at all fails, since it
// would prove nothing. The error is an ErrorList.
func (p *Policy) Test(reg *Registry) error {
	r, err := p.resolve(reg)
	if err != nil {
		return err
	}
	if err := r.sizeErr(); err != nil {
		return err
	}
	return r.runTests(r.compileFor(r.testMembers(), nil))
}

// testMembers returns the members the policy's tests name, on either
// side: the only views the tests read (see allowed).
func (r *resolver) testMembers() bitset {
	b := newBitset(len(r.ix.members))
	for _, t := range r.p.Tests {
		for _, i := range r.testSide(t.From.Name) {
			b.set(i)
		}
		for _, i := range r.testSide(t.To.Name) {
			b.set(i)
		}
	}
	return b
}

// Check parses, validates, compiles and tests a policy: what the controller
// runs before it accepts a draft. The views are nil unless every step passed.
func Check(filename string, src []byte, reg *Registry) (*Policy, map[string]*api.View, error) {
	p, err := Parse(filename, src)
	if err != nil {
		return nil, nil, err
	}
	r, err := p.resolve(reg)
	if err != nil {
		return p, nil, err
	}
	if err := r.sizeErr(); err != nil {
		return p, nil, err
	}
	views := r.compile()
	if err := r.runTests(views); err != nil {
		return p, nil, err
	}
	return p, views, nil
}

func (r *resolver) runTests(views map[string]*api.View) error {
	e := &errs{file: r.p.File}
	for _, t := range r.p.Tests {
		label := fmt.Sprintf("test %d: %s -> %s %s", t.Index, t.From.Name, t.To.Name, t.Port)
		from, to := r.testSide(t.From.Name), r.testSide(t.To.Name)
		switch {
		case len(from) == 0:
			e.add(t.Pos, "a test needs an enrolled gateway on each side", "%s: no enrolled gateway for %s", label, t.From.Name)
			continue
		case len(to) == 0:
			e.add(t.Pos, "a test needs an enrolled gateway on each side", "%s: no enrolled gateway for %s", label, t.To.Name)
			continue
		}
		pairs := 0
		var failed []string
		for _, s := range from {
			for _, d := range to {
				if s == d {
					continue
				}
				pairs++
				src, dst := r.ix.members[s], r.ix.members[d]
				if allowed(views, src, dst, t.Port.Proto, t.Port.First) == t.Expect {
					continue
				}
				if len(to) == 1 {
					failed = append(failed, src.ID)
				} else {
					failed = append(failed, src.ID+"->"+dst.ID)
				}
			}
		}
		if pairs == 0 {
			e.add(t.Pos, "name two different gateways", "%s: from and to are the same gateway", label)
			continue
		}
		if len(failed) > 0 {
			hint := "gateways " + strings.Join(failed[:min(len(failed), maxListed)], ", ")
			if len(failed) > maxListed {
				hint += fmt.Sprintf(" and %d more", len(failed)-maxListed)
			}
			e.add(t.Pos, hint, "%s: expected %s, got %s", label, verdict(t.Expect), verdict(!t.Expect))
		}
	}
	return e.errors.Err()
}

func verdict(allow bool) string {
	if allow {
		return "allow"
	}
	return "deny"
}

// testSide returns the members a test's from or to stands for: every
// gateway of an agency code, the gateways of a service, or one gateway.
func (r *resolver) testSide(name string) []int {
	if isCode(name) {
		return r.ix.byAgency[name]
	}
	if s := r.nm.services[name]; s != nil {
		return r.service(s).members()
	}
	if i, ok := r.ix.memberIdx[name]; ok {
		return []int{i}
	}
	return nil
}

// Allowed reports whether the views let fromGateway reach toGateway with
// proto (api.ProtoTCP, api.ProtoUDP or api.ProtoICMP) on port (ignored for
// ICMP): each gateway has the other as a peer and toGateway's rules admit
// fromGateway's overlay address. A participating gateway always reaches
// itself. Gateways missing from reg or from views are denied.
func (p *Policy) Allowed(views map[string]*api.View, reg *Registry, fromGateway, toGateway string, proto string, port uint16) bool {
	if reg == nil {
		return false
	}
	var from, to *api.Gateway
	for i := range reg.Gateways {
		gw := &reg.Gateways[i]
		if gw.ID == fromGateway && from == nil {
			from = gw
		}
		if gw.ID == toGateway && to == nil {
			to = gw
		}
	}
	if from == nil || to == nil {
		return false
	}
	return allowed(views, from, to, proto, port)
}

func allowed(views map[string]*api.View, from, to *api.Gateway, proto string, port uint16) bool {
	sv, dv := views[from.ID], views[to.ID]
	if sv == nil || dv == nil || !from.OverlayIP.IsValid() {
		return false
	}
	if from.ID == to.ID {
		return true
	}
	if !hasPeer(sv, to.ID) || !hasPeer(dv, from.ID) {
		return false
	}
	if proto == api.ProtoICMP {
		port = 0
	}
	// A view's rules are sorted (api.CompareRules: by masked source, its
	// length, then the source as written): the rules whose source holds
	// ip are found by one search per prefix length, not a scan of the
	// view (a test against a 20,000-gateway registry scanned 0.65 s).
	ip := from.OverlayIP.Unmap()
	for bits := 0; bits <= ip.BitLen(); bits++ {
		key := netip.PrefixFrom(ip, bits).Masked()
		i, _ := slices.BinarySearchFunc(dv.Rules, api.Rule{Source: key}, api.CompareRules)
		for ; i < len(dv.Rules) && dv.Rules[i].Source.Bits() == bits && dv.Rules[i].Source.Masked() == key; i++ {
			if rule := dv.Rules[i]; rule.Protocol == proto && rule.Port == port {
				return true
			}
		}
	}
	return false
}

// hasPeer says whether v lists gateway as a peer (v.Peers is sorted by
// gateway, api.ComparePeers).
func hasPeer(v *api.View, gateway string) bool {
	_, ok := slices.BinarySearchFunc(v.Peers, gateway, func(p api.Peer, id string) int { return strings.Compare(p.Gateway, id) })
	return ok
}
