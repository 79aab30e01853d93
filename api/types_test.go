package api

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSerialsReadsOneSerial: renewed_from as a list, or as the single
// serial of the builds that introduced it.
func TestSerialsReadsOneSerial(t *testing.T) {
	for in, want := range map[string]Serials{
		`{"renewed_from":"0a1b"}`:        {"0a1b"},
		`{"renewed_from":["0a1b","0c"]}`: {"0a1b", "0c"},
		`{"renewed_from":""}`:            nil,
		`{"id":"gw1"}`:                   nil,
	} {
		var g Gateway
		if err := json.Unmarshal([]byte(in), &g); err != nil || !slices.Equal(g.RenewedFrom, want) {
			t.Errorf("%s: %v %v, want %v", in, g.RenewedFrom, err, want)
		}
	}
	var g Gateway
	if err := json.Unmarshal([]byte(`{"renewed_from":3}`), &g); err == nil {
		t.Error("a number read as serials")
	}
}

// TestReportSameState: a report refreshes another only if it says the
// same about the gateway, peers left out included; its times do not
// count. A report that leaves no peer out carries neither field, so the
// controllers of an earlier release, which refuse unknown fields, still
// take it.
func TestReportSameState(t *testing.T) {
	base := Report{PolicyVersion: 3, RaftIndex: 40, RulesetDigest: "sha256:x", Peers: 2, PeersLeftOut: 1,
		PeerError: "invalid peer: peer 1 (gw3, k3): public key: bad"}
	later := base
	later.At, later.LastHandshake = base.At.Add(time.Minute), base.At.Add(time.Second)
	if !base.SameState(later) {
		t.Error("a report that differs only in its times is not the same state")
	}
	for name, change := range map[string]func(*Report){
		"peers_left_out": func(r *Report) { r.PeersLeftOut = 2 },
		"peer_error":     func(r *Report) { r.PeerError = "invalid peer: peer 1 (gw3, k3): duplicate public key" },
		"apply_error":    func(r *Report) { r.ApplyError = "apply firewall: x" },
		"peers":          func(r *Report) { r.Peers = 3 },
	} {
		o := base
		change(&o)
		if base.SameState(o) {
			t.Errorf("a report with another %s is the same state", name)
		}
	}
	b, err := json.Marshal(Report{PolicyVersion: 3, RaftIndex: 40, RulesetDigest: "sha256:x", Peers: 2})
	if err != nil || strings.Contains(string(b), "peer_error") || strings.Contains(string(b), "peers_left_out") {
		t.Errorf("a report with every peer applied: %s %v", b, err)
	}
}
