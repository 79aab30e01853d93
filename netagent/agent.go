package netagent

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/internal/atomicfile"
	"github.com/govnet/govnet/policy/nft"
)

// peerDevice is what apply and report need of the WireGuard device.
type peerDevice interface {
	ApplyPeers([]api.Peer) (bool, error)
	Stats() (peers int, lastHandshake time.Time, err error)
}

// Agent reconciles one gateway to the controllers' view of it.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	id      *Identity
	clients []*api.Client // one per controller node, in the configured order
	cur     atomic.Int32  // index of the node the agent currently talks to
	dev     *Device
	shield  *controllerShield // the controllers' addresses in dev's shield
	peers   peerDevice        // what apply changes peers through: dev (tests: another)
	fw      *Firewall
	metrics *agentMetrics
	keys    keyStore // the TLS key: a file, or the gateway's token
	// renewNow carries the controllers' calls to renew the certificate
	// now, from the streams' readers to the renewer.
	renewNow chan string

	mu      sync.Mutex
	applied *api.View // last view applied in full; nil before the first
	digest  string    // digest of the table the last apply left in the kernel
	want    string    // nft.ExpectedDigest of the rules the last apply installed ("": none computed)
	// failedIndex and applyErr: a newer view that failed to apply, for
	// the reports; zero once one applies.
	failedIndex uint64
	applyErr    string
	// peersLeftOut and peerErr: the peers of the applied view that the
	// WireGuard device does not hold in full, for the reports; zero
	// once a view applies with all of them. A view that fails to apply
	// leaves them as they were: the peers in place are the last view's.
	peersLeftOut int
	peerErr      string
	// lastReport is the last report the controllers took, and when;
	// zero after a failure. report compares with it.
	lastReport   api.Report
	lastReportAt time.Time
}

// Run starts the gateway's WireGuard interface and firewall and keeps them
// reconciled until ctx ends. Before any controller answers it enforces the
// last view it applied (or deny-all on the overlay on first boot); when the
// controllers are unreachable it keeps enforcing and retries with backoff.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	unlock, err := lockState(cfg)
	if err != nil {
		return err
	}
	defer unlock()
	keys, err := openKeyStore(cfg)
	if err != nil {
		return err
	}
	defer keys.Close()
	if id, err := finishEnrollment(cfg, keys); err != nil {
		return fmt.Errorf("complete an interrupted enrollment: %w", err)
	} else if id != nil {
		log.Info("completed an enrollment a crash interrupted", "gateway", id.Gateway)
	}
	if err := settleKeys(cfg, keys, log); err != nil {
		log.Warn("complete an interrupted certificate renewal", "err", err)
	}
	id, wgKey, tlsCfg, err := loadIdentity(cfg, keys)
	if err != nil {
		return err
	}
	tlsCfg = reloadingClientCert(cfg, keys, tlsCfg) // a renewed certificate is presented without a restart
	log = log.With("gateway", id.Gateway, "agency", id.Agency)
	a := &Agent{cfg: cfg, log: log, id: id, keys: keys, renewNow: make(chan string, 1)}
	for _, u := range cfg.endpoints() {
		c := api.NewClient(u, tlsCfg)
		c.OnRenewCall(a.callRenewal)
		a.clients = append(a.clients, c)
	}
	a.metrics = newAgentMetrics(a)
	if cfg.MetricsAddr != "" {
		_, stop, err := a.serveMetrics(cfg.MetricsAddr)
		if err != nil {
			return err
		}
		defer stop()
	}

	if a.fw, err = NewFirewall(cfg.Interface, WithLogger(log)); err != nil {
		return err
	}
	// The firewall goes in before the interface comes up, so the overlay
	// is never open: the saved view, or deny-all.
	saved, err := a.loadView()
	if err != nil {
		// Never trusted in part: the overlay is closed until a controller
		// sends the view again.
		log.Error("saved view refused: enforcing deny-all on the overlay until a controller sends the gateway's view", "err", err)
	}
	rules := []api.Rule{}
	var lans []netip.Prefix
	if saved != nil {
		rules, lans = saved.Rules, saved.LANs
	}
	if a.digest, err = a.applyRules(rules, lans); err != nil {
		return fmt.Errorf("initial firewall: %w", err)
	}
	a.metrics.ready.Store(true)
	addr := netip.PrefixFrom(id.OverlayIP, id.OverlayPrefix.Bits())
	if a.dev, err = OpenDevice(cfg.Interface, wgKey, cfg.ListenPort, addr, log); err != nil {
		return err
	}
	defer a.dev.Close()
	a.shield = &controllerShield{urls: cfg.endpoints()}
	addrs, _ := a.shield.refresh(ctx, log)
	a.dev.Shield(addrs)
	a.peers = a.dev
	if saved != nil {
		_, err := a.dev.ApplyPeers(saved.Peers)
		if err != nil {
			log.Error("restore saved peers", "err", err)
		}
		a.peersLeftOut, a.peerErr = leftOut(err)
		a.applied = saved
		a.metrics.viewApplied(saved, a.peersLeftOut)
		log.Info("enforcing saved view until a controller answers", "raft_index", saved.RaftIndex, "policy_version", saved.PolicyVersion)
	}

	var wg sync.WaitGroup
	wg.Add(3)
	fwChanged := make(chan struct{}, 1)
	go func() { defer wg.Done(); a.watchFirewall(ctx, fwChanged) }()
	go func() { defer wg.Done(); a.reconcileLoop(ctx, fwChanged) }()
	go func() { defer wg.Done(); a.renewLoop(ctx) }()
	a.watchLoop(ctx)
	wg.Wait()
	return nil
}

// client returns the client of the controller node in use.
func (a *Agent) client() *api.Client { return a.clients[a.cur.Load()] }

// watchLoop holds a stream to a controller node. When the stream breaks it
// moves to the next configured node at once; only after every node has
// failed in a row does it wait, with capped, jittered backoff.
func (a *Agent) watchLoop(ctx context.Context) {
	b := newBackoff(500*time.Millisecond, 30*time.Second)
	failures := 0
	for ctx.Err() == nil {
		node := a.cfg.endpoints()[a.cur.Load()]
		opened := time.Now()
		err := a.client().Watch(ctx, a.appliedIndex(), func(v *api.View) error {
			if a.staleView(v) {
				// Nothing new (a whole view asked for again, from a
				// controller that sends no LANs): no success either.
				return nil
			}
			if err := a.apply(ctx, v); err != nil {
				a.metrics.fail(stepApply)
				return err
			}
			// Only a view applied counts as success: one that fails
			// every time is retried with backoff, not in a loop over the
			// controllers.
			b.reset()
			failures = 0
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		if time.Since(opened) >= healthyStream {
			// A stream that lasted counts as a success too: a
			// reconnection with nothing new to apply sends no view, and
			// the backoff of an outage long past must not delay the
			// next one.
			b.reset()
			failures = 0
		}
		if errors.Is(err, api.ErrConnectionsReset) {
			// A renewal closed the stream: reopen it, on the same node,
			// with the new certificate.
			a.log.Info("reopening the controller stream with the renewed certificate", "controller", node)
			continue
		}
		a.metrics.connected.Set(0)
		a.log.Warn("controller stream lost; enforcing the last applied view", "controller", node, "err", err)
		a.cur.Store((a.cur.Load() + 1) % int32(len(a.clients)))
		if failures++; failures >= len(a.clients) {
			failures = 0
			if b.wait(ctx) != nil {
				return
			}
		}
	}
}

// healthyStream is how long a controller stream must have lasted for its
// end to start the failover and backoff afresh.
const healthyStream = time.Minute

func (a *Agent) appliedIndex() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.applied == nil || a.applied.LANs == nil {
		// A view that does not say which LANs are the gateway's (saved by
		// an earlier release, or sent by an earlier controller): ask for
		// the whole view, which a controller of this release sends with
		// them even at the same raft index.
		return 0
	}
	return a.applied.RaftIndex
}

// staleView is stale against the view applied.
func (a *Agent) staleView(v *api.View) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return stale(a.applied, v)
}

// stale says whether v adds nothing to applied: an older view, or the same
// one, unless it brings the gateway's LANs that applied lacks.
func stale(applied, v *api.View) bool {
	if applied == nil || v.RaftIndex > applied.RaftIndex {
		return false
	}
	return v.RaftIndex < applied.RaftIndex || applied.LANs != nil || v.LANs == nil
}

// apply makes the kernel match v: peers added before rules admit them,
// the firewall replaced atomically, then a report.
func (a *Agent) apply(ctx context.Context, v *api.View) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	err := a.applyLocked(ctx, v)
	if err != nil && v.Gateway == a.id.Gateway {
		// The controllers learn that this view failed, and why; the
		// report still describes the view enforced.
		a.failedIndex, a.applyErr = v.RaftIndex, truncate(err.Error(), maxApplyError)
		a.report(ctx, true)
	}
	return err
}

// maxApplyError bounds the reasons a report carries (apply_error,
// peer_error).
const maxApplyError = 1024

// leftOut returns the number of peers an ApplyPeers error says were not
// applied in full and why, as a report carries them; 0 and "" for none.
func leftOut(err error) (int, string) {
	var ip *InvalidPeersError
	if !errors.As(err, &ip) {
		return 0, ""
	}
	return ip.Peers, truncate(ip.Error(), maxApplyError)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

// controllerShield is what the device's shield holds for the controllers:
// the addresses of each controller URL's host, a name looked up again at
// every reconcile tick. Addresses are only added: a lookup that fails
// keeps the ones the name had (DNS down is no reason to let a LAN capture
// a controller), and a round-robin answer may hold a subset of them.
type controllerShield struct {
	urls   []string
	byHost map[string][]netip.Addr // every address a name ever had: a DNS answer may hold a subset
	warned map[string]bool
	// lookup resolves a host name (nil: the system's resolver).
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)
}

// refresh looks the controllers' names up and says whether the addresses
// changed; log gets the lookups that failed for a name with no address
// yet.
func (c *controllerShield) refresh(ctx context.Context, log *slog.Logger) (addrs []netip.Addr, changed bool) {
	if c.byHost == nil {
		c.byHost = map[string][]netip.Addr{}
	}
	for _, s := range c.urls {
		u, err := url.Parse(s)
		if err != nil || u.Hostname() == "" {
			continue
		}
		host := u.Hostname()
		var got []netip.Addr
		if a, err := netip.ParseAddr(host); err == nil {
			got = []netip.Addr{a}
		} else {
			lookup := c.lookup
			if lookup == nil {
				lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
					return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
				}
			}
			lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			got, err = lookup(lctx, host)
			cancel()
			if err != nil {
				if len(c.byHost[host]) == 0 && !c.warned[host] {
					if c.warned == nil {
						c.warned = map[string]bool{}
					}
					c.warned[host] = true
					log.Warn("controller address not resolved: peers' LANs are not kept from routing it into the tunnel", "controller", s, "err", err)
				}
				continue // keeps what it had
			}
		}
		for _, a := range got {
			if !slices.Contains(c.byHost[host], a) {
				c.byHost[host], changed = append(c.byHost[host], a), true
			}
		}
	}
	for _, a := range c.byHost {
		addrs = append(addrs, a...)
	}
	return addrs, changed
}

// named says whether any controller is named by a host name (whose
// addresses can change).
func (c *controllerShield) named() bool {
	for _, s := range c.urls {
		if u, err := url.Parse(s); err == nil {
			if _, err := netip.ParseAddr(u.Hostname()); err != nil && u.Hostname() != "" {
				return true
			}
		}
	}
	return false
}

// keptPeers returns the peers of last (nil: none, before the first view)
// that next keeps, as last has them.
func keptPeers(last, next *api.View) []api.Peer {
	if last == nil {
		return nil
	}
	keep := make(map[string]bool, len(next.Peers))
	for _, p := range next.Peers {
		keep[p.PublicKey] = true
	}
	var out []api.Peer
	for _, p := range last.Peers {
		if keep[p.PublicKey] {
			out = append(out, p)
		}
	}
	return out
}

// applyLocked is apply with a.mu held.
func (a *Agent) applyLocked(ctx context.Context, v *api.View) error {
	if v.Gateway != a.id.Gateway {
		return fmt.Errorf("view for gateway %q sent to %q", v.Gateway, a.id.Gateway)
	}
	if stale(a.applied, v) {
		a.log.Debug("ignoring stale view", "raft_index", v.RaftIndex, "applied", a.applied.RaftIndex)
		return nil
	}
	start := time.Now()
	peersChanged, err := a.peers.ApplyPeers(v.Peers)
	if err != nil && !onlyInvalidPeers(err) {
		// The device or the kernel failed (beside any peer left out): the
		// view did not take effect. As when the firewall fails below, the
		// device's desired state goes back to the last view's peers that
		// this one keeps, so that its repairs do not enforce half of a
		// view the firewall never got; the next try applies it again.
		if _, perr := a.peers.ApplyPeers(keptPeers(a.applied, v)); perr != nil && !errors.Is(perr, ErrInvalidPeer) {
			err = errors.Join(err, fmt.Errorf("restore the last view's peers: %w", perr))
		}
		return fmt.Errorf("apply peers: %w", err)
	}
	peersLeftOut, peerErr := leftOut(err)
	if peersLeftOut > 0 {
		// The valid peers are in place; the ones left out cannot send
		// anything, so the rest of the view still applies. The reports
		// say which peers were left out.
		a.log.Error("peers left out of the WireGuard device", "raft_index", v.RaftIndex, "peers_left_out", peersLeftOut, "err", err)
	}
	rulesChanged := a.applied == nil || !reflect.DeepEqual(a.applied.Rules, v.Rules) || !api.SameLANs(a.applied.LANs, v.LANs)
	if rulesChanged {
		digest, err := a.applyRules(v.Rules, v.LANs)
		if err != nil {
			// The firewall kept the last view's rules: so do the peers
			// the view keeps, or a view that narrows what a kept peer
			// may reach would take effect by halves; the peers it
			// removes (a revoked gateway) stay removed.
			if _, perr := a.peers.ApplyPeers(keptPeers(a.applied, v)); perr != nil && !errors.Is(perr, ErrInvalidPeer) {
				err = errors.Join(err, fmt.Errorf("restore the last view's peers: %w", perr))
			}
			return fmt.Errorf("apply firewall: %w", err)
		}
		a.digest = digest
	}
	a.applied = v
	a.failedIndex, a.applyErr = 0, ""
	a.peersLeftOut, a.peerErr = peersLeftOut, peerErr
	a.metrics.viewApplied(v, a.peersLeftOut)
	if err := a.saveView(v); err != nil {
		a.log.Error("save view", "err", err)
	}
	a.log.Info("applied view", "raft_index", v.RaftIndex, "policy_version", v.PolicyVersion,
		"peers", len(v.Peers), "rules", len(v.Rules), "peers_changed", peersChanged,
		"rules_changed", rulesChanged, "ruleset_digest", a.digest, "took", time.Since(start).String())
	a.report(ctx, true)
	return nil
}

// ReportRefresh is how often an agent whose state has not changed
// reports all the same (config report_refresh), so the controllers know
// it is alive; the coverage report's default window is 5 minutes.
const ReportRefresh = 2 * time.Minute

// report tells the controller what is applied; a failure is logged and
// retried on the next reconcile tick. Unless always, it reports only when
// what the controllers know is out of date: the applied view, the ruleset,
// the number of peers or those left out changed, the last report failed,
// or report_refresh has passed. a.mu must be held.
func (a *Agent) report(ctx context.Context, always bool) {
	if a.applied == nil && a.failedIndex == 0 {
		return // nothing applied, nothing failed: nothing to say yet
	}
	peers, hs, err := a.peers.Stats()
	if err != nil {
		a.log.Warn("read wireguard stats", "err", err)
	}
	var applied api.View // none yet: the first view failed
	if a.applied != nil {
		applied = *a.applied
	}
	rep := api.Report{
		PolicyVersion: applied.PolicyVersion,
		RaftIndex:     applied.RaftIndex,
		RulesetDigest: a.digest,
		Peers:         peers,
		LastHandshake: hs,
		FailedIndex:   a.failedIndex,
		ApplyError:    a.applyErr,
		PeersLeftOut:  a.peersLeftOut,
		PeerError:     a.peerErr,
	}
	last := a.lastReport
	if !always && !a.lastReportAt.IsZero() && time.Since(a.lastReportAt) < cmp.Or(a.cfg.ReportRefresh, ReportRefresh) && last.SameState(rep) {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	a.lastReport, a.lastReportAt = api.Report{}, time.Time{} // unknown until it succeeds
	if err := a.client().Report(ctx, rep); err != nil {
		a.log.Warn("report", "err", err)
		a.metrics.fail(stepReport)
		a.metrics.connected.Set(0)
		return
	}
	a.lastReport, a.lastReportAt = rep, time.Now()
	a.metrics.connected.Set(1)
}

// reconcileLoop checks the kernel for drift every period: a table edited
// by hand is put back, WireGuard peers and routes changed behind the
// agent's back are repaired, and the report is refreshed. The table is
// also checked as soon as fwChanged says another process changed it.
func (a *Agent) reconcileLoop(ctx context.Context, fwChanged <-chan struct{}) {
	t := time.NewTicker(a.cfg.Reconcile)
	defer t.Stop()
	pace := repairPace{max: a.cfg.Reconcile}
	var paced <-chan time.Time // a paced repair due
	for {
		select {
		case <-ctx.Done():
			return
		case <-fwChanged:
			if wait := pace.wait(time.Now()); wait > 0 {
				// Repairs come one after another: another process
				// changes the table back each time. Slow down.
				paced = time.After(wait)
				continue
			}
			a.watchRepair(&pace)
			continue
		case <-paced:
			paced = nil
			a.watchRepair(&pace)
			continue
		case <-t.C:
		}
		if a.shield != nil && a.shield.named() {
			// Outside a.mu: a lookup may take seconds.
			if addrs, changed := a.shield.refresh(ctx, a.log); changed {
				a.log.Info("controller addresses changed: shielding them from peers' LANs", "addresses", addrs)
				a.dev.Shield(addrs)
				// Rerouted now, so that the drift check below does not
				// count the agent's own change.
				if _, err := a.dev.Repair(); err != nil {
					a.log.Error("wireguard repair after the controllers' addresses changed", "err", err)
				}
			}
		}
		a.mu.Lock()
		if _, err := a.reconcile(false); err != nil {
			a.log.Error("reconcile", "err", err)
			a.metrics.fail(stepFirewall)
		}
		if changed, err := a.dev.Repair(); err != nil {
			a.log.Error("wireguard repair", "err", err)
			a.metrics.fail(stepWireGuard)
		} else if changed {
			a.log.Warn("wireguard device drifted from the applied view; repaired")
			a.metrics.drift.WithLabelValues("wireguard").Inc()
		}
		a.report(ctx, false)
		a.mu.Unlock()
	}
}

// watchFirewall tells kick whenever another process changes the table
// (Firewall.Watch). When it cannot listen it says so and tries again; the
// reconcile tick covers the table meanwhile.
func (a *Agent) watchFirewall(ctx context.Context, kick chan<- struct{}) {
	for ctx.Err() == nil {
		err := a.fw.Watch(ctx, func() {
			select {
			case kick <- struct{}{}:
			default: // a check is due already
			}
		})
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("cannot watch the firewall table for changes by other processes: the reconcile tick still checks it", "err", err, "reconcile", a.cfg.Reconcile.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(30 * time.Second):
		}
	}
}

// watchRepair is the check that a notification of another process's
// change to the table brings, paced by pace.
func (a *Agent) watchRepair(pace *repairPace) {
	a.mu.Lock()
	defer a.mu.Unlock()
	repaired, err := a.reconcile(true)
	if err != nil {
		a.log.Error("reconcile", "err", err)
		a.metrics.fail(stepFirewall)
	}
	if repaired || err != nil {
		pace.repaired(time.Now())
	}
}

// repairPaceMin is the least delay between two repairs that
// notifications bring one right after the other.
const repairPaceMin = 250 * time.Millisecond

// repairPace spaces the repairs that notifications bring. The first is
// made at once (nftables.service flushed the ruleset); one that follows
// the last closely (another process changes the table back each time
// the agent restores it: a second agent, a configuration manager) waits
// twice as long as the one before, up to max, the reconcile period; a
// quiet spell starts afresh. Without it the agent and the other process
// would take turns as fast as netlink carries their commits.
type repairPace struct {
	last time.Time     // the last repair
	gap  time.Duration // the delay after it
	max  time.Duration
}

// wait is how long a repair due at now waits.
func (p *repairPace) wait(now time.Time) time.Duration {
	return max(0, p.last.Add(p.gap).Sub(now))
}

// repaired records a repair made at now.
func (p *repairPace) repaired(now time.Time) {
	if !p.last.IsZero() && now.Sub(p.last) < 2*p.gap+repairPaceMin {
		p.gap = min(max(2*p.gap, repairPaceMin), p.max)
	} else {
		p.gap = 0
	}
	p.last = now
}

// reconcile restores the firewall if the kernel no longer holds what was
// applied, and says whether it did. Strict (another process changed the
// table) also restores a table whose digest is not the one its rules
// give: an apply's read-back names what the kernel held just after it,
// which takes in a change another process committed meanwhile.
// a.mu must be held.
func (a *Agent) reconcile(strict bool) (bool, error) {
	got, err := a.fw.Digest()
	if err == nil && got == a.digest && (!strict || a.want == "" || got == a.want) {
		return false, nil
	}
	a.log.Warn("firewall drifted from the applied view; restoring", "want", a.digest, "got", got, "read_err", err)
	a.metrics.drift.WithLabelValues("firewall").Inc()
	rules := []api.Rule{}
	var lans []netip.Prefix
	if a.applied != nil {
		rules, lans = a.applied.Rules, a.applied.LANs
	}
	digest, err := a.applyRules(rules, lans)
	if err != nil {
		return true, err // the kernel kept what it had: checked again next tick
	}
	a.digest = digest
	return true, nil
}

// applyRules installs the table. Rules the firewall cannot express are left
// out (which only blocks more: fail closed) and logged; the rest applies.
// The digest the rules give (nft.ExpectedDigest, the controllers'
// expectation) is kept in a.want once they are installed.
func (a *Agent) applyRules(rules []api.Rule, lans []netip.Prefix) (string, error) {
	start := time.Now()
	digest, err := a.fw.Apply(rules, lans)
	want, werr := nft.ExpectedDigest(rules, lans) // a digest beside ErrUnsupportedRule too
	if werr != nil && !errors.Is(werr, nft.ErrUnsupportedRule) {
		want = ""
	}
	a.metrics.firewallApplied(time.Since(start), want, digest, err)
	if err == nil || errors.Is(err, ErrUnsupportedRule) {
		a.want = want
	}
	if errors.Is(err, ErrUnsupportedRule) {
		a.log.Error("rules left out of the firewall", "err", err)
		return digest, nil
	}
	return digest, err
}

func (a *Agent) saveView(v *api.View) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return atomicfile.Write(a.cfg.path(fileView), data, 0o600)
}

func (a *Agent) loadView() (*api.View, error) {
	data, err := os.ReadFile(a.cfg.path(fileView))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	v := new(api.View)
	if err := json.Unmarshal(data, v); err != nil {
		return nil, fmt.Errorf("%s: %w", a.cfg.path(fileView), err)
	}
	if v.Gateway != a.id.Gateway {
		return nil, fmt.Errorf("%s is for gateway %q", a.cfg.path(fileView), v.Gateway)
	}
	return v, nil
}
