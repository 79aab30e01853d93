package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/netagent"
)

// TestReenrollKeepsConfig: enroll --reenroll writes back the config file
// it is given with every key the flags do not set (failover nodes,
// metrics, report refresh) kept, not a file of defaults.
func TestReenrollKeepsConfig(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	// Enrolled before: the identity file is there.
	if err := os.WriteFile(filepath.Join(state, "identity.json"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root.pem")
	os.WriteFile(root, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("tok"), 0o600)

	cfgPath := filepath.Join(dir, "agent.yaml")
	before := netagent.DefaultConfig()
	before.Controller = "https://127.0.0.1:1"
	before.Controllers = []string{"https://127.0.0.2:1"}
	before.StateDir = state
	before.Endpoint = "192.0.2.10:51820"
	before.MetricsAddr = "127.0.0.1:9475"
	before.ReportRefresh = 5 * time.Minute
	if err := before.Save(cfgPath); err != nil {
		t.Fatal(err)
	}

	cmd := enrollCmd()
	cmd.SetArgs([]string{"--config", cfgPath, "--reenroll", "--controller", "https://127.0.0.1:1", "--root", root,
		"--token-file", tokenFile, "--endpoint", "192.0.2.11:51820", "--state-dir", state})
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err = cmd.Execute() // nothing listens at the controller: the request fails after the config is written
	if err == nil || !strings.Contains(err.Error(), "enroll") {
		t.Fatalf("enroll against no controller: %v", err)
	}
	var after netagent.Config
	if err := after.LoadFile(cfgPath); err != nil {
		t.Fatal(err)
	}
	if after.MetricsAddr != before.MetricsAddr || after.ReportRefresh != before.ReportRefresh ||
		len(after.Controllers) != 1 || after.Controllers[0] != "https://127.0.0.2:1" || after.StateDir != state {
		t.Errorf("config after re-enrollment lost keys the flags did not set:\n%+v\nwas\n%+v", after, before)
	}
	if after.Endpoint != "192.0.2.11:51820" {
		t.Errorf("the flag did not override the file: endpoint %q", after.Endpoint)
	}
}
