// Package chain verifies certificate chains up to one root, remembering
// the intermediates it has verified.
//
// govnet's root key is ECDSA P-384, and Go verifies P-384 signatures
// without assembly (~0.7 ms, eleven times a P-256 verification). A TLS
// server verifies each client's chain, leaf and intermediate, so every
// new connection paid for a P-384 verification of the same few
// intermediates (one per controller node), and each client the same for
// the server's chain. A Verifier checks an intermediate against the root
// once, and from then on only the leaf against it: validity times, key
// usages, name constraints and the signature, as crypto/x509 would on
// the whole chain. Whatever that shortcut cannot decide exactly (deeper
// chains, intermediates with certificate policies, roots with key-usage,
// name or path-length constraints, any failure) is verified whole by
// crypto/x509, so a Verifier accepts exactly the chains crypto/x509
// accepts.
package chain

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"time"
)

// maxIssuers bounds the intermediates a Verifier remembers. Only
// certificates a root signed are remembered, one per controller node
// and rotation; past the bound the oldest entries are forgotten.
const maxIssuers = 256

// Verifier verifies chains up to the roots of a pool (govnet has one).
// It is safe for concurrent use.
type Verifier struct {
	roots *x509.CertPool

	mu    sync.Mutex
	known map[string]*issuer // by DER
	order []string           // insertion order, to forget the oldest
}

// issuer is an intermediate a root signed, as a pool of its own for
// verifying leaves, with that root.
type issuer struct {
	cert, root *x509.Certificate
	pool       *x509.CertPool
}

// NewVerifier returns a Verifier trusting the roots in roots.
func NewVerifier(roots *x509.CertPool) *Verifier {
	return &Verifier{roots: roots, known: map[string]*issuer{}}
}

// NewVerifierFor returns a Verifier trusting root alone.
func NewVerifierFor(root *x509.Certificate) *Verifier {
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return NewVerifier(pool)
}

// Roots returns the pool of trusted roots.
func (v *Verifier) Roots() *x509.CertPool { return v.roots }

// Verify checks that certs (a peer's certificates as presented: leaf
// first, then intermediates in any order) chain to a root and that the
// leaf may be used for usage at now. It returns the verified chain: leaf,
// intermediate if any, root.
func (v *Verifier) Verify(certs []*x509.Certificate, usage x509.ExtKeyUsage, now time.Time) ([]*x509.Certificate, error) {
	if len(certs) == 0 {
		return nil, errors.New("no certificate")
	}
	leaf := certs[0]
	for _, c := range certs[1:] {
		if !bytes.Equal(leaf.RawIssuer, c.RawSubject) {
			continue
		}
		// Any doubt (an intermediate that does not verify on its own, a
		// leaf it did not sign) is left to crypto/x509 below, which
		// tries every path and gives its own error.
		is := v.issuer(c, now)
		if is == nil {
			continue
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: is.pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}}); err == nil {
			return []*x509.Certificate{leaf, is.cert, is.root}, nil
		}
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: v.roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
	if err != nil {
		return nil, err
	}
	return chains[0], nil
}

// issuer returns c as a verified intermediate: from the cache, or after
// verifying it against the roots (and then remembered). It returns nil,
// and remembers nothing, when c does not verify at now on its own, or
// when a chain through it needs more than checking the leaf against it:
// c is not signed by a root directly, carries certificate policies or
// policy constraints (crypto/x509 does not apply those of a trust
// anchor), or its root constrains the chains under it.
func (v *Verifier) issuer(c *x509.Certificate, now time.Time) *issuer {
	key := string(c.Raw)
	v.mu.Lock()
	is := v.known[key]
	v.mu.Unlock()
	if is != nil {
		if !inValidity(is.root, now) || !inValidity(c, now) {
			return nil
		}
		return is
	}
	if !c.BasicConstraintsValid || !c.IsCA || hasPolicies(c) {
		return nil
	}
	chains, err := c.Verify(x509.VerifyOptions{Roots: v.roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil || len(chains[0]) != 2 || constrains(chains[0][1]) {
		return nil
	}
	pool := x509.NewCertPool()
	pool.AddCert(c)
	is = &issuer{cert: c, root: chains[0][1], pool: pool}
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.known[key]; !ok {
		if len(v.order) >= maxIssuers {
			delete(v.known, v.order[0])
			v.order = v.order[1:]
		}
		v.known[key] = is
		v.order = append(v.order, key)
	}
	return is
}

// hasPolicies says whether an intermediate carries certificate policies,
// policy mappings or policy constraints.
func hasPolicies(c *x509.Certificate) bool {
	return len(c.Policies)+len(c.PolicyIdentifiers)+len(c.PolicyMappings) > 0 ||
		c.RequireExplicitPolicy > 0 || c.RequireExplicitPolicyZero ||
		c.InhibitPolicyMapping > 0 || c.InhibitPolicyMappingZero ||
		c.InhibitAnyPolicy > 0 || c.InhibitAnyPolicyZero
}

// constrains says whether a root carries constraints that crypto/x509
// applies to every chain under it: extended key usages, name
// constraints, or a path length that admits no intermediate.
func constrains(root *x509.Certificate) bool {
	return len(root.ExtKeyUsage) > 0 || len(root.UnknownExtKeyUsage) > 0 ||
		root.BasicConstraintsValid && root.MaxPathLen == 0 && root.MaxPathLenZero ||
		len(root.PermittedDNSDomains)+len(root.ExcludedDNSDomains)+len(root.PermittedIPRanges)+len(root.ExcludedIPRanges)+
			len(root.PermittedEmailAddresses)+len(root.ExcludedEmailAddresses)+len(root.PermittedURIDomains)+len(root.ExcludedURIDomains) > 0
}

func inValidity(c *x509.Certificate, now time.Time) bool {
	return !now.Before(c.NotBefore) && !now.After(c.NotAfter)
}

// ServerConfig makes cfg, a server's TLS configuration, verify the
// client certificates it is given with v instead of crypto/tls's own
// verification: a client may present none (the handler decides), and one
// that presents a chain v refuses fails the handshake. Handlers read the
// verified leaf from ConnectionState.PeerCertificates[0] (VerifiedChains
// stays empty).
func (v *Verifier) ServerConfig(cfg *tls.Config) {
	cfg.ClientAuth = tls.RequestClientCert
	cfg.ClientCAs = v.roots // named in the certificate request
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return nil
		}
		if _, err := v.Verify(cs.PeerCertificates, x509.ExtKeyUsageClientAuth, time.Now()); err != nil {
			return fmt.Errorf("client certificate: %w", err)
		}
		return nil
	}
}

// ClientConfig makes cfg, a client's TLS configuration for servers named
// host (a DNS name or an IP address, as in the URL), verify the server's
// chain with v and the name against its leaf, instead of crypto/tls's
// own verification, which it turns off for that. cfg.ServerName is set
// to host when empty.
func (v *Verifier) ClientConfig(cfg *tls.Config, host string) {
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	name := cfg.ServerName
	cfg.RootCAs = v.roots
	cfg.InsecureSkipVerify = true // replaced by VerifyConnection below
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("server certificate: none presented")
		}
		if _, err := v.Verify(cs.PeerCertificates, x509.ExtKeyUsageServerAuth, time.Now()); err != nil {
			return fmt.Errorf("server certificate: %w", err)
		}
		if err := cs.PeerCertificates[0].VerifyHostname(name); err != nil {
			return fmt.Errorf("server certificate: %w", err)
		}
		return nil
	}
}

// ParsePEM decodes the certificates of PEM data, skipping other blocks.
func ParsePEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}
