package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Issuance through the controller (issue 3's benchmark): certificates per
// second end to end through the API with each issuance recorded in raft,
// and the wall time to re-issue the whole network's 20,000 gateway
// certificates with the records batched.

// TestCertRecorderBatches records from many goroutines at once through a
// real state machine: records that arrive while a batch commits go
// together in the next command, and a bad record fails alone.
func TestCertRecorderBatches(t *testing.T) {
	f := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	var (
		mu      sync.Mutex
		index   uint64
		batches []int
	)
	// The first commit of each round signals that it started and waits
	// for the gate, so that the other records queue meanwhile.
	entered, gate := make(chan struct{}), make(chan struct{})
	r := &certRecorder{commit: func(_ context.Context, certs []api.Certificate) error {
		if len(batches) == 0 {
			entered <- struct{}{}
			<-gate
		}
		mu.Lock()
		defer mu.Unlock()
		index++
		batches = append(batches, len(certs))
		return applyCmd(t, f, index, CmdCertRecord, &CertRecordRequest{Meta: meta("node:ctl1"), Certs: certs})
	}}
	rec := func(serial string) api.Certificate {
		return api.Certificate{Serial: serial, Kind: ca.KindGateway, Subject: "gw" + serial, Gateway: "gw" + serial,
			Agency: "000.00.00.H29", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(24 * time.Hour)}
	}
	ctx := context.Background()
	first := make(chan error, 1)
	go func() { first <- r.Record(ctx, rec("1")) }()
	<-entered
	const more = 100
	errs := make(chan error, more)
	for i := range more {
		serial := fmt.Sprintf("%x", 0x100+i)
		if i == 50 {
			serial = "1" // a duplicate of the first: refused alone
		}
		go func() { errs <- r.Record(ctx, rec(serial)) }()
	}
	waitUntil(t, 5*time.Second, "the others to queue", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.pending) == more
	})
	close(gate)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	var failed []error
	for range more {
		if err := <-errs; err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) != 1 || !isVerdict(failed[0]) {
		t.Fatalf("failures %v, want the duplicate's conflict alone", failed)
	}
	// 1, then the 100 as one refused batch, then halves, the refused one
	// halved again (the duplicate is wherever it arrived): at most two
	// commits for each of the seven halvings down to the duplicate alone.
	if len(batches) > 2+2*7 || batches[0] != 1 || batches[1] != more {
		t.Fatalf("batch sizes %v", batches)
	}
	if got := len(f.State().Certificates(CertFilter{})); got != more {
		t.Fatalf("%d certificates recorded, want %d", got, more)
	}
	// Without a bad record the queue goes as one command.
	batches = nil
	gate = make(chan struct{})
	go func() { first <- r.Record(ctx, rec("2")) }()
	<-entered
	for i := range more {
		go func() { errs <- r.Record(ctx, rec(fmt.Sprintf("%x", 0x1000+i))) }()
	}
	waitUntil(t, 5*time.Second, "the others to queue", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.pending) == more
	})
	close(gate)
	<-first
	for range more {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if len(batches) != 2 || batches[1] != more {
		t.Fatalf("batch sizes %v, want [1 %d]", batches, more)
	}
}

// caNode starts a single controller node in this process (real raft with
// its bbolt log store, one SoftHSM2 token) with the per-client rate limit
// lifted, and returns it with operator and officer clients.
func caNode(b testing.TB) (*Node, *testCluster) {
	c := newTestCluster(b, 1)
	cfg := c.nodes[0].cfg
	cfg.RateLimit = 1e9
	n, err := Start(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { n.Close() })
	waitFor(b, 30*time.Second, "the node to be ready", n.Ready)
	return n, c
}

// renewer is a gateway agent renewing its certificate: its key, and a
// client presenting its current certificate.
type renewer struct {
	key    *ecdsa.PrivateKey
	csr    string
	cert   atomic.Pointer[tls.Certificate]
	client *api.Client
}

// enrollRenewers registers count gateways and enrolls them as an agent
// would: token from an officer, key and CSR made here.
func enrollRenewers(b testing.TB, n *Node, c *testCluster, count int) []*renewer {
	ctx := context.Background()
	op, off := c.op[0], c.off[0]
	if _, err := op.AddAgency(ctx, api.Agency{Code: "000.00.00.H29", Name: "Quảng Ninh"}); err != nil {
		b.Fatal(err)
	}
	base := "https://" + n.Addr().String()
	anon := api.NewClient(base, tlsConfig(b, n))
	out := make([]*renewer, count)
	for i := range out {
		id := fmt.Sprintf("gw%d", i+1)
		if _, err := op.AddGateway(ctx, api.Gateway{ID: id, Agency: "000.00.00.H29"}); err != nil {
			b.Fatal(err)
		}
		tok, err := off.IssueToken(ctx, id, time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, err := ca.NewCSR(key, id)
		if err != nil {
			b.Fatal(err)
		}
		r := &renewer{key: key, csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}))}
		wg, _ := wgtypes.GeneratePrivateKey()
		resp, err := anon.Enroll(ctx, api.EnrollRequest{Token: tok.Token, CSR: r.csr, PublicKey: wg.PublicKey().String()})
		if err != nil {
			b.Fatal(err)
		}
		if err := r.use(resp.Certificate); err != nil {
			b.Fatal(err)
		}
		tc := tlsConfig(b, n)
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return r.cert.Load(), nil }
		r.client = api.NewClient(base, tc)
		out[i] = r
	}
	return out
}

// use makes the client present the chain in pemChain from its next
// connection on, as the agent does after a renewal.
func (r *renewer) use(pemChain string) error {
	chain, err := ca.ParsePEM([]byte(pemChain))
	if err != nil {
		return err
	}
	var der [][]byte
	for _, c := range chain {
		der = append(der, c.Raw)
	}
	r.cert.Store(&tls.Certificate{Certificate: der, PrivateKey: r.key})
	if r.client != nil {
		r.client.ResetConnections()
	}
	return nil
}

func tlsConfig(b testing.TB, n *Node) *tls.Config {
	tc, err := api.TLSConfig(n.cfg.pkiPath(rootFile), "", "")
	if err != nil {
		b.Fatal(err)
	}
	return tc
}

// BenchmarkIssueAPI measures certificates per second through the API a
// gateway uses to renew (POST /v1/renew over mTLS with its current
// certificate; CSR check, profile from the registry, lint before sign,
// SoftHSM2 signature, then the renewal committed in raft, in a batch with
// those waiting (CmdGatewayRenews), and applied before the answer) from 16 concurrent gateways. Each renewal makes the
// new certificate the gateway's only valid one, so each gateway's next
// request opens a TLS connection with it, as an agent does. It also
// reports the CPU time per certificate (this process: the 16 clients and
// the node) and the raft entries per certificate.
func BenchmarkIssueAPI(b *testing.B) {
	const clients = 16
	n, c := caNode(b)
	gws := enrollRenewers(b, n, c, clients)
	idx0 := n.raft.LastIndex()
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime(b)
	renewTimes(b, context.Background(), gws, b.N)
	elapsed := time.Since(start)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "certs/s")
	b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-us/cert")
	b.ReportMetric(float64(n.raft.LastIndex()-idx0)/float64(b.N), "entries/cert")
}

// renewTimes has the gateways renew total times between them, each
// renewing again as soon as it has installed its last certificate.
func renewTimes(tb testing.TB, ctx context.Context, gws []*renewer, total int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for _, g := range gws {
		wg.Go(func() {
			for next.Add(1) <= int64(total) {
				resp, err := g.client.Renew(ctx, api.RenewRequest{CSR: g.csr})
				if err != nil {
					tb.Error(err)
					return
				}
				if err := g.use(resp.Certificate); err != nil {
					tb.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkIssueStream is BenchmarkIssueAPI on the path the agent takes
// since govnet-stream/2: each of the 16 gateways holds its gateway
// stream open and renews on it; the stream then stands for the new
// certificate, so no renewal opens a TLS connection. The same node, the
// same issuance and the same recording in raft; the CPU time is again
// the whole process's (clients and node).
func BenchmarkIssueStream(b *testing.B) {
	n, c := caNode(b)
	gws := enrollRenewers(b, n, c, 16)
	var (
		idx0  uint64
		start time.Time
		cpu0  time.Duration
	)
	renewOnStreams(b, n, gws, b.N, func() {
		idx0 = n.raft.LastIndex()
		b.ResetTimer()
		start, cpu0 = time.Now(), cpuTime(b)
	})
	elapsed := time.Since(start)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "certs/s")
	b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-us/cert")
	b.ReportMetric(float64(n.raft.LastIndex()-idx0)/float64(b.N), "entries/cert")
}

// TestRenewOnStreamsBackToBack: gateways renewing on their streams as
// fast as the node answers never see their stream closed as stale. The
// sender read a stream's serials and the state apart, and a renewal
// that committed in between closed the stream under its gateway (which
// then renewed over HTTPS).
func TestRenewOnStreamsBackToBack(t *testing.T) {
	n, c := caNode(t)
	renewOnStreams(t, n, enrollRenewers(t, n, c, 8), 400, func() {})
}

// renewOnStreams opens each gateway's stream (govnet-stream/2), calls
// begin, has the gateways renew total times between them on their
// streams, and checks that every stream stayed open and stands for its
// gateway's current certificate.
func renewOnStreams(tb testing.TB, n *Node, gws []*renewer, total int, begin func()) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ended := make(chan error, len(gws))
	for i, g := range gws {
		g.client.OnRenewCall(func(string) {}) // offers govnet-stream/2
		viewed := make(chan struct{})
		var once sync.Once
		go func() {
			ended <- fmt.Errorf("gw%d: %w", i+1, g.client.Watch(ctx, 0, func(*api.View) error { once.Do(func() { close(viewed) }); return nil }))
		}()
		select {
		case <-viewed:
		case <-time.After(30 * time.Second):
			tb.Fatalf("no view on gw%d's stream", i+1)
		}
	}
	begin()
	renewTimes(tb, ctx, gws, total)
	select {
	case err := <-ended:
		tb.Fatalf("a stream ended while its gateway renewed on it: %v", err)
	default:
	}
	for i := range gws {
		id := fmt.Sprintf("gw%d", i+1)
		g, _ := n.State().Gateway(id)
		n.streams.mu.Lock()
		st := n.streams.byGW[id]
		n.streams.mu.Unlock()
		if st == nil {
			tb.Fatalf("%s has no stream: its renewals went over HTTPS", id)
		}
		if serial, _ := st.cert(); serial != g.CertSerial {
			tb.Fatalf("%s's stream stands for %s, its current certificate is %s", id, serial, g.CertSerial)
		}
	}
}

// BenchmarkReissue20000 measures the wall time to re-issue 20,000 gateway
// certificates on one controller node: 8 workers issue through the CA
// in-process (lint before sign, SoftHSM2) and record each certificate
// through a certRecorder, which commits the records waiting at once as
// one CmdCertRecord. There is no network-wide re-issue command yet: this
// is the issuance and recording such a command would do, without the
// registry update of each gateway's current serial. Besides the wall time
// it reports the rate, the certificates per raft entry and the CPU time
// per certificate.
func BenchmarkReissue20000(b *testing.B) {
	const (
		total   = 20000
		workers = 8
	)
	n, _ := caNode(b)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := ca.NewCSR(key, "reissue")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for b.Loop() {
		rec := newCertRecorder(n, "node:"+n.cfg.Node)
		idx0 := n.raft.LastIndex()
		var next atomic.Int64
		start, cpu0 := time.Now(), cpuTime(b)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for i := next.Add(1); i <= total; i = next.Add(1) {
					chain, err := n.ca.Issue(ctx, csr, ca.GatewayProfile(fmt.Sprintf("gw%d", i), "000.00.00.H29"))
					if err != nil {
						b.Error(err)
						return
					}
					if err := rec.Record(ctx, n.certRecord(chain[0])); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		entries := n.raft.LastIndex() - idx0
		b.ReportMetric(elapsed.Seconds(), "s/20000")
		b.ReportMetric(float64(total)/elapsed.Seconds(), "certs/s")
		b.ReportMetric(float64(total)/float64(entries), "certs/entry")
		b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/total, "cpu-us/cert")
	}
}
