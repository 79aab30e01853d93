package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// TestRenewAll: an officer's renewal call reaches a gateway whose
// certificate predates it, on the stream it holds and again on a new
// stream until it renews; a renewed gateway is not called; a gateway on
// the first stream protocol gets no call and keeps its stream; the status
// counts who is left. Only officers call, and a call needs a reason.
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
		if _, err := op.AddGateway(ctx, api.Gateway{ID: id, Agency: "000.00.00.H29"}); err != nil {
			t.Fatal(err)
		}
		tr, err := off.IssueToken(ctx, id, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if gws[id], err = enroll(t, cfg, n, tr.Token); err != nil {
			t.Fatal(err)
		}
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
			return st.serial
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

	// gw1 renews; its new stream gets no call, the count goes down.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := ca.NewCSR(key, "x")
	rr, err := gws["gw1"].client.Renew(ctx, api.RenewRequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}))})
	if err != nil {
		t.Fatal(err)
	}
	gws["gw1"].client.ResetConnections() // as the agent does: its stream presents the old certificate
	chain, _ := ca.ParsePEM([]byte(rr.Certificate))
	tc := gws["gw1"].tls.Clone()
	tc.Certificates = []tls.Certificate{{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key}}
	renewed := api.NewClient("https://"+n.Addr().String(), tc)
	if err := <-ended1; !errors.Is(err, api.ErrConnectionsReset) {
		t.Fatalf("the stream of the old certificate: %v", err)
	}
	ended1 = watch(wctx, renewed, calls)
	waitUntil(t, 10*time.Second, "gw1's stream with its new certificate", func() bool { return streamSerial("gw1") == rr.Serial })
	select {
	case r := <-calls:
		t.Fatalf("a renewed gateway was called: %q", r)
	case <-time.After(500 * time.Millisecond):
	}
	if st, err := op.RenewAllStatus(ctx); err != nil || st.Pending != 1 || len(st.Waiting) != 1 || st.Waiting[0] != "gw2" {
		t.Fatalf("status after gw1 renewed: %+v %v", st, err)
	}

	// gw2, on govnet-stream/1, is not told, and its stream is fine.
	ended2 = watch(wctx, gws["gw2"].client, nil)
	if err := gws["gw2"].client.Report(ctx, api.Report{RulesetDigest: "sha256:y"}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended2:
		t.Fatalf("gw2's stream ended: %v", err)
	default:
	}

	// The call survives a restart (it is in the snapshot and the log).
	stop()
	<-ended1
	<-ended2
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n = startNode(t, cfg)
	if c := n.State().RenewCall(); c == nil || c.Reason != "intermediate re-keyed" {
		t.Fatalf("call after restart: %+v", c)
	}
}
