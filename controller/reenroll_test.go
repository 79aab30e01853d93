package controller

import (
	"context"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
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
