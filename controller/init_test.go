package controller

import (
	"context"
	"os"
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
}
