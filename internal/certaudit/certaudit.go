// Package certaudit checks a certificate inventory for certificates that
// no approval accounts for: an auditor's proof that the CA issued nothing
// on its own.
package certaudit

import (
	"fmt"
	"strings"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// Finding is a certificate no approval accounts for, and why.
type Finding struct {
	Serial  string `json:"serial"`
	Kind    string `json:"kind"`
	Subject string `json:"subject"`
	Problem string `json:"problem"`
}

// Check returns the certificates in certs (the whole inventory, archived
// ones included: govnetctl cert list --archived) that no approval
// accounts for. A certificate is accounted for when
//
//   - a gateway's or a person's names the officer who approved the token
//     it was enrolled with (approver);
//   - a gateway's or a person's renewed one that is accounted for, of the
//     same gateway or person (renewed_from);
//   - a person's was issued at init by the founding node (requester
//     node:NAME, no approver): the installer's, with the people named in
//     `govnetd init`;
//   - a node's is its own (requester node:SUBJECT): its node's
//     intermediate, which the root signed with M custodians' shares,
//     issued it;
//   - an intermediate was recorded by its node (requester node:NAME): the
//     root signed it in the ceremony, whose transcript is the approval.
func Check(certs []api.Certificate) []Finding {
	bySerial := make(map[string]*api.Certificate, len(certs))
	for i := range certs {
		bySerial[certs[i].Serial] = &certs[i]
	}
	verdict := make(map[string]string, len(certs)) // serial -> problem ("" when accounted for)
	var problem func(c *api.Certificate) string
	problem = func(c *api.Certificate) string {
		if p, ok := verdict[c.Serial]; ok {
			return p
		}
		verdict[c.Serial] = "renewal links form a cycle" // until decided
		p := ""
		switch {
		case c.Kind == ca.KindGateway || c.Kind == ca.KindPerson:
			p = approvedOrRenewed(c, bySerial, problem)
		case c.Kind == ca.KindNode:
			if c.Requester != "node:"+c.Subject {
				p = fmt.Sprintf("a node certificate recorded by %q, not by node %s itself", c.Requester, c.Subject)
			}
		case c.Kind == "intermediate":
			if !strings.HasPrefix(c.Requester, "node:") {
				p = fmt.Sprintf("an intermediate recorded by %q, not by its node", c.Requester)
			}
		default:
			p = fmt.Sprintf("kind %q", c.Kind)
		}
		verdict[c.Serial] = p
		return p
	}
	var out []Finding
	for i := range certs {
		if p := problem(&certs[i]); p != "" {
			out = append(out, Finding{Serial: certs[i].Serial, Kind: certs[i].Kind, Subject: certs[i].Subject, Problem: p})
		}
	}
	return out
}

// approvedOrRenewed says why a gateway's or a person's certificate c is
// not accounted for, or "" if it is; parent judges the certificate c
// renewed.
func approvedOrRenewed(c *api.Certificate, bySerial map[string]*api.Certificate, parent func(*api.Certificate) string) string {
	switch {
	case c.Approver != "":
		return ""
	case c.Kind == ca.KindPerson && c.RenewedFrom == "" && strings.HasPrefix(c.Requester, "node:"):
		return "" // issued at init
	case c.RenewedFrom == "":
		return "neither an approver nor a certificate it renewed"
	}
	prev, ok := bySerial[c.RenewedFrom]
	switch {
	case !ok:
		return fmt.Sprintf("renewed %s, which the inventory does not hold", c.RenewedFrom)
	case prev.Kind != c.Kind || prev.Subject != c.Subject || prev.Gateway != c.Gateway:
		return fmt.Sprintf("renewed %s, a certificate of another %s (%s)", prev.Serial, prev.Kind, prev.Subject)
	}
	if p := parent(prev); p != "" {
		return fmt.Sprintf("renewed %s, which no approval accounts for", prev.Serial)
	}
	return ""
}
