package hsm_test

import (
	"crypto/elliptic"
	"errors"
	"testing"

	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/hsm/hsmtest"
	"github.com/miekg/pkcs11"
)

// TestDestroyKey: destroying a key removes both of its objects and only
// them; its signer stops working, the label can be used again, and a
// second destroy says the key is gone.
func TestDestroyKey(t *testing.T) {
	tok := open(t, hsmtest.NewToken(t))
	old, err := tok.GenerateKey("old", elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tok.GenerateKey("keep", elliptic.P256()); err != nil {
		t.Fatal(err)
	}
	if err := tok.DestroyKey("old"); err != nil {
		t.Fatal(err)
	}
	keys, err := tok.Keys()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].Label != "keep" {
		t.Fatalf("keys after destroy: %+v, want only keep", keys)
	}
	if _, err := hsm.ObjectAttr(tok, "old", pkcs11.CKO_PUBLIC_KEY, pkcs11.CKA_EC_POINT); err == nil {
		t.Fatal("the public key object survived")
	}
	if _, err := tok.Signer("old"); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("Signer of a destroyed key: %v, want ErrKeyNotFound", err)
	}
	if _, err := old.Sign(nil, make([]byte, 32), nil); err == nil {
		t.Fatal("a destroyed key still signs")
	}
	for _, tc := range []struct {
		label string
		want  error
	}{
		{"old", hsm.ErrKeyNotFound},
		{"never", hsm.ErrKeyNotFound},
	} {
		if err := tok.DestroyKey(tc.label); !errors.Is(err, tc.want) {
			t.Errorf("DestroyKey(%q): %v, want %v", tc.label, err, tc.want)
		}
	}
	if err := tok.DestroyKey(""); err == nil {
		t.Error("DestroyKey(\"\") succeeded")
	}
	if _, err := tok.GenerateKey("old", elliptic.P256()); err != nil {
		t.Fatalf("label of a destroyed key cannot be used again: %v", err)
	}
}
