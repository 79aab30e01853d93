package controller

import (
	"bytes"
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
	if labels := tokenLabels(t, hc); slices.Contains(labels, RootKeyLabel) {
		t.Fatalf("the node's token holds a root key: %v", labels)
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

// TestInitRunsAgain: init checks its input before it makes anything, and
// runs again to the end after it stopped half way: the keys the first
// run made are taken again, the files written again, root.pem last.
// init --join likewise, with intermediate.csr last.
func TestInitRunsAgain(t *testing.T) {
	hsmtest.Require(t)
	ctx := context.Background()
	hc := hsmtest.NewToken(t)
	dir := t.TempDir()
	pinFile := filepath.Join(dir, "pin")
	os.WriteFile(pinFile, []byte(hc.PIN+"\n"), 0o600)
	cfg := Config{
		Node: "ctl1", DataDir: filepath.Join(dir, "data"), RaftAddr: freePort(t), APIAddr: "127.0.0.1:0",
		OverlayPrefix: "100.64.0.0/24",
		HSM:           HSMConfig{Module: hc.Module, TokenLabel: hc.TokenLabel, PINFile: pinFile},
	}
	people := []Person{{"operator1", ca.RoleOperator}, {"officer1", ca.RoleOfficer}}
	o := InitOptions{Config: cfg, People: people, PeopleDir: filepath.Join(dir, "people"), ConfigPath: filepath.Join(dir, "ctl1.yaml")}

	// Bad input: refused before the token or the data directory is touched.
	bad := o
	bad.People = []Person{{"alice", "officr"}, {"bob/x", ca.RoleOperator}, {"alice", ca.RoleAuditor}}
	err := Init(ctx, bad)
	for _, want := range []string{`role "officr"`, `person "bob/x"`, `"alice" is named twice`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("init with bad people: %v, want it to say %s", err, want)
		}
	}
	os.WriteFile(o.ConfigPath, []byte("node: other\n"), 0o640)
	if err := Init(ctx, o); err == nil || !strings.Contains(err.Error(), "holds another config") {
		t.Fatalf("init over another config file: %v", err)
	}
	os.Remove(o.ConfigPath)
	if keys := tokenLabels(t, hc); len(keys) != 0 {
		t.Fatalf("refused inits left keys in the token: %v", keys)
	}
	if _, err := os.Stat(cfg.DataDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("refused inits made the data directory: %v", err)
	}

	// Stopped before its last file: the next run finishes, with the same keys.
	if err := Init(ctx, o); err != nil {
		t.Fatal(err)
	}
	first, err := readCert(cfg.pkiPath(rootFile))
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(cfg.pkiPath(rootFile))
	// Stopped, too, after each key was generated and before it was
	// recorded: the keys are taken all the same.
	made := map[string]string{}
	if b, err := os.ReadFile(cfg.pkiPath(madeKeysFile)); err != nil || json.Unmarshal(b, &made) != nil || len(made) != 3 {
		t.Fatalf("%s: %v %v", madeKeysFile, made, err)
	}
	tok, err := hsm.Open(hc)
	if err != nil {
		t.Fatal(err)
	}
	for label := range made {
		k, err := tok.Signer(label)
		if err != nil {
			t.Fatal(err)
		}
		made[label] = keyBeingMade(hc.TokenLabel, k.(*hsm.Key).ID())
	}
	tok.Close()
	if err := writeJSONFile(cfg.pkiPath(madeKeysFile), made); err != nil {
		t.Fatal(err)
	}
	if err := Init(ctx, o); err != nil {
		t.Fatalf("init run again: %v", err)
	}
	if b, err := os.ReadFile(cfg.pkiPath(madeKeysFile)); err != nil || json.Unmarshal(b, &made) != nil || slices.ContainsFunc(slices.Collect(maps.Values(made)), func(v string) bool { return strings.HasPrefix(v, "being made") }) {
		t.Fatalf("%s after the run again: %v %v", madeKeysFile, made, err)
	}
	again, err := readCert(cfg.pkiPath(rootFile))
	if err != nil {
		t.Fatal(err)
	}
	if !first.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(again.PublicKey) {
		t.Fatal("the run again made another root key")
	}
	if keys := tokenLabels(t, hc); len(keys) != 3 {
		t.Fatalf("token keys %v, want the root's, the intermediate's and the TLS key", keys)
	}
	if err := Init(ctx, o); err == nil || !strings.Contains(err.Error(), "already initialised") {
		t.Fatalf("init once done: %v", err)
	}
	// A new data directory on the same token is a new cluster: the keys
	// in the token are not its own, and none is taken.
	other := o
	other.Config.DataDir, other.ConfigPath, other.PeopleDir = filepath.Join(dir, "data-other"), "", filepath.Join(dir, "people-other")
	if err := Init(ctx, other); err == nil || !strings.Contains(err.Error(), "did not make") {
		t.Fatalf("init of another cluster on a used token: %v", err)
	}
	n := startNode(t, cfg)
	defer n.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, ok := n.State().Person("officer1"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bootstrap people not registered: %+v", n.State().People())
		}
	}
	off := person(t, cfg, n, "officer1")
	if _, err := off.People(ctx); err != nil {
		t.Fatalf("the credentials of the run again: %v", err)
	}

	// init --join, stopped before its CSR: the next run writes it, for the
	// same intermediate key.
	hc2 := hsmtest.NewToken(t)
	pin2 := filepath.Join(dir, "pin2")
	os.WriteFile(pin2, []byte(hc2.PIN+"\n"), 0o600)
	cfg2 := cfg
	cfg2.Node, cfg2.DataDir, cfg2.HSM = "ctl2", filepath.Join(dir, "data2"), HSMConfig{Module: hc2.Module, TokenLabel: hc2.TokenLabel, PINFile: pin2}
	jo := InitOptions{Config: cfg2, ConfigPath: filepath.Join(dir, "ctl2.yaml")}
	csr1, err := PrepareJoin(ctx, jo)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(cfg2.pkiPath(csrFile))
	csr2, err := PrepareJoin(ctx, jo)
	if err != nil {
		t.Fatalf("init --join run again: %v", err)
	}
	r1, _ := ca.ParseCSR(csr1)
	r2, _ := ca.ParseCSR(csr2)
	if !bytes.Equal(r1.RawSubjectPublicKeyInfo, r2.RawSubjectPublicKeyInfo) {
		t.Fatal("init --join run again made another intermediate key")
	}
	if _, err := PrepareJoin(ctx, jo); err == nil || !strings.Contains(err.Error(), "finish the join") {
		t.Fatalf("init --join once done: %v", err)
	}
}

// TestBootstrapPeopleResumed: a founding node whose first start
// registered only some of the bootstrap people registers the rest at the
// next start.
func TestBootstrapPeopleResumed(t *testing.T) {
	cfg := testConfig(t)
	file := cfg.pkiPath(bootstrapPeopleFile)
	all, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var people []bootstrapPerson
	if err := json.Unmarshal(all, &people); err != nil || len(people) != 3 {
		t.Fatalf("bootstrap people %s: %v", all, err)
	}
	if err := writeJSONFile(file, people[:1]); err != nil { // the start stops after the first
		t.Fatal(err)
	}
	registered := func(n *Node, want int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); len(n.State().People()) != want; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("registered %+v, want %d people", n.State().People(), want)
			}
		}
	}
	n := startNode(t, cfg)
	registered(n, 1)
	n.Close()
	if err := os.WriteFile(file, all, 0o644); err != nil {
		t.Fatal(err)
	}
	n = startNode(t, cfg)
	defer n.Close()
	registered(n, 3)
	if _, err := person(t, cfg, n, "officer2").People(context.Background()); err != nil {
		t.Fatalf("the last bootstrap person: %v", err)
	}
}

// tokenLabels returns the labels of the keys in the token hc.
func tokenLabels(t *testing.T, hc hsm.Config) []string {
	t.Helper()
	tok, err := hsm.Open(hc)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	keys, err := tok.Keys()
	if err != nil {
		t.Fatal(err)
	}
	var labels []string
	for _, k := range keys {
		labels = append(labels, k.Label)
	}
	return labels
}

// TestTokenKeyTakesOnlyItsOwn: a generation that fails leaves its mark
// (the key may exist all the same), which only a key with the random id
// it names matches: a key someone else puts under the label later is
// refused; so is a key under a label marked as being made with another
// id.
func TestTokenKeyTakesOnlyItsOwn(t *testing.T) {
	hsmtest.Require(t)
	hc := hsmtest.NewToken(t)
	cfg := Config{DataDir: t.TempDir()}
	if err := os.MkdirAll(filepath.Dir(cfg.pkiPath(madeKeysFile)), 0o755); err != nil {
		t.Fatal(err)
	}
	tok, err := hsm.Open(hc)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	// A generation that fails (a curve the token code refuses; in the
	// field a full token, a session error).
	if _, err := tokenKey(tok, cfg, "root", elliptic.P224()); err == nil {
		t.Fatal("P-224 generated")
	}
	if _, err := tok.GenerateKey("root", elliptic.P256()); err != nil { // someone else's
		t.Fatal(err)
	}
	if _, err := tokenKey(tok, cfg, "root", elliptic.P256()); err == nil || !strings.Contains(err.Error(), "did not make") {
		t.Fatalf("a key made after a failed generation: %v", err)
	}
	// Marked as being made, with another id than the key's.
	if err := writeJSONFile(cfg.pkiPath(madeKeysFile), map[string]string{"other": keyBeingMade(hc.TokenLabel, "00")}); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.GenerateKey("other", elliptic.P256()); err != nil {
		t.Fatal(err)
	}
	if _, err := tokenKey(tok, cfg, "other", elliptic.P256()); err == nil || !strings.Contains(err.Error(), "did not make") {
		t.Fatalf("a key whose id is not the one marked: %v", err)
	}
}
