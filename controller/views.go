package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/policy"
	"github.com/govnet/govnet/policy/nft"
)

// viewHub keeps each gateway's compiled view and wakes the streams that
// watch it. A recompute is triggered after every command that can change
// the network map; triggers coalesce, so a burst of commands costs one
// compile. Subscribers hold a one-slot channel: a slow stream only ever
// has "something changed" pending and never blocks the hub or the others.
type viewHub struct {
	state   *State
	log     *slog.Logger
	trigger chan struct{}

	mu      sync.Mutex
	views   map[string]*api.View
	subs    map[string]map[chan struct{}]struct{}
	compErr error // why the last compile failed, if it did
	// computed is the raft index the views were last compiled at;
	// compiled is closed and replaced after every compile.
	computed uint64
	compiled chan struct{}

	polVersion uint64
	pol        *policy.Policy

	// digests caches the expected ruleset digest of each gateway's view,
	// computed on first use; an entry is valid for the view it was made from.
	digests map[string]expectedDigest
}

type expectedDigest struct {
	view   *api.View
	digest string
}

func newViewHub(state *State, log *slog.Logger) *viewHub {
	return &viewHub{
		state:    state,
		log:      log,
		trigger:  make(chan struct{}, 1),
		views:    map[string]*api.View{},
		subs:     map[string]map[chan struct{}]struct{}{},
		compiled: make(chan struct{}),
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

// recompute compiles every gateway's view from the current state.
// TODO(issue 4): maintain views incrementally instead of compiling all.
func (h *viewHub) recompute() error {
	s := h.state
	s.mu.RLock()
	index, overlay := s.index, s.overlay
	var cur api.Policy
	if n := len(s.policies); n > 0 {
		cur = s.policies[n-1]
	}
	s.mu.RUnlock()
	reg := &policy.Registry{Agencies: s.Agencies(), Gateways: s.Gateways()}
	h.wakeUnenrolled(reg.Gateways)

	views := map[string]*api.View{}
	if cur.Version == 0 {
		// No policy yet: every enrolled gateway gets a view that denies all.
		for _, g := range reg.Gateways {
			if g.Status == api.StatusEnrolled {
				views[g.ID] = &api.View{Gateway: g.ID, OverlayIP: g.OverlayIP}
			}
		}
	} else {
		if h.polVersion != cur.Version {
			p, err := policy.Parse(fmt.Sprintf("policy-v%d.yaml", cur.Version), []byte(cur.Source))
			if err != nil {
				return h.fail(fmt.Errorf("policy version %d: %w", cur.Version, err))
			}
			h.pol, h.polVersion = p, cur.Version
		}
		var err error
		if views, err = h.pol.Compile(reg); err != nil {
			return h.fail(fmt.Errorf("policy version %d: %w", cur.Version, err))
		}
	}
	for _, v := range views {
		v.OverlayPrefix = overlay
		v.PolicyVersion = cur.Version
		if v.Peers == nil {
			v.Peers = []api.Peer{}
		}
		if v.Rules == nil {
			v.Rules = []api.Rule{}
		}
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	h.compErr = nil
	for id, v := range views {
		if old, ok := h.views[id]; ok && sameView(old, v) {
			continue
		}
		v.RaftIndex = index
		h.views[id] = v
		h.notify(id)
	}
	for id := range h.views {
		if _, ok := views[id]; !ok {
			delete(h.views, id)
			delete(h.digests, id)
			h.notify(id)
		}
	}
	h.computed = index
	close(h.compiled)
	h.compiled = make(chan struct{})
	return nil
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
	if _, ok := h.views[id]; ok {
		return true
	}
	for _, v := range h.views {
		for _, p := range v.Peers {
			if p.Gateway == id {
				return true
			}
		}
	}
	return false
}

func (h *viewHub) fail(err error) error {
	h.mu.Lock()
	h.compErr = err
	h.mu.Unlock()
	return err
}

func sameView(a, b *api.View) bool {
	x, y := *a, *b
	x.RaftIndex, y.RaftIndex = 0, 0
	return reflect.DeepEqual(x, y)
}

// notify wakes gateway id's streams; h.mu must be held.
func (h *viewHub) notify(id string) {
	for ch := range h.subs[id] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// subscribe returns a channel that receives a value whenever gateway id's
// view changes, and a function to stop.
func (h *viewHub) subscribe(id string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	if h.subs[id] == nil {
		h.subs[id] = map[chan struct{}]struct{}{}
	}
	h.subs[id][ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(h.subs[id], ch)
		if len(h.subs[id]) == 0 {
			delete(h.subs, id)
		}
		h.mu.Unlock()
	}
}

// expected returns the digest of the ruleset gateway id's current view
// compiles to, as the agent will read it back from its kernel; ok is false
// when the gateway has no view.
func (h *viewHub) expected(id string) (digest string, v *api.View, ok bool) {
	h.mu.Lock()
	v, ok = h.views[id]
	e, cached := h.digests[id]
	h.mu.Unlock()
	if !ok {
		return "", nil, false
	}
	if cached && e.view == v {
		return e.digest, v, true
	}
	// Pure and cheap (about 1 ms per 1,000 rules): computed outside the lock.
	// Rules the firewall cannot express are left out by the agent too, so
	// the digest that comes with ErrUnsupportedRule is still the expectation.
	d, err := nft.ExpectedDigest(v.Rules)
	if err != nil && !errors.Is(err, nft.ErrUnsupportedRule) {
		h.log.Error("expected ruleset digest", "gateway", id, "err", err)
		return "", v, true
	}
	h.mu.Lock()
	if h.digests == nil {
		h.digests = map[string]expectedDigest{}
	}
	if h.views[id] == v {
		h.digests[id] = expectedDigest{view: v, digest: d}
	}
	h.mu.Unlock()
	return d, v, true
}

// view returns gateway id's current view; views are never mutated once
// published, so the pointer may be shared.
func (h *viewHub) view(id string) (*api.View, bool) {
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
