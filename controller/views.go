package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/policy"
	"github.com/govnet/govnet/policy/nft"
)

// viewHub keeps each gateway's compiled view and wakes the streams that
// watch it. After every command that can change the network map the hub
// recomputes only the views the change can alter: the state machine
// records which gateways each command touched (State.touch), and the hub
// recompiles those gateways and the gateways that list them as peers
// before or after the change, found through a reverse index of the
// views. A gateway that leaves the overlay (revoked, decommissioned) is
// patched out of its peers' views without compiling anything. A command
// the state machine cannot attribute to gateways (a new policy, an agency
// registry change) recomputes every view, as does the first pass and the
// pass after a failed compile. A pass that cannot compile (the policy no
// longer validates) keeps the views, but still cuts the gateways that
// left out of them (cutLeaving): a revocation never waits for a policy.
//
// Triggers coalesce, so a burst of commands costs one pass over the union
// of what they touched. Subscribers hold a one-slot channel: a slow stream
// only ever has "something changed" pending and never blocks the hub or
// the others.
type viewHub struct {
	state   *State
	log     *slog.Logger
	trigger chan struct{}

	mu      sync.Mutex
	views   map[string]*hubView
	subs    map[string]map[*subscriber]struct{}
	compErr error // why the last compile failed, if it did
	// computed is the raft index the views were last compiled at;
	// compiled is closed and replaced after every compile.
	computed uint64
	compiled chan struct{}

	// peersOf is the reverse index of the views: gateway -> the gateways
	// whose views list it as a peer.
	peersOf map[string]map[string]struct{}
	// sources holds each participating gateway's source prefixes (overlay
	// address, then LANs) and srcCount how many gateways send from each
	// prefix: a leaving gateway's rules can be cut out of its peers' views
	// only when no other gateway shares one of its prefixes.
	sources  map[string][]netip.Prefix
	srcCount map[netip.Prefix]int
	// complete says the views are those of a full compile at policy
	// version viewsVersion and overlay viewsOverlay, kept current since.
	complete     bool
	viewsVersion uint64
	viewsOverlay netip.Prefix
	passes       hubPasses

	polVersion uint64
	polSource  string // the source h.pol was parsed from: a recovery can give a version another one
	pol        *policy.Policy
	// comp is the policy resolved against the registry as of the last
	// pass: made on a full pass, then kept current with the touched
	// gateways, so that a pass costs what the change touches rather than a
	// resolution of the whole network (only the hub's loop uses it).
	comp *policy.Compiler

	// deltas holds, for views that joins and leaves changed, the changes
	// that led to the current view, oldest first (at most maxDeltas): what
	// a stream sends, without diffing two views of tens of thousands of
	// peers. A view compiled whole starts its history afresh.
	deltas map[string][]*api.ViewDelta

	// digests caches the expected ruleset digest of each gateway's view,
	// computed on first use; an entry is valid for the view it was made from.
	digests map[string]expectedDigest
	// shared caches the digests of small rule sets by their rules
	// (digestKey): the communes behind one policy have the same few
	// rules, so a policy version costs one digest per distinct set rather
	// than one per gateway. At most maxSharedDigests entries.
	shared map[string]string
}

// maxSharedDigestRules is the largest rule set kept in viewHub.shared,
// and maxSharedDigests how many sets it keeps (it starts afresh when
// full).
const (
	maxSharedDigestRules = 32
	maxSharedDigests     = 4096
)

// digestKey encodes rules, in order, as a key of viewHub.shared; ok is
// false for a set too large to be shared by many gateways.
func digestKey(rules []api.Rule, lans []netip.Prefix) (key string, ok bool) {
	if len(rules) > maxSharedDigestRules {
		return "", false
	}
	b := make([]byte, 0, len(rules)*24+len(lans)*17+3)
	// The gateway's LANs first (their sets come into the digest too):
	// whether known, how many, then each as 16 bytes and a length (a LAN
	// of an earlier release may be IPv6).
	if lans == nil {
		b = append(b, 0)
	} else {
		b = append(b, 1, byte(len(lans)>>8), byte(len(lans)))
	}
	for _, l := range lans {
		a := l.Addr().As16()
		b = append(b, a[:]...)
		b = append(b, byte(l.Bits()))
	}
	for _, r := range rules {
		a := r.Source.Addr()
		b16 := a.As16()
		var fam byte
		if a.Is4() {
			fam = 4
		}
		b = append(b, fam)
		b = append(b, b16[:]...)
		b = append(b, byte(r.Source.Bits()), byte(r.Port>>8), byte(r.Port))
		b = append(b, r.Protocol...)
		b = append(b, 0)
	}
	return string(b), true
}

// hubPasses counts the hub's passes by kind.
type hubPasses struct {
	Full        uint64 // every view compiled
	Incremental uint64 // the touched gateways and their peers compiled
	Patched     uint64 // leaving gateways cut out of their peers' views
	Joined      uint64 // joining gateways added to their peers' views
	Idle        uint64 // nothing a view names changed
}

type passKind int

const (
	passFull passKind = iota
	passIncremental
	passPatched
	passJoined
	passIdle
)

type expectedDigest struct {
	view   *hubView
	digest string
}

func newViewHub(state *State, log *slog.Logger) *viewHub {
	return &viewHub{
		state:    state,
		log:      log,
		trigger:  make(chan struct{}, 1),
		views:    map[string]*hubView{},
		subs:     map[string]map[*subscriber]struct{}{},
		compiled: make(chan struct{}),
		peersOf:  map[string]map[string]struct{}{},
		sources:  map[string][]netip.Prefix{},
		srcCount: map[netip.Prefix]int{},
	}
}

// changed tells the hub that the state moved; it never blocks.
func (h *viewHub) changed() {
	select {
	case h.trigger <- struct{}{}:
	default:
	}
}

func (h *viewHub) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.trigger:
			if err := h.recompute(); err != nil {
				h.log.Error("compile views", "err", err)
			}
		}
	}
}

// recompute brings the views up to the current state: all of them when
// the change cannot be attributed to gateways, otherwise only those the
// touched gateways can alter.
func (h *viewHub) recompute() error {
	s := h.state
	s.mu.RLock()
	ids, all := s.views.take()
	index, overlay := s.index, s.overlay
	var cur api.Policy
	if n := len(s.policies); n > 0 {
		cur = s.policies[n-1]
	}
	touched := make([]api.Gateway, 0, len(ids))
	for _, id := range ids {
		if g, ok := s.gateways[id]; ok {
			touched = append(touched, copyGateway(g))
		}
	}
	s.mu.RUnlock()

	if (h.polVersion != cur.Version || h.polSource != cur.Source) && cur.Version != 0 {
		p, err := policy.Parse(fmt.Sprintf("policy-v%d.yaml", cur.Version), []byte(cur.Source))
		if err != nil {
			return h.cutLeaving(index, overlay, touched, fmt.Errorf("policy version %d: %w", cur.Version, err))
		}
		h.pol, h.polVersion, h.polSource = p, cur.Version, cur.Source
	}
	h.mu.Lock()
	full := all || !h.complete || h.viewsVersion != cur.Version || h.viewsOverlay != overlay || h.comp == nil && cur.Version != 0
	h.mu.Unlock()
	if !full && cur.Version != 0 {
		for _, g := range touched {
			if names(h.pol, g.ID) {
				full = true // a gateway named like a group or service: the policy no longer validates
			}
		}
	}
	if full {
		if err := h.recomputeAll(index, overlay, cur.Version); err != nil {
			return h.cutLeaving(index, overlay, touched, err)
		}
		return nil
	}
	if len(ids) == 0 {
		h.install(index, overlay, cur.Version, nil, nil, nil, passIdle)
		return nil
	}
	if h.comp != nil {
		h.comp.Update(touched)
	}
	h.wakeUnenrolled(touched)
	if cur.Version == 0 {
		// No policy yet: every enrolled gateway has a view that denies all.
		updates := map[string]*hubView{}
		for _, g := range touched {
			updates[g.ID] = nil
			if g.Status == api.StatusEnrolled {
				updates[g.ID] = newHubView(&api.View{Gateway: g.ID, OverlayIP: g.OverlayIP, LANs: policy.OwnLANs(&g)})
			}
		}
		h.install(index, overlay, 0, updates, nil, touched, passIncremental)
		return nil
	}
	if updates, deltas, ok := h.patchLeaving(touched); ok {
		h.install(index, overlay, cur.Version, updates, deltas, touched, passPatched)
		return nil
	}
	if h.joinOnly(touched) {
		own, added := h.comp.CompileJoin(ids)
		h.mu.Lock()
		updates := hubViews(own)
		deltas := make(map[string]*api.ViewDelta, len(added))
		for d, part := range added {
			if base := h.views[d]; base != nil {
				updates[d] = withPart(base, part)
				deltas[d] = &api.ViewDelta{PeersSet: part.Peers, RulesAdded: part.Rules}
			} // else d joined after this pass read the changes: the next pass compiles its view whole
		}
		h.mu.Unlock()
		h.install(index, overlay, cur.Version, updates, deltas, touched, passJoined)
		return nil
	}
	// Someone changed: compile the touched gateways, their peers before
	// (from the reverse index) and after (from the compile).
	h.mu.Lock()
	var also []string
	for _, id := range ids {
		for p := range h.peersOf[id] {
			also = append(also, p)
		}
	}
	h.mu.Unlock()
	views := h.comp.CompileAround(ids, also)
	updates := make(map[string]*hubView, len(ids)+len(also)+len(views))
	for _, id := range ids {
		updates[id] = nil
	}
	for _, id := range also {
		updates[id] = nil
	}
	maps.Copy(updates, hubViews(views))
	h.install(index, overlay, cur.Version, updates, nil, touched, passIncremental)
	return nil
}

// recomputeAll compiles every gateway's view from the current state.
func (h *viewHub) recomputeAll(index uint64, overlay netip.Prefix, version uint64) error {
	s := h.state
	reg := &policy.Registry{Agencies: s.Agencies(), Gateways: s.Gateways()}
	h.comp = nil
	h.wakeUnenrolled(reg.Gateways)

	views := map[string]*api.View{}
	if version == 0 {
		// No policy yet: every enrolled gateway gets a view that denies all.
		for _, g := range reg.Gateways {
			if g.Status == api.StatusEnrolled {
				views[g.ID] = &api.View{Gateway: g.ID, OverlayIP: g.OverlayIP, LANs: policy.OwnLANs(&g)}
			}
		}
	} else {
		comp, err := h.pol.NewCompiler(reg)
		if err != nil {
			return h.fail(fmt.Errorf("policy version %d: %w", version, err))
		}
		h.comp, views = comp, comp.All()
	}
	h.mu.Lock()
	for id := range h.views {
		if _, ok := views[id]; !ok {
			views[id] = nil
		}
	}
	h.mu.Unlock()
	h.install(index, overlay, version, hubViews(views), nil, reg.Gateways, passFull)
	return nil
}

// cutLeaving is what a pass does when the views cannot be compiled (err,
// which it returns): the policy no longer validates against the registry,
// as when a gateway is registered under the name of a policy group. The
// views stay as they were (fail static) until a pass compiles them all,
// but the touched gateways that no longer participate (revoked,
// decommissioned) leave them all the same: each loses its own view and
// its peer entry in the others', with the rules that admit its prefixes
// but those another gateway also sends from (they may be that one's).
// Their revocation is then enforced, and waitGone says so.
func (h *viewHub) cutLeaving(index uint64, overlay netip.Prefix, touched []api.Gateway, err error) error {
	var leaving []api.Gateway
	for _, g := range touched {
		if !policy.Participates(&g) {
			leaving = append(leaving, g)
		}
	}
	if len(leaving) == 0 {
		return h.fail(err)
	}
	h.mu.Lock()
	updates := map[string]*hubView{}
	for _, g := range leaving {
		if _, had := h.views[g.ID]; had {
			updates[g.ID] = nil
		}
	}
	for _, g := range leaving {
		var src []netip.Prefix
		for _, p := range h.sources[g.ID] {
			if h.srcCount[p] <= 1 {
				src = append(src, p)
			}
		}
		for d := range h.peersOf[g.ID] {
			base, again := updates[d]
			if !again {
				base = h.views[d]
			}
			if base != nil {
				updates[d], _ = withoutPeer(base, g.ID, src)
			}
		}
	}
	version := h.viewsVersion // the views kept are of the last policy compiled
	h.mu.Unlock()
	h.install(index, overlay, version, updates, nil, leaving, passPatched)
	return h.fail(err)
}

// patchLeaving returns the views that change when the touched gateways
// no longer participate: each is cut out of its peers' views (its peer
// entry and the rules admitting its prefixes) and loses its own view. ok
// is false when that is not enough: a touched gateway participates now,
// or shares a source prefix with another gateway (its peers' rules for
// that prefix may stay).
func (h *viewHub) patchLeaving(touched []api.Gateway) (updates map[string]*hubView, deltas map[string]*api.ViewDelta, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range touched {
		g := &touched[i]
		if policy.Participates(g) || h.sources[g.ID] == nil && len(h.peersOf[g.ID]) > 0 {
			return nil, nil, false
		}
		for _, p := range h.sources[g.ID] {
			if h.srcCount[p] > 1 {
				return nil, nil, false
			}
		}
	}
	updates, deltas = map[string]*hubView{}, map[string]*api.ViewDelta{}
	for _, g := range touched {
		if _, had := h.views[g.ID]; had {
			updates[g.ID] = nil
		}
		for d := range h.peersOf[g.ID] {
			base, again := updates[d]
			if !again {
				base = h.views[d]
			}
			if base == nil {
				continue // leaving too
			}
			v, removed := withoutPeer(base, g.ID, h.sources[g.ID])
			updates[d] = v
			if again {
				delete(deltas, d) // two leave d in one pass: its stream diffs
			} else {
				deltas[d] = &api.ViewDelta{PeersRemoved: []string{g.ID}, RulesRemoved: removed}
			}
		}
	}
	return updates, deltas, true
}

// joinOnly says whether every touched gateway joins: it participates now,
// did not before, and sends from prefixes no other gateway sends from. Then
// the views it enters only gain its peer entry and rules (see
// policy.CompileJoin).
func (h *viewHub) joinOnly(touched []api.Gateway) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	seen := map[netip.Prefix]bool{}
	for i := range touched {
		g := &touched[i]
		if _, had := h.views[g.ID]; had || !policy.Participates(g) || h.sources[g.ID] != nil || len(h.peersOf[g.ID]) > 0 {
			return false
		}
		for _, p := range sourcesOf(g) {
			if h.srcCount[p] > 0 || seen[p] {
				return false
			}
			seen[p] = true
		}
	}
	return true
}

// withPart returns v with the peers and rules of part added; part names
// none that v has.
func withPart(v *hubView, part *api.View) *hubView {
	return &hubView{head: v.head, peers: v.peers.Insert(part.Peers, api.ComparePeers), rules: v.rules.Insert(part.Rules, api.CompareRules)}
}

// withoutPeer returns v without peer id and without the rules that admit
// the prefixes src (rules are sorted by source, so each prefix's rules are
// one run), and the rules it took out, sorted. v is left as it is:
// published views are never modified.
func withoutPeer(v *hubView, id string, src []netip.Prefix) (*hubView, []api.Rule) {
	nv := &hubView{head: v.head, peers: v.peers, rules: v.rules}
	if i := v.peers.Search(func(p api.Peer) bool { return p.Gateway < id }); i < v.peers.Len() && v.peers.At(i).Gateway == id {
		nv.peers = v.peers.Delete(i, i+1)
	}
	var removed []api.Rule
	for _, p := range src {
		lo := nv.rules.Search(func(r api.Rule) bool { return r.Source.Compare(p) < 0 })
		hi := nv.rules.Search(func(r api.Rule) bool { return r.Source.Compare(p) <= 0 })
		removed = append(removed, nv.rules.Range(lo, hi)...)
		nv.rules = nv.rules.Delete(lo, hi)
	}
	slices.SortFunc(removed, api.CompareRules)
	return nv, removed
}

// maxDeltas bounds the changes kept per view for its streams.
const maxDeltas = 32

// hubView is a gateway's view as the hub keeps it: its peers and rules in
// chunked lists, so that a join or a leave on a view of tens of thousands
// of peers copies a chunk of each, not the whole view. Never modified once
// installed but for the API form, made on first use.
type hubView struct {
	head  api.View // all but Peers and Rules
	peers chunks[api.Peer]
	rules chunks[api.Rule]

	once sync.Once
	full *api.View
}

// newHubView keeps v, a view just compiled, as its API form, and cuts its
// peers and rules into chunks that share v's arrays; install stamps both.
func newHubView(v *api.View) *hubView {
	if v.Peers == nil {
		v.Peers = []api.Peer{}
	}
	if v.Rules == nil {
		v.Rules = []api.Rule{}
	}
	hv := &hubView{head: *v, peers: chunked(v.Peers), rules: chunked(v.Rules), full: v}
	hv.head.Peers, hv.head.Rules = nil, nil
	hv.once.Do(func() {}) // full is made
	return hv
}

// stamp sets the fields install gives every view, in both forms; the view
// is not yet shared.
func (hv *hubView) stamp(overlay netip.Prefix, version, index uint64) {
	hv.head.OverlayPrefix, hv.head.PolicyVersion, hv.head.RaftIndex = overlay, version, index
	if hv.full != nil {
		hv.full.OverlayPrefix, hv.full.PolicyVersion, hv.full.RaftIndex = overlay, version, index
	}
}

// hubViews wraps compiled views; nil stays nil.
func hubViews(views map[string]*api.View) map[string]*hubView {
	out := make(map[string]*hubView, len(views))
	for id, v := range views {
		if v != nil {
			out[id] = newHubView(v)
		} else {
			out[id] = nil
		}
	}
	return out
}

// lists returns the view's peers and rules as slices, to read: the API
// form's when it is made (a compiled view always has it), else new ones.
func (hv *hubView) lists() ([]api.Peer, []api.Rule) {
	if hv.full != nil {
		return hv.full.Peers, hv.full.Rules
	}
	return hv.peers.Slice(), hv.rules.Slice()
}

// View returns the view as the API sends it, made once; callers share it
// and must not modify it.
func (hv *hubView) View() *api.View {
	hv.once.Do(func() {
		v := hv.head
		v.Peers, v.Rules = hv.peers.Slice(), hv.rules.Slice()
		hv.full = &v
	})
	return hv.full
}

// install publishes updates (a nil view removes the gateway's view),
// keeps the reverse index and the source counts, and wakes the streams
// of the views that changed. gws are the gateways the pass read: their
// source prefixes are recorded (all of them on a full pass). deltas, when
// a pass knows them, are the changes from each gateway's current view to
// its update (only peers and rules set): the update is then known to
// differ, and its stream sends the delta as it is.
func (h *viewHub) install(index uint64, overlay netip.Prefix, version uint64, updates map[string]*hubView, deltas map[string]*api.ViewDelta, gws []api.Gateway, kind passKind) {
	full := kind == passFull
	h.mu.Lock()
	defer h.mu.Unlock()
	h.compErr = nil
	for id, v := range updates {
		old, had := h.views[id]
		if v == nil {
			if had {
				h.reindex(id, old, nil, nil)
				delete(h.views, id)
				delete(h.digests, id)
				delete(h.deltas, id)
				h.notify(id)
			}
			continue
		}
		v.stamp(overlay, version, v.head.RaftIndex)
		d := deltas[id]
		if !had || (old.head.PolicyVersion != version || old.head.OverlayPrefix != overlay) {
			d = nil
		}
		if had && d == nil && sameView(old, v) {
			continue
		}
		v.stamp(overlay, version, index)
		h.reindex(id, old, v, d)
		h.views[id] = v
		if d == nil {
			delete(h.deltas, id)
		} else {
			d.Gateway, d.BaseIndex, d.RaftIndex, d.PolicyVersion = id, old.head.RaftIndex, index, version
			d.OverlayIP, d.OverlayPrefix, d.LANs = v.head.OverlayIP, overlay, v.head.LANs
			if h.deltas == nil {
				h.deltas = map[string][]*api.ViewDelta{}
			}
			hist := h.deltas[id]
			if len(hist) == maxDeltas {
				hist = slices.Delete(slices.Clone(hist), 0, 1)
			}
			h.deltas[id] = append(hist, d)
		}
		h.notify(id)
	}
	if full {
		clear(h.sources)
		clear(h.srcCount)
	}
	for i := range gws {
		g := &gws[i]
		for _, p := range h.sources[g.ID] {
			if h.srcCount[p]--; h.srcCount[p] <= 0 {
				delete(h.srcCount, p)
			}
		}
		delete(h.sources, g.ID)
		if policy.Participates(g) {
			src := sourcesOf(g)
			h.sources[g.ID] = src
			for _, p := range src {
				h.srcCount[p]++
			}
		}
	}
	switch kind {
	case passFull:
		h.passes.Full++
		h.complete, h.viewsVersion, h.viewsOverlay = true, version, overlay
	case passIncremental:
		h.passes.Incremental++
	case passPatched:
		h.passes.Patched++
	case passJoined:
		h.passes.Joined++
	case passIdle:
		h.passes.Idle++
	}
	h.computed = index
	close(h.compiled)
	h.compiled = make(chan struct{})
}

// sourcesOf lists the prefixes a gateway sends from, as views name them.
func sourcesOf(g *api.Gateway) []netip.Prefix {
	ip := g.OverlayIP.Unmap()
	src := []netip.Prefix{netip.PrefixFrom(ip, ip.BitLen())}
	for _, lan := range g.LANs {
		if lan.IsValid() {
			src = append(src, lan.Masked())
		}
	}
	return src
}

// reindex moves gateway id's entries in the reverse index from the peers
// of its old view to those of its new one (either may be nil); both lists
// are sorted by gateway id. With d, the change from old to cur, only the
// peers it names are looked at. h.mu must be held.
func (h *viewHub) reindex(id string, old, cur *hubView, d *api.ViewDelta) {
	var a, b []api.Peer
	switch {
	case d != nil:
		for _, p := range d.PeersRemoved {
			a = append(a, api.Peer{Gateway: p})
		}
		b = d.PeersSet // peers added: a join's part names only new ones
	default:
		if old != nil {
			a, _ = old.lists()
		}
		if cur != nil {
			b, _ = cur.lists()
		}
	}
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		c := 0
		switch {
		case i == len(a):
			c = 1
		case j == len(b):
			c = -1
		default:
			c = strings.Compare(a[i].Gateway, b[j].Gateway)
		}
		switch {
		case c < 0:
			if m := h.peersOf[a[i].Gateway]; m != nil {
				delete(m, id)
				if len(m) == 0 {
					delete(h.peersOf, a[i].Gateway)
				}
			}
			i++
		case c > 0:
			m := h.peersOf[b[j].Gateway]
			if m == nil {
				m = map[string]struct{}{}
				h.peersOf[b[j].Gateway] = m
			}
			m[id] = struct{}{}
			j++
		default:
			i++
			j++
		}
	}
}

// wakeUnenrolled wakes the streams of gateways that are no longer
// enrolled (revoked, decommissioned), so that they end now, whether or
// not the compile that follows succeeds.
func (h *viewHub) wakeUnenrolled(gws []api.Gateway) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) == 0 {
		return
	}
	for _, g := range gws {
		if g.Status != api.StatusEnrolled && h.subs[g.ID] != nil {
			h.notify(g.ID)
		}
	}
}

// waitGone returns once views compiled at index or later give gateway
// id to no gateway, and id has no view of its own.
func (h *viewHub) waitGone(ctx context.Context, id string, index uint64) error {
	for {
		h.mu.Lock()
		done, ch := h.computed >= index && !h.inAnyView(id), h.compiled
		h.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for gateway %s to leave every view: %w", id, ctx.Err())
		case <-ch:
		}
	}
}

// inAnyView says whether gateway id has a view or is any view's peer; h.mu
// must be held.
func (h *viewHub) inAnyView(id string) bool {
	_, ok := h.views[id]
	return ok || len(h.peersOf[id]) > 0
}

// fail records why a pass failed; the next pass compiles every view.
func (h *viewHub) fail(err error) error {
	h.mu.Lock()
	h.compErr = err
	h.complete = false
	h.mu.Unlock()
	return err
}

// sameView says whether two views are equal but for their raft index.
func sameView(x, y *hubView) bool {
	a, b := &x.head, &y.head
	if a.Gateway != b.Gateway || a.PolicyVersion != b.PolicyVersion || a.OverlayIP != b.OverlayIP ||
		a.OverlayPrefix != b.OverlayPrefix || !api.SameLANs(a.LANs, b.LANs) ||
		x.peers.Len() != y.peers.Len() || x.rules.Len() != y.rules.Len() {
		return false
	}
	xp, xr := x.lists()
	yp, yr := y.lists()
	return slices.Equal(xr, yr) && slices.EqualFunc(xp, yp, api.SamePeer)
}

// notify wakes gateway id's streams; h.mu must be held.
func (h *viewHub) notify(id string) {
	for sub := range h.subs[id] {
		sub.wake()
	}
}

// subscriber is one stream's wish to hear of changes to its view.
type subscriber struct{ wake func() }

// subscribe calls wake whenever gateway id's view changes (or the gateway
// leaves), until stop is called. wake is called with the hub's lock held:
// it must not block or call into the hub.
func (h *viewHub) subscribe(id string, wake func()) (stop func()) {
	sub := &subscriber{wake: wake}
	h.mu.Lock()
	if h.subs[id] == nil {
		h.subs[id] = map[*subscriber]struct{}{}
	}
	h.subs[id][sub] = struct{}{}
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		delete(h.subs[id], sub)
		if len(h.subs[id]) == 0 {
			delete(h.subs, id)
		}
		h.mu.Unlock()
	}
}

// expected returns the digest of the ruleset gateway id's current view
// compiles to, as the agent will read it back from its kernel; ok is false
// when the gateway has no view.
func (h *viewHub) expected(id string) (digest string, raftIndex uint64, ok bool) {
	h.mu.Lock()
	v, ok := h.views[id]
	e, cached := h.digests[id]
	h.mu.Unlock()
	if !ok {
		return "", 0, false
	}
	if cached && e.view == v {
		return e.digest, v.head.RaftIndex, true
	}
	// Pure and cheap (about 1 ms per 1,000 rules): computed outside the lock.
	// Rules the firewall cannot express are left out by the agent too, so
	// the digest that comes with ErrUnsupportedRule is still the expectation.
	_, rules := v.lists()
	key, sharable := digestKey(rules, v.head.LANs)
	var d string
	shared := false
	if sharable {
		h.mu.Lock()
		d, shared = h.shared[key]
		h.mu.Unlock()
	}
	if !shared {
		var err error
		d, err = nft.ExpectedDigest(rules, v.head.LANs)
		if err != nil && !errors.Is(err, nft.ErrUnsupportedRule) {
			h.log.Error("expected ruleset digest", "gateway", id, "err", err)
			return "", v.head.RaftIndex, true
		}
	}
	h.mu.Lock()
	if h.digests == nil {
		h.digests = map[string]expectedDigest{}
	}
	if h.views[id] == v {
		h.digests[id] = expectedDigest{view: v, digest: d}
	}
	if sharable && !shared {
		if h.shared == nil || len(h.shared) >= maxSharedDigests {
			h.shared = map[string]string{}
		}
		h.shared[key] = d
	}
	h.mu.Unlock()
	return d, v.head.RaftIndex, true
}

// since returns what brings a client from sent, the view of a gateway a
// stream sent it before, to cur, the gateway's current view: the changes
// the passes since recorded, when they lead from one to the other, or
// else the two views' difference.
func (h *viewHub) since(sent, cur *hubView) []*api.ViewDelta {
	h.mu.Lock()
	hist := h.deltas[cur.head.Gateway]
	h.mu.Unlock()
	for i, d := range hist {
		if d.BaseIndex != sent.head.RaftIndex {
			continue
		}
		chain := hist[i:]
		if chain[len(chain)-1].RaftIndex == cur.head.RaftIndex {
			return chain // consecutive: each pass's delta starts where the one before ended
		}
		break
	}
	return []*api.ViewDelta{api.Diff(sent.View(), cur.View())}
}

// view returns gateway id's current view; views are never mutated once
// published, so the pointer may be shared.
func (h *viewHub) view(id string) (*hubView, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, ok := h.views[id]
	return v, ok
}

// watchers counts connected streams.
func (h *viewHub) watchers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, s := range h.subs {
		n += len(s)
	}
	return n
}

// names says whether the policy has a group or service called name.
func names(p *policy.Policy, name string) bool {
	return slices.ContainsFunc(p.Groups, func(g *policy.Group) bool { return g.Name == name }) ||
		slices.ContainsFunc(p.Services, func(s *policy.Service) bool { return s.Name == name })
}

// viewChanges is what the commands applied since the view hub last looked
// changed in the network map: some gateways, or everything.
type viewChanges struct {
	mu  sync.Mutex
	ids map[string]struct{}
	all bool
}

// take returns the changes and forgets them.
func (c *viewChanges) take() (ids []string, all bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids, all = slices.Sorted(maps.Keys(c.ids)), c.all
	c.ids, c.all = nil, false
	return ids, all
}

// touch records that the command being applied may have changed how the
// gateways ids take part in the network map: their status, keys, endpoint,
// LANs or agency. The view hub then recomputes their views and those of
// the gateways that peer with them, before or after. Touching a gateway
// that did not change costs a little work and is never wrong; failing to
// touch one that did leaves stale views. Apply functions call it with s.mu
// held for writing; commands that noteViewChange does not attribute
// recompute everything instead.
func (s *State) touch(ids ...string) {
	c := &s.views
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ids == nil {
		c.ids = map[string]struct{}{}
	}
	for _, id := range ids {
		c.ids[id] = struct{}{}
	}
}

// touchAll records a change that cannot be attributed to gateways: a new
// policy, the overlay, an agency registry change that can move gateways in
// or out of groups, a restore. The view hub recomputes every view.
func (s *State) touchAll() {
	s.views.mu.Lock()
	s.views.all = true
	s.views.mu.Unlock()
}

// noteViewChange records what the command just applied changed in the
// network map (s.mu held for writing). The commands listed here change no
// view, or are attributed to the gateways they change; any other command
// recomputes every view, which is always correct: policy publication, the
// agency registry, and command types added later until they are listed
// here (or their apply functions call s.touch and they are listed as
// attributed).
func (s *State) noteViewChange(t CommandType, body []byte) {
	switch t {
	case CmdGatewayReport, CmdGatewayReports, CmdGatewayRefreshes, CmdGatewayReportsPacked, CmdGatewayRefreshesPacked, CmdRenewCall, CmdMemberUpsert, CmdMemberRemove, CmdPersonUpsert, CmdRequestCreate,
		CmdTokenIssue, CmdCertRecord, CmdGatewayRenew, CmdGatewayRenews, CmdCRLPublish, CmdIssuerUpsert, CmdAuditCheckpoint, CmdCertArchive,
		CmdPersonInvite, CmdPersonEnroll, CmdPersonRenew, CmdClusterLevel,
		CmdStateRestored, // Restore itself touches everything
		CmdAgencyClose:   // only an agency with no gateways and no active children closes
		// Views name nothing these change.
	case CmdGatewayAdd, CmdGatewayRegister, CmdGatewayEnroll, CmdCertRevoke, CmdRequestDecide, CmdGatewayDecommission:
		var r struct {
			ID      string `json:"id"`
			Gateway string `json:"gateway"`
			Serial  string `json:"serial"`
		}
		if err := json.Unmarshal(body, &r); err != nil {
			s.touchAll() // it applied, so it decodes; be safe all the same
			return
		}
		switch t {
		case CmdGatewayAdd, CmdGatewayRegister:
			s.touch(r.ID)
		case CmdGatewayEnroll, CmdGatewayDecommission:
			s.touch(r.Gateway)
		case CmdCertRevoke:
			s.touchRevoked(r.Gateway, r.Serial)
		case CmdRequestDecide:
			req := s.requests[r.ID]
			switch {
			case req == nil || req.Status != api.RequestApproved:
			case req.Kind == api.RequestPolicy:
				s.touchAll()
			case req.Kind == api.RequestRevoke:
				s.touchRevoked(req.Gateway, req.Serial)
			}
		}
	default:
		s.touchAll()
	}
}

// touchRevoked touches the gateway a revocation names, or the gateway of
// the certificate it names.
func (s *State) touchRevoked(gateway, serial string) {
	if gateway != "" {
		s.touch(gateway)
		return
	}
	if c, ok := s.certs[normSerial(serial)]; ok && c.Gateway != "" {
		s.touch(c.Gateway)
	}
}

// passCounts returns how many passes of each kind the hub has made.
func (h *viewHub) passCounts() hubPasses {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.passes
}
