package netagent

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/hsm/hsmtest"
)

// TestRenewInterruptedToken walks a token-held key through every point at
// which a renewal can crash, each followed by what the next start does
// (settleKeys): the identity keeps working
// throughout, a completed renewal wins, and every key that no state file
// names any more is destroyed, while keys of other agents and other users
// of the token are left alone.
func TestRenewInterruptedToken(t *testing.T) {
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	tokenConfig(t, &cfg)
	keys, err := openKeyStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer keys.Close()
	tok := keys.(*tokenKeys).tok
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	newKey := func() (crypto.Signer, []byte) {
		t.Helper()
		s, data, err := keys.newKey()
		if err != nil {
			t.Fatal(err)
		}
		return s, data
	}
	write := func(name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(cfg.path(name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	labelOf := func(data []byte) string { return strings.TrimSpace(string(data)) }
	// start is a restart; then the live pair must sign with the key
	// want names, and the token must hold exactly want plus the keys that
	// are not the agent's.
	others := []string{"ca-root", keyLabelPrefix + "govnet9-0123456789abcdef"}
	for _, l := range others {
		if _, err := tok.GenerateKey(l, elliptic.P256()); err != nil {
			t.Fatal(err)
		}
	}
	start := func(step string, want []byte) {
		t.Helper()
		if err := settleKeys(cfg, keys, log); err != nil {
			t.Fatalf("%s: settleKeys: %v", step, err)
		}
		pair, err := keys.loadPair(cfg.path(fileCert), cfg.path(fileTLSKeyLabel))
		if err != nil {
			t.Fatalf("%s: no working identity: %v", step, err)
		}
		digest := sha256.Sum256([]byte(step))
		sig, err := pair.PrivateKey.(crypto.Signer).Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil || !ecdsa.VerifyASN1(pair.Leaf.PublicKey.(*ecdsa.PublicKey), digest[:], sig) {
			t.Fatalf("%s: the live key does not sign for the certificate: %v", step, err)
		}
		if got, _ := os.ReadFile(cfg.path(fileTLSKeyLabel)); labelOf(got) != labelOf(want) {
			t.Fatalf("%s: live key %q, want %q", step, labelOf(got), labelOf(want))
		}
		for _, f := range []string{fileCertNext, fileTLSKeyLabel + nextSuffix} {
			if _, err := os.Stat(cfg.path(f)); !os.IsNotExist(err) {
				t.Fatalf("%s: %s left behind (%v)", step, f, err)
			}
		}
		infos, err := tok.Keys()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, k := range infos {
			got = append(got, k.Label)
		}
		wantLabels := append([]string{labelOf(want)}, others...)
		slices.Sort(wantLabels)
		if !slices.Equal(got, wantLabels) {
			t.Fatalf("%s: token keys %q, want %q", step, got, wantLabels)
		}
	}

	// Enrolled: key A is live.
	a, aData := newKey()
	write(fileTLSKeyLabel, aData)
	write(fileCert, certFor(t, a))
	start("enrolled", aData)

	// A crash right after the next key was generated.
	newKey()
	start("key generated", aData)

	// A crash after the key's label was staged, before the certificate.
	_, cData := newKey()
	write(fileTLSKeyLabel+nextSuffix, cData)
	start("label staged", aData)

	// A crash after both were staged: the renewal completes.
	d, dData := newKey()
	write(fileTLSKeyLabel+nextSuffix, dData)
	write(fileCertNext, certFor(t, d))
	start("both staged", dData)

	// A crash between the two renames: the label is live, the
	// certificate pending; the renewal completes.
	e, eData := newKey()
	write(fileTLSKeyLabel, eData)
	write(fileCertNext, certFor(t, e))
	start("between renames", eData)

	// A pending certificate for no key of the token is refused, and the
	// live identity stays; while that is unsettled nothing is destroyed.
	_, fData := newKey()
	soft, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	write(fileCertNext, certFor(t, soft))
	if err := settleKeys(cfg, keys, log); err == nil {
		t.Fatal("installed a pending certificate that matches no key in the token")
	}
	if _, err := tok.Signer(labelOf(fData)); err != nil {
		t.Fatalf("a key was destroyed while a renewal was unsettled: %v", err)
	}
	os.Remove(cfg.path(fileCertNext))
	start("refused", eData)

	// Nothing is destroyed while the live key is unknown.
	os.Rename(cfg.path(fileTLSKeyLabel), cfg.path("moved"))
	newKey()
	if gone, err := keys.cleanup(); err == nil || len(gone) > 0 {
		t.Fatalf("cleanup without a live key: destroyed %q, err %v", gone, err)
	}
}

// certFor returns a self-signed certificate (PEM) for s.
func certFor(t *testing.T, s crypto.Signer) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, s.Public(), s)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestConfigHSM: the hsm: section is optional; when present, each wrong
// key is named, through Validate and through a config file.
func TestConfigHSM(t *testing.T) {
	hsmtest.Require(t)
	mod := hsmtest.Module()
	var absent string // on the allowlist, not on this machine
	for _, m := range hsm.DefaultModules {
		if _, err := os.Stat(m); err != nil {
			absent = m
		}
	}
	pin := filepath.Join(t.TempDir(), "pin")
	for _, tc := range []struct {
		name string
		hsm  HSMConfig
		want []string // substrings of the error; none: valid
	}{
		{"absent", HSMConfig{}, nil},
		{"pin file", HSMConfig{Module: mod, TokenLabel: "gw", PINFile: pin}, nil},
		{"pin env", HSMConfig{Module: mod, TokenLabel: "gw", PINEnv: "GOVNET_AGENT_PIN"}, nil},
		{"no module", HSMConfig{TokenLabel: "gw", PINFile: pin}, []string{"hsm.module: required"}},
		{"module not allowed", HSMConfig{Module: "/tmp/libevil.so", TokenLabel: "gw", PINFile: pin}, []string{`hsm.module "/tmp/libevil.so": not on the PKCS#11 module allowlist`}},
		{"relative module", HSMConfig{Module: "libsofthsm2.so", TokenLabel: "gw", PINFile: pin}, []string{"not on the PKCS#11 module allowlist"}},
		{"module missing", HSMConfig{Module: absent, TokenLabel: "gw", PINFile: pin}, []string{"no such library"}},
		{"no token label", HSMConfig{Module: mod, PINFile: pin}, []string{"hsm.token_label: required"}},
		{"long token label", HSMConfig{Module: mod, TokenLabel: strings.Repeat("x", 33), PINFile: pin}, []string{"at most 32 bytes"}},
		{"no pin", HSMConfig{Module: mod, TokenLabel: "gw"}, []string{"set pin_file or pin_env"}},
		{"two pins", HSMConfig{Module: mod, TokenLabel: "gw", PINFile: pin, PINEnv: "X"}, []string{"want exactly one PIN source"}},
		{"relative pin file", HSMConfig{Module: mod, TokenLabel: "gw", PINFile: "gw.pin"}, []string{`hsm.pin_file "gw.pin": must be an absolute path`}},
		{"everything wrong", HSMConfig{PINEnv: "X", PINFile: "Y"}, []string{"hsm.module", "hsm.token_label", "exactly one PIN source"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.hsm.Module == "" && tc.name == "module missing" {
				t.Skip("every allowed module exists here")
			}
			cfg := DefaultConfig()
			cfg.Controller, cfg.HSM = "https://192.0.2.1:7443", tc.hsm
			err := cfg.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("valid config: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted %+v", tc.hsm)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}

	// Through a file: the section round-trips through Save, and a
	// misspelt key is an error naming it.
	cfg := DefaultConfig()
	cfg.Controller, cfg.HSM = "https://192.0.2.1:7443", HSMConfig{Module: mod, TokenLabel: "gw", PINFile: pin}
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := cfg.Save(path); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadConfig(path); err != nil || got.HSM != cfg.HSM {
		t.Fatalf("round trip: %+v, %v", got.HSM, err)
	}
	cfg.HSM = HSMConfig{}
	if err := cfg.Save(path); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); strings.Contains(string(data), "hsm") {
		t.Fatalf("a config without a token writes an hsm: section:\n%s", data)
	}
	bad := "controller: https://192.0.2.1:7443\nhsm:\n  module: " + mod + "\n  token_label: gw\n  pin: '1234'\n"
	os.WriteFile(path, []byte(bad), 0o600)
	if _, err := LoadConfig(path); err == nil || !strings.Contains(err.Error(), "pin") {
		t.Fatalf("unknown key hsm.pin: %v", err)
	}
}

// TestCleanupSparesOtherInterfaces: interface names may contain '-', so
// the label prefix of agent "gv" ("govnet-agent-tls-gv-") also begins
// every label of agent "gv-x" sharing the token. Cleanup and loadKey must
// treat as this agent's only its prefix followed by the random suffix.
func TestCleanupSparesOtherInterfaces(t *testing.T) {
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	cfg.Interface = "gv"
	tokenConfig(t, &cfg)
	keys, err := openKeyStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer keys.Close()
	tok := keys.(*tokenKeys).tok
	other := keyLabelPrefix + "gv-x-0123456789abcdef" // agent of interface gv-x
	if _, err := tok.GenerateKey(other, elliptic.P256()); err != nil {
		t.Fatal(err)
	}
	_, live, err := keys.newKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.path(fileTLSKeyLabel), live, 0o600); err != nil {
		t.Fatal(err)
	}
	_, stale, err := keys.newKey()
	if err != nil {
		t.Fatal(err)
	}
	gone, err := keys.cleanup()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{strings.TrimSpace(string(stale))}; !slices.Equal(gone, want) {
		t.Errorf("cleanup destroyed %q, want %q", gone, want)
	}
	if _, err := tok.Signer(other); err != nil {
		t.Errorf("the key of agent gv-x is gone: %v", err)
	}
	if _, err := keys.loadKey([]byte(other + "\n")); err == nil {
		t.Errorf("agent gv loads the key of agent gv-x as its own")
	}
	if err := keys.discard([]byte(other + "\n")); err == nil {
		t.Errorf("agent gv discards the key of agent gv-x")
	}
	if _, err := tok.Signer(other); err != nil {
		t.Errorf("the key of agent gv-x is gone: %v", err)
	}
}

// TestKeyStoreTokenMissing: an agent whose token is missing at start
// stops with an error that names the token label and the module.
func TestKeyStoreTokenMissing(t *testing.T) {
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	tokenConfig(t, &cfg)
	cfg.HSM.TokenLabel = "gw-tls-missing"
	keys, err := openKeyStore(cfg)
	if err == nil {
		keys.Close()
		t.Fatal("opened a missing token")
	}
	if !errors.Is(err, hsm.ErrTokenNotFound) {
		t.Errorf("error %v does not wrap ErrTokenNotFound", err)
	}
	for _, want := range []string{`"gw-tls-missing"`, cfg.HSM.Module} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}
