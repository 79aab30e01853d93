package policy

import (
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strings"

	"github.com/govnet/govnet/agency"
	"github.com/govnet/govnet/api"
)

// Registry is what a policy is validated and compiled against: the
// controller's agencies and gateways.
type Registry struct {
	Agencies []api.Agency
	Gateways []api.Gateway
}

// Participates reports whether a gateway takes part in the overlay: it is
// enrolled and has a WireGuard key and an overlay address. Only such
// gateways get views and appear as peers.
func Participates(gw *api.Gateway) bool {
	return gw.Status == api.StatusEnrolled && gw.PublicKey != "" && gw.OverlayIP.IsValid()
}

// index is a registry arranged for lookups. Members are the participating
// gateways, sorted by id; sets of gateways are bitsets over their indices.
type index struct {
	agencies    map[string]bool
	agencyCodes []string // sorted, for hints
	gateways    map[string]*api.Gateway
	gatewayIDs  []string // sorted, for hints
	members     []*api.Gateway
	memberIdx   map[string]int
	memberCode  []agency.Code // zero when the gateway's agency code is malformed
	byAgency    map[string][]int
}

func newIndex(reg *Registry) (*index, ErrorList) {
	if reg == nil {
		reg = &Registry{}
	}
	ix := &index{
		agencies:  make(map[string]bool, len(reg.Agencies)),
		gateways:  make(map[string]*api.Gateway, len(reg.Gateways)),
		memberIdx: make(map[string]int),
		byAgency:  make(map[string][]int),
	}
	var problems ErrorList
	for _, a := range reg.Agencies {
		if !ix.agencies[a.Code] {
			ix.agencies[a.Code] = true
			ix.agencyCodes = append(ix.agencyCodes, a.Code)
		}
	}
	slices.Sort(ix.agencyCodes)
	for i := range reg.Gateways {
		gw := &reg.Gateways[i]
		if ix.gateways[gw.ID] != nil {
			problems = append(problems, &Error{Msg: fmt.Sprintf("registry: gateway id %q appears twice", gw.ID)})
			continue
		}
		ix.gateways[gw.ID] = gw
		ix.gatewayIDs = append(ix.gatewayIDs, gw.ID)
		if Participates(gw) {
			ix.members = append(ix.members, gw)
		}
	}
	slices.Sort(ix.gatewayIDs)
	slices.SortFunc(ix.members, func(a, b *api.Gateway) int { return strings.Compare(a.ID, b.ID) })
	ix.memberCode = make([]agency.Code, len(ix.members))
	for i, gw := range ix.members {
		ix.memberIdx[gw.ID] = i
		ix.byAgency[gw.Agency] = append(ix.byAgency[gw.Agency], i)
		if c, err := agency.Parse(gw.Agency); err == nil {
			ix.memberCode[i] = c
		}
	}
	return ix, problems
}

// Validate checks the policy against a registry: every agency code, gateway
// id, group and service it names must exist, rules must name sources and
// targets of the right kind with ports where needed, and no group or
// service may share its name with a gateway. Gateways that exist but do not
// take part yet (pending, revoked) are valid references. The error is an
// ErrorList.
func (p *Policy) Validate(reg *Registry) error {
	_, err := p.resolve(reg)
	return err
}

// resolver resolves names to sets of member gateways, once each.
type resolver struct {
	p      *Policy
	nm     names
	ix     *index
	groups map[string]bitset
	svcs   map[string]bitset
}

// resolve validates the policy and returns a resolver for it.
func (p *Policy) resolve(reg *Registry) (*resolver, error) {
	nm := p.names()
	e := &errs{file: p.File, errors: p.checkDocument(nm)}
	ix, problems := newIndex(reg)
	e.errors = append(e.errors, problems...)
	v := validator{p: p, nm: nm, ix: ix, errs: e}
	v.run()
	if err := e.errors.Err(); err != nil {
		return nil, err
	}
	return &resolver{p: p, nm: nm, ix: ix, groups: make(map[string]bitset), svcs: make(map[string]bitset)}, nil
}

type validator struct {
	p  *Policy
	nm names
	ix *index
	*errs
	groupNames, serviceNames []string // sorted, for hints
}

func (v *validator) run() {
	p := v.p
	for _, g := range p.Groups {
		v.groupNames = append(v.groupNames, g.Name)
	}
	for _, s := range p.Services {
		v.serviceNames = append(v.serviceNames, s.Name)
	}
	slices.Sort(v.groupNames)
	slices.Sort(v.serviceNames)

	for _, g := range p.Groups {
		what := "group " + g.Name
		if v.ix.gateways[g.Name] != nil {
			v.add(g.Pos, "rename the group: rules could not tell them apart", "%s: name is also a gateway id", what)
		}
		if g.Subtree != nil {
			v.agency(*g.Subtree, what+": subtree")
		}
		for _, r := range g.Agencies {
			v.agency(r, what+": agencies")
		}
		for _, r := range g.Gateways {
			v.gateway(r, what+": gateways")
		}
	}
	for _, s := range p.Services {
		what := "service " + s.Name
		if v.ix.gateways[s.Name] != nil {
			v.add(s.Pos, "rename the service: rules could not tell them apart", "%s: name is also a gateway id", what)
		}
		for _, r := range s.Gateways {
			v.gateway(r, what+": gateways")
		}
	}
	for _, r := range p.Rules {
		what := fmt.Sprintf("rule %d", r.Index)
		for _, ref := range r.From {
			switch {
			case v.nm.groups[ref.Name] != nil, v.ix.gateways[ref.Name] != nil:
			case v.nm.services[ref.Name] != nil:
				v.add(ref.Pos, "a rule goes from groups or gateways; name the service's group or gateways", "%s: from %s: %s is a service", what, ref.Name, ref.Name)
			default:
				v.add(ref.Pos, didYouMean(ref.Name, v.groupNames, v.ix.gatewayIDs), "%s: from: unknown group or gateway %s", what, ref.Name)
			}
		}
		for _, ref := range r.To {
			switch {
			case v.nm.services[ref.Name] != nil:
				if len(r.Ports) > 0 {
					v.add(ref.Pos, "drop ports or put the service in a rule of its own", "%s: to %s: a service brings its own ports", what, ref.Name)
				}
			case v.nm.groups[ref.Name] != nil, v.ix.gateways[ref.Name] != nil:
				if len(r.Ports) == 0 {
					kind := "group"
					if v.nm.groups[ref.Name] == nil {
						kind = "gateway"
					}
					v.add(ref.Pos, "add ports: [tcp/N, ...] or name a service", "%s: to %s: a rule to a %s needs ports", what, ref.Name, kind)
				}
			default:
				v.add(ref.Pos, didYouMean(ref.Name, v.serviceNames, v.groupNames, v.ix.gatewayIDs), "%s: to: unknown service, group or gateway %s", what, ref.Name)
			}
		}
	}
	for _, t := range p.Tests {
		what := fmt.Sprintf("test %d", t.Index)
		if isCode(t.From.Name) {
			v.agency(t.From, what+": from")
		} else if v.ix.gateways[t.From.Name] == nil {
			hint := didYouMean(t.From.Name, v.ix.gatewayIDs)
			if v.nm.groups[t.From.Name] != nil || v.nm.services[t.From.Name] != nil {
				hint = "a test goes from an agency code or a gateway id"
			}
			v.add(t.From.Pos, hint, "%s: from: unknown gateway %s", what, t.From.Name)
		}
		if isCode(t.To.Name) {
			v.agency(t.To, what+": to")
		} else if v.nm.services[t.To.Name] == nil && v.ix.gateways[t.To.Name] == nil {
			hint := didYouMean(t.To.Name, v.serviceNames, v.ix.gatewayIDs)
			if v.nm.groups[t.To.Name] != nil {
				hint = "a test goes to a service, a gateway id or an agency code"
			}
			v.add(t.To.Pos, hint, "%s: to: unknown service or gateway %s", what, t.To.Name)
		}
	}
}

func (v *validator) agency(r Ref, what string) {
	if !v.ix.agencies[r.Name] {
		v.add(r.Pos, didYouMean(r.Name, v.ix.agencyCodes), "%s: unknown agency %s", what, r.Name)
	}
}

func (v *validator) gateway(r Ref, what string) {
	if v.ix.gateways[r.Name] == nil {
		v.add(r.Pos, didYouMean(r.Name, v.ix.gatewayIDs), "%s: unknown gateway %s", what, r.Name)
	}
}

// isCode tells agency codes (000.00.00.H29) from names, which have no dots.
func isCode(s string) bool { return strings.Contains(s, ".") }

// group returns the members a group selects.
func (r *resolver) group(name string) bitset {
	if b, ok := r.groups[name]; ok {
		return b
	}
	b := newBitset(len(r.ix.members))
	r.groups[name] = b // a cycle, which Validate rejects, stops here
	g := r.nm.groups[name]
	if g == nil {
		return b
	}
	if g.Level != 0 || g.Subtree != nil {
		var root agency.Code
		if g.Subtree != nil {
			var err error
			if root, err = agency.Parse(g.Subtree.Name); err != nil {
				return b
			}
		}
		for i, c := range r.ix.memberCode {
			if c.IsZero() || g.Level != 0 && c.Level() != g.Level || g.Subtree != nil && !c.Within(root) {
				continue
			}
			b.set(i)
		}
	}
	for _, a := range g.Agencies {
		for _, i := range r.ix.byAgency[a.Name] {
			b.set(i)
		}
	}
	for _, gw := range g.Gateways {
		if i, ok := r.ix.memberIdx[gw.Name]; ok {
			b.set(i)
		}
	}
	for _, sub := range g.Groups {
		b.or(r.group(sub.Name))
	}
	return b
}

// service returns the members that serve a service.
func (r *resolver) service(s *Service) bitset {
	if b, ok := r.svcs[s.Name]; ok {
		return b
	}
	b := newBitset(len(r.ix.members))
	if s.Group != nil {
		b.or(r.group(s.Group.Name))
	}
	for _, gw := range s.Gateways {
		if i, ok := r.ix.memberIdx[gw.Name]; ok {
			b.set(i)
		}
	}
	r.svcs[s.Name] = b
	return b
}

// ref returns the members a rule's from or to entry stands for: a service,
// a group or one gateway.
func (r *resolver) ref(name string) bitset {
	if s := r.nm.services[name]; s != nil {
		return r.service(s)
	}
	if r.nm.groups[name] != nil {
		return r.group(name)
	}
	b := newBitset(len(r.ix.members))
	if i, ok := r.ix.memberIdx[name]; ok {
		b.set(i)
	}
	return b
}

// overlayPrefix is the host prefix of an overlay address: /32 or /128.
func overlayPrefix(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap()
	return netip.PrefixFrom(ip, ip.BitLen())
}

// bitset is a set of member indices.
type bitset []uint64

func newBitset(n int) bitset { return make(bitset, (n+63)/64) }

func (b bitset) set(i int) { b[i/64] |= 1 << (i % 64) }

func (b bitset) has(i int) bool { return b[i/64]&(1<<(i%64)) != 0 }

func (b bitset) or(c bitset) {
	for i := range b {
		b[i] |= c[i]
	}
}

// members lists the indices in the set, ascending.
func (b bitset) members() []int {
	var out []int
	for w, word := range b {
		for word != 0 {
			out = append(out, w*64+bits.TrailingZeros64(word))
			word &= word - 1
		}
	}
	return out
}
