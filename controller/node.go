package controller

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/ca/chain"
	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/internal/workpool"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

// ErrNotLeader is returned for a write sent to a node that is not the leader.
var ErrNotLeader = errors.New("this node is not the raft leader")

// applyTimeout bounds how long a write waits for raft.
const applyTimeout = 10 * time.Second

// Node is one running controller: raft, the state machine, the CA and the API.
type Node struct {
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	token *hsm.Token
	ca    *ca.CA
	// hsmErr is why the last probeHSM failed (nil: the token signed).
	hsmErr atomic.Pointer[error]
	cert   atomic.Pointer[tls.Certificate] // this node's certificate chain and TLS key; nodecert.go renews it
	// bootstrapped: every person of bootstrap-people.json is registered
	// (registerBootstrap has nothing left to do).
	bootstrapped atomic.Bool
	// nextNodeCert is a renewed node certificate not yet recorded
	// (issuerDuties' own).
	nextNodeCert *x509.Certificate
	nextNodeKey  nodeKey
	// tlsKeyLabel names the token key of cert; oldTLSKeysAt is when a
	// renewal replaced the one before (issuerDuties' own; zero: none to
	// destroy).
	tlsKeyLabel  atomic.Pointer[string]
	oldTLSKeysAt time.Time
	verifier     *chain.Verifier // client certificates of the API; its Roots are the trust anchor

	// peers makes node-to-node calls, authenticated by the node
	// certificate; a renewal of it replaces the client (nodecert.go).
	peers  atomic.Pointer[http.Client]
	limits *limiter // per-client request rate

	raft *raft.Raft
	// bootIndex is the last log index at start; see caughtUp.
	bootIndex uint64
	fsm       *FSM
	hub       *viewHub
	stores    []io.Closer

	ln     net.Listener
	srv    *http.Server
	cancel context.CancelFunc

	// The plain-HTTP listener for CRLs and OCSP, and this node's issuer.
	httpLn       net.Listener
	httpSrv      *http.Server
	issuerID     string
	ocsp         *ca.OCSPResponder
	crlWake      chan struct{}                      // a command was applied: is the CRL behind?
	streams      *streamSender                      // writes to gateways' streams
	reports      *groupCommit[GatewayReportRequest] // gateways' reports, committed in batches
	refresh      *refresher                         // reports that change nothing, committed every reportFlush
	issues       *workpool.Pool                     // where gateways' certificates are issued (Node.issue)
	renewals     *groupCommit[GatewayRenewRequest]  // gateways' renewals, committed in batches
	archiver     archiver                           // leaderDuties' certificates to archive
	connsRefused atomic.Uint64                      // connections over max_conns_per_ip, on every listener
	// leaderChanges counts the changes of leader this node saw (a new
	// leader, or none while an election runs), from leaderObs.
	leaderChanges atomic.Uint64
	leaderObs     chan raft.Observation
	restoring     atomic.Bool // a backup restore is being read or installed here

	// levelReported is when reportLevel last reported this node's
	// release level (leaderDuties' own).
	levelReported time.Time
	// memberMu keeps, on the leader, a node from being added between
	// raiseLevel's decision and its command.
	memberMu sync.Mutex
	// applyGate holds this node's writes (applyLocal) while it merges a
	// lost cluster's backup into its state and hands raft the result
	// (recoverBackup).
	applyGate sync.RWMutex
	metrics   *nodeMetrics // served at /metrics on the API, to operators and auditors
	// startSettled is set once the node has caught up, compiled its views
	// and given back its start's memory (releaseStartupMemory).
	startSettled atomic.Bool
	wg           sync.WaitGroup
}

// Start opens the HSM, loads the CA, starts raft (bootstrapping a
// single-node cluster on first start) and serves the API. It returns once
// the API is listening.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Node, error) {
	return start(ctx, cfg, log, time.Now)
}

// start is Start with the clock the node stamps commands and schedules
// its duties by (tests move it).
func start(ctx context.Context, cfg Config, log *slog.Logger, now func() time.Time) (_ *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	n := &Node{cfg: cfg, log: log, now: now, limits: newLimiter(cfg.RateLimit, time.Now), crlWake: make(chan struct{}, 1)}
	n.limits.member = n.isMemberNode
	n.limits.memberHost = func(host string) bool {
		ip, err := netip.ParseAddr(host)
		return err == nil && n.isMemberAddr(ip.Unmap())
	}
	n.reports = newReportRecorder(n)
	n.refresh = &refresher{n: n, heartbeat: n.cfg.Raft.withDefaults().HeartbeatTimeout}
	n.streams = newStreamSender(n) // before raft: applying a renewal call wakes the streams
	n.renewals = newRenewRecorder(n)
	n.metrics = newNodeMetrics(n)
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	// The revocation listener comes first: certificates name its address.
	if err := n.listenHTTP(); err != nil {
		return nil, err
	}
	if err := n.openCA(); err != nil {
		return nil, err
	}
	if err := n.startRaft(); err != nil {
		return nil, err
	}
	ctx, n.cancel = context.WithCancel(context.Background())
	n.wg.Add(1)
	go func() { defer n.wg.Done(); n.hub.run(ctx) }()
	beats := time.NewTicker(time.Second)
	for i := range streamSenders() {
		var tick <-chan time.Time
		if i == 0 {
			tick = beats.C // one sender queues the heartbeats due
		}
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.streams.run(ctx, tick) }()
	}
	context.AfterFunc(ctx, beats.Stop)
	n.issues = workpool.Start(ctx, &n.wg, 2*runtime.GOMAXPROCS(0)) // before serve: handlers issue on it
	if err := n.serve(); err != nil {
		return nil, err
	}
	n.serveHTTP()
	n.wg.Add(8)
	go func() { defer n.wg.Done(); n.countLeaderChanges(ctx) }()
	go func() { defer n.wg.Done(); n.watchHSM(ctx) }()
	go func() { defer n.wg.Done(); n.snapshotWhenDue(ctx) }()
	go func() { defer n.wg.Done(); n.refresh.run(ctx) }()
	go func() { defer n.wg.Done(); n.releaseStartupMemory(ctx) }()
	go func() { defer n.wg.Done(); n.issuerDuties(ctx) }()
	go func() { defer n.wg.Done(); n.leaderDuties(ctx) }()
	go func() { defer n.wg.Done(); n.autoJoin(ctx) }()
	return n, nil
}

// snapshotCheckEvery is how often a node asks FSM.snapshotDue; after a
// snapshot fails it waits snapshotRetryAfter, doubled at each failure up
// to snapshotRetryMax, before it tries again (each try copies the state).
const (
	snapshotCheckEvery = 10 * time.Second
	snapshotRetryAfter = 2 * time.Minute
	snapshotRetryMax   = 16 * time.Minute
)

// snapshotWhenDue has raft take a snapshot whenever FSM.snapshotDue says
// so, given what the node applied since the last check.
func (n *Node) snapshotWhenDue(ctx context.Context) {
	tick := time.NewTicker(snapshotCheckEvery)
	defer tick.Stop()
	var retryAt time.Time
	backoff := snapshotRetryAfter
	last := n.fsm.applied.Load()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := n.fsm.applied.Load()
		recent := now - last
		last = now
		if ctx.Err() != nil || time.Now().Before(retryAt) || !n.fsm.snapshotDue(recent) {
			continue
		}
		err := n.raft.Snapshot().Error()
		switch {
		case err == nil || errors.Is(err, raft.ErrNothingNewToSnapshot):
			backoff = snapshotRetryAfter
		case errors.Is(err, raft.ErrRaftShutdown):
			return
		case ctx.Err() == nil:
			n.log.Error("raft snapshot", "err", err, "retry_in", backoff)
			retryAt = time.Now().Add(backoff)
			backoff = min(2*backoff, snapshotRetryMax)
		}
	}
}

// releaseStartupMemory gives the operating system back, once, the memory
// that replaying the log and compiling every view at start took: Go
// returns freed memory slowly, and a node that replayed a long log would
// otherwise hold that peak for minutes, which then looks like what its
// gateways cost it.
func (n *Node) releaseStartupMemory(ctx context.Context) {
	// Caught up, and the views the replay touched compiled: the index
	// they were compiled at has not moved for a second.
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	var last uint64
	stable := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !n.caughtUp() {
			continue
		}
		at, _ := n.hub.compiledAt()
		if at != last {
			last, stable = at, 0
			continue
		}
		if stable++; stable >= 2 {
			debug.FreeOSMemory()
			n.startSettled.Store(true)
			return
		}
	}
}

func (n *Node) openCA() error {
	hc, err := n.cfg.hsmConfig()
	if err != nil {
		return err
	}
	if n.token, err = hsm.Open(hc); err != nil {
		return err
	}
	root, err := readCert(n.cfg.pkiPath(rootFile))
	if err != nil {
		return err
	}
	inter, err := readCert(n.cfg.pkiPath(intermediateFile))
	if err != nil {
		return err
	}
	node, err := readCert(n.cfg.pkiPath(nodeFile))
	if err != nil {
		return err
	}
	interKey, err := n.token.Signer(IntermediateKeyLabel(n.cfg.Node))
	if err != nil {
		return err
	}
	tlsKey, label, err := nodeTLSKey(n.token, n.cfg.Node, node)
	if err != nil {
		return err
	}
	n.tlsKeyLabel.Store(&label)
	n.oldTLSKeysAt = time.Now().Add(-oldTLSKeysGrace) // keys a renewal left: gone at the first duties
	if n.ca, err = ca.New(root, inter, interKey, ca.WithProfiles(n.cfg.profiles()), ca.WithRevocationURLs(n.revocationURLs())); err != nil {
		return err
	}
	n.issuerID = ca.IssuerID(inter)
	n.ocsp = n.ca.OCSPResponder(func(_ context.Context, serial *big.Int) (ca.CertStatus, error) {
		return n.State().CertStatus(n.issuerID, serial)
	})
	n.cert.Store(&tls.Certificate{Certificate: [][]byte{node.Raw, inter.Raw}, PrivateKey: tlsKey, Leaf: node})
	n.verifier = chain.NewVerifierFor(root)
	n.peers.Store(newPeerClient(n.verifier.Roots(), n.getClientCert))
	return nil
}

func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w (has `govnetd init` run?)", err)
	}
	certs, err := ca.ParsePEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs[0], nil
}

// Raft log store: raft-boltdb/v2 (bbolt). Measured on this machine's disk
// (docs/performance.md, "Raft log store"; 512-byte entries, three rounds):
//
//	                   single write p50 / p99     batched (64/call)
//	raft-boltdb/v2     0.6–1.4 ms / 9.8–13.7 ms   12–21k entries/s
//	raft-wal v0.4.0    0.2–0.3 ms / 2.9–5.9 ms    68–119k entries/s
//
// raft-wal is 3–5× faster, but v0.4.0 (the only version the module proxy
// serves) has hashicorp/raft-wal#31: truncating the log's tail, which a
// follower does when a new leader overwrites entries the old one never
// committed, seals a segment without its index block, and the next start
// panics ("sealed segment has no index block"). TestClusterFaults hit it
// on the restart after a leader was killed. The fix (raft-wal#33,
// ForceSeal) is in no served release, so we keep bbolt, whose batched
// throughput is still well above what the controller needs; move to
// raft-wal once a release with the fix can be fetched.
func (n *Node) openLogStore(dir string) (raft.LogStore, raft.StableStore, error) {
	// bbolt's default freelist is a sorted array that every commit
	// merges and writes out whole: with the log compacted after each
	// snapshot it holds thousands of pages, and at 20,000 gateways its
	// merges were 7% of a follower's CPU. The hash-map freelist, kept in
	// memory only (rebuilt by a scan of the file when it opens), is what
	// etcd runs with.
	store, err := raftboltdb.New(raftboltdb.Options{
		Path:        filepath.Join(dir, "raft.db"),
		BoltOptions: &bbolt.Options{FreelistType: bbolt.FreelistMapType, NoFreelistSync: true},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("raft log store: %w", err)
	}
	n.stores = append(n.stores, store)
	// The leader sends followers the entries it has just written: a cache
	// of the newest ones saves reading them back from bbolt.
	logs, err := raft.NewLogCache(raftLogCache, store)
	if err != nil {
		return nil, nil, fmt.Errorf("raft log cache: %w", err)
	}
	return logs, store, nil
}

// raftLogCache is how many of the newest log entries are kept in memory
// (as Nomad and Consul do); see MaxAppendEntries in startRaft.
const raftLogCache = 1024

// bootstrapFile marks a data directory whose node founds a new cluster on
// its first start (written by Init, not by PrepareJoin).
const bootstrapFile = "bootstrap"

func (n *Node) startRaft() error {
	dir := filepath.Join(n.cfg.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tune := n.cfg.Raft.withDefaults()
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.Node)
	rc.HeartbeatTimeout = tune.HeartbeatTimeout
	rc.ElectionTimeout = tune.ElectionTimeout
	rc.LeaderLeaseTimeout = tune.LeaderLeaseTimeout
	// Concurrent writes share one disk sync and one AppendEntries per
	// follower: the leader takes up to MaxAppendEntries waiting applies at
	// once (docs/performance.md, "Controller: views and raft writes"). With
	// BatchApplyCh an apply is queued at once instead of failing after its
	// timeout when the leader is busy; it still ends on leadership loss.
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 512
	// Snapshots are taken by snapshotWhenDue; raft's threshold only
	// bounds the log (FSM.snapshotDue).
	rc.SnapshotThreshold = snapshotMaxEntries
	rc.Logger = newRaftLogger(n.log)

	logs, stable, err := n.openLogStore(dir)
	if err != nil {
		return err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 3, rc.Logger)
	if err != nil {
		return fmt.Errorf("raft snapshots: %w", err)
	}
	addr, err := net.ResolveTCPAddr("tcp", n.cfg.RaftAddr)
	if err != nil {
		return fmt.Errorf("raft_addr: %w", err)
	}
	if addr.IP.IsUnspecified() {
		return fmt.Errorf("raft_addr %s: give the address other nodes reach this one at", n.cfg.RaftAddr)
	}
	var hub *viewHub
	n.fsm = newFSMIn(dir, n.log, func(_ uint64, t CommandType) {
		hub.changed()
		if t == CmdRenewCall || t == 0 { // 0: a snapshot was restored
			n.streams.wakeAll()
		}
		select {
		case n.crlWake <- struct{}{}:
		default:
		}
	})
	hub = newViewHub(n.fsm.State(), n.log)
	n.hub = hub

	// After the FSM: accepting a connection reads the inventory.
	stream, err := n.newRaftTLS(n.cfg.RaftAddr, addr)
	if err != nil {
		return fmt.Errorf("raft transport: %w", err)
	}
	trans := raft.NewNetworkTransportWithLogger(stream, 3, 10*time.Second, rc.Logger)
	n.stores = append(n.stores, closerFunc(trans.Close))

	existing, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		return fmt.Errorf("raft state: %w", err)
	}
	if !existing {
		if _, err := os.Stat(filepath.Join(n.cfg.DataDir, bootstrapFile)); err == nil {
			boot := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: trans.LocalAddr()}}}
			if err := raft.BootstrapCluster(rc, logs, stable, snaps, trans, boot); err != nil {
				return fmt.Errorf("bootstrap raft: %w", err)
			}
			n.log.Info("bootstrapped a new cluster", "node", n.cfg.Node)
		} else {
			n.log.Info("waiting to be added to a cluster (govnetctl cluster join, or the join key)", "node", n.cfg.Node)
		}
	}
	if n.raft, err = raft.NewRaft(rc, n.fsm, logs, stable, snaps, trans); err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	// Before the first election can end (a heartbeat timeout away).
	n.leaderObs = make(chan raft.Observation, 16)
	n.raft.RegisterObserver(raft.NewObserver(n.leaderObs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	}))
	// Everything this node logged before it stopped must be applied again
	// before it answers from its state: an empty state would tell an
	// enrolled gateway it is unknown.
	n.bootIndex = n.raft.LastIndex()
	return nil
}

// countLeaderChanges counts what leaderObs reports until ctx ends.
func (n *Node) countLeaderChanges(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.leaderObs:
			n.leaderChanges.Add(1)
		}
	}
}

// intermediateKeyPresent says whether the token still holds the
// intermediate's key, able to sign, without having it sign.
func (n *Node) intermediateKeyPresent() error {
	keys, err := n.token.Keys()
	if err != nil {
		return fmt.Errorf("intermediate key: %w", err)
	}
	label := IntermediateKeyLabel(n.cfg.Node)
	for _, k := range keys {
		if k.Label == label && k.Sign {
			return nil
		}
	}
	return fmt.Errorf("intermediate key: no key %q that may sign on the token", label)
}

// hsmProbeEvery is how often watchHSM has the token sign.
var hsmProbeEvery = 10 * time.Second

// watchHSM has the token sign every hsmProbeEvery (probeHSM): a node
// whose token stopped signing can complete no TLS handshake with its
// key there, issue nothing and sign no CRL, so Ready says so and a load
// balancer stops sending it agents and people.
func (n *Node) watchHSM(ctx context.Context) {
	tick := time.NewTicker(hsmProbeEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n.probeHSM()
	}
}

// probeHSM has the node's TLS key sign a fixed digest and checks that the
// intermediate's key is still on the token, records the outcome for
// Ready, and logs when it changes: an error needs an operator (the token,
// its device or its PIN). The intermediate's key is looked up, not made
// to sign: a CA key signs certificates and CRLs, and nothing else.
func (n *Node) probeHSM() {
	var err error
	if s, ok := n.cert.Load().PrivateKey.(crypto.Signer); ok {
		digest := sha256.Sum256([]byte("govnet hsm probe"))
		if _, serr := s.Sign(rand.Reader, digest[:], crypto.SHA256); serr != nil {
			err = fmt.Errorf("TLS key: %w", serr)
		}
	}
	if err == nil {
		err = n.intermediateKeyPresent()
	}
	var prev *error
	if err == nil {
		prev = n.hsmErr.Swap(nil)
	} else {
		prev = n.hsmErr.Swap(&err)
	}
	switch {
	case err != nil && prev == nil:
		n.log.Error("HSM token cannot sign: this node is not ready", "token", n.cfg.HSM.TokenLabel, "err", err)
	case err == nil && prev != nil:
		n.log.Info("HSM token signs again: this node is ready again", "token", n.cfg.HSM.TokenLabel)
	}
}

// caughtUp reports whether the state machine has applied everything that
// was in this node's log when it started.
func (n *Node) caughtUp() bool { return n.raft.AppliedIndex() >= n.bootIndex }

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// leaderDuties runs on every node and acts while it leads: it records the
// overlay plan once and keeps this node's member record current, so that
// followers know where to forward writes, and raises the cluster's level
// when every node can follow (controller/level.go). On a node that does
// not lead, it reports the node's release level.
func (n *Node) leaderDuties(ctx context.Context) {
	prefix := netip.MustParsePrefix(n.cfg.OverlayPrefix)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		if n.raft.State() == raft.Leader {
			st := n.fsm.State()
			if !st.Overlay().IsValid() {
				if _, err := n.submit(ctx, CmdInitNetwork, &InitNetworkRequest{Meta: n.meta("node:" + n.cfg.Node), OverlayPrefix: prefix, Level: releaseLevel}); err != nil && ctx.Err() == nil {
					n.log.Error("init network", "err", err)
				}
			}
			self := api.Member{Node: n.cfg.Node, RaftAddr: n.cfg.RaftAddr, APIAddr: n.advertisedAPI(), Level: releaseLevel}
			if m, ok := st.Member(n.cfg.Node); (!ok || m != self) && n.isVoter() {
				req := &MemberUpsertRequest{Meta: n.meta("node:" + n.cfg.Node), Node: self.Node, RaftAddr: self.RaftAddr, APIAddr: self.APIAddr, Level: self.Level}
				if _, err := n.submit(ctx, CmdMemberUpsert, req); err != nil && ctx.Err() == nil {
					n.log.Error("record this node's addresses", "err", err)
				}
			}
			n.registerBootstrap(ctx)
			if err := n.checkpointIfDue(ctx); err != nil && ctx.Err() == nil {
				n.log.Error("audit checkpoint", "err", err)
			}
			if err := n.archiveIfDue(ctx); err != nil && ctx.Err() == nil {
				n.log.Error("certificate archive", "err", err)
			}
			// (Leadership lost meanwhile is the next leader's to do.)
			if err := n.promoteNonvoters(ctx); err != nil && ctx.Err() == nil && !lostLead(err) {
				n.log.Error("make a node a voter", "err", err)
			}
			if err := n.raiseLevel(ctx); err != nil && ctx.Err() == nil && !lostLead(err) {
				n.log.Error("raise the cluster's level", "err", err)
			}
		} else if err := n.reportLevel(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn("release level", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-n.raft.LeaderCh():
		case <-tick.C:
		}
	}
}

// lostLead says whether err is raft's or this node's word that it no
// longer leads.
func lostLead(err error) bool {
	return errors.Is(err, ErrNotLeader) || errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, errLeadershipLost)
}

// isVoter says whether this node is a voter in raft's latest
// configuration (a node being removed is not).
func (n *Node) isVoter() bool {
	s, ok := n.serverAt(n.cfg.Node, "")
	return ok && s.Suffrage == raft.Voter
}

// serverAt returns node's entry in raft's latest configuration, if it is
// there at raftAddr ("": at any address).
func (n *Node) serverAt(node, raftAddr string) (raft.Server, bool) {
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return raft.Server{}, false
	}
	for _, s := range cf.Configuration().Servers {
		if s.ID == raft.ServerID(node) && (raftAddr == "" || s.Address == raft.ServerAddress(raftAddr)) {
			return s, true
		}
	}
	return raft.Server{}, false
}

// advertisedAPI is the API address other nodes reach this one at.
func (n *Node) advertisedAPI() string {
	host, _, _ := net.SplitHostPort(n.cfg.APIAddr)
	_, port, _ := net.SplitHostPort(n.ln.Addr().String())
	return net.JoinHostPort(host, port)
}

func (n *Node) meta(actor string) Meta { return Meta{Actor: actor, At: n.now().UTC()} }

// ErrNoLeader is returned when no leader is known to forward a write to.
var ErrNoLeader = errors.New("no raft leader is known")

// ErrUnknownOutcome is returned when leadership changed while a write was
// being committed: it may or may not have taken effect.
var ErrUnknownOutcome = errors.New("leadership changed while committing: the write may or may not have taken effect")

// errLeadershipLost is the ErrUnknownOutcome of a write that was in the
// log of a leader that then lost leadership (raft.ErrLeadershipLost), as
// opposed to one whose forwarding failed in transit: nothing can still
// be submitting it, so submitSettled can find out what became of it.
var errLeadershipLost = fmt.Errorf("%w", ErrUnknownOutcome)

// submit commits a command through raft, on this node if it leads or
// forwarded to the leader, and returns its index and the state machine's
// verdict. It retries while no write can have happened (no leader, or the
// node asked was not the leader), and returns only once this node's own
// state has applied the command, so that the caller reads its write.
// Raft's and the transport's errors are returned apart from the state
// machine's: see submitOnce.
func (n *Node) submit(ctx context.Context, t CommandType, req any) (uint64, error) {
	b, err := encodeCommand(t, req)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, applyTimeout)
	defer cancel()
	start := time.Now()
	for {
		idx, verdict, err := n.submitOnce(ctx, t, b)
		if errors.Is(err, ErrNotLeader) || errors.Is(err, ErrNoLeader) {
			if werr := pause(ctx, 20*time.Millisecond); werr != nil {
				return 0, err
			}
			continue
		}
		if err != nil {
			return 0, err
		}
		if werr := n.fsm.State().waitIndex(ctx, idx); werr != nil {
			return idx, werr
		}
		n.metrics.observeApply(time.Since(start))
		return idx, verdict
	}
}

// submitSettled is submit for a write that must not be left in doubt
// when its leader loses leadership while committing it (a renewal, whose
// certificate the gateway is waiting for). Once the next leader has
// committed a barrier and this node has applied as far, an entry of the
// earlier term either was applied or never will be (raft's leader
// completeness); committed says, from the state, which. A write that
// did not take effect is submitted again, up to three times in all.
func (n *Node) submitSettled(ctx context.Context, t CommandType, req any, committed func(*State) bool) error {
	return n.settle(ctx, t, func() error {
		_, err := n.submit(ctx, t, req)
		return err
	}, committed)
}

// settle runs submit, and again while it fails with errLeadershipLost
// and committed says the write did not take effect (three times in all).
func (n *Node) settle(ctx context.Context, t CommandType, submit func() error, committed func(*State) bool) error {
	for try := 1; ; try++ {
		err := submit()
		if !errors.Is(err, errLeadershipLost) || try == 3 {
			return err
		}
		if lerr := n.linearizable(ctx); lerr != nil {
			return err
		}
		if committed(n.fsm.State()) {
			n.log.Warn("a write left in doubt by a leadership change was committed", "command", t.String())
			return nil
		}
		n.log.Warn("a write lost to a leadership change: submitting it again", "command", t.String())
	}
}

// submitOnce makes one attempt. verdict is the state machine's answer to
// a committed command; err is raft's or the transport's, and wraps
// ErrNotLeader or ErrNoLeader only when nothing was written.
func (n *Node) submitOnce(ctx context.Context, t CommandType, b []byte) (index uint64, verdict, err error) {
	if n.raft.State() == raft.Leader {
		return n.applyLocal(ctx, t, b)
	}
	_, leader := n.raft.LeaderWithID()
	if leader == "" {
		return 0, nil, ErrNoLeader
	}
	m, ok := n.fsm.State().Member(string(leader))
	if !ok || m.APIAddr == "" {
		return 0, nil, fmt.Errorf("%w: leader %s has not recorded its API address yet", ErrNoLeader, leader)
	}
	return n.forwardApply(ctx, m.APIAddr, b)
}

// submitHere commits a command on this node, which must lead, and
// waits until the state has applied it: what a leader decided under its
// own locks (addMember, raiseLevel) is not carried out by another leader
// that did not decide it (submit would forward it there).
func (n *Node) submitHere(ctx context.Context, t CommandType, req any) error {
	b, err := encodeCommand(t, req)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, applyTimeout)
	defer cancel()
	idx, verdict, err := n.applyLocal(ctx, t, b)
	if err != nil {
		return err
	}
	if err := n.fsm.State().waitIndex(ctx, idx); err != nil {
		return err
	}
	return verdict
}

// applyLocal applies on this node, which must lead.
func (n *Node) applyLocal(ctx context.Context, t CommandType, b []byte) (uint64, error, error) {
	if err := n.checkLevel(t); err != nil {
		return 0, nil, err
	}
	n.applyGate.RLock()
	defer n.applyGate.RUnlock()
	f := n.raft.Apply(b, timeoutOf(ctx))
	if err := f.Error(); err != nil {
		switch {
		case errors.Is(err, raft.ErrNotLeader):
			return 0, nil, ErrNotLeader
		case errors.Is(err, raft.ErrLeadershipLost):
			return 0, nil, fmt.Errorf("raft apply %s: %w", t, errLeadershipLost)
		}
		return 0, nil, fmt.Errorf("raft apply %s: %w", t, err)
	}
	res, ok := f.Response().(ApplyResult)
	if !ok {
		return f.Index(), nil, fmt.Errorf("raft apply %s: unexpected response %T", t, f.Response())
	}
	return res.Index, res.Err, nil
}

// timeoutOf is what raft may take of ctx for a write: what is left of
// ctx, at most applyTimeout.
func timeoutOf(ctx context.Context) time.Duration { return timeoutWithin(ctx, applyTimeout) }

// timeoutWithin is what is left of ctx, at most limit (and at least a
// millisecond: raft takes 0 for no limit).
func timeoutWithin(ctx context.Context, limit time.Duration) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		limit = min(limit, time.Until(d))
	}
	return max(limit, time.Millisecond)
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Ready reports whether the node can serve: a leader is known and the
// overlay plan is in place.
func (n *Node) Ready() error {
	if err := n.hsmErr.Load(); err != nil {
		return fmt.Errorf("HSM token %q cannot sign: %w", n.cfg.HSM.TokenLabel, *err)
	}
	if addr, _ := n.raft.LeaderWithID(); addr == "" {
		return errors.New("no raft leader")
	}
	if !n.caughtUp() {
		return fmt.Errorf("replaying the raft log: applied %d of %d", n.raft.AppliedIndex(), n.bootIndex)
	}
	if !n.fsm.State().Overlay().IsValid() {
		return errors.New("overlay network not initialised yet")
	}
	if len(n.fsm.State().People()) == 0 {
		return errors.New("no people registered yet")
	}
	return nil
}

// Addr returns the address the API listens on.
func (n *Node) Addr() net.Addr { return n.ln.Addr() }

// State exposes the replicated state (read-only use).
func (n *Node) State() *State { return n.fsm.State() }

// Close stops the API, raft and the HSM session, in that order.
func (n *Node) Close() error {
	var errs []error
	if n.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = n.srv.Shutdown(ctx) // streams are long-lived: close what remains
		cancel()
		errs = append(errs, ignoreClosed(n.srv.Close()))
	}
	if n.httpSrv != nil {
		errs = append(errs, ignoreClosed(n.httpSrv.Close()))
	} else if n.httpLn != nil {
		n.httpLn.Close()
	}
	if n.cancel != nil {
		n.cancel()
	}
	n.wg.Wait()
	if n.raft != nil {
		errs = append(errs, n.raft.Shutdown().Error())
	}
	for i := len(n.stores) - 1; i >= 0; i-- {
		errs = append(errs, n.stores[i].Close())
	}
	if n.token != nil {
		errs = append(errs, n.token.Close())
	}
	if p := n.peers.Load(); p != nil {
		p.CloseIdleConnections()
	}
	return errors.Join(errs...)
}

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
