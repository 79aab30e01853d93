package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape fetches and parses a node's /metrics over the API as c (an
// operator or an auditor).
func scrape(t *testing.T, c *api.Client) map[string]*dto.MetricFamily {
	t.Helper()
	body, err := c.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// value returns the value of the series of family name whose labels
// include labels (name=value pairs); ok is false if there is none.
func value(mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.Label {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// TestMetricsAndCoverage drives a real node (SoftHSM2 CA, raft) through
// enrollments, a report, a revocation and a policy, then scrapes /metrics
// and reads the coverage report, and checks both against the registry.
func TestMetricsAndCoverage(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	ctx := context.Background()
	op, off := person(t, cfg, n, "operator1"), person(t, cfg, n, "officer1")

	for _, a := range []api.Agency{
		{Code: "000.00.00.H29", Name: "Ủy ban nhân dân tỉnh Quảng Ninh"},
		{Code: "000.00.04.H29", Name: "Ủy ban nhân dân thành phố Hạ Long"},
		{Code: "000.00.00.H49", Name: "Ủy ban nhân dân tỉnh Quảng Nam"},
	} {
		if _, err := op.AddAgency(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	gws := map[string]string{"gw1": "000.00.00.H29", "gw2": "000.00.00.H49", "gw3": "000.00.04.H29", "gw4": "000.00.04.H29"}
	for id, ag := range gws {
		if _, err := op.AddGateway(ctx, api.Gateway{ID: id, Agency: ag}); err != nil {
			t.Fatal(err)
		}
	}
	clients := map[string]*api.Client{}
	for _, id := range []string{"gw1", "gw2", "gw3"} { // gw4 stays pending
		tok, err := off.IssueToken(ctx, id, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		e, err := enroll(t, cfg, n, tok.Token)
		if err != nil {
			t.Fatal(err)
		}
		clients[id] = e.client
	}
	const pol = "version: 1\ngroups:\n  provinces:\n    level: province\nrules:\n  - from: [provinces]\n    to: [provinces]\n    ports: [tcp/22]\n"
	if _, err := off.PublishPolicy(ctx, "p.yaml", pol); err != nil {
		t.Fatal(err)
	}
	// gw1 watches and reports the digest its view compiles to; gw2
	// reports another one.
	// The view the policy compiled to (the stream may open before it).
	var v *api.View
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	errStop := errors.New("stop")
	if err := clients["gw1"].Watch(wctx, 0, func(got *api.View) error {
		if v = got; got.PolicyVersion < 1 {
			return nil
		}
		return errStop
	}); !errors.Is(err, errStop) {
		t.Fatalf("watch: %v", err)
	}
	var want string
	waitFor(t, 10*time.Second, "gw1's expected digest", func() error {
		g, err := op.Gateway(ctx, "gw1")
		if err != nil || g.ExpectedDigest == "" {
			return fmt.Errorf("%+v %v", g, err)
		}
		want = g.ExpectedDigest
		return nil
	})
	if err := clients["gw1"].Report(ctx, api.Report{PolicyVersion: v.PolicyVersion, RaftIndex: v.RaftIndex, RulesetDigest: want}); err != nil {
		t.Fatal(err)
	}
	// gw2 also left a peer out of its WireGuard device, and so did gw3,
	// which is revoked next: only gw2 counts.
	v2 := firstView(t, clients["gw2"], 0)
	if err := clients["gw2"].Report(ctx, api.Report{PolicyVersion: v2.PolicyVersion, RaftIndex: v2.RaftIndex, RulesetDigest: "sha256:tampered",
		PeersLeftOut: 1, PeerError: "invalid peer: peer 0 (gw1, k1): duplicate public key"}); err != nil {
		t.Fatal(err)
	}
	v3 := firstView(t, clients["gw3"], 0)
	if err := clients["gw3"].Report(ctx, api.Report{PolicyVersion: v3.PolicyVersion, RaftIndex: v3.RaftIndex, RulesetDigest: "sha256:x",
		PeersLeftOut: 2, PeerError: "invalid peer: peer 0 (gw1, k1): duplicate public key"}); err != nil {
		t.Fatal(err)
	}
	if _, err := off.Revoke(ctx, api.RevokeRequest{Gateway: "gw3", Reason: "keyCompromise"}); err != nil {
		t.Fatal(err)
	}
	// A stream that stays open.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go clients["gw1"].Watch(sctx, 0, func(*api.View) error { return nil })
	waitFor(t, 10*time.Second, "one gateway stream", func() error {
		if w := n.hub.watchers(); w != 1 {
			return fmt.Errorf("%d streams", w)
		}
		return nil
	})

	// Only operators and auditors read the metrics, and only over the
	// API: the plain-HTTP listener serves CRLs, OCSP and health alone.
	if resp, err := http.Get("http://" + n.httpLn.Addr().String() + "/metrics"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("plain-HTTP /metrics: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	_, err := off.Metrics(ctx)
	wantStatus(t, err, 403, "")
	mfs := scrape(t, op)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"govnet_raft_state", []string{"state", "leader"}, 1},
		{"govnet_raft_state", []string{"state", "follower"}, 0},
		{"govnet_ready", nil, 1},
		{"govnet_gateway_streams", nil, 1},
		{"govnet_policy_version", nil, 1},
		{"govnet_gateways", []string{"status", "enrolled"}, 2},
		{"govnet_gateways", []string{"status", "pending"}, 1},
		{"govnet_gateways", []string{"status", "revoked"}, 1},
		{"govnet_gateway_rulesets", []string{"state", "ok"}, 1},
		{"govnet_gateway_rulesets", []string{"state", "mismatch"}, 1},
		{"govnet_gateways_peers_left_out", nil, 1},
		{"govnet_certificates_issued_total", []string{"profile", "gateway"}, 3},
		{"govnet_certificates_revoked_total", []string{"reason", "keyCompromise"}, 1},
		{"govnet_certificates", []string{"status", "revoked"}, 1},
		{"govnet_certificate_days_to_expiry", []string{"profile", "gateway"}, 2}, // sample count: the valid ones
	} {
		got, ok := value(mfs, c.name, c.labels...)
		if !ok || got != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	applied, _ := value(mfs, "govnet_raft_applied_index")
	commit, _ := value(mfs, "govnet_raft_commit_index")
	if applied < float64(v.RaftIndex) || commit < applied {
		t.Errorf("applied index %v, commit index %v, view index %d", applied, commit, v.RaftIndex)
	}
	if lag, ok := value(mfs, "govnet_view_lag_raft_indexes"); !ok || lag < 0 || lag > applied {
		t.Errorf("view lag %v (present %v)", lag, ok)
	}
	if since, ok := value(mfs, "govnet_raft_applied_bytes_since_snapshot"); !ok || since < 1000 {
		t.Errorf("bytes applied since the last snapshot %v (present %v): the writes above add up to more", since, ok)
	}
	if failures, ok := value(mfs, "govnet_hsm_failures_total"); !ok || failures != 0 {
		t.Errorf("HSM failures %v (present %v), want 0", failures, ok)
	}
	if changes, ok := value(mfs, "govnet_raft_leader_changes_total"); !ok || changes < 1 {
		t.Errorf("leader changes %v (present %v): the node saw itself become leader", changes, ok)
	}
	if _, ok := value(mfs, "govnet_raft_snapshots_total"); !ok {
		t.Error("no govnet_raft_snapshots_total")
	}
	if n, ok := value(mfs, "govnet_raft_apply_seconds"); !ok || n < 10 {
		t.Errorf("apply latency samples %v (present %v): every write above was one", n, ok)
	}
	// Gateway certificates live about 24 h: both within 2 days, about 1 on average.
	for _, m := range mfs["govnet_certificate_days_to_expiry"].Metric {
		if m.Label[0].GetValue() != "gateway" {
			continue
		}
		h := m.Histogram
		if mean := h.GetSampleSum() / float64(h.GetSampleCount()); mean < 0.9 || mean > 1.1 {
			t.Errorf("gateway certificates expire in %v days on average, want about 1", mean)
		}
		for _, b := range h.Bucket {
			if b.GetUpperBound() >= 2 && b.GetCumulativeCount() != 2 {
				t.Errorf("days-to-expiry bucket le=%v: %d, want 2", b.GetUpperBound(), b.GetCumulativeCount())
			}
		}
	}
	if _, ok := mfs["go_goroutines"]; !ok {
		t.Error("no Go runtime metrics")
	}

	// Coverage: Quảng Ninh has 2 agencies, one covered by gw1 (gw3 is
	// revoked, gw4 pending); Quảng Nam's gw2 has the wrong ruleset.
	rep, err := op.Coverage(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Window != api.DefaultCoverageWindow.String() || rep.Total.Agencies != 3 || rep.Total.Enrolled != 2 || rep.Total.Healthy != 1 || rep.Total.RulesetNotOK != 1 {
		t.Fatalf("coverage total %+v window %s", rep.Total, rep.Window)
	}
	if len(rep.Provinces) != 2 || rep.Provinces[0].Code != "000.00.00.H29" || rep.Provinces[0].Healthy != 1 || rep.Provinces[0].Agencies != 2 ||
		rep.Provinces[1].Code != "000.00.00.H49" || rep.Provinces[1].Healthy != 0 || rep.Provinces[1].Rank != 2 {
		t.Fatalf("provinces %+v", rep.Provinces)
	}
	// A window that has passed since gw1 reported: nothing is healthy.
	time.Sleep(5 * time.Millisecond)
	if rep, err := op.Coverage(ctx, time.Millisecond); err != nil || rep.Total.Healthy != 0 || rep.Total.Stale != 2 {
		t.Fatalf("1ms window: %+v %v", rep, err)
	}
	// A bad window is refused with what is wrong.
	people := filepath.Join(filepath.Dir(cfg.DataDir), "people")
	tc, err := api.TLSConfig(cfg.pkiPath(rootFile), filepath.Join(people, "operator1.crt"), filepath.Join(people, "operator1.key"))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	for _, bad := range []string{"0s", "-1m", "soon", "800h"} {
		resp, err := hc.Get("https://" + n.Addr().String() + "/v1/reports/coverage?window=" + bad)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `window \"`+bad) {
			t.Errorf("window %s: %s %s", bad, resp.Status, body)
		}
	}
}
