package hsm_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/hsm/hsmtest"
)

func TestMain(m *testing.M) {
	// hsmtest must use its own configuration even when the environment
	// names another one; a bogus value here would break every test if it
	// did not.
	os.Setenv("SOFTHSM2_CONF", "/nonexistent/softhsm2.conf")
	code := m.Run()
	hsmtest.Cleanup()
	os.Exit(code)
}

// open opens cfg and closes the Token at the end of the test.
func open(t testing.TB, cfg hsm.Config, opts ...hsm.Option) *hsm.Token {
	t.Helper()
	tok, err := hsm.Open(cfg, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := tok.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return tok
}

func digestFor(curve elliptic.Curve, msg string) ([]byte, crypto.Hash) {
	if curve == elliptic.P384() {
		d := sha512.Sum384([]byte(msg))
		return d[:], crypto.SHA384
	}
	d := sha256.Sum256([]byte(msg))
	return d[:], crypto.SHA256
}

func mustVerify(t testing.TB, s crypto.Signer, curve elliptic.Curve, msg string) {
	t.Helper()
	digest, h := digestFor(curve, msg)
	sig, err := s.Sign(rand.Reader, digest, h)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	pub, ok := s.Public().(*ecdsa.PublicKey)
	if !ok {
		t.Fatalf("Public() is %T, want *ecdsa.PublicKey", s.Public())
	}
	if !ecdsa.VerifyASN1(pub, digest, sig) {
		t.Fatalf("signature does not verify")
	}
}

func TestGenerateSignVerify(t *testing.T) {
	tok := open(t, hsmtest.NewToken(t))
	for _, tc := range []struct {
		name  string
		curve elliptic.Curve
	}{
		{"P-256", elliptic.P256()},
		{"P-384", elliptic.P384()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := tok.GenerateKey("key-"+tc.name, tc.curve)
			if err != nil {
				t.Fatalf("GenerateKey: %v", err)
			}
			pub := s.Public().(*ecdsa.PublicKey)
			if pub.Curve != tc.curve {
				t.Fatalf("curve %s, want %s", pub.Curve.Params().Name, tc.name)
			}
			k := s.(*hsm.Key)
			if k.Label() != "key-"+tc.name || len(k.ID()) != 32 {
				t.Errorf("Label %q ID %q", k.Label(), k.ID())
			}
			for i := range 5 {
				mustVerify(t, s, tc.curve, fmt.Sprintf("message %d", i))
			}
			// A signature must not verify for another digest.
			d1, h := digestFor(tc.curve, "a")
			d2, _ := digestFor(tc.curve, "b")
			sig, err := s.Sign(nil, d1, h)
			if err != nil {
				t.Fatal(err)
			}
			if ecdsa.VerifyASN1(pub, d2, sig) {
				t.Fatal("signature verifies for the wrong digest")
			}
		})
	}
}

func TestUnsupportedCurveAndDigest(t *testing.T) {
	tok := open(t, hsmtest.NewToken(t))
	for _, c := range []elliptic.Curve{elliptic.P224(), elliptic.P521(), nil} {
		if _, err := tok.GenerateKey("bad", c); !errors.Is(err, hsm.ErrUnsupportedCurve) {
			t.Errorf("GenerateKey(%v) = %v, want ErrUnsupportedCurve", c, err)
		}
	}
	s, err := tok.GenerateKey("k", elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sign(nil, make([]byte, 20), crypto.SHA256); err == nil {
		t.Error("Sign accepted a 20-byte digest for SHA-256")
	}
	if _, err := s.Sign(nil, nil, nil); err == nil {
		t.Error("Sign accepted an empty digest")
	}
}

func TestKeyAttributes(t *testing.T) {
	tok := open(t, hsmtest.NewToken(t))
	if _, err := tok.GenerateKey("root", elliptic.P384()); err != nil {
		t.Fatal(err)
	}
	s, err := tok.GenerateKey("intermediate", elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := tok.Keys()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0].Label != "intermediate" || keys[1].Label != "root" {
		t.Fatalf("Keys() = %+v", keys)
	}
	for _, k := range keys {
		want := hsm.KeyInfo{
			Label: k.Label, ID: k.ID, KeyType: "EC", Curve: "P-256",
			Token: true, Private: true, Sensitive: true, Extractable: false,
			AlwaysSensitive: true, NeverExtractable: true, Sign: true,
		}
		if k.Label == "root" {
			want.Curve = "P-384"
		}
		if k != want {
			t.Errorf("KeyInfo\n got %+v\nwant %+v", k, want)
		}
		if len(k.ID) != 32 {
			t.Errorf("ID %q is not 16 bytes of hex", k.ID)
		}
	}
	if keys[0].ID != s.(*hsm.Key).ID() {
		t.Errorf("KeyInfo ID %s, signer ID %s", keys[0].ID, s.(*hsm.Key).ID())
	}
	if keys[0].ID == keys[1].ID {
		t.Error("two keys share a CKA_ID")
	}

	// The private key's value cannot be read.
	v, err := hsm.ObjectAttr(tok, "root", pkcs11.CKO_PRIVATE_KEY, pkcs11.CKA_VALUE)
	if err == nil {
		t.Fatalf("read CKA_VALUE of the private key: %d bytes", len(v))
	}
	var rv pkcs11.Error
	if !errors.As(err, &rv) || rv != pkcs11.CKR_ATTRIBUTE_SENSITIVE {
		t.Errorf("reading CKA_VALUE: %v, want CKR_ATTRIBUTE_SENSITIVE", err)
	}

	// Public key object: verify-only, same label and ID.
	for _, c := range []struct {
		attr uint
		want []byte
	}{
		{pkcs11.CKA_VERIFY, []byte{1}},
		{pkcs11.CKA_TOKEN, []byte{1}},
		{pkcs11.CKA_ENCRYPT, []byte{0}},
	} {
		got, err := hsm.ObjectAttr(tok, "root", pkcs11.CKO_PUBLIC_KEY, c.attr)
		if err != nil || string(got) != string(c.want) {
			t.Errorf("public key attribute %#x = %v, %v; want %v", c.attr, got, err, c.want)
		}
	}
	pubID, err := hsm.ObjectAttr(tok, "intermediate", pkcs11.CKO_PUBLIC_KEY, pkcs11.CKA_ID)
	if err != nil || fmt.Sprintf("%x", pubID) != keys[0].ID {
		t.Errorf("public key CKA_ID %x, %v; want %s", pubID, err, keys[0].ID)
	}
}

func TestWrongPIN(t *testing.T) {
	cfg := hsmtest.NewToken(t)
	bad := cfg
	bad.PIN = cfg.PIN + "x"
	_, err := hsm.Open(bad)
	if !errors.Is(err, hsm.ErrWrongPIN) {
		t.Fatalf("Open with wrong PIN: %v, want ErrWrongPIN", err)
	}
	if !strings.Contains(err.Error(), cfg.TokenLabel) {
		t.Errorf("error %q does not name the token", err)
	}
	// While a Token is logged in, the library would accept any PIN;
	// Open must still refuse a wrong one.
	open(t, cfg)
	if tok, err := hsm.Open(bad); !errors.Is(err, hsm.ErrWrongPIN) {
		if err == nil {
			tok.Close()
		}
		t.Fatalf("second Open with wrong PIN: %v, want ErrWrongPIN", err)
	}
	// And the right PIN works for a second Token.
	second := open(t, cfg)
	if _, err := second.Keys(); err != nil {
		t.Fatal(err)
	}
}

func TestTokenNotFound(t *testing.T) {
	cfg := hsmtest.NewToken(t)
	missing := cfg
	missing.TokenLabel = "no-such-token"
	_, err := hsm.Open(missing)
	if !errors.Is(err, hsm.ErrTokenNotFound) {
		t.Fatalf("Open: %v, want ErrTokenNotFound", err)
	}
	if !strings.Contains(err.Error(), `"no-such-token"`) || !strings.Contains(err.Error(), cfg.TokenLabel) {
		t.Errorf("error %q should name the label asked for and list %q", err, cfg.TokenLabel)
	}
	if !strings.Contains(err.Error(), cfg.Module) {
		t.Errorf("error %q does not name the module %q", err, cfg.Module)
	}
	if n := hsm.ModuleRefs(resolved(t, cfg.Module)); n != 0 {
		t.Errorf("module still referenced %d times after failed Open", n)
	}
}

// TestTokenLabelPadding: PKCS#11 token labels are 32 bytes padded with
// spaces, so a label given with trailing spaces (as softhsm2-util --label
// accepts it) names the same token as without them; a label longer than
// 32 bytes can name none and is refused as such; a prefix of a label, or
// the label with leading spaces, names no token.
func TestTokenLabelPadding(t *testing.T) {
	cfg := hsmtest.NewToken(t)
	padded := cfg
	padded.TokenLabel = cfg.TokenLabel + "   "
	tok := open(t, padded)
	if tok.Label() != cfg.TokenLabel {
		t.Errorf("Label() = %q, want %q", tok.Label(), cfg.TokenLabel)
	}
	for _, label := range []string{
		cfg.TokenLabel[:len(cfg.TokenLabel)-1],
		" " + cfg.TokenLabel,
		cfg.TokenLabel + strings.Repeat("x", 33-len(cfg.TokenLabel)),
	} {
		bad := cfg
		bad.TokenLabel = label
		if tok, err := hsm.Open(bad); !errors.Is(err, hsm.ErrTokenNotFound) {
			if err == nil {
				tok.Close()
			}
			t.Errorf("Open(%q): %v, want ErrTokenNotFound", label, err)
		}
	}
	long := cfg
	long.TokenLabel = strings.Repeat("x", 33)
	if _, err := hsm.Open(long); err == nil || !strings.Contains(err.Error(), "32 bytes") {
		t.Errorf("Open with a 33-byte label: %v, want an error saying labels are at most 32 bytes", err)
	}
}

// TestTokenLabelNotUnique: two initialized tokens with one label are
// refused with ErrTokenAmbiguous, never one picked. SoftHSM2 reads its
// token directory only in C_Initialize and hsmtest's tokens have unique
// labels, so the test runs itself again in a child process whose own
// SOFTHSM2_CONF holds the two tokens before the module is loaded.
func TestTokenLabelNotUnique(t *testing.T) {
	hsmtest.Require(t)
	if conf := os.Getenv("GOVNET_TEST_DUP_CONF"); conf != "" {
		os.Setenv("SOFTHSM2_CONF", conf)
		_, err := hsm.Open(hsm.Config{Module: hsmtest.Module(), TokenLabel: "dup", PIN: "1234"})
		if !errors.Is(err, hsm.ErrTokenAmbiguous) || !strings.Contains(err.Error(), `"dup"`) {
			t.Fatalf("Open: %v, want ErrTokenAmbiguous naming the label", err)
		}
		return
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "softhsm2.conf")
	body := "directories.tokendir = " + dir + "\nobjectstore.backend = file\nlog.level = ERROR\n"
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", "dup", "--so-pin", "5678", "--pin", "1234")
		cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("softhsm2-util: %v\n%s", err, out)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestTokenLabelNotUnique$", "-test.count=1")
	cmd.Env = append(os.Environ(), "GOVNET_TEST_DUP_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func resolved(t testing.TB, path string) string {
	t.Helper()
	r, err := filepath.EvalSymlinks(path)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestModuleChecks(t *testing.T) {
	hsmtest.Require(t)
	real := hsmtest.Module()
	dir := t.TempDir()
	missing := filepath.Join(dir, "libmissing.so")
	fake := filepath.Join(dir, "libfake.so")
	if err := os.WriteFile(fake, []byte("not an ELF file"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		module string
		opts   []hsm.Option
		want   error
		inMsg  []string
	}{
		{"not allowed", "/tmp/evil/libsofthsm2.so", nil, hsm.ErrModuleNotAllowed,
			[]string{"/tmp/evil/libsofthsm2.so", hsm.DefaultModules[0]}},
		{"relative", "libsofthsm2.so", nil, hsm.ErrModuleNotAllowed, []string{"libsofthsm2.so"}},
		{"dot-dot", "/usr/lib/softhsm/../softhsm/../../../tmp/x.so", nil, hsm.ErrModuleNotAllowed, nil},
		{"empty", "", nil, hsm.ErrModuleNotAllowed, nil},
		{"allowed by default but replaced", real, []hsm.Option{hsm.WithAllowedModules(missing)},
			hsm.ErrModuleNotAllowed, []string{missing}},
		{"missing", missing, []hsm.Option{hsm.WithAllowedModules(missing)}, hsm.ErrModuleNotFound, []string{missing}},
		{"not a module", fake, []hsm.Option{hsm.WithAllowedModules(fake)}, hsm.ErrModuleLoad, []string{fake}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := hsm.Open(hsm.Config{Module: tc.module, TokenLabel: "x", PIN: "1234"}, tc.opts...)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open: %v, want %v", err, tc.want)
			}
			for _, s := range tc.inMsg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
	// The unclean spelling of an allowed path is allowed.
	if _, err := hsm.CheckModule(filepath.Dir(real)+"/./"+filepath.Base(real), []string{real}); err != nil {
		t.Errorf("CheckModule: %v", err)
	}
}

func TestDuplicateLabel(t *testing.T) {
	tok := open(t, hsmtest.NewToken(t))
	if _, err := tok.GenerateKey("ca", elliptic.P256()); err != nil {
		t.Fatal(err)
	}
	for _, c := range []elliptic.Curve{elliptic.P256(), elliptic.P384()} {
		_, err := tok.GenerateKey("ca", c)
		if !errors.Is(err, hsm.ErrKeyExists) {
			t.Fatalf("second GenerateKey: %v, want ErrKeyExists", err)
		}
	}
	keys, err := tok.Keys()
	if err != nil || len(keys) != 1 {
		t.Fatalf("Keys() = %v, %v; want one key", keys, err)
	}
}

func TestConcurrentGenerateSameLabel(t *testing.T) {
	tok := open(t, hsmtest.NewToken(t))
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() { _, errs[i] = tok.GenerateKey("race", elliptic.P256()) })
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, hsm.ErrKeyExists):
			t.Errorf("GenerateKey: %v", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d concurrent GenerateKey calls succeeded, want 1", ok)
	}
}

func TestSignerExisting(t *testing.T) {
	cfg := hsmtest.NewToken(t)
	tok, err := hsm.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	gen, err := tok.GenerateKey("ca-root", elliptic.P384())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tok.GenerateKey("other", elliptic.P256()); err != nil {
		t.Fatal(err)
	}
	s, err := tok.Signer("ca-root")
	if err != nil {
		t.Fatal(err)
	}
	if !s.Public().(*ecdsa.PublicKey).Equal(gen.Public()) {
		t.Fatal("Signer's public key differs from GenerateKey's")
	}
	mustVerify(t, s, elliptic.P384(), "hello")
	if _, err := tok.Signer("missing"); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("Signer(missing): %v, want ErrKeyNotFound", err)
	}
	if err := tok.Close(); err != nil {
		t.Fatal(err)
	}

	// The key survives Close and a fresh Open (which re-initializes the
	// module, since no other Token holds it).
	tok = open(t, cfg)
	s2, err := tok.Signer("ca-root")
	if err != nil {
		t.Fatal(err)
	}
	if !s2.Public().(*ecdsa.PublicKey).Equal(gen.Public()) {
		t.Fatal("public key changed across re-open")
	}
	mustVerify(t, s2, elliptic.P384(), "hello again")
}

func TestConcurrentSign(t *testing.T) {
	tok := open(t, hsmtest.NewToken(t), hsm.WithSessions(4))
	s, err := tok.GenerateKey("k", elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	pub := s.Public().(*ecdsa.PublicKey)
	const goroutines, each = 16, 25
	var wg sync.WaitGroup
	errc := make(chan error, goroutines*each)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				d := sha256.Sum256(fmt.Appendf(nil, "%d/%d", g, i))
				sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
				if err != nil {
					errc <- err
					continue
				}
				if !ecdsa.VerifyASN1(pub, d[:], sig) {
					errc <- fmt.Errorf("goroutine %d sign %d: bad signature", g, i)
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}

func TestTwoTokens(t *testing.T) {
	cfgA, cfgB := hsmtest.NewToken(t), hsmtest.NewToken(t)
	a := open(t, cfgA)
	b, err := hsm.Open(cfgB, hsm.WithSessions(2))
	if err != nil {
		t.Fatal(err)
	}
	if n := hsm.ModuleRefs(resolved(t, cfgA.Module)); n != 2 {
		t.Errorf("module refs = %d, want 2 (one shared context)", n)
	}
	sa, err := a.GenerateKey("same-label", elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	sb, err := b.GenerateKey("same-label", elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	if sa.Public().(*ecdsa.PublicKey).Equal(sb.Public()) {
		t.Fatal("two tokens returned the same key")
	}
	mustVerify(t, sa, elliptic.P256(), "a")
	mustVerify(t, sb, elliptic.P256(), "b")
	if ka, _ := a.Keys(); len(ka) != 1 {
		t.Errorf("token A has %d keys, want 1", len(ka))
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// Closing B leaves A (and the shared module) working.
	mustVerify(t, sa, elliptic.P256(), "a after b closed")
	if _, err := sb.Sign(nil, make([]byte, 32), nil); !errors.Is(err, hsm.ErrClosed) {
		t.Errorf("Sign on closed token: %v, want ErrClosed", err)
	}
	if n := hsm.ModuleRefs(resolved(t, cfgA.Module)); n != 1 {
		t.Errorf("module refs = %d, want 1", n)
	}
}

func TestSymlinkedModuleShared(t *testing.T) {
	hsmtest.Require(t)
	// Debian installs /usr/lib/softhsm/libsofthsm2.so as a symlink to the
	// multiarch path; both names must share one initialization.
	var names []string
	for _, m := range hsm.DefaultModules {
		if _, err := os.Stat(m); err == nil {
			names = append(names, m)
		}
	}
	if len(names) < 2 {
		t.Skip("only one spelling of the SoftHSM2 module is installed")
	}
	cfgA, cfgB := hsmtest.NewToken(t), hsmtest.NewToken(t)
	cfgA.Module, cfgB.Module = names[0], names[1]
	open(t, cfgA)
	open(t, cfgB)
	if n := hsm.ModuleRefs(resolved(t, names[0])); n != 2 {
		t.Errorf("module refs = %d, want 2", n)
	}
}

func TestCloseReopen(t *testing.T) {
	cfg := hsmtest.NewToken(t)
	for i := range 3 {
		tok, err := hsm.Open(cfg)
		if err != nil {
			t.Fatalf("round %d: Open: %v", i, err)
		}
		s, err := tok.GenerateKey(fmt.Sprintf("k%d", i), elliptic.P256())
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		mustVerify(t, s, elliptic.P256(), "x")
		keys, err := tok.Keys()
		if err != nil || len(keys) != i+1 {
			t.Fatalf("round %d: Keys() = %d keys, %v", i, len(keys), err)
		}
		if err := tok.Close(); err != nil {
			t.Fatalf("round %d: Close: %v", i, err)
		}
		if err := tok.Close(); err != nil {
			t.Fatalf("round %d: second Close: %v", i, err)
		}
		if _, err := tok.Keys(); !errors.Is(err, hsm.ErrClosed) {
			t.Fatalf("Keys after Close: %v, want ErrClosed", err)
		}
		if _, err := s.Sign(nil, make([]byte, 32), nil); !errors.Is(err, hsm.ErrClosed) {
			t.Fatalf("Sign after Close: %v, want ErrClosed", err)
		}
		if n := hsm.ModuleRefs(resolved(t, cfg.Module)); n != 0 {
			t.Fatalf("module refs after Close = %d", n)
		}
	}
}

func TestConcurrentOpenClose(t *testing.T) {
	cfgs := []hsm.Config{hsmtest.NewToken(t), hsmtest.NewToken(t)}
	var wg sync.WaitGroup
	errc := make(chan error, 64)
	for g := range 8 {
		wg.Go(func() {
			cfg := cfgs[g%2]
			for i := range 3 {
				tok, err := hsm.Open(cfg, hsm.WithSessions(1))
				if err != nil {
					errc <- err
					return
				}
				_, err = tok.GenerateKey(fmt.Sprintf("g%d-%d", g, i), elliptic.P256())
				if err != nil {
					errc <- err
				}
				if err := tok.Close(); err != nil {
					errc <- err
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	tok := open(t, cfgs[0])
	if keys, err := tok.Keys(); err != nil || len(keys) != 12 {
		t.Errorf("Keys() = %d keys, %v; want 12", len(keys), err)
	}
}

func TestSessionRecovery(t *testing.T) {
	tok := open(t, hsmtest.NewToken(t), hsm.WithSessions(2))
	s, err := tok.GenerateKey("k", elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	t.Run("session closed under the pool", func(t *testing.T) {
		if n := hsm.BreakSessions(tok); n == 0 {
			t.Fatal("no open session to break")
		}
		for range 4 {
			mustVerify(t, s, elliptic.P256(), "after break")
		}
	})
	t.Run("logged out", func(t *testing.T) {
		if err := hsm.Logout(tok); err != nil {
			t.Fatal(err)
		}
		for range 4 {
			mustVerify(t, s, elliptic.P256(), "after logout")
		}
		if keys, err := tok.Keys(); err != nil || len(keys) != 1 {
			t.Fatalf("Keys() = %v, %v", keys, err)
		}
	})
	// What a fresh session recovered is no failure; what the token
	// refused is one.
	if n := tok.Failures(); n != 0 {
		t.Errorf("Failures() = %d after recoveries, want 0", n)
	}
	if err := hsm.FailOnce(tok); err == nil {
		t.Fatal("a signature never initialised did not fail")
	}
	if n := tok.Failures(); n != 1 {
		t.Errorf("Failures() = %d after a refused operation, want 1", n)
	}
}

// SoftHSM2 reads its token directory in C_Initialize only. This test
// records what the installed version does with a token created while the
// module is initialized, and checks the documented way out: close every
// Token, then open again. It must not run in parallel with other tests:
// it needs to be the only user of the module when it closes its Token.
func TestTokenCreatedAfterInit(t *testing.T) {
	first := hsmtest.NewToken(t)
	tok, err := hsm.Open(first)
	if err != nil {
		t.Fatal(err)
	}
	late := hsmtest.CreateToken(t)
	if lt, err := hsm.Open(late); err == nil {
		t.Logf("this SoftHSM2 re-scans its token directory")
		lt.Close()
	} else if errors.Is(err, hsm.ErrTokenNotFound) {
		t.Logf("as documented, a token created after C_Initialize is not visible: %v", err)
	} else {
		t.Fatalf("Open(late): %v", err)
	}
	if err := tok.Close(); err != nil {
		t.Fatal(err)
	}
	lt := open(t, late)
	if _, err := lt.GenerateKey("k", elliptic.P256()); err != nil {
		t.Fatal(err)
	}
}

func TestReadPIN(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("pin", "  123456\n", 0o600)
	open := write("pin-open", "123456\n", 0o644)
	empty := write("pin-empty", " \n", 0o600)
	t.Setenv("GOVNET_TEST_PIN", " 654321\n")
	t.Setenv("GOVNET_TEST_EMPTY", "")
	for _, tc := range []struct {
		name, file, env string
		want            string
		wantErr         error
		anyErr          bool
	}{
		{"file trimmed", good, "", "123456", nil, false},
		{"file wins over env", good, "GOVNET_TEST_PIN", "123456", nil, false},
		{"env", "", "GOVNET_TEST_PIN", "654321", nil, false},
		{"world-readable file", open, "", "", nil, true},
		{"empty file", empty, "", "", hsm.ErrNoPIN, true},
		{"missing file, no fallback", filepath.Join(dir, "nope"), "GOVNET_TEST_PIN", "", os.ErrNotExist, true},
		{"empty env", "", "GOVNET_TEST_EMPTY", "", hsm.ErrNoPIN, true},
		{"unset env", "", "GOVNET_TEST_UNSET_PIN", "", hsm.ErrNoPIN, true},
		{"nothing", "", "", "", hsm.ErrNoPIN, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := hsm.ReadPIN(tc.file, tc.env)
			if tc.anyErr {
				if err == nil || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
					t.Fatalf("ReadPIN = %q, %v; want error %v", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ReadPIN = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestReadPINFileKinds: a PIN file is a small regular file. One that is
// huge (a wrong path given) is refused, not read whole into memory and
// sent to the token as a "wrong PIN"; a FIFO or a directory is refused at
// once instead of blocking the start or failing obscurely; CRLF and other
// trailing white space are trimmed.
func TestReadPINFileKinds(t *testing.T) {
	dir := t.TempDir()
	huge := filepath.Join(dir, "huge")
	if err := os.WriteFile(huge, []byte(strings.Repeat("1", 1<<20)), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "dir")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	crlf := filepath.Join(dir, "crlf")
	if err := os.WriteFile(crlf, []byte("12 34\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, file, inMsg string }{
		{"huge", huge, "too large"},
		{"fifo", fifo, "not a regular file"},
		{"directory", sub, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			type result struct {
				pin string
				err error
			}
			done := make(chan result, 1)
			go func() {
				pin, err := hsm.ReadPIN(tc.file, "")
				done <- result{pin, err}
			}()
			select {
			case r := <-done:
				if r.err == nil || !strings.Contains(r.err.Error(), tc.inMsg) {
					t.Fatalf("ReadPIN = %d bytes, %v; want an error saying %q", len(r.pin), r.err, tc.inMsg)
				}
				if !strings.Contains(r.err.Error(), tc.file) {
					t.Errorf("error %q does not name the file", r.err)
				}
			case <-time.After(5 * time.Second):
				// Unblock the reader so the test process can end.
				if f, err := os.OpenFile(tc.file, os.O_WRONLY, 0); err == nil {
					f.Close()
				}
				t.Fatal("ReadPIN blocked")
			}
		})
	}
	if pin, err := hsm.ReadPIN(crlf, ""); err != nil || pin != "12 34" {
		t.Fatalf("ReadPIN(CRLF) = %q, %v; want %q", pin, err, "12 34")
	}
}

func TestOpenValidation(t *testing.T) {
	cfg := hsmtest.NewToken(t)
	noPIN := cfg
	noPIN.PIN = ""
	if _, err := hsm.Open(noPIN); !errors.Is(err, hsm.ErrNoPIN) {
		t.Errorf("Open without PIN: %v, want ErrNoPIN", err)
	}
	noLabel := cfg
	noLabel.TokenLabel = ""
	if _, err := hsm.Open(noLabel); !errors.Is(err, hsm.ErrTokenNotFound) {
		t.Errorf("Open without label: %v, want ErrTokenNotFound", err)
	}
}

// BenchmarkSign measures the raw SoftHSM2 P-256 sign rate from GOMAXPROCS
// goroutines through the session pool (hsm.raw_sign_per_s), and the CPU
// time (user+system, SoftHSM2 included) per signature.
func BenchmarkSign(b *testing.B) {
	tok := open(b, hsmtest.NewToken(b))
	s, err := tok.GenerateKey("bench", elliptic.P256())
	if err != nil {
		b.Fatal(err)
	}
	d := sha256.Sum256([]byte("benchmark"))
	b.ResetTimer()
	cpu0 := cpuTime(b)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Sign(nil, d[:], crypto.SHA256); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signs/s")
	b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-us/sign")
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
