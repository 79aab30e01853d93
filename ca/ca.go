// Package ca is govnet's certificate authority: a root and an intermediate
// whose keys live in a PKCS#11 token, issuing through smallstep's embedded
// authority with govnet's profiles (gateway, person, controller node).
// The package never sees key material: it holds crypto.Signers from hsm.
package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"

	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/provisioner"
)

// Default lifetimes.
const (
	RootLifetime         = 20 * 365 * 24 * time.Hour
	IntermediateLifetime = 5 * 365 * 24 * time.Hour
	GatewayLifetime      = 24 * time.Hour
	PersonLifetime       = 90 * 24 * time.Hour
	NodeLifetime         = 365 * 24 * time.Hour
)

// MaxCSRBytes bounds a CSR accepted from outside.
const MaxCSRBytes = 16 << 10

// Errors a caller can decide on.
var (
	ErrBadCSR  = errors.New("invalid certificate request")
	ErrKeyType = errors.New("key type not allowed")
)

// NewRoot self-signs a root certificate for a key that lives in an HSM.
func NewRoot(signer crypto.Signer, commonName string, now time.Time) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"govnet"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(RootLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	return createCert(tmpl, nil, signer.Public(), signer)
}

// NewIntermediate signs an intermediate for the key pub with the root's signer.
func NewIntermediate(root *x509.Certificate, rootSigner crypto.Signer, pub crypto.PublicKey, commonName string, now time.Time) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"govnet"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              minTime(now.Add(IntermediateLifetime), root.NotAfter),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	return createCert(tmpl, root, pub, rootSigner)
}

func createCert(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("sign %q: %w", tmpl.Subject.CommonName, err)
	}
	return x509.ParseCertificate(der)
}

func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("serial: %w", err)
	}
	return serial, nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// CA issues certificates with an intermediate whose key is in an HSM.
type CA struct {
	auth  *authority.Authority
	root  *x509.Certificate
	inter *x509.Certificate
	now   func() time.Time
}

// Option configures a CA.
type Option func(*CA)

// WithClock sets the clock the CA stamps validity with (tests).
func WithClock(now func() time.Time) Option { return func(c *CA) { c.now = now } }

// New returns a CA that signs with signer, the key of inter, chained to root.
func New(root, inter *x509.Certificate, signer crypto.Signer, opts ...Option) (*CA, error) {
	if err := inter.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("intermediate %q is not signed by root %q: %w", inter.Subject.CommonName, root.Subject.CommonName, err)
	}
	if !publicKeysEqual(inter.PublicKey, signer.Public()) {
		return nil, fmt.Errorf("the HSM key does not match intermediate %q", inter.Subject.CommonName)
	}
	auth, err := authority.NewEmbedded(
		authority.WithX509Signer(inter, signer),
		authority.WithX509RootCerts(root),
		authority.WithQuietInit(),
	)
	if err != nil {
		return nil, fmt.Errorf("embedded authority: %w", err)
	}
	c := &CA{auth: auth, root: root, inter: inter, now: time.Now}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ka, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ka.Equal(b)
}

// Root returns the root certificate.
func (c *CA) Root() *x509.Certificate { return c.root }

// Intermediate returns the issuing certificate.
func (c *CA) Intermediate() *x509.Certificate { return c.inter }

// Profile says what a certificate may contain; the registry, never the
// CSR, supplies names.
type Profile struct {
	Identity Identity
	DNSNames []string
	IPs      []net.IP
	Lifetime time.Duration
	Server   bool // add serverAuth
	Client   bool // add clientAuth
}

// GatewayProfile is the profile of a gateway: mTLS client and server,
// named by its id and agency code.
func GatewayProfile(id, agencyCode string) Profile {
	return Profile{
		Identity: Identity{Kind: KindGateway, Name: id, Agency: agencyCode},
		DNSNames: []string{id + ".gateway.govnet"},
		Lifetime: GatewayLifetime,
		Server:   true,
		Client:   true,
	}
}

// PersonProfile is the profile of a person holding one role.
func PersonProfile(name, role string) Profile {
	return Profile{Identity: Identity{Kind: KindPerson, Name: name, Role: role}, Lifetime: PersonLifetime, Client: true}
}

// NodeProfile is the profile of a controller node's API server.
func NodeProfile(name string, dnsNames []string, ips []net.IP) Profile {
	return Profile{
		Identity: Identity{Kind: KindNode, Name: name},
		DNSNames: dnsNames,
		IPs:      ips,
		Lifetime: NodeLifetime,
		Server:   true,
		Client:   true, // nodes talk to each other
	}
}

// Issue signs csr under profile p and returns the chain leaf, intermediate.
func (c *CA) Issue(ctx context.Context, csr *x509.CertificateRequest, p Profile) ([]*x509.Certificate, error) {
	if err := checkCSR(csr); err != nil {
		return nil, err
	}
	if p.Lifetime <= 0 {
		return nil, fmt.Errorf("profile for %s/%s has no lifetime", p.Identity.Kind, p.Identity.Name)
	}
	now := c.now()
	notAfter := minTime(now.Add(p.Lifetime), c.inter.NotAfter)
	opts := provisioner.SignOptions{
		NotBefore: provisioner.NewTimeDuration(now.Add(-time.Minute)),
		NotAfter:  provisioner.NewTimeDuration(notAfter),
	}
	chain, err := c.auth.SignWithContext(ctx, csr, opts, profileModifier(p))
	if err != nil {
		return nil, fmt.Errorf("issue %s certificate for %q: %w", p.Identity.Kind, p.Identity.Name, err)
	}
	return chain, nil
}

// profileModifier replaces whatever the CSR asked for with what the
// profile allows.
func profileModifier(p Profile) provisioner.CertificateModifierFunc {
	return func(cert *x509.Certificate, opts provisioner.SignOptions) error {
		cert.Subject = pkix.Name{CommonName: p.Identity.Name, Organization: []string{"govnet"}}
		if p.Identity.Agency != "" {
			cert.Subject.OrganizationalUnit = []string{p.Identity.Agency}
		}
		if p.Identity.Role != "" {
			cert.Subject.OrganizationalUnit = []string{p.Identity.Role}
		}
		cert.DNSNames = p.DNSNames
		cert.IPAddresses = p.IPs
		cert.EmailAddresses = nil
		cert.URIs = p.Identity.URIs()
		cert.NotBefore = opts.NotBefore.Time()
		cert.NotAfter = opts.NotAfter.Time()
		cert.IsCA = false
		cert.BasicConstraintsValid = true
		cert.KeyUsage = x509.KeyUsageDigitalSignature
		if _, ok := cert.PublicKey.(*rsa.PublicKey); ok {
			cert.KeyUsage |= x509.KeyUsageKeyEncipherment
		}
		cert.ExtKeyUsage = nil
		if p.Server {
			cert.ExtKeyUsage = append(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		}
		if p.Client {
			cert.ExtKeyUsage = append(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
		}
		cert.ExtraExtensions = nil
		return nil
	}
}

// NewCSR makes a certificate request for signer's key. The CA ignores
// whatever names it carries; cn only helps a person reading it.
func NewCSR(signer crypto.Signer, cn string) (*x509.CertificateRequest, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, signer)
	if err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	return x509.ParseCertificateRequest(der)
}

// ParseCSR reads one PEM or DER certificate request from outside and
// checks its size, signature and key type.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	if len(data) > MaxCSRBytes {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrBadCSR, len(data), MaxCSRBytes)
	}
	der := data
	if block, _ := pem.Decode(data); block != nil {
		if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("%w: PEM block is %q, want CERTIFICATE REQUEST", ErrBadCSR, block.Type)
		}
		der = block.Bytes
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if err := checkCSR(csr); err != nil {
		return nil, err
	}
	return csr, nil
}

func checkCSR(csr *x509.CertificateRequest) error {
	if err := csr.CheckSignature(); err != nil {
		return fmt.Errorf("%w: signature does not verify: %v", ErrBadCSR, err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("%w: ECDSA curve %s (want P-256 or P-384)", ErrKeyType, k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() != 3072 {
			return fmt.Errorf("%w: RSA %d bits (want 3072)", ErrKeyType, k.N.BitLen())
		}
	default:
		return fmt.Errorf("%w: %T (want ECDSA P-256, P-384 or RSA 3072)", ErrKeyType, csr.PublicKey)
	}
	return nil
}

// Fingerprint returns the SHA-256 fingerprint of a certificate in hex.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// Serial renders a certificate serial the way the registry stores it.
func Serial(cert *x509.Certificate) string { return cert.SerialNumber.Text(16) }

// EncodePEM encodes certificates as a PEM chain.
func EncodePEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// ParsePEM decodes a PEM chain of certificates.
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
