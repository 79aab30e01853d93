package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

func requireOpenSSL(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl missing")
		}
		t.Skip("openssl missing")
	}
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func openssl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func issueLeaf(t testing.TB, c *CA, id string) *x509.Certificate {
	t.Helper()
	chain, err := c.Issue(context.Background(), csrFor(t, subjectKeys()["P-256"]), GatewayProfile(id, "000.00.00.H29"))
	if err != nil {
		t.Fatal(err)
	}
	return chain[0]
}

func TestCRL(t *testing.T) {
	c, _ := newCA(t)
	a, b, good := issueLeaf(t, c, "gw-a"), issueLeaf(t, c, "gw-b"), issueLeaf(t, c, "gw-good")
	now := time.Now()
	entries := []Revoked{
		{Serial: a.SerialNumber, At: now.Add(-time.Hour), Reason: ReasonKeyCompromise},
		{Serial: b.SerialNumber, At: now.Add(-time.Minute), Reason: ReasonCessationOfOperation},
	}
	der, err := c.CRL(entries, big.NewInt(7), now)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(c.Intermediate()); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	if d := crl.NextUpdate.Sub(crl.ThisUpdate); d <= 0 || d > 24*time.Hour {
		t.Errorf("nextUpdate - thisUpdate = %v", d)
	}
	if crl.Number.Int64() != 7 || len(crl.RevokedCertificateEntries) != 2 {
		t.Errorf("number %v, %d entries", crl.Number, len(crl.RevokedCertificateEntries))
	}
	if fs := c.linter.CRL(der); len(fs) > 0 {
		t.Errorf("signed CRL has findings: %v", fs)
	}

	requireOpenSSL(t)
	dir := t.TempDir()
	crlPath := writeFile(t, dir, "inter.crl", der)
	text := openssl(t, "crl", "-inform", "DER", "-in", crlPath, "-text", "-noout")
	for _, want := range []string{
		"X509v3 CRL Number",
		"Next Update",
		"Issuer: O = govnet, CN = test intermediate",
		"Serial Number: " + opensslSerial(a.SerialNumber),
		"Key Compromise",
		"Cessation Of Operation",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("openssl crl -text lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, opensslSerial(good.SerialNumber)) {
		t.Error("a good certificate is on the CRL")
	}
	t.Logf("openssl crl -inform DER -text:\n%s", keyLines(text, "Certificate Revocation List", "Issuer:", "Last Update", "Next Update", "CRL Number", "    7", "Serial Number", "Revocation Date", "Key Compromise", "Cessation"))
	chain := writeFile(t, dir, "chain.pem", EncodePEM(c.Intermediate(), c.Root()))
	if out := openssl(t, "crl", "-inform", "DER", "-in", crlPath, "-CAfile", chain, "-noout"); !strings.Contains(out, "verify OK") {
		t.Errorf("openssl crl -CAfile: %s", out)
	}
	// openssl verify with -crl_check: the revoked leaf fails, the good one passes.
	crlPEM := writeFile(t, dir, "inter.crl.pem", []byte(openssl(t, "crl", "-inform", "DER", "-in", crlPath)))
	root := writeFile(t, dir, "root.pem", EncodePEM(c.Root()))
	inter := writeFile(t, dir, "inter.pem", EncodePEM(c.Intermediate()))
	out, _ := exec.Command("openssl", "verify", "-crl_check", "-CRLfile", crlPEM, "-CAfile", root, "-untrusted", inter,
		writeFile(t, dir, "a.pem", EncodePEM(a))).CombinedOutput()
	if !strings.Contains(string(out), "certificate revoked") {
		t.Errorf("openssl verify -crl_check of a revoked certificate: %s", out)
	}
	t.Logf("openssl verify -crl_check (revoked): %s", strings.TrimSpace(string(out)))
	if out := openssl(t, "verify", "-crl_check", "-CRLfile", crlPEM, "-CAfile", root, "-untrusted", inter,
		writeFile(t, dir, "good.pem", EncodePEM(good))); !strings.Contains(out, ": OK") {
		t.Errorf("openssl verify -crl_check of a good certificate: %s", out)
	}
}

func TestCRLRejects(t *testing.T) {
	c, _ := newCA(t)
	now := time.Now()
	s := big.NewInt(42)
	for _, tt := range []struct {
		name    string
		entries []Revoked
		number  *big.Int
		want    string
	}{
		{"no number", nil, nil, "CRL number"},
		{"duplicate", []Revoked{{Serial: s, At: now}, {Serial: s, At: now}}, big.NewInt(1), "twice"},
		{"future", []Revoked{{Serial: s, At: now.Add(time.Hour)}}, big.NewInt(1), "after thisUpdate"},
		{"hold", []Revoked{{Serial: s, At: now, Reason: 6}}, big.NewInt(1), "unknown revocation reason"},
		{"zero serial", []Revoked{{Serial: big.NewInt(0), At: now}}, big.NewInt(1), "positive"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.CRL(tt.entries, tt.number, now); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
	// An empty CRL is fine.
	if _, err := c.CRL(nil, big.NewInt(1), now); err != nil {
		t.Fatal(err)
	}
	if r, err := ParseReason("key-compromise"); err != nil || r != ReasonKeyCompromise {
		t.Errorf("ParseReason: %v %v", r, err)
	}
	if _, err := ParseReason("certificateHold"); !errors.Is(err, ErrReason) {
		t.Errorf("certificateHold: %v", err)
	}
}

// keyLines returns the lines of text that contain any of keys.
func keyLines(text string, keys ...string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		for _, k := range keys {
			if strings.Contains(l, k) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// inventory is a stand-in for the controller's replicated inventory.
type inventory struct {
	mu sync.Mutex
	m  map[string]CertStatus
}

func (inv *inventory) lookup(_ context.Context, serial *big.Int) (CertStatus, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.m[serial.String()], nil // zero value: StateUnknown
}

func (inv *inventory) set(serial *big.Int, st CertStatus) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.m[serial.String()] = st
}

func TestOCSPResponder(t *testing.T) {
	c, _ := newCA(t)
	good, revoked, unknown := issueLeaf(t, c, "gw-good"), issueLeaf(t, c, "gw-revoked"), issueLeaf(t, c, "gw-unknown")
	revokedAt := time.Now().Add(-10 * time.Minute).UTC().Truncate(time.Second)
	inv := &inventory{m: map[string]CertStatus{}}
	inv.set(good.SerialNumber, CertStatus{State: StateGood})
	inv.set(revoked.SerialNumber, CertStatus{State: StateGood})

	_, ocspURL := c.URLs()
	path := strings.TrimPrefix(ocspURL, DefaultOCSPURL[:len("http://ca.govnet")])
	// The responder serves the path as it comes: an http.ServeMux in front
	// would redirect a raw base64 request holding "//" to a cleaned path
	// (the controller routes OCSP before its mux for that reason).
	url := serveOCSP(t, c.OCSPResponder(inv.lookup)) + path

	// Revocation shows at once: the responder asks the inventory on every
	// request.
	inv.set(revoked.SerialNumber, CertStatus{State: StateRevoked, RevokedAt: revokedAt, Reason: ReasonKeyCompromise})

	// Go client, GET form (RFC 6960 A.1).
	for _, tt := range []struct {
		cert *x509.Certificate
		want int
	}{{good, ocsp.Good}, {revoked, ocsp.Revoked}, {unknown, ocsp.Unknown}} {
		req, err := ocsp.CreateRequest(tt.cert, c.Intermediate(), nil)
		if err != nil {
			t.Fatal(err)
		}
		b64 := base64.StdEncoding.EncodeToString(req)
		if tt.want == ocsp.Good {
			b64 = neturl.PathEscape(b64) // as RFC 6960 A.1 asks; the others go raw, as many clients send it
		}
		resp, err := http.Get(url + "/" + b64)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		r, err := ocsp.ParseResponseForCert(body, tt.cert, c.Intermediate())
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != tt.want {
			t.Errorf("%s: status %d, want %d", tt.cert.Subject.CommonName, r.Status, tt.want)
		}
		if tt.want == ocsp.Revoked && (!r.RevokedAt.Equal(revokedAt) || r.RevocationReason != ocsp.KeyCompromise) {
			t.Errorf("revoked at %v reason %d", r.RevokedAt, r.RevocationReason)
		}
		if tt.want != ocsp.Unknown && !strings.Contains(resp.Header.Get("Cache-Control"), "max-age=") {
			t.Errorf("Cache-Control %q", resp.Header.Get("Cache-Control"))
		}
	}
	// A request about another CA's certificate is unauthorized; garbage is malformed.
	other, _ := newCA(t)
	foreign := issueLeaf(t, other, "gw-foreign")
	req, _ := ocsp.CreateRequest(foreign, other.Intermediate(), nil)
	for body, want := range map[string][]byte{string(req): ocsp.UnauthorizedErrorResponse, "garbage": ocsp.MalformedRequestErrorResponse} {
		resp, err := http.Post(url, "application/ocsp-request", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !bytes.Equal(got, want) {
			t.Errorf("got %x, want %x", got, want)
		}
	}

	// openssl ocsp, the reference client (POST).
	requireOpenSSL(t)
	dir := t.TempDir()
	issuer := writeFile(t, dir, "inter.pem", EncodePEM(c.Intermediate()))
	root := writeFile(t, dir, "root.pem", EncodePEM(c.Root()))
	for _, tt := range []struct {
		cert *x509.Certificate
		want []string
	}{
		{good, []string{": good"}},
		{revoked, []string{": revoked", "Reason: keyCompromise", "Revocation Time"}},
		{unknown, []string{": unknown"}},
	} {
		name := tt.cert.Subject.CommonName
		leaf := writeFile(t, dir, name+".pem", EncodePEM(tt.cert))
		out := openssl(t, "ocsp", "-issuer", issuer, "-cert", leaf, "-url", url, "-CAfile", root)
		if !strings.Contains(out, "Response verify OK") {
			t.Errorf("%s: openssl ocsp did not verify the response:\n%s", name, out)
		}
		for _, w := range tt.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: openssl ocsp lacks %q:\n%s", name, w, out)
			}
		}
		t.Logf("openssl ocsp -issuer inter.pem -cert %s.pem -url %s -CAfile root.pem:\n%s", name, url, strings.TrimSpace(out))
	}
}

// opensslSerial is a serial as `openssl crl -text` prints it: the bytes of
// the number in upper-case hex, so with a leading 0 when the first byte is
// below 0x10.
func opensslSerial(n *big.Int) string {
	return fmt.Sprintf("%X", n.Bytes())
}

// TestOCSPGetPathWork: the GET path is searched for the request in time
// linear in its length. A path of 8 KiB of slashes (or of "MDA/", base64
// that decodes to a DER SEQUENCE header at every slash) made the responder
// decode every suffix: 87 ms of CPU for one request, anyone's to send at
// the rate limit's 100 a second.
func TestOCSPGetPathWork(t *testing.T) {
	c, _ := newCA(t)
	leaf := issueLeaf(t, c, "gw-path")
	req, err := ocsp.CreateRequest(leaf, c.Intermediate(), nil)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString(req)
	for _, p := range []string{
		"/ocsp/x/" + strings.Repeat("/", 2*maxOCSPRequest-10),
		"/ocsp/x/" + strings.Repeat("MDA/", (2*maxOCSPRequest-10)/4),
		"/ocsp/x/" + strings.Repeat("MDAw", (2*maxOCSPRequest-10)/4),
	} {
		u := &neturl.URL{Path: p}
		if allocs := testing.AllocsPerRun(5, func() { requestFromPath(u) }); allocs > 20 {
			t.Errorf("%.20s… (%d bytes): %v allocations, want a bounded few", p, len(p), allocs)
		}
	}
	// Requests still found: raw or escaped, after any number of
	// segments, and with slashes of their own.
	for _, p := range []string{
		"/ocsp/x/" + b64,
		"/a/b/c/d/e/f/g/h/i/j/" + b64,
		"/" + b64,
		"/ocsp/x/MDAw/" + b64,
	} {
		u, err := neturl.Parse("http://h" + p)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := requestFromPath(u); !ok || !bytes.Equal(got, req) {
			t.Errorf("%s: request not found", p)
		}
	}
}

// TestOCSPRequestForms: openssl ocsp with a signed request (-signer) is
// answered, the signature ignored as RFC 6960 4.1.2 allows a responder
// that does not require one; a request for two certificates at once,
// which the responder cannot answer in full, is malformed rather than
// answered for the first alone.
func TestOCSPRequestForms(t *testing.T) {
	requireOpenSSL(t)
	c, _ := newCA(t)
	a, b := issueLeaf(t, c, "gw-a"), issueLeaf(t, c, "gw-b")
	inv := &inventory{m: map[string]CertStatus{}}
	inv.set(a.SerialNumber, CertStatus{State: StateGood})
	inv.set(b.SerialNumber, CertStatus{State: StateRevoked, RevokedAt: time.Now().Add(-time.Hour), Reason: ReasonKeyCompromise})
	url := serveOCSP(t, c.OCSPResponder(inv.lookup)) + "/ocsp/x"

	dir := t.TempDir()
	issuer := writeFile(t, dir, "inter.pem", EncodePEM(c.Intermediate()))
	root := writeFile(t, dir, "root.pem", EncodePEM(c.Root()))
	pa, pb := writeFile(t, dir, "a.pem", EncodePEM(a)), writeFile(t, dir, "b.pem", EncodePEM(b))
	key, cert := filepath.Join(dir, "req.key"), filepath.Join(dir, "req.pem")
	openssl(t, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=requestor",
		"-keyout", key, "-out", cert, "-days", "1")

	out := openssl(t, "ocsp", "-issuer", issuer, "-cert", pa, "-url", url, "-CAfile", root, "-signer", cert, "-signkey", key)
	if !strings.Contains(out, "Response verify OK") || !strings.Contains(out, ": good") {
		t.Errorf("signed request:\n%s", out)
	}
	out, _ = runOpenSSL("ocsp", "-issuer", issuer, "-cert", pa, "-cert", pb, "-url", url, "-CAfile", root)
	if !strings.Contains(out, "malformedrequest") {
		t.Errorf("request for two certificates:\n%s", out)
	}
}

// runOpenSSL is openssl's combined output, whether or not it failed.
func runOpenSSL(args ...string) (string, error) {
	out, err := exec.Command("openssl", args...).CombinedOutput()
	return string(out), err
}

// TestOCSPCacheHeaders: a GET answer carries the headers RFC 5019 6.2
// asks of a cacheable response, consistent with the response itself:
// Last-Modified its thisUpdate, Expires its nextUpdate, max-age no later
// than nextUpdate. A POST answer and an error are not cached.
func TestOCSPCacheHeaders(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	c, _ := newCA(t, WithClock(func() time.Time { return now }))
	leaf := issueLeaf(t, c, "gw-cache")
	inv := &inventory{m: map[string]CertStatus{}}
	inv.set(leaf.SerialNumber, CertStatus{State: StateGood})
	o := c.OCSPResponder(inv.lookup)
	req, _ := ocsp.CreateRequest(leaf, c.Intermediate(), nil)

	w := httptest.NewRecorder()
	o.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/ocsp/x/"+neturl.PathEscape(base64.StdEncoding.EncodeToString(req)), nil))
	r, err := ocsp.ParseResponseForCert(w.Body.Bytes(), leaf, c.Intermediate())
	if err != nil {
		t.Fatal(err)
	}
	h := w.Header()
	lm, err := http.ParseTime(h.Get("Last-Modified"))
	if err != nil || !lm.Equal(r.ThisUpdate) {
		t.Errorf("Last-Modified %q, want thisUpdate %v", h.Get("Last-Modified"), r.ThisUpdate)
	}
	exp, err := http.ParseTime(h.Get("Expires"))
	if err != nil || !exp.Equal(r.NextUpdate) {
		t.Errorf("Expires %q, want nextUpdate %v", h.Get("Expires"), r.NextUpdate)
	}
	var maxAge int
	if _, err := fmt.Sscanf(h.Get("Cache-Control"), "max-age=%d,", &maxAge); err != nil || now.Add(time.Duration(maxAge)*time.Second).After(r.NextUpdate) {
		t.Errorf("Cache-Control %q: beyond nextUpdate %v", h.Get("Cache-Control"), r.NextUpdate)
	}

	w = httptest.NewRecorder()
	o.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/ocsp/x", bytes.NewReader(req)))
	if h := w.Header(); h.Get("Cache-Control") != "no-store" || h.Get("Expires") != "" || h.Get("Last-Modified") != "" {
		t.Errorf("POST: headers %v", h)
	}
	w = httptest.NewRecorder()
	o.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/ocsp/x/MAA=", nil))
	if h := w.Header(); h.Get("Cache-Control") != "no-store" || h.Get("Expires") != "" {
		t.Errorf("malformed: headers %v", h)
	}
}

// TestOCSPRevokedInFuture: a revocation stamped by another node's clock,
// ahead of this one's, is not answered as revoked after the response's
// own thisUpdate (the CRL clamps it the same way).
func TestOCSPRevokedInFuture(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	c, _ := newCA(t, WithClock(func() time.Time { return now }))
	leaf := issueLeaf(t, c, "gw-future")
	inv := &inventory{m: map[string]CertStatus{}}
	inv.set(leaf.SerialNumber, CertStatus{State: StateRevoked, RevokedAt: now.Add(3 * time.Second), Reason: ReasonKeyCompromise})
	req, _ := ocsp.CreateRequest(leaf, c.Intermediate(), nil)
	w := httptest.NewRecorder()
	c.OCSPResponder(inv.lookup).ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/ocsp/x", bytes.NewReader(req)))
	r, err := ocsp.ParseResponseForCert(w.Body.Bytes(), leaf, c.Intermediate())
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != ocsp.Revoked || !r.RevokedAt.Equal(r.ThisUpdate) || r.RevocationReason != ocsp.KeyCompromise {
		t.Errorf("status %d revoked at %v (reason %d), thisUpdate %v", r.Status, r.RevokedAt, r.RevocationReason, r.ThisUpdate)
	}
}

// TestOCSPAnswersReused: the same question is given the same signed
// answer for ocspReuse while the status stays (no HSM signature per
// request), a new one at once when the status changes, and a fresh one
// once the reuse time has passed; each CertID hash gets its own.
func TestOCSPAnswersReused(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	c, _ := newCA(t, WithClock(func() time.Time { return now }))
	leaf := issueLeaf(t, c, "gw-reused")
	inv := &inventory{m: map[string]CertStatus{}}
	inv.set(leaf.SerialNumber, CertStatus{State: StateGood})
	o := c.OCSPResponder(inv.lookup)
	ask := func(h crypto.Hash) (*ocsp.Response, []byte) {
		t.Helper()
		req, err := ocsp.CreateRequest(leaf, c.Intermediate(), &ocsp.RequestOptions{Hash: h})
		if err != nil {
			t.Fatal(err)
		}
		w := httptest.NewRecorder()
		o.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/ocsp/x", bytes.NewReader(req)))
		r, err := ocsp.ParseResponseForCert(w.Body.Bytes(), leaf, c.Intermediate())
		if err != nil {
			t.Fatal(err)
		}
		return r, w.Body.Bytes()
	}
	first, der := ask(crypto.SHA1)
	now = now.Add(30 * time.Second)
	if again, der2 := ask(crypto.SHA1); !bytes.Equal(der, der2) || !again.ThisUpdate.Equal(first.ThisUpdate) {
		t.Errorf("asked again within the minute: a new answer (thisUpdate %v, first %v)", again.ThisUpdate, first.ThisUpdate)
	}
	if other, _ := ask(crypto.SHA256); other.IssuerHash != crypto.SHA256 || !other.ThisUpdate.Equal(now) {
		t.Errorf("SHA-256 CertID: answered with hash %v, thisUpdate %v", other.IssuerHash, other.ThisUpdate)
	}
	inv.set(leaf.SerialNumber, CertStatus{State: StateRevoked, RevokedAt: now, Reason: ReasonKeyCompromise})
	if r, _ := ask(crypto.SHA1); r.Status != ocsp.Revoked || !r.ThisUpdate.Equal(now) {
		t.Errorf("after revocation: status %d, thisUpdate %v, want revoked at %v", r.Status, r.ThisUpdate, now)
	}
	revokedAnswer := now
	now = now.Add(ocspReuse)
	if r, _ := ask(crypto.SHA1); r.Status != ocsp.Revoked || !r.ThisUpdate.Equal(now) || r.ThisUpdate.Equal(revokedAnswer) {
		t.Errorf("a minute later: status %d, thisUpdate %v, want a new answer at %v", r.Status, r.ThisUpdate, now)
	}
}

// serveOCSP serves h on a loopback port until the test ends and returns
// its base URL.
func serveOCSP(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}
