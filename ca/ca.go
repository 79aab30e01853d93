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
	"sync"
	"time"

	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/provisioner"
	casapi "github.com/smallstep/certificates/cas/apiv1"

	certchain "github.com/govnet/govnet/ca/chain"
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
// The certificate is linted before the HSM signs it.
func NewRoot(signer crypto.Signer, commonName string, now time.Time) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"govnet"}},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(RootLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	l, err := defaultLinter()
	if err != nil {
		return nil, err
	}
	return l.signCertificate(fmt.Sprintf("root certificate %q", commonName), tmpl, nil, signer.Public(), signer)
}

// NewIntermediate signs an intermediate for the key pub with the root's
// signer, after linting it.
func NewIntermediate(root *x509.Certificate, rootSigner crypto.Signer, pub crypto.PublicKey, commonName string, now time.Time) (*x509.Certificate, error) {
	return newIntermediate(root, rootSigner, pub, commonName, now, "")
}

// newIntermediate is NewIntermediate with an optional CRL distribution
// point (the root's CRL).
func newIntermediate(root *x509.Certificate, rootSigner crypto.Signer, pub crypto.PublicKey, commonName string, now time.Time, crlURL string) (*x509.Certificate, error) {
	if err := checkCAKey(pub); err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"govnet"}},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              minTime(now.Add(IntermediateLifetime), root.NotAfter),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	if crlURL != "" {
		tmpl.CRLDistributionPoints = []string{crlURL}
	}
	l, err := defaultLinter()
	if err != nil {
		return nil, err
	}
	return l.signCertificate(fmt.Sprintf("intermediate certificate %q", commonName), tmpl, root, pub, rootSigner)
}

// checkCAKey accepts the key types of CA keys: ECDSA P-256 or P-384 (the
// HSM generates only those).
func checkCAKey(pub crypto.PublicKey) error {
	if k, ok := pub.(*ecdsa.PublicKey); ok && (k.Curve == elliptic.P256() || k.Curve == elliptic.P384()) {
		return nil
	}
	return fmt.Errorf("%w: CA key %T (want ECDSA P-256 or P-384)", ErrKeyType, pub)
}

var (
	defaultLinterOnce sync.Once
	defaultLinterV    *Linter
	defaultLinterErr  error
)

// defaultLinter lints CA certificates, which do not depend on profiles.
func defaultLinter() (*Linter, error) {
	defaultLinterOnce.Do(func() { defaultLinterV, defaultLinterErr = NewLinter(DefaultProfiles()) })
	return defaultLinterV, defaultLinterErr
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
	auth     *authority.Authority
	root     *x509.Certificate
	inter    *x509.Certificate
	signer   crypto.Signer
	now      func() time.Time
	profiles Profiles
	urls     RevocationURLs
	linter   *Linter
	issuerID string

	tmplHook func(*x509.Certificate) // tests: spoil the template after the profile
}

// Option configures a CA.
type Option func(*CA)

// WithClock sets the clock the CA stamps validity with (tests).
func WithClock(now func() time.Time) Option { return func(c *CA) { c.now = now } }

// WithProfiles sets the per-profile lifetimes (default DefaultProfiles).
func WithProfiles(p Profiles) Option { return func(c *CA) { c.profiles = p } }

// WithRevocationURLs sets where certificates point relying parties for
// CRLs and OCSP (default DefaultCRLBaseURL and DefaultOCSPURL).
func WithRevocationURLs(u RevocationURLs) Option { return func(c *CA) { c.urls = u } }

// New returns a CA that signs with signer, the key of inter, chained to root.
func New(root, inter *x509.Certificate, signer crypto.Signer, opts ...Option) (*CA, error) {
	if err := inter.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("intermediate %q is not signed by root %q: %w", inter.Subject.CommonName, root.Subject.CommonName, err)
	}
	if !SamePublicKey(inter.PublicKey, signer.Public()) {
		return nil, fmt.Errorf("the HSM key does not match intermediate %q", inter.Subject.CommonName)
	}
	c := &CA{
		root: root, inter: inter, signer: signer, now: time.Now,
		profiles: DefaultProfiles(),
		urls:     RevocationURLs{CRLBase: DefaultCRLBaseURL, OCSPBase: DefaultOCSPURL},
		issuerID: IssuerID(inter),
	}
	for _, o := range opts {
		o(c)
	}
	if err := c.urls.Validate(); err != nil {
		return nil, fmt.Errorf("revocation URLs: %w", err)
	}
	l, err := NewLinter(c.profiles)
	if err != nil {
		return nil, fmt.Errorf("profiles: %w", err)
	}
	c.linter = l
	auth, err := authority.NewEmbedded(
		authority.WithX509CAService(lintingCAS{c}),
		authority.WithX509RootCerts(root),
		authority.WithQuietInit(),
	)
	if err != nil {
		return nil, fmt.Errorf("embedded authority: %w", err)
	}
	c.auth = auth
	return c, nil
}

// IssuerID names an issuing certificate in CRL and OCSP URLs: its subject
// key identifier in hex.
func IssuerID(issuer *x509.Certificate) string { return hex.EncodeToString(issuer.SubjectKeyId) }

// SamePublicKey reports whether a and b are the same public key.
func SamePublicKey(a, b crypto.PublicKey) bool {
	ka, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ka.Equal(b)
}

// Root returns the root certificate.
func (c *CA) Root() *x509.Certificate { return c.root }

// Intermediate returns the issuing certificate.
func (c *CA) Intermediate() *x509.Certificate { return c.inter }

// Chain returns the issuing chain a client needs beside its leaf:
// intermediate, then root.
func (c *CA) Chain() []*x509.Certificate { return []*x509.Certificate{c.inter, c.root} }

// Profiles returns the CA's profile lifetimes.
func (c *CA) Profiles() Profiles { return c.profiles }

// URLs returns the CRL and OCSP URLs certificates of this CA carry.
func (c *CA) URLs() (crl, ocsp string) { return c.urls.CRL(c.issuerID), c.urls.OCSP(c.issuerID) }

// Profile says what a certificate may contain; the registry, never the
// CSR, supplies names.
type Profile struct {
	Identity Identity
	DNSNames []string
	IPs      []net.IP
	// Lifetime overrides the CA's lifetime for the profile's kind (see
	// Profiles); zero takes it. Longer than the kind's lifetime is
	// blocked by the lint e_govnet_lifetime_bound.
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
		Server:   true,
		Client:   true,
	}
}

// PersonProfile is the profile of a person holding one role.
func PersonProfile(name, role string) Profile {
	return Profile{Identity: Identity{Kind: KindPerson, Name: name, Role: role}, Client: true}
}

// NodeProfile is the profile of a controller node's API server.
func NodeProfile(name string, dnsNames []string, ips []net.IP) Profile {
	return Profile{
		Identity: Identity{Kind: KindNode, Name: name},
		DNSNames: dnsNames,
		IPs:      ips,
		Server:   true,
		Client:   true, // nodes talk to each other
	}
}

// Issue signs csr under profile p and returns the chain leaf, intermediate.
// The certificate is built from the profile (never from the CSR's names),
// linted (see Linter) and only then signed by the HSM; a *LintError
// (errors.Is ErrLint) says which lints blocked it.
func (c *CA) Issue(ctx context.Context, csr *x509.CertificateRequest, p Profile) ([]*x509.Certificate, error) {
	// The CSR's signature is verified once, by the authority, before
	// anything else (an ECDSA verification is a tenth of an issuance);
	// if that fails, checkCSR below says why in our terms.
	if csr == nil {
		return nil, fmt.Errorf("%w: none given", ErrBadCSR)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, err
	}
	p, err := c.authorize(p)
	if err != nil {
		return nil, err
	}
	now := c.now()
	opts := provisioner.SignOptions{
		NotBefore: provisioner.NewTimeDuration(now.Add(-Backdate)),
		NotAfter:  provisioner.NewTimeDuration(minTime(now.Add(p.Lifetime), c.inter.NotAfter)),
	}
	chain, err := c.auth.SignWithContext(ctx, csr, opts, c.profileModifier(p))
	if err != nil {
		var lintErr *LintError
		if errors.As(err, &lintErr) {
			return nil, lintErr
		}
		if cerr := checkCSR(csr); cerr != nil {
			return nil, cerr
		}
		return nil, fmt.Errorf("issue %s certificate %q: %w", p.Identity.Kind, p.Identity.Name, err)
	}
	return chain, nil
}

// lintingCAS is the embedded authority's certificate service: once the
// authority has checked the CSR and applied the profile, it completes the
// template, lints it and only then has the HSM sign the linted
// TBSCertificate (Linter.signCertificate).
type lintingCAS struct{ c *CA }

func (s lintingCAS) CreateCertificate(req *casapi.CreateCertificateRequest) (*casapi.CreateCertificateResponse, error) {
	tmpl := req.Template
	what := fmt.Sprintf("certificate %q", tmpl.Subject.CommonName)
	if id, err := IdentityOf(tmpl); err == nil {
		what = fmt.Sprintf("%s certificate %q", id.Kind, id.Name)
	}
	cert, err := s.c.linter.signCertificate(what, tmpl, s.c.inter, tmpl.PublicKey, s.c.signer)
	if err != nil {
		return nil, err
	}
	return &casapi.CreateCertificateResponse{Certificate: cert, CertificateChain: []*x509.Certificate{s.c.inter}}, nil
}

// RenewCertificate is not used: gateways renew through govnet's API, which
// issues a new certificate for a new key (CA.Issue).
func (lintingCAS) RenewCertificate(*casapi.RenewCertificateRequest) (*casapi.RenewCertificateResponse, error) {
	return nil, casapi.NotImplementedError{Message: "govnet renews through CA.Issue"}
}

// RevokeCertificate is not used: revocation is recorded in the replicated
// inventory and published in govnet's CRL and OCSP (revocation.go).
func (lintingCAS) RevokeCertificate(*casapi.RevokeCertificateRequest) (*casapi.RevokeCertificateResponse, error) {
	return nil, casapi.NotImplementedError{Message: "govnet revokes through its inventory"}
}

// ErrProfile is wrapped by errors about a profile the CA will not issue.
var ErrProfile = errors.New("profile not allowed")

// authorize checks what the profile asks for and fills in the lifetime.
// Whether the resulting certificate is well-formed is the lints' job.
func (c *CA) authorize(p Profile) (Profile, error) {
	max, ok := c.profiles.Lifetime(p.Identity.Kind)
	if !ok {
		return p, fmt.Errorf("%w: unknown kind %q", ErrProfile, p.Identity.Kind)
	}
	if p.Identity.Name == "" {
		return p, fmt.Errorf("%w: %s profile without a name", ErrProfile, p.Identity.Kind)
	}
	if p.Lifetime < 0 {
		return p, fmt.Errorf("%w: %s/%s: negative lifetime", ErrProfile, p.Identity.Kind, p.Identity.Name)
	}
	if p.Lifetime == 0 {
		p.Lifetime = max
	}
	return p, nil
}

// profileModifier replaces whatever the CSR asked for with what the
// profile allows.
func (c *CA) profileModifier(p Profile) provisioner.CertificateModifierFunc {
	crl, ocsp := c.URLs()
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
		if _, ok := cert.PublicKey.(*rsa.PublicKey); ok && p.Server {
			// A TLS server with an RSA key may be asked for RSA key
			// transport (TLS 1.2). A client never is, and RFC 5280 lints
			// (e_key_usage_and_extended_key_usage_inconsistent) reject
			// keyEncipherment on a clientAuth-only certificate. ECDSA
			// keys never encipher.
			cert.KeyUsage |= x509.KeyUsageKeyEncipherment
		}
		cert.ExtKeyUsage = nil
		if p.Server {
			cert.ExtKeyUsage = append(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		}
		if p.Client {
			cert.ExtKeyUsage = append(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
		}
		cert.CRLDistributionPoints = []string{crl}
		cert.OCSPServer = []string{ocsp}
		cert.IssuingCertificateURL = nil
		cert.PolicyIdentifiers, cert.Policies = nil, nil
		cert.ExtraExtensions = nil
		if c.tmplHook != nil {
			c.tmplHook(cert)
		}
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
	csr, err := ReadCSR(data)
	if err != nil {
		return nil, err
	}
	if err := checkCSR(csr); err != nil {
		return nil, err
	}
	return csr, nil
}

// ReadCSR is ParseCSR but for the signature, for a request that goes to
// CA.Issue, whose authority verifies it before anything is signed (and a
// failure is then reported as ParseCSR would). An ECDSA verification is
// a twentieth of an issuance, and the authority does it twice already.
func ReadCSR(data []byte) (*x509.CertificateRequest, error) {
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
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, err
	}
	return csr, nil
}

func checkCSR(csr *x509.CertificateRequest) error {
	if csr == nil {
		return fmt.Errorf("%w: none given", ErrBadCSR)
	}
	if err := csr.CheckSignature(); err != nil {
		return fmt.Errorf("%w: signature does not verify: %v", ErrBadCSR, err)
	}
	return checkPublicKey(csr.PublicKey)
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

// ParsePEM decodes a PEM chain of certificates (chain.ParsePEM).
func ParsePEM(data []byte) ([]*x509.Certificate, error) { return certchain.ParsePEM(data) }
