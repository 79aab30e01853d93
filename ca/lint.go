package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/govnet/govnet/agency"
	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Lint before sign.
//
// Every certificate and CRL the CA makes is first built in full and
// linted: zlint v3 with the sources in LintSources, and govnet's own lints
// (GovnetLints) beside it. Any finding of level warning or worse blocks
// the real signature with a *LintError naming every failing lint.
//
// A certificate is linted as a pre-certificate (precertificate): the
// TBSCertificate crypto/x509 marshals and would sign, with a signature
// value a throwaway key of the issuer's key type (never the HSM key) made
// once. Only then does the HSM sign that very TBSCertificate (signTBS),
// so what was linted is what is issued, byte for byte except for the
// signature. A CRL is linted and signed the same way, as a pre-CRL of its
// TBSCertList (signCRL).

// LintSources are the zlint sources run before signing. The CA/B Forum
// (CABF_BR, CABF_EV, CABF_SMIME_BR, CABF_CS_BR), browser root-program
// (Mozilla, Apple, Chrome), ETSI and Certificate Transparency (RFC6962)
// lints encode the rules of the public web PKI and are not run: govnet is
// a private PKI whose names (*.gateway.govnet, govnet:// URIs) are
// deliberately outside the public DNS.
var LintSources = lint.SourceList{
	lint.RFC5280, // certificate and CRL profile
	lint.RFC3279, // algorithm identifiers
	lint.RFC5480, // EC subject public keys
	lint.RFC8813, // EC key usages
	lint.RFC5891, // IDN names
	lint.Community,
}

// Lint severities as reported in a Finding.
const (
	SeverityWarn  = "warn"
	SeverityError = "error"
	SeverityFatal = "fatal"
)

// ErrLint is wrapped by every *LintError.
var ErrLint = errors.New("blocked by pre-issuance lint")

// Finding is one lint that did not pass.
type Finding struct {
	Lint     string // e.g. "e_govnet_gateway_san_form"
	Source   string // zlint source, or "govnet"
	Severity string // warn, error or fatal
	Details  string
}

func (f Finding) String() string {
	s := fmt.Sprintf("%s (%s, %s)", f.Lint, f.Severity, f.Source)
	if f.Details != "" {
		s += ": " + f.Details
	}
	return s
}

// LintError says what lints blocked a signature.
type LintError struct {
	What     string // what was to be signed, e.g. `gateway certificate "gw-1"`
	Findings []Finding
}

func (e *LintError) Error() string {
	parts := make([]string, len(e.Findings))
	for i, f := range e.Findings {
		parts[i] = f.String()
	}
	return fmt.Sprintf("%s: %v: %s", e.What, ErrLint, strings.Join(parts, "; "))
}

func (e *LintError) Unwrap() error { return ErrLint }

// Lints returns the names of the failing lints.
func (e *LintError) Lints() []string {
	out := make([]string, len(e.Findings))
	for i, f := range e.Findings {
		out[i] = f.Lint
	}
	return out
}

// LintExclusions are zlint lints from LintSources that are not run, with
// the reason.
var LintExclusions = map[string]string{
	// Checks every certificate's signature against the keys of one public
	// web CA known to be compromised: irrelevant to a private PKI, and a
	// dozen P-384 verifications per certificate (5 ms, 85% of the lint).
	"e_cert_issued_by_compromised_emudhra_ca": "public web CA check; costly",
	// Replaced by e_govnet_ecdsa_small_private_key (smallkey.go), which
	// refuses the same keys (d or n-d at most 2^16, zlint's default
	// Bits=16).
	"e_ecdsa_small_private_key": "replaced by the govnet lint e_govnet_ecdsa_small_private_key: the same keys found by one table lookup instead of ~16 point additions (~140 µs per certificate)",
}

var (
	registryOnce sync.Once
	registry     lint.Registry
	registryErr  error
)

// lintRegistry is the zlint registry filtered to LintSources.
func lintRegistry() (lint.Registry, error) {
	registryOnce.Do(func() {
		var exclude []string
		for name := range LintExclusions {
			exclude = append(exclude, name)
		}
		registry, registryErr = lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: LintSources, ExcludeNames: exclude})
	})
	return registry, registryErr
}

// ZlintNames returns the zlint lints run before signing (for listing in
// documentation and audits).
func ZlintNames() ([]string, error) {
	r, err := lintRegistry()
	if err != nil {
		return nil, err
	}
	return r.Names(), nil
}

// Linter lints certificates and CRLs before they are signed.
type Linter struct {
	profiles Profiles
}

// NewLinter returns a Linter whose lifetime bound follows profiles.
func NewLinter(profiles Profiles) (*Linter, error) {
	if err := profiles.Validate(); err != nil {
		return nil, err
	}
	if _, err := lintRegistry(); err != nil {
		return nil, fmt.Errorf("zlint registry: %w", err)
	}
	return &Linter{profiles: profiles}, nil
}

func severity(s lint.LintStatus) (string, bool) {
	switch s {
	case lint.Warn:
		return SeverityWarn, true
	case lint.Error:
		return SeverityError, true
	case lint.Fatal:
		return SeverityFatal, true
	}
	return "", false
}

func zlintFindings(results map[string]*lint.LintResult) []Finding {
	var out []Finding
	for name, r := range results {
		if sev, bad := severity(r.Status); bad {
			out = append(out, Finding{Lint: name, Source: string(r.LintMetadata.Source), Severity: sev, Details: r.Details})
		}
	}
	return out
}

// zlintCertificate runs the registry's certificate lints on c, as
// zlint.LintCertificateEx does, but keeps only the findings: it neither
// sorts every lint name nor builds a map of every result, a tenth of the
// lint's cost when the CA issues.
func zlintCertificate(c *zx509.Certificate, reg lint.Registry) []Finding {
	var out []Finding
	config := reg.GetConfiguration()
	for _, l := range reg.CertificateLints().Lints() {
		r := l.Execute(c, config)
		if sev, bad := severity(r.Status); bad {
			out = append(out, Finding{Lint: l.Name, Source: string(l.Source), Severity: sev, Details: r.Details})
		}
	}
	return out
}

func sortFindings(fs []Finding) []Finding {
	sort.Slice(fs, func(i, j int) bool { return fs[i].Lint < fs[j].Lint })
	return fs
}

// Certificate lints a DER certificate and returns its findings (nil if
// it passes).
func (l *Linter) Certificate(der []byte) []Finding { return l.certificate(der, false) }

// certificate lints der; selfSigned says that der is a pre-certificate of
// a self-signed certificate: its throwaway signature does not verify with
// its own key, so zcrypto cannot see that, but the issued one will be.
func (l *Linter) certificate(der []byte, selfSigned bool) []Finding {
	_, fs := l.lint(der, selfSigned)
	return fs
}

// lint is certificate, also returning der parsed by crypto/x509 (nil if it
// does not parse).
func (l *Linter) lint(der []byte, selfSigned bool) (*x509.Certificate, []Finding) {
	var out []Finding
	reg, err := lintRegistry()
	if err != nil { // NewLinter checked it; never signs unlinted
		out = append(out, Finding{Lint: "e_govnet_zlint_registry", Source: GovnetLintSource, Severity: SeverityFatal, Details: err.Error()})
	}
	zc, err := zx509.ParseCertificate(der)
	switch {
	case err != nil:
		out = append(out, Finding{Lint: "e_govnet_parse", Source: GovnetLintSource, Severity: SeverityFatal, Details: "zcrypto: " + err.Error()})
	case reg != nil:
		if selfSigned {
			zc.SelfSigned = true
		}
		out = append(out, zlintCertificate(zc, reg)...)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		out = append(out, Finding{Lint: "e_govnet_parse", Source: GovnetLintSource, Severity: SeverityFatal, Details: "crypto/x509: " + err.Error()})
		return nil, sortFindings(out)
	}
	out = append(out, l.govnet(c)...)
	return c, sortFindings(out)
}

// CRL lints a DER CRL of an intermediate (nextUpdate at most
// MaxCRLValidity ahead).
func (l *Linter) CRL(der []byte) []Finding {
	_, fs := l.lintCRL(der, MaxCRLValidity)
	return fs
}

// lintCRL lints der, a CRL whose nextUpdate may be at most maxValidity
// after its thisUpdate, and also returns it parsed by crypto/x509 (nil if
// it does not parse).
func (l *Linter) lintCRL(der []byte, maxValidity time.Duration) (*x509.RevocationList, []Finding) {
	reg, _ := lintRegistry()
	zr, err := zx509.ParseRevocationList(der)
	if err != nil {
		return nil, []Finding{{Lint: "e_govnet_parse", Source: GovnetLintSource, Severity: SeverityFatal, Details: "zcrypto: " + err.Error()}}
	}
	out := zlintFindings(zlint.LintRevocationListEx(zr, reg).Results)
	r, err := x509.ParseRevocationList(der)
	if err != nil {
		out = append(out, Finding{Lint: "e_govnet_parse", Source: GovnetLintSource, Severity: SeverityFatal, Details: "crypto/x509: " + err.Error()})
		return nil, sortFindings(out)
	}
	if max := maxValidity; r.NextUpdate.Sub(r.ThisUpdate) > max {
		out = append(out, Finding{Lint: "e_govnet_crl_next_update_bound", Source: GovnetLintSource, Severity: SeverityError,
			Details: fmt.Sprintf("nextUpdate is %v after thisUpdate, at most %v", r.NextUpdate.Sub(r.ThisUpdate), max)})
	}
	return r, sortFindings(out)
}

// GovnetLintSource is the Source of govnet's own lints.
const GovnetLintSource = "govnet"

// GovnetLint is one of govnet's own certificate lints. They run beside
// zlint on the same pre-certificate.
type GovnetLint struct {
	Name        string
	Description string
	// Applies says whether the lint concerns c (id is c's govnet
	// identity, zero for CA certificates).
	Applies func(c *x509.Certificate, id Identity) bool
	// Check returns "" if c passes, otherwise what is wrong.
	Check func(l *Linter, c *x509.Certificate, id Identity) string
}

func isLeaf(c *x509.Certificate, _ Identity) bool { return !c.IsCA }

func isKind(kind string) func(*x509.Certificate, Identity) bool {
	return func(c *x509.Certificate, id Identity) bool { return !c.IsCA && id.Kind == kind }
}

// gatewayIDRe is the form of a gateway id: one DNS label.
var gatewayIDRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// GovnetLints are govnet's own lints, run on every certificate.
var GovnetLints = []GovnetLint{
	{
		Name:        "e_govnet_identity",
		Description: "an end-entity certificate names exactly one govnet identity (govnet://gateway|person|node.govnet/<name>) and no other kind of URI or email",
		Applies:     isLeaf,
		Check: func(_ *Linter, c *x509.Certificate, id Identity) string {
			if _, err := IdentityOf(c); err != nil {
				return err.Error()
			}
			for _, u := range c.URIs {
				switch uriType(u) {
				case KindGateway, KindPerson, KindNode, nameAgency, nameRole:
				default:
					return fmt.Sprintf("URI SAN %q is not a govnet://<type>.govnet/ URI of a known type", u)
				}
				if u.RawQuery != "" || u.Fragment != "" || u.User != nil || u.Port() != "" {
					return fmt.Sprintf("URI SAN %q carries more than a type and a name", u)
				}
			}
			if len(c.EmailAddresses) > 0 {
				return fmt.Sprintf("email SANs %q are not part of any govnet profile", c.EmailAddresses)
			}
			return ""
		},
	},
	{
		Name:        "e_govnet_gateway_san_form",
		Description: "a gateway certificate's SANs are exactly DNS <id>.gateway.govnet, URIs govnet://gateway.govnet/<id> and govnet://agency.govnet/<code>",
		Applies:     isKind(KindGateway),
		Check: func(_ *Linter, c *x509.Certificate, id Identity) string {
			if !gatewayIDRe.MatchString(id.Name) {
				return fmt.Sprintf("gateway id %q is not one lower-case DNS label", id.Name)
			}
			if want := []string{id.Name + ".gateway.govnet"}; !slices.Equal(c.DNSNames, want) {
				return fmt.Sprintf("DNS SANs %q, want %q", c.DNSNames, want)
			}
			if len(c.IPAddresses) > 0 {
				return fmt.Sprintf("IP SANs %v: a gateway is named, not addressed", c.IPAddresses)
			}
			want := Identity{Kind: KindGateway, Name: id.Name, Agency: id.Agency}.URIs()
			if len(c.URIs) != len(want) {
				return fmt.Sprintf("URI SANs %q, want %q", c.URIs, want)
			}
			for i := range want {
				if c.URIs[i].String() != want[i].String() {
					return fmt.Sprintf("URI SANs %q, want %q", c.URIs, want)
				}
			}
			if c.Subject.CommonName != id.Name {
				return fmt.Sprintf("subject CN %q, want the gateway id %q", c.Subject.CommonName, id.Name)
			}
			return ""
		},
	},
	{
		Name:        "e_govnet_agency_code",
		Description: "a gateway certificate names a valid QCVN 102:2016 agency code, the same in its URI SAN and subject OU",
		Applies:     isKind(KindGateway),
		Check: func(_ *Linter, c *x509.Certificate, id Identity) string {
			if id.Agency == "" {
				return "no govnet://agency.govnet/<code> URI SAN"
			}
			code, err := agency.Parse(id.Agency)
			if err != nil {
				return err.Error()
			}
			if code.String() != id.Agency {
				return fmt.Sprintf("agency code %q is not in canonical form %q", id.Agency, code)
			}
			if !slices.Equal(c.Subject.OrganizationalUnit, []string{id.Agency}) {
				return fmt.Sprintf("subject OU %q, want [%q]", c.Subject.OrganizationalUnit, id.Agency)
			}
			return ""
		},
	},
	{
		Name:        "e_govnet_person_role",
		Description: "a person certificate binds exactly one known role (operator, officer, auditor, custodian), is for client authentication only and carries no DNS or IP names",
		Applies:     isKind(KindPerson),
		Check: func(_ *Linter, c *x509.Certificate, id Identity) string {
			switch id.Role {
			case RoleOperator, RoleOfficer, RoleAuditor, RoleCustodian:
			case "":
				return "no govnet://role.govnet/<role> URI SAN"
			default:
				return fmt.Sprintf("unknown role %q", id.Role)
			}
			roles := 0
			for _, u := range c.URIs {
				if uriType(u) == nameRole {
					roles++
				}
			}
			if roles != 1 {
				return fmt.Sprintf("%d role URIs, want 1", roles)
			}
			if len(c.DNSNames) > 0 || len(c.IPAddresses) > 0 {
				return fmt.Sprintf("a person certificate names hosts: DNS %q IP %v", c.DNSNames, c.IPAddresses)
			}
			if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
				return fmt.Sprintf("extended key usages %v, want clientAuth only", c.ExtKeyUsage)
			}
			return ""
		},
	},
	{
		Name:        "e_govnet_lifetime_bound",
		Description: "an end-entity certificate lives no longer than its profile's configured lifetime (plus the backdate)",
		Applies:     isLeaf,
		Check: func(l *Linter, c *x509.Certificate, id Identity) string {
			max, ok := l.profiles.Lifetime(id.Kind)
			if !ok {
				return fmt.Sprintf("no profile for kind %q", id.Kind)
			}
			if got := c.NotAfter.Sub(c.NotBefore); got > max+Backdate {
				return fmt.Sprintf("%s certificate valid for %v, profile allows %v", id.Kind, got, max)
			}
			return ""
		},
	},
	{
		Name:        "e_govnet_subject_key",
		Description: "the subject key is ECDSA P-256 or P-384, or RSA 3072",
		Applies:     func(*x509.Certificate, Identity) bool { return true },
		Check: func(_ *Linter, c *x509.Certificate, _ Identity) string {
			if err := checkPublicKey(c.PublicKey); err != nil {
				return err.Error()
			}
			return ""
		},
	},
	{
		Name:        "e_govnet_ecdsa_small_private_key",
		Description: "an ECDSA P-256 or P-384 subject key's private scalar d is neither 1..2^16 nor n-2^16..n-1, which anyone could compute from the public key (zlint's e_ecdsa_small_private_key, by one table lookup)",
		Applies:     smallKeyApplies,
		Check:       checkSmallKey,
	},
}

func (l *Linter) govnet(c *x509.Certificate) []Finding {
	var id Identity
	if !c.IsCA {
		id, _ = IdentityOf(c) // e_govnet_identity reports the error
	}
	var out []Finding
	for _, g := range GovnetLints {
		if !g.Applies(c, id) {
			continue
		}
		if d := g.Check(l, c, id); d != "" {
			out = append(out, Finding{Lint: g.Name, Source: GovnetLintSource, Severity: SeverityError, Details: d})
		}
	}
	return out
}

// throwaway returns a fresh software key of the same type and size as
// pub: its public key stands for the issuer's in what is linted.
func throwaway(pub crypto.PublicKey) (crypto.Signer, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return ecdsa.GenerateKey(k.Curve, rand.Reader)
	case *rsa.PublicKey:
		return rsa.GenerateKey(rand.Reader, k.N.BitLen())
	}
	return nil, fmt.Errorf("%w: issuer key %T", ErrKeyType, pub)
}

// lintKey is the throwaway key of one issuer key type, and one signature
// it made: the signature value a pre-certificate carries. A linter reads
// the TBSCertificate and the signature's form, never checks the value
// (a pre-certificate has no issuer to check it with), and the issued
// certificate gets the HSM's signature instead.
type lintKey struct {
	signer crypto.Signer
	sig    []byte
}

// lintKeys caches one lintKey per issuer key type: generating RSA keys is
// slow, and the key never signs anything that is kept.
var lintKeys sync.Map // string -> *lintKey

func lintKeyFor(pub crypto.PublicKey) (*lintKey, error) {
	var kind string
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		kind = "ec-" + k.Curve.Params().Name
	case *rsa.PublicKey:
		kind = fmt.Sprintf("rsa-%d", k.N.BitLen())
	default:
		return nil, fmt.Errorf("%w: issuer key %T", ErrKeyType, pub)
	}
	if k, ok := lintKeys.Load(kind); ok {
		return k.(*lintKey), nil
	}
	s, err := throwaway(pub)
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256([]byte("govnet pre-certificate"))
	sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, err
	}
	actual, _ := lintKeys.LoadOrStore(kind, &lintKey{signer: s, sig: sig})
	return actual.(*lintKey), nil
}

// tbsCatcher is a crypto.Signer that signs nothing: crypto/x509 hands it
// the TBSCertificate it marshalled (crypto.MessageSigner), and it keeps
// that and stops the signature with errTBSCaught.
type tbsCatcher struct {
	pub crypto.PublicKey
	tbs []byte
}

var errTBSCaught = errors.New("TBSCertificate caught")

func (c *tbsCatcher) Public() crypto.PublicKey { return c.pub }

func (c *tbsCatcher) SignMessage(_ io.Reader, msg []byte, _ crypto.SignerOpts) ([]byte, error) {
	c.tbs = msg
	return nil, errTBSCaught
}

func (c *tbsCatcher) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("crypto/x509 asked for a signature of a digest, not of the TBSCertificate")
}

// completeTemplate fixes the fields that signing would otherwise fill in
// at random, so that the linted pre-certificate and the issued one agree.
func completeTemplate(tmpl *x509.Certificate, pub crypto.PublicKey) error {
	if tmpl.SerialNumber == nil {
		s, err := randomSerial()
		if err != nil {
			return err
		}
		tmpl.SerialNumber = s
	}
	if len(tmpl.SubjectKeyId) == 0 {
		ski, err := subjectKeyID(pub)
		if err != nil {
			return err
		}
		tmpl.SubjectKeyId = ski
	}
	return nil
}

// subjectKeyID is RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey
// bit string.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("subject key id: %w", err)
	}
	var spki struct {
		Algorithm asn1.RawValue
		Key       asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("subject key id: %w", err)
	}
	sum := sha1.Sum(spki.Key.Bytes)
	return sum[:], nil
}

// precertificate is tmpl as crypto/x509 would sign it under parent (nil
// means self-signed), but for the signature value: crypto/x509 marshals
// the TBSCertificate, with every check it makes before signing, and the
// issuer key type's throwaway signature stands in for the signature.
// Signing with the throwaway key and checking that signature, as
// crypto/x509 does, would cost two ECDSA operations per certificate and
// prove nothing about what is issued (signTBS checks the HSM's).
func precertificate(tmpl, parent *x509.Certificate, pub, issuerPub crypto.PublicKey) ([]byte, error) {
	key, err := lintKeyFor(issuerPub)
	if err != nil {
		return nil, err
	}
	var fake x509.Certificate
	if parent == nil {
		fake = *tmpl
	} else {
		fake = *parent
	}
	catch := &tbsCatcher{pub: key.signer.Public()}
	fake.PublicKey = catch.pub
	_, err = x509.CreateCertificate(rand.Reader, tmpl, &fake, pub, catch)
	der, err := catch.signed(err, key.sig, tbsSignatureAlgorithm)
	if err != nil {
		return nil, fmt.Errorf("pre-certificate: %w", err)
	}
	return der, nil
}

// signed returns what the signer caught, as crypto/x509 would have
// signed it but with sig for the signature value; err is what the
// crypto/x509 call returned, and algOf finds the signature algorithm in
// the caught TBS.
func (c *tbsCatcher) signed(err error, sig []byte, algOf func([]byte) ([]byte, error)) ([]byte, error) {
	if !errors.Is(err, errTBSCaught) {
		if err == nil {
			err = errors.New("signed without the signer")
		}
		return nil, err
	}
	alg, err := algOf(c.tbs)
	if err != nil {
		return nil, err
	}
	b := cryptobyte.NewBuilder(make([]byte, 0, len(c.tbs)+len(alg)+len(sig)+16))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(c.tbs)
		b.AddBytes(alg)
		b.AddASN1BitString(sig)
	})
	return b.Bytes()
}

// tbsSignatureAlgorithm returns the DER of a TBSCertificate's signature
// AlgorithmIdentifier, which the certificate repeats outside it.
func tbsSignatureAlgorithm(tbs []byte) ([]byte, error) {
	in := cryptobyte.String(tbs)
	var body, alg cryptobyte.String
	if !in.ReadASN1(&body, cbasn1.SEQUENCE) || !in.Empty() ||
		!body.SkipOptionalASN1(cbasn1.Tag(0).Constructed().ContextSpecific()) || // version
		!body.SkipASN1(cbasn1.INTEGER) || // serialNumber
		!body.ReadASN1Element(&alg, cbasn1.SEQUENCE) {
		return nil, errors.New("malformed TBSCertificate")
	}
	return alg, nil
}

// tbsCertListSignatureAlgorithm is tbsSignatureAlgorithm for a
// TBSCertList (RFC 5280 5.1: an optional version, then the algorithm).
func tbsCertListSignatureAlgorithm(tbs []byte) ([]byte, error) {
	in := cryptobyte.String(tbs)
	var body, alg cryptobyte.String
	if !in.ReadASN1(&body, cbasn1.SEQUENCE) || !in.Empty() ||
		!body.SkipOptionalASN1(cbasn1.INTEGER) || // version
		!body.ReadASN1Element(&alg, cbasn1.SEQUENCE) {
		return nil, errors.New("malformed TBSCertList")
	}
	return alg, nil
}

// lintCertificate lints tmpl as it would be signed under parent (nil for
// self-signed) by a key of type issuerPub, and returns the linted
// pre-certificate. tmpl must be complete (completeTemplate).
func (l *Linter) lintCertificate(what string, tmpl, parent *x509.Certificate, pub, issuerPub crypto.PublicKey) (*x509.Certificate, error) {
	der, err := precertificate(tmpl, parent, pub, issuerPub)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	pre, fs := l.lint(der, parent == nil)
	if len(fs) > 0 {
		return nil, &LintError{What: what, Findings: fs}
	}
	return pre, nil
}

// signCertificate completes tmpl, lints it and only then has signer sign
// it under parent (nil: self-signed): the very TBSCertificate that was
// linted, so that what is issued is what was linted, byte for byte but for
// the signature.
func (l *Linter) signCertificate(what string, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	// The key must be the issuer's (crypto/x509 refuses to sign otherwise):
	// a root certificate and token that do not belong together make a
	// certificate that verifies under nothing.
	issuerPub := pub
	if parent != nil {
		issuerPub = parent.PublicKey
	}
	if !SamePublicKey(issuerPub, signer.Public()) {
		return nil, fmt.Errorf("sign %s: the signing key is not the issuer's", what)
	}
	if err := completeTemplate(tmpl, pub); err != nil {
		return nil, err
	}
	pre, err := l.lintCertificate(what, tmpl, parent, pub, signer.Public())
	if err != nil {
		return nil, err
	}
	der, sig, err := signTBS(pre, signer)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", what, err)
	}
	// The certificate is pre but for its DER and signature value: every
	// other field crypto/x509 parses comes from the TBSCertificate and
	// the signature algorithm, which are pre's byte for byte. Parsing der
	// again would cost a tenth of the lint.
	cert := *pre
	cert.Raw, cert.Signature = der, sig
	return &cert, nil
}

// signTBS signs the TBSCertificate of the pre-certificate pre with signer
// and returns the certificate: pre's TBSCertificate and signature
// algorithm with signer's signature (also returned alone). Like
// crypto/x509.CreateCertificate it checks the signature with signer's
// public key before returning it, so that a faulty signer never hands out
// a certificate that does not verify.
func signTBS(pre *x509.Certificate, signer crypto.Signer) (der, sig []byte, err error) {
	return signOuter(pre.Raw, pre.SignatureAlgorithm, signer)
}

// signOuter is signTBS for any DER of the form SEQUENCE { tbs, algorithm,
// signature } (a certificate or a CRL) whose algorithm is alg.
func signOuter(pre []byte, alg x509.SignatureAlgorithm, signer crypto.Signer) (der, sig []byte, err error) {
	var h crypto.Hash
	switch alg {
	case x509.ECDSAWithSHA256, x509.SHA256WithRSA:
		h = crypto.SHA256
	case x509.ECDSAWithSHA384, x509.SHA384WithRSA:
		h = crypto.SHA384
	case x509.ECDSAWithSHA512, x509.SHA512WithRSA:
		h = crypto.SHA512
	default:
		return nil, nil, fmt.Errorf("signature algorithm %v not supported", alg)
	}
	var outer struct {
		TBS, Algorithm asn1.RawValue
		Signature      asn1.BitString
	}
	if rest, err := asn1.Unmarshal(pre, &outer); err != nil || len(rest) > 0 {
		return nil, nil, fmt.Errorf("the DER to sign does not parse: %v", err)
	}
	d := h.New()
	d.Write(outer.TBS.FullBytes)
	digest := d.Sum(nil)
	sig, err = signer.Sign(rand.Reader, digest, h)
	if err != nil {
		return nil, nil, err
	}
	if err := verifyDigest(signer.Public(), h, digest, sig); err != nil {
		return nil, nil, fmt.Errorf("the signer's signature does not verify with its public key: %w", err)
	}
	outer.Signature = asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}
	der, err = asn1.Marshal(outer)
	return der, sig, err
}

// verifyDigest checks sig over digest with pub (ECDSA, or RSA PKCS #1 v1.5).
func verifyDigest(pub crypto.PublicKey, h crypto.Hash, digest, sig []byte) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, digest, sig) {
			return errors.New("ECDSA verification failure")
		}
		return nil
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(k, h, digest, sig)
	}
	return fmt.Errorf("%w: signer key %T", ErrKeyType, pub)
}

// signCRL lints the CRL tmpl makes under issuer, then has signer sign
// that very TBSCertList, as signCertificate does for a certificate.
func (l *Linter) signCRL(what string, tmpl *x509.RevocationList, issuer *x509.Certificate, signer crypto.Signer, maxValidity time.Duration) ([]byte, error) {
	if !SamePublicKey(issuer.PublicKey, signer.Public()) {
		return nil, fmt.Errorf("sign %s: the signing key is not the issuer's", what)
	}
	key, err := lintKeyFor(signer.Public())
	if err != nil {
		return nil, err
	}
	fake := *issuer
	catch := &tbsCatcher{pub: key.signer.Public()}
	fake.PublicKey = catch.pub
	_, err = x509.CreateRevocationList(rand.Reader, tmpl, &fake, catch)
	pre, err := catch.signed(err, key.sig, tbsCertListSignatureAlgorithm)
	if err != nil {
		return nil, fmt.Errorf("%s: pre-CRL: %w", what, err)
	}
	r, fs := l.lintCRL(pre, maxValidity)
	if len(fs) > 0 {
		return nil, &LintError{What: what, Findings: fs}
	}
	der, _, err := signOuter(pre, r.SignatureAlgorithm, signer)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", what, err)
	}
	return der, nil
}

// checkPublicKey accepts the subject key types govnet allows.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("%w: ECDSA curve %s (want P-256 or P-384)", ErrKeyType, k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() != 3072 {
			return fmt.Errorf("%w: RSA %d bits (want 3072)", ErrKeyType, k.N.BitLen())
		}
		if k.E != 65537 {
			return fmt.Errorf("%w: RSA public exponent %d (want 65537)", ErrKeyType, k.E)
		}
	default:
		return fmt.Errorf("%w: %T (want ECDSA P-256, P-384 or RSA 3072)", ErrKeyType, pub)
	}
	return nil
}
