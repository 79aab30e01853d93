package api

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// ViewDelta is the change from one view of a gateway to the next, as a
// watch stream sends it after the first, full view: the peers added or
// changed and removed, the rules added and removed. A gateway near a
// national service has tens of thousands of peers and rules, of which
// one change touches a handful, so a delta is what keeps a policy or
// registry change cheap to fan out.
//
// Peers are kept sorted by gateway id and rules by CompareRules, in views
// and in deltas alike, so a delta applies by merging sorted lists.
type ViewDelta struct {
	Gateway       string       `json:"gateway"`
	BaseIndex     uint64       `json:"base_index"` // the RaftIndex of the view it applies to
	RaftIndex     uint64       `json:"raft_index"`
	PolicyVersion uint64       `json:"policy_version"`
	OverlayIP     netip.Addr   `json:"overlay_ip"`
	OverlayPrefix netip.Prefix `json:"overlay_prefix"`
	PeersSet      []Peer       `json:"peers_set,omitempty"`     // added or changed
	PeersRemoved  []string     `json:"peers_removed,omitempty"` // gateway ids
	RulesAdded    []Rule       `json:"rules_added,omitempty"`
	RulesRemoved  []Rule       `json:"rules_removed,omitempty"`
	// LANs are the view's LANs, whole (see View.LANs; absent from deltas
	// of earlier releases, like from their views).
	LANs []netip.Prefix `json:"lans"`
}

// WatchEvent is one line of a watch stream opened with deltas: either a
// full view or a delta against the view sent before it. On a gateway
// stream (StreamProto) a line can also answer a report (Ack, with Code
// and Error if it was refused) or refuse the stream itself (Code and
// Error without Ack, the last line before the controller closes it).
type WatchEvent struct {
	View  *View      `json:"view,omitempty"`
	Delta *ViewDelta `json:"delta,omitempty"`
	Ack   uint64     `json:"ack,omitempty"`   // the StreamReport.Seq answered
	Code  int        `json:"code,omitempty"`  // an HTTP status: what was refused, and why
	Error string     `json:"error,omitempty"` // what is wrong, when Code is set
	// Renew asks the gateway to renew its certificate now, saying why
	// (StreamProtoRenew only).
	Renew string `json:"renew,omitempty"`
	// Renewed answers a renewal on the stream (with Ack).
	Renewed *RenewResponse `json:"renewed,omitempty"`
}

// ComparePeers is the order of View.Peers: by gateway id.
func ComparePeers(a, b Peer) int { return strings.Compare(a.Gateway, b.Gateway) }

// SamePeer says whether two peer entries are equal.
func SamePeer(a, b Peer) bool {
	return a.Gateway == b.Gateway && a.Agency == b.Agency && a.PublicKey == b.PublicKey &&
		a.Endpoint == b.Endpoint && slices.Equal(a.AllowedIPs, b.AllowedIPs)
}

// SameLANs says whether two views' LANs are equal, LANs not known (nil)
// apart from none.
func SameLANs(a, b []netip.Prefix) bool { return (a == nil) == (b == nil) && slices.Equal(a, b) }

// Diff returns the delta that turns old into cur. Both must be views of
// the same gateway with sorted peers and rules (as the controller makes them).
func Diff(old, cur *View) *ViewDelta {
	d := &ViewDelta{
		Gateway: cur.Gateway, BaseIndex: old.RaftIndex, RaftIndex: cur.RaftIndex, PolicyVersion: cur.PolicyVersion,
		OverlayIP: cur.OverlayIP, OverlayPrefix: cur.OverlayPrefix, LANs: cur.LANs,
	}
	i, j := 0, 0
	for i < len(old.Peers) || j < len(cur.Peers) {
		var c int
		switch {
		case i == len(old.Peers):
			c = 1
		case j == len(cur.Peers):
			c = -1
		default:
			c = ComparePeers(old.Peers[i], cur.Peers[j])
		}
		switch {
		case c < 0:
			d.PeersRemoved = append(d.PeersRemoved, old.Peers[i].Gateway)
			i++
		case c > 0:
			d.PeersSet = append(d.PeersSet, cur.Peers[j])
			j++
		default:
			if !SamePeer(old.Peers[i], cur.Peers[j]) {
				d.PeersSet = append(d.PeersSet, cur.Peers[j])
			}
			i++
			j++
		}
	}
	i, j = 0, 0
	for i < len(old.Rules) || j < len(cur.Rules) {
		var c int
		switch {
		case i == len(old.Rules):
			c = 1
		case j == len(cur.Rules):
			c = -1
		default:
			c = CompareRules(old.Rules[i], cur.Rules[j])
		}
		switch {
		case c < 0:
			d.RulesRemoved = append(d.RulesRemoved, old.Rules[i])
			i++
		case c > 0:
			d.RulesAdded = append(d.RulesAdded, cur.Rules[j])
			j++
		default:
			i++
			j++
		}
	}
	return d
}

// ErrDeltaBase says a delta does not apply to the view at hand: the
// watcher must start again from a full view.
var ErrDeltaBase = errors.New("delta does not apply to this view")

// Apply returns the view that d makes of base, leaving base unchanged.
// It fails with ErrDeltaBase if d was made against another view, or if it
// removes a peer or rule that base lacks or adds a rule base already has.
func (d *ViewDelta) Apply(base *View) (*View, error) {
	if base == nil || d.Gateway != base.Gateway || d.BaseIndex != base.RaftIndex {
		return nil, ErrDeltaBase
	}
	v := &View{
		Gateway: d.Gateway, RaftIndex: d.RaftIndex, PolicyVersion: d.PolicyVersion,
		OverlayIP: d.OverlayIP, OverlayPrefix: d.OverlayPrefix, LANs: d.LANs,
	}
	var err error
	if v.Peers, err = applyPeers(base.Peers, d.PeersSet, d.PeersRemoved); err != nil {
		return nil, err
	}
	if v.Rules, err = applyRules(base.Rules, d.RulesAdded, d.RulesRemoved); err != nil {
		return nil, err
	}
	return v, nil
}

func applyPeers(base, set []Peer, removed []string) ([]Peer, error) {
	if !slices.IsSortedFunc(set, ComparePeers) || !slices.IsSorted(removed) {
		return nil, fmt.Errorf("%w: peers out of order", ErrDeltaBase)
	}
	out := make([]Peer, 0, max(0, len(base)+len(set)-len(removed)))
	i, j, k := 0, 0, 0
	for i < len(base) || j < len(set) {
		var c int
		switch {
		case i == len(base):
			c = 1
		case j == len(set):
			c = -1
		default:
			c = ComparePeers(base[i], set[j])
		}
		if c <= 0 && k < len(removed) && removed[k] == base[i].Gateway {
			if c == 0 {
				return nil, fmt.Errorf("%w: peer %s both set and removed", ErrDeltaBase, removed[k])
			}
			i++
			k++
			continue
		}
		switch {
		case c < 0:
			out = append(out, base[i])
			i++
		case c > 0:
			out = append(out, set[j])
			j++
		default:
			out = append(out, set[j])
			i++
			j++
		}
	}
	if k != len(removed) {
		return nil, fmt.Errorf("%w: removes peer %s, which it does not have", ErrDeltaBase, removed[k])
	}
	return out, nil
}

func applyRules(base, added, removed []Rule) ([]Rule, error) {
	if !slices.IsSortedFunc(added, CompareRules) || !slices.IsSortedFunc(removed, CompareRules) {
		return nil, fmt.Errorf("%w: rules out of order", ErrDeltaBase)
	}
	out := make([]Rule, 0, max(0, len(base)+len(added)-len(removed)))
	i, j, k := 0, 0, 0
	for i < len(base) || j < len(added) {
		var c int
		switch {
		case i == len(base):
			c = 1
		case j == len(added):
			c = -1
		default:
			c = CompareRules(base[i], added[j])
		}
		switch {
		case c == 0:
			return nil, fmt.Errorf("%w: adds rule %v, which it has", ErrDeltaBase, added[j])
		case c > 0:
			out = append(out, added[j])
			j++
		case k < len(removed) && removed[k] == base[i]:
			i++
			k++
		default:
			out = append(out, base[i])
			i++
		}
	}
	if k != len(removed) {
		return nil, fmt.Errorf("%w: removes rule %v, which it does not have", ErrDeltaBase, removed[k])
	}
	return out, nil
}
