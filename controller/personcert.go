package controller

import (
	"cmp"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// People's credentials after `govnetd init`: an officer invites a person
// (a one-time token bound to a name and a role; in four-eyes mode an
// invite request that another officer approves), the person enrolls with
// it for a certificate of that role, made from a key of their own, and
// renews it with the current one before it expires. Each is recorded in
// the inventory and registered, in one command.

// applyPersonInvite records an invitation's token.
func (s *State) applyPersonInvite(r *PersonInviteRequest) error {
	if err := s.checkInvite(r.Name, r.Role); err != nil {
		return err
	}
	if r.TokenHash == "" {
		return fmt.Errorf("%w: an invitation needs its token's hash", ErrBadRequest)
	}
	if r.KeySHA256 != "" && !isSHA256Hex(r.KeySHA256) {
		return fmt.Errorf("%w: key_sha256 %q: want the SHA-256 of the invitee's SubjectPublicKeyInfo in lowercase hex", ErrBadRequest, r.KeySHA256)
	}
	if _, ok := s.tokens[r.TokenHash]; ok {
		return fmt.Errorf("%w: token exists", ErrConflict)
	}
	s.tokens[r.TokenHash] = &tokenRecord{Person: r.Name, Role: r.Role, KeySHA256: r.KeySHA256, Hash: r.TokenHash, Expires: r.Expires, Issuer: r.Actor}
	return nil
}

// checkInvite says whether name may be invited to enroll as role. A
// registered person may be: their new certificate replaces the old one
// (a lost key), which is revoked as superseded.
func (s *State) checkInvite(name, role string) error {
	if !validPersonName(name) {
		return fmt.Errorf("%w: person name %q: use 1-63 letters, digits, '.', '_' and '-'", ErrBadRequest, name)
	}
	if !slices.Contains(roles, role) {
		return fmt.Errorf("%w: role %q: want one of %v", ErrBadRequest, role, roles)
	}
	return nil
}

// checkPersonCert says whether c is a person certificate of name with role.
func checkPersonCert(c *api.Certificate, name, role string) error {
	if c.Kind != ca.KindPerson || c.Subject != name || c.Role != role {
		return fmt.Errorf("%w: certificate %s is not a %s certificate of %s (kind %q, subject %q, role %q)",
			ErrBadRequest, c.Serial, role, name, c.Kind, c.Subject, c.Role)
	}
	return nil
}

// applyPersonEnroll registers the certificate a person enrolled for with
// an invitation's token, and uses the token up.
func (s *State) applyPersonEnroll(r *PersonEnrollRequest) error {
	t, ok := s.tokens[r.TokenHash]
	if err := checkToken(t, ok, r.At); err != nil {
		return err
	}
	if t.Person == "" || t.Person != r.Name {
		return fmt.Errorf("%w: the token does not invite %s", ErrForbidden, r.Name)
	}
	c := r.Cert
	if err := checkPersonCert(&c, r.Name, t.Role); err != nil {
		return err
	}
	if t.KeySHA256 != "" && c.KeySHA256 != t.KeySHA256 {
		return fmt.Errorf("%w: the invitation of %s is for another key", ErrForbidden, r.Name)
	}
	reg := registration(r.Meta, r.Name, t.Role, c.Serial)
	if err := s.checkPersonUpsert(reg); err != nil {
		return err
	}
	if err := s.checkCert(&c); err != nil {
		return err
	}
	// Who invited them asked for and approved this certificate.
	c.Requester, c.Approver = cmp.Or(t.Requester, t.Issuer), t.Issuer
	s.addCert(c, r.At, r.Actor)
	var replaced []string // the certificates the new one replaces
	if old, ok := s.people[r.Name]; ok && old.Status == api.PersonActive {
		replaced = []string{old.Serial, old.Previous}
	}
	t.Used = true
	s.cancelInvitations(r.Name)
	s.upsertPerson(reg)
	for _, serial := range replaced {
		s.revokePersonCert(serial, ca.ReasonSuperseded, r.At, r.Actor)
	}
	return nil
}

// revokePersonCert revokes serial, a person's certificate, in the
// inventory if it is valid there.
func (s *State) revokePersonCert(serial string, reason ca.Reason, at time.Time, actor string) {
	if c := s.certs[normSerial(serial)]; serial != "" && c != nil && c.Kind == ca.KindPerson && c.Status == api.CertValid {
		s.revoke([]*api.Certificate{c}, "", int(reason), at, actor, s.applying)
	}
}

// personRevoked withdraws everything p, a person just marked revoked,
// holds: their current certificate and the one it was renewed from (kept
// for a retry), every invitation not yet used, and the four-eyes requests
// still pending that they made or that would invite them.
func (s *State) personRevoked(p *api.Person, at time.Time, actor string) {
	serials := []string{p.Serial, p.Previous}
	p.Previous = ""
	for _, serial := range serials {
		if serial == "" {
			continue
		}
		s.revokePersonCert(serial, ca.ReasonPrivilegeWithdrawn, at, actor)
		if !slices.Contains(p.RevokedSerials, normSerial(serial)) {
			p.RevokedSerials = append(p.RevokedSerials, normSerial(serial))
		}
	}
	s.cancelTokensOf(p.Name)
	for _, r := range s.requests {
		if r.Status == api.RequestPending && (r.Requester == p.Name || r.Kind == api.RequestInvite && r.PersonName == p.Name) {
			r.Status, r.Approver, r.Decided = api.RequestRejected, actor, at
		}
	}
}

// cancelInvitations cancels name's invitations not used yet.
func (s *State) cancelInvitations(name string) {
	s.cancelTokens(func(t *tokenRecord) bool { return t.Person == name })
}

// cancelTokensOf cancels the tokens not used yet that invite name, or
// that name issued, approved or asked for: a revoked officer keeps no
// token to enroll or re-enroll anything with.
func (s *State) cancelTokensOf(name string) {
	s.cancelTokens(func(t *tokenRecord) bool { return t.Person == name || t.Issuer == name || t.Requester == name })
}

// cancelTokens cancels the tokens not used yet that match.
func (s *State) cancelTokens(match func(*tokenRecord) bool) {
	for _, t := range s.tokens {
		if !t.Used && match(t) {
			t.Used, t.Cancelled = true, true
		}
	}
}

// applyPersonRenew registers a person's renewed certificate in place of
// the one it was renewed from: their current one, or the one before it
// if the answer to that renewal was lost, for the current one's key.
func (s *State) applyPersonRenew(r *PersonRenewRequest) error {
	p, ok := s.people[r.Name]
	if !ok || p.Status != api.PersonActive {
		return fmt.Errorf("%w: %s is not an active person", ErrForbidden, r.Name)
	}
	c := r.Cert
	if err := checkPersonCert(&c, r.Name, p.Role); err != nil {
		return err
	}
	// The new certificate replaces the current one, which stays valid for
	// a retry (Previous); the one before it goes. A retry replaces the
	// certificate whose answer was lost, which goes, and keeps Previous.
	previous, dropped := p.Serial, p.Previous
	switch from := normSerial(r.From); {
	case from == normSerial(p.Serial):
	case from != "" && from == normSerial(p.Previous):
		cur := s.certs[normSerial(p.Serial)]
		if cur == nil || cur.KeySHA256 == "" || cur.KeySHA256 != c.KeySHA256 {
			return fmt.Errorf("%w: renewing from %s, the certificate before %s's current one, takes a CSR for the current one's key", ErrForbidden, r.From, r.Name)
		}
		previous, dropped = p.Previous, p.Serial
	default:
		return fmt.Errorf("%w: certificate %s is not %s's current certificate", ErrForbidden, r.From, r.Name)
	}
	if old := s.certs[normSerial(r.From)]; old != nil && old.Status == api.CertRevoked {
		return fmt.Errorf("%w: certificate %s is revoked", ErrForbidden, r.From)
	}
	if err := s.checkPersonUpsert(registration(r.Meta, r.Name, p.Role, c.Serial)); err != nil {
		return err
	}
	if err := s.checkCert(&c); err != nil {
		return err
	}
	c.Requester, c.RenewedFrom = r.Name, p.Serial
	s.addCert(c, r.At, r.Actor)
	p.Serial, p.Previous = c.Serial, previous
	s.revokePersonCert(dropped, ca.ReasonSuperseded, r.At, r.Actor)
	return nil
}

// newToken returns a fresh one-time token and its hash.
func newToken() (token, hash string, err error) {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return "", "", err
	}
	token = base64.RawURLEncoding.EncodeToString(secret)
	return token, hashToken(token), nil
}

// parseTTL reads a token's lifetime: default an hour, at most maxTokenTTL.
func parseTTL(s string) (time.Duration, error) {
	if s == "" {
		return time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 || d > maxTokenTTL {
		return 0, fmt.Errorf("ttl %q: want a duration up to %s", s, maxTokenTTL)
	}
	return d, nil
}

// handleInvite issues an invitation in one step (officer); in four-eyes
// mode it is refused (an invite request and another officer's approval).
func (n *Node) handleInvite(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	if n.oneStepRefused(w, "request the invitation (govnetctl request invite NAME --role ROLE)") {
		return
	}
	var req api.InviteRequest
	if !decode(w, r, &req) {
		return
	}
	name := r.PathValue("name")
	token, expires, ok := n.issueToken(w, r, id, req.TTL, func(m Meta, hash string, expires time.Time) (CommandType, any) {
		return CmdPersonInvite, &PersonInviteRequest{Meta: m, Name: name, Role: req.Role, TokenHash: hash, Expires: expires, KeySHA256: strings.ToLower(req.KeySHA256)}
	})
	if !ok {
		return
	}
	n.log.Info("person invited", "person", name, "role", req.Role, "actor", id.Name)
	writeJSON(w, http.StatusOK, api.TokenResponse{Person: name, Role: req.Role, Token: token, Expires: expires})
}

// handlePersonEnroll issues a person their certificate with an
// invitation's token (no client certificate: the token is the
// credential). The name and role come from the invitation.
func (n *Node) handlePersonEnroll(w http.ResponseWriter, r *http.Request) {
	var req api.PersonEnrollRequest
	if !decode(w, r, &req) {
		return
	}
	tok, hash, err := n.usableToken(req.Token)
	if err != nil {
		n.fail(w, err)
		return
	}
	if tok.Person == "" || tok.Person != req.Name {
		n.fail(w, fmt.Errorf("%w: the token does not invite %q", ErrForbidden, req.Name))
		return
	}
	csr, err := ca.ReadCSR([]byte(req.CSR))
	if err != nil {
		writeError(w, http.StatusBadRequest, "csr: "+err.Error())
		return
	}
	if tok.KeySHA256 != "" && spkiSHA256(csr.RawSubjectPublicKeyInfo) != tok.KeySHA256 {
		n.fail(w, fmt.Errorf("%w: the invitation of %s is for another key (SHA-256 %s)", ErrForbidden, tok.Person, tok.KeySHA256))
		return
	}
	// Sign first, then use the token up: if that loses a race, the
	// certificate is never handed out.
	chain, err := n.ca.Issue(r.Context(), csr, ca.PersonProfile(tok.Person, tok.Role))
	if err != nil {
		n.fail(w, err)
		return
	}
	rec := n.certRecord(chain[0])
	_, err = n.submit(r.Context(), CmdPersonEnroll, &PersonEnrollRequest{Meta: n.meta(tok.Person), Name: tok.Person, TokenHash: hash, Cert: rec})
	if err != nil {
		n.fail(w, err)
		return
	}
	n.log.Info("person enrolled", "person", tok.Person, "role", tok.Role, "serial", rec.Serial)
	writeJSON(w, http.StatusOK, n.personCertResponse(tok.Person, tok.Role, chain))
}

// handlePersonRenew renews the caller's certificate: with their current
// one, or with the one before if they renewed it and never got the
// answer, for the current one's key (the key they sent the CSR for).
// Name and role come from the registry.
func (n *Node) handlePersonRenew(w http.ResponseWriter, r *http.Request) {
	id, ok := identity(r)
	leaf := clientLeaf(r)
	if !ok || id.Kind != ca.KindPerson || leaf == nil {
		writeError(w, http.StatusUnauthorized, "a person's client certificate is required")
		return
	}
	if err := n.checkPerson(id, r); err != nil {
		p, _ := n.State().Person(id.Name)
		if p.Previous == "" || p.Previous != ca.Serial(leaf) || p.Status != api.PersonActive || p.Role != id.Role {
			n.fail(w, err)
			return
		}
		if err := n.State().keyIsRecorded(leaf); err != nil {
			n.fail(w, fmt.Errorf("%w: %w", ErrUnauthorized, err))
			return
		}
	}
	var req api.PersonRenewRequest
	if !decode(w, r, &req) {
		return
	}
	csr, err := ca.ReadCSR([]byte(req.CSR))
	if err != nil {
		writeError(w, http.StatusBadRequest, "csr: "+err.Error())
		return
	}
	p, _ := n.State().Person(id.Name)
	if ca.Serial(leaf) == p.Previous && !n.keyOfCert(p.Serial, csr) {
		n.fail(w, fmt.Errorf("%w: certificate %s was renewed to %s; renewing from it again takes a CSR for the key of %s (the renewal whose answer was lost)",
			ErrForbidden, p.Previous, p.Serial, p.Serial))
		return
	}
	chain, err := n.ca.Issue(r.Context(), csr, ca.PersonProfile(p.Name, p.Role))
	if err != nil {
		n.fail(w, err)
		return
	}
	rec := n.certRecord(chain[0])
	_, err = n.submit(r.Context(), CmdPersonRenew, &PersonRenewRequest{Meta: n.meta(p.Name), Name: p.Name, From: ca.Serial(leaf), Cert: rec})
	if err != nil {
		n.fail(w, err)
		return
	}
	n.log.Info("person certificate renewed", "person", p.Name, "role", p.Role, "serial", rec.Serial, "old_serial", ca.Serial(leaf))
	writeJSON(w, http.StatusOK, n.personCertResponse(p.Name, p.Role, chain))
}

// keyOfCert says whether csr is for the key the inventory recorded for serial.
func (n *Node) keyOfCert(serial string, csr *x509.CertificateRequest) bool {
	rec, ok := n.State().Certificate(serial)
	return ok && rec.KeySHA256 != "" && spkiSHA256(csr.RawSubjectPublicKeyInfo) == rec.KeySHA256
}

func (n *Node) personCertResponse(name, role string, chain []*x509.Certificate) api.PersonCertResponse {
	return api.PersonCertResponse{
		Name: name, Role: role, Serial: ca.Serial(chain[0]), Expires: chain[0].NotAfter.UTC(),
		Certificate: string(ca.EncodePEM(chain...)),
		Root:        string(ca.EncodePEM(n.ca.Root())),
	}
}
