package controller

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
)

// personTLS is the TLS configuration of a bootstrap person of cfg's
// cluster (empty name: no client certificate), speaking HTTP/1.1 only.
func personTLS(t *testing.T, cfg Config, name string) *tls.Config {
	t.Helper()
	cert, key := "", ""
	if name != "" {
		people := filepath.Join(filepath.Dir(cfg.DataDir), "people")
		cert, key = filepath.Join(people, name+".crt"), filepath.Join(people, name+".key")
	}
	tc, err := api.TLSConfig(cfg.pkiPath(rootFile), cert, key)
	if err != nil {
		t.Fatal(err)
	}
	tc.NextProtos = []string{"http/1.1"}
	return tc
}

// A restore whose body trickles in must not hold the node's one restore
// slot (and its goroutine and memory) for as long as the client likes:
// the body has restoreBodyTimeout to arrive, then the request ends and
// another restore may start.
func TestRestoreBodyDeadline(t *testing.T) {
	defer func(d time.Duration) { restoreBodyTimeout = d }(restoreBodyTimeout)
	restoreBodyTimeout = time.Second
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	tc := personTLS(t, cfg, "officer1")

	conn, err := tls.Dial("tcp", n.Addr().String(), tc)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Promise 1 MiB, send 10 bytes, then nothing.
	fmt.Fprintf(conn, "POST /v1/cluster/snapshot HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n0123456789", 1<<20)
	conn.SetReadDeadline(time.Now().Add(restoreBodyTimeout + 10*time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("a restore whose body stopped coming was not ended: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("got HTTP %d %s, want 408", resp.StatusCode, b)
	}
	// The slot is free again: the next restore is read and checked.
	off := person(t, cfg, n, "officer1")
	_, err = off.RestoreSnapshot(context.Background(), strings.NewReader("not a backup\n"))
	wantStatus(t, err, http.StatusBadRequest, "")
}

// Query parameters that do not parse are refused with 400 naming the
// parameter, not read as their zero value.
func TestQueryParamsRefused(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: personTLS(t, cfg, "officer1")}, Timeout: 10 * time.Second}
	for _, c := range []struct{ path, field string }{
		{"/v1/audit?since=abc", "since"},
		{"/v1/audit?since=-1", "since"},
		{"/v1/certificates?expiring=213504d", "expiring"},
		{"/v1/certificates?expiring=99999999999999999999d", "expiring"},
	} {
		t.Run(c.path, func(t *testing.T) {
			resp, err := hc.Get("https://" + n.Addr().String() + c.path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), c.field) {
				t.Fatalf("got HTTP %d %.200s, want 400 naming %s", resp.StatusCode, b, c.field)
			}
		})
	}
	// The gateway's watch too.
	ctx := context.Background()
	op, off := person(t, cfg, n, "operator1"), person(t, cfg, n, "officer1")
	if _, err := op.AddAgency(ctx, api.Agency{Code: "000.00.00.H29", Name: "Quảng Ninh"}); err != nil {
		t.Fatal(err)
	}
	e := enrollNew(t, ctx, cfg, n, op, off, "gw-1", "000.00.00.H29")
	gc := &http.Client{Transport: &http.Transport{TLSClientConfig: e.tls}, Timeout: 10 * time.Second}
	resp, err := gc.Get("https://" + n.Addr().String() + "/v1/watch?since=x")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("watch?since=x: got HTTP %d, want 400", resp.StatusCode)
	}
}
