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
// form govnet://<kind>/<name>, govnet://agency/<code> and
// govnet://role/<role>, so that it survives any subject encoding.
type Identity struct {
	Kind   string // gateway, person or node
	Name   string // gateway id, person name or node name
	Agency string // gateways only
	Role   string // people only
}

const uriScheme = "govnet"

// URIs renders the identity as SAN URIs.
func (id Identity) URIs() []*url.URL {
	u := []*url.URL{{Scheme: uriScheme, Host: id.Kind, Path: "/" + id.Name}}
	if id.Agency != "" {
		u = append(u, &url.URL{Scheme: uriScheme, Host: "agency", Path: "/" + id.Agency})
	}
	if id.Role != "" {
		u = append(u, &url.URL{Scheme: uriScheme, Host: "role", Path: "/" + id.Role})
	}
	return u
}

// IdentityOf reads the identity out of a certificate issued by govnet's CA.
// The caller must already have verified the certificate's chain.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	var id Identity
	for _, u := range cert.URIs {
		if u.Scheme != uriScheme {
			continue
		}
		v := strings.TrimPrefix(u.Path, "/")
		switch u.Host {
		case KindGateway, KindPerson, KindNode:
			if id.Kind != "" {
				return Identity{}, fmt.Errorf("certificate %s names two identities", cert.SerialNumber)
			}
			id.Kind, id.Name = u.Host, v
		case "agency":
			id.Agency = v
		case "role":
			id.Role = v
		}
	}
	if id.Kind == "" || id.Name == "" {
		return Identity{}, fmt.Errorf("certificate %s carries no govnet identity", cert.SerialNumber)
	}
	return id, nil
}
