package controller

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"golang.org/x/crypto/ocsp"
)

// TestRevokeCRLOCSPAndRenew enrolls two gateways, revokes one, and checks
// with openssl that within a second the CRL lists it with its reason and
// OCSP says revoked, while the other gateway's certificate is good; that
// the revoked gateway leaves its peer's view, its stream ends and its
// certificate opens nothing; and that renewal works for the other.
func TestRevokeCRLOCSPAndRenew(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
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
	gws := map[string]*enrolled{}
	for _, g := range []api.Gateway{{ID: "gw1", Agency: "000.00.00.H29"}, {ID: "gw2", Agency: "000.00.00.H49"}} {
		if _, err := op.AddGateway(ctx, g); err != nil {
			t.Fatal(err)
		}
		tok, err := off.IssueToken(ctx, g.ID, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if gws[g.ID], err = enroll(t, cfg, n, tok.Token); err != nil {
			t.Fatal(err)
		}
	}
	const pol = "version: 1\ngroups:\n  provinces:\n    level: province\nrules:\n  - from: [provinces]\n    to: [provinces]\n    ports: [tcp/22]\n"
	if _, err := off.PublishPolicy(ctx, "p.yaml", pol); err != nil {
		t.Fatal(err)
	}
	if v := firstView(t, gws["gw2"].client, 0); len(v.Peers) != 1 || v.Peers[0].Gateway != "gw1" {
		t.Fatalf("gw2's view before: %+v", v)
	}

	// The inventory knows both gateway certificates, the people's and the
	// node's, and the certificates point at this node's plain-HTTP listener.
	dir := t.TempDir()
	leaf := map[string]string{}
	for id, e := range gws {
		chain, _ := ca.ParsePEM([]byte(e.resp.Certificate))
		leaf[id] = ca.Serial(chain[0])
		os.WriteFile(filepath.Join(dir, id+".pem"), ca.EncodePEM(chain[0]), 0o644)
		c, err := op.Certificate(ctx, leaf[id])
		if err != nil || c.Gateway != id || c.Kind != ca.KindGateway || c.Status != api.CertValid || c.Approver != "officer1" || c.Issuer != n.issuerID {
			t.Fatalf("certificate of %s: %+v %v", id, c, err)
		}
		wantCRL := "http://" + n.httpLn.Addr().String() + "/crl/" + n.issuerID + ".crl"
		if len(chain[0].CRLDistributionPoints) != 1 || chain[0].CRLDistributionPoints[0] != wantCRL {
			t.Fatalf("CRL DP %v, want %s", chain[0].CRLDistributionPoints, wantCRL)
		}
	}
	waitUntil(t, 10*time.Second, "the node's and people's certificates in the inventory", func() bool {
		return len(n.State().Certificates(CertFilter{})) == 2+3+1+1 // gateways, people, node, intermediate
	})
	if got, err := op.Certificates(ctx, url.Values{"agency": {"000.00.00.H49"}}); err != nil || len(got) != 1 || got[0].Gateway != "gw2" {
		t.Fatalf("certificates of H49: %+v %v", got, err)
	}
	waitUntil(t, 10*time.Second, "the first CRL", func() bool {
		ir, _ := n.State().issuer(n.issuerID)
		return ir.CRL != nil && ir.HTTPAddr != ""
	})

	// gw1's stream is open when it is revoked: it must end, saying why.
	streamEnded := make(chan error, 1)
	go func() {
		streamEnded <- gws["gw1"].client.Watch(ctx, 0, func(*api.View) error { return nil })
	}()
	// gw1's own: gw2's stream from firstView above may not be gone yet.
	waitUntil(t, 5*time.Second, "gw1's stream", func() bool {
		n.hub.mu.Lock()
		defer n.hub.mu.Unlock()
		return len(n.hub.subs["gw1"]) > 0
	})

	// Revoking needs an officer and a known reason.
	_, err = op.Revoke(ctx, api.RevokeRequest{Gateway: "gw1", Reason: "keyCompromise"})
	wantStatus(t, err, 403, "officer")
	_, err = off.Revoke(ctx, api.RevokeRequest{Gateway: "gw1", Reason: "bored"})
	wantStatus(t, err, 400, "unknown revocation reason")
	start := time.Now()
	res, err := off.Revoke(ctx, api.RevokeRequest{Gateway: "gw1", Reason: "key-compromise"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Gateway != "gw1" || len(res.Certificates) != 1 || res.Certificates[0].Serial != leaf["gw1"] || res.Enforced <= 0 {
		t.Fatalf("revoke: %+v", res)
	}
	t.Logf("revocation enforced in this node's views after %v", res.Enforced)
	select {
	case err := <-streamEnded:
		wantStatus(t, err, 403, "gateway gw1 is not enrolled (revoked)") // the stream says why it ends
	case <-time.After(2 * time.Second):
		t.Fatal("gw1's stream is still open after its revocation")
	}
	if v := firstView(t, gws["gw2"].client, 0); len(v.Peers) != 0 {
		t.Fatalf("gw2 still has gw1 as a peer: %+v", v)
	}

	// Within a second the CRL lists gw1's serial with the reason.
	crlURL := "http://" + n.httpLn.Addr().String() + "/crl/" + n.issuerID + ".crl"
	var crlText string
	for {
		der, ctype := httpGet(t, crlURL)
		if ctype != "application/pkix-crl" {
			t.Fatalf("CRL content type %q", ctype)
		}
		crlFile := filepath.Join(dir, "crl.der")
		os.WriteFile(crlFile, der, 0o644)
		out, err := exec.Command(openssl, "crl", "-inform", "DER", "-in", crlFile, "-text", "-noout").CombinedOutput()
		if err != nil {
			t.Fatalf("openssl crl: %v\n%s", err, out)
		}
		crlText = string(out)
		if strings.Contains(crlText, strings.ToUpper(leaf["gw1"])) {
			break
		}
		if time.Since(start) > time.Second {
			t.Fatalf("after 1s the CRL does not list %s:\n%s", leaf["gw1"], crlText)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("the CRL listed the revoked serial %v after the revoke call", time.Since(start))
	if !strings.Contains(crlText, "Key Compromise") || strings.Contains(crlText, strings.ToUpper(leaf["gw2"])) {
		t.Fatalf("CRL:\n%s", crlText)
	}
	for _, l := range strings.Split(crlText, "\n") {
		if strings.Contains(l, "Serial Number") || strings.Contains(l, "Key Compromise") || strings.Contains(l, "CRL Number") || strings.Contains(l, "    ") && strings.HasPrefix(strings.TrimSpace(l), "1") {
			t.Logf("openssl crl: %s", strings.TrimSpace(l))
		}
	}

	// OCSP, as openssl asks it: revoked for gw1, good for gw2.
	ocspURL := "http://" + n.httpLn.Addr().String() + "/ocsp/" + n.issuerID
	for id, want := range map[string]string{"gw1": "revoked", "gw2": "good"} {
		out, err := exec.Command(openssl, "ocsp", "-issuer", cfg.pkiPath(intermediateFile), "-cert", filepath.Join(dir, id+".pem"),
			"-url", ocspURL, "-CAfile", cfg.pkiPath(rootFile)).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl ocsp %s: %v\n%s", id, err, out)
		}
		if !strings.Contains(string(out), id+".pem: "+want) || !strings.Contains(string(out), "Response verify OK") {
			t.Fatalf("openssl ocsp %s: want %s:\n%s", id, want, out)
		}
		t.Logf("openssl ocsp %s:\n%s", id, out)
	}

	// A GET with the base64 request unescaped, as many clients send it,
	// even when it holds "//" (which http.ServeMux would redirect to a
	// cleaned path): the serial is searched for such a request.
	gw2PEM, _ := os.ReadFile(filepath.Join(dir, "gw2.pem"))
	gw2Certs, _ := ca.ParsePEM(gw2PEM)
	probe := *gw2Certs[0]
	var raw string
	for i := int64(1); raw == ""; i++ {
		probe.SerialNumber = big.NewInt(i)
		req, err := ocsp.CreateRequest(&probe, n.ca.Intermediate(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if b := base64.StdEncoding.EncodeToString(req); strings.Contains(b, "//") {
			raw = b
		}
	}
	get, err := http.Get(ocspURL + "/" + raw)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(get.Body)
	get.Body.Close()
	if r, err := ocsp.ParseResponseForCert(body, &probe, n.ca.Intermediate()); err != nil || r.Status != ocsp.Unknown {
		t.Fatalf("OCSP GET of a request holding //: %v (HTTP %d)", err, get.StatusCode)
	}

	// A revoked gateway's certificate opens nothing, renewal included.
	err = gws["gw1"].client.Report(ctx, api.Report{})
	wantStatus(t, err, 403, "revoked")
	_, err = gws["gw1"].client.Renew(ctx, api.RenewRequest{CSR: newCSR(t)})
	wantStatus(t, err, 403, "revoked")
	if c, _ := op.Certificate(ctx, leaf["gw1"]); c.Status != api.CertRevoked || c.ReasonName != "keyCompromise" || c.RevokedBy != "officer1" {
		t.Fatalf("gw1's certificate %+v", c)
	}
	if got, _ := op.Certificates(ctx, url.Values{"revoked": {"true"}}); len(got) != 1 || got[0].Serial != leaf["gw1"] {
		t.Fatalf("revoked certificates %+v", got)
	}
	_, err = off.Revoke(ctx, api.RevokeRequest{Serial: leaf["gw1"]})
	wantStatus(t, err, 409, "already revoked")

	// A CSR whose signature does not verify is refused and changes
	// nothing (the renewal path leaves the check to CA.Issue).
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := ca.NewCSR(key, "anything")
	forged := bytes.Clone(csr.Raw)
	forged[len(forged)-1] ^= 0x01 // the last byte of the signature's s
	_, err = gws["gw2"].client.Renew(ctx, api.RenewRequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: forged}))})
	wantStatus(t, err, 400, "signature does not verify")
	if g, _ := op.Gateway(ctx, "gw2"); g.CertSerial != leaf["gw2"] {
		t.Fatalf("gw2 after a forged CSR: serial %s, want %s", g.CertSerial, leaf["gw2"])
	}

	// Renewal: gw2 gets a new certificate; the old one is refused from
	// then on, the new one works.
	rr, err := gws["gw2"].client.Renew(ctx, api.RenewRequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}))})
	if err != nil {
		t.Fatal(err)
	}
	chain, _ := ca.ParsePEM([]byte(rr.Certificate))
	if id, _ := ca.IdentityOf(chain[0]); id.Name != "gw2" || id.Agency != "000.00.00.H49" || rr.Serial == leaf["gw2"] {
		t.Fatalf("renewed: %+v serial %s", id, rr.Serial)
	}
	if g, _ := op.Gateway(ctx, "gw2"); g.CertSerial != rr.Serial || !g.CertExpires.Equal(chain[0].NotAfter) {
		t.Fatalf("gw2 after renewal %+v", g)
	}
	if c, _ := op.Certificate(ctx, rr.Serial); c.Requester != "gateway:gw2" || c.Status != api.CertValid {
		t.Fatalf("renewed certificate %+v", c)
	}
	old := api.NewClient("https://"+n.Addr().String(), gws["gw2"].tls)
	err = old.Report(ctx, api.Report{})
	wantStatus(t, err, 403, "not gateway gw2's current certificate")
	tc, _ := api.TLSConfig(cfg.pkiPath(rootFile), "", "")
	tc.Certificates = []tls.Certificate{{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key}}
	if err := api.NewClient("https://"+n.Addr().String(), tc).Report(ctx, api.Report{PolicyVersion: 1}); err != nil {
		t.Fatalf("report with the renewed certificate: %v", err)
	}

	// The CRL and OCSP need no client certificate; the API still does.
	resp, err := http.Get("http://" + n.httpLn.Addr().String() + "/v1/gateways")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("the plain listener served /v1/gateways: %s", resp.Status)
	}
}

// TestRevokeFourEyes: with four_eyes set, revocation by serial goes
// through a request that another officer approves.
func TestRevokeFourEyes(t *testing.T) {
	cfg := testConfig(t)
	cfg.FourEyes = true
	n := startNode(t, cfg)
	defer n.Close()
	ctx := context.Background()
	op, off1, off2 := person(t, cfg, n, "operator1"), person(t, cfg, n, "officer1"), person(t, cfg, n, "officer2")
	if _, err := op.AddAgency(ctx, api.Agency{Code: "000.00.00.H29", Name: "Quảng Ninh"}); err != nil {
		t.Fatal(err)
	}
	if _, err := op.AddGateway(ctx, api.Gateway{ID: "gw1", Agency: "000.00.00.H29"}); err != nil {
		t.Fatal(err)
	}
	req, err := op.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestToken, Gateway: "gw1"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := off1.ApproveRequest(ctx, req.ID)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := enroll(t, cfg, n, got.Token.Token)
	if err != nil {
		t.Fatal(err)
	}
	chain, _ := ca.ParsePEM([]byte(gw.resp.Certificate))
	serial := ca.Serial(chain[0])
	if c, _ := op.Certificate(ctx, serial); c.Requester != "operator1" || c.Approver != "officer1" {
		t.Fatalf("four-eyes certificate: %+v", c)
	}
	_, err = off1.Revoke(ctx, api.RevokeRequest{Serial: serial, Reason: "superseded"})
	wantStatus(t, err, 403, "four-eyes")
	_, err = op.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestRevoke, Serial: serial, RevocationReason: "nope"})
	wantStatus(t, err, 400, "unknown revocation reason")
	rreq, err := off1.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestRevoke, Serial: strings.ToUpper(serial), RevocationReason: "cessationOfOperation", Reason: "office closed"})
	if err != nil || rreq.Serial != serial || rreq.RevocationReason != "cessationOfOperation" {
		t.Fatalf("revoke request %+v %v", rreq, err)
	}
	_, err = off1.ApproveRequest(ctx, rreq.ID)
	wantStatus(t, err, 403, "own request")
	if _, err := off2.ApproveRequest(ctx, rreq.ID); err != nil {
		t.Fatal(err)
	}
	c, _ := op.Certificate(ctx, serial)
	g, _ := op.Gateway(ctx, "gw1")
	if c.Status != api.CertRevoked || c.Reason != int(ca.ReasonCessationOfOperation) || c.RevokedBy != "officer2" || g.Status != api.StatusRevoked {
		t.Fatalf("after approval: %+v %+v", c, g)
	}
	err = gw.client.Report(ctx, api.Report{})
	wantStatus(t, err, 403, "revoked")
}

func newCSR(t *testing.T) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := ca.NewCSR(key, "x")
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}))
}

func httpGet(t *testing.T, u string) ([]byte, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", u, resp.Status, bytes.TrimSpace(b))
	}
	return b, resp.Header.Get("Content-Type")
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRevocationURLPath: with a revocation_url that has a path, which the
// configuration allows and certificates then name
// (http://host:port/pki/crl/<issuer>.crl), a node that the name reaches
// serves the CRL and OCSP there, as well as at the bare paths.
func TestRevocationURLPath(t *testing.T) {
	cfg := testConfig(t)
	cfg.HTTPAddr = freePort(t)
	cfg.RevocationURL = "http://" + cfg.HTTPAddr + "/pki/govnet/"
	n := startNode(t, cfg)
	defer n.Close()
	waitUntil(t, 10*time.Second, "the first CRL and the node's certificate in the inventory", func() bool {
		ir, _ := n.State().issuer(n.issuerID)
		_, ok := n.State().Certificate(ca.Serial(n.cert.Load().Leaf))
		return ir.CRL != nil && ok
	})
	crlURL, ocspURL := n.ca.URLs()
	if want := "http://" + cfg.HTTPAddr + "/pki/govnet/crl/" + n.issuerID + ".crl"; crlURL != want {
		t.Fatalf("CRL URL %s, want %s", crlURL, want)
	}
	leaf := n.cert.Load().Leaf
	req, err := ocsp.CreateRequest(leaf, n.ca.Intermediate(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, base := range []string{"http://" + cfg.HTTPAddr + "/pki/govnet", "http://" + cfg.HTTPAddr} {
		der, ctype := httpGet(t, base+"/crl/"+n.issuerID+".crl")
		if _, err := x509.ParseRevocationList(der); err != nil || ctype != "application/pkix-crl" {
			t.Fatalf("%s: CRL %q: %v", base, ctype, err)
		}
		u := base + "/ocsp/" + n.issuerID
		if base != "http://"+cfg.HTTPAddr {
			u = ocspURL
		}
		resp, err := http.Post(u, "application/ocsp-request", bytes.NewReader(req))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if r, err := ocsp.ParseResponseForCert(body, leaf, n.ca.Intermediate()); err != nil || r.Status != ocsp.Good {
			t.Fatalf("OCSP at %s: HTTP %d: %v", u, resp.StatusCode, err)
		}
	}
}
