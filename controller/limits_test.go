package controller

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net/http"
	"net/http/httptrace"
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

// TestRouteTable walks every route of the API and checks, for a caller
// without a client certificate, that only health, readiness and the root
// certificate (and the enrollments, whose token is the credential) are
// reached, and that a body larger than the route's limit is refused with
// 413 before anything is read. A new route gets these checks by being in
// the table, and TestRoutesOnlyInTable keeps every route there.
func TestRouteTable(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	anon := personTLS(t, cfg, "")
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: anon}, Timeout: 10 * time.Second}
	seen := map[string]bool{}
	for _, rt := range n.routeTable() {
		if seen[rt.pattern] {
			t.Errorf("%s: registered twice", rt.pattern)
		}
		seen[rt.pattern] = true
		method, path, ok := strings.Cut(rt.pattern, " ")
		if !ok {
			t.Errorf("%s: a route names its method", rt.pattern)
			continue
		}
		path = strings.NewReplacer("{code}", "000.00.00.H29", "{id}", "x", "{serial}", "01", "{node}", "ctl9", "{name}", "x").Replace(path)
		if rt.maxBody <= 0 || rt.maxBody > maxSnapshotBody {
			t.Errorf("%s: body limit %d", rt.pattern, rt.maxBody)
		}
		t.Run(rt.pattern, func(t *testing.T) {
			req, _ := http.NewRequest(method, "https://"+n.Addr().String()+path, nil)
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := map[string]int{byAnyone: http.StatusOK, byToken: http.StatusBadRequest}[rt.access]
			if want == 0 {
				want = http.StatusUnauthorized
			}
			if resp.StatusCode != want {
				t.Errorf("without a client certificate: HTTP %d %.200s, want %d (%s)", resp.StatusCode, b, want, rt.access)
			}

			conn, err := tls.Dial("tcp", n.Addr().String(), anon)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", method, path, rt.maxBody+1)
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			big, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("body of %d bytes: %v", rt.maxBody+1, err)
			}
			b, _ = io.ReadAll(big.Body)
			if big.StatusCode != http.StatusRequestEntityTooLarge {
				t.Errorf("body of %d bytes: HTTP %d %.200s, want 413", rt.maxBody+1, big.StatusCode, b)
			}
		})
	}
}

// TestRoutesOnlyInTable: the API's mux is built from routeTable alone
// (and the plain-HTTP listener serves its three public routes), so no
// route escapes TestRouteTable.
func TestRoutesOnlyInTable(t *testing.T) {
	want := map[string]int{"server.go": 1, "revocation.go": 3}
	got := map[string]int{}
	files, _ := filepath.Glob("*.go")
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(x ast.Node) bool {
			if call, ok := x.(*ast.CallExpr); ok {
				if sel, ok := call.Fun.(*ast.SelectorExpr); ok && (sel.Sel.Name == "HandleFunc" || sel.Sel.Name == "Handle") {
					got[f]++
				}
			}
			return true
		})
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("routes registered: %v, want %v (add API routes to routeTable)", got, want)
	}
}

// TestOversizedBodyHTTP2: over HTTP/2 a body past a route's limit gets
// 413 and the connection goes on serving (other requests may share it);
// only HTTP/1.1, which would read the refused body first, is closed.
func TestOversizedBodyHTTP2(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	tc := personTLS(t, cfg, "operator1")
	tc.NextProtos = []string{"h2"}
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	base := "https://" + n.Addr().String()
	var conns []string
	get := func(method, path string, body io.Reader, size int64) int {
		t.Helper()
		req, err := http.NewRequest(method, base+path, body)
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = size
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { conns = append(conns, i.Conn.LocalAddr().String()) },
		}))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		if resp.ProtoMajor != 2 {
			t.Fatalf("%s %s: HTTP/%d.%d, want HTTP/2", method, path, resp.ProtoMajor, resp.ProtoMinor)
		}
		return resp.StatusCode
	}
	if code := get(http.MethodGet, "/v1/agencies", nil, 0); code != http.StatusOK {
		t.Fatalf("GET /v1/agencies: %d", code)
	}
	big := strings.Repeat("x", maxBody+1)
	if code := get(http.MethodPost, "/v1/agencies", strings.NewReader(big), int64(len(big))); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized POST /v1/agencies: %d, want 413", code)
	}
	if code := get(http.MethodGet, "/v1/agencies", nil, 0); code != http.StatusOK {
		t.Fatalf("GET /v1/agencies after the 413: %d", code)
	}
	if len(conns) != 3 || conns[0] != conns[1] || conns[1] != conns[2] {
		t.Fatalf("connections used %v: the 413 closed the HTTP/2 connection", conns)
	}
}

// TestRestoreRefusedUnread: in four-eyes mode with no restore request
// approved, a restore is refused before its body is read (up to 1 GiB a
// caller could make the node hold, for nothing).
func TestRestoreRefusedUnread(t *testing.T) {
	defer func(d time.Duration) { restoreBodyTimeout = d }(restoreBodyTimeout)
	restoreBodyTimeout = time.Minute
	cfg := testConfig(t)
	cfg.FourEyes = true
	n := startNode(t, cfg)
	defer n.Close()
	conn, err := tls.Dial("tcp", n.Addr().String(), personTLS(t, cfg, "officer1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Promise 512 MiB and send nothing: the answer must not wait for it.
	fmt.Fprintf(conn, "POST /v1/cluster/snapshot HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n", 512<<20)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer before the body: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(b), "needs a restore request") {
		t.Fatalf("got HTTP %d %s, want 403", resp.StatusCode, b)
	}
}
