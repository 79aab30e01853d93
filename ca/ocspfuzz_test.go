package ca

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	neturl "net/url"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

// FuzzOCSPRequest feeds the responder whole HTTP requests, as a client's
// bytes arrive: whatever they hold, it must answer 200 with an OCSP
// response (405 for another method), that response must be an error
// status or one signed by the issuer about the serial asked for, and only
// a signed answer to a GET may be cached, until its nextUpdate.
func FuzzOCSPRequest(f *testing.F) {
	c, _ := newCA(f)
	good, revoked := issueLeaf(f, c, "gw-good"), issueLeaf(f, c, "gw-revoked")
	inv := &inventory{m: map[string]CertStatus{}}
	inv.set(good.SerialNumber, CertStatus{State: StateGood})
	inv.set(revoked.SerialNumber, CertStatus{State: StateRevoked, RevokedAt: time.Now().Add(-time.Hour), Reason: ReasonKeyCompromise})
	o := c.OCSPResponder(inv.lookup)

	post := func(body []byte) []byte {
		return fmt.Appendf(nil, "POST /ocsp/x HTTP/1.1\r\nHost: h\r\nContent-Type: application/ocsp-request\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	}
	get := func(path string) []byte { return fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: h\r\n\r\n", path) }
	for _, cert := range []struct {
		leaf *x509.Certificate
		h    crypto.Hash
	}{{good, crypto.SHA1}, {revoked, crypto.SHA256}} {
		req, err := ocsp.CreateRequest(cert.leaf, c.Intermediate(), &ocsp.RequestOptions{Hash: cert.h})
		if err != nil {
			f.Fatal(err)
		}
		b64 := base64.StdEncoding.EncodeToString(req)
		f.Add(post(req))
		f.Add(get("/ocsp/x/" + b64))
		f.Add(get("/ocsp/x/" + neturl.PathEscape(b64)))
		f.Add(get("/a/b//" + b64))
	}
	f.Add(get("/ocsp/x/MAA="))
	f.Add(post([]byte("garbage")))
	f.Add([]byte("PUT /ocsp/x HTTP/1.1\r\nHost: h\r\n\r\n"))

	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return // net/http refuses it before any handler
		}
		w := httptest.NewRecorder()
		o.ServeHTTP(w, r)
		if r.Method != http.MethodGet && r.Method != http.MethodPost {
			if w.Code != http.StatusMethodNotAllowed {
				t.Fatalf("%s: HTTP %d", r.Method, w.Code)
			}
			return
		}
		h := w.Header()
		if w.Code != http.StatusOK || h.Get("Content-Type") != "application/ocsp-response" {
			t.Fatalf("HTTP %d, Content-Type %q", w.Code, h.Get("Content-Type"))
		}
		resp, err := ocsp.ParseResponse(w.Body.Bytes(), c.Intermediate())
		var re ocsp.ResponseError
		switch {
		case errors.As(err, &re):
			if h.Get("Cache-Control") != "no-store" {
				t.Fatalf("error %v answered with Cache-Control %q", re.Status, h.Get("Cache-Control"))
			}
			return
		case err != nil:
			t.Fatalf("answer does not parse or verify: %v", err)
		}
		if r.Method == http.MethodPost && h.Get("Cache-Control") != "no-store" {
			t.Fatalf("POST answered with Cache-Control %q", h.Get("Cache-Control"))
		}
		if r.Method == http.MethodGet {
			if exp, err := http.ParseTime(h.Get("Expires")); err != nil || !exp.Equal(resp.NextUpdate) {
				t.Fatalf("Expires %q, nextUpdate %v", h.Get("Expires"), resp.NextUpdate)
			}
		}
		want := map[string]int{good.SerialNumber.String(): ocsp.Good, revoked.SerialNumber.String(): ocsp.Revoked}
		st, ok := want[resp.SerialNumber.String()]
		if !ok {
			st = ocsp.Unknown
		}
		if resp.Status != st {
			t.Fatalf("serial %x: status %d, want %d", resp.SerialNumber, resp.Status, st)
		}
	})
}
