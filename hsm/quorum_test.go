package hsm_test

import (
	"bytes"
	"crypto/elliptic"
	"errors"
	"testing"

	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/hsm/hsmtest"
)

func TestSplitCombine(t *testing.T) {
	secret, err := hsm.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	shares, err := hsm.SplitSecret(secret, 5, 3)
	if err != nil {
		t.Fatal(err)
	}
	check := hsm.SecretCheck(secret)
	for _, tt := range []struct {
		name  string
		idx   []int
		match bool
	}{
		{"first three", []int{0, 1, 2}, true},
		{"last three", []int{2, 3, 4}, true},
		{"all five", []int{0, 1, 2, 3, 4}, true},
		{"two of three", []int{1, 3}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var in [][]byte
			for _, i := range tt.idx {
				in = append(in, shares[i])
			}
			got, err := hsm.CombineShares(in)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(got, secret) != tt.match || hsm.SecretMatches(got, check) != tt.match {
				t.Fatalf("reconstruction match = %v, want %v", bytes.Equal(got, secret), tt.match)
			}
		})
	}
	if _, err := hsm.CombineShares(shares[:1]); !errors.Is(err, hsm.ErrShares) {
		t.Errorf("one share: %v", err)
	}
	if _, err := hsm.CombineShares([][]byte{shares[0], shares[0][:5]}); !errors.Is(err, hsm.ErrShares) {
		t.Errorf("short share: %v", err)
	}
	if _, err := hsm.SplitSecret(secret, 3, 1); !errors.Is(err, hsm.ErrShares) {
		t.Errorf("threshold 1: %v", err)
	}
	if _, err := hsm.SplitSecret(secret, 2, 3); !errors.Is(err, hsm.ErrShares) {
		t.Errorf("threshold above N: %v", err)
	}
	if hsm.UserPIN(secret) == hsm.SOPIN(secret) || len(hsm.UserPIN(secret)) != 32 {
		t.Errorf("PIN derivation: user %q SO %q", hsm.UserPIN(secret), hsm.SOPIN(secret))
	}
}

func TestActivateToken(t *testing.T) {
	cfg := hsmtest.NewToken(t)
	so := hsmtest.SOPIN(cfg.TokenLabel)
	secret, _ := hsm.NewSecret()

	// Wrong SO PIN: nothing changes.
	if err := hsm.ActivateToken(cfg, "not-the-so-pin", secret); !errors.Is(err, hsm.ErrWrongPIN) {
		t.Fatalf("wrong SO PIN: %v", err)
	}
	// While a Token of it is open, the token cannot be re-PINned.
	tok := open(t, cfg)
	if err := hsm.ActivateToken(cfg, so, secret); !errors.Is(err, hsm.ErrTokenInUse) {
		t.Fatalf("token in use: %v", err)
	}
	if err := tok.Close(); err != nil {
		t.Fatal(err)
	}

	if err := hsm.ActivateToken(cfg, so, secret); err != nil {
		t.Fatal(err)
	}
	// The old user PIN and the old SO PIN are gone.
	if _, err := hsm.Open(cfg); !errors.Is(err, hsm.ErrWrongPIN) {
		t.Fatalf("old user PIN: %v", err)
	}
	if err := hsm.ActivateToken(cfg, so, secret); !errors.Is(err, hsm.ErrWrongPIN) {
		t.Fatalf("old SO PIN: %v", err)
	}
	activated := cfg
	activated.PIN = hsm.UserPIN(secret)
	tok = open(t, activated)
	k, err := tok.GenerateKey("root", elliptic.P384())
	if err != nil {
		t.Fatal(err)
	}
	mustVerify(t, k, elliptic.P384(), "quorum")
	if err := tok.Close(); err != nil {
		t.Fatal(err)
	}
	// A token that holds keys is never put under a new secret, not even
	// by the custodians (who can derive its SO PIN): its PINs stay.
	next, _ := hsm.NewSecret()
	err = hsm.ActivateToken(cfg, hsm.SOPIN(secret), next)
	if !errors.Is(err, hsm.ErrNotFresh) || !errors.Is(err, hsm.ErrTokenUnchanged) {
		t.Fatalf("re-activate a token holding a key: %v", err)
	}
	open(t, activated).Close()
}

// TestActivateRefusesUsedToken: a token that has been used (here, a node
// token holding a key) keeps its PINs when a ceremony is pointed at it
// by mistake.
func TestActivateRefusesUsedToken(t *testing.T) {
	cfg := hsmtest.NewToken(t)
	tok := open(t, cfg)
	if _, err := tok.GenerateKey("govnet-intermediate-ctl1", elliptic.P256()); err != nil {
		t.Fatal(err)
	}
	if err := tok.Close(); err != nil {
		t.Fatal(err)
	}
	secret, _ := hsm.NewSecret()
	err := hsm.ActivateToken(cfg, hsmtest.SOPIN(cfg.TokenLabel), secret)
	if !errors.Is(err, hsm.ErrNotFresh) || !errors.Is(err, hsm.ErrTokenUnchanged) {
		t.Fatalf("activate a used token: %v", err)
	}
	t.Log(err)
	open(t, cfg).Close() // its own PIN still works
	if err := hsm.ActivateToken(cfg, "wrong", secret); !errors.Is(err, hsm.ErrWrongPIN) || !errors.Is(err, hsm.ErrTokenUnchanged) {
		t.Fatalf("wrong SO PIN: %v", err)
	}
}
