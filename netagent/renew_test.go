package netagent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/controller"
	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/hsm/hsmtest"
)

// testCtl is a real single-node controller (SoftHSM2) that issues
// gateway certificates of the shortest allowed life, with an operator's
// and an officer's client.
type testCtl struct {
	base, rootFile string
	op, off        *api.Client
}

func startController(t *testing.T) *testCtl {
	t.Helper()
	hc := hsmtest.NewToken(t)
	dir := t.TempDir()
	pin := filepath.Join(dir, "pin")
	os.WriteFile(pin, []byte(hc.PIN+"\n"), 0o600)
	ccfg := controller.Config{
		Node: "ctl1", DataDir: filepath.Join(dir, "ctl"), RaftAddr: freeAddr(t), APIAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		OverlayPrefix: "100.64.0.0/24",
		HSM:           controller.HSMConfig{Module: hc.Module, TokenLabel: hc.TokenLabel, PINFile: pin},
		Profiles:      ca.Profiles{Gateway: ca.MinLifetime},
	}
	people := filepath.Join(dir, "people")
	if err := controller.Init(context.Background(), controller.InitOptions{Config: ccfg, PeopleDir: people,
		People: []controller.Person{{Name: "op", Role: ca.RoleOperator}, {Name: "off", Role: ca.RoleOfficer}}}); err != nil {
		t.Fatal(err)
	}
	n, err := controller.Start(context.Background(), ccfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	for deadline := time.Now().Add(15 * time.Second); n.Ready() != nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("controller not ready: %v", n.Ready())
		}
	}
	c := &testCtl{base: "https://" + n.Addr().String(), rootFile: filepath.Join(ccfg.DataDir, "pki", "root.pem")}
	personClient := func(name string) *api.Client {
		tc, err := api.TLSConfig(c.rootFile, filepath.Join(people, name+".crt"), filepath.Join(people, name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		return api.NewClient(c.base, tc)
	}
	c.op, c.off = personClient("op"), personClient("off")
	if _, err := c.op.AddAgency(context.Background(), api.Agency{Code: "000.00.00.H29", Name: "Quảng Ninh"}); err != nil {
		t.Fatal(err)
	}
	return c
}

// tokenConfig points cfg's hsm: section at a fresh SoftHSM2 token, its
// PIN in a file.
func tokenConfig(t *testing.T, cfg *Config) hsm.Config {
	t.Helper()
	hc := hsmtest.NewToken(t)
	pin := filepath.Join(t.TempDir(), "gw.pin")
	if err := os.WriteFile(pin, []byte(hc.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.HSM = HSMConfig{Module: hc.Module, TokenLabel: hc.TokenLabel, PINFile: pin}
	return hc
}

// TestRenewLoop enrolls a gateway with a real controller and drives the
// renewal loop with a clock past two thirds of its certificate's life:
// the certificate is renewed, the files replaced, and the same API client
// presents the new certificate at once (the controller refuses the old
// one). Then a revoked gateway's renewal is refused, and an expired
// certificate is reported as such. It runs with the TLS key in a file and
// with the key in the gateway's own PKCS#11 token (SoftHSM2): there the
// key is generated in the token, sensitive and not extractable, no
// tls.key is ever written, and a renewal moves to a new key and destroys
// the old one.
func TestRenewLoop(t *testing.T) { forEachKeyStore(t, testRenewLoop) }

// forEachKeyStore runs test against one real controller, as gateway gw1
// with its TLS key in a file and as gw2 with its key in its own token.
func forEachKeyStore(t *testing.T, test func(t *testing.T, c *testCtl, gateway string, token bool)) {
	hsmtest.Require(t)
	c := startController(t)
	for _, tc := range []struct {
		name, gateway string
		token         bool
	}{
		{"file", "gw1", false},
		{"token", "gw2", true},
	} {
		t.Run(tc.name, func(t *testing.T) { test(t, c, tc.gateway, tc.token) })
	}
}

func testRenewLoop(t *testing.T, c *testCtl, gw string, token bool) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	op, off := c.op, c.off
	if _, err := op.AddGateway(ctx, api.Gateway{ID: gw, Agency: "000.00.00.H29"}); err != nil {
		t.Fatal(err)
	}
	tok, err := off.IssueToken(ctx, gw, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Controller, cfg.StateDir = c.base, filepath.Join(t.TempDir(), "agent")
	if token {
		tokenConfig(t, &cfg)
		// A wrong PIN stops enrollment before anything is written or the
		// one-time token is spent.
		bad := cfg
		bad.HSM.PINFile = filepath.Join(t.TempDir(), "wrong.pin")
		os.WriteFile(bad.HSM.PINFile, []byte("00000000\n"), 0o600)
		if _, err := Enroll(ctx, bad, tok.Token, c.rootFile); !errors.Is(err, hsm.ErrWrongPIN) {
			t.Fatalf("enroll with a wrong PIN: %v, want ErrWrongPIN", err)
		}
		if _, err := os.Stat(cfg.StateDir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("enroll with a wrong PIN created the state directory: %v", err)
		}
	}
	if _, err := Enroll(ctx, cfg, tok.Token, c.rootFile); err != nil {
		t.Fatal(err)
	}
	keys, err := openKeyStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { keys.Close() })
	// tokenKey checks that the token holds exactly one key of this
	// gateway, the one tls.key.label names, generated in the token as
	// sensitive and never extractable, and that no key file exists.
	tokenKey := func() string {
		t.Helper()
		label, err := keys.(*tokenKeys).label(cfg.path(fileTLSKeyLabel))
		if err != nil {
			t.Fatal(err)
		}
		infos, err := keys.(*tokenKeys).tok.Keys()
		if err != nil {
			t.Fatal(err)
		}
		if len(infos) != 1 || infos[0].Label != label {
			t.Fatalf("token keys %+v, want only %q", infos, label)
		}
		if k := infos[0]; !k.Token || !k.Private || !k.Sensitive || k.Extractable || !k.AlwaysSensitive || !k.NeverExtractable || k.Curve != "P-256" {
			t.Fatalf("token key attributes %+v: want a P-256 token key, private, sensitive, never extractable", k)
		}
		for _, f := range []string{fileTLSKey, fileTLSKey + nextSuffix, fileTLSKeyLabel + nextSuffix} {
			if _, err := os.Stat(cfg.path(f)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s: %v, want no such file", f, err)
			}
		}
		return label
	}
	var firstKey string
	if token {
		firstKey = tokenKey()
		// Without its hsm: section the config cannot find the key, and
		// says why.
		if _, _, _, err := loadIdentity(cfg, fileKeys{}); err == nil || !strings.Contains(err.Error(), "hsm: section") {
			t.Fatalf("load a token identity as files: %v", err)
		}
	}
	_, _, tlsCfg, err := loadIdentity(cfg, keys)
	if err != nil {
		t.Fatal(err)
	}
	client := api.NewClient(c.base, reloadingClientCert(cfg, keys, tlsCfg))
	if err := client.Report(ctx, api.Report{}); err != nil {
		t.Fatal(err)
	}

	r := newRenewer(cfg, keys, func() *api.Client { return client }, log)
	first, _ := r.current()
	if life := first.NotAfter.Sub(first.NotBefore); life > ca.MinLifetime+2*ca.Backdate {
		t.Fatalf("lifetime %v, want the configured %v", life, ca.MinLifetime)
	}
	var skew atomic.Int64 // the test clock runs this far ahead
	r.now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	skew.Store(int64(renewAt(first).Sub(time.Now()) + time.Second))
	r.onRenewed = func() {
		skew.Store(0) // back to real time: the next renewal is minutes away
		client.ResetConnections()
	}

	// A stream open across the renewal ends with ErrConnectionsReset, so
	// that the agent reopens it with the new certificate.
	watchCtx, endWatch := context.WithTimeout(ctx, 30*time.Second)
	defer endWatch()
	watching, watchEnded := make(chan struct{}), make(chan error, 1)
	go func() {
		var once sync.Once
		watchEnded <- client.Watch(watchCtx, 0, func(*api.View) error { once.Do(func() { close(watching) }); return nil })
	}()
	select {
	case <-watching:
	case err := <-watchEnded:
		t.Fatalf("watch before renewal: %v", err)
	}

	ctxLoop, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.run(ctxLoop) }()
	var renewed string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if g, _ := op.Gateway(ctx, gw); g.CertSerial != ca.Serial(first) {
			renewed = g.CertSerial
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the certificate was not renewed")
		}
	}
	// The loop installs the files after the controller commits: wait for them.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if cur, err := r.current(); err == nil && ca.Serial(cur) == renewed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the renewed certificate was not installed")
		}
	}
	stop()
	<-done
	if _, err := os.Stat(cfg.path(fileCertNext)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a pending renewal was left behind: %v", err)
	}
	if token {
		// A new key in the token; the old one is destroyed.
		if k := tokenKey(); k == firstKey {
			t.Fatalf("renewal kept key %q", k)
		}
	}
	if err := <-watchEnded; !errors.Is(err, api.ErrConnectionsReset) {
		t.Fatalf("stream open across the renewal: %v, want ErrConnectionsReset", err)
	}
	// The same client, without a restart, presents the new certificate:
	// the controller refuses any other.
	if err := client.Report(ctx, api.Report{}); err != nil {
		t.Fatalf("report after renewal: %v", err)
	}
	errStop := errors.New("stop")
	if err := client.Watch(watchCtx, 0, func(*api.View) error { return errStop }); !errors.Is(err, errStop) {
		t.Fatalf("stream after renewal: %v", err)
	}
	if c, err := op.Certificate(ctx, renewed); err != nil || c.Requester != "gateway:"+gw || c.Status != api.CertValid {
		t.Fatalf("inventory: %+v %v", c, err)
	}

	// An officer's renewal call, carried by the stream: the loop renews
	// at once, long before the certificate is due.
	calls := make(chan string, 1)
	client.OnRenewCall(func(reason string) {
		select {
		case calls <- reason:
		default:
		}
	})
	r.called, r.spread = calls, 0
	go client.Watch(watchCtx, 0, func(*api.View) error { return nil })
	ctxLoop, stop = context.WithCancel(ctx)
	done = make(chan struct{})
	go func() { defer close(done); r.run(ctxLoop) }()
	if _, err := off.RenewAll(ctx, "test: intermediate re-keyed"); err != nil {
		t.Fatal(err)
	}
	var called string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if g, _ := op.Gateway(ctx, gw); g.CertSerial != renewed {
			called = g.CertSerial
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the certificate was not renewed on the controllers' call")
		}
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if cur, err := r.current(); err == nil && ca.Serial(cur) == called {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the certificate renewed on call was not installed")
		}
	}
	stop()
	<-done
	if st, err := op.RenewAllStatus(ctx); err != nil || slices.Contains(st.Waiting, gw) {
		t.Fatalf("after the called renewal: %+v %v", st, err)
	}

	// A call that arrives while the gateway renews is answered too, with
	// another renewal: it may have been made after the certificate being
	// issued (the agent cannot tell).
	second := false
	r.client = func() *api.Client {
		if !second {
			second = true
			calls <- "test: a second call, made during the renewal"
		}
		return client
	}
	// Counted in the controllers' inventory: the agent's certificate can
	// move on twice between two looks at it.
	issued := func() int {
		t.Helper()
		certs, err := op.Certificates(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, c := range certs {
			if c.Gateway == gw {
				n++
			}
		}
		return n
	}
	before := issued()
	calls <- "test: a first call"
	ctxLoop, stop = context.WithCancel(ctx)
	done = make(chan struct{})
	go func() { defer close(done); r.run(ctxLoop) }()
	for deadline := time.Now().Add(10 * time.Second); issued() < before+2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("renewals after two calls, one made during the first renewal: %d, want 2", issued()-before)
		}
	}
	stop()
	<-done
	r.client = func() *api.Client { return client }

	// No answer (no controller reachable; as well a leader or a
	// connection lost after the commit): the key is kept and asked for
	// again, which the controllers accept even if the first attempt was
	// committed.
	r.client = func() *api.Client { return api.NewClient("https://127.0.0.1:1", tlsCfg) }
	if err := r.renew(ctx); err == nil || errors.Is(err, ErrRenewRefused) {
		t.Fatalf("renewal with no controller: %v", err)
	}
	if r.pending == nil {
		t.Fatal("no key kept after a renewal that got no answer")
	}
	kept := r.pending.key.Public()
	// A retry refused (by a node that does not know the first attempt's
	// answer was lost, by a rate limit) keeps the key: the first attempt
	// may have been certified.
	for _, code := range []int{http.StatusForbidden, http.StatusTooManyRequests, http.StatusBadRequest} {
		srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			io.WriteString(w, `{"error":"refused by the test"}`)
		}))
		r.client = func() *api.Client { return api.NewClient(srv.URL, &tls.Config{InsecureSkipVerify: true}) }
		err := r.renew(ctx)
		srv.Close()
		if err == nil || r.pending == nil || !samePublicKey(r.pending.key.Public(), kept) {
			t.Fatalf("a retry refused with HTTP %d: %v; the key kept: %v", code, err, r.pending != nil)
		}
	}
	// The agent restarts before it asks again: the start settles the
	// state directory (a token's keys that no file names are destroyed)
	// and the new renewer takes the kept key from filePendingRenewal.
	if err := settleKeys(cfg, keys, log); err != nil {
		t.Fatal(err)
	}
	clock := r.now
	r = newRenewer(cfg, keys, func() *api.Client { return client }, log)
	r.now = clock
	if r.pending == nil || !samePublicKey(r.pending.key.Public(), kept) {
		t.Fatal("a restarted agent lost the key of the renewal that got no answer")
	}
	if err := r.renew(ctx); err != nil {
		t.Fatalf("renewal retried: %v", err)
	}
	if now, _ := r.current(); !samePublicKey(now.PublicKey, kept) || r.pending != nil {
		t.Fatalf("the retried renewal certified another key (pending left: %v)", r.pending != nil)
	}
	if _, err := os.Stat(cfg.path(filePendingRenewal)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the answered renewal's file stays: %v", err)
	}
	if token {
		tokenKey()
	}

	// A crash after the renewal was staged, before its file was removed:
	// the start installs the renewal, and the file left behind names the
	// key now in use. Dropping it must not destroy that key.
	liveData, err := os.ReadFile(cfg.path(keys.keyFile()))
	if err != nil {
		t.Fatal(err)
	}
	liveKey, err := keys.loadKey(liveData)
	if err != nil {
		t.Fatal(err)
	}
	liveCSR, _ := ca.NewCSR(liveKey, "gateway")
	left := &pendingRenewal{from: "00ff", key: liveKey, keyData: liveData,
		csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: liveCSR.Raw}))}
	if err := r.keepPending(left); err != nil {
		t.Fatal(err)
	}
	r = newRenewer(cfg, keys, func() *api.Client { return client }, log)
	r.now = clock
	if r.pending == nil {
		t.Fatal("the file left behind was not read")
	}
	if err := r.clearPending(r.pending); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.loadPair(cfg.path(fileCert), cfg.path(keys.keyFile())); err != nil {
		t.Fatalf("the key in use after dropping a renewal that named it: %v", err)
	}

	// An answer that cannot be installed (here: the root to check it
	// against is unreadable) keeps the key: the controllers made its
	// certificate current, and asking again for it is what they accept.
	r.pending = nil
	os.Rename(cfg.path(fileRoot), cfg.path(fileRoot)+".away")
	if err := r.renew(ctx); err == nil {
		t.Fatal("renewal installed without its root")
	}
	os.Rename(cfg.path(fileRoot)+".away", cfg.path(fileRoot))
	if r.pending == nil {
		t.Fatal("the key of an answered renewal was discarded")
	}
	kept = r.pending.key.Public()
	if err := r.renew(ctx); err != nil {
		t.Fatalf("renewal asked again after a failed installation: %v", err)
	}
	if now, _ := r.current(); !samePublicKey(now.PublicKey, kept) {
		t.Fatal("the renewal asked again certified another key")
	}
	if token {
		tokenKey()
	}

	// A revoked gateway cannot renew, and the key made for the refused
	// renewal does not stay in the token.
	if _, err := off.Revoke(ctx, api.RevokeRequest{Gateway: gw, Reason: "keyCompromise"}); err != nil {
		t.Fatal(err)
	}
	if err := r.renew(ctx); !errors.Is(err, ErrRenewRefused) {
		t.Fatalf("renewal of a revoked gateway: %v, want ErrRenewRefused", err)
	}
	if token {
		tokenKey()
	}
	// An expired certificate is named as such, before any call.
	cur, _ := r.current()
	skew.Store(int64(cur.NotAfter.Sub(time.Now()) + time.Second))
	if err := r.renew(ctx); !errors.Is(err, ErrCertExpired) {
		t.Fatalf("renewal of an expired certificate: %v, want ErrCertExpired", err)
	}
}

// TestRenewFinishInterrupted: a crash between the two renames of an
// installation leaves the new key live and the new certificate pending;
// finishRenewal completes it.
func TestRenewFinishInterrupted(t *testing.T) {
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	oldKey, oldCert := selfSigned(t)
	newKey, newCert := selfSigned(t)
	os.WriteFile(cfg.path(fileTLSKey), oldKey, 0o600)
	os.WriteFile(cfg.path(fileCert), oldCert, 0o644)
	if err := finishRenewal(cfg, fileKeys{}); err != nil {
		t.Fatalf("nothing pending: %v", err)
	}
	os.WriteFile(cfg.path(fileTLSKey), newKey, 0o600) // the first rename happened
	os.WriteFile(cfg.path(fileCertNext), newCert, 0o644)
	if err := finishRenewal(cfg, fileKeys{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(cfg.path(fileCert)); string(got) != string(newCert) {
		t.Fatal("the pending certificate was not installed")
	}
	// A pending certificate that matches no key is refused, not installed.
	os.WriteFile(cfg.path(fileCertNext), oldCert, 0o644)
	if err := finishRenewal(cfg, fileKeys{}); err == nil {
		t.Fatal("installed a certificate that does not match the key")
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// selfSigned returns a PEM key and certificate that match.
func selfSigned(t *testing.T) (keyPEM, certPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), certFor(t, key)
}

// TestPendingRenewalFile: an unusable kept renewal (torn, not a key, no
// CSR) is dropped at start with the file, never used or fatal.
func TestPendingRenewalFile(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	good, keyData, err := fileKeys{}.newKey()
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{
		"torn":      `{"from":"01ab","key":`,
		"not a key": `{"from":"01ab","key":"hello","csr":"x"}`,
		"no csr":    fmt.Sprintf(`{"from":"01ab","key":%q}`, keyData),
	} {
		if err := os.WriteFile(cfg.path(filePendingRenewal), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if r := newRenewer(cfg, fileKeys{}, nil, log); r.pending != nil {
			t.Fatalf("%s: used %+v", name, r.pending)
		}
		if _, err := os.Stat(cfg.path(filePendingRenewal)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: the file stays: %v", name, err)
		}
	}
	csr, _ := ca.NewCSR(good, "gateway")
	csrPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}))
	other, _, _ := fileKeys{}.newKey()
	otherCSR, _ := ca.NewCSR(other, "gateway")
	if err := os.WriteFile(cfg.path(filePendingRenewal), fmt.Appendf(nil, `{"from":"01ab","key":%q,"csr":%q}`, keyData,
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: otherCSR.Raw})), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := newRenewer(cfg, fileKeys{}, nil, log); r.pending != nil {
		t.Fatal("used a kept renewal whose CSR is for another key")
	}
	p := &pendingRenewal{from: "01ab", key: good, keyData: keyData, csr: csrPEM}
	r := newRenewer(cfg, fileKeys{}, nil, log)
	if err := r.keepPending(p); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(cfg.path(filePendingRenewal)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("kept file: %v %v", fi, err)
	}
	got := newRenewer(cfg, fileKeys{}, nil, log).pending
	if got == nil || got.from != "01ab" || got.csr != csrPEM || !samePublicKey(got.key.Public(), good.Public()) {
		t.Fatalf("read back %+v", got)
	}
}

// TestReenroll: an enrolled gateway enrolls again with a re-enrollment
// token: new TLS and WireGuard keys, a new certificate, the same name and
// overlay address. A plain enrollment over it is refused, and so is a
// re-enrollment of a gateway never enrolled.
func TestReenroll(t *testing.T) {
	hsmtest.Require(t)
	c := startController(t)
	ctx := context.Background()
	if _, err := c.op.AddGateway(ctx, api.Gateway{ID: "gw9", Agency: "000.00.00.H29"}); err != nil {
		t.Fatal(err)
	}
	tok, err := c.off.IssueToken(ctx, "gw9", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Controller, cfg.StateDir = c.base, filepath.Join(t.TempDir(), "agent")
	if _, err := Reenroll(ctx, cfg, tok.Token, c.rootFile); err == nil || !strings.Contains(err.Error(), "not enrolled yet") {
		t.Fatalf("re-enrolling a gateway never enrolled: %v", err)
	}
	first, err := Enroll(ctx, cfg, tok.Token, c.rootFile)
	if err != nil {
		t.Fatal(err)
	}
	read := func(name string) string {
		b, err := os.ReadFile(cfg.path(name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	wg1, cert1 := read(fileWGKey), read(fileCert)
	again, err := c.off.ReenrollToken(ctx, "gw9", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Enroll(ctx, cfg, again.Token, c.rootFile); err == nil || !strings.Contains(err.Error(), "--reenroll") {
		t.Fatalf("a plain enrollment over an enrolled gateway: %v", err)
	}
	second, err := Reenroll(ctx, cfg, again.Token, c.rootFile)
	if err != nil {
		t.Fatal(err)
	}
	if second.Gateway != first.Gateway || second.OverlayIP != first.OverlayIP {
		t.Fatalf("re-enrolled as %+v, was %+v", second, first)
	}
	if read(fileWGKey) == wg1 || read(fileCert) == cert1 {
		t.Fatal("the WireGuard key or the certificate did not change")
	}
}

// TestRenewAfterMerge: a gateway whose agency was merged into another
// renews into a certificate that names the survivor (the controller
// issues for the agency the registry holds now), and the agent installs
// it: its name, not its agency, is what must not change. Refusing it
// left the gateway on a certificate the controller no longer accepts.
func TestRenewAfterMerge(t *testing.T) {
	hsmtest.Require(t)
	c := startController(t)
	ctx := context.Background()
	const h01, h29 = "000.00.00.H01", "000.00.00.H29"
	if _, err := c.op.AddAgency(ctx, api.Agency{Code: h01, Name: "Hà Giang"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.op.AddGateway(ctx, api.Gateway{ID: "gw-h01", Agency: h01}); err != nil {
		t.Fatal(err)
	}
	tok, err := c.off.IssueToken(ctx, "gw-h01", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Controller, cfg.StateDir = c.base, filepath.Join(t.TempDir(), "agent")
	if _, err := Enroll(ctx, cfg, tok.Token, c.rootFile); err != nil {
		t.Fatal(err)
	}
	if _, err := c.op.MergeAgencies(ctx, api.AgencyMerge{Sources: []string{h01}, Into: h29}); err != nil {
		t.Fatal(err)
	}
	keys, err := openKeyStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { keys.Close() })
	_, _, tlsCfg, err := loadIdentity(cfg, keys)
	if err != nil {
		t.Fatal(err)
	}
	client := api.NewClient(c.base, reloadingClientCert(cfg, keys, tlsCfg))
	r := newRenewer(cfg, keys, func() *api.Client { return client }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	first, _ := r.current()
	if id, _ := ca.IdentityOf(first); id.Agency != h01 {
		t.Fatalf("enrolled as %+v", id)
	}
	r.onRenewed = client.ResetConnections
	if err := r.renew(ctx); err != nil {
		t.Fatalf("renewal after the merge: %v", err)
	}
	cur, _ := r.current()
	if id, _ := ca.IdentityOf(cur); id.Agency != h29 || id.Name != "gw-h01" || id.Kind != ca.KindGateway {
		t.Fatalf("renewed as %+v, want gateway gw-h01 of %s", id, h29)
	}
	if g, err := c.op.Gateway(ctx, "gw-h01"); err != nil || g.CertSerial != ca.Serial(cur) {
		t.Fatalf("the controller's current certificate: %+v, %v; the agent holds %s", g, err, ca.Serial(cur))
	}
	if err := client.Report(ctx, api.Report{}); err != nil {
		t.Fatalf("a call with the renewed certificate: %v", err)
	}
}

// TestRenewAfterClockJump: a gateway whose clock was far behind when the
// renewal was scheduled (a machine that booted without a good real-time
// clock, before NTP set it) renews as soon as the clock is set right,
// not after the long wait computed from the wrong time, which would let
// its certificate expire and lock it out for good.
func TestRenewAfterClockJump(t *testing.T) {
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	keyPEM, certPEM := selfSigned(t)
	os.WriteFile(cfg.path(fileTLSKey), keyPEM, 0o600)
	os.WriteFile(cfg.path(fileCert), certPEM, 0o644)
	attempts := make(chan struct{}, 1)
	// Nothing listens there: the attempt fails, and is seen as the
	// renewer asks for the client.
	client := api.NewClient("https://127.0.0.1:1", &tls.Config{})
	r := newRenewer(cfg, fileKeys{}, func() *api.Client {
		select {
		case attempts <- struct{}{}:
		default:
		}
		return client
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	cert, err := r.current()
	if err != nil {
		t.Fatal(err)
	}
	var clock atomic.Pointer[time.Time]
	behind := cert.NotBefore.AddDate(-1, 0, 0) // a year behind
	clock.Store(&behind)
	r.now = func() time.Time { return *clock.Load() }
	r.recheck = 20 * time.Millisecond

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-attempts:
		t.Fatal("renewed with the clock a year before the certificate's life")
	case <-time.After(100 * time.Millisecond):
	}
	due := renewAt(cert).Add(time.Second) // NTP sets the clock: the renewal is due
	clock.Store(&due)
	select {
	case <-attempts:
	case <-time.After(5 * time.Second):
		t.Fatal("no renewal after the clock jumped past the renewal time: the renewer still sleeps on the wait computed from the wrong clock")
	}
}
