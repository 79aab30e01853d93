package controller

import (
	"cmp"
	"net/http"
	"strings"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics. Each node has its own registry (no global state), served at
// /metrics on the API to operators and auditors (an unauthenticated
// caller reaches only CRLs, OCSP and health). Everything but the apply latency is read at scrape
// time: from raft, from the view hub, and from the replicated state, so
// the certificate and gateway series are the same on every node of a
// healthy cluster (aggregate them with max, not sum).

// certExpiryBuckets are the upper bounds, in days, of the days-to-expiry
// histogram. Gateway certificates live a day and are renewed with a
// third of it left, so the first buckets are hours: a count under 0.25
// (6 h) means renewals are failing.
var certExpiryBuckets = []float64{0.25, 0.5, 1, 2, 7, 14, 30, 90, 365}

type nodeMetrics struct {
	reg          *prometheus.Registry
	applyLatency prometheus.Histogram
}

func newNodeMetrics(n *Node) *nodeMetrics {
	m := &nodeMetrics{
		reg: prometheus.NewRegistry(),
		applyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "govnet_raft_apply_seconds",
			Help: "Time from submitting a command on this node (forwarded to the leader if need be) to this node's state applying it.",
			// 0.5 ms to 8 s.
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 15),
		}),
	}
	m.reg.MustRegister(
		m.applyLatency,
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "govnet_hsm_failures_total",
			Help: "Operations on this node's HSM token that ended in a PKCS#11 error (after the retry on a fresh session) since it started: the token, its device or its PIN needs an operator.",
		}, func() float64 {
			if n.token == nil {
				return 0
			}
			return float64(n.token.Failures())
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "govnet_raft_leader_changes_total",
			Help: "Changes of the cluster's leader this node saw since it started (a new leader, or none while an election runs); more than a few an hour means elections: a node or the network between them is struggling.",
		}, func() float64 { return float64(n.leaderChanges.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "govnet_connections_refused_total",
			Help: "Connections closed on accept because their address already held max_conns_per_ip open (API, CRL/OCSP and raft listeners).",
		}, func() float64 { return float64(n.connsRefused.Load()) }),
		&nodeCollector{n: n},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// observeApply records one submit-to-apply latency; m may be nil.
func (m *nodeMetrics) observeApply(d time.Duration) {
	if m != nil {
		m.applyLatency.Observe(d.Seconds())
	}
}

func (m *nodeMetrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

var (
	descRaftState = prometheus.NewDesc("govnet_raft_state",
		"1 for this node's current raft state, 0 for the others.", []string{"state"}, nil)
	descRaftApplied = prometheus.NewDesc("govnet_raft_applied_index",
		"Last raft index applied to this node's state.", nil, nil)
	descRaftCommit = prometheus.NewDesc("govnet_raft_commit_index",
		"Last raft index this node knows to be committed.", nil, nil)
	descRaftLast = prometheus.NewDesc("govnet_raft_last_index",
		"Last raft index in this node's log.", nil, nil)
	descSnapshots = prometheus.NewDesc("govnet_raft_snapshots_total",
		"Raft snapshots of the state this node wrote since it started.", nil, nil)
	descSnapshotBytes = prometheus.NewDesc("govnet_raft_snapshot_bytes",
		"Size of the last raft snapshot this node wrote or restored.", nil, nil)
	descSinceSnapshot = prometheus.NewDesc("govnet_raft_applied_bytes_since_snapshot",
		"Bytes of the commands applied since that snapshot (those replayed at a start included): the node takes the next one when they reach its size and number at least 8,192 entries (in a burst of writes, once 10 s pass with less than 1/32 of its size applied, or at twice its size), or at 131,072 entries.", nil, nil)
	descReady = prometheus.NewDesc("govnet_ready",
		"1 when this node is ready to serve (as /readyz), else 0.", nil, nil)
	descStarted = prometheus.NewDesc("govnet_start_settled",
		"1 once this node has caught up, compiled every view and given back the memory its start took, else 0.", nil, nil)
	descStreams = prometheus.NewDesc("govnet_gateway_streams",
		"Gateway watch streams this node serves.", nil, nil)
	descViewIndex = prometheus.NewDesc("govnet_view_raft_index",
		"Raft index at which this node last compiled the gateways' views.", nil, nil)
	descViewLag = prometheus.NewDesc("govnet_view_lag_raft_indexes",
		"This node's applied raft index minus the index its views were compiled at.", nil, nil)
	descViewFailing = prometheus.NewDesc("govnet_view_compile_failing",
		"1 when the last compile of the views failed (streams keep the views before it).", nil, nil)
	descIssued = prometheus.NewDesc("govnet_certificates_issued_total",
		"Certificates the cluster's CA issued, from the replicated inventory, by profile.", []string{"profile"}, nil)
	descRevoked = prometheus.NewDesc("govnet_certificates_revoked_total",
		"Certificates revoked, from the replicated inventory, by RFC 5280 reason.", []string{"reason"}, nil)
	descCerts = prometheus.NewDesc("govnet_certificates",
		"Certificates in the inventory by status: valid, expired, revoked, archived (expired a while ago, on disk).", []string{"status"}, nil)
	descExpiry = prometheus.NewDesc("govnet_certificate_days_to_expiry",
		"Days until valid, unexpired certificates expire, by profile; computed at scrape time.", []string{"profile"}, nil)
	descPolicy = prometheus.NewDesc("govnet_policy_version",
		"Version of the published policy (0: none).", nil, nil)
	descGateways = prometheus.NewDesc("govnet_gateways",
		"Registered gateways by status.", []string{"status"}, nil)
	descRulesets = prometheus.NewDesc("govnet_gateway_rulesets",
		"Enrolled gateways by ruleset attestation: ok, mismatch, failed (the gateway could not apply its current view), pending (no report for the current view yet), none (no view).", []string{"state"}, nil)
	descCRLNextUpdate = prometheus.NewDesc("govnet_crl_next_update_timestamp_seconds",
		"Unix time of the nextUpdate of each issuer's CRL in force (one issuer per controller node), from the replicated state: relying parties refuse a CRL past it.", []string{"issuer"}, nil)
	descOwnCertExpiry = prometheus.NewDesc("govnet_node_certificate_expiry_timestamp_seconds",
		"Unix time at which this node's own certificates expire: its TLS certificate (node, renewed by the node) and its intermediate (signed by the root's custodians).", []string{"certificate"}, nil)
	descPeersLeftOut = prometheus.NewDesc("govnet_gateways_peers_left_out",
		"Enrolled gateways whose last report says their WireGuard device does not hold some peers of the view they enforce in full (report.peers_left_out > 0; why: report.peer_error).", nil, nil)
)

// nodeCollector reads a node's series at scrape time.
type nodeCollector struct{ n *Node }

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRaftState, descRaftApplied, descRaftCommit, descRaftLast,
		descSnapshots, descSnapshotBytes, descSinceSnapshot, descReady,
		descStarted, descStreams, descViewIndex, descViewLag, descViewFailing, descIssued, descRevoked, descCerts, descExpiry,
		descPolicy, descGateways, descRulesets, descPeersLeftOut, descCRLNextUpdate, descOwnCertExpiry} {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if n.raft != nil {
		cur := n.raft.State()
		for _, s := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
			gauge(descRaftState, b2f(s == cur), strings.ToLower(s.String()))
		}
		gauge(descRaftApplied, float64(n.raft.AppliedIndex()))
		gauge(descRaftCommit, float64(n.raft.CommitIndex()))
		gauge(descRaftLast, float64(n.raft.LastIndex()))
		gauge(descReady, b2f(n.Ready() == nil))
		gauge(descStarted, b2f(n.startSettled.Load()))
	}
	if n.fsm == nil || n.hub == nil {
		return
	}
	written, size, since := n.fsm.snapshotStats()
	ch <- prometheus.MustNewConstMetric(descSnapshots, prometheus.CounterValue, float64(written))
	gauge(descSnapshotBytes, float64(size))
	gauge(descSinceSnapshot, float64(since))
	st := n.State()
	gauge(descStreams, float64(n.hub.watchers()))
	computed, failing := n.hub.compiledAt()
	gauge(descViewIndex, float64(computed))
	gauge(descViewLag, float64(st.Index()-min(computed, st.Index())))
	gauge(descViewFailing, b2f(failing))

	for issuer, next := range st.crlNextUpdates() {
		gauge(descCRLNextUpdate, float64(next.Unix()), issuer)
	}
	if c := n.cert.Load(); c != nil && c.Leaf != nil {
		gauge(descOwnCertExpiry, float64(c.Leaf.NotAfter.Unix()), ca.KindNode)
	}
	if n.ca != nil {
		if inter := n.ca.Intermediate(); inter != nil {
			gauge(descOwnCertExpiry, float64(inter.NotAfter.Unix()), kindIntermediate)
		}
	}

	cs := st.certStats(n.now())
	for profile, v := range cs.issued {
		ch <- prometheus.MustNewConstMetric(descIssued, prometheus.CounterValue, float64(v), profile)
	}
	for reason, v := range cs.revoked {
		ch <- prometheus.MustNewConstMetric(descRevoked, prometheus.CounterValue, float64(v), reason)
	}
	gauge(descCerts, float64(cs.valid), api.CertValid)
	gauge(descCerts, float64(cs.expired), "expired")
	gauge(descCerts, float64(cs.revokedN), api.CertRevoked)
	gauge(descCerts, float64(cs.archived), "archived")
	for profile, h := range cs.expiry {
		ch <- prometheus.MustNewConstHistogram(descExpiry, h.count, h.sum, h.buckets, profile)
	}

	var version uint64
	if p, ok := st.Policy(); ok {
		version = p.Version
	}
	gauge(descPolicy, float64(version))

	statuses := map[string]int{api.StatusPending: 0, api.StatusEnrolled: 0, api.StatusRevoked: 0, api.StatusDecommissioned: 0}
	rulesets := map[string]int{api.RulesetOK: 0, api.RulesetMismatch: 0, api.RulesetPending: 0, api.RulesetFailed: 0, "none": 0}
	peersLeftOut := 0
	for _, g := range st.gatewayHealth() {
		statuses[g.Status]++
		if g.Status != api.StatusEnrolled {
			continue
		}
		if g.Report != nil && g.Report.PeersLeftOut > 0 {
			peersLeftOut++
		}
		n.attest(&g)
		if g.Ruleset == "" {
			g.Ruleset = "none"
		}
		rulesets[g.Ruleset]++
	}
	for s, v := range statuses {
		gauge(descGateways, float64(v), s)
	}
	for s, v := range rulesets {
		gauge(descRulesets, float64(v), s)
	}
	gauge(descPeersLeftOut, float64(peersLeftOut))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// compiledAt returns the raft index the views were last compiled at and
// whether the last compile failed.
func (h *viewHub) compiledAt() (index uint64, failing bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.computed, h.compErr != nil
}

type certStats struct {
	issued, revoked                    map[string]uint64 // by profile, by reason
	valid, expired, revokedN, archived int
	expiry                             map[string]*constHistogram // by profile
}

type constHistogram struct {
	count   uint64
	sum     float64
	buckets map[float64]uint64 // cumulative, as MustNewConstHistogram wants
}

// certStats counts the inventory under the read lock, without copying it.
func (s *State) certStats(now time.Time) certStats {
	out := certStats{issued: map[string]uint64{}, revoked: map[string]uint64{}, expiry: map[string]*constHistogram{}}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, c := range s.certs {
		out.issued[c.Kind]++
		switch {
		case c.Status == api.CertRevoked:
			out.revokedN++
			out.revoked[reasonLabel(c)]++
		case !now.Before(c.NotAfter):
			out.expired++
		default:
			out.valid++
			h := out.expiry[c.Kind]
			if h == nil {
				h = &constHistogram{buckets: map[float64]uint64{}}
				for _, b := range certExpiryBuckets {
					h.buckets[b] = 0
				}
				out.expiry[c.Kind] = h
			}
			days := c.NotAfter.Sub(now).Hours() / 24
			h.count++
			h.sum += days
			for _, b := range certExpiryBuckets {
				if days <= b {
					h.buckets[b]++
				}
			}
		}
	}
	// The archived still count as issued and revoked.
	out.archived = s.archive.len()
	for k, v := range s.archive.issued {
		out.issued[k] += v
	}
	for k, v := range s.archive.revoked {
		out.revoked[k] += v
	}
	return out
}

// reasonLabel is a revoked certificate's reason as the metrics name it.
func reasonLabel(c *api.Certificate) string { return cmp.Or(c.ReasonName, "unspecified") }

// crlNextUpdates returns the nextUpdate of every issuer's CRL in force.
func (s *State) crlNextUpdates() map[string]time.Time {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]time.Time, len(s.issuers))
	for id, r := range s.issuers {
		if r.CRL != nil {
			out[id] = r.CRL.NextUpdate
		}
	}
	return out
}

// gatewayHealth returns, per gateway, the fields attestation needs: id,
// status and report.
func (s *State) gatewayHealth() []api.Gateway {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]api.Gateway, 0, len(s.gateways))
	for _, g := range s.gateways {
		out = append(out, api.Gateway{ID: g.ID, Status: g.Status, Report: g.Report})
	}
	return out
}
