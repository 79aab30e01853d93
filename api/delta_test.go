package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

// randomView makes a view of gw with a random subset of 40 possible
// peers (some with a changed endpoint) and of 60 possible rules.
func randomView(r *rand.Rand, index uint64) *View {
	v := &View{Gateway: "gw", RaftIndex: index, PolicyVersion: index / 3,
		OverlayIP: netip.MustParseAddr("100.64.0.1"), OverlayPrefix: netip.MustParsePrefix("100.64.0.0/16"),
		Peers: []Peer{}, Rules: []Rule{}}
	for i := range 40 {
		if r.IntN(2) == 0 {
			continue
		}
		p := Peer{Gateway: fmt.Sprintf("p%02d", i), Agency: "000.00.00.H29", PublicKey: fmt.Sprintf("key%d", i),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, 1, byte(i)}), 32)}}
		if r.IntN(4) == 0 {
			p.Endpoint = fmt.Sprintf("192.0.2.%d:51820", r.IntN(3))
		}
		if r.IntN(5) == 0 {
			p.AllowedIPs = append(p.AllowedIPs, netip.MustParsePrefix("10.0.0.0/16"))
		}
		v.Peers = append(v.Peers, p)
	}
	for i := range 60 {
		if r.IntN(2) == 0 {
			continue
		}
		v.Rules = append(v.Rules, Rule{Source: netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, 1, byte(i / 3)}), 32),
			Protocol: []string{"icmp", "tcp", "udp"}[i%3], Port: uint16(i%3) * 443})
	}
	slices.SortFunc(v.Rules, CompareRules)
	switch r.IntN(3) { // the gateway's LANs: not known, none, some
	case 1:
		v.LANs = []netip.Prefix{}
	case 2:
		v.LANs = []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24"), netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 10, byte(r.IntN(4)), 0}), 24)}
	}
	return v
}

// Applying the diff of two views to the first gives the second, exactly,
// over a sequence of random views as a watch stream would see them.
func TestDiffApply(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	prev := randomView(r, 1)
	for step := uint64(2); step < 500; step++ {
		cur := randomView(r, step)
		if step%50 == 0 {
			cur = &View{Gateway: "gw", RaftIndex: step, Peers: []Peer{}, Rules: []Rule{}} // everything removed
		}
		d := Diff(prev, cur)
		got, err := d.Apply(prev)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		// Through the stream's JSON, LANs not known stay apart from none.
		var wire ViewDelta
		if b, err := json.Marshal(d); err != nil || json.Unmarshal(b, &wire) != nil {
			t.Fatalf("step %d: delta JSON: %v", step, err)
		}
		if w, err := wire.Apply(prev); err != nil || (w.LANs == nil) != (cur.LANs == nil) || !slices.Equal(w.LANs, cur.LANs) {
			t.Fatalf("step %d: LANs %v through JSON, want %v (%v)", step, w.LANs, cur.LANs, err)
		}
		if !reflect.DeepEqual(got, cur) {
			t.Fatalf("step %d: apply(diff) differs:\n got %+v\nwant %+v", step, got, cur)
		}
		if again := Diff(cur, got); len(again.PeersSet)+len(again.PeersRemoved)+len(again.RulesAdded)+len(again.RulesRemoved) != 0 {
			t.Fatalf("step %d: a view differs from itself: %+v", step, again)
		}
		prev = cur
	}
}

func TestApplyRejectsWrongBase(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	a, b := randomView(r, 1), randomView(r, 2)
	d := Diff(a, b)
	for _, tc := range []struct {
		name string
		base *View
	}{
		{"nil", nil},
		{"other index", &View{Gateway: "gw", RaftIndex: 7}},
		{"other gateway", &View{Gateway: "other", RaftIndex: 1}},
	} {
		if _, err := d.Apply(tc.base); !errors.Is(err, ErrDeltaBase) {
			t.Errorf("%s: got %v, want ErrDeltaBase", tc.name, err)
		}
	}
	// The right index but other contents: what it removes is not there.
	if len(d.PeersRemoved) > 0 || len(d.RulesRemoved) > 0 {
		empty := &View{Gateway: "gw", RaftIndex: 1}
		if _, err := d.Apply(empty); !errors.Is(err, ErrDeltaBase) {
			t.Errorf("removal from an empty view: got %v, want ErrDeltaBase", err)
		}
	}
	// A rule added twice.
	dup := &ViewDelta{Gateway: "gw", BaseIndex: 1, RulesAdded: a.Rules[:1]}
	if _, err := dup.Apply(a); !errors.Is(err, ErrDeltaBase) {
		t.Errorf("duplicate rule: got %v, want ErrDeltaBase", err)
	}
}

// A delta that removes more than its base holds is refused, not a panic
// (it made a slice of negative capacity before it was checked).
func TestApplyRemovesMoreThanBase(t *testing.T) {
	base := &View{Gateway: "gw", RaftIndex: 1}
	for name, d := range map[string]*ViewDelta{
		"peers": {Gateway: "gw", BaseIndex: 1, RaftIndex: 2, PeersRemoved: []string{"gw-x"}},
		"rules": {Gateway: "gw", BaseIndex: 1, RaftIndex: 2, RulesRemoved: []Rule{{Protocol: "tcp", Port: 22}}},
	} {
		if _, err := d.Apply(base); !errors.Is(err, ErrDeltaBase) {
			t.Errorf("%s: got %v, want ErrDeltaBase", name, err)
		}
	}
}

// FuzzViewDelta: a delta from the stream, whatever it holds, is applied
// or refused with ErrDeltaBase, never a panic; what it yields is sorted
// and, diffed against its base, gives the delta's effect back.
func FuzzViewDelta(f *testing.F) {
	r := rand.New(rand.NewPCG(5, 6))
	a, b := randomView(r, 1), randomView(r, 2)
	ja, _ := json.Marshal(a)
	jd, _ := json.Marshal(Diff(a, b))
	f.Add(ja, jd)
	f.Add(ja, []byte(`{"gateway":"gw","base_index":1,"raft_index":2,"peers_removed":["p00","p01","zz"]}`))
	f.Fuzz(func(t *testing.T, view, delta []byte) {
		var v View
		var d ViewDelta
		if json.Unmarshal(view, &v) != nil || json.Unmarshal(delta, &d) != nil {
			return
		}
		slices.SortFunc(v.Peers, ComparePeers)
		v.Peers = slices.CompactFunc(v.Peers, func(x, y Peer) bool { return x.Gateway == y.Gateway })
		slices.SortFunc(v.Rules, CompareRules)
		v.Rules = slices.Compact(v.Rules)
		got, err := d.Apply(&v)
		if err != nil {
			if !errors.Is(err, ErrDeltaBase) {
				t.Fatalf("error not ErrDeltaBase: %v", err)
			}
			return
		}
		if !slices.IsSortedFunc(got.Peers, ComparePeers) || !slices.IsSortedFunc(got.Rules, CompareRules) {
			t.Fatal("applied view out of order")
		}
	})
}

func BenchmarkDiff(b *testing.B) {
	// A national service's view: 20,000 peers, 80,000 rules; one peer changes.
	old := &View{Gateway: "ndxp", RaftIndex: 1}
	for i := range 20000 {
		ip := netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)})
		old.Peers = append(old.Peers, Peer{Gateway: fmt.Sprintf("gw%05d", i), PublicKey: "k", AllowedIPs: []netip.Prefix{netip.PrefixFrom(ip, 32)}})
		for _, port := range []uint16{22, 443, 8080, 8443} {
			old.Rules = append(old.Rules, Rule{Source: netip.PrefixFrom(ip, 32), Protocol: "tcp", Port: port})
		}
	}
	cur := *old
	cur.RaftIndex = 2
	cur.Peers = slices.Clone(old.Peers)
	cur.Peers[777].Endpoint = "192.0.2.7:51820"
	b.ReportAllocs()
	for b.Loop() {
		d := Diff(old, &cur)
		if len(d.PeersSet) != 1 {
			b.Fatal(len(d.PeersSet))
		}
		if _, err := d.Apply(old); err != nil {
			b.Fatal(err)
		}
	}
}
