// Package credfile keeps a person's credentials, a private key and a
// certificate chain in two PEM files, and replaces them together: the new
// key is written beside the old one (KEY.new) before it is used, the new
// chain beside the old one (CERT.new) once it is issued, and both are
// renamed into place. A crash in between is finished by Finish; a key
// whose certificate never arrived stays in KEY.new for the next attempt.
package credfile

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/govnet/govnet/internal/atomicfile"
)

// Key types a person's key may have: those the CA issues for.
const (
	P256    = "p256"
	P384    = "p384"
	RSA3072 = "rsa3072"
)

// Next is the suffix of the files a replacement writes first.
const Next = ".new"

// NewKey generates a key of type kind.
func NewKey(kind string) (crypto.Signer, error) {
	switch kind {
	case P256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case P384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	}
	return nil, fmt.Errorf("key type %q: want %s, %s or %s", kind, P256, P384, RSA3072)
}

// KindOf names the type of key's public key, for a next key of the same.
func KindOf(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return P256, nil
		case elliptic.P384():
			return P384, nil
		}
	case *rsa.PublicKey:
		if k.N.BitLen() == 3072 {
			return RSA3072, nil
		}
	}
	return "", fmt.Errorf("a %T key is none of %s, %s, %s", pub, P256, P384, RSA3072)
}

// KeySHA256 is the SHA-256 of pub's SubjectPublicKeyInfo (DER), hex: the
// fingerprint an invitation names and the inventory records.
func KeySHA256(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// PendingKey returns the key waiting in keyPath+Next for its certificate,
// or, if there is none, a new key of type kind written there (mode 0600).
// Reusing a waiting key lets a renewal whose answer was lost be retried:
// the controller renews again for that key.
func PendingKey(keyPath, kind string) (key crypto.Signer, reused bool, err error) {
	next := keyPath + Next
	if b, err := os.ReadFile(next); err == nil {
		key, err := ParseKey(b)
		if err != nil {
			return nil, false, fmt.Errorf("%s: %w (remove it to start afresh)", next, err)
		}
		return key, true, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	if key, err = NewKey(kind); err != nil {
		return nil, false, err
	}
	data, err := EncodeKey(key)
	if err != nil {
		return nil, false, err
	}
	if err := atomicfile.Write(next, data, 0o600); err != nil {
		return nil, false, err
	}
	return key, false, nil
}

// EncodeKey is key as a PEM PRIVATE KEY (PKCS #8), as ParseKey reads it.
func EncodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKey reads a PEM PRIVATE KEY (PKCS #8) that can sign.
func ParseKey(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM PRIVATE KEY")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("a %T cannot sign", k)
	}
	return s, nil
}

// Install puts chain (PEM) in place for the key waiting in keyPath+Next:
// it writes certPath+Next, then renames the key and the chain over
// keyPath and certPath.
func Install(certPath, keyPath string, chain []byte) error {
	if err := atomicfile.Write(certPath+Next, chain, 0o644); err != nil {
		return err
	}
	_, err := Finish(certPath, keyPath)
	return err
}

// Finish completes a replacement that a crash interrupted after the new
// chain was written: it renames what is left of the new key and chain
// into place, the key first (and makes that durable before the chain
// follows), and says whether there was anything to do. A new chain that
// pairs with neither the new nor the current key is an error: nothing is
// renamed.
func Finish(certPath, keyPath string) (bool, error) {
	certNext, keyNext := certPath+Next, keyPath+Next
	if _, err := os.Stat(certNext); errors.Is(err, fs.ErrNotExist) {
		// The chain is in place; its key may not be (a file system that
		// kept the second rename and lost the first).
		if _, err := tls.LoadX509KeyPair(certPath, keyPath); err != nil {
			if _, err := tls.LoadX509KeyPair(certPath, keyNext); err == nil {
				return true, renameDurably(keyNext, keyPath)
			}
		}
		return false, nil
	}
	if _, err := tls.LoadX509KeyPair(certNext, keyNext); err == nil {
		if err := renameDurably(keyNext, keyPath); err != nil {
			return false, err
		}
	} else if _, err2 := tls.LoadX509KeyPair(certNext, keyPath); err2 != nil {
		return false, fmt.Errorf("%s: pairs with neither %s nor %s: %w", certNext, keyNext, keyPath, err)
	}
	return true, renameDurably(certNext, certPath)
}

// renameDurably renames from to to and syncs the directory.
func renameDurably(from, to string) error {
	if err := os.Rename(from, to); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(to))
}
