package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestGatewayReenroll: an enrolled gateway enrolls again with a
// re-enrollment token (its certificate expired while it was off, its
// machine was replaced): new keys, the same name and address, its
// certificates before revoked, and its peers' views carry the new key.
func TestGatewayReenroll(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	ctx := context.Background()
	op, off := person(t, cfg, n, "operator1"), person(t, cfg, n, "officer1")
	for _, a := range []api.Agency{{Code: "000.00.00.H29", Name: "Quảng Ninh"}, {Code: "000.00.00.H49", Name: "Quảng Nam"}} {
		if _, err := op.AddAgency(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	gw1 := enrollNew(t, ctx, cfg, n, op, off, "gw1", "000.00.00.H29")
	gw2 := enrollNew(t, ctx, cfg, n, op, off, "gw2", "000.00.00.H49")
	if _, err := op.AddGateway(ctx, api.Gateway{ID: "gw3", Agency: "000.00.00.H49"}); err != nil {
		t.Fatal(err)
	}
	const pol = "version: 1\ngroups:\n  provinces:\n    level: province\nrules:\n  - from: [provinces]\n    to: [provinces]\n    ports: [tcp/22]\n"
	if _, err := off.PublishPolicy(ctx, "p.yaml", pol); err != nil {
		t.Fatal(err)
	}
	before, _ := n.State().Gateway("gw1")
	peerKey := func() string {
		t.Helper()
		for _, p := range firstView(t, gw2.client, 0).Peers {
			if p.Gateway == "gw1" {
				return p.PublicKey
			}
		}
		t.Fatal("gw1 is not in gw2's view")
		return ""
	}
	if k := peerKey(); k != before.PublicKey {
		t.Fatalf("gw2 sees gw1's key %s, want %s", k, before.PublicKey)
	}

	_, err := op.ReenrollToken(ctx, "gw1", time.Minute)
	wantStatus(t, err, 403, "officer")
	_, err = off.IssueToken(ctx, "gw1", time.Minute)
	wantStatus(t, err, 409, "re-enrollment token")
	_, err = off.ReenrollToken(ctx, "gw3", time.Minute)
	wantStatus(t, err, 409, "only an enrolled gateway re-enrolls")
	tok, err := off.ReenrollToken(ctx, "gw1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	again, err := enroll(t, cfg, n, tok.Token)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := n.State().Gateway("gw1")
	if again.resp.Gateway != "gw1" || again.resp.OverlayIP != before.OverlayIP || after.OverlayIP != before.OverlayIP ||
		after.Status != api.StatusEnrolled || after.PublicKey == before.PublicKey || after.CertSerial == before.CertSerial {
		t.Fatalf("re-enrolled: answer %+v, gateway %+v (was %+v)", again.resp, after, before)
	}
	if c, _ := n.State().Certificate(before.CertSerial); c.Status != api.CertRevoked || c.ReasonName != "superseded" {
		t.Fatalf("the certificate before: %+v", c)
	}
	if c, _ := n.State().Certificate(after.CertSerial); c.Approver != "officer1" {
		t.Fatalf("the new certificate: %+v", c)
	}
	// The old certificate is refused; the new one works; peers have the key.
	if err := gw1.client.Report(ctx, api.Report{}); err == nil {
		t.Fatal("the certificate before the re-enrollment still reports")
	}
	if v := firstView(t, again.client, 0); v.OverlayIP != before.OverlayIP {
		t.Fatalf("gw1's view after re-enrolling: overlay %s, want %s", v.OverlayIP, before.OverlayIP)
	}
	if k := peerKey(); k != after.PublicKey {
		t.Fatalf("gw2 sees gw1's key %s, want the new %s", k, after.PublicKey)
	}
	_, err = enroll(t, cfg, n, tok.Token)
	wantStatus(t, err, 403, "already used")
}

// TestEnrollAskedAgain: an enrollment whose answer was lost after it
// committed is asked again with the same token and keys, and answered
// with a new certificate for the same key (a renewal of the one lost),
// first and re-enrollments alike. It is refused as a used token, and
// nothing changes, when asked with the same token but other keys, after
// the gateway renewed (with a new key), once the gateway's certificate
// expired, and once the gateway is revoked.
func TestEnrollAskedAgain(t *testing.T) {
	cfg := testConfig(t)
	var ahead atomic.Int64
	n := startNodeAt(t, cfg, func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) })
	defer n.Close()
	ctx := context.Background()
	op, off := person(t, cfg, n, "operator1"), person(t, cfg, n, "officer1")
	if _, err := op.AddAgency(ctx, api.Agency{Code: "000.00.00.H29", Name: "Quảng Ninh"}); err != nil {
		t.Fatal(err)
	}
	if _, err := op.AddGateway(ctx, api.Gateway{ID: "gw1", Agency: "000.00.00.H29"}); err != nil {
		t.Fatal(err)
	}
	first, err := off.IssueToken(ctx, "gw1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, reenroll := range []bool{false, true} {
		tok := first.Token
		if reenroll {
			rt, err := off.ReenrollToken(ctx, "gw1", 48*time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			tok = rt.Token
		}
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		wg, _ := wgtypes.GeneratePrivateKey()
		lost, err := enrollWith(t, cfg, n, tok, key, wg)
		if err != nil {
			t.Fatal(err)
		}
		got, err := enrollWith(t, cfg, n, tok, key, wg)
		if err != nil {
			t.Fatalf("reenroll=%v: asked again: %v", reenroll, err)
		}
		g, _ := n.State().Gateway("gw1")
		chain, _ := ca.ParsePEM([]byte(got.resp.Certificate))
		lostChain, _ := ca.ParsePEM([]byte(lost.resp.Certificate))
		if ca.Serial(chain[0]) == ca.Serial(lostChain[0]) || ca.Serial(chain[0]) != g.CertSerial || !key.PublicKey.Equal(chain[0].PublicKey) ||
			got.resp.OverlayIP != lost.resp.OverlayIP || got.resp.Gateway != "gw1" || g.PublicKey != wg.PublicKey().String() {
			t.Fatalf("reenroll=%v: answered again %+v; gateway %+v", reenroll, got.resp, g)
		}
		if rec, _ := n.State().Certificate(g.CertSerial); rec.RenewedFrom != ca.Serial(lostChain[0]) {
			t.Fatalf("reenroll=%v: the certificate answered again renews %q, want the lost %s", reenroll, rec.RenewedFrom, ca.Serial(lostChain[0]))
		}
		if err := got.client.Report(ctx, api.Report{}); err != nil {
			t.Fatalf("reenroll=%v: the certificate answered again: %v", reenroll, err)
		}
		// Lost twice: answered again once more.
		if got, err = enrollWith(t, cfg, n, tok, key, wg); err != nil {
			t.Fatalf("reenroll=%v: asked a third time: %v", reenroll, err)
		}
		g, _ = n.State().Gateway("gw1")
		refused := func(step string, key *ecdsa.PrivateKey, wg wgtypes.Key) {
			t.Helper()
			_, err := enrollWith(t, cfg, n, tok, key, wg)
			wantStatus(t, err, 403, "already used")
			if g2, _ := n.State().Gateway("gw1"); g2.CertSerial != g.CertSerial || g2.PublicKey != g.PublicKey {
				t.Fatalf("reenroll=%v: %s: a refused repeat changed the gateway: %+v, was %+v", reenroll, step, g2, g)
			}
		}
		wg2, _ := wgtypes.GeneratePrivateKey()
		refused("another WireGuard key", key, wg2)
		key2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		refused("another TLS key", key2, wg)
		if !reenroll {
			// The gateway renews (a new key, as the agent does): its
			// enrollment is over.
			csr, _ := ca.NewCSR(key2, "x")
			if _, err := got.client.Renew(ctx, api.RenewRequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}))}); err != nil {
				t.Fatal(err)
			}
			g, _ = n.State().Gateway("gw1")
			refused("after a renewal", key, wg)
			continue
		}
		ahead.Store(int64(g.CertExpires.Sub(time.Now()) + time.Minute))
		refused("the certificate expired", key, wg)
		ahead.Store(0)
		if _, err := off.Revoke(ctx, api.RevokeRequest{Gateway: "gw1", Reason: "keyCompromise"}); err != nil {
			t.Fatal(err)
		}
		g, _ = n.State().Gateway("gw1")
		refused("revoked", key, wg)
	}
}

// TestGatewayLANs: a gateway's LANs are the source addresses its peers
// attribute to it alone: the controllers refuse what would let one gateway
// speak for others (a default route, the overlay, the networks of
// another gateway in service) and what the firewall cannot enforce
// (IPv6), and records nothing.
func TestGatewayLANs(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	ctx := context.Background()
	op := person(t, cfg, n, "operator1")
	if _, err := op.AddAgency(ctx, api.Agency{Code: "000.00.00.H29", Name: "Quảng Ninh"}); err != nil {
		t.Fatal(err)
	}
	add := func(id string, lans ...string) error {
		g := api.Gateway{ID: id, Agency: "000.00.00.H29"}
		for _, l := range lans {
			g.LANs = append(g.LANs, netip.MustParsePrefix(l))
		}
		_, err := op.AddGateway(ctx, g)
		return err
	}
	if err := add("gw1", "10.29.1.0/24", "192.168.10.0/24"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		lans []string
		code int
		want string
	}{
		{[]string{"0.0.0.0/0"}, 400, "wider than /8"},
		{[]string{"100.64.0.0/16"}, 400, "overlaps the overlay network 100.64.0.0/24"},
		{[]string{"100.64.0.7/32"}, 400, "overlaps the overlay"},
		{[]string{"fd00::/64"}, 400, "only IPv4"},
		{[]string{"127.0.0.0/8"}, 400, "not a unicast network"},
		{[]string{"10.29.0.0/16"}, 409, "overlaps 10.29.1.0/24 of gateway gw1"},
		{[]string{"10.30.0.0/24", "10.30.0.128/25"}, 400, "overlap"},
		{[]string{"10.30.0.1/24"}, 400, "not a network address"},
	} {
		err := add("gw2", c.lans...)
		wantStatus(t, err, c.code, c.want)
	}
	_, err := op.AddGateway(ctx, api.Gateway{ID: "gw2", Agency: "000.00.00.H29", Endpoint: "gw2.example:51820"})
	wantStatus(t, err, 400, `endpoint "gw2.example:51820": want IP:port`)
	if _, ok := n.State().Gateway("gw2"); ok {
		t.Fatal("a refused gateway was recorded")
	}
	if err := add("gw2", "10.29.2.0/24"); err != nil {
		t.Fatal(err)
	}
	// A decommissioned gateway's networks go to the one that replaces it.
	if _, err := person(t, cfg, n, "officer1").DecommissionGateway(ctx, "gw1", api.DecommissionRequest{Reason: "replaced by gw3"}); err != nil {
		t.Fatal(err)
	}
	if err := add("gw3", "10.29.1.0/24"); err != nil {
		t.Fatalf("the LAN of a decommissioned gateway: %v", err)
	}
	// Registrations of one network at the same instant: the state
	// machine decides, so exactly one gets it.
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() { errs[i] = add(fmt.Sprintf("race%d", i), "10.40.0.0/24") })
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		if err == nil {
			won++
			continue
		}
		wantStatus(t, err, 409, "overlaps 10.40.0.0/24 of gateway race")
	}
	if won != 1 {
		t.Fatalf("%d registrations of 10.40.0.0/24 succeeded, want 1: %v", won, errs)
	}
}
