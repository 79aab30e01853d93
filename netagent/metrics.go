package netagent

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics and health. The agent keeps its own registry (no global state)
// and, when metrics_addr is set, serves /metrics, /healthz and /readyz on
// it without TLS: bind it to an address only the monitoring system
// reaches. Values that the apply and reconcile paths know are recorded as
// they happen; WireGuard handshakes and the certificate are read at
// scrape time, without the agent's lock, so a scrape never waits for an
// apply or a report.

// Steps whose failures count in govnet_agent_reconcile_errors_total.
const (
	stepApply     = "apply"     // a view from the controller could not be applied
	stepFirewall  = "firewall"  // restoring a drifted nftables table failed
	stepWireGuard = "wireguard" // repairing the WireGuard device failed
	stepReport    = "report"    // the controller did not take the report
)

type agentMetrics struct {
	reg             *prometheus.Registry
	applySeconds    prometheus.Histogram
	reconcileErrors *prometheus.CounterVec
	drift           *prometheus.CounterVec
	policyVersion   prometheus.Gauge
	raftIndex       prometheus.Gauge
	rulesetOK       prometheus.Gauge
	connected       prometheus.Gauge
	peersLeftOut    prometheus.Gauge

	// ready: the first firewall (the saved view or deny-all) is installed.
	ready atomic.Bool
	// peers names the applied view's peers by public key, for the
	// handshake series.
	peers atomic.Pointer[map[string]string]
}

func newAgentMetrics(a *Agent) *agentMetrics {
	m := &agentMetrics{
		reg: prometheus.NewRegistry(),
		applySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "govnet_agent_nftables_apply_seconds",
			Help: "Time to build, install (one netlink batch) and read back the nftables table.",
			// 1 ms to 16 s: 10k-element sets take 20-110 ms, 100k up to a second.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		reconcileErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "govnet_agent_reconcile_errors_total",
			Help: "Failures by step: apply (a view), firewall (restoring drift), wireguard (repair), report.",
		}, []string{"step"}),
		drift: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "govnet_agent_drift_repairs_total",
			Help: "Times the kernel was found to differ from the applied view and was put back, by what drifted.",
		}, []string{"what"}),
		policyVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "govnet_agent_policy_version",
			Help: "Policy version of the view applied last (0: none yet).",
		}),
		raftIndex: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "govnet_agent_view_raft_index",
			Help: "Raft index of the view applied last.",
		}),
		rulesetOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "govnet_agent_ruleset_ok",
			Help: "1 when the digest of the table in the kernel equals the one the controller computes from the applied view's rules, 0 on a mismatch.",
		}),
		peersLeftOut: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "govnet_agent_peers_left_out",
			Help: "Peers of the applied view the WireGuard device does not hold in full (a bad key or endpoint, an allowed IP another peer claims); the agent's log says why.",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "govnet_agent_controller_connected",
			Help: "1 while a controller stream is up and the last report was accepted, else 0.",
		}),
	}
	for _, s := range []string{stepApply, stepFirewall, stepWireGuard, stepReport} {
		m.reconcileErrors.WithLabelValues(s)
	}
	for _, w := range []string{"firewall", "wireguard"} {
		m.drift.WithLabelValues(w)
	}
	m.reg.MustRegister(m.applySeconds, m.reconcileErrors, m.drift, m.policyVersion, m.raftIndex, m.rulesetOK, m.connected, m.peersLeftOut,
		&agentCollector{a: a},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// fail counts a failure of step.
func (m *agentMetrics) fail(step string) { m.reconcileErrors.WithLabelValues(step).Inc() }

// firewallApplied records one install of the table: how long it took and
// whether what the kernel holds is want, what the controller expects of
// the rules ("": not known).
func (m *agentMetrics) firewallApplied(took time.Duration, want, digest string, err error) {
	m.applySeconds.Observe(took.Seconds())
	if err != nil && !errors.Is(err, ErrUnsupportedRule) || want == "" {
		return // the previous table is still in place, or nothing to compare
	}
	m.rulesetOK.Set(b2f(digest == want))
}

// viewApplied records the view now enforced, leftOut of its peers not
// held in full.
func (m *agentMetrics) viewApplied(v *api.View, leftOut int) {
	m.policyVersion.Set(float64(v.PolicyVersion))
	m.peersLeftOut.Set(float64(leftOut))
	m.raftIndex.Set(float64(v.RaftIndex))
	names := make(map[string]string, len(v.Peers))
	for _, p := range v.Peers {
		names[p.PublicKey] = p.Gateway
	}
	m.peers.Store(&names)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

var (
	descHandshakeAge = prometheus.NewDesc("govnet_agent_wireguard_handshake_age_seconds",
		"Seconds since the latest WireGuard handshake with each peer of the applied view (+Inf: none yet); only while the view has at most 256 peers.", []string{"peer"}, nil)
	descHandshakeAges = prometheus.NewDesc("govnet_agent_wireguard_peer_handshake_age_seconds",
		"Histogram of the seconds since the latest WireGuard handshake with the peers of the applied view that have had one.", nil, nil)
	descNoHandshake = prometheus.NewDesc("govnet_agent_wireguard_peers_without_handshake",
		"Peers of the applied view with no WireGuard handshake yet.", nil, nil)
	descCertExpiry = prometheus.NewDesc("govnet_agent_certificate_expiry_seconds",
		"Seconds until the gateway's certificate expires (negative once it has).", nil, nil)
	descReady = prometheus.NewDesc("govnet_agent_ready",
		"1 once a firewall is installed (the saved view or the first-boot deny-all), as /readyz.", nil, nil)
)

// agentCollector reads at scrape time what the kernel and the state
// directory hold.
type agentCollector struct{ a *Agent }

func (c *agentCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descHandshakeAge
	ch <- descHandshakeAges
	ch <- descNoHandshake
	ch <- descCertExpiry
	ch <- descReady
}

func (c *agentCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	now := time.Now()
	ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, b2f(a.metrics.ready.Load()))
	if cert, err := (&renewer{cfg: a.cfg}).current(); err == nil {
		ch <- prometheus.MustNewConstMetric(descCertExpiry, prometheus.GaugeValue, cert.NotAfter.Sub(now).Seconds())
	}
	names := a.metrics.peers.Load() // stored after a.dev was set
	if names == nil || a.dev == nil {
		return
	}
	hs, err := a.dev.handshakes()
	if err != nil {
		return
	}
	for _, m := range handshakeMetrics(*names, hs, now) {
		ch <- m
	}
}

// maxPeerSeries bounds the per-peer handshake series: a gateway most of
// the network peers with (an NDXP gateway, 20,000 peers) would give every
// scrape as many; past it the histogram alone says how the peers fare.
const maxPeerSeries = 256

// handshakeBuckets are the histogram's bounds, in seconds: WireGuard
// handshakes every 2 minutes while traffic flows.
var handshakeBuckets = []float64{120, 300, 900, 3600, 6 * 3600, 86400}

// handshakeMetrics are the handshake series of the peers of the applied
// view (names: public key -> gateway) that the device holds (hs): a key
// the view does not name (a stray the next repair removes) is left out.
func handshakeMetrics(names map[string]string, hs map[string]time.Time, now time.Time) []prometheus.Metric {
	var out []prometheus.Metric
	buckets := make(map[float64]uint64, len(handshakeBuckets))
	var count, never uint64
	var sum float64
	for key, gw := range names {
		t, ok := hs[key]
		if !ok {
			continue
		}
		age := math.Inf(1)
		if t.IsZero() {
			never++
		} else {
			age = now.Sub(t).Seconds()
			count++
			sum += age
			for _, b := range handshakeBuckets {
				if age <= b {
					buckets[b]++
				}
			}
		}
		if len(names) <= maxPeerSeries {
			out = append(out, prometheus.MustNewConstMetric(descHandshakeAge, prometheus.GaugeValue, age, gw))
		}
	}
	return append(out,
		prometheus.MustNewConstHistogram(descHandshakeAges, count, sum, buckets),
		prometheus.MustNewConstMetric(descNoHandshake, prometheus.GaugeValue, float64(never)))
}

// handshakes returns the latest handshake time of every peer the device
// holds, by public key (zero: never).
func (d *Device) handshakes() (map[string]time.Time, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("wireguard: %s is closed", d.name)
	}
	dev, err := d.wg.Device(d.name)
	if err != nil {
		return nil, fmt.Errorf("wireguard: read %s: %w", d.name, err)
	}
	out := make(map[string]time.Time, len(dev.Peers))
	for _, p := range dev.Peers {
		out[p.PublicKey.String()] = p.LastHandshakeTime
	}
	return out, nil
}

// serveMetrics serves /metrics, /healthz and /readyz on addr until the
// returned function is called; bound is the address it listens on.
func (a *Agent) serveMetrics(addr string) (bound net.Addr, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("metrics_addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{Registry: a.metrics.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !a.metrics.ready.Load() {
			http.Error(w, "no firewall installed yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("metrics listener", "err", err)
		}
	}()
	a.log.Info("metrics listening", "addr", ln.Addr().String())
	return ln.Addr(), func() { srv.Close(); <-done }, nil
}
