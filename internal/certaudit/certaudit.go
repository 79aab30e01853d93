// Package certaudit checks a certificate inventory for certificates that
// no approval accounts for: an auditor's proof that the CA issued nothing
// on its own.
package certaudit

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// Officers returns the names of the people who hold, or held, the
// officer's role: Check's approvers. An approval was checked against the
// approver's role when it was made, so an officer who has another role
// now still accounts for the approvals made before.
func Officers(people []api.Person) map[string]bool {
	out := map[string]bool{}
	for _, p := range people {
		if p.Role == ca.RoleOfficer || slices.Contains(p.FormerRoles, ca.RoleOfficer) {
			out[p.Name] = true
		}
	}
	return out
}

// Finding is a certificate no approval accounts for, and why.
type Finding struct {
	Serial  string `json:"serial"`
	Kind    string `json:"kind"`
	Subject string `json:"subject"`
	Problem string `json:"problem"`
}

// Check returns the certificates in certs (the whole inventory, archived
// ones included: govnetctl cert list --archived) that no approval
// accounts for; officers are the names the registry of people holds as
// officers. A certificate is accounted for when
//
//   - a gateway's or a person's names as approver an officer, who
//     approved the token it was enrolled with;
//   - a gateway's or a person's renewed one that is accounted for, of the
//     same gateway or person (renewed_from);
//   - a person's was issued at init: recorded by a node (requester
//     node:NAME, no approver) with the very validity start and issuer of
//     that node's first certificate, which init issued with it;
//   - a node's is its own (requester node:SUBJECT): its node's
//     intermediate, which the root signed with M custodians' shares,
//     issued it;
//   - an intermediate was recorded by its node (requester node:NAME): the
//     root signed it in the ceremony, whose transcript is the approval.
//
// It reads the inventory as recorded: the audit chain, checked with
// `govnetctl audit verify`, is what shows the records were not altered.
func Check(certs []api.Certificate, officers map[string]bool) []Finding {
	a := &auditor{bySerial: make(map[string]*api.Certificate, len(certs)), verdict: make(map[string]string, len(certs)),
		officers: officers, initAt: map[string]initCert{}}
	for i := range certs {
		c := &certs[i]
		a.bySerial[c.Serial] = c
		if c.Kind == ca.KindNode && c.RenewedFrom == "" && c.Requester == "node:"+c.Subject {
			if at, ok := a.initAt[c.Subject]; !ok || c.NotBefore.Before(at.notBefore) {
				a.initAt[c.Subject] = initCert{notBefore: c.NotBefore, issuer: c.Issuer}
			}
		}
	}
	var out []Finding
	for i := range certs {
		if p := a.judge(&certs[i]); p != "" {
			out = append(out, Finding{Serial: certs[i].Serial, Kind: certs[i].Kind, Subject: certs[i].Subject, Problem: p})
		}
	}
	return out
}

type initCert struct {
	notBefore time.Time
	issuer    string
}

type auditor struct {
	bySerial map[string]*api.Certificate
	verdict  map[string]string // serial -> problem ("" when accounted for)
	officers map[string]bool
	initAt   map[string]initCert // node -> its first certificate
}

// judge decides c and every certificate of the renewal chain below it,
// walking up the chain (iteratively: a chain may be thousands long).
func (a *auditor) judge(c *api.Certificate) string {
	var path []*api.Certificate // certificates accounted for only by the one they renewed
	onPath := map[string]bool{}
	verdict := ""
	for cur := c; ; {
		if v, ok := a.verdict[cur.Serial]; ok {
			verdict = v
			break
		}
		if onPath[cur.Serial] {
			verdict = "renewal links form a cycle"
			break
		}
		p, parent := a.own(cur)
		if parent == nil {
			a.verdict[cur.Serial], verdict = p, p
			break
		}
		onPath[cur.Serial] = true
		path = append(path, cur)
		cur = parent
	}
	for i := len(path) - 1; i >= 0; i-- {
		if verdict != "" {
			verdict = fmt.Sprintf("renewed %s, which no approval accounts for", path[i].RenewedFrom)
		}
		a.verdict[path[i].Serial] = verdict
	}
	return a.verdict[c.Serial]
}

// own says why c is not accounted for on its own (problem), or that it
// is accounted for if parent, the certificate it renewed, is.
func (a *auditor) own(c *api.Certificate) (problem string, parent *api.Certificate) {
	switch c.Kind {
	case ca.KindGateway, ca.KindPerson:
	case ca.KindNode:
		if c.Requester != "node:"+c.Subject {
			return fmt.Sprintf("a node certificate recorded by %q, not by node %s itself", c.Requester, c.Subject), nil
		}
		return "", nil
	case "intermediate":
		if !strings.HasPrefix(c.Requester, "node:") {
			return fmt.Sprintf("an intermediate recorded by %q, not by its node", c.Requester), nil
		}
		return "", nil
	default:
		return fmt.Sprintf("kind %q", c.Kind), nil
	}
	switch {
	case c.Approver != "" && !a.officers[c.Approver]:
		return fmt.Sprintf("approver %q is not an officer in the registry of people", c.Approver), nil
	case c.Approver != "":
		return "", nil
	case c.Kind == ca.KindPerson && c.RenewedFrom == "" && strings.HasPrefix(c.Requester, "node:"):
		node := strings.TrimPrefix(c.Requester, "node:")
		if at, ok := a.initAt[node]; ok && c.NotBefore.Equal(at.notBefore) && c.Issuer == at.issuer {
			return "", nil // issued at init, with the node's first certificate
		}
		return fmt.Sprintf("a person's certificate recorded by %s without an approver, not issued with that node's first certificate (at init)", c.Requester), nil
	case c.RenewedFrom == "":
		return "neither an approver nor a certificate it renewed", nil
	}
	prev, ok := a.bySerial[c.RenewedFrom]
	switch {
	case !ok:
		return fmt.Sprintf("renewed %s, which the inventory does not hold", c.RenewedFrom), nil
	case prev.Kind != c.Kind || prev.Subject != c.Subject || prev.Gateway != c.Gateway:
		return fmt.Sprintf("renewed %s, a certificate of another %s (%s)", prev.Serial, prev.Kind, prev.Subject), nil
	}
	return "", prev
}
