package ca

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Backdate is how far before "now" a certificate's NotBefore is set, to
// absorb clock skew between the CA and relying parties. The lifetime
// bound lint allows for it.
const Backdate = time.Minute

// Profiles holds the lifetime of each certificate profile. A profile's
// lifetime is both the default given to its certificates and the most
// the lint e_govnet_lifetime_bound lets through.
type Profiles struct {
	Gateway time.Duration `yaml:"gateway" json:"gateway"`
	Person  time.Duration `yaml:"person" json:"person"`
	Node    time.Duration `yaml:"node" json:"node"`
}

// DefaultProfiles returns the default lifetimes: gateway 24 h, person 90
// days, controller node one year.
func DefaultProfiles() Profiles {
	return Profiles{Gateway: GatewayLifetime, Person: PersonLifetime, Node: NodeLifetime}
}

// MinLifetime is the shortest lifetime a profile may be configured with.
const MinLifetime = 5 * time.Minute

// Validate checks that every profile has a lifetime between MinLifetime
// and IntermediateLifetime.
func (p Profiles) Validate() error {
	var errs []error
	for _, kind := range []string{KindGateway, KindPerson, KindNode} {
		d, _ := p.Lifetime(kind)
		if d < MinLifetime || d > IntermediateLifetime {
			errs = append(errs, fmt.Errorf("profile %s: lifetime %v: want between %v and %v", kind, d, MinLifetime, IntermediateLifetime))
		}
	}
	return errors.Join(errs...)
}

// Lifetime returns the lifetime of the profile of kind.
func (p Profiles) Lifetime(kind string) (time.Duration, bool) {
	switch kind {
	case KindGateway:
		return p.Gateway, true
	case KindPerson:
		return p.Person, true
	case KindNode:
		return p.Node, true
	}
	return 0, false
}

// Default revocation URLs: names the network's DNS resolves to the
// controllers. Deployments set their own with WithRevocationURLs.
const (
	DefaultCRLBaseURL = "http://ca.govnet/crl"
	DefaultOCSPURL    = "http://ca.govnet/ocsp"
)

// RevocationURLs say where relying parties find revocation status. Every
// certificate an issuer signs carries
//
//	CRL distribution point  <CRLBase>/<issuer id>.crl
//	AIA OCSP                <OCSPBase>/<issuer id>
//
// where the issuer id is IssuerID of the issuing certificate, so that one
// web server (any controller node) can serve the CRLs and route OCSP
// requests of every intermediate.
type RevocationURLs struct {
	CRLBase  string `yaml:"crl_base" json:"crl_base"`
	OCSPBase string `yaml:"ocsp_base" json:"ocsp_base"`
}

// Validate checks that both bases are absolute http URLs without a query
// (RFC 5280 4.2.1.13 and RFC 6960 expect plain http for CRLs and OCSP).
func (u RevocationURLs) Validate() error {
	var errs []error
	for name, v := range map[string]string{"crl_base": u.CRLBase, "ocsp_base": u.OCSPBase} {
		p, err := url.Parse(v)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s %q: %w", name, v, err))
		case p.Scheme != "http" || p.Host == "" || p.RawQuery != "" || p.Fragment != "":
			errs = append(errs, fmt.Errorf("%s %q: want http://host[:port]/path", name, v))
		}
	}
	return errors.Join(errs...)
}

// CRL returns the CRL URL of the issuer with id issuerID.
func (u RevocationURLs) CRL(issuerID string) string {
	return strings.TrimRight(u.CRLBase, "/") + "/" + issuerID + ".crl"
}

// OCSP returns the OCSP URL of the issuer with id issuerID.
func (u RevocationURLs) OCSP(issuerID string) string {
	return strings.TrimRight(u.OCSPBase, "/") + "/" + issuerID
}
