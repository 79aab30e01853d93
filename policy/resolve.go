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

// OwnLANs are the LANs of gw as its view carries them (api.View.LANs):
// masked and sorted, never nil (a gateway without LANs forwards nothing).
func OwnLANs(gw *api.Gateway) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(gw.LANs))
	for _, l := range gw.LANs {
		if l.IsValid() {
			out = append(out, l.Masked())
		}
	}
	slices.SortFunc(out, netip.Prefix.Compare)
	return slices.Compact(out)
}

// index is a registry arranged for lookups. Members are the participating
// gateways, sorted by id; sets of gateways are bitsets over their indices.
//
// The hierarchy is the registry's, not the codes': an agency's parent and
// level are the ones stored with it (a merger or a re-parenting moves an
// agency without changing its code). Only an agency missing from the
// registry falls back to what its code says.
type index struct {
	agencies    map[string]bool
	agencyCodes []string // sorted, for hints
	parent      map[string]string
	level       map[string]agency.Level
	// gateways and gatewayIDs serve validation, which runs when the index
	// is made: a Compiler's updates do not keep them.
	gateways   map[string]*api.Gateway
	gatewayIDs []string // sorted, for hints
	// members are the participating gateways by slot. A fresh index has
	// them sorted by id; a Compiler's updates reuse freed slots (nil until
	// then) and append new ones, so slot order is not id order.
	members     []*api.Gateway
	memberIdx   map[string]int
	memberLevel []agency.Level   // 0 when the gateway's agency is unknown and its code malformed
	memberSrc   [][]netip.Prefix // what each member sends from: overlay address, then LANs
	free        []int            // slots of members that left
	byAgency    map[string][]int
}

func newIndex(reg *Registry) (*index, ErrorList) {
	if reg == nil {
		reg = &Registry{}
	}
	ix := &index{
		agencies:  make(map[string]bool, len(reg.Agencies)),
		parent:    make(map[string]string, len(reg.Agencies)),
		level:     make(map[string]agency.Level, len(reg.Agencies)),
		gateways:  make(map[string]*api.Gateway, len(reg.Gateways)),
		memberIdx: make(map[string]int),
		byAgency:  make(map[string][]int),
	}
	var problems ErrorList
	for _, a := range reg.Agencies {
		if !ix.agencies[a.Code] {
			ix.agencies[a.Code] = true
			ix.agencyCodes = append(ix.agencyCodes, a.Code)
			ix.parent[a.Code] = a.Parent
			if l, err := agency.ParseLevel(a.Level); err == nil {
				ix.level[a.Code] = l
			} else if c, err := agency.Parse(a.Code); err == nil {
				ix.level[a.Code] = c.Level()
			}
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
	ix.memberLevel = make([]agency.Level, len(ix.members))
	ix.memberSrc = make([][]netip.Prefix, len(ix.members))
	for i, gw := range ix.members {
		ix.memberIdx[gw.ID] = i
		ix.byAgency[gw.Agency] = append(ix.byAgency[gw.Agency], i)
		ix.memberLevel[i] = ix.levelOf(gw.Agency)
		ix.memberSrc[i] = sources(gw)
	}
	return ix, problems
}

// sources lists the prefixes a gateway sends from, as views name them:
// its overlay address, then its LANs.
func sources(gw *api.Gateway) []netip.Prefix {
	src := []netip.Prefix{overlayPrefix(gw.OverlayIP)}
	for _, lan := range gw.LANs {
		if lan.IsValid() {
			src = append(src, lan.Masked())
		}
	}
	return src
}

// levelOf is an agency's stored level, or its code's when the registry
// does not have it; 0 for an unknown malformed code.
func (ix *index) levelOf(code string) agency.Level {
	if l, ok := ix.level[code]; ok {
		return l
	}
	if c, err := agency.Parse(code); err == nil {
		return c.Level()
	}
	return 0
}

// parentOf is an agency's stored parent, or its code's parent when the
// registry does not have it.
func (ix *index) parentOf(code string) (string, bool) {
	if p, ok := ix.parent[code]; ok {
		return p, p != ""
	}
	c, err := agency.Parse(code)
	if err != nil {
		return "", false
	}
	p, ok := c.Parent()
	if !ok {
		return "", false
	}
	return p.String(), true
}

// maxDepth bounds a walk up the parent chain: the hierarchy has five
// levels, and a registry with a cycle in it must not hang a compile.
const maxDepth = 16

// within reports whether code is root or lies under it, following the
// registry's parent chain.
func (ix *index) within(code, root string) bool {
	for range maxDepth {
		if code == root {
			return true
		}
		p, ok := ix.parentOf(code)
		if !ok {
			return false
		}
		code = p
	}
	return false
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
	gws    map[string]bitset // rules' references to single gateways
	// under holds, for each agency a subtree group is rooted at, the
	// member slots of the agencies in its subtree: made on first use for
	// all of them at once, dropped by a Compiler's Update.
	under map[string][]int
}

// subtree returns the member slots of the agencies in root's subtree
// (root's own included), as ix.within decides it.
func (r *resolver) subtree(root string) []int {
	if r.under == nil {
		r.under = map[string][]int{}
		roots := map[string]bool{}
		for _, g := range r.nm.groups {
			if g.Subtree != nil {
				roots[g.Subtree.Name] = true
			}
		}
		var seen [maxDepth]string // the walk so far: a cycle is walked once
		for code, slots := range r.ix.byAgency {
			a := code
			for d := range maxDepth {
				if slices.Contains(seen[:d], a) {
					break
				}
				seen[d] = a
				if roots[a] {
					r.under[a] = append(r.under[a], slots...)
				}
				p, ok := r.ix.parentOf(a)
				if !ok {
					break
				}
				a = p
			}
		}
	}
	return r.under[root]
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
	return &resolver{p: p, nm: nm, ix: ix, groups: make(map[string]bitset), svcs: make(map[string]bitset), gws: make(map[string]bitset)}, nil
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
				v.add(ref.Pos, v.hint(ref.Name, v.groupNames, v.ix.gatewayIDs), "%s: from: unknown group or gateway %s", what, ref.Name)
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
				v.add(ref.Pos, v.hint(ref.Name, v.serviceNames, v.groupNames, v.ix.gatewayIDs), "%s: to: unknown service, group or gateway %s", what, ref.Name)
			}
		}
	}
	for _, t := range p.Tests {
		what := fmt.Sprintf("test %d", t.Index)
		if isCode(t.From.Name) {
			v.agency(t.From, what+": from")
		} else if v.ix.gateways[t.From.Name] == nil {
			hint := v.hint(t.From.Name, v.ix.gatewayIDs)
			if v.nm.groups[t.From.Name] != nil || v.nm.services[t.From.Name] != nil {
				hint = "a test goes from an agency code or a gateway id"
			}
			v.add(t.From.Pos, hint, "%s: from: unknown gateway %s", what, t.From.Name)
		}
		if isCode(t.To.Name) {
			v.agency(t.To, what+": to")
		} else if v.nm.services[t.To.Name] == nil && v.ix.gateways[t.To.Name] == nil {
			hint := v.hint(t.To.Name, v.serviceNames, v.ix.gatewayIDs)
			if v.nm.groups[t.To.Name] != nil {
				hint = "a test goes to a service, a gateway id or an agency code"
			}
			v.add(t.To.Pos, hint, "%s: to: unknown service or gateway %s", what, t.To.Name)
		}
	}
}

func (v *validator) agency(r Ref, what string) {
	if !v.ix.agencies[r.Name] {
		v.add(r.Pos, v.hint(r.Name, v.ix.agencyCodes), "%s: unknown agency %s", what, r.Name)
	}
}

func (v *validator) gateway(r Ref, what string) {
	if v.ix.gateways[r.Name] == nil {
		v.add(r.Pos, v.hint(r.Name, v.ix.gatewayIDs), "%s: unknown gateway %s", what, r.Name)
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
		admit := func(i int) {
			if r.ix.members[i] != nil && r.ix.memberLevel[i] != 0 && (g.Level == 0 || r.ix.memberLevel[i] == g.Level) {
				b.set(i)
			}
		}
		if g.Subtree != nil {
			for _, i := range r.subtree(g.Subtree.Name) {
				admit(i)
			}
		} else {
			for i := range r.ix.members {
				admit(i)
			}
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
	if b, ok := r.gws[name]; ok {
		return b
	}
	b := newBitset(len(r.ix.members))
	if i, ok := r.ix.memberIdx[name]; ok {
		b.set(i)
	}
	r.gws[name] = b
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

func (b bitset) clear(i int) { b[i/64] &^= 1 << (i % 64) }

// and returns a new set of the members in both b and c.
func (b bitset) and(c bitset) bitset {
	out := make(bitset, len(b))
	for i := range b {
		out[i] = b[i] & c[i]
	}
	return out
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

// CodeRef is a place where a policy names an agency code.
type CodeRef struct {
	Code string
	File string
	Pos  Pos
	What string // "group h01: subtree", "test 2: from", ...
}

// Where is the reference's position as file:line:column.
func (c CodeRef) Where() string {
	return fmt.Sprintf("%s:%d:%d", c.File, c.Pos.Line, c.Pos.Column)
}

// CodeRefs lists, in document order, every place where the policy names
// one of codes: a group's subtree or agencies, a test's from or to.
func (p *Policy) CodeRefs(codes map[string]bool) []CodeRef {
	var out []CodeRef
	add := func(r Ref, what string) {
		if codes[r.Name] {
			out = append(out, CodeRef{Code: r.Name, File: p.File, Pos: r.Pos, What: what})
		}
	}
	for _, g := range p.Groups {
		if g.Subtree != nil {
			add(*g.Subtree, "group "+g.Name+": subtree")
		}
		for _, r := range g.Agencies {
			add(r, "group "+g.Name+": agencies")
		}
	}
	for _, t := range p.Tests {
		add(t.From, fmt.Sprintf("test %d: from", t.Index))
		add(t.To, fmt.Sprintf("test %d: to", t.Index))
	}
	slices.SortStableFunc(out, func(a, b CodeRef) int { return a.Pos.compare(b.Pos) })
	return out
}

// IdleRule is a rule that allows nothing with the registry as it is.
type IdleRule struct {
	Index int // 1-based
	Pos   Pos
	Why   string // "no enrolled gateway in from", ...
}

// IdleRules lists the rules that allow nothing with the gateways that take
// part now: one side selects none of them, or both only the same one (a
// selector that contradicts itself, say {level: central, subtree:
// 000.00.00.H29}, or gateways not enrolled yet). Such a policy is valid;
// a plan says so, because it may not be what its author meant.
func (p *Policy) IdleRules(reg *Registry) ([]IdleRule, error) {
	r, err := p.resolve(reg)
	if err != nil {
		return nil, err
	}
	n := len(r.ix.members)
	var out []IdleRule
	for _, rule := range p.Rules {
		from, to := newBitset(n), newBitset(n)
		for _, ref := range rule.From {
			from.or(r.ref(ref.Name))
		}
		for _, ref := range rule.To {
			to.or(r.ref(ref.Name))
		}
		f, t := from.members(), to.members()
		why := ""
		switch {
		case len(f) == 0 && len(t) == 0:
			why = "no enrolled gateway in from or in to"
		case len(f) == 0:
			why = "no enrolled gateway in from"
		case len(t) == 0:
			why = "no enrolled gateway in to"
		case len(f) == 1 && len(t) == 1 && f[0] == t[0]:
			why = "from and to are the same gateway, " + r.ix.members[f[0]].ID
		default:
			continue
		}
		out = append(out, IdleRule{Index: rule.Index, Pos: rule.Pos, Why: why})
	}
	return out, nil
}

// Where is the rule's place, file:line:column.
func (ir IdleRule) Where(file string) string {
	return fmt.Sprintf("%s:%d:%d", file, ir.Pos.Line, ir.Pos.Column)
}

// ClosedRefs lists the places where the policy names an agency code that
// the registry has closed. Such a policy still compiles: a closed code
// has no gateways and nothing under it, so it selects nothing. A policy
// that names one says less than its author meant, and is reported.
func (p *Policy) ClosedRefs(reg *Registry) []CodeRef {
	closed := map[string]bool{}
	if reg != nil {
		for _, a := range reg.Agencies {
			if a.Closed() {
				closed[a.Code] = true
			}
		}
	}
	if len(closed) == 0 {
		return nil
	}
	return p.CodeRefs(closed)
}
