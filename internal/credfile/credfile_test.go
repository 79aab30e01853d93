package credfile

import (
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// certFor is a self-signed certificate for key, in PEM.
func certFor(t *testing.T, key crypto.Signer, serial int64) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "dora"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func serialOf(t *testing.T, certPath, keyPath string) int64 {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	return pair.Leaf.SerialNumber.Int64()
}

// setup writes a current pair (serial 1) and a pending key with its
// certificate (serial 2) written beside, as a renewal leaves them just
// before the renames.
func setup(t *testing.T) (certPath, keyPath string, next []byte) {
	t.Helper()
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "dora.crt"), filepath.Join(dir, "dora.key")
	cur, _, err := PendingKey(keyPath, P256)
	if err != nil {
		t.Fatal(err)
	}
	if err := Install(certPath, keyPath, certFor(t, cur, 1)); err != nil {
		t.Fatal(err)
	}
	key, reused, err := PendingKey(keyPath, P256)
	if err != nil || reused {
		t.Fatalf("a new pending key: reused %v, %v", reused, err)
	}
	again, reused, err := PendingKey(keyPath, P256)
	if err != nil || !reused || !again.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
		t.Fatalf("the pending key again: reused %v, %v", reused, err)
	}
	return certPath, keyPath, certFor(t, key, 2)
}

func TestInstall(t *testing.T) {
	certPath, keyPath, next := setup(t)
	if got := serialOf(t, certPath, keyPath); got != 1 {
		t.Fatalf("before: serial %d", got)
	}
	if err := Install(certPath, keyPath, next); err != nil {
		t.Fatal(err)
	}
	if got := serialOf(t, certPath, keyPath); got != 2 {
		t.Fatalf("after: serial %d, want 2", got)
	}
	for _, p := range []string{certPath + Next, keyPath + Next} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s left behind: %v", p, err)
		}
	}
	if fi, _ := os.Stat(keyPath); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v", fi.Mode().Perm())
	}
}

// TestFinish: a crash before either rename, or between them, is finished;
// a stray chain that pairs with no key renames nothing.
func TestFinish(t *testing.T) {
	t.Run("before the renames", func(t *testing.T) {
		certPath, keyPath, next := setup(t)
		os.WriteFile(certPath+Next, next, 0o644)
		if done, err := Finish(certPath, keyPath); err != nil || !done {
			t.Fatalf("finish: %v, %v", done, err)
		}
		if got := serialOf(t, certPath, keyPath); got != 2 {
			t.Fatalf("serial %d, want 2", got)
		}
	})
	t.Run("between the renames", func(t *testing.T) {
		certPath, keyPath, next := setup(t)
		os.WriteFile(certPath+Next, next, 0o644)
		os.Rename(keyPath+Next, keyPath)
		if _, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
			t.Fatal("the torn pair loads")
		}
		if done, err := Finish(certPath, keyPath); err != nil || !done {
			t.Fatalf("finish: %v, %v", done, err)
		}
		if got := serialOf(t, certPath, keyPath); got != 2 {
			t.Fatalf("serial %d, want 2", got)
		}
	})
	t.Run("the chain renamed, the key not", func(t *testing.T) {
		certPath, keyPath, next := setup(t)
		os.WriteFile(certPath, next, 0o644)
		if done, err := Finish(certPath, keyPath); err != nil || !done {
			t.Fatalf("finish: %v, %v", done, err)
		}
		if got := serialOf(t, certPath, keyPath); got != 2 {
			t.Fatalf("serial %d, want 2", got)
		}
	})
	t.Run("nothing to do", func(t *testing.T) {
		certPath, keyPath, _ := setup(t)
		if done, err := Finish(certPath, keyPath); err != nil || done {
			t.Fatalf("finish: %v, %v", done, err)
		}
		if _, err := os.Stat(keyPath + Next); err != nil {
			t.Fatalf("the pending key was removed: %v", err)
		}
	})
	t.Run("a chain for no key", func(t *testing.T) {
		certPath, keyPath, _ := setup(t)
		other, _ := NewKey(P256)
		os.WriteFile(certPath+Next, certFor(t, other, 3), 0o644)
		if _, err := Finish(certPath, keyPath); err == nil {
			t.Fatal("finished with a chain for another key")
		}
		if got := serialOf(t, certPath, keyPath); got != 1 {
			t.Fatalf("serial %d, want the current 1", got)
		}
	})
}

func TestKeyTypes(t *testing.T) {
	for _, kind := range []string{P256, P384, RSA3072} {
		key, err := NewKey(kind)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := KindOf(key.Public()); err != nil || got != kind {
			t.Fatalf("%s: KindOf %q, %v", kind, got, err)
		}
	}
	if _, err := NewKey("ed25519"); err == nil {
		t.Fatal("an ed25519 key was made")
	}
}
