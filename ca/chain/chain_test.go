package chain

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"
)

var now = time.Now().UTC().Truncate(time.Second) // real handshakes (TestServerConfig, TestClientConfig) check at the real clock

type pki struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

var serial int64

// issue makes a certificate from tmpl signed by parent (self-signed when
// parent is nil) with a new key on curve.
func issue(t *testing.T, tmpl *x509.Certificate, parent *pki, curve elliptic.Curve) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl.SerialNumber = big.NewInt(serial)
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(24*time.Hour)
	}
	signer, issuer := crypto.Signer(key), tmpl
	if parent != nil {
		signer, issuer = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &pki{c, key}
}

func caTmpl(cn string) *x509.Certificate {
	return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
}

func leafTmpl(cn string, eku ...x509.ExtKeyUsage) *x509.Certificate {
	return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: eku, DNSNames: []string{cn}}
}

func TestVerify(t *testing.T) {
	root := issue(t, caTmpl("root"), nil, elliptic.P384())
	inter := issue(t, caTmpl("ctl1"), root, elliptic.P256())
	inter2 := issue(t, caTmpl("ctl2"), root, elliptic.P256())
	other := issue(t, caTmpl("other root"), nil, elliptic.P384())
	otherInter := issue(t, caTmpl("ctl1"), other, elliptic.P256()) // same subject, wrong root
	leaf := issue(t, leafTmpl("gw1", x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth), inter, elliptic.P256())
	leaf2 := issue(t, leafTmpl("gw2", x509.ExtKeyUsageClientAuth), inter2, elliptic.P256())
	serverOnly := issue(t, leafTmpl("srv", x509.ExtKeyUsageServerAuth), inter, elliptic.P256())
	expiredTmpl := leafTmpl("old", x509.ExtKeyUsageClientAuth)
	expiredTmpl.NotBefore, expiredTmpl.NotAfter = now.Add(-48*time.Hour), now.Add(-time.Hour)
	expired := issue(t, expiredTmpl, inter, elliptic.P256())
	notCA := issue(t, leafTmpl("notca", x509.ExtKeyUsageClientAuth), root, elliptic.P256())
	underNotCA := issue(t, leafTmpl("gw3", x509.ExtKeyUsageClientAuth), notCA, elliptic.P256())
	byOther := issue(t, leafTmpl("gw1", x509.ExtKeyUsageClientAuth), otherInter, elliptic.P256())
	byRoot := issue(t, leafTmpl("direct", x509.ExtKeyUsageClientAuth), root, elliptic.P256())
	forged := *leaf.cert
	forged.Raw = append([]byte(nil), leaf.cert.Raw...)
	forged.Signature = append([]byte(nil), leaf.cert.Signature...)
	forged.Signature[len(forged.Signature)-3] ^= 1

	cases := []struct {
		name  string
		certs []*x509.Certificate
		usage x509.ExtKeyUsage
		at    time.Time
		err   string // empty: verifies
	}{
		{"leaf and intermediate", []*x509.Certificate{leaf.cert, inter.cert}, x509.ExtKeyUsageClientAuth, now, ""},
		{"again, from the cache", []*x509.Certificate{leaf.cert, inter.cert}, x509.ExtKeyUsageClientAuth, now, ""},
		{"another node's intermediate", []*x509.Certificate{leaf2.cert, inter2.cert}, x509.ExtKeyUsageClientAuth, now, ""},
		{"intermediates in any order", []*x509.Certificate{leaf2.cert, inter.cert, inter2.cert}, x509.ExtKeyUsageClientAuth, now, ""},
		{"signed by the root itself", []*x509.Certificate{byRoot.cert}, x509.ExtKeyUsageClientAuth, now, ""},
		{"forged leaf signature under a known intermediate", []*x509.Certificate{&forged, inter.cert}, x509.ExtKeyUsageClientAuth, now, "unknown authority"},
		{"wrong usage", []*x509.Certificate{serverOnly.cert, inter.cert}, x509.ExtKeyUsageClientAuth, now, "incompatible key usage"},
		{"expired leaf", []*x509.Certificate{expired.cert, inter.cert}, x509.ExtKeyUsageClientAuth, now, "expired"},
		{"known intermediate, after it expires", []*x509.Certificate{leaf.cert, inter.cert}, x509.ExtKeyUsageClientAuth, now.Add(48 * time.Hour), "expired"},
		{"intermediate of another root", []*x509.Certificate{byOther.cert, otherInter.cert}, x509.ExtKeyUsageClientAuth, now, "unknown authority"},
		{"issuer not a CA", []*x509.Certificate{underNotCA.cert, notCA.cert}, x509.ExtKeyUsageClientAuth, now, "cannot sign"},
		{"leaf alone", []*x509.Certificate{leaf.cert}, x509.ExtKeyUsageClientAuth, now, "unknown authority"},
		{"nothing", nil, x509.ExtKeyUsageClientAuth, now, "no certificate"},
	}
	v := NewVerifierFor(root.cert)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			chain, err := v.Verify(c.certs, c.usage, c.at)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one saying %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(chain) == 0 || chain[0] != c.certs[0] || chain[len(chain)-1] != root.cert {
				t.Fatalf("chain %v", names(chain))
			}
		})
		// crypto/x509's verdict on the whole chain is the same.
		if len(c.certs) > 0 {
			pool := x509.NewCertPool()
			for _, i := range c.certs[1:] {
				pool.AddCert(i)
			}
			_, err := c.certs[0].Verify(x509.VerifyOptions{Roots: v.Roots(), Intermediates: pool, CurrentTime: c.at, KeyUsages: []x509.ExtKeyUsage{c.usage}})
			if (err == nil) != (c.err == "") {
				t.Errorf("%s: crypto/x509 says %v", c.name, err)
			}
		}
	}
	if len(v.known) != 2 {
		t.Fatalf("%d intermediates remembered, want the two the root signed", len(v.known))
	}

	// A root with extended key usages constrains every chain: nothing is
	// cached, and its constraint applies.
	ekuRootTmpl := caTmpl("eku root")
	ekuRootTmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	ekuRoot := issue(t, ekuRootTmpl, nil, elliptic.P256())
	ekuInter := issue(t, caTmpl("i"), ekuRoot, elliptic.P256())
	ekuLeaf := issue(t, leafTmpl("c", x509.ExtKeyUsageClientAuth), ekuInter, elliptic.P256())
	ev := NewVerifierFor(ekuRoot.cert)
	if _, err := ev.Verify([]*x509.Certificate{ekuLeaf.cert, ekuInter.cert}, x509.ExtKeyUsageClientAuth, now); err == nil {
		t.Fatal("a clientAuth leaf under a serverAuth-only root verified")
	}
	if len(ev.known) != 0 {
		t.Fatal("a constrained root's intermediates were cached")
	}
}

// TestVerifyMatchesX509 gives Verifiers chains the shortcut cannot
// decide alone; each time, first and with the intermediate remembered,
// the verdict must be crypto/x509's on the whole chain.
func TestVerifyMatchesX509(t *testing.T) {
	root := issue(t, caTmpl("root"), nil, elliptic.P384())
	pathTmpl := caTmpl("root, no intermediates")
	pathTmpl.MaxPathLen, pathTmpl.MaxPathLenZero = 0, true
	pathRoot := issue(t, pathTmpl, nil, elliptic.P256())
	underPath := issue(t, caTmpl("ctl1"), pathRoot, elliptic.P256())

	policyTmpl := caTmpl("ctl with a policy constraint")
	// policyConstraints (RFC 5280 4.2.1.11), critical: requireExplicitPolicy 0.
	policyTmpl.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 36}, Critical: true, Value: []byte{0x30, 0x03, 0x80, 0x01, 0x00}}}
	oid, err := x509.ParseOID("1.3.6.1.4.1.99999.1")
	if err != nil {
		t.Fatal(err)
	}
	policyTmpl.Policies = []x509.OID{oid}
	withPolicy := issue(t, policyTmpl, root, elliptic.P256())

	ncTmpl := caTmpl("ctl with name constraints")
	ncTmpl.PermittedDNSDomains = []string{"a.govnet"}
	nc := issue(t, ncTmpl, root, elliptic.P256())

	i1 := issue(t, caTmpl("level 1"), root, elliptic.P256())
	i2 := issue(t, caTmpl("level 2"), i1, elliptic.P256())
	a := issue(t, caTmpl("ctl1"), root, elliptic.P256())
	b := issue(t, caTmpl("ctl1"), root, elliptic.P256()) // re-keyed: same subject
	junk := issue(t, caTmpl("ctl1"), nil, elliptic.P256())

	leaf := func(cn string, parent *pki) *x509.Certificate {
		return issue(t, leafTmpl(cn, x509.ExtKeyUsageClientAuth), parent, elliptic.P256()).cert
	}
	byB := leaf("gw5", b)
	cases := []struct {
		name  string
		root  *pki
		certs []*x509.Certificate
	}{
		{"root admits no intermediate", pathRoot, []*x509.Certificate{leaf("gw1", underPath), underPath.cert}},
		{"intermediate requires an explicit policy", root, []*x509.Certificate{leaf("gw2", withPolicy), withPolicy.cert}},
		{"name-constrained intermediate, permitted", root, []*x509.Certificate{leaf("x.a.govnet", nc), nc.cert}},
		{"name-constrained intermediate, excluded", root, []*x509.Certificate{leaf("x.b.govnet", nc), nc.cert}},
		{"two intermediates deep", root, []*x509.Certificate{leaf("gw3", i2), i2.cert, i1.cert}},
		{"the right one of two re-keyed intermediates", root, []*x509.Certificate{byB, a.cert, b.cert}},
		{"a same-named impostor first", root, []*x509.Certificate{byB, junk.cert, b.cert}},
		{"only the wrong re-keyed intermediate", root, []*x509.Certificate{byB, a.cert}},
	}
	for _, c := range cases {
		v := NewVerifierFor(c.root.cert)
		pool := x509.NewCertPool()
		for _, i := range c.certs[1:] {
			pool.AddCert(i)
		}
		_, want := c.certs[0].Verify(x509.VerifyOptions{Roots: v.Roots(), Intermediates: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		for _, when := range []string{"first", "again"} {
			if _, err := v.Verify(c.certs, x509.ExtKeyUsageClientAuth, now); (err == nil) != (want == nil) {
				t.Errorf("%s (%s): %v; crypto/x509: %v", c.name, when, err, want)
			}
		}
	}
}

// TestVerifierForgets bounds the cache: more intermediates than
// maxIssuers still verify, and the oldest are forgotten.
func TestVerifierForgets(t *testing.T) {
	root := issue(t, caTmpl("root"), nil, elliptic.P256())
	v := NewVerifierFor(root.cert)
	for i := range maxIssuers + 3 {
		inter := issue(t, caTmpl("ctl"), root, elliptic.P256())
		leaf := issue(t, leafTmpl("gw", x509.ExtKeyUsageClientAuth), inter, elliptic.P256())
		if _, err := v.Verify([]*x509.Certificate{leaf.cert, inter.cert}, x509.ExtKeyUsageClientAuth, now); err != nil {
			t.Fatalf("intermediate %d: %v", i, err)
		}
	}
	if len(v.known) != maxIssuers || len(v.order) != maxIssuers {
		t.Fatalf("%d remembered (%d in order), want %d", len(v.known), len(v.order), maxIssuers)
	}
}

// TestServerConfig runs TLS handshakes against a server configured by
// ServerConfig: no client certificate and a good chain get through, a
// chain of another root fails the handshake.
func TestServerConfig(t *testing.T) {
	root := issue(t, caTmpl("root"), nil, elliptic.P384())
	inter := issue(t, caTmpl("ctl1"), root, elliptic.P256())
	srv := issue(t, leafTmpl("ctl1.govnet", x509.ExtKeyUsageServerAuth), inter, elliptic.P256())
	gw := issue(t, leafTmpl("gw1", x509.ExtKeyUsageClientAuth), inter, elliptic.P256())
	other := issue(t, caTmpl("other"), nil, elliptic.P256())
	stranger := issue(t, leafTmpl("gw1", x509.ExtKeyUsageClientAuth), other, elliptic.P256())

	v := NewVerifierFor(root.cert)
	scfg := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{{Certificate: [][]byte{srv.cert.Raw, inter.cert.Raw}, PrivateKey: srv.key}}}
	v.ServerConfig(scfg)

	connect := func(client *pki, chain ...*x509.Certificate) ([]*x509.Certificate, error) {
		ccfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: v.Roots(), ServerName: "ctl1.govnet"}
		if client != nil {
			var der [][]byte
			for _, c := range chain {
				der = append(der, c.Raw)
			}
			// Sent whatever the server's certificate request names.
			ccfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return &tls.Certificate{Certificate: der, PrivateKey: client.key}, nil
			}
		}
		state, _, err := handshake(t, ccfg, scfg)
		return state.PeerCertificates, err
	}
	if peers, err := connect(nil); err != nil || len(peers) != 0 {
		t.Fatalf("no client certificate: %v, %d peer certificates", err, len(peers))
	}
	if peers, err := connect(gw, gw.cert, inter.cert); err != nil || len(peers) != 2 || !peers[0].Equal(gw.cert) {
		t.Fatalf("a good chain: %v", err)
	}
	if _, err := connect(stranger, stranger.cert, other.cert); err == nil || !strings.Contains(err.Error(), "client certificate") {
		t.Fatalf("another root's chain: %v", err)
	}
	if _, err := connect(gw, gw.cert); err == nil {
		t.Fatal("a leaf without its intermediate was accepted")
	}
}

func names(chain []*x509.Certificate) []string {
	var out []string
	for _, c := range chain {
		out = append(out, c.Subject.CommonName)
	}
	return out
}

// handshake runs a TLS handshake between a client and a server
// configuration over loopback TCP, with one byte from the server so that
// the client learns the server's verdict on its certificate too (TLS
// 1.3). It returns the server's view of the connection.
func handshake(t *testing.T, ccfg, scfg *tls.Config) (state tls.ConnectionState, clientErr, serverErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cerr := make(chan error, 1)
	go func() {
		raw, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			cerr <- err
			return
		}
		defer raw.Close()
		c := tls.Client(raw, ccfg)
		err = c.HandshakeContext(ctx)
		if err == nil {
			_, err = c.Read(make([]byte, 1))
		}
		cerr <- err
	}()
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	s := tls.Server(raw, scfg)
	serverErr = s.HandshakeContext(ctx)
	if serverErr == nil {
		s.Write([]byte{1})
	}
	return s.ConnectionState(), <-cerr, serverErr
}

// TestClientConfig: a client configured by ClientConfig accepts a server
// whose chain leads to the root and whose certificate names the host it
// dialled (DNS name or IP address), and nothing else.
func TestClientConfig(t *testing.T) {
	root := issue(t, caTmpl("root"), nil, elliptic.P384())
	inter := issue(t, caTmpl("ctl1"), root, elliptic.P256())
	srvTmpl := leafTmpl("ctl1.govnet", x509.ExtKeyUsageServerAuth)
	srvTmpl.IPAddresses = []net.IP{net.ParseIP("10.99.0.1")}
	srv := issue(t, srvTmpl, inter, elliptic.P256())
	clientOnly := issue(t, leafTmpl("ctl1.govnet", x509.ExtKeyUsageClientAuth), inter, elliptic.P256())
	other := issue(t, caTmpl("other"), nil, elliptic.P256())
	otherInter := issue(t, caTmpl("ctl1"), other, elliptic.P256())
	impostor := issue(t, srvTmpl, otherInter, elliptic.P256())

	server := func(leaf *pki, chain ...*x509.Certificate) *tls.Config {
		der := [][]byte{leaf.cert.Raw}
		for _, c := range chain {
			der = append(der, c.Raw)
		}
		return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{{Certificate: der, PrivateKey: leaf.key}}}
	}
	v := NewVerifierFor(root.cert)
	for _, c := range []struct {
		name, host string
		server     *tls.Config
		err        string
	}{
		{"by name", "ctl1.govnet", server(srv, inter.cert), ""},
		{"by address, from the cache", "10.99.0.1", server(srv, inter.cert), ""},
		{"another name", "ctl2.govnet", server(srv, inter.cert), "not ctl2.govnet"},
		{"another address", "10.99.0.2", server(srv, inter.cert), "not 10.99.0.2"},
		{"a certificate for clients only", "ctl1.govnet", server(clientOnly, inter.cert), "incompatible key usage"},
		{"another root's chain", "ctl1.govnet", server(impostor, otherInter.cert), "unknown authority"},
		{"the leaf alone", "ctl1.govnet", server(srv), "unknown authority"},
	} {
		ccfg := &tls.Config{MinVersion: tls.VersionTLS13}
		v.ClientConfig(ccfg, c.host)
		_, cerr, _ := handshake(t, ccfg, c.server)
		switch {
		case c.err == "" && cerr != nil:
			t.Errorf("%s: %v", c.name, cerr)
		case c.err != "" && (cerr == nil || !strings.Contains(cerr.Error(), c.err)):
			t.Errorf("%s: error %v, want one saying %q", c.name, cerr, c.err)
		}
	}
	if len(v.known) != 1 {
		t.Fatalf("%d intermediates remembered, want 1", len(v.known))
	}
}
