package netagent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/controller"
	"github.com/govnet/govnet/hsm/hsmtest"
)

// TestRenewLoop runs a real controller (SoftHSM2) that issues gateway
// certificates of the shortest allowed life, enrolls a gateway, and
// drives the renewal loop with a clock past two thirds of that life: the
// certificate is renewed, the files replaced, and the same API client
// presents the new certificate at once (the controller refuses the old
// one). Then a revoked gateway's renewal is refused, and an expired
// certificate is reported as such.
func TestRenewLoop(t *testing.T) {
	hsmtest.Require(t)
	t.Cleanup(hsmtest.Cleanup) // runs last, once the node is closed
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
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := controller.Start(context.Background(), ccfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	for deadline := time.Now().Add(15 * time.Second); n.Ready() != nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("controller not ready: %v", n.Ready())
		}
	}
	base := "https://" + n.Addr().String()
	rootFile := filepath.Join(ccfg.DataDir, "pki", "root.pem")
	personClient := func(name string) *api.Client {
		tc, err := api.TLSConfig(rootFile, filepath.Join(people, name+".crt"), filepath.Join(people, name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		return api.NewClient(base, tc)
	}
	ctx := context.Background()
	op, off := personClient("op"), personClient("off")
	if _, err := op.AddAgency(ctx, api.Agency{Code: "000.00.00.H29", Name: "Quảng Ninh"}); err != nil {
		t.Fatal(err)
	}
	if _, err := op.AddGateway(ctx, api.Gateway{ID: "gw1", Agency: "000.00.00.H29"}); err != nil {
		t.Fatal(err)
	}
	tok, err := off.IssueToken(ctx, "gw1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Controller, cfg.StateDir = base, filepath.Join(dir, "agent")
	if _, err := Enroll(ctx, cfg, tok.Token, rootFile); err != nil {
		t.Fatal(err)
	}
	_, _, tlsCfg, err := loadIdentity(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client := api.NewClient(base, reloadingClientCert(cfg, tlsCfg))
	if err := client.Report(ctx, api.Report{}); err != nil {
		t.Fatal(err)
	}

	r := newRenewer(cfg, func() *api.Client { return client }, log)
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

	ctxLoop, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.run(ctxLoop) }()
	var renewed string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if g, _ := op.Gateway(ctx, "gw1"); g.CertSerial != ca.Serial(first) {
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
	// The same client, without a restart, presents the new certificate:
	// the controller refuses any other.
	if err := client.Report(ctx, api.Report{}); err != nil {
		t.Fatalf("report after renewal: %v", err)
	}
	if c, err := op.Certificate(ctx, renewed); err != nil || c.Requester != "gateway:gw1" || c.Status != api.CertValid {
		t.Fatalf("inventory: %+v %v", c, err)
	}

	// A revoked gateway cannot renew.
	if _, err := off.Revoke(ctx, api.RevokeRequest{Gateway: "gw1", Reason: "keyCompromise"}); err != nil {
		t.Fatal(err)
	}
	if err := r.renew(ctx); !errors.Is(err, ErrRenewRefused) {
		t.Fatalf("renewal of a revoked gateway: %v, want ErrRenewRefused", err)
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
	if err := finishRenewal(cfg); err != nil {
		t.Fatalf("nothing pending: %v", err)
	}
	os.WriteFile(cfg.path(fileTLSKey), newKey, 0o600) // the first rename happened
	os.WriteFile(cfg.path(fileCertNext), newCert, 0o644)
	if err := finishRenewal(cfg); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(cfg.path(fileCert)); string(got) != string(newCert) {
		t.Fatal("the pending certificate was not installed")
	}
	// A pending certificate that matches no key is refused, not installed.
	os.WriteFile(cfg.path(fileCertNext), oldCert, 0o644)
	if err := finishRenewal(cfg); err == nil {
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
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
