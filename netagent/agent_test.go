package netagent

import (
	"net/netip"
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
