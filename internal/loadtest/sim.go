package loadtest

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/internal/workpool"
	"github.com/govnet/govnet/policy/nft"
)

// workerEnv marks a process started as a worker: it runs simulated
// gateways instead of the harness (see RunWorkerIfChild).
const workerEnv = "GOVNET_LOAD_WORKER"

// workerSpec is what the harness sends a worker on its standard input.
type workerSpec struct {
	IDFile      string        `json:"id_file"`
	From        int           `json:"from"` // the identities [From, To) of the file
	To          int           `json:"to"`
	Root        string        `json:"root"`
	URLs        []string      `json:"urls"` // controller nodes; gateway i starts at URLs[i%len]
	ReportEvery time.Duration `json:"report_every"`
	Stagger     time.Duration `json:"stagger"` // between two gateways' first connections
}

// event is what a worker prints, one JSON line each, after a simulated
// gateway applied a view and the controller acknowledged its report.
type event struct {
	G     string   `json:"g"`
	Index uint64   `json:"i"`
	Ver   uint64   `json:"v"`
	T     int64    `json:"t"` // unix ns, when the report was acknowledged
	R     int64    `json:"r"` // unix ns, when the view arrived
	Add   []string `json:"add,omitempty"`
	Rm    []string `json:"rm,omitempty"`
	First bool     `json:"first,omitempty"` // the gateway's first view
	Err   string   `json:"err,omitempty"`   // a worker-level failure
	// A renewal on the controllers' call: the new certificate's serial,
	// and the new identity (PEM), which the harness writes back to the
	// identities file; T is when the answer came.
	Renewed string `json:"renewed,omitempty"`
	Key     string `json:"key,omitempty"`
	Cert    string `json:"cert,omitempty"`
}

// RunWorkerIfChild runs the simulated gateways and exits when the process
// was started as a harness worker; otherwise it returns at once. Call it
// first in main (and in TestMain).
func RunWorkerIfChild() {
	if os.Getenv(workerEnv) != "1" {
		return
	}
	if os.Getenv("GOVNET_LOAD_PPROF_PORT") != "" { // profiling the harness itself
		if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
			fmt.Fprintf(os.Stderr, "worker %d: runtime profiles on http://%s/debug/pprof/\n", os.Getpid(), ln.Addr())
			go http.Serve(ln, nil) // net/http/pprof registers on the default mux
		}
	}
	code := 0
	if err := runWorker(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		code = 1
	}
	os.Exit(code)
}

// runWorker reads its spec, runs the gateways until stdin closes, and
// writes events to out.
func runWorker(in io.Reader, out io.Writer) error {
	br := bufio.NewReader(in)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("read spec: %w", err)
	}
	var spec workerSpec
	if err := json.Unmarshal(line, &spec); err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	ids, err := loadIdentities(spec.IDFile)
	if err != nil {
		return err
	}
	if spec.From < 0 || spec.To > len(ids) || spec.From >= spec.To {
		return fmt.Errorf("spec: identities [%d, %d) of %d", spec.From, spec.To, len(ids))
	}
	root, err := api.TLSConfig(spec.Root, "", "")
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer cancel()
	// Then commands, one per line, until stdin closes: stop.
	var paused atomic.Bool
	go func() {
		defer cancel()
		sc := bufio.NewScanner(br)
		for sc.Scan() {
			switch sc.Text() {
			case cmdPauseReports:
				paused.Store(true)
			case cmdResumeReports:
				paused.Store(false)
			}
		}
	}()

	em := &emitter{w: bufio.NewWriterSize(out, 1<<16)}
	go em.flushLoop(ctx)
	keys := workpool.Start(ctx, nil, runtime.GOMAXPROCS(0))
	gws := make([]*simGateway, 0, spec.To-spec.From)
	for i := spec.From; i < spec.To; i++ {
		cert, err := tls.X509KeyPair([]byte(ids[i].Cert), []byte(ids[i].Key))
		if err != nil {
			return fmt.Errorf("identity %s: %w", ids[i].ID, err)
		}
		g := &simGateway{id: ids[i].ID, em: em, ctx: ctx, keys: keys}
		g.cur.Store(int32(i % len(spec.URLs)))
		g.cert.Store(&cert)
		cfg := root.Clone()
		// The certificate of the moment, as the agent's files are read
		// at every handshake (a renewal replaces it).
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return g.cert.Load(), nil }
		for _, u := range spec.URLs {
			// A config per client: see Cluster.start.
			c := api.NewClient(u, cfg.Clone())
			c.OnRenewCall(g.renewCalled)
			g.clients = append(g.clients, c)
		}
		gws = append(gws, g)
	}
	var wg sync.WaitGroup
	for i, g := range gws {
		wg.Go(func() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(i) * spec.Stagger):
			}
			g.watchLoop(ctx)
		})
	}
	if spec.ReportEvery > 0 {
		wg.Go(func() { reportLoop(ctx, gws, spec.ReportEvery, &paused) })
	}
	wg.Wait()
	em.flush()
	return nil
}

// emitter writes events; a loop flushes them every 20 ms (the events carry
// their own times, so batching does not change what is measured).
type emitter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (e *emitter) emit(ev event) {
	b, _ := json.Marshal(ev)
	e.mu.Lock()
	e.w.Write(append(b, '\n'))
	e.mu.Unlock()
}

func (e *emitter) flush() {
	e.mu.Lock()
	e.w.Flush()
	e.mu.Unlock()
}

func (e *emitter) flushLoop(ctx context.Context) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			e.flush()
		}
	}
}

// simGateway is one simulated gateway: govnet-agent's watch, apply and
// report steps with the real client, without the kernel.
type simGateway struct {
	id      string
	em      *emitter
	ctx     context.Context
	clients []*api.Client
	cur     atomic.Int32 // the node whose stream the gateway holds or tries

	cert     atomic.Pointer[tls.Certificate]
	renewing atomic.Bool
	keys     *workpool.Pool // makes renewals' keys and CSRs

	mu      sync.Mutex
	applied *api.View
	digest  string
}

// watchLoop holds a stream like the agent's: on a broken stream it moves
// to the next node, resuming from the last applied index, and waits with
// capped, jittered backoff once every node failed in a row.
func (g *simGateway) watchLoop(ctx context.Context) {
	failures, wait := 0, 500*time.Millisecond
	for ctx.Err() == nil {
		err := g.clients[g.cur.Load()].Watch(ctx, g.appliedIndex(), func(v *api.View) error {
			failures, wait = 0, 500*time.Millisecond
			return g.apply(ctx, v)
		})
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, api.ErrConnectionsReset) {
			continue // a renewal: the same node, the new certificate
		}
		// A refusal (403) is retried too, as the agent does: a stream
		// of a certificate just renewed over HTTPS is refused until the
		// new one is presented.
		g.cur.Store((g.cur.Load() + 1) % int32(len(g.clients)))
		if failures++; failures >= len(g.clients) {
			failures = 0
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait/2 + rand.N(wait/2)):
			}
			wait = min(2*wait, 10*time.Second)
		}
	}
}

func (g *simGateway) appliedIndex() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.applied == nil {
		return 0
	}
	return g.applied.RaftIndex
}

// apply records the view as applied (what the kernel would hold), reports
// it as the agent does and emits the acknowledged event.
func (g *simGateway) apply(ctx context.Context, v *api.View) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if v.Gateway != g.id {
		return fmt.Errorf("view for gateway %q sent to %q", v.Gateway, g.id)
	}
	if g.applied != nil && v.RaftIndex <= g.applied.RaftIndex {
		return nil
	}
	ev := event{G: g.id, Index: v.RaftIndex, Ver: v.PolicyVersion, First: g.applied == nil, R: time.Now().UnixNano()}
	if g.applied != nil {
		ev.Add, ev.Rm = peerDiff(g.applied.Peers, v.Peers)
	}
	// The agent reports the digest of the table it read back from the
	// kernel; the simulation reports the one the rules compile to.
	d, err := nft.ExpectedDigest(v.Rules, v.LANs)
	if err != nil && !errors.Is(err, nft.ErrUnsupportedRule) {
		return err
	}
	g.applied, g.digest = v, d
	// The agent retries a failed report on its next reconcile tick; the
	// simulation retries after a second, so that the acknowledgement it
	// times is never lost to a leader change.
	for try := 0; ; try++ {
		err := g.report(ctx)
		if err == nil {
			break
		}
		if try == 9 || ctx.Err() != nil {
			ev.Err = "report: " + err.Error()
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	ev.T = time.Now().UnixNano()
	g.em.emit(ev)
	return nil
}

// report sends what is applied; g.mu must be held.
func (g *simGateway) report(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return g.clients[g.cur.Load()].Report(ctx, api.Report{
		PolicyVersion: g.applied.PolicyVersion,
		RaftIndex:     g.applied.RaftIndex,
		RulesetDigest: g.digest,
		Peers:         len(g.applied.Peers),
	})
}

// renewCalled takes the controllers' call to renew, as the agent does:
// after a random part of api.RenewCallSpread, a new key and a renewal on
// the stream, the new certificate presented from then on, the HTTP
// connections reset. It never blocks the stream's reader.
func (g *simGateway) renewCalled(string) {
	if !g.renewing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer g.renewing.Store(false)
		select {
		case <-g.ctx.Done():
			return
		case <-time.After(rand.N(api.RenewCallSpread)):
		}
		ev := event{G: g.id}
		if err := g.renew(g.ctx, &ev); err != nil {
			ev.Err = "renew: " + err.Error()
		}
		ev.T = time.Now().UnixNano()
		g.em.emit(ev)
	}()
}

// renew makes a new key, renews (retrying, as the agent's backoff does)
// and installs the certificate; ev gets the new identity.
func (g *simGateway) renew(ctx context.Context, ev *event) error {
	// The key and CSR are made on the worker's pool (keys), as the agent
	// makes them on its long-lived renewal loop: a goroutine started for
	// one renewal grows its stack, by copying, to the depth encoding/asn1
	// needs, which in a re-issue was a fifth of the simulated gateways'
	// CPU, a cost no gateway pays.
	var key *ecdsa.PrivateKey
	var csr *x509.CertificateRequest
	var err error
	if perr := g.keys.Do(ctx, func() {
		if key, err = ecdsa.GenerateKey(elliptic.P256(), crand.Reader); err == nil {
			csr, err = ca.NewCSR(key, "gateway")
		}
	}); perr != nil {
		return perr
	}
	if err != nil {
		return err
	}
	req := api.RenewRequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}))}
	var resp *api.RenewResponse
	for try := 0; ; try++ {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Minute) // as the agent's renewTimeout
		resp, err = g.clients[g.cur.Load()].Renew(rctx, req)
		cancel()
		if err == nil {
			break
		}
		if try == 9 || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	chain, err := ca.ParsePEM([]byte(resp.Certificate))
	if err != nil {
		return err
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	g.cert.Store(cert)
	for _, c := range g.clients {
		c.ResetConnections()
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	ev.Renewed, ev.Cert = resp.Serial, resp.Certificate
	ev.Key = string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	return nil
}

// Commands the harness sends a worker on its stdin: the periodic reports
// stop while it measures what one change costs the controllers, so that
// the background they add (at 20,000 gateways, most of the controllers'
// idle CPU) does not drown the change's own cost.
const (
	cmdPauseReports  = "pause-reports"
	cmdResumeReports = "resume-reports"
)

// reportLoop refreshes every gateway's report once per period, spread
// evenly, as the agents' reconcile ticks do, unless paused.
func reportLoop(ctx context.Context, gws []*simGateway, every time.Duration, paused *atomic.Bool) {
	step := every / time.Duration(len(gws))
	t := time.NewTicker(max(step, time.Millisecond))
	defer t.Stop()
	sem := make(chan struct{}, 64)
	for i := rand.N(len(gws)); ; i = (i + 1) % len(gws) {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if paused.Load() {
			continue
		}
		g := gws[i]
		select {
		case sem <- struct{}{}:
		default:
			continue // the controllers are behind: skip, as a late tick would
		}
		go func() {
			defer func() { <-sem }()
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.applied != nil {
				g.report(ctx)
			}
		}()
	}
}

// peerDiff returns the gateway ids of the peers in cur and not in old, and
// the other way round; both are sorted by gateway id.
func peerDiff(old, cur []api.Peer) (add, rm []string) {
	i, j := 0, 0
	for i < len(old) || j < len(cur) {
		switch {
		case j == len(cur) || i < len(old) && old[i].Gateway < cur[j].Gateway:
			rm = append(rm, old[i].Gateway)
			i++
		case i == len(old) || cur[j].Gateway < old[i].Gateway:
			add = append(add, cur[j].Gateway)
			j++
		default:
			i++
			j++
		}
	}
	return add, rm
}
