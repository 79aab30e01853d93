package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// TestRenewAll: an officer's renewal call reaches a gateway whose
// certificate predates it, on the stream it holds and again on a new
// stream until it renews; it renews on that stream, which carries on
// under the new certificate, and is not called again. A gateway on the
// first stream protocol gets no call, keeps its stream, and renews over
// HTTPS. The status counts who is left. Only officers call, and a call
// needs a reason.
func TestRenewAll(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	op, off := person(t, cfg, n, "operator1"), person(t, cfg, n, "officer1")
	if _, err := op.AddAgency(ctx, api.Agency{Code: "000.00.00.H29", Name: "a"}); err != nil {
		t.Fatal(err)
	}
	gws := map[string]*enrolled{}
	for _, id := range []string{"gw1", "gw2"} {
		gws[id] = enrollNew(t, ctx, cfg, n, op, off, id, "000.00.00.H29")
	}

	// watch holds c's stream until ctx ends, and passes on renewal calls.
	watch := func(ctx context.Context, c *api.Client, calls chan string) chan error {
		if calls != nil {
			c.OnRenewCall(func(reason string) { calls <- reason })
		}
		ended := make(chan error, 1)
		go func() { ended <- c.Watch(ctx, 0, func(*api.View) error { return nil }) }()
		return ended
	}
	calls := make(chan string, 4)
	wctx, stop := context.WithCancel(ctx)
	ended1 := watch(wctx, gws["gw1"].client, calls)
	ended2 := watch(wctx, gws["gw2"].client, nil)
	streamSerial := func(gw string) string {
		n.streams.mu.Lock()
		defer n.streams.mu.Unlock()
		if st := n.streams.byGW[gw]; st != nil && !st.gone {
			serial, _ := st.cert()
			return serial
		}
		return ""
	}
	waitUntil(t, 10*time.Second, "both streams", func() bool { return streamSerial("gw1") != "" && streamSerial("gw2") != "" })

	if st, err := op.RenewAllStatus(ctx); err != nil || st.Call != nil || st.Gateways != 2 || st.Pending != 0 {
		t.Fatalf("status before any call: %+v %v", st, err)
	}
	_, err := op.RenewAll(ctx, "intermediate re-keyed")
	wantStatus(t, err, 403, "officer")
	_, err = off.RenewAll(ctx, "  ")
	wantStatus(t, err, 400, "needs a reason")
	_, err = off.RenewAll(ctx, "two\nlines")
	wantStatus(t, err, 400, "one line")
	st, err := off.RenewAll(ctx, "intermediate re-keyed")
	if err != nil || st.Call == nil || st.Call.Actor != "officer1" || st.Pending != 2 || len(st.Waiting) != 2 {
		t.Fatalf("call: %+v %v", st, err)
	}
	select {
	case reason := <-calls:
		if reason != "intermediate re-keyed" {
			t.Fatalf("call reason %q", reason)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("gw1 was not called on its stream")
	}

	// A new stream of a gateway not yet renewed is called again.
	stop()
	<-ended1
	<-ended2
	wctx, stop = context.WithCancel(ctx)
	defer stop()
	ended1 = watch(wctx, gws["gw1"].client, calls)
	select {
	case <-calls:
	case <-time.After(10 * time.Second):
		t.Fatal("gw1's new stream was not called")
	}

	// gw1 renews on its stream (govnet-stream/2): the stream carries on
	// under the new certificate, through the agent's connection reset,
	// and is not called again; the count goes down.
	csrFor := func() (*ecdsa.PrivateKey, api.RenewRequest) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := ca.NewCSR(key, "x")
		return key, api.RenewRequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}))}
	}
	// A CSR whose signature does not verify is refused on the stream
	// too, which stays bound to the certificate it had.
	before := streamSerial("gw1")
	_, req := csrFor()
	forged := req
	if block, _ := pem.Decode([]byte(req.CSR)); block != nil {
		block.Bytes[len(block.Bytes)-1] ^= 0x01 // the last byte of the signature's s
		forged.CSR = string(pem.EncodeToMemory(block))
	}
	_, err = gws["gw1"].client.Renew(ctx, forged)
	wantStatus(t, err, 400, "signature does not verify")
	if streamSerial("gw1") != before {
		t.Fatalf("gw1's stream stands for %q after a refused renewal, want %s", streamSerial("gw1"), before)
	}
	rr, err := gws["gw1"].client.Renew(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if streamSerial("gw1") != rr.Serial {
		t.Fatalf("gw1's stream stands for %q after renewing on it, want %s", streamSerial("gw1"), rr.Serial)
	}
	gws["gw1"].client.ResetConnections()
	if err := gws["gw1"].client.Report(ctx, api.Report{RulesetDigest: "sha256:after-renewal"}); err != nil {
		t.Fatalf("a report on the renewed stream: %v", err)
	}
	select {
	case err := <-ended1:
		t.Fatalf("the stream renewed on ended: %v", err)
	case r := <-calls:
		t.Fatalf("a renewed gateway was called: %q", r)
	case <-time.After(500 * time.Millisecond):
	}
	if st, err := op.RenewAllStatus(ctx); err != nil || st.Pending != 1 || len(st.Waiting) != 1 || st.Waiting[0] != "gw2" {
		t.Fatalf("status after gw1 renewed: %+v %v", st, err)
	}

	// gw2, on govnet-stream/1, is not told, and its stream is fine; a
	// renewal line there is refused. It renews over HTTPS, and the
	// stream of its old certificate ends at the connection reset.
	ended2 = watch(wctx, gws["gw2"].client, nil)
	if err := gws["gw2"].client.Report(ctx, api.Report{RulesetDigest: "sha256:y"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "gw2's stream", func() bool { return streamSerial("gw2") != "" })
	select {
	case err := <-ended2:
		t.Fatalf("gw2's stream ended: %v", err)
	default:
	}
	if ack := n.streamRenew(&gwStream{gateway: "gw2"}, api.StreamReport{Seq: 1, Renew: &req}, ""); ack.Code != 400 || !strings.Contains(ack.Error, "govnet-stream/1") {
		t.Fatalf("a renewal on a govnet-stream/1 stream: %+v", ack)
	}
	key, req := csrFor()
	rr, err = gws["gw2"].client.Renew(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	gws["gw2"].client.ResetConnections()
	if err := <-ended2; !errors.Is(err, api.ErrConnectionsReset) {
		t.Fatalf("gw2's stream of its old certificate: %v", err)
	}
	chain, _ := ca.ParsePEM([]byte(rr.Certificate))
	tc := gws["gw2"].tls.Clone()
	tc.Certificates = []tls.Certificate{{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key}}
	if err := api.NewClient("https://"+n.Addr().String(), tc).Report(ctx, api.Report{}); err != nil {
		t.Fatalf("gw2 with its new certificate: %v", err)
	}
	if st, err := op.RenewAllStatus(ctx); err != nil || st.Pending != 0 {
		t.Fatalf("status after both renewed: %+v %v", st, err)
	}
	ended2 = make(chan error, 1)
	ended2 <- nil

	// The call survives a restart (it is in the snapshot and the log).
	stop()
	<-ended1
	<-ended2
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n = startNode(t, cfg)
	waitUntil(t, 10*time.Second, "the call replayed after a restart", func() bool {
		c := n.State().RenewCall()
		return c != nil && c.Reason == "intermediate re-keyed"
	})
}

// TestRenewRetryAfterLostAnswer: a gateway whose renewal committed but
// whose answer it never got still holds only its old certificate. It can
// renew again with that one, for the key of the lost certificate only,
// as many times as answers are lost; not with an older certificate, not
// for another key, not once that certificate is revoked, and not once
// the gateway is.
func TestRenewRetryAfterLostAnswer(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	op, off := person(t, cfg, n, "operator1"), person(t, cfg, n, "officer1")
	if _, err := op.AddAgency(ctx, api.Agency{Code: "000.00.00.H29", Name: "a"}); err != nil {
		t.Fatal(err)
	}
	gw := enrollNew(t, ctx, cfg, n, op, off, "gw1", "000.00.00.H29")
	gw2 := enrollNew(t, ctx, cfg, n, op, off, "gw2", "000.00.00.H29")
	first := gw.client // holds the enrollment certificate, S
	enrolledChain, _ := ca.ParsePEM([]byte(gw.resp.Certificate))
	s := ca.Serial(enrolledChain[0])
	csrOf := func(key *ecdsa.PrivateKey) api.RenewRequest {
		csr, _ := ca.NewCSR(key, "x")
		return api.RenewRequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}))}
	}
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	lost, err := first.Renew(ctx, csrOf(k2)) // the answer the gateway never got
	if err != nil {
		t.Fatal(err)
	}
	// What a node settling a renewal left in doubt would find.
	if !n.State().recorded(s, strings.ToUpper(lost.Serial)) || n.State().recorded(lost.Serial, "f"+lost.Serial) {
		t.Fatalf("recorded(%s, %s) wrong", s, lost.Serial)
	}
	// Again with S, for another key: refused, nothing recorded.
	k3, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, err = first.Renew(ctx, csrOf(k3))
	wantStatus(t, err, 403, "takes a CSR for the key of "+lost.Serial)
	// With S for the lost certificate's key: a new certificate for it.
	again, err := first.Renew(ctx, csrOf(k2))
	if err != nil {
		t.Fatalf("renewal retried with the certificate before the current one: %v", err)
	}
	g, _ := op.Gateway(ctx, "gw1")
	if g.CertSerial != again.Serial || !slices.Contains(g.RenewedFrom, s) || again.Serial == lost.Serial {
		t.Fatalf("after the retry: gateway %+v, lost %s, again %s", g, lost.Serial, again.Serial)
	}
	c, _ := op.Certificate(ctx, again.Serial)
	chain, _ := ca.ParsePEM([]byte(again.Certificate))
	if key := sha256.Sum256(chain[0].RawSubjectPublicKeyInfo); c.KeySHA256 != hex.EncodeToString(key[:]) || !k2.PublicKey.Equal(chain[0].PublicKey) {
		t.Fatalf("inventory record %+v for a certificate of another key", c)
	}
	// A second lost answer: S still works, for the same key.
	if _, err := first.Renew(ctx, csrOf(k2)); err != nil {
		t.Fatalf("a second retry: %v", err)
	}
	// The certificate of the lost answer is neither current nor the one
	// renewed from: refused.
	tc := gw.tls.Clone()
	lostChain, _ := ca.ParsePEM([]byte(lost.Certificate))
	tc.Certificates = []tls.Certificate{{Certificate: [][]byte{lostChain[0].Raw, lostChain[1].Raw}, PrivateKey: k2}}
	_, err = api.NewClient("https://"+n.Addr().String(), tc).Renew(ctx, csrOf(k2))
	wantStatus(t, err, 403, "is not gateway gw1's current certificate")
	// gw2 renews twice on a stream opened with its first certificate S2
	// (the stream stands for each new certificate in turn). Whether both
	// answers were lost (gw2 holds S2) or only the second (it holds the
	// first renewed certificate), what it holds renews, for the key the
	// last one certified.
	s2Chain, _ := ca.ParsePEM([]byte(gw2.resp.Certificate))
	s2 := ca.Serial(s2Chain[0])
	onStream := api.NewClient("https://"+n.Addr().String(), gw2.tls)
	onStream.OnRenewCall(func(string) {})
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	viewed := make(chan struct{})
	var once sync.Once
	go onStream.Watch(wctx, 0, func(*api.View) error { once.Do(func() { close(viewed) }); return nil })
	select { // the client holds the stream once a view came on it
	case <-viewed:
	case <-time.After(10 * time.Second):
		t.Fatal("no view on gw2's stream")
	}
	k4, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var onStreamAnswers []*api.RenewResponse
	for range 2 {
		rr, err := onStream.Renew(ctx, csrOf(k4))
		if err != nil {
			t.Fatal(err)
		}
		onStreamAnswers = append(onStreamAnswers, rr)
	}
	g2, _ := op.Gateway(ctx, "gw2")
	if !slices.Contains(g2.RenewedFrom, s2) {
		t.Fatalf("gw2 renewed twice on its stream: renewed from %s, want its stream's %s", g2.RenewedFrom, s2)
	}
	n.streams.mu.Lock()
	stood, _ := n.streams.byGW["gw2"].cert()
	n.streams.mu.Unlock()
	if stood != g2.CertSerial {
		t.Fatalf("gw2's stream stands for %s, want the current %s (the renewals went over HTTP?)", stood, g2.CertSerial)
	}
	// Had only the second answer been lost, gw2 would hold the first
	// renewed certificate: that one works too.
	bChain, _ := ca.ParsePEM([]byte(onStreamAnswers[0].Certificate))
	bTLS := gw2.tls.Clone()
	bTLS.Certificates = []tls.Certificate{{Certificate: [][]byte{bChain[0].Raw, bChain[1].Raw}, PrivateKey: k4}}
	if !slices.Contains(g2.RenewedFrom, onStreamAnswers[0].Serial) {
		t.Fatalf("renewed from %v, want the stream's %s and %s", g2.RenewedFrom, s2, onStreamAnswers[0].Serial)
	}
	if _, err := api.NewClient("https://"+n.Addr().String(), bTLS).Renew(ctx, csrOf(k4)); err != nil {
		t.Fatalf("gw2 retrying with the certificate of its first renewal: %v", err)
	}

	// An attempt and its retry in flight at once (a retry over HTTPS
	// while the stream that carried the first still signs): both were
	// admitted with the current certificate; the one that commits second
	// renews from it, and neither is refused.
	gw3 := enrollNew(t, ctx, cfg, n, op, off, "gw3", "000.00.00.H29")
	k5, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	req5 := csrOf(k5)
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := api.NewClient("https://"+n.Addr().String(), gw3.tls).Renew(ctx, req5)
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("a renewal and its retry at once: %v", err)
		}
	}

	// A renewal committed elsewhere (here over HTTPS; as well on another
	// node's stream) whose answer was lost, while the gateway's stream
	// still stands for the certificate renewed from: the renewal asked
	// again on that stream renews from it, as over HTTPS, and the stream
	// then stands for the new certificate.
	gw4 := enrollNew(t, ctx, cfg, n, op, off, "gw4", "000.00.00.H29")
	stream4 := api.NewClient("https://"+n.Addr().String(), gw4.tls)
	stream4.OnRenewCall(func(string) {})
	viewed4 := make(chan struct{})
	var once4 sync.Once
	go stream4.Watch(wctx, 0, func(*api.View) error { once4.Do(func() { close(viewed4) }); return nil })
	select {
	case <-viewed4:
	case <-time.After(10 * time.Second):
		t.Fatal("no view on gw4's stream")
	}
	// First a renewal on the stream, answered: the stream and the
	// gateway move to B.
	kB, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b4, err := stream4.Renew(ctx, csrOf(kB))
	if err != nil {
		t.Fatal(err)
	}
	bChain4, _ := ca.ParsePEM([]byte(b4.Certificate))
	holdsB := gw4.tls.Clone()
	holdsB.Certificates = []tls.Certificate{{Certificate: [][]byte{bChain4[0].Raw, bChain4[1].Raw}, PrivateKey: kB}}
	k6, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := api.NewClient("https://"+n.Addr().String(), holdsB).Renew(ctx, csrOf(k6)); err != nil {
		t.Fatal(err)
	}
	again4, err := stream4.Renew(ctx, csrOf(k6))
	if err != nil {
		t.Fatalf("the lost renewal asked again on the stream of the certificate it renewed: %v", err)
	}
	n.streams.mu.Lock()
	stood4, _ := n.streams.byGW["gw4"].cert()
	n.streams.mu.Unlock()
	if stood4 != again4.Serial {
		t.Fatalf("gw4's stream stands for %s, want %s (the renewal went over HTTPS?)", stood4, again4.Serial)
	}
	// While a renewal from a stale certificate is in flight on a stream,
	// the senders leave the stream open; once it ended, it is stale.
	stale := &gwStream{gateway: "gw4", serial: b4.Serial, notAfter: bChain4[0].NotAfter, renewingFrom: true}
	if _, err := n.readmit(stale); err != nil {
		t.Fatalf("a stream renewing from its stale certificate: %v", err)
	}
	stale.renewingFrom = false
	if status, err := n.readmit(stale); status != 403 || err == nil {
		t.Fatalf("a stale stream: %d %v", status, err)
	}
	// That answer lost as well: the gateway still holds B, which renews.
	if _, err := api.NewClient("https://"+n.Addr().String(), holdsB).Renew(ctx, csrOf(k6)); err != nil {
		t.Fatalf("gw4 holding B after two lost answers: %v", err)
	}

	// The certificate renewed from, revoked by its serial: the current
	// one was won with its key, so the gateway is revoked with it (a
	// renewal must not outrun a revocation asked for meanwhile), and
	// refused whatever it presents.
	if _, err := off.Revoke(ctx, api.RevokeRequest{Serial: s, Reason: "keyCompromise"}); err != nil {
		t.Fatal(err)
	}
	if g, _ := n.State().Gateway("gw1"); g.Status != api.StatusRevoked {
		t.Fatalf("gw1 after the revocation of the certificate it renewed from: %s", g.Status)
	}
	_, err = first.Renew(ctx, csrOf(k2))
	wantStatus(t, err, 403, "revoked")
}
