package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/controller"
	"github.com/govnet/govnet/hsm/hsmtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	hsmtest.Cleanup()
	os.Exit(code)
}

// TestPersonCredentialsCLI runs govnetctl's commands against a controller:
// an officer invites a person, who enrolls with the token and a key made
// here, works with the new credentials and renews them.
func TestPersonCredentialsCLI(t *testing.T) {
	people := testNode(t, time.Now(), controller.Person{Name: "officer1", Role: ca.RoleOfficer})
	dir := t.TempDir()
	base := people["officer1"][:4] // --controller and --root
	as := func(cert, key string) []string {
		return append(append([]string(nil), base...), "--cert", cert, "--key", key)
	}
	officer := people["officer1"]
	doraCrt, doraKey := filepath.Join(dir, "dora", "dora.crt"), filepath.Join(dir, "dora", "dora.key")
	os.Mkdir(filepath.Dir(doraCrt), 0o700)
	dora := as(doraCrt, doraKey)
	tokFile := filepath.Join(dir, "dora.token")

	// dora makes her key first; the invitation names it.
	out := run(t, dora, "person", "key", "--key-type", "p384", "-o", "json")
	var key struct {
		KeySHA256 string `json:"key_sha256"`
	}
	if err := json.Unmarshal([]byte(out), &key); err != nil || len(key.KeySHA256) != 64 {
		t.Fatalf("person key printed %q (%v)", out, err)
	}
	other := strings.Repeat("ab", 32)
	run(t, officer, "person", "invite", "dora", "--role", "auditor", "--key-sha256", other, "--write", tokFile)
	if _, err := runErr(dora, "person", "enroll", "dora", "--token-file", tokFile); err == nil || !strings.Contains(err.Error(), "another key") {
		t.Fatalf("enrollment of a key the invitation does not name: %v", err)
	}
	out = run(t, officer, "person", "invite", "dora", "--role", "auditor", "--ttl", "10m", "--key-sha256", key.KeySHA256, "--write", tokFile)
	if !strings.Contains(out, "dora (auditor)") || !strings.Contains(out, "(in "+tokFile+")") {
		t.Fatalf("invite printed:\n%s", out)
	}
	out = run(t, dora, "person", "enroll", "dora", "--token-file", tokFile, "--key-type", "p384")
	if !strings.Contains(out, "dora") || !strings.Contains(out, "auditor") {
		t.Fatalf("enroll printed:\n%s", out)
	}
	first := leafOf(t, doraCrt, doraKey)
	if id, _ := ca.IdentityOf(first); id.Name != "dora" || id.Role != ca.RoleAuditor || first.PublicKeyAlgorithm.String() != "ECDSA" {
		t.Fatalf("dora's certificate: %+v, %s", id, first.PublicKeyAlgorithm)
	}
	if fi, _ := os.Stat(doraKey); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v", fi.Mode().Perm())
	}
	if _, err := runErr(dora, "person", "enroll", "dora", "--token-file", tokFile); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("a second enrollment over the files: %v", err)
	}
	out = run(t, dora, "person", "list")
	if !strings.Contains(out, ca.Serial(first)) {
		t.Fatalf("person list as dora:\n%s", out)
	}

	out = run(t, dora, "person", "renew")
	renewed := leafOf(t, doraCrt, doraKey)
	if ca.Serial(renewed) == ca.Serial(first) || !strings.Contains(out, ca.Serial(renewed)) {
		t.Fatalf("renew printed:\n%s", out)
	}
	if _, err := os.Stat(doraKey + ".new"); !os.IsNotExist(err) {
		t.Fatalf("pending key left after the renewal: %v", err)
	}
	out = run(t, dora, "person", "list")
	if !strings.Contains(out, ca.Serial(renewed)) {
		t.Fatalf("person list with the renewed certificate:\n%s", out)
	}
	if _, err := runErr(officer, "person", "invite", "eve", "--role", "root"); err == nil || !strings.Contains(err.Error(), `role "root"`) {
		t.Fatalf("invite with a bad role: %v", err)
	}
	// An RSA 3072 key, as the government's existing PKI uses.
	frankTok := filepath.Join(dir, "frank.token")
	run(t, officer, "person", "invite", "frank", "--role", "operator", "--write", frankTok)
	frankCrt, frankKey := filepath.Join(dir, "frank.crt"), filepath.Join(dir, "frank.key")
	frank := as(frankCrt, frankKey)
	run(t, frank, "person", "enroll", "frank", "--token-file", frankTok, "--key-type", "rsa3072")
	run(t, frank, "person", "renew")
	if leaf := leafOf(t, frankCrt, frankKey); leaf.PublicKeyAlgorithm.String() != "RSA" {
		t.Fatalf("frank's renewed certificate: a %s key", leaf.PublicKeyAlgorithm)
	}

	// An auditor saves a backup; anyone with the root checks it offline.
	snap := filepath.Join(dir, "backup.snap")
	run(t, dora, "cluster", "snapshot", "save", snap)
	rootOnly := base // no credentials: verify needs none, nor the controller
	out = run(t, rootOnly, "cluster", "snapshot", "verify", snap)
	if !strings.Contains(out, "saved by node ctl1") || !strings.Contains(out, "signature verifies") {
		t.Fatalf("snapshot verify printed:\n%s", out)
	}
	b, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	b[100] ^= 1
	if err := os.WriteFile(snap, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := runErr(rootOnly, "cluster", "snapshot", "verify", snap); err == nil || !strings.Contains(err.Error(), "NOT VALID") || !strings.Contains(err.Error(), "altered") {
		t.Fatalf("snapshot verify of an altered backup: %v", err)
	}

	// Init's people, the node's certificates, dora's enrollment and her
	// renewal: an approval accounts for each.
	out = run(t, dora, "cert", "audit", "-o", "json")
	if strings.TrimSpace(out) != "[]" {
		t.Fatalf("cert audit found:\n%s", out)
	}
}

func leafOf(t *testing.T, cert, key string) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return pair.Leaf
}

// run runs govnetctl with the arguments (strings and lists of them) and
// returns what it printed; it fails the test on an error.
func run(t *testing.T, args ...any) string {
	t.Helper()
	out, err := runErr(args...)
	if err != nil {
		t.Fatalf("govnetctl %v: %v\n%s", args, err, out)
	}
	return out
}

func runErr(args ...any) (string, error) {
	var flat []string
	for _, a := range args {
		switch v := a.(type) {
		case string:
			flat = append(flat, v)
		case []string:
			flat = append(flat, v...)
		}
	}
	var out bytes.Buffer
	root := newRoot(&app{out: &out})
	root.SetArgs(flat)
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.Execute()
	return out.String(), err
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
