// Package loadtest is the controller fan-out load harness (issue 4): a
// real 3-node govnetd cluster on loopback and N simulated gateways, run by
// worker processes with the real client (api.Client Watch and Report, as
// govnet-agent calls them) and real certificates that the cluster's CA
// issued through the enrollment API. It measures the time from a policy
// commit to every gateway's acknowledged report, controller CPU per
// one-gateway change, controller memory per connected gateway, and the
// time from a revocation to the last peer's view without the gateway.
package loadtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/govnet/govnet/api"
)

// Options configure one run.
type Options struct {
	Gateways int
	// CacheDir keeps the cluster (data directories, HSM tokens) and the
	// enrolled identities between runs; empty: a temporary directory,
	// removed at the end.
	CacheDir string
	Govnetd  string // the govnetd binary
	Workers  int    // processes running the simulated gateways (default: 1 per 2,500)
	Rounds   int    // policy publications measured (default 3)
	Changes  int    // one-gateway changes measured, then revoked (default 10)
	// ConnectRate is how many gateways per second first connect (all
	// workers together), as a fleet comes up; 0: all at once.
	ConnectRate float64
	// ReportEvery is how often each simulated gateway refreshes its
	// report, as the agent's reconcile tick does (0: never).
	ReportEvery time.Duration
	// APIPort and RaftPort on every node's address (0: free ports; a
	// cached cluster keeps the ports it was set up with).
	APIPort, RaftPort int
	Log               io.Writer // progress and the nodes' logs; nil: discarded
}

// Result holds the figures of one run. Times are in seconds.
type Result struct {
	Gateways       int
	EnrollSeconds  float64 // registration and enrollment of the fleet (0: reused from the cache)
	ConnectSeconds float64 // from starting the workers to every gateway's first acknowledged view

	FanoutP50, FanoutP99, FanoutMax float64 // policy commit -> each gateway's acknowledged report
	// RoundsBusyCPU is the machine's CPU time in use during the rounds
	// (every process, the kernel's too) and RoundsStolenCPU the time the
	// hypervisor gave other guests meanwhile: the rounds are CPU-bound,
	// so stolen time lengthens them (docs/performance.md).
	RoundsBusyCPU, RoundsStolenCPU float64

	// CPUPerChange is the controllers' CPU seconds (all three nodes,
	// user+system) per one-gateway change (a gateway joins: add, token,
	// enroll), idle CPU subtracted; IdleCPU is the mean of the idle rates (CPU s/s)
	// with the periodic reports paused.
	CPUPerChange, IdleCPU float64

	BytesPerGateway float64 // nodes' anonymous RSS with the fleet connected minus before, per gateway
	RSSBefore       int64   // bytes, all three nodes
	RSSAfter        int64

	// FinalVersion is the last policy version published; Acked counts the
	// gateways that acknowledged it (from their events) and Reported those
	// whose last report the controllers hold names it.
	FinalVersion    uint64
	Acked, Reported int

	RevokeP50, RevokeP99 float64 // revoke call -> last peer acknowledged a view without it

	// ReissueSeconds: from an officer's renewal call (govnetctl cert
	// renew-all) to the last gateway's renewed certificate; ReissueP50
	// the median gateway's.
	ReissueSeconds, ReissueP50 float64
	// ReissueNodeCPU and ReissueGatewayCPU: CPU seconds (user+system)
	// per renewed gateway over the re-issue, of the three nodes together
	// and of the worker processes simulating the gateways. On the shared
	// cores their sum bounds the re-issue's time.
	ReissueNodeCPU, ReissueGatewayCPU float64

	Load string // /proc/loadavg at the end
}

func (o *Options) defaults() {
	if o.Workers <= 0 {
		o.Workers = max(1, (o.Gateways+2499)/2500)
	}
	if o.Rounds <= 0 {
		o.Rounds = 3
	}
	if o.Changes <= 0 {
		o.Changes = 10
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
}

// Run sets up (or reuses) the cluster and fleet, connects the fleet and
// measures.
func Run(ctx context.Context, o Options) (*Result, error) {
	o.defaults()
	raiseFDLimit()
	logf := func(format string, args ...any) {
		fmt.Fprintf(o.Log, "%s loadtest[%d]: %s\n", time.Now().Format("15:04:05.000"), o.Gateways, fmt.Sprintf(format, args...))
	}
	fleet, err := NewFleet(o.Gateways)
	if err != nil {
		return nil, err
	}
	dir := o.CacheDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "govnet-load-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	res := &Result{Gateways: o.Gateways}
	c, reused, err := prepare(ctx, dir, o, fleet, res, logf)
	if err != nil {
		return nil, err
	}
	defer c.stop()

	// Memory before any gateway connects: once each node has caught up,
	// compiled every view and given back what its start took
	// (govnet_start_settled).
	if err := c.waitSettled(ctx, 2*time.Minute); err != nil {
		return nil, err
	}
	res.RSSBefore = settledRSS(c.pids())
	logf("cluster up (reused: %v); nodes' anonymous RSS %d MiB (VmRSS %d MiB)", reused, res.RSSBefore>>20, procStatus(c.pids(), "VmRSS:")>>20)

	tr := newTracker()
	ws, err := startWorkers(ctx, c, o, filepath.Join(dir, "identities.jsonl"), tr, logf)
	if err != nil {
		return nil, err
	}
	defer ws.stop()
	pol, err := c.Operator.Policy(ctx)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	connected := func(a ack) bool { return a.ver >= pol.Version }
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				logf("connecting: %d of %d gateways acknowledged their first view", tr.count(connected), o.Gateways)
			}
		}
	}()
	// Twice the ramp, plus two minutes.
	limit := 2 * time.Minute
	if o.ConnectRate > 0 {
		limit += time.Duration(2 * float64(o.Gateways) / o.ConnectRate * float64(time.Second))
	}
	err = tr.waitAll(ctx, ids(fleet), limit, "every gateway's first acknowledged view", connected)
	close(done)
	if err != nil {
		return nil, err
	}
	res.ConnectSeconds = time.Since(start).Seconds()
	res.RSSAfter = settledRSS(c.pids())
	res.BytesPerGateway = float64(res.RSSAfter-res.RSSBefore) / float64(o.Gateways)
	logf("%d gateways connected in %.1fs; nodes' anonymous RSS %d MiB (VmRSS %d MiB)", o.Gateways, res.ConnectSeconds, res.RSSAfter>>20, procStatus(c.pids(), "VmRSS:")>>20)

	// Fan-out: publish, then wait for every gateway's acknowledgement.
	var lat []float64
	pids := c.pids()
	for r := range o.Rounds {
		// The snapshot count first: reading it is a /metrics scrape,
		// which at 20,000 gateways costs each node up to a quarter of a CPU
		// second, and is not the round's.
		snaps := c.snapshots(ctx)
		nodesCPU, host := cpuSeconds(pids), readHostCPU()
		p, err := c.Officer.PublishPolicy(ctx, "load.yaml", fleet.Policy(int(pol.Version)+1+r))
		if err != nil {
			return nil, fmt.Errorf("publish: %w", err)
		}
		committed := time.Now()
		if err := tr.waitAll(ctx, ids(fleet), 2*time.Minute, fmt.Sprintf("policy version %d everywhere", p.Version), func(a ack) bool { return a.ver >= p.Version }); err != nil {
			return nil, err
		}
		var last float64
		var recv []float64
		for _, id := range ids(fleet) {
			acked, arrived := tr.ackedAt(id, func(a ack) bool { return a.ver >= p.Version })
			d := acked.Sub(committed).Seconds()
			lat = append(lat, d)
			recv = append(recv, arrived.Sub(committed).Seconds())
			last = max(last, d)
		}
		res.FinalVersion = p.Version
		hostNow := readHostCPU()
		res.RoundsBusyCPU += hostNow.busy - host.busy
		res.RoundsStolenCPU += hostNow.steal - host.steal
		logf("round %d: policy version %d acknowledged by all %d gateways %.3fs after its commit (views arrived: p50 %.3fs, p99 %.3fs); CPU s: nodes %.2f, machine %.2f busy, %.2f stolen; raft snapshots %s",
			r+1, p.Version, o.Gateways, last, quantile(recv, 0.5), quantile(recv, 0.99),
			cpuSeconds(pids)-nodesCPU, hostNow.busy-host.busy, hostNow.steal-host.steal, countSince(snaps, c.snapshots(ctx)))
	}
	res.FanoutP50, res.FanoutP99, res.FanoutMax = quantile(lat, 0.5), quantile(lat, 0.99), quantile(lat, 1)
	for _, id := range ids(fleet) {
		if acked, _ := tr.ackedAt(id, func(a ack) bool { return a.ver == res.FinalVersion }); !acked.IsZero() {
			res.Acked++
		}
	}
	gws, err := c.Operator.Linearizable().Gateways(ctx)
	if err != nil {
		return nil, err
	}
	for _, g := range gws {
		if g.Report != nil && g.Report.PolicyVersion == res.FinalVersion {
			res.Reported++
		}
	}

	// CPU per one-gateway change: new gateways join one at a time, each
	// waited for until its peers acknowledged a view with it. The periodic
	// reports pause meanwhile (the reports the change causes still flow).
	// Before each join, 2 s with nothing in flight give the background
	// rate left (heartbeats, the collector, a node giving memory back),
	// which is subtracted from that join's window: at 20,000 gateways the
	// background is ~0.14 CPU s/s and drifts after the rounds, so one rate
	// measured before all the joins moved the figure by half. The figure
	// is the median of the joins: a raft snapshot (~0.3 CPU s on a node
	// at 20,000, every few minutes whatever changes) falling into one
	// join's window is not that join's cost; the mean is logged beside it.
	ws.tell(cmdPauseReports)
	time.Sleep(5 * time.Second) // reports in flight land
	stamp := strconv.FormatInt(time.Now().Unix()%1e6, 36)
	var joined []FleetGateway
	var each []float64
	for k := range o.Changes {
		idleAt, idleCPU := time.Now(), cpuSeconds(pids)
		time.Sleep(2 * time.Second)
		at, cpuAt := time.Now(), cpuSeconds(pids)
		rate := (cpuAt - idleCPU) / at.Sub(idleAt).Seconds()
		base := fleet.Gateways[len(fleet.Gateways)-1-k]
		g := FleetGateway{ID: fmt.Sprintf("gw-x%s-%d", stamp, k), Agency: base.Agency, Province: base.Province}
		if _, err := enrollOne(ctx, c, g, k); err != nil {
			return nil, err
		}
		joined = append(joined, g)
		if err := tr.waitAll(ctx, fleet.PeersOf(g), time.Minute, g.ID+" in its peers' views", func(a ack) bool { return !a.added[g.ID].IsZero() }); err != nil {
			return nil, err
		}
		each = append(each, cpuSeconds(pids)-cpuAt-rate*time.Since(at).Seconds())
		res.IdleCPU += rate / float64(o.Changes)
	}
	var mean float64
	for _, c := range each {
		mean += c / float64(len(each))
	}
	res.CPUPerChange = quantile(each, 0.5)
	ws.tell(cmdResumeReports)
	logf("%d gateways joined: %.3f CPU s per change, median (mean %.3f, max %.3f; idle %.3f CPU s/s on average subtracted); each: %s",
		o.Changes, res.CPUPerChange, mean, slices.Max(each), res.IdleCPU, formatSeconds(each))

	// Revocation: from the call to the last peer's acknowledged view
	// without the gateway.
	var rev []float64
	for _, g := range joined {
		t0 := time.Now()
		if _, err := c.Officer.Revoke(ctx, api.RevokeRequest{Gateway: g.ID, Reason: "keyCompromise"}); err != nil {
			return nil, fmt.Errorf("revoke %s: %w", g.ID, err)
		}
		peers := fleet.PeersOf(g)
		if err := tr.waitAll(ctx, peers, time.Minute, g.ID+" out of its peers' views", func(a ack) bool { return !a.removed[g.ID].IsZero() }); err != nil {
			return nil, err
		}
		var last time.Time
		for _, p := range peers {
			if t := tr.removedAt(p, g.ID); t.After(last) {
				last = t
			}
		}
		rev = append(rev, last.Sub(t0).Seconds())
		logf("revoked %s: its last peer acknowledged %.3fs after the call", g.ID, last.Sub(t0).Seconds())
	}
	res.RevokeP50, res.RevokeP99 = quantile(rev, 0.5), quantile(rev, 0.99)
	logf("%d revocations: p50 %.3fs p99 %.3fs", len(rev), res.RevokeP50, res.RevokeP99)

	if err := reissue(ctx, c, dir, fleet, tr, ws.pids, res, logf); err != nil {
		return nil, err
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		res.Load = strings.TrimSpace(string(b))
	}
	return res, nil
}

// reissue measures a network-wide re-issue: an officer's renewal call,
// then every gateway renewing on its stream (a random part of
// api.RenewCallSpread after the call, as agents do), until the last
// answer. The new identities are written back to the identities file, so
// that a kept cluster stays usable; the cache is marked not ready while
// they are in flight.
func reissue(ctx context.Context, c *Cluster, dir string, fleet *Fleet, tr *tracker, workerPids []int, res *Result, logf func(string, ...any)) (err error) {
	ready := filepath.Join(dir, "ready")
	mark, _ := os.ReadFile(ready)
	if mark != nil {
		if err := os.Remove(ready); err != nil {
			return err
		}
	}
	defer func() {
		if werr := writeBack(filepath.Join(dir, "identities.jsonl"), tr); werr != nil {
			err = errors.Join(err, werr)
		} else if err == nil && mark != nil {
			err = os.WriteFile(ready, countReissue(mark), 0o600)
		}
	}()
	logf("re-issue: calling on every gateway to renew")
	snaps := c.snapshots(ctx) // first: a /metrics scrape is not the re-issue's CPU
	nodeCPU, gwCPU := cpuSeconds(c.pids()), cpuSeconds(workerPids)
	t0 := time.Now()
	if _, err := c.Officer.RenewAll(ctx, "load test: re-issue every gateway certificate"); err != nil {
		return fmt.Errorf("renewal call: %w", err)
	}
	if err := tr.waitAll(ctx, ids(fleet), 5*time.Minute, "every gateway's renewed certificate", func(a ack) bool { return !a.renewedAt.IsZero() }); err != nil {
		return err
	}
	res.ReissueNodeCPU = (cpuSeconds(c.pids()) - nodeCPU) / float64(len(fleet.Gateways))
	res.ReissueGatewayCPU = (cpuSeconds(workerPids) - gwCPU) / float64(len(fleet.Gateways))
	var took []float64
	for _, id := range ids(fleet) {
		took = append(took, tr.renewedAt(id).Sub(t0).Seconds())
	}
	res.ReissueP50, res.ReissueSeconds = quantile(took, 0.5), quantile(took, 1)
	st, err := c.Operator.Linearizable().RenewAllStatus(ctx)
	if err != nil {
		return err
	}
	if st.Pending != 0 {
		return fmt.Errorf("after the re-issue %d of %d enrolled gateways still hold a certificate from before the call (%v)", st.Pending, st.Gateways, st.Waiting)
	}
	logf("re-issue: %d gateway certificates renewed on the controllers' call, the last %.2fs after it (median %.2fs); CPU per renewal: nodes %.0f µs, simulated gateways %.0f µs; raft snapshots %s",
		len(took), res.ReissueSeconds, res.ReissueP50, res.ReissueNodeCPU*1e6, res.ReissueGatewayCPU*1e6, countSince(snaps, c.snapshots(ctx)))
	return nil
}

// writeBack replaces the identities the fleet renewed in the identities
// file (a new file renamed over the old one).
func writeBack(path string, tr *tracker) error {
	old, err := loadIdentities(path)
	if err != nil {
		return err
	}
	tr.mu.Lock()
	n := 0
	for i, id := range old {
		if a := tr.acks[id.ID]; a != nil && a.renewed != nil {
			old[i] = *a.renewed
			n++
		}
	}
	tr.mu.Unlock()
	if n == 0 {
		return nil
	}
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for _, id := range old {
		line, _ := json.Marshal(id)
		w.Write(append(line, '\n'))
	}
	if err := errors.Join(w.Flush(), f.Sync(), f.Close()); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func ids(f *Fleet) []string {
	out := make([]string, len(f.Gateways))
	for i, g := range f.Gateways {
		out[i] = g.ID
	}
	return out
}

// maxKeptReissues is how many network-wide re-issues a kept cluster
// goes through before it is set up again. Every re-issue adds a
// generation of certificate records that the cluster keeps for the 30
// days they are valid, where a network of 24-hour certificates renewed
// at 16 hours holds three or four per gateway (the current one, the one
// it renewed, and the expired ones until cert_archive_after): a cluster
// kept through a dozen re-issues carried tens of MiB more heap than
// such a network, and the collector's headroom on it came out as ~17 KB
// per gateway more in controller.bytes_per_gateway (66,908 against 49,414
// bytes on a fresh cluster of 1,000, 24 November).
const maxKeptReissues = 3

// countReissue returns the ready mark with one more re-issue counted.
func countReissue(mark []byte) []byte {
	st := map[string]any{}
	if json.Unmarshal(mark, &st) != nil {
		return mark
	}
	n, _ := st["Reissues"].(float64)
	st["Reissues"] = n + 1
	out, err := json.Marshal(st)
	if err != nil {
		return mark
	}
	return out
}

// prepare starts the cluster kept in dir, or sets one up, enrolls the
// fleet and publishes its first policy. A cache is reused only when it is
// complete (the ready file), its certificates have a day left, and it has
// been through fewer than maxKeptReissues re-issues.
func prepare(ctx context.Context, dir string, o Options, fleet *Fleet, res *Result, logf func(string, ...any)) (*Cluster, bool, error) {
	ready := filepath.Join(dir, "ready")
	if b, err := os.ReadFile(ready); err == nil {
		var st struct {
			Gateways          int
			Expires           time.Time
			APIPort, RaftPort int
			Reissues          int
		}
		if json.Unmarshal(b, &st) == nil && st.Gateways == o.Gateways && time.Until(st.Expires) > 24*time.Hour && st.Reissues < maxKeptReissues {
			c, err := newCluster(dir, o.Govnetd, st.APIPort, st.RaftPort, o.Log)
			if err != nil {
				return nil, false, err
			}
			if err := c.start(ctx); err != nil {
				return nil, false, err
			}
			return c, true, nil
		}
		logf("cache in %s is stale, for another size, or through %d re-issues: setting up again", dir, maxKeptReissues)
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, false, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, err
	}
	c, err := newCluster(dir, o.Govnetd, o.APIPort, o.RaftPort, o.Log)
	if err != nil {
		return nil, false, err
	}
	const lifetime = 30 * 24 * time.Hour
	logf("setting up a 3-node cluster in %s", dir)
	if err := c.setup(lifetime); err != nil {
		return nil, false, err
	}
	if err := c.start(ctx); err != nil {
		return nil, false, err
	}
	took, err := register(ctx, c, fleet, fleet.Gateways, filepath.Join(dir, "identities.jsonl"), 16, func(s string) { logf("%s", s) })
	if err != nil {
		c.stop()
		return nil, false, err
	}
	res.EnrollSeconds = took.Seconds()
	if _, err := c.Officer.PublishPolicy(ctx, "load.yaml", fleet.Policy(1)); err != nil {
		c.stop()
		return nil, false, fmt.Errorf("first policy: %w", err)
	}
	logf("enrolled %d gateways in %.1fs (%.0f/s)", o.Gateways, took.Seconds(), float64(o.Gateways)/took.Seconds())
	st, _ := json.Marshal(map[string]any{"Gateways": o.Gateways, "Expires": time.Now().Add(lifetime), "APIPort": c.nodes[0].api, "RaftPort": c.nodes[0].raft})
	if o.APIPort != 0 { // free ports differ per node: such a cluster is not kept
		if err := os.WriteFile(ready, st, 0o600); err != nil {
			c.stop()
			return nil, false, err
		}
	}
	return c, false, nil
}

// startWorkers runs the fleet in o.Workers processes (this executable,
// re-run as a worker) and feeds their events to tr.
func startWorkers(ctx context.Context, c *Cluster, o Options, idFile string, tr *tracker, logf func(string, ...any)) (workers, error) {
	exe, err := os.Executable()
	if err != nil {
		return workers{}, err
	}
	type proc struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
		done  chan struct{}
	}
	var procs []*proc
	stopAll := func() {
		for _, p := range procs {
			p.stdin.Close()
		}
		for _, p := range procs {
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				p.cmd.Process.Kill()
				<-p.done
			}
		}
	}
	n := o.Gateways
	for w := range o.Workers {
		spec := workerSpec{IDFile: idFile, From: w * n / o.Workers, To: (w + 1) * n / o.Workers, Root: c.root, URLs: c.URLs(), ReportEvery: o.ReportEvery}
		if o.ConnectRate > 0 {
			spec.Stagger = time.Duration(float64(o.Workers) / o.ConnectRate * float64(time.Second))
		}
		cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), workerEnv+"=1")
		cmd.Stderr = o.Log
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		stdin, err := cmd.StdinPipe()
		if err != nil {
			stopAll()
			return workers{}, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			stopAll()
			return workers{}, err
		}
		if err := cmd.Start(); err != nil {
			stopAll()
			return workers{}, err
		}
		p := &proc{cmd: cmd, stdin: stdin, done: make(chan struct{})}
		procs = append(procs, p)
		b, _ := json.Marshal(spec)
		stdin.Write(append(b, '\n'))
		go func() {
			defer close(p.done)
			sc := bufio.NewScanner(stdout)
			sc.Buffer(make([]byte, 64<<10), 64<<20)
			for sc.Scan() {
				var ev event
				if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
					logf("worker %d: %v", w, err)
					continue
				}
				if ev.Err != "" {
					logf("gateway %s: %s", ev.G, ev.Err)
				}
				tr.add(ev)
			}
			err := cmd.Wait()
			tr.fail(fmt.Errorf("worker %d exited: %v", w, err))
		}()
	}
	tell := func(cmd string) {
		for _, p := range procs {
			io.WriteString(p.stdin, cmd+"\n")
		}
	}
	var pids []int
	for _, p := range procs {
		pids = append(pids, p.cmd.Process.Pid)
	}
	return workers{stop: func() { tr.stopping(); stopAll() }, tell: tell, pids: pids}, nil
}

// workers controls the worker processes.
type workers struct {
	stop func()
	tell func(cmd string) // send every worker a command
	pids []int
}

// ack is what the tracker knows of one gateway.
type ack struct {
	ver, index uint64
	at         time.Time            // of the last acknowledged view
	verAt      map[uint64]time.Time // first acknowledgement of each policy version
	recvAt     map[uint64]time.Time // when the view acknowledged first for it arrived
	added      map[string]time.Time // peer -> first view that added it
	removed    map[string]time.Time // peer -> first view that removed it
	renewedAt  time.Time            // a renewal on the controllers' call answered
	renewed    *identity            // the identity it made
	lastErr    string               // the last failure the worker reported
}

// tracker collects the workers' events.
type tracker struct {
	mu      sync.Mutex
	acks    map[string]*ack
	changed chan struct{} // closed and replaced on every event
	err     error         // a worker died
	closing bool
}

func newTracker() *tracker {
	return &tracker{acks: map[string]*ack{}, changed: make(chan struct{})}
}

func (t *tracker) add(ev event) {
	at := time.Unix(0, ev.T)
	t.mu.Lock()
	defer t.mu.Unlock()
	a := t.acks[ev.G]
	if a == nil {
		a = &ack{verAt: map[uint64]time.Time{}, recvAt: map[uint64]time.Time{}, added: map[string]time.Time{}, removed: map[string]time.Time{}}
		t.acks[ev.G] = a
	}
	if ev.Err != "" {
		a.lastErr = ev.Err
		return // applied but never acknowledged (or not renewed): not counted
	}
	if ev.Renewed != "" {
		a.renewedAt, a.renewed = at, &identity{ID: ev.G, Key: ev.Key, Cert: ev.Cert}
		close(t.changed)
		t.changed = make(chan struct{})
		return
	}
	if ev.Index > a.index {
		a.ver, a.index, a.at = ev.Ver, ev.Index, at
	}
	if _, ok := a.verAt[ev.Ver]; !ok {
		a.verAt[ev.Ver], a.recvAt[ev.Ver] = at, time.Unix(0, ev.R)
	}
	for _, p := range ev.Add {
		if _, ok := a.added[p]; !ok {
			a.added[p] = at
		}
	}
	for _, p := range ev.Rm {
		if _, ok := a.removed[p]; !ok {
			a.removed[p] = at
		}
	}
	close(t.changed)
	t.changed = make(chan struct{})
}

func (t *tracker) fail(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closing && t.err == nil {
		t.err = err
	}
	close(t.changed)
	t.changed = make(chan struct{})
}

func (t *tracker) stopping() {
	t.mu.Lock()
	t.closing = true
	t.mu.Unlock()
}

// waitAll waits until ok holds for every gateway in gws; ok must stay
// true once it holds (each check looks only at the gateways still
// missing). It looks at most every 20 ms: with 20,000 gateways, a scan
// on every event took a core of the machine the controllers run on. The
// times it reports come from the events, not from when it looked.
func (t *tracker) waitAll(ctx context.Context, gws []string, timeout time.Duration, what string, ok func(ack) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	missing := slices.Clone(gws)
	for {
		t.mu.Lock()
		missing = slices.DeleteFunc(missing, func(g string) bool {
			a := t.acks[g]
			return a != nil && ok(*a)
		})
		ch, err := t.changed, t.err
		t.mu.Unlock()
		if len(missing) == 0 {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			t.mu.Lock()
			why := ""
			if a := t.acks[missing[0]]; a != nil && a.lastErr != "" {
				why = ": " + a.lastErr
			}
			t.mu.Unlock()
			return fmt.Errorf("wait for %s: %w (%d of %d gateways missing, e.g. %s%s)", what, ctx.Err(), len(missing), len(gws), missing[0], why)
		case <-ch:
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ackedAt returns when gateway g first acknowledged a view with ok: for a
// policy version, the first version at or past it.
func (t *tracker) ackedAt(g string, ok func(ack) bool) (acked, arrived time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a := t.acks[g]
	for v, at := range a.verAt {
		if ok(ack{ver: v}) && (acked.IsZero() || at.Before(acked)) {
			acked, arrived = at, a.recvAt[v]
		}
	}
	return acked, arrived
}

// count says for how many gateways ok holds.
func (t *tracker) count(ok func(ack) bool) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, a := range t.acks {
		if ok(*a) {
			n++
		}
	}
	return n
}

func (t *tracker) renewedAt(g string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	if a := t.acks[g]; a != nil {
		return a.renewedAt
	}
	return time.Time{}
}

func (t *tracker) removedAt(g, peer string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.acks[g].removed[peer]
}

// quantile is the nearest-rank q-quantile of xs (0 for none).
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// cpuSeconds sums the user and system CPU time of the processes.
func cpuSeconds(pids []int) float64 {
	var ticks int64
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		// Fields after the command name (which may hold spaces): state is
		// field 3, utime 14, stime 15.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + st
	}
	return float64(ticks) / clockTicks
}

const clockTicks = 100 // USER_HZ on Linux

// countSince renders the growth of a count read twice (-1: unread).
func countSince(before, after int) string {
	if before < 0 || after < 0 {
		return "unknown"
	}
	return strconv.Itoa(after - before)
}

// hostCPU is the machine's CPU time since boot, in seconds: busy (every
// state but idle, iowait and steal) and steal (taken by the hypervisor
// for other guests: a run's figures vary with it).
type hostCPU struct{ busy, steal float64 }

func readHostCPU() hostCPU {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return hostCPU{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return hostCPU{}
	}
	var t [8]float64
	for i := range t {
		t[i], _ = strconv.ParseFloat(f[1+i], 64)
		t[i] /= clockTicks
	}
	return hostCPU{busy: t[0] + t[1] + t[2] + t[5] + t[6], steal: t[7]}
}

// rss sums the processes' anonymous resident memory (RssAnon: heap,
// stacks), in bytes. Not VmRSS: that also counts the pages of the raft
// log's memory-mapped file that replaying it at start read in, page cache
// the kernel reclaims at will, which made the figure swing by hundreds
// of MiB between runs (down to negative bytes per gateway).
func rss(pids []int) int64 { return procStatus(pids, "RssAnon:") }

// procStatus sums a kB field of /proc/<pid>/status over pids, in bytes.
func procStatus(pids []int, field string) int64 {
	var total int64
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, field); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				total += kb << 10
			}
		}
	}
	return total
}

// settledRSS samples the RSS every 500 ms until three samples in a row are
// within 1% of each other (at most 30 s), and returns the last.
func settledRSS(pids []int) int64 {
	prev, stable := rss(pids), 0
	for range 60 {
		time.Sleep(500 * time.Millisecond)
		cur := rss(pids)
		if math.Abs(float64(cur-prev)) <= 0.01*float64(prev) {
			if stable++; stable >= 2 {
				return cur
			}
		} else {
			stable = 0
		}
		prev = cur
	}
	return prev
}

// raiseFDLimit lifts the open-file limit (as root, above the hard limit
// too) for this process and the nodes and workers it starts.
func raiseFDLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) != nil {
		return
	}
	want := max(l.Max, 1<<18)
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}) != nil {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// formatSeconds lists figures as the log shows them: "0.031 0.029 ...".
func formatSeconds(vs []float64) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = strconv.FormatFloat(v, 'f', 3, 64)
	}
	return strings.Join(parts, " ")
}
