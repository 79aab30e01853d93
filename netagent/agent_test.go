package netagent

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/govnet/govnet/api"
)

// TestViewWithoutLANs: an applied view that does not say which LANs are
// the gateway's (saved by an earlier release, or sent by an earlier
// controller) makes the agent ask for the whole view, and the same view
// with its LANs then applies; nothing else at an index already applied
// does.
func TestViewWithoutLANs(t *testing.T) {
	lans := []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}
	old := &api.View{Gateway: "gw", RaftIndex: 7}
	a := &Agent{applied: old}
	if got := a.appliedIndex(); got != 0 {
		t.Errorf("resume index %d after a view without LANs, want 0 (the whole view)", got)
	}
	a.applied = &api.View{Gateway: "gw", RaftIndex: 7, LANs: []netip.Prefix{}}
	if got := a.appliedIndex(); got != 7 {
		t.Errorf("resume index %d after a view with LANs (none), want 7", got)
	}
	for _, c := range []struct {
		name        string
		applied, v  *api.View
		wantApplied bool
	}{
		{"first view", nil, &api.View{RaftIndex: 7}, true},
		{"newer", old, &api.View{RaftIndex: 8}, true},
		{"older", old, &api.View{RaftIndex: 6, LANs: lans}, false},
		{"same, bringing the LANs", old, &api.View{RaftIndex: 7, LANs: lans}, true},
		{"same, bringing none (known)", old, &api.View{RaftIndex: 7, LANs: []netip.Prefix{}}, true},
		{"same, still without", old, &api.View{RaftIndex: 7}, false},
		{"same, LANs known already", &api.View{RaftIndex: 7, LANs: lans}, &api.View{RaftIndex: 7, LANs: lans}, false},
	} {
		if got := !stale(c.applied, c.v); got != c.wantApplied {
			t.Errorf("%s: applied %v, want %v", c.name, got, c.wantApplied)
		}
	}
}

// TestControllerShield: controllers' names are looked up again at each
// refresh, a new address is added (never dropped: an answer may hold a
// subset) and reported once, and a lookup that fails keeps the addresses
// the name had (the lookups are the test's own: nothing is asked of DNS).
func TestControllerShield(t *testing.T) {
	log := testLogger(t)
	ctx := context.Background()
	ips := &controllerShield{urls: []string{"https://192.0.2.1:7443", "https://[2001:db8::1]:7443"},
		lookup: func(context.Context, string) ([]netip.Addr, error) {
			t.Fatal("an IP literal looked up")
			return nil, nil
		}}
	if ips.named() {
		t.Error("IP literals reported as names")
	}
	addrs, changed := ips.refresh(ctx, log)
	if !changed || len(addrs) != 2 {
		t.Fatalf("first refresh: %v %v", addrs, changed)
	}
	if _, changed := ips.refresh(ctx, log); changed {
		t.Error("the same addresses reported as a change")
	}

	answer := map[string][]netip.Addr{"ctl1.gov": {netip.MustParseAddr("192.0.2.11")}, "ctl2.gov": {netip.MustParseAddr("192.0.2.12")}}
	c := &controllerShield{urls: []string{"https://ctl1.gov:7443", "https://ctl2.gov:7443"},
		lookup: func(_ context.Context, host string) ([]netip.Addr, error) {
			if a, ok := answer[host]; ok {
				return a, nil
			}
			return nil, errors.New("no such host")
		}}
	if !c.named() {
		t.Error("names not reported")
	}
	if addrs, changed := c.refresh(ctx, log); !changed || len(addrs) != 2 {
		t.Fatalf("first lookup: %v %v", addrs, changed)
	}
	answer["ctl1.gov"] = []netip.Addr{netip.MustParseAddr("192.0.2.21")} // a new address (or a subset of a round robin)
	addrs, changed = c.refresh(ctx, log)
	if !changed || !slices.Contains(addrs, netip.MustParseAddr("192.0.2.21")) || !slices.Contains(addrs, netip.MustParseAddr("192.0.2.11")) {
		t.Errorf("a controller with a new address: %v (changed %v), want both addresses shielded", addrs, changed)
	}
	if _, changed := c.refresh(ctx, log); changed {
		t.Error("the same answer again reported as a change")
	}
	delete(answer, "ctl2.gov") // DNS fails for it
	addrs, changed = c.refresh(ctx, log)
	if changed || !slices.Contains(addrs, netip.MustParseAddr("192.0.2.12")) {
		t.Errorf("a failed lookup dropped the name's addresses: %v (changed %v)", addrs, changed)
	}
}
