package policy

import (
	"slices"

	"github.com/govnet/govnet/api"
)

// Compiler is a policy resolved against a registry and then kept current
// gateway by gateway. Compile, CompileJoin and CompileAround resolve the
// whole registry on every call (every group's members, by walking every
// gateway), which is what a one-gateway change costs at 20,000 gateways
// before anything is compiled. A Compiler resolves once; Update then
// places the changed gateways in the groups, services and rules they
// belong to, at a cost that grows with the policy, not the network.
//
// The agencies are fixed at NewCompiler: a change to the agency registry
// (a merger, a new province) needs a new Compiler. A Compiler is not safe
// for concurrent use.
type Compiler struct {
	r *resolver
}

// NewCompiler validates the policy against reg, as Compile does, and
// resolves it. The Compiler keeps its own copy of the gateways.
func (p *Policy) NewCompiler(reg *Registry) (*Compiler, error) {
	var own *Registry
	if reg != nil {
		own = &Registry{Agencies: reg.Agencies, Gateways: slices.Clone(reg.Gateways)}
	}
	r, err := p.resolve(own)
	if err != nil {
		return nil, err
	}
	// Resolve every set the rules use now, so Update keeps them all.
	for _, rule := range p.Rules {
		for _, ref := range rule.From {
			r.ref(ref.Name)
		}
		for _, ref := range rule.To {
			r.ref(ref.Name)
		}
	}
	return &Compiler{r: r}, nil
}

// All returns every participating gateway's view, as Compile does.
func (c *Compiler) All() map[string]*api.View { return c.r.compileFor(nil, nil) }

// CompileFor is Policy.CompileFor against the Compiler's registry.
func (c *Compiler) CompileFor(ids []string) map[string]*api.View {
	return c.r.compileFor(c.r.setOf(ids), nil)
}

// CompileJoin is Policy.CompileJoin against the Compiler's registry.
func (c *Compiler) CompileJoin(ids []string) (own, added map[string]*api.View) {
	return c.r.join(ids)
}

// CompileAround is Policy.CompileAround against the Compiler's registry.
func (c *Compiler) CompileAround(ids, also []string) map[string]*api.View {
	return c.r.around(ids, also)
}

// Update records gateways as they are now: new ones, and changes to
// known ones (status, keys, endpoint, LANs, agency). A gateway that
// starts to participate takes a free slot and is placed in every set the
// policy resolves; one that stops is taken out of them. Gateway ids that
// a policy group or service also uses make the policy invalid: the caller
// checks for them and makes a new Compiler, whose validation says so.
func (c *Compiler) Update(gws []api.Gateway) {
	ix := c.r.ix
	c.r.under = nil
	for _, g := range gws {
		gw := new(api.Gateway)
		*gw = g
		i, was := ix.memberIdx[g.ID]
		if was {
			ix.byAgency[ix.members[i].Agency] = slices.DeleteFunc(ix.byAgency[ix.members[i].Agency], func(j int) bool { return j == i })
		}
		if !Participates(gw) {
			if was {
				c.r.place(i, false)
				ix.members[i], ix.memberSrc[i] = nil, nil
				delete(ix.memberIdx, g.ID)
				ix.free = append(ix.free, i)
			}
			continue
		}
		if !was {
			i = c.slot()
			ix.memberIdx[g.ID] = i
		}
		ix.members[i] = gw
		ix.memberLevel[i] = ix.levelOf(gw.Agency)
		ix.memberSrc[i] = sources(gw)
		ix.byAgency[gw.Agency] = append(ix.byAgency[gw.Agency], i)
		c.r.place(i, true)
	}
}

// slot returns a free member slot, growing the index and every resolved
// set when there is none.
func (c *Compiler) slot() int {
	ix := c.r.ix
	if n := len(ix.free); n > 0 {
		i := ix.free[n-1]
		ix.free = ix.free[:n-1]
		return i
	}
	i := len(ix.members)
	ix.members = append(ix.members, nil)
	ix.memberLevel = append(ix.memberLevel, 0)
	ix.memberSrc = append(ix.memberSrc, nil)
	if words := (i + 64) / 64; words > (i+63)/64 {
		for _, sets := range []map[string]bitset{c.r.groups, c.r.svcs, c.r.gws} {
			for name, b := range sets {
				sets[name] = append(b, 0)
			}
		}
	}
	return i
}

// place sets member i in, or takes it out of, every set the resolver
// holds; present says whether the slot holds a participating gateway.
func (r *resolver) place(i int, present bool) {
	in := map[string]bool{}
	for name, b := range r.groups {
		if present && r.inGroup(name, i, in) {
			b.set(i)
		} else {
			b.clear(i)
		}
	}
	for name, b := range r.svcs {
		s := r.nm.services[name]
		if present && (s.Group != nil && r.inGroup(s.Group.Name, i, in) ||
			slices.ContainsFunc(s.Gateways, func(ref Ref) bool { return ref.Name == r.ix.members[i].ID })) {
			b.set(i)
		} else {
			b.clear(i)
		}
	}
	for name, b := range r.gws {
		if present && r.ix.members[i].ID == name {
			b.set(i)
		} else {
			b.clear(i)
		}
	}
}

// inGroup says whether member i belongs to group name, by the rules
// resolver.group applies to all members at once; memo holds the answers
// so far for this member.
func (r *resolver) inGroup(name string, i int, memo map[string]bool) bool {
	if in, ok := memo[name]; ok {
		return in
	}
	memo[name] = false // a cycle, which Validate rejects, stops here
	g := r.nm.groups[name]
	if g == nil {
		return false
	}
	gw, level := r.ix.members[i], r.ix.memberLevel[i]
	in := (g.Level != 0 || g.Subtree != nil) && level != 0 &&
		(g.Level == 0 || level == g.Level) &&
		(g.Subtree == nil || r.ix.within(gw.Agency, g.Subtree.Name))
	in = in || slices.ContainsFunc(g.Agencies, func(a Ref) bool { return a.Name == gw.Agency }) ||
		slices.ContainsFunc(g.Gateways, func(ref Ref) bool { return ref.Name == gw.ID }) ||
		slices.ContainsFunc(g.Groups, func(sub Ref) bool { return r.inGroup(sub.Name, i, memo) })
	memo[name] = in
	return in
}
