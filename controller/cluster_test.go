package controller

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/hsm/hsmtest"
	"github.com/hashicorp/raft"
)

// childNodeEnv, when set to a config file, makes the test binary run one
// controller node instead of the tests (see TestMain): the fault tests
// start real nodes as separate OS processes, so that kill -9 and SIGSTOP
// hit a whole node.
const childNodeEnv = "GOVNET_TEST_NODE_CONFIG"

// freezeLeaderFile, when a test writes it into a child node's data
// directory, makes that node, if it leads, stop itself (SIGSTOP) as soon
// as it has taken a restored state: a leader lost at the worst moment of
// a restore.
const freezeLeaderFile = "test-freeze-after-restore"

// releaseLevelEnv, when set, is the release level of a child node: one
// that stands for a node of another release (controller/level.go).
const releaseLevelEnv = "GOVNET_TEST_RELEASE_LEVEL"

func runChildNode(path string) int {
	cfg, err := LoadConfig(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if v := os.Getenv(releaseLevelEnv); v != "" {
		if releaseLevel, err = strconv.Atoi(v); err != nil {
			fmt.Fprintln(os.Stderr, releaseLevelEnv+":", err)
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	n, err := Start(ctx, cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "start:", err)
		return 1
	}
	freeze := func() { // once, when the test asks for it
		if n.raft.State() == raft.Leader && os.Remove(filepath.Join(cfg.DataDir, freezeLeaderFile)) == nil {
			fmt.Fprintln(os.Stderr, "test: the leader stops itself after applying a restore")
			syscall.Kill(os.Getpid(), syscall.SIGSTOP)
		}
	}
	n.fsm.restored.Store(&freeze)
	<-ctx.Done()
	if err := n.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "close:", err)
		return 1
	}
	return 0
}

// Short timeouts so that a failover takes well under a second even on a
// loaded two-core machine with the race detector on.
var testRaft = RaftConfig{HeartbeatTimeout: 200 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond, LeaderLeaseTimeout: 100 * time.Millisecond}

type procNode struct {
	name    string
	cfg     Config
	cfgPath string
	logPath string
	env     []string // added to the test's environment at the next start

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *procNode) start(t *testing.T) {
	t.Helper()
	logf, err := os.OpenFile(p.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childNodeEnv+"="+p.cfgPath), p.env...) // SOFTHSM2_CONF is inherited
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the test process dies, so do its nodes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
}

func (p *procNode) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *procNode) signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Signal(sig)
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *procNode) kill() {
	p.signal(syscall.SIGKILL)
	p.wait(10 * time.Second)
}

// stop asks the node to shut down and waits, killing it after a bound.
func (p *procNode) stop() {
	p.signal(syscall.SIGCONT)
	p.signal(syscall.SIGTERM)
	if !p.wait(10 * time.Second) {
		p.kill()
	}
}

func (p *procNode) wait(d time.Duration) bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

type testCluster struct {
	t     testing.TB
	nodes []*procNode
	op    []*api.Client // operator1, one client per node
	off   []*api.Client // officer1
}

// newTestCluster initialises n nodes, each with its own SoftHSM2 token
// and its own intermediate signed by the root in the first node's token,
// on 127.0.0.11, .12, ...; it starts nothing.
func newTestCluster(t testing.TB, count int, opts ...func(*Config)) *testCluster {
	t.Helper()
	hsmtest.Require(t)
	dir := t.TempDir()
	ctx := context.Background()
	c := &testCluster{t: t}
	var first Config
	for i := range count {
		hc := hsmtest.NewToken(t)
		name := fmt.Sprintf("ctl%d", i+1)
		pinFile := filepath.Join(dir, name+".pin")
		if err := os.WriteFile(pinFile, []byte(hc.PIN+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		ip := fmt.Sprintf("127.0.0.%d", 11+i)
		cfg := Config{
			Node: name, DataDir: filepath.Join(dir, name), RaftAddr: freePortOn(t, ip), APIAddr: freePortOn(t, ip), HTTPAddr: freePortOn(t, ip),
			OverlayPrefix: "100.64.0.0/16",
			HSM:           HSMConfig{Module: hc.Module, TokenLabel: hc.TokenLabel, PINFile: pinFile},
			Raft:          testRaft,
		}
		for _, o := range opts {
			o(&cfg)
		}
		now := time.Now()
		if i == 0 {
			err := Init(ctx, InitOptions{Config: cfg, People: []Person{{"operator1", ca.RoleOperator}, {"officer1", ca.RoleOfficer}},
				PeopleDir: filepath.Join(dir, "people"), Now: now})
			if err != nil {
				t.Fatal(err)
			}
			first = cfg
		} else {
			csr, err := PrepareJoin(ctx, InitOptions{Config: cfg})
			if err != nil {
				t.Fatal(err)
			}
			bundle, err := SignIntermediate(ctx, first, csr, now)
			if err != nil {
				t.Fatal(err)
			}
			if err := FinishJoin(ctx, cfg, bundle, now); err != nil {
				t.Fatal(err)
			}
		}
		if i == count-1 && i > 0 {
			cfg.Join = []string{first.APIAddr} // the last node asks to be added; the others are added by an operator
		}
		p := &procNode{name: name, cfg: cfg, cfgPath: filepath.Join(dir, name+".yaml"), logPath: filepath.Join(dir, name+".log")}
		if err := WriteConfig(p.cfgPath, cfg); err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, p)
		mk := func(who string) *api.Client {
			tc, err := api.TLSConfig(first.pkiPath(rootFile), filepath.Join(dir, "people", who+".crt"), filepath.Join(dir, "people", who+".key"))
			if err != nil {
				t.Fatal(err)
			}
			return api.NewClient("https://"+cfg.APIAddr, tc)
		}
		c.op, c.off = append(c.op, mk("operator1")), append(c.off, mk("officer1"))
	}
	t.Cleanup(func() {
		for _, p := range c.nodes {
			p.kill()
		}
		if t.Failed() {
			for _, p := range c.nodes {
				b, _ := os.ReadFile(p.logPath)
				if len(b) > 4000 {
					b = b[len(b)-4000:]
				}
				t.Logf("--- %s log (tail):\n%s", p.name, b)
			}
		}
	})
	return c
}

// freePortOn returns ip:port for a port free now, which the test binds
// later (after an Init, or in another process). The port is chosen below
// the kernel's ephemeral range (32768 and up by default), so that an
// outgoing connection of this or a parallel test package does not take it
// meanwhile (it did: "bind: address already in use"), and never twice in
// this process.
func freePortOn(t testing.TB, ip string) string {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		if handedOut.ports[port] {
			continue
		}
		addr := net.JoinHostPort(ip, strconv.Itoa(port))
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			handedOut.ports[port] = true
			return addr
		}
	}
	t.Fatalf("no free port on %s", ip)
	return ""
}

var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// waitFor polls cond until it returns nil, failing the test after d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", d, what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *testCluster) status(i int) (*api.ClusterStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return c.op[i].ClusterStatus(ctx)
}

// leader returns the index of the node that says it leads, among running ones.
func (c *testCluster) leader(except ...int) (int, error) {
	for i, p := range c.nodes {
		if slices.Contains(except, i) || !p.running() {
			continue
		}
		if st, err := c.status(i); err == nil && st.State == "Leader" && st.Ready {
			return i, nil
		}
	}
	return -1, errors.New("no leader")
}

// startThree starts a cluster of three nodes as an installer would: the
// first, then ctl2 added by an operator and ctl3 asking to join.
func (c *testCluster) startThree(t *testing.T) {
	t.Helper()
	began := time.Now()
	c.nodes[0].start(t)
	waitFor(t, 30*time.Second, "the first node to be ready", func() error {
		st, err := c.status(0)
		if err == nil && !st.Ready {
			err = errors.New(st.NotReady)
		}
		return err
	})
	c.nodes[1].start(t)
	c.nodes[2].start(t) // asks ctl1 to add it (join key)
	waitFor(t, 30*time.Second, "an operator to add ctl2", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n := c.nodes[1].cfg
		_, err := c.op[0].JoinNode(ctx, api.JoinRequest{Node: n.Node, RaftAddr: n.RaftAddr, APIAddr: n.APIAddr})
		return err
	})
	c.waitHealthy(30 * time.Second)
	t.Logf("3-node cluster up in %s", time.Since(began).Round(time.Millisecond))
}

// nodeClient is a client of node to that presents node from's certificate
// (its key from its token: from must not be running).
func (c *testCluster) nodeClient(t *testing.T, from, to int) *api.Client {
	t.Helper()
	cfg := c.nodes[from].cfg
	hc, err := cfg.hsmConfig()
	if err != nil {
		t.Fatal(err)
	}
	tok, err := hsm.Open(hc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	key, err := tok.Signer(TLSKeyLabel(cfg.Node))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := readCert(cfg.pkiPath(nodeFile))
	if err != nil {
		t.Fatal(err)
	}
	inter, err := readCert(cfg.pkiPath(intermediateFile))
	if err != nil {
		t.Fatal(err)
	}
	tc, err := api.TLSConfig(cfg.pkiPath(rootFile), "", "")
	if err != nil {
		t.Fatal(err)
	}
	tc.Certificates = []tls.Certificate{{Certificate: [][]byte{leaf.Raw, inter.Raw}, PrivateKey: key}}
	return api.NewClient("https://"+c.nodes[to].cfg.APIAddr, tc)
}

// waitHealthy waits until every node is ready and sees all nodes as voters.
func (c *testCluster) waitHealthy(d time.Duration) {
	c.t.Helper()
	waitFor(c.t, d, "a healthy cluster of every node", func() error {
		for i := range c.nodes {
			st, err := c.status(i)
			if err != nil {
				return err
			}
			if !st.Ready {
				return fmt.Errorf("%s: %s", st.Node, st.NotReady)
			}
			voters := 0
			for _, m := range st.Members {
				if m.Suffrage == "voter" && m.APIAddr != "" {
					voters++
				}
			}
			if voters != len(c.nodes) {
				return fmt.Errorf("%s sees %d voters: %+v", st.Node, voters, st.Members)
			}
		}
		return nil
	})
}

// The workload: clients write and read three registers (agency names)
// and add uniquely named gateways, each request to a random node. The
// register operations form the history checked for linearizability;
// every acknowledged gateway must survive everything.

var registerKeys = []string{"000.00.00.H01", "000.00.00.H02", "000.00.00.H03"}

type kvInput struct {
	Write      bool
	Key, Value string
}

type kvOutput struct {
	Value   string
	Unknown bool // the write's outcome is unknown: it may have happened
}

var kvModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		for _, op := range h {
			k := op.Input.(kvInput).Key
			by[k] = append(by[k], op)
		}
		var out [][]porcupine.Operation
		for _, ops := range by {
			out = append(out, ops)
		}
		return out
	},
	Init: func() any { return "v0" }, // the seed written before the history starts
	Step: func(state, input, output any) (bool, any) {
		in, out := input.(kvInput), output.(kvOutput)
		if in.Write {
			return true, in.Value // unknown writes linearize at any point after their call, up to "never"
		}
		return out.Value == state.(string), state
	},
	Equal: func(a, b any) bool { return a == b },
	DescribeOperation: func(input, output any) string {
		in, out := input.(kvInput), output.(kvOutput)
		if in.Write {
			return fmt.Sprintf("put(%s, %s) unknown=%v", in.Key, in.Value, out.Unknown)
		}
		return fmt.Sprintf("get(%s) -> %s", in.Key, out.Value)
	},
}

type workload struct {
	c     *testCluster
	start time.Time

	mu      sync.Mutex
	history []porcupine.Operation
	acked   map[string]bool // gateways whose add was acknowledged
	seq     atomic.Int64
	nAcked  atomic.Int64 // acknowledged writes of either kind
}

func newWorkload(c *testCluster) *workload {
	return &workload{c: c, start: time.Now(), acked: map[string]bool{}}
}

func (w *workload) now() int64 { return time.Since(w.start).Nanoseconds() }

func (w *workload) record(op porcupine.Operation) {
	w.mu.Lock()
	w.history = append(w.history, op)
	w.mu.Unlock()
}

func (w *workload) acknowledged() { w.nAcked.Add(1) }

// definitelyNotDone says whether a failed request cannot have changed anything.
func definitelyNotDone(err error) bool {
	var se *api.StatusError
	return errors.Is(err, syscall.ECONNREFUSED) || errors.As(err, &se) && se.Code/100 == 4
}

// run drives one client until ctx ends.
func (w *workload) run(ctx context.Context, client int) {
	rng := rand.New(rand.NewPCG(uint64(client), uint64(time.Now().UnixNano())))
	for ctx.Err() == nil {
		i := rng.IntN(len(w.c.nodes))
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		w.one(rctx, client, i, rng.IntN(100), rng.IntN(len(registerKeys)))
		cancel()
	}
}

func (w *workload) one(ctx context.Context, client, node, dice, k int) {
	key := registerKeys[k]
	switch {
	case dice < 45: // write a register
		val := fmt.Sprintf("v%d-%d", client, w.seq.Add(1))
		call := w.now()
		_, err := w.c.op[node].AddAgency(ctx, api.Agency{Code: key, Name: val})
		ret := w.now()
		switch {
		case err == nil:
			w.acknowledged()
			w.record(porcupine.Operation{ClientId: client, Input: kvInput{Write: true, Key: key, Value: val}, Call: call, Output: kvOutput{}, Return: ret})
		case definitelyNotDone(err):
		default:
			w.record(porcupine.Operation{ClientId: client, Input: kvInput{Write: true, Key: key, Value: val}, Call: call, Output: kvOutput{Unknown: true}, Return: math.MaxInt64})
		}
	case dice < 80: // read a register, linearizably, from whichever node
		call := w.now()
		ags, err := w.c.op[node].Linearizable().Agencies(ctx)
		ret := w.now()
		if err != nil {
			return // a failed read tells nothing
		}
		val := ""
		for _, a := range ags {
			if a.Code == key {
				val = a.Name
			}
		}
		w.record(porcupine.Operation{ClientId: client, Input: kvInput{Key: key}, Call: call, Output: kvOutput{Value: val}, Return: ret})
	default: // add a gateway: once acknowledged it must never be lost
		id := fmt.Sprintf("g%d-%d", client, w.seq.Add(1))
		_, err := w.c.op[node].AddGateway(ctx, api.Gateway{ID: id, Agency: registerKeys[0]})
		if err == nil {
			w.acknowledged()
			w.mu.Lock()
			w.acked[id] = true
			w.mu.Unlock()
		}
	}
}

// drive runs clients until stop is called.
func (w *workload) drive(clients int) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() { defer wg.Done(); w.run(ctx, i) }()
	}
	return func() { cancel(); wg.Wait() }
}

func (w *workload) waitAcked(t *testing.T, more int64, d time.Duration, what string) {
	t.Helper()
	target := w.nAcked.Load() + more
	waitFor(t, d, what, func() error {
		if n := w.nAcked.Load(); n < target {
			return fmt.Errorf("%d of %d acknowledged writes", n, target)
		}
		return nil
	})
}

// checkDurable reads every node, linearizably, and checks that every
// acknowledged gateway is there.
func (w *workload) checkDurable(t *testing.T, nodes ...int) {
	t.Helper()
	w.mu.Lock()
	acked := maps2slice(w.acked)
	w.mu.Unlock()
	for _, i := range nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		gws, err := w.c.op[i].Linearizable().Gateways(ctx)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", w.c.nodes[i].name, err)
		}
		have := map[string]bool{}
		for _, g := range gws {
			have[g.ID] = true
		}
		for _, id := range acked {
			if !have[id] {
				t.Fatalf("%s lost acknowledged gateway %s", w.c.nodes[i].name, id)
			}
		}
	}
}

func maps2slice(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (w *workload) checkLinearizable(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	h := slices.Clone(w.history)
	w.mu.Unlock()
	res, info := porcupine.CheckOperationsVerbose(kvModel, h, 60*time.Second)
	if res != porcupine.Ok {
		path := filepath.Join(os.TempDir(), "govnet-linearizability.html")
		if f, err := os.Create(path); err == nil {
			porcupine.Visualize(kvModel, info, f)
			f.Close()
		}
		t.Fatalf("history of %d register operations is %v (not linearizable); visualization in %s", len(h), res, path)
	}
	t.Logf("history of %d register operations is linearizable", len(h))
}

// registry returns a node's agencies and gateways as JSON, read linearizably.
func (c *testCluster) registry(t *testing.T, i int) string {
	t.Helper()
	return c.registryBut(t, i, "")
}

// registryBut is registry without the gateway skip if it is
// decommissioned.
func (c *testCluster) registryBut(t *testing.T, i int, skip string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := c.op[i].Linearizable()
	ags, err := cl.Agencies(ctx)
	if err != nil {
		t.Fatalf("%s: %v", c.nodes[i].name, err)
	}
	gws, err := cl.Gateways(ctx)
	if err != nil {
		t.Fatalf("%s: %v", c.nodes[i].name, err)
	}
	gws = slices.DeleteFunc(gws, func(g api.Gateway) bool { // kept, so the registry differs, unless decommissioned
		return g.ID == skip && g.Status == api.StatusDecommissioned
	})
	b, _ := json.Marshal(struct {
		A []api.Agency
		G []api.Gateway
	}{ags, gws})
	return string(b)
}

// TestClusterFaults runs a 3-node cluster of real processes through a
// leader crash, a full restart, a paused (partitioned) leader, a backup
// and restore and a removal, under a stream of writes and linearizable
// reads whose history is checked with porcupine.
func TestClusterFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster of processes")
	}
	began := time.Now()
	c := newTestCluster(t, 3)
	c.startThree(t)

	// Seed the registers' agencies through a follower: the write is forwarded.
	ldr, err := c.leader()
	if err != nil {
		t.Fatal(err)
	}
	follower := (ldr + 1) % 3
	for _, k := range registerKeys {
		if _, err := c.op[follower].AddAgency(context.Background(), api.Agency{Code: k, Name: "v0"}); err != nil {
			t.Fatalf("write through follower %s: %v", c.nodes[follower].name, err)
		}
	}
	// A state machine refusal crosses the forward intact.
	_, err = c.op[follower].AddAgency(context.Background(), api.Agency{Code: "000.00.07.H09", Name: "x"})
	wantStatus(t, err, 400, "parent agency")

	w := newWorkload(c)

	t.Run("kill -9 the leader", func(t *testing.T) {
		stop := w.drive(3)
		defer stop()
		w.waitAcked(t, 20, 30*time.Second, "writes before the crash")
		ldr, err := c.leader()
		if err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		c.nodes[ldr].kill()
		waitFor(t, 15*time.Second, "a new leader", func() error { _, err := c.leader(ldr); return err })
		t.Logf("killed leader %s; a new leader was ready %s later", c.nodes[ldr].name, time.Since(killed).Round(time.Millisecond))
		w.waitAcked(t, 20, 30*time.Second, "writes on the new leader")
		c.nodes[ldr].start(t)
		c.waitHealthy(30 * time.Second)
		stop()
		w.checkDurable(t, 0, 1, 2)
	})
	if t.Failed() {
		return
	}

	t.Run("restart every node", func(t *testing.T) {
		before := c.registry(t, 0)
		for _, p := range c.nodes {
			p.kill() // no graceful shutdown: everything acknowledged is on disk
		}
		for _, p := range c.nodes {
			p.start(t)
		}
		c.waitHealthy(30 * time.Second)
		for i := range c.nodes {
			if after := c.registry(t, i); after != before {
				t.Fatalf("%s after restart:\n%s\nbefore:\n%s", c.nodes[i].name, after, before)
			}
		}
		w.checkDurable(t, 0, 1, 2)
	})
	if t.Failed() {
		return
	}

	t.Run("partitioned leader", func(t *testing.T) {
		stop := w.drive(3)
		defer stop()
		w.waitAcked(t, 10, 30*time.Second, "writes before the pause")
		old, err := c.leader()
		if err != nil {
			t.Fatal(err)
		}
		c.nodes[old].signal(syscall.SIGSTOP) // cut off: it neither hears nor speaks
		waitFor(t, 15*time.Second, "a new leader among the others", func() error {
			nl, err := c.leader(old)
			if err == nil && nl == old {
				err = errors.New("old leader")
			}
			return err
		})
		w.waitAcked(t, 10, 30*time.Second, "writes while the old leader is paused")
		c.nodes[old].signal(syscall.SIGCONT)
		// The old leader still believes it leads for a moment: a write sent
		// to it now must not be acknowledged unless the majority committed
		// it, and its reads must not be stale. Both go into the history.
		for range 5 {
			w.one(context.Background(), 9, old, 0, 0)  // write
			w.one(context.Background(), 9, old, 50, 0) // linearizable read
		}
		w.waitAcked(t, 10, 30*time.Second, "writes after the old leader is back")
		stop()
		w.checkDurable(t, 0, 1, 2)
	})
	if t.Failed() {
		return
	}
	w.checkLinearizable(t)

	t.Run("snapshot save and restore", func(t *testing.T) {
		ldr, err := c.leader()
		if err != nil {
			t.Fatal(err)
		}
		f := (ldr + 1) % 3
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var backup bytes.Buffer
		if err := c.op[f].SaveSnapshot(ctx, &backup); err != nil {
			t.Fatal(err)
		}
		saved := c.registry(t, f)
		if _, err := c.op[f].AddGateway(ctx, api.Gateway{ID: "after-backup", Agency: registerKeys[0]}); err != nil {
			t.Fatal(err)
		}
		var before []api.AuditEntry // the history a restore must keep
		if err := c.off[f].AuditExport(ctx, 0, func(e api.AuditEntry) error { before = append(before, e); return nil }); err != nil {
			t.Fatal(err)
		}
		_, err = c.op[f].RestoreSnapshot(ctx, bytes.NewReader(backup.Bytes()))
		wantStatus(t, err, 403, "officer")
		_, err = c.off[f].RestoreSnapshot(ctx, strings.NewReader("not a snapshot"))
		wantStatus(t, err, 400, "does not end with a signature line")
		if _, err := c.off[f].RestoreSnapshot(ctx, bytes.NewReader(backup.Bytes())); err != nil {
			t.Fatal(err)
		}
		for i := range c.nodes {
			waitFor(t, 15*time.Second, c.nodes[i].name+" to hold the restored state", func() error {
				// The gateway registered after the backup is
				// decommissioned; the rest is the backup's.
				if got := c.registryBut(t, i, "after-backup"); got != saved {
					return errors.New("state differs from the backup")
				}
				return nil
			})
		}
		if _, err := c.op[f].AddGateway(ctx, api.Gateway{ID: "after-restore", Agency: registerKeys[0]}); err != nil {
			t.Fatal(err)
		}
		// Every node keeps the audit chain it had, the registration the
		// restore undid included, with the restore's entry after it (the
		// chain in its own file, controller/auditlog.go), and extends it
		// alike: the same entries everywhere, an intact chain, ending with
		// the restore's record and the write after it.
		var first []api.AuditEntry
		for i := range c.nodes {
			waitFor(t, 15*time.Second, c.nodes[i].name+"'s audit chain to hold the write after the restore", func() error {
				var chain []api.AuditEntry
				if err := c.off[i].AuditExport(ctx, 0, func(e api.AuditEntry) error { chain = append(chain, e); return nil }); err != nil {
					return err
				}
				if err := api.VerifyAudit(chain); err != nil {
					return err
				}
				if n := len(chain); n < 2 || chain[n-2].Action != ActionRestore || chain[n-2].Actor != "officer1" || chain[n-1].Object != "after-restore" {
					return fmt.Errorf("chain of %d entries does not end with the restore and the gateway after it", n)
				}
				if len(chain) < len(before) || !slices.Equal(chain[:len(before)], before) {
					return fmt.Errorf("the chain before the restore (%d entries) was not kept", len(before))
				}
				if first == nil {
					first = chain
				} else if !slices.Equal(chain, first) {
					return fmt.Errorf("chain of %d entries differs from %s's (%d)", len(chain), c.nodes[0].name, len(first))
				}
				return nil
			})
		}
	})

	t.Run("remove a node", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		ldr, err := c.leader()
		if err != nil {
			t.Fatal(err)
		}
		gone := (ldr + 2) % 3
		st, err := c.op[(ldr+1)%3].RemoveNode(ctx, c.nodes[gone].name)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range st.Members {
			if m.Node == c.nodes[gone].name {
				t.Fatalf("removed node still listed: %+v", st.Members)
			}
		}
		c.nodes[gone].kill()
		if _, err := c.op[ldr].AddGateway(ctx, api.Gateway{ID: "after-remove", Agency: registerKeys[0]}); err != nil {
			t.Fatal(err)
		}
		// Its certificate is still valid, but a removed node does not
		// add itself back: an operator does.
		removed := c.nodes[gone].cfg
		_, err = c.nodeClient(t, gone, ldr).JoinNode(ctx, api.JoinRequest{Node: removed.Node, RaftAddr: removed.RaftAddr, APIAddr: removed.APIAddr})
		wantStatus(t, err, 403, "only an operator adds it back")
	})
	t.Logf("fault run took %s", time.Since(began).Round(time.Millisecond))
}

// TestKVModelCatchesStaleRead makes sure the checker used above can fail:
// a read that misses an acknowledged write is not linearizable.
func TestKVModelCatchesStaleRead(t *testing.T) {
	h := []porcupine.Operation{
		{ClientId: 0, Input: kvInput{Write: true, Key: "k", Value: "v1"}, Call: 0, Output: kvOutput{}, Return: 10},
		{ClientId: 1, Input: kvInput{Key: "k"}, Call: 20, Output: kvOutput{Value: "v0"}, Return: 30},
	}
	if got := porcupine.CheckOperations(kvModel, h); got {
		t.Fatal("a stale read passed the linearizability check")
	}
	h[1].Output = kvOutput{Value: "v1"}
	if got := porcupine.CheckOperations(kvModel, h); !got {
		t.Fatal("a fresh read failed the linearizability check")
	}
}
