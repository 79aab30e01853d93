package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/hsm"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
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
	tls   tls.Certificate
	roots *x509.CertPool

	raft   *raft.Raft
	fsm    *FSM
	hub    *viewHub
	stores []io.Closer

	ln     net.Listener
	srv    *http.Server
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start opens the HSM, loads the CA, starts raft (bootstrapping a
// single-node cluster on first start) and serves the API. It returns once
// the API is listening.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (n *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	n = &Node{cfg: cfg, log: log, now: time.Now}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if err := n.openCA(); err != nil {
		return nil, err
	}
	if err := n.startRaft(); err != nil {
		return nil, err
	}
	ctx, n.cancel = context.WithCancel(context.Background())
	n.wg.Add(2)
	go func() { defer n.wg.Done(); n.hub.run(ctx) }()
	go func() { defer n.wg.Done(); n.initNetwork(ctx) }()
	if err := n.serve(); err != nil {
		return nil, err
	}
	return n, nil
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
	tlsKey, err := n.token.Signer(TLSKeyLabel(n.cfg.Node))
	if err != nil {
		return err
	}
	if n.ca, err = ca.New(root, inter, interKey); err != nil {
		return err
	}
	n.tls = tls.Certificate{Certificate: [][]byte{node.Raw, inter.Raw}, PrivateKey: tlsKey, Leaf: node}
	n.roots = x509.NewCertPool()
	n.roots.AddCert(root)
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

func (n *Node) startRaft() error {
	dir := filepath.Join(n.cfg.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.Node)
	// Tuned for a LAN of controllers (see docs): leader loss is noticed in
	// about 0.5 s instead of 1-2 s.
	rc.HeartbeatTimeout = 500 * time.Millisecond
	rc.ElectionTimeout = 500 * time.Millisecond
	rc.LeaderLeaseTimeout = 250 * time.Millisecond
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: os.Stderr})

	store, err := raftboltdb.NewBoltStore(filepath.Join(dir, "raft.db"))
	if err != nil {
		return fmt.Errorf("raft log store: %w", err)
	}
	n.stores = append(n.stores, store)
	snaps, err := raft.NewFileSnapshotStore(dir, 3, os.Stderr)
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
	trans, err := raft.NewTCPTransport(n.cfg.RaftAddr, addr, 3, 10*time.Second, os.Stderr)
	if err != nil {
		return fmt.Errorf("raft transport: %w", err)
	}
	n.stores = append(n.stores, closerFunc(trans.Close))

	var hub *viewHub
	n.fsm = NewFSM(n.log, func(uint64, CommandType) { hub.changed() })
	hub = newViewHub(n.fsm.State(), n.log)
	n.hub = hub

	existing, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return fmt.Errorf("raft state: %w", err)
	}
	if !existing {
		boot := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: trans.LocalAddr()}}}
		if err := raft.BootstrapCluster(rc, store, store, snaps, trans, boot); err != nil {
			return fmt.Errorf("bootstrap raft: %w", err)
		}
		n.log.Info("bootstrapped a new cluster", "node", n.cfg.Node)
	}
	if n.raft, err = raft.NewRaft(rc, n.fsm, store, store, snaps, trans); err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	return nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// initNetwork records the overlay plan once a leader exists.
func (n *Node) initNetwork(ctx context.Context) {
	prefix := netip.MustParsePrefix(n.cfg.OverlayPrefix)
	for ctx.Err() == nil {
		if n.fsm.State().Overlay().IsValid() {
			return
		}
		if n.raft.State() == raft.Leader {
			_, err := n.submit(ctx, CmdInitNetwork, &InitNetworkRequest{Meta: n.meta("node:" + n.cfg.Node), OverlayPrefix: prefix})
			if err == nil {
				return
			}
			n.log.Error("init network", "err", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (n *Node) meta(actor string) Meta { return Meta{Actor: actor, At: n.now().UTC()} }

// submit commits a command through raft and returns its index and the
// state machine's verdict. Raft's own errors and ErrNotLeader are wrapped
// apart from the state machine's.
func (n *Node) submit(ctx context.Context, t CommandType, req any) (uint64, error) {
	b, err := encodeCommand(t, req)
	if err != nil {
		return 0, err
	}
	if n.raft.State() != raft.Leader {
		return 0, ErrNotLeader
	}
	timeout := applyTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	f := n.raft.Apply(b, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return 0, ErrNotLeader
		}
		return 0, fmt.Errorf("raft apply %s: %w", t, err)
	}
	res, ok := f.Response().(ApplyResult)
	if !ok {
		return f.Index(), fmt.Errorf("raft apply %s: unexpected response %T", t, f.Response())
	}
	return res.Index, res.Err
}

// Ready reports whether the node can serve: a leader is known and the
// overlay plan is in place.
func (n *Node) Ready() error {
	if addr, _ := n.raft.LeaderWithID(); addr == "" {
		return errors.New("no raft leader")
	}
	if !n.fsm.State().Overlay().IsValid() {
		return errors.New("overlay network not initialised yet")
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
	return errors.Join(errs...)
}

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
