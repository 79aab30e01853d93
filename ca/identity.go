package ca

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"
)

// Kinds of identity a govnet certificate can carry.
const (
	KindGateway = "gateway"
	KindPerson  = "person"
	KindNode    = "node"
)

// Roles of people (DESIGN.md, "People and roles").
const (
	RoleOperator  = "operator"
	RoleOfficer   = "officer"
	RoleAuditor   = "auditor"
	RoleCustodian = "custodian"
)

// Identity is who a certificate names. It is encoded as URI SANs of the
// form govnet://<kind>.govnet/<name>, govnet://agency.govnet/<code> and
// govnet://role.govnet/<role>, so that it survives any subject encoding.
// The authority is a name in govnet's private domain because RFC 5280
// 4.2.1.6 requires the host of a URI SAN with an authority to be a fully
// qualified domain name (zlint e_ext_san_uri_host_not_fqdn_or_ip).
type Identity struct {
	Kind   string // gateway, person or node
	Name   string // gateway id, person name or node name
	Agency string // gateways only
	Role   string // people only
}

const (
	uriScheme     = "govnet"
	uriHostSuffix = ".govnet"
	nameAgency    = "agency"
	nameRole      = "role"
)

// uriHost is the authority of a govnet URI naming a thing of type typ.
func uriHost(typ string) string { return typ + uriHostSuffix }

// uriType returns the type a govnet URI names ("gateway", "agency", ...),
// or "" if u is not a govnet URI.
func uriType(u *url.URL) string {
	if u.Scheme != uriScheme {
		return ""
	}
	t, ok := strings.CutSuffix(u.Host, uriHostSuffix)
	if !ok {
		return ""
	}
	return t
}

// URIs renders the identity as SAN URIs.
func (id Identity) URIs() []*url.URL {
	u := []*url.URL{{Scheme: uriScheme, Host: uriHost(id.Kind), Path: "/" + id.Name}}
	if id.Agency != "" {
		u = append(u, &url.URL{Scheme: uriScheme, Host: uriHost(nameAgency), Path: "/" + id.Agency})
	}
	if id.Role != "" {
		u = append(u, &url.URL{Scheme: uriScheme, Host: uriHost(nameRole), Path: "/" + id.Role})
	}
	return u
}

// IdentityOf reads the identity out of a certificate issued by govnet's CA.
// The caller must already have verified the certificate's chain.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	var id Identity
	for _, u := range cert.URIs {
		t := uriType(u)
		v := strings.TrimPrefix(u.Path, "/")
		switch t {
		case KindGateway, KindPerson, KindNode:
			if id.Kind != "" {
				return Identity{}, fmt.Errorf("certificate %s names two identities", cert.SerialNumber)
			}
			id.Kind, id.Name = t, v
		case nameAgency:
			if id.Agency != "" {
				return Identity{}, fmt.Errorf("certificate %s names two agencies", cert.SerialNumber)
			}
			id.Agency = v
		case nameRole:
			if id.Role != "" {
				return Identity{}, fmt.Errorf("certificate %s names two roles", cert.SerialNumber)
			}
			id.Role = v
		}
	}
	if id.Kind == "" || id.Name == "" {
		return Identity{}, fmt.Errorf("certificate %s carries no govnet identity", cert.SerialNumber)
	}
	return id, nil
}
