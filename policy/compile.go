package policy

import (
	"maps"
	"slices"

	"github.com/govnet/govnet/api"
)

// Compile validates the policy and returns one View per participating
// gateway of the registry (see Participates), keyed by gateway id. A
// gateway that no rule names gets an empty view: it denies everything.
//
// For every rule, every target gateway d and every source gateway s other
// than d, d's view admits s's overlay address and each of s's LANs on each
// port of the rule (or of the service), and s and d become peers of each
// other. Views carry Gateway and OverlayIP; the controller stamps the
// overlay prefix, raft index and policy version. Peers are sorted by
// gateway id, rules by source, protocol and port, without duplicates, so
// the same policy and registry always give the same views.
func (p *Policy) Compile(reg *Registry) (map[string]*api.View, error) {
	r, err := p.resolve(reg)
	if err != nil {
		return nil, err
	}
	return r.compile(), nil
}

// CompileFor is Compile restricted to the gateways ids: it returns the
// same views Compile would for those of them that participate, at a cost
// that grows with what those gateways' rules name rather than with the
// whole network. The controller uses it to recompute only the views a
// change touches: a gateway's own view and those of its peers before and
// after the change (peering is symmetric, so nothing else can change).
func (p *Policy) CompileFor(reg *Registry, ids []string) (map[string]*api.View, error) {
	r, err := p.resolve(reg)
	if err != nil {
		return nil, err
	}
	return r.compileFor(r.setOf(ids), nil), nil
}

// CompileJoin is for gateways ids that join the overlay: before the change
// they were in no view. It returns their own views, as CompileFor does,
// and for every other gateway whose view they enter, the part they add to
// it: their peer entries and the rules that admit their prefixes. That
// part merged into the gateway's view from before the change is its view
// after, provided no prefix of ids is also another gateway's source (rules
// are kept without duplicates). The cost grows with what ids' rules name,
// not with the other gateways' views.
func (p *Policy) CompileJoin(reg *Registry, ids []string) (own, added map[string]*api.View, err error) {
	r, err := p.resolve(reg)
	if err != nil {
		return nil, nil, err
	}
	own, added = r.join(ids)
	return own, added, nil
}

// CompileAround returns the views a change to the gateways ids can alter:
// theirs, those of also (the controller passes the gateways that had ids
// as peers before the change) and those of every gateway that is a peer of
// one of ids afterwards. It is CompileFor of that union, found with one
// resolution of the registry: the first pass compiles ids and learns their
// peers, the second compiles the rest. Gateways that do not participate
// get no view.
func (p *Policy) CompileAround(reg *Registry, ids, also []string) (map[string]*api.View, error) {
	r, err := p.resolve(reg)
	if err != nil {
		return nil, err
	}
	return r.around(ids, also), nil
}

// setOf returns the set of the members among ids.
func (r *resolver) setOf(ids []string) bitset {
	b := newBitset(len(r.ix.members))
	for _, id := range ids {
		if i, ok := r.ix.memberIdx[id]; ok {
			b.set(i)
		}
	}
	return b
}

func (r *resolver) join(ids []string) (own, added map[string]*api.View) {
	joining := r.setOf(ids)
	peers := newBitset(len(r.ix.members))
	own = r.compileFor(joining, nil)
	for _, v := range own {
		for _, peer := range v.Peers {
			if i, ok := r.ix.memberIdx[peer.Gateway]; ok && !joining.has(i) {
				peers.set(i)
			}
		}
	}
	return own, r.compileFor(peers, joining)
}

func (r *resolver) around(ids, also []string) map[string]*api.View {
	first := r.setOf(ids)
	rest := newBitset(len(r.ix.members))
	views := r.compileFor(first, nil)
	for _, v := range views {
		for _, peer := range v.Peers {
			if i, ok := r.ix.memberIdx[peer.Gateway]; ok && !first.has(i) {
				rest.set(i)
			}
		}
	}
	for _, id := range also {
		if i, ok := r.ix.memberIdx[id]; ok && !first.has(i) {
			rest.set(i)
		}
	}
	if len(rest.members()) > 0 {
		maps.Copy(views, r.compileFor(rest, nil))
	}
	return views
}

type portProto struct {
	proto string
	port  uint16
}

// ports lists what a rule opens on target to: a service's own ports, or
// the rule's.
func (r *resolver) ports(rule *Rule, to Ref) []portProto {
	if s := r.nm.services[to.Name]; s != nil {
		return expand(s.Ports)
	}
	return expand(rule.Ports)
}

// expand lists every protocol and port of the specs.
func expand(specs []PortSpec) []portProto {
	var out []portProto
	for _, s := range specs {
		if s.Proto == api.ProtoICMP {
			out = append(out, portProto{proto: s.Proto})
			continue
		}
		for port := int(s.First); port <= int(s.Last); port++ {
			out = append(out, portProto{proto: s.Proto, port: uint16(port)})
		}
	}
	return out
}

func (r *resolver) compile() map[string]*api.View { return r.compileFor(nil, nil) }

// compileFor builds the views of the members in want, or of every member
// when want is nil. When only is not nil the views have only the peers in
// only and the rules for their prefixes: the part of each view that names
// them.
func (r *resolver) compileFor(want, only bitset) map[string]*api.View {
	members, sources := r.ix.members, r.ix.memberSrc
	n := len(members)

	type acc struct {
		rules []api.Rule
		peers []int
	}
	// A whole compile fills one accumulator per member; a partial one only
	// those it wants, so its cost does not grow with the network.
	var dense []acc
	var sparse map[int]*acc
	if want == nil {
		dense = make([]acc, n)
	} else {
		sparse = map[int]*acc{}
	}
	accOf := func(i int) *acc {
		if dense != nil {
			return &dense[i]
		}
		a := sparse[i]
		if a == nil {
			a = &acc{}
			sparse[i] = a
		}
		return a
	}
	// The members a partial compile is limited to, listed once: each
	// rule then costs what those lists hold, not a pass over the network.
	var wantList, onlyList []int
	if want != nil {
		wantList = want.members()
	}
	if only != nil {
		onlyList = only.members()
	}
	// within lists the members of a set, or of those in limit that are in
	// it when there is a limit.
	within := func(in func(int) bool, all func() []int, limit []int, limited bool) []int {
		if !limited {
			return all()
		}
		var out []int
		for _, i := range limit {
			if in(i) {
				out = append(out, i)
			}
		}
		return out
	}
	for _, rule := range r.p.Rules {
		refs := make([]bitset, len(rule.From))
		for k, ref := range rule.From {
			refs[k] = r.ref(ref.Name)
		}
		inFrom := func(i int) bool {
			for _, b := range refs {
				if b.has(i) {
					return true
				}
			}
			return false
		}
		var fromAll []int // every source, made once if needed
		allFrom := func() []int {
			if fromAll == nil {
				from := newBitset(n)
				for _, b := range refs {
					from.or(b)
				}
				fromAll = from.members()
			}
			return fromAll
		}
		var src []int // sources that can enter the views compiled: those in only
		srcPrefixes, srcDone := 0, false
		for _, to := range rule.To {
			ports := r.ports(rule, to)
			dstSet := r.ref(to.Name)
			for _, d := range within(dstSet.has, dstSet.members, wantList, want != nil) {
				if !srcDone {
					src, srcDone = within(inFrom, allFrom, onlyList, only != nil), true
					for _, s := range src {
						srcPrefixes += len(sources[s])
					}
				}
				a := accOf(d)
				// Room for what follows at once: a view behind a national
				// service gains tens of thousands of rules here.
				a.rules = slices.Grow(a.rules, srcPrefixes*len(ports))
				a.peers = slices.Grow(a.peers, len(src))
				for _, s := range src {
					if s == d {
						continue
					}
					for _, pfx := range sources[s] {
						for _, pp := range ports {
							a.rules = append(a.rules, api.Rule{Source: pfx, Protocol: pp.proto, Port: pp.port})
						}
					}
					a.peers = append(a.peers, s)
				}
			}
			// Sources peer with every destination.
			senders := within(inFrom, allFrom, wantList, want != nil)
			if len(senders) == 0 {
				continue
			}
			dst := within(dstSet.has, dstSet.members, onlyList, only != nil)
			for _, s := range senders {
				a := accOf(s)
				a.peers = slices.Grow(a.peers, len(dst))
				for _, d := range dst {
					if s != d {
						a.peers = append(a.peers, d)
					}
				}
			}
		}
	}

	ids := wantList
	if want == nil {
		for i, gw := range members {
			if gw != nil {
				ids = append(ids, i)
			}
		}
	}
	views := make(map[string]*api.View, len(ids))
	for _, i := range ids {
		gw := members[i]
		a := accOf(i)
		slices.Sort(a.peers)
		a.peers = slices.Compact(a.peers)
		peers := make([]api.Peer, 0, len(a.peers))
		for _, j := range a.peers {
			m := members[j]
			peers = append(peers, api.Peer{
				Gateway:    m.ID,
				Agency:     m.Agency,
				PublicKey:  m.PublicKey,
				Endpoint:   m.Endpoint,
				AllowedIPs: slices.Clone(sources[j]),
			})
		}
		// Slots follow gateway ids only in a fresh index.
		if !slices.IsSortedFunc(peers, api.ComparePeers) {
			slices.SortFunc(peers, api.ComparePeers)
		}
		rules := slices.Clip(api.SortRules(a.rules))
		if rules == nil {
			rules = []api.Rule{}
		}
		views[gw.ID] = &api.View{Gateway: gw.ID, OverlayIP: gw.OverlayIP, Peers: peers, Rules: rules, LANs: OwnLANs(gw)}
		*a = acc{}
	}
	return views
}
