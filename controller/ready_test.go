package controller

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer a logger and a test may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestReadyNeedsHSM: a node whose HSM token no longer signs (here its
// sessions are gone: the token is closed under it) can complete no TLS
// handshake with its key, issue nothing and sign no CRL. Its /readyz on
// the plain-HTTP listener, where a load balancer checks it, must say 503
// with the reason, and the operator must read it at ERROR. Before, /readyz
// looked at raft and the state only and kept answering 200.
func TestReadyNeedsHSM(t *testing.T) {
	cfg := testConfig(t)
	var logs syncBuffer
	n, err := start(context.Background(), cfg, slog.New(slog.NewJSONHandler(&logs, nil)), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { n.Close() }()
	for deadline := time.Now().Add(15 * time.Second); n.Ready() != nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("node not ready: %v", n.Ready())
		}
	}

	readyz := func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + n.httpLn.Addr().String() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	n.probeHSM()
	if code, body := readyz(); code != http.StatusOK {
		t.Fatalf("healthy node: /readyz %d %s", code, body)
	}

	if err := n.token.Close(); err != nil {
		t.Fatal(err)
	}
	n.probeHSM()
	if err := n.Ready(); err == nil || !strings.Contains(err.Error(), "HSM") {
		t.Errorf("Ready with a token that cannot sign: %v", err)
	}
	if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "HSM") {
		t.Errorf("/readyz with a token that cannot sign: %d %s", code, body)
	}
	if got := logs.String(); !strings.Contains(got, `"level":"ERROR"`) || !strings.Contains(got, "HSM token cannot sign") {
		t.Errorf("no ERROR record for the token:\n%s", got)
	}
	n.probeHSM() // still failing: said once
	if c := strings.Count(logs.String(), "HSM token cannot sign"); c != 1 {
		t.Errorf("the failure was logged %d times, want once until it changes", c)
	}
}

// TestCRLSignFailureLogged: when the node's CA cannot sign its CRL (the
// token stopped), the operator reads it at ERROR, with the nextUpdate of
// the CRL in force, once a minute. Before, issuerDuties logged the
// failure at DEBUG and retried every second: at the default level
// nothing said so until relying parties refused the expired CRL.
func TestCRLSignFailureLogged(t *testing.T) {
	cfg := testConfig(t)
	var logs syncBuffer
	var skew atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	n, err := start(context.Background(), cfg, slog.New(slog.NewJSONHandler(&logs, nil)), now)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { n.Close() }()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if rec, _ := n.State().issuer(n.issuerID); n.Ready() == nil && rec.CRL != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node not ready or no CRL: %v", n.Ready())
		}
	}
	if err := n.token.Close(); err != nil {
		t.Fatal(err)
	}
	skew.Store(int64(crlRefresh + time.Minute)) // the CRL is due for its refresh
	n.crlWake <- struct{}{}
	const msg = "this node's CRL cannot be signed"
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), msg); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no record of the CRL that cannot be signed:\n%s", logs.String())
		}
	}
	for line := range strings.SplitSeq(logs.String(), "\n") {
		if strings.Contains(line, msg) && (!strings.Contains(line, `"level":"ERROR"`) || !strings.Contains(line, `"next_update"`)) {
			t.Errorf("want ERROR with next_update: %s", line)
		}
	}
	time.Sleep(1500 * time.Millisecond) // retried every second: said once a minute
	if c := strings.Count(logs.String(), msg); c != 1 {
		t.Errorf("logged %d times in 1.5 s, want once a minute", c)
	}
}

// TestMetricsCRLAndOwnCertificates: an operator can alert on a CRL about
// to run out and on this node's own certificates (TLS and intermediate)
// nearing expiry; before, no series said either (the inventory histogram
// counts certificates by profile, not which one is this node's, and no
// series read a CRL's nextUpdate).
func TestMetricsCRLAndOwnCertificates(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer func() { n.Close() }()
	var rec issuerRecord
	for deadline := time.Now().Add(10 * time.Second); rec.CRL == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no CRL published")
		}
		rec, _ = n.State().issuer(n.issuerID)
	}
	mfs := scrape(t, person(t, cfg, n, "operator1"))
	for _, tc := range []struct {
		name   string
		labels []string
		want   time.Time
	}{
		{"govnet_crl_next_update_timestamp_seconds", []string{"issuer", n.issuerID}, rec.CRL.NextUpdate},
		{"govnet_node_certificate_expiry_timestamp_seconds", []string{"certificate", "node"}, n.cert.Load().Leaf.NotAfter},
		{"govnet_node_certificate_expiry_timestamp_seconds", []string{"certificate", "intermediate"}, n.ca.Intermediate().NotAfter},
	} {
		if v, ok := value(mfs, tc.name, tc.labels...); !ok || int64(v) != tc.want.Unix() {
			t.Errorf("%s%v = %v (present %v), want %d", tc.name, tc.labels, v, ok, tc.want.Unix())
		}
	}
}
