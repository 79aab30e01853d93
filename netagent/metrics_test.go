package netagent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/policy/nft"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestAgentMetrics runs the agent's metrics listener over a real
// firewall in a throwaway namespace: an install, a view, a hand edit the
// reconcile puts back, and the certificate in the state directory all
// show in /metrics; /readyz follows the first install.
func TestAgentMetrics(t *testing.T) {
	fw, ns := newTestFirewall(t, "wg0")
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	a := &Agent{cfg: cfg, log: testLogger(t), fw: fw}
	a.metrics = newAgentMetrics(a)
	addr, stop, err := a.serveMetrics("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + addr.String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz %d", code)
	}
	if code, _ := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before any firewall: %d", code)
	}

	// The gateway's certificate, as enrollment leaves it.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	notAfter := time.Now().Add(time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "gw1"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: notAfter}, &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "gw1"}}, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.path(fileCert), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}

	v := &api.View{Gateway: "gw1", RaftIndex: 42, PolicyVersion: 3, Rules: smallRules}
	if a.digest, err = a.applyRules(v.Rules, v.LANs); err != nil {
		t.Fatal(err)
	}
	a.metrics.ready.Store(true)
	a.applied = v
	a.metrics.viewApplied(v, 2)
	// Someone opens a port by hand; the reconcile puts the table back.
	ns.Exec(t, "nft", "add", "element", "inet", "govnet", "allow4", "{ 10.9.9.9 . tcp . 443 }")
	if _, err := a.reconcile(false); err != nil {
		t.Fatal(err)
	}
	if code, _ := get("/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz after the first install: %d", code)
	}

	code, body := get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics %d", code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	one := func(name string, labels ...string) *dto.Metric {
		t.Helper()
		mf := mfs[name]
		if mf == nil {
			t.Fatalf("no %s in:\n%s", name, body)
		}
	next:
		for _, m := range mf.Metric {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.Label {
					found = found || lp.GetName() == labels[i] && lp.GetValue() == labels[i+1]
				}
				if !found {
					continue next
				}
			}
			return m
		}
		t.Fatalf("no %s%v", name, labels)
		return nil
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"govnet_agent_ready", nil, 1},
		{"govnet_agent_policy_version", nil, 3},
		{"govnet_agent_view_raft_index", nil, 42},
		{"govnet_agent_ruleset_ok", nil, 1},
		{"govnet_agent_controller_connected", nil, 0},
		{"govnet_agent_peers_left_out", nil, 2},
	} {
		if got := one(c.name, c.labels...).GetGauge().GetValue(); got != c.want {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
	}
	if got := one("govnet_agent_drift_repairs_total", "what", "firewall").GetCounter().GetValue(); got != 1 {
		t.Errorf("firewall drift repairs %v, want 1", got)
	}
	if got := one("govnet_agent_reconcile_errors_total", "step", "firewall").GetCounter().GetValue(); got != 0 {
		t.Errorf("firewall errors %v, want 0", got)
	}
	// Two installs: the view's table and the restore.
	if h := one("govnet_agent_nftables_apply_seconds").GetHistogram(); h.GetSampleCount() != 2 || h.GetSampleSum() <= 0 {
		t.Errorf("apply histogram: %d samples, sum %v", h.GetSampleCount(), h.GetSampleSum())
	}
	if left := one("govnet_agent_certificate_expiry_seconds").GetGauge().GetValue(); left <= 3500 || left > 3600 {
		t.Errorf("certificate expires in %v s, want about 3600", left)
	}
	// A digest the kernel does not hold is a mismatch.
	want, err := nft.ExpectedDigest(v.Rules, v.LANs)
	if err != nil {
		t.Fatal(err)
	}
	a.metrics.firewallApplied(time.Millisecond, want, "sha256:other", nil)
	_, body = get("/metrics")
	if mfs, err = p.TextToMetricFamilies(strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if got := one("govnet_agent_ruleset_ok").GetGauge().GetValue(); got != 0 {
		t.Errorf("ruleset_ok after a mismatch: %v", got)
	}
}

// recordedPeers is a WireGuard device's peers as apply sets them. Like
// Device, it leaves out invalid peers (here: keys that start with "bad")
// and says so in an InvalidPeersError.
type recordedPeers struct {
	peers []api.Peer
	// kernelErr, if set, is a failure of the device that ApplyPeers
	// returns beside the peers it left out.
	kernelErr error
}

func (r *recordedPeers) ApplyPeers(p []api.Peer) (bool, error) {
	var valid []api.Peer
	var left *InvalidPeersError
	for i, q := range p {
		if !strings.HasPrefix(q.PublicKey, "bad") {
			valid = append(valid, q)
			continue
		}
		if left == nil {
			left = &InvalidPeersError{}
		}
		left.Peers++
		left.Errs = append(left.Errs, fmt.Errorf("%w: peer %d (%s, %s): public key: bad", ErrInvalidPeer, i, q.Gateway, q.PublicKey))
	}
	changed := !slices.EqualFunc(r.peers, valid, func(a, b api.Peer) bool { return a.PublicKey == b.PublicKey })
	r.peers = valid
	if left != nil {
		return changed, errors.Join(left, r.kernelErr)
	}
	return changed, r.kernelErr
}

// TestLeftOutBounded: a report carries at most maxApplyError bytes of the
// reasons peers were left out (and an ellipsis), cut on a character
// boundary, and the exact number of peers however many lines were cut.
func TestLeftOutBounded(t *testing.T) {
	if n, msg := leftOut(errors.New("wireguard: configure wg0: no such device")); n != 0 || msg != "" {
		t.Fatalf("an error that left no peer out: %d, %q", n, msg)
	}
	ip := &InvalidPeersError{Peers: 200}
	for i := range 200 {
		ip.Errs = append(ip.Errs, fmt.Errorf("%w: peer %d (ổổổ-%d, k%d): duplicate public key", ErrInvalidPeer, i, i, i))
	}
	if utf8.RuneStart(ip.Error()[maxApplyError]) {
		t.Fatal("the test's messages are not cut inside a character")
	}
	n, msg := leftOut(fmt.Errorf("joined: %w", errors.Join(ip, errors.New("a kernel error"))))
	if n != 200 || len(msg) > maxApplyError+len("…") || !utf8.ValidString(msg) || !strings.HasSuffix(msg, "…") ||
		!strings.HasPrefix(msg, "invalid peer: peer 0 (ổổổ-0, k0)") || strings.Contains(msg, "kernel") {
		t.Fatalf("%d peers, %d bytes (valid UTF-8: %v): %q", n, len(msg), utf8.ValidString(msg), msg)
	}
}

// reportSink is a controller that takes reports and keeps them.
type reportSink struct {
	mu      sync.Mutex
	reports []api.Report
}

func (s *reportSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var rep api.Report
	if r.URL.Path != "/v1/report" || json.NewDecoder(r.Body).Decode(&rep) != nil {
		http.Error(w, `{"error":"not a report"}`, http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.reports = append(s.reports, rep)
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// last returns the last report taken.
func (s *reportSink) last(t *testing.T) api.Report {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.reports) == 0 {
		t.Fatal("no report")
	}
	return s.reports[len(s.reports)-1]
}

func (r *recordedPeers) Stats() (int, time.Time, error) { return len(r.peers), time.Time{}, nil }

// TestApplyFailureKeepsLastView: a view whose firewall the kernel refuses
// leaves the gateway on the last view: its rules (the batch was
// refused), its peers (put back, but for those the view removes: a
// revoked gateway stays out), its digest and its index, so the view is
// asked for again; the next report says which view failed, and why. It
// still says which peers of the last view were left out (an invalid key):
// they are still out, until a view applies with all its peers.
func TestApplyFailureKeepsLastView(t *testing.T) {
	fw, _ := newTestFirewall(t, "wg0")
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	sink := &reportSink{}
	srv := httptest.NewTLSServer(sink)
	defer srv.Close()
	peers := &recordedPeers{}
	a := &Agent{cfg: cfg, log: testLogger(t), fw: fw, peers: peers, id: &Identity{Gateway: "gw1"},
		clients: []*api.Client{api.NewClient(srv.URL, &tls.Config{InsecureSkipVerify: true})}}
	a.metrics = newAgentMetrics(a)
	ctx := context.Background()
	peer := func(i int) api.Peer {
		return api.Peer{Gateway: fmt.Sprintf("gw%d", i), PublicKey: fmt.Sprintf("key%d", i)}
	}
	bad := api.Peer{Gateway: "gw5", PublicKey: "bad5"}
	v1 := &api.View{Gateway: "gw1", RaftIndex: 10, Rules: smallRules, LANs: []netip.Prefix{}, Peers: []api.Peer{peer(2), bad, peer(3)}}
	if err := a.apply(ctx, v1); err != nil {
		t.Fatalf("a view with a peer left out: %v", err)
	}
	if rep := sink.last(t); rep.RaftIndex != 10 || rep.Peers != 2 || rep.PeersLeftOut != 1 ||
		!strings.Contains(rep.PeerError, "peer 1 (gw5, bad5)") || !strings.Contains(rep.PeerError, ErrInvalidPeer.Error()) {
		t.Fatalf("the report of a view applied without one of its peers: %+v", rep)
	}
	if got := gaugeValue(t, a.metrics.peersLeftOut); got != 1 {
		t.Fatalf("govnet_agent_peers_left_out = %v, want 1", got)
	}
	digest := a.digest
	v2 := &api.View{Gateway: "gw1", RaftIndex: 11, Rules: bigRules(50), LANs: []netip.Prefix{}, Peers: []api.Peer{peer(2), peer(4)}} // gw3 revoked, gw4 new
	breakBatch := func(c *nftables.Conn, tbl *nftables.Table) {
		c.AddRule(&nftables.Rule{Table: tbl, Chain: &nftables.Chain{Name: "input", Table: tbl},
			Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "no-such-chain"}}})
	}
	fw.beforeFlush = breakBatch
	if err := a.apply(ctx, v2); err == nil {
		t.Fatal("a view whose firewall was refused applied")
	}
	if got, err := fw.Digest(); err != nil || got != digest || a.digest != digest || a.appliedIndex() != 10 || len(peers.peers) != 1 || peers.peers[0].PublicKey != "key2" {
		t.Fatalf("after the refused view: table %s (%v), agent digest %s, want %s; applied index %d; peers %+v", got, err, a.digest, digest, a.appliedIndex(), peers.peers)
	}
	if a.failedIndex != 11 || !strings.Contains(a.applyErr, "apply firewall") {
		t.Fatalf("the failure the next report carries: view %d, %q", a.failedIndex, a.applyErr)
	}
	if rep := sink.last(t); rep.FailedIndex != 11 || rep.RaftIndex != 10 || rep.PeersLeftOut != 1 || !strings.Contains(rep.PeerError, "bad5") {
		t.Fatalf("the report of the refused view: %+v", rep)
	}
	fw.beforeFlush = nil
	if err := a.apply(ctx, v2); err != nil {
		t.Fatal(err)
	}
	if a.failedIndex != 0 || a.applyErr != "" {
		t.Fatalf("a failure outlived the view that applied: view %d, %q", a.failedIndex, a.applyErr)
	}
	if rep := sink.last(t); rep.RaftIndex != 11 || rep.FailedIndex != 0 || rep.ApplyError != "" || rep.PeersLeftOut != 0 || rep.PeerError != "" {
		t.Fatalf("the report of a view applied with all its peers: %+v", rep)
	}
	if got := gaugeValue(t, a.metrics.peersLeftOut); got != 0 {
		t.Fatalf("govnet_agent_peers_left_out = %v, want 0", got)
	}
	// A first view that fails is reported too (it was never applied).
	fresh := &Agent{cfg: cfg, log: a.log, fw: fw, peers: &recordedPeers{}, id: a.id, clients: a.clients}
	fresh.metrics = newAgentMetrics(fresh)
	fw.beforeFlush = breakBatch
	if err := fresh.apply(ctx, v1); err == nil || fresh.failedIndex != 10 || fresh.applied != nil {
		t.Fatalf("a first view refused: %v, failed view %d, applied %v", err, fresh.failedIndex, fresh.applied)
	}
	fw.beforeFlush = nil
	if a.appliedIndex() != 11 || len(peers.peers) != 2 || a.digest == digest {
		t.Fatalf("the view asked again: applied index %d, peers %+v, digest %s", a.appliedIndex(), peers.peers, a.digest)
	} // A device that fails beside a peer left out: the view does not
	// apply (it used to pass as applied, with the peer left out).
	peers.kernelErr = errors.New("wireguard: configure wg0: no buffer space available")
	v3 := &api.View{Gateway: "gw1", RaftIndex: 12, Rules: v2.Rules, LANs: []netip.Prefix{}, Peers: []api.Peer{peer(2), bad}}
	if err := a.apply(ctx, v3); err == nil || !strings.Contains(err.Error(), "no buffer space") || a.appliedIndex() != 11 || a.failedIndex != 12 {
		t.Fatalf("a view the device failed: %v; applied index %d, failed %d", err, a.appliedIndex(), a.failedIndex)
	}
	peers.kernelErr = nil
	if err := a.apply(ctx, v3); err != nil || a.appliedIndex() != 12 || a.peersLeftOut != 1 {
		t.Fatalf("the view asked again: %v; applied index %d, left out %d", err, a.appliedIndex(), a.peersLeftOut)
	}
}

// gaugeValue reads g.
func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// TestHandshakeMetrics: one series per peer while the view has at most
// maxPeerSeries peers, and always the histogram of ages and the count of
// peers without a handshake; keys the view does not name are left out.
func TestHandshakeMetrics(t *testing.T) {
	now := time.Now()
	series := func(peers int) (perPeer int, h *dto.Histogram, never float64) {
		t.Helper()
		names, hs := map[string]string{}, map[string]time.Time{"stray": now}
		for i := range peers {
			key := fmt.Sprintf("key%d", i)
			names[key] = fmt.Sprintf("gw%d", i)
			switch i % 3 {
			case 0:
				hs[key] = time.Time{} // never
			case 1:
				hs[key] = now.Add(-time.Minute)
			case 2:
				hs[key] = now.Add(-2 * time.Hour)
			}
		}
		for _, m := range handshakeMetrics(names, hs, now) {
			var d dto.Metric
			if err := m.Write(&d); err != nil {
				t.Fatal(err)
			}
			switch desc := m.Desc(); {
			case desc == descHandshakeAge:
				perPeer++
			case desc == descHandshakeAges:
				h = d.GetHistogram()
			case desc == descNoHandshake:
				never = d.GetGauge().GetValue()
			}
		}
		return perPeer, h, never
	}
	for _, peers := range []int{3, maxPeerSeries, maxPeerSeries + 1, 20000} {
		perPeer, h, never := series(peers)
		wantPerPeer := peers
		if peers > maxPeerSeries {
			wantPerPeer = 0
		}
		wantNever := (peers + 2) / 3
		if perPeer != wantPerPeer || h == nil || int(h.GetSampleCount()) != peers-wantNever || int(never) != wantNever {
			t.Errorf("%d peers: %d per-peer series (want %d), histogram %v, %v without a handshake (want %d)", peers, perPeer, wantPerPeer, h, never, wantNever)
			continue
		}
		// Bucket 120 s holds the minute-old ones, 3600 s not the two-hour-old.
		for _, b := range h.GetBucket() {
			minuteOld := (peers + 1) / 3
			switch b.GetUpperBound() {
			case 120, 3600:
				if int(b.GetCumulativeCount()) != minuteOld {
					t.Errorf("%d peers: bucket %v holds %d, want %d", peers, b.GetUpperBound(), b.GetCumulativeCount(), minuteOld)
				}
			case 86400:
				if int(b.GetCumulativeCount()) != peers-wantNever {
					t.Errorf("%d peers: bucket 86400 holds %d, want %d", peers, b.GetCumulativeCount(), peers-wantNever)
				}
			}
		}
	}
}
