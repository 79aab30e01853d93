package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// Clients built from one TLS config (the agent makes one per controller
// node) do not share it with their transports, which write into it on
// first use: `go test -race` fails here if they do.
func TestClientsShareTLSConfig(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("[]"))
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	shared := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	var wg sync.WaitGroup
	for range 4 {
		c := NewClient(srv.URL, shared)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Agencies(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if len(shared.NextProtos) != 0 {
		t.Fatalf("a transport wrote into the caller's TLS config: %v", shared.NextProtos)
	}
}
