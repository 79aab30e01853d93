package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestClientTLS: a client trusting the server's root talks to it through
// ca/chain's verification, refuses a redirect to another host, and a nil
// TLS configuration is allowed (plain crypto/tls defaults).
func TestClientTLS(t *testing.T) {
	other := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{}`))
	}))
	defer other.Close()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/elsewhere" {
			http.Redirect(w, r, other.URL+"/x", http.StatusFound)
			return
		}
		w.Write([]byte(`{}`))
	}))
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	c := NewClient(srv.URL, &tls.Config{RootCAs: roots})
	if c.conns.verify == nil {
		t.Fatal("the client does not use ca/chain's verification")
	}
	ctx := context.Background()
	var out map[string]any
	if err := c.do(ctx, http.MethodGet, "/here", nil, &out); err != nil {
		t.Fatal(err)
	}
	if err := c.do(ctx, http.MethodGet, "/elsewhere", nil, &out); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("redirect to another host: %v", err)
	}
	// A root the server's certificate does not chain to.
	bad := NewClient(srv.URL, &tls.Config{RootCAs: x509.NewCertPool()})
	if err := bad.do(ctx, http.MethodGet, "/here", nil, &out); err == nil || !strings.Contains(err.Error(), "server certificate") {
		t.Fatalf("untrusted server: %v", err)
	}
	NewClient(srv.URL, nil) // must not panic
}
