package controller

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/hsm/hsmtest"
)

// TestFoundWithCeremonyRoot: the production path. The root lives in its
// own token under a 2-of-3 ceremony; the founding node makes only its
// intermediate and TLS keys and a CSR; one share cannot sign it, two do;
// finish-join installs it and issues the bootstrap people, and the node
// founds a working cluster whose token holds no root key.
func TestFoundWithCeremonyRoot(t *testing.T) {
	hsmtest.Require(t)
	ctx := context.Background()
	dir := t.TempDir()
	rootTok := hsmtest.NewToken(t)
	ceremony := filepath.Join(dir, "ceremony")
	res, err := ca.RunCeremony(ca.CeremonyOptions{HSM: rootTok, SOPIN: hsmtest.SOPIN(rootTok.TokenLabel),
		Custodians: []string{"an", "binh", "cuong"}, Threshold: 2, OutDir: ceremony, Operator: "officer1"})
	if err != nil {
		t.Fatal(err)
	}

	hc := hsmtest.NewToken(t)
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte(hc.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Node: "ctl1", DataDir: filepath.Join(dir, "data"), RaftAddr: freePort(t), APIAddr: "127.0.0.1:0",
		OverlayPrefix: "100.64.0.0/24", HSM: HSMConfig{Module: hc.Module, TokenLabel: hc.TokenLabel, PINFile: pinFile}}
	people := []Person{{"operator1", ca.RoleOperator}, {"officer1", ca.RoleOfficer}}
	if _, err := PrepareJoin(ctx, InitOptions{Config: cfg, People: people}); err == nil {
		t.Fatal("a joining node was given bootstrap people")
	}
	csrPEM, err := PrepareJoin(ctx, InitOptions{Config: cfg, Found: true, People: people, PeopleDir: filepath.Join(dir, "people")})
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ca.ParseCSR(csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	shares := func(names ...string) [][]byte {
		var paths []string
		for _, n := range names {
			paths = append(paths, res.ShareFiles[n])
		}
		b, err := ca.ReadShareFiles(paths...)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if _, err := ca.OpenRoot(ctx, ca.RootOptions{Dir: ceremony, Actor: "officer1"}, shares("binh")); err == nil || !strings.Contains(err.Error(), "requires 2") {
		t.Fatalf("one share of a 2-of-3 root: got %v", err)
	}
	root, err := ca.OpenRoot(ctx, ca.RootOptions{Dir: ceremony, Actor: "officer1"}, shares("an", "cuong"))
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.SignIntermediate(ctx, csr, "ctl1")
	if err != nil {
		t.Fatal(err)
	}
	bundle := ca.EncodePEM(inter, root.Certificate())
	root.Close()
	if Founding(cfg) {
		t.Fatal("founding before finish-join")
	}
	if err := FinishJoin(ctx, cfg, bundle, time.Now()); err != nil {
		t.Fatal(err)
	}
	if !Founding(cfg) {
		t.Fatal("finish-join of a founding node did not mark it to bootstrap")
	}

	n := startNode(t, cfg)
	defer n.Close()
	op := person(t, cfg, n, "operator1")
	if _, err := op.AddAgency(ctx, api.Agency{Code: "000.00.00.H29", Name: "Quảng Ninh"}); err != nil {
		t.Fatal(err)
	}
	if ps, err := op.People(ctx); err != nil || len(ps) != 2 {
		t.Fatalf("bootstrap people: %v %v", ps, err)
	}
	if got, _ := os.ReadFile(cfg.pkiPath(rootFile)); !strings.Contains(string(ca.EncodePEM(res.Root)), strings.TrimSpace(string(got))) {
		t.Fatal("the node's root is not the ceremony's")
	}
	tok, err := hsm.Open(hc)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	keys, err := tok.Keys()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.Label == RootKeyLabel {
			t.Fatalf("the node's token holds a root key: %+v", k)
		}
	}

	// Revoking an intermediate is a root operation too: one share is
	// refused; two sign the root CRL, which an officer publishes and
	// every node then serves, and openssl reads.
	// The intermediates are in the inventory, issued by the root.
	ctl2 := ca.Serial(inter) // revoke ctl1's own: the test needs one the inventory holds
	waitUntil(t, 10*time.Second, "ctl1's intermediate in the inventory", func() bool {
		c, err := op.Certificate(ctx, ctl2)
		return err == nil && c.Kind == "intermediate" && c.Issuer == ca.IssuerID(res.Root) && c.Status == api.CertValid
	})
	if _, err := ca.OpenRoot(ctx, ca.RootOptions{Dir: ceremony}, shares("an")); err == nil {
		t.Fatal("one share opened the root for its CRL")
	}
	root, err = ca.OpenRoot(ctx, ca.RootOptions{Dir: ceremony, Actor: "officer1"}, shares("binh", "cuong"))
	if err != nil {
		t.Fatal(err)
	}
	der, err := root.RevokeAndSignCRL(ctx, []ca.RootRevocation{{Serial: ctl2, Reason: "keyCompromise", At: time.Now().UTC(), Actor: "officer1"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.RevokeAndSignCRL(ctx, []ca.RootRevocation{{Serial: ctl2, Reason: "keyCompromise"}}); !errors.Is(err, ca.ErrRevokedTwice) {
		t.Fatalf("revoking twice: %v", err)
	}
	root.Close()
	off := person(t, cfg, n, "officer1")
	if _, err := op.PublishRootCRL(ctx, der); err == nil {
		t.Fatal("an operator published the root CRL")
	}
	pub, err := off.PublishRootCRL(ctx, der)
	if err != nil || pub.Number != 1 || pub.Revoked != 1 {
		t.Fatalf("publish: %+v %v", pub, err)
	}
	_, err = off.PublishRootCRL(ctx, der)
	wantStatus(t, err, 409, "already at 1")
	_, err = off.PublishRootCRL(ctx, []byte("not a CRL"))
	wantStatus(t, err, 400, "root CRL")
	other, err := n.ca.CRL(nil, big.NewInt(7), time.Now()) // signed by the intermediate, not the root
	if err != nil {
		t.Fatal(err)
	}
	_, err = off.PublishRootCRL(ctx, other)
	wantStatus(t, err, 400, "not signed by this network's root")

	if c, err := op.Certificate(ctx, ctl2); err != nil || c.Status != api.CertRevoked || c.ReasonName != "keyCompromise" || c.RevokedBy != "officer1" {
		t.Fatalf("the revoked intermediate in the inventory: %+v %v", c, err)
	}
	resp, err := http.Get("http://" + n.httpLn.Addr().String() + pub.Path)
	if err != nil {
		t.Fatal(err)
	}
	served, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	crl, err := x509.ParseRevocationList(served)
	if err != nil || crl.CheckSignatureFrom(res.Root) != nil || len(crl.RevokedCertificateEntries) != 1 ||
		crl.RevokedCertificateEntries[0].SerialNumber.Text(16) != ctl2 {
		t.Fatalf("served root CRL: %v %+v", err, crl)
	}
	if openssl, err := exec.LookPath("openssl"); err == nil {
		f := filepath.Join(dir, "root.crl")
		os.WriteFile(f, served, 0o644)
		out, err := exec.Command(openssl, "crl", "-inform", "DER", "-in", f, "-noout", "-text").CombinedOutput()
		if err != nil || !strings.Contains(strings.ToUpper(string(out)), strings.ToUpper(ctl2)) || !strings.Contains(string(out), "Key Compromise") {
			t.Fatalf("openssl crl: %v\n%s", err, out)
		}
	}
}
