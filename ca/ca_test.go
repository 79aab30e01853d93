package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/hsm/hsmtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	hsmtest.Cleanup()
	os.Exit(code)
}

// newCA makes a root and an intermediate whose keys live in a fresh
// SoftHSM2 token.
func newCA(t testing.TB, opts ...Option) (*CA, *hsm.Token) {
	t.Helper()
	hsmtest.Require(t)
	tok, err := hsm.Open(hsmtest.NewToken(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	now := time.Now()
	rootKey, err := tok.GenerateKey("root", elliptic.P384())
	if err != nil {
		t.Fatal(err)
	}
	root, err := NewRoot(rootKey, "test root", now)
	if err != nil {
		t.Fatal(err)
	}
	interKey, err := tok.GenerateKey("intermediate", elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	inter, err := NewIntermediate(root, rootKey, interKey.Public(), "test intermediate", now)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(root, inter, interKey, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c, tok
}

func csrFor(t testing.TB, key crypto.Signer) *x509.CertificateRequest {
	t.Helper()
	csr, err := NewCSR(key, "ignored.example")
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func TestIssueGateway(t *testing.T) {
	// Now, to the second: openssl checks the chain at its own clock (a
	// fixed date here made the test fail a day after it was written).
	fixed := time.Now().UTC().Truncate(time.Second)
	c, tok := newCA(t, WithClock(func() time.Time { return fixed }))
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	// A CSR that asks for names it is not entitled to: the profile wins.
	tmpl := &x509.CertificateRequest{DNSNames: []string{"controller.govnet", "evil.example"}}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(der)
	chain, err := c.Issue(context.Background(), csr, GatewayProfile("gw-h29", "000.00.00.H29"))
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if len(chain) != 2 || chain[1].Subject.CommonName != "test intermediate" {
		t.Fatalf("chain %v", chain)
	}
	if got := strings.Join(leaf.DNSNames, ","); got != "gw-h29.gateway.govnet" {
		t.Errorf("DNS SANs %q", got)
	}
	id, err := IdentityOf(leaf)
	if err != nil || id != (Identity{Kind: KindGateway, Name: "gw-h29", Agency: "000.00.00.H29"}) {
		t.Errorf("identity %+v %v", id, err)
	}
	if !leaf.NotAfter.Equal(fixed.Add(GatewayLifetime)) {
		t.Errorf("NotAfter %v, want %v", leaf.NotAfter, fixed.Add(GatewayLifetime))
	}
	eku := map[x509.ExtKeyUsage]bool{}
	for _, u := range leaf.ExtKeyUsage {
		eku[u] = true
	}
	if !eku[x509.ExtKeyUsageClientAuth] || !eku[x509.ExtKeyUsageServerAuth] || leaf.IsCA {
		t.Errorf("usages %v IsCA %v", leaf.ExtKeyUsage, leaf.IsCA)
	}

	// openssl agrees that the chain verifies against the root.
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl missing")
		}
		t.Skip("openssl missing")
	}
	dir := t.TempDir()
	write := func(name string, certs ...*x509.Certificate) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, EncodePEM(certs...), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	out, err := exec.Command("openssl", "verify", "-CAfile", write("root.pem", c.Root()),
		"-untrusted", write("inter.pem", chain[1]), "-purpose", "sslclient", write("leaf.pem", leaf)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}

	// The CA keys are in the token, sensitive and not extractable.
	keys, err := tok.Keys()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !k.Sensitive || k.Extractable || !k.Token {
			t.Errorf("key %q: sensitive=%v extractable=%v token=%v", k.Label, k.Sensitive, k.Extractable, k.Token)
		}
	}
	if len(keys) != 2 {
		t.Errorf("%d keys in the token, want 2", len(keys))
	}
}

func TestIssuePersonAndNode(t *testing.T) {
	c, _ := newCA(t)
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	chain, err := c.Issue(context.Background(), csrFor(t, key), PersonProfile("Nguyễn Văn An", RoleOfficer))
	if err != nil {
		t.Fatal(err)
	}
	id, _ := IdentityOf(chain[0])
	if id.Kind != KindPerson || id.Role != RoleOfficer || id.Name != "Nguyễn Văn An" {
		t.Errorf("person identity %+v", id)
	}
	if chain[0].Subject.CommonName != "Nguyễn Văn An" {
		t.Errorf("CN %q", chain[0].Subject.CommonName)
	}
	chain, err = c.Issue(context.Background(), csrFor(t, key), NodeProfile("ctl1", []string{"ctl1.govnet"}, nil))
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := IdentityOf(chain[0]); id.Kind != KindNode {
		t.Errorf("node identity %+v", id)
	}
}

func TestParseCSRRejects(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	pemOf := func(der []byte) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}
	mk := func(k crypto.Signer) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	good := mk(p256)
	tampered := append([]byte(nil), good...)
	tampered[len(tampered)-5] ^= 0xff // inside the signature
	for _, tt := range []struct {
		name string
		in   []byte
		want error
		msg  string
	}{
		{"garbage", []byte("hello"), ErrBadCSR, ""},
		{"oversized", make([]byte, MaxCSRBytes+1), ErrBadCSR, "at most"},
		{"wrong block", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: good}), ErrBadCSR, "want CERTIFICATE REQUEST"},
		{"bad signature", pemOf(tampered), ErrBadCSR, ""},
		{"P-224", pemOf(mk(p224)), ErrKeyType, "P-224"},
		{"ed25519", pemOf(mk(ed)), ErrKeyType, "ed25519"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCSR(tt.in)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("got %v, want %v containing %q", err, tt.want, tt.msg)
			}
		})
	}
	if _, err := ParseCSR(pemOf(good)); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseCSR(good); err != nil {
		t.Fatalf("DER: %v", err)
	}
}

func TestNewRejectsMismatchedKey(t *testing.T) {
	c, tok := newCA(t)
	other, err := tok.GenerateKey("other", elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(c.Root(), c.Intermediate(), other); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("got %v", err)
	}
}

func FuzzParseCSR(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{"a"}}, k)
	f.Add(der)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, err := ParseCSR(data)
		if err != nil {
			if !errors.Is(err, ErrBadCSR) && !errors.Is(err, ErrKeyType) {
				t.Fatalf("error outside the sentinels: %v", err)
			}
			return
		}
		if csr.CheckSignature() != nil {
			t.Fatal("accepted a CSR whose signature does not verify")
		}
	})
}

// Issue verifies the CSR's signature once, inside the authority; a CSR
// whose signature does not verify still gets ErrBadCSR and no certificate.
func TestIssueRejectsBadCSRSignature(t *testing.T) {
	c, _ := newCA(t)
	csr := csrFor(t, subjectKeys()["P-256"])
	bad := *csr
	bad.Signature = append([]byte(nil), csr.Signature...)
	bad.Signature[len(bad.Signature)-3] ^= 0xff
	chain, err := c.Issue(context.Background(), &bad, GatewayProfile("gw-1", "000.00.00.H29"))
	if !errors.Is(err, ErrBadCSR) || !strings.Contains(err.Error(), "signature does not verify") || chain != nil {
		t.Fatalf("got %v, %v; want ErrBadCSR about the signature", chain, err)
	}
	if _, err := c.Issue(context.Background(), nil, GatewayProfile("gw-1", "000.00.00.H29")); !errors.Is(err, ErrBadCSR) {
		t.Fatalf("nil CSR: got %v", err)
	}
}

// TestSignLintedTBS: roots and intermediates of each CA key type are
// signed over the very TBSCertificate that was linted and verify as
// crypto/x509 would have made them; a signing key that is not the
// issuer's is refused before anything is signed.
func TestSignLintedTBS(t *testing.T) {
	now := time.Now()
	for _, curve := range []elliptic.Curve{elliptic.P256(), elliptic.P384()} {
		rootKey, _ := ecdsa.GenerateKey(curve, rand.Reader)
		root, err := NewRoot(rootKey, "root "+curve.Params().Name, now)
		if err != nil {
			t.Fatal(err)
		}
		if err := root.CheckSignatureFrom(root); err != nil {
			t.Fatalf("%s root: %v", curve.Params().Name, err)
		}
		for _, ic := range []elliptic.Curve{elliptic.P256(), elliptic.P384()} {
			interKey, _ := ecdsa.GenerateKey(ic, rand.Reader)
			inter, err := NewIntermediate(root, rootKey, interKey.Public(), "intermediate", now)
			if err != nil {
				t.Fatal(err)
			}
			if err := inter.CheckSignatureFrom(root); err != nil || !bytes.Equal(inter.AuthorityKeyId, root.SubjectKeyId) {
				t.Fatalf("%s intermediate under a %s root: %v", ic.Params().Name, curve.Params().Name, err)
			}
			if fs := mustLinter(t).Certificate(inter.Raw); len(fs) > 0 {
				t.Fatalf("issued intermediate lints: %v", fs)
			}
		}
		other, _ := ecdsa.GenerateKey(curve, rand.Reader)
		if _, err := NewIntermediate(root, other, other.Public(), "intermediate", now); err == nil || !strings.Contains(err.Error(), "not the issuer's") {
			t.Fatalf("intermediate signed with a key that is not the root's: %v", err)
		}
	}
}

func mustLinter(t *testing.T) *Linter {
	t.Helper()
	l, err := defaultLinter()
	if err != nil {
		t.Fatal(err)
	}
	return l
}
