package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// subjectKeys are the subject key types govnet issues for, made once.
var subjectKeys = sync.OnceValue(func() map[string]crypto.Signer {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa3072, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		panic(err)
	}
	return map[string]crypto.Signer{"P-256": p256, "P-384": p384, "RSA-3072": rsa3072}
})

// countingSigner counts the signatures the HSM key makes.
type countingSigner struct {
	crypto.Signer
	n atomic.Int64
}

func (s *countingSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	s.n.Add(1)
	return s.Signer.Sign(r, d, o)
}

func allProfiles() map[string]Profile {
	return map[string]Profile{
		"gateway":          GatewayProfile("gw-h29-01", "000.00.00.H29"),
		"gateway commune":  GatewayProfile("gw-xa-1", "000.12.04.H29"),
		"person operator":  PersonProfile("Nguyễn Văn An", RoleOperator),
		"person officer":   PersonProfile("Trần Thị Bình", RoleOfficer),
		"person auditor":   PersonProfile("Lê Văn Cường", RoleAuditor),
		"person custodian": PersonProfile("Phạm Thị Dung", RoleCustodian),
		"node":             NodeProfile("ctl1", []string{"ctl1.govnet", "localhost"}, []net.IP{net.ParseIP("10.0.0.1"), net.ParseIP("::1")}),
	}
}

// Every profile, with every allowed key type, passes zlint and govnet's
// lints with no error and no warning; the issued certificate (real HSM
// signature) lints clean too, so the pre-certificate was faithful.
func TestEveryProfileLintsClean(t *testing.T) {
	c, _ := newCA(t)
	keys := subjectKeys()
	for pname, p := range allProfiles() {
		for kname, key := range keys {
			t.Run(pname+"/"+kname, func(t *testing.T) {
				chain, err := c.Issue(context.Background(), csrFor(t, key), p)
				if err != nil {
					t.Fatal(err)
				}
				leaf := chain[0]
				// The certificate handed out is what its DER parses to
				// (signCertificate builds it from the pre-certificate).
				if parsed, err := x509.ParseCertificate(leaf.Raw); err != nil || !reflect.DeepEqual(parsed, leaf) {
					t.Fatalf("the issued certificate is not what its DER parses to (%v)", err)
				}
				if fs := c.linter.Certificate(leaf.Raw); len(fs) > 0 {
					t.Fatalf("issued certificate has findings: %v", fs)
				}
				wantKU := x509.KeyUsageDigitalSignature
				if _, ok := key.Public().(*rsa.PublicKey); ok && p.Server {
					wantKU |= x509.KeyUsageKeyEncipherment
				}
				if leaf.KeyUsage != wantKU {
					t.Errorf("key usage %v, want %v", leaf.KeyUsage, wantKU)
				}
				crl, ocsp := c.URLs()
				if !slices.Equal(leaf.CRLDistributionPoints, []string{crl}) || !slices.Equal(leaf.OCSPServer, []string{ocsp}) {
					t.Errorf("CDP %v OCSP %v, want %s %s", leaf.CRLDistributionPoints, leaf.OCSPServer, crl, ocsp)
				}
				if err := leaf.CheckSignatureFrom(c.Intermediate()); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
	// The CA certificates themselves.
	for _, cert := range []*x509.Certificate{c.Root(), c.Intermediate()} {
		if fs := c.linter.Certificate(cert.Raw); len(fs) > 0 {
			// The root is self-signed: lint it as such.
			if cert != c.Root() || len(c.linter.certificate(cert.Raw, true)) > 0 {
				t.Errorf("%s: %v", cert.Subject.CommonName, fs)
			}
		}
	}
	names, err := ZlintNames()
	if err != nil || len(names) < 100 {
		t.Fatalf("%d zlint lints run (%v)", len(names), err)
	}
	t.Logf("%d zlint lints from %v, %d govnet lints", len(names), LintSources, len(GovnetLints))
}

// A template that breaks a lint is never signed by the HSM, and the error
// names the lint.
func TestLintBlocksBadTemplate(t *testing.T) {
	c, tok := newCA(t)
	counter := &countingSigner{Signer: mustSigner(t, tok, "intermediate")}
	c2, err := New(c.Root(), c.Intermediate(), counter)
	if err != nil {
		t.Fatal(err)
	}
	key := subjectKeys()["P-256"]
	gw := GatewayProfile("gw-1", "000.00.00.H29")
	for _, tt := range []struct {
		name string
		p    Profile
		hook func(*x509.Certificate)
		lint string
	}{
		{"SAN not from the registry", func() Profile { p := gw; p.DNSNames = []string{"gw-1.gateway.govnet", "evil.example"}; return p }(), nil, "e_govnet_gateway_san_form"},
		{"gateway id not a DNS label", GatewayProfile("GW_1", "000.00.00.H29"), nil, "e_govnet_gateway_san_form"},
		{"agency code invalid", GatewayProfile("gw-1", "001.00.04.H29"), nil, "e_govnet_agency_code"},
		{"lifetime above the profile", func() Profile { p := gw; p.Lifetime = 48 * time.Hour; return p }(), nil, "e_govnet_lifetime_bound"},
		{"unknown role", PersonProfile("Ngô Văn E", "admin"), nil, "e_govnet_person_role"},
		{"person with server auth", func() Profile { p := PersonProfile("Ngô Văn E", RoleOperator); p.Server = true; return p }(), nil, "e_govnet_person_role"},
		{"certSign without CA (RFC 5280)", gw, func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }, "e_ext_key_usage_cert_sign_without_ca"},
		{"empty DNS label (RFC 5280)", NodeProfile("ctl1", []string{"ctl1..govnet"}, nil), nil, "e_rfc_dnsname_empty_label"},
		{"foreign URI", gw, func(c *x509.Certificate) { c.URIs = append(c.URIs, mustURL(t, "https://example.com/x")) }, "e_govnet_identity"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c2.tmplHook = tt.hook
			defer func() { c2.tmplHook = nil }()
			before := counter.n.Load()
			_, err := c2.Issue(context.Background(), csrFor(t, key), tt.p)
			var le *LintError
			if !errors.As(err, &le) || !errors.Is(err, ErrLint) {
				t.Fatalf("got %v, want a *LintError", err)
			}
			if !slices.Contains(le.Lints(), tt.lint) || !strings.Contains(err.Error(), tt.lint) {
				t.Fatalf("error %q does not name %s", err, tt.lint)
			}
			if n := counter.n.Load() - before; n != 0 {
				t.Fatalf("the HSM signed %d times for a blocked certificate", n)
			}
			t.Log(err)
		})
	}
	// A good one goes through the same CA and costs one HSM signature.
	before := counter.n.Load()
	if _, err := c2.Issue(context.Background(), csrFor(t, key), gw); err != nil {
		t.Fatal(err)
	}
	if n := counter.n.Load() - before; n != 1 {
		t.Fatalf("%d HSM signatures for one certificate", n)
	}
}

func TestProfilesConfigurable(t *testing.T) {
	fixed := time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)
	p := DefaultProfiles()
	p.Gateway = 6 * time.Hour
	c, _ := newCA(t, WithClock(func() time.Time { return fixed }), WithProfiles(p))
	key := subjectKeys()["P-384"]
	chain, err := c.Issue(context.Background(), csrFor(t, key), GatewayProfile("gw-2", "000.00.00.G22"))
	if err != nil {
		t.Fatal(err)
	}
	if got := chain[0].NotAfter; !got.Equal(fixed.Add(6 * time.Hour)) {
		t.Errorf("NotAfter %v, want %v", got, fixed.Add(6*time.Hour))
	}
	// A gateway profile asking for the old default of 24 h is now too long.
	long := GatewayProfile("gw-2", "000.00.00.G22")
	long.Lifetime = 24 * time.Hour
	if _, err := c.Issue(context.Background(), csrFor(t, key), long); !errors.Is(err, ErrLint) || !strings.Contains(err.Error(), "e_govnet_lifetime_bound") {
		t.Fatalf("got %v", err)
	}
	bad := DefaultProfiles()
	bad.Person = time.Minute
	if err := bad.Validate(); err == nil {
		t.Fatal("a one-minute profile validated")
	}
	if _, err := New(c.Root(), c.Intermediate(), c.signer, WithProfiles(bad)); err == nil {
		t.Fatal("New accepted invalid profiles")
	}
	if _, err := c.Issue(context.Background(), csrFor(t, key), Profile{Identity: Identity{Kind: "robot", Name: "r"}}); !errors.Is(err, ErrProfile) {
		t.Fatalf("unknown kind: %v", err)
	}
}

func mustSigner(t *testing.T, tok interface {
	Signer(string) (crypto.Signer, error)
}, label string) crypto.Signer {
	t.Helper()
	s, err := tok.Signer(label)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// The pre-certificate is what crypto/x509 signs, byte for byte, but for
// the signature value: its TBSCertificate is the one crypto/x509 makes
// with a real key of the issuer's type, its outer algorithm matches, and
// the HSM's signature of it verifies under the issuer. For a CA and a
// leaf, under ECDSA and RSA issuers, and self-signed.
func TestPrecertificateIsTheTBS(t *testing.T) {
	keys := subjectKeys()
	for _, iname := range []string{"P-256", "P-384", "RSA-3072"} {
		for _, selfSigned := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/self-signed=%t", iname, selfSigned), func(t *testing.T) {
				issuer := keys[iname]
				parentTmpl := &x509.Certificate{
					SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "issuer"},
					NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
					IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
					SubjectKeyId: []byte{1, 2, 3},
				}
				der, err := x509.CreateCertificate(rand.Reader, parentTmpl, parentTmpl, issuer.Public(), issuer)
				if err != nil {
					t.Fatal(err)
				}
				parent, _ := x509.ParseCertificate(der)
				tmpl := &x509.Certificate{
					SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "leaf"},
					NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
					KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
				}
				pub := keys["P-256"].Public()
				if selfSigned {
					tmpl, parent, pub = parentTmpl, nil, issuer.Public()
				}
				if err := completeTemplate(tmpl, pub); err != nil {
					t.Fatal(err)
				}
				pre, err := precertificate(tmpl, parent, pub, issuer.Public())
				if err != nil {
					t.Fatal(err)
				}
				c, err := x509.ParseCertificate(pre) // refuses inner and outer algorithms that differ
				if err != nil {
					t.Fatal(err)
				}
				// What crypto/x509 signs with a real key of the type.
				key, _ := lintKeyFor(issuer.Public())
				fake := parentTmpl
				if !selfSigned {
					f := *parent
					fake = &f
				}
				fake = func() *x509.Certificate { f := *fake; f.PublicKey = key.signer.Public(); return &f }()
				want, err := x509.CreateCertificate(rand.Reader, tmpl, fake, pub, key.signer)
				if err != nil {
					t.Fatal(err)
				}
				w, _ := x509.ParseCertificate(want)
				if !bytes.Equal(c.RawTBSCertificate, w.RawTBSCertificate) || c.SignatureAlgorithm != w.SignatureAlgorithm {
					t.Fatalf("pre-certificate's TBS differs from crypto/x509's (algorithm %v, want %v)", c.SignatureAlgorithm, w.SignatureAlgorithm)
				}
				signed, _, err := signTBS(c, issuer)
				if err != nil {
					t.Fatal(err)
				}
				cert, err := x509.ParseCertificate(signed)
				if err != nil {
					t.Fatal(err)
				}
				check := parent
				if selfSigned {
					check = cert
				}
				if err := cert.CheckSignatureFrom(check); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(cert.RawTBSCertificate, c.RawTBSCertificate) {
					t.Fatal("the signed certificate's TBS is not the linted one")
				}
			})
		}
	}
	if _, err := tbsSignatureAlgorithm([]byte{0x30, 0x03, 0x02, 0x01, 0x01}); err == nil {
		t.Error("a TBSCertificate without an algorithm was read")
	}
}

// A CRL is signed as its pre-CRL was linted: the TBSCertList crypto/x509
// makes from the template with a real key of the issuer's type, byte for
// byte, signed by the issuer's key; a signer that is not the issuer's is
// refused.
func TestPreCRLIsTheTBSCertList(t *testing.T) {
	l, err := NewLinter(DefaultProfiles())
	if err != nil {
		t.Fatal(err)
	}
	issuerKey := subjectKeys()["P-256"]
	itmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "issuer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId: []byte{1, 2, 3},
	}
	der, err := x509.CreateCertificate(rand.Reader, itmpl, itmpl, issuerKey.Public(), issuerKey)
	if err != nil {
		t.Fatal(err)
	}
	issuer, _ := x509.ParseCertificate(der)
	now := time.Now().UTC().Truncate(time.Second)
	tmpl := &x509.RevocationList{
		Number: big.NewInt(3), ThisUpdate: now, NextUpdate: now.Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: big.NewInt(99), RevocationTime: now.Add(-time.Minute)}},
	}
	signed, err := l.signCRL("test CRL", tmpl, issuer, issuerKey, MaxCRLValidity)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(signed)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(issuer); err != nil {
		t.Fatal(err)
	}
	want, err := x509.CreateRevocationList(rand.Reader, tmpl, issuer, issuerKey)
	if err != nil {
		t.Fatal(err)
	}
	w, _ := x509.ParseRevocationList(want)
	if !bytes.Equal(crl.RawTBSRevocationList, w.RawTBSRevocationList) {
		t.Fatal("the signed CRL's TBSCertList is not crypto/x509's")
	}
	if _, err := l.signCRL("test CRL", tmpl, issuer, subjectKeys()["P-384"], MaxCRLValidity); err == nil {
		t.Fatal("a CRL signed by a key that is not the issuer's")
	}
}
