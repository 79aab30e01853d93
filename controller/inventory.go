package controller

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// The certificate inventory lives in the replicated state: every node
// answers `cert list|show` and OCSP from it, and every issuer's latest
// CRL is stored beside it.
//
// CRLs: only the node whose HSM holds an intermediate's key can sign that
// issuer's CRL. That node signs a new one whenever a revocation concerning
// its issuer commits (and at least every crlRefresh), and commits the DER
// with CmdCRLPublish; the CRL number is the issuer's last number plus one,
// kept in raft, so it only grows whichever node restarts. Every node then
// serves every issuer's CRL from its own state, so a relying party can
// fetch any CRL from any node, even while the issuing node is down (the
// last CRL stays valid until its nextUpdate, at most 24 h).
//
// OCSP answers must be signed by the issuer's key, so each node answers
// for its own issuer and proxies requests about another issuer to the
// node that holds it (issuer records, CmdIssuerUpsert).

// issuerRecord is what the state knows of one intermediate.
type issuerRecord struct {
	Issuer   string `json:"issuer"`
	Node     string `json:"node,omitempty"`
	HTTPAddr string `json:"http_addr,omitempty"`
	// LastRevocation is the raft index of the last revocation of one of
	// its certificates; the CRL is current when CRL.Covers reaches it.
	LastRevocation uint64     `json:"last_revocation,omitempty"`
	CRL            *crlRecord `json:"crl,omitempty"`
}

type crlRecord struct {
	Number     uint64    `json:"number"`
	Covers     uint64    `json:"covers"`
	ThisUpdate time.Time `json:"this_update"`
	NextUpdate time.Time `json:"next_update"`
	DER        []byte    `json:"der"`
}

// CertFilter selects certificates for Certificates.
type CertFilter struct {
	Agency   string        // gateways of this agency
	Revoked  bool          // only revoked certificates
	Expiring time.Duration // only valid ones that expire within this long of Now
	Now      time.Time
}

func (f CertFilter) match(c *api.Certificate) bool {
	switch {
	case f.Agency != "" && c.Agency != f.Agency:
		return false
	case f.Revoked && c.Status != api.CertRevoked:
		return false
	case f.Expiring > 0 && (c.Status != api.CertValid || !c.NotAfter.After(f.Now) || c.NotAfter.After(f.Now.Add(f.Expiring))):
		return false
	}
	return true
}

// Certificates returns the inventory sorted by issue time, then serial.
func (s *State) Certificates(f CertFilter) []api.Certificate {
	s.mu.RLock()
	out := s.certificatesLocked(f)
	s.mu.RUnlock()
	sortCerts(out)
	return out
}

// CertificatesAndArchive returns what Certificates does and the archived
// certificates as JSON lines (one api.Certificate each, oldest archived
// first; read them with eachArchived), as of the same moment: no
// certificate is in both, none in neither. The reader stays valid after
// the state moves on.
func (s *State) CertificatesAndArchive(f CertFilter) ([]api.Certificate, io.Reader) {
	s.mu.RLock()
	out, archived := s.certificatesLocked(f), s.archive.from(0)
	s.mu.RUnlock()
	sortCerts(out)
	return out, archived
}

func (s *State) certificatesLocked(f CertFilter) []api.Certificate {
	out := []api.Certificate{}
	for _, c := range s.certs {
		if f.match(c) {
			out = append(out, copyCert(c))
		}
	}
	return out
}

func sortCerts(out []api.Certificate) {
	slices.SortFunc(out, func(a, b api.Certificate) int {
		if c := a.Issued.Compare(b.Issued); c != 0 {
			return c
		}
		return strings.Compare(a.Serial, b.Serial)
	})
}

// Certificate returns one certificate by serial (hex, any case, leading
// zeros ignored), from the inventory or the archive. An archived one that
// this node's disk fails to read counts as not found: LookupCertificate
// tells the two apart.
func (s *State) Certificate(serial string) (api.Certificate, bool) {
	c, ok, _ := s.LookupCertificate(serial)
	return c, ok
}

// recorded says whether every certificate of serials is in the inventory
// or the archive (how submitSettled learns what became of a write that
// records them).
func (s *State) recorded(serials ...string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, serial := range serials {
		if _, ok, _ := s.findCert(normSerial(serial)); !ok {
			return false
		}
	}
	return true
}

// LookupCertificate is Certificate with the archive's read error.
func (s *State) LookupCertificate(serial string) (api.Certificate, bool, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok, err := s.findCert(normSerial(serial))
	if !ok {
		return api.Certificate{}, false, err
	}
	return copyCert(c), true, nil
}

// findCert returns the certificate with serial (normalised) from the
// inventory or the archive; s.mu must be held.
func (s *State) findCert(serial string) (*api.Certificate, bool, error) {
	if c, ok := s.certs[serial]; ok {
		return c, true, nil
	}
	return s.archive.lookup(serial)
}

func copyCert(c *api.Certificate) api.Certificate {
	out := *c
	out.SANs = slices.Clone(c.SANs)
	return out
}

// normSerial renders a hex serial the way ca.Serial does ("" if it is not hex).
func normSerial(s string) string {
	n, ok := new(big.Int).SetString(strings.TrimPrefix(strings.ToLower(s), "0x"), 16)
	if !ok || n.Sign() <= 0 {
		return ""
	}
	return n.Text(16)
}

// CertStatus answers OCSP for a serial of issuer, archived or not: an
// expired certificate is still answered for, with the status it had.
func (s *State) CertStatus(issuer string, serial *big.Int) (ca.CertStatus, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok, err := s.findCert(serial.Text(16))
	if err != nil {
		return ca.CertStatus{}, err
	}
	if !ok || c.Issuer != issuer {
		return ca.CertStatus{State: ca.StateUnknown}, nil
	}
	if c.Status == api.CertRevoked {
		return ca.CertStatus{State: ca.StateRevoked, RevokedAt: c.RevokedAt, Reason: ca.Reason(c.Reason)}, nil
	}
	return ca.CertStatus{State: ca.StateGood}, nil
}

// issuer returns a copy of an issuer's record.
func (s *State) issuer(id string) (issuerRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.issuers[id]
	if !ok {
		return issuerRecord{}, false
	}
	out := *r
	if r.CRL != nil {
		c := *r.CRL
		out.CRL = &c
	}
	return out, true
}

// revokedOf returns the entries of issuer's next CRL: its revoked
// certificates that have not expired at now, and the raft index of the
// last revocation they reflect.
func (s *State) revokedOf(issuer string, now time.Time) ([]ca.Revoked, uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []ca.Revoked
	for _, c := range s.certs {
		// Status first: most certificates are valid, and telling
		// "valid" from "revoked" needs no byte comparison, while every
		// issuer id has the same length.
		if c.Status != api.CertRevoked || c.Issuer != issuer || !c.NotAfter.After(now) {
			continue
		}
		serial, _ := new(big.Int).SetString(c.Serial, 16)
		out = append(out, ca.Revoked{Serial: serial, At: c.RevokedAt, Reason: ca.Reason(c.Reason)})
	}
	var last uint64
	if r, ok := s.issuers[issuer]; ok {
		last = r.LastRevocation
	}
	return out, last
}

// checkCert validates a certificate record before it enters the inventory.
func (s *State) checkCert(c *api.Certificate) error {
	serial := normSerial(c.Serial)
	switch {
	case serial == "" || serial != c.Serial:
		return fmt.Errorf("%w: certificate serial %q: want lowercase hex without leading zeros", ErrBadRequest, c.Serial)
	case c.Kind != ca.KindGateway && c.Kind != ca.KindPerson && c.Kind != ca.KindNode && c.Kind != kindIntermediate:
		return fmt.Errorf("%w: certificate %s: kind %q", ErrBadRequest, c.Serial, c.Kind)
	case c.Issuer == "" || strings.Trim(c.Issuer, "0123456789abcdef") != "":
		return fmt.Errorf("%w: certificate %s: issuer %q: want the issuer id in hex", ErrBadRequest, c.Serial, c.Issuer)
	case !c.NotAfter.After(c.NotBefore):
		return fmt.Errorf("%w: certificate %s: not after %s is not after not before %s", ErrBadRequest, c.Serial, c.NotAfter, c.NotBefore)
	case c.Kind == ca.KindGateway && c.Gateway == "":
		return fmt.Errorf("%w: gateway certificate %s names no gateway", ErrBadRequest, c.Serial)
	}
	if _, ok := s.certs[c.Serial]; ok {
		return fmt.Errorf("%w: certificate %s is already recorded", ErrConflict, c.Serial)
	}
	if archived, err := s.archive.has(c.Serial); err != nil || archived {
		return cmp.Or(err, fmt.Errorf("%w: certificate %s is already recorded (archived)", ErrConflict, c.Serial))
	}
	return nil
}

// addCert records a checked certificate as valid.
func (s *State) addCert(c api.Certificate, at time.Time, actor string) {
	c.SANs = slices.Clone(c.SANs)
	c.Status = api.CertValid
	c.RevokedAt, c.Reason, c.ReasonName, c.RevokedBy = time.Time{}, 0, "", ""
	c.Issued, c.IssuedIndex = at, s.applying
	if c.Requester == "" {
		c.Requester = actor
	}
	s.certs[c.Serial] = &c
}

func (s *State) applyCertRecord(r *CertRecordRequest) error {
	if len(r.Certs) == 0 {
		return fmt.Errorf("%w: no certificates to record", ErrBadRequest)
	}
	seen := map[string]bool{}
	for i := range r.Certs {
		if err := s.checkCert(&r.Certs[i]); err != nil {
			return err
		}
		if seen[r.Certs[i].Serial] {
			return fmt.Errorf("%w: certificate %s listed twice", ErrBadRequest, r.Certs[i].Serial)
		}
		seen[r.Certs[i].Serial] = true
	}
	for _, c := range r.Certs {
		s.addCert(c, r.At, r.Actor)
	}
	return nil
}

// checkRevoke says what a revocation would revoke, changing nothing.
func (s *State) checkRevoke(serial, gateway string, reason int) ([]*api.Certificate, error) {
	if !ca.Reason(reason).Valid() {
		return nil, fmt.Errorf("%w: %w %d", ErrBadRequest, ca.ErrReason, reason)
	}
	switch {
	case serial != "" && gateway != "":
		return nil, fmt.Errorf("%w: revoke a serial or a gateway, not both", ErrBadRequest)
	case gateway != "":
		if err := s.canRevoke(gateway); err != nil {
			return nil, err
		}
		return s.validGatewayCerts(map[string]bool{gateway: true})[gateway], nil
	case serial != "":
		c, ok := s.certs[normSerial(serial)]
		if !ok {
			if a, archived, err := s.archive.lookup(normSerial(serial)); err != nil {
				return nil, err
			} else if archived {
				return nil, fmt.Errorf("%w: certificate %s expired on %s and was archived: an expired certificate needs no revocation", ErrConflict, a.Serial, a.NotAfter.Format(time.RFC3339))
			}
			if s.activePersonWithSerial(serial) {
				return nil, nil // registered, not recorded: revokePersonSerial marks the person
			}
			return nil, fmt.Errorf("%w: certificate %s is not in the inventory", ErrNotFound, serial)
		}
		if c.Status == api.CertRevoked {
			return nil, fmt.Errorf("%w: certificate %s was already revoked", ErrConflict, c.Serial)
		}
		return []*api.Certificate{c}, nil
	}
	return nil, fmt.Errorf("%w: name a serial or a gateway to revoke", ErrBadRequest)
}

// revoke revokes what checkRevoke found: the certificates, the gateway
// (named, or whose current certificate is revoked) and the person whose
// registered certificate is revoked. index is the raft index of the
// command, which tells each issuer's CRL publisher it is behind.
func (s *State) revoke(certs []*api.Certificate, gateway string, reason int, at time.Time, actor string, index uint64) {
	for _, c := range certs {
		c.Status, c.RevokedAt, c.Reason, c.ReasonName, c.RevokedBy = api.CertRevoked, at, reason, ca.Reason(reason).String(), actor
		if c.Kind == ca.KindGateway {
			// Its current certificate, or one the current one was renewed
			// from (a renewal made while the revocation was being asked
			// for must not outrun it): the gateway is revoked, with every
			// certificate it holds.
			if g, ok := s.gateways[c.Gateway]; ok && g.Status == api.StatusEnrolled && (g.CertSerial == c.Serial || slices.Contains(g.RenewedFrom, c.Serial)) {
				g.Status = api.StatusRevoked
				for _, serial := range append([]string{g.CertSerial}, g.RenewedFrom...) {
					if other := s.certs[serial]; other != nil && other != c && other.Status == api.CertValid {
						s.revoke([]*api.Certificate{other}, "", reason, at, actor, index)
					}
				}
			}
		}
		if c.Kind == ca.KindPerson {
			// The current certificate, or the one it was renewed from (a
			// renewal made while the revocation was being asked for must
			// not outrun it): the person is revoked.
			for _, p := range s.people {
				if p.Status == api.PersonActive && (p.Serial == c.Serial || p.Previous == c.Serial) {
					p.Status = api.PersonRevoked
					s.personRevoked(p, at, actor)
				}
			}
		}
		ir := s.issuers[c.Issuer]
		if ir == nil {
			ir = &issuerRecord{Issuer: c.Issuer}
			s.issuers[c.Issuer] = ir
		}
		ir.LastRevocation = index
	}
	if gateway != "" {
		s.gateways[gateway].Status = api.StatusRevoked
	}
}

func (s *State) applyCertRevoke(r *CertRevokeRequest) error {
	certs, err := s.checkRevoke(r.Serial, r.Gateway, r.Reason)
	if err != nil {
		return err
	}
	s.revokeChecked(certs, r.Serial, r.Gateway, r.Reason, r.At, r.Actor)
	return nil
}

// revokeChecked applies a revocation by serial or gateway that checkRevoke
// found certs for: those, and a person registered with serial when the
// inventory has no record of it.
func (s *State) revokeChecked(certs []*api.Certificate, serial, gateway string, reason int, at time.Time, actor string) {
	s.revoke(certs, gateway, reason, at, actor, s.applying)
	s.revokePersonSerial(serial, at, actor)
}

// activePersonWithSerial says whether an active person is registered
// with serial.
func (s *State) activePersonWithSerial(serial string) bool {
	serial = normSerial(serial)
	for _, p := range s.people {
		if serial != "" && p.Status == api.PersonActive && normSerial(p.Serial) == serial {
			return true
		}
	}
	return false
}

// revokePersonSerial revokes every person registered with serial when
// the inventory has no record of it (revoke, given the record, does it):
// a person registered with a certificate issued elsewhere can be revoked
// through a four-eyes request too.
func (s *State) revokePersonSerial(serial string, at time.Time, actor string) {
	serial = normSerial(serial)
	if serial == "" || s.certs[serial] != nil {
		return
	}
	for _, p := range s.people {
		if normSerial(p.Serial) == serial {
			p.Status = api.PersonRevoked
			s.personRevoked(p, at, actor)
		}
	}
}

func (s *State) applyGatewayRenew(r *GatewayRenewRequest) error {
	if err := s.checkGatewayRenew(r); err != nil {
		return err
	}
	s.renewGateway(r)
	return nil
}

// applyGatewayRenews applies a batch of renewals, all or none: each must
// be valid on its own, and no gateway or serial may appear twice.
func (s *State) applyGatewayRenews(r *GatewayRenewsRequest) error {
	if len(r.Renewals) == 0 {
		return fmt.Errorf("%w: an empty batch of renewals", ErrBadRequest)
	}
	gateways, serials := map[string]bool{}, map[string]bool{}
	for i := range r.Renewals {
		rr := &r.Renewals[i]
		if gateways[rr.Gateway] || serials[normSerial(rr.Cert.Serial)] {
			return fmt.Errorf("%w: renewal %d: gateway %s or serial %s twice in one batch", ErrConflict, i, rr.Gateway, rr.Cert.Serial)
		}
		gateways[rr.Gateway], serials[normSerial(rr.Cert.Serial)] = true, true
		if err := s.checkGatewayRenew(rr); err != nil {
			return fmt.Errorf("renewal %d: %w", i, err)
		}
	}
	for i := range r.Renewals {
		s.renewGateway(&r.Renewals[i])
	}
	return nil
}

// checkGatewayRenew says whether a renewal may apply.
func (s *State) checkGatewayRenew(r *GatewayRenewRequest) error {
	g, ok := s.gateways[r.Gateway]
	if !ok {
		return fmt.Errorf("%w: gateway %s", ErrNotFound, r.Gateway)
	}
	if g.Status != api.StatusEnrolled {
		return fmt.Errorf("%w: gateway %s is %s, only enrolled gateways renew", ErrForbidden, g.ID, g.Status)
	}
	if g.CertSerial != r.OldSerial {
		return fmt.Errorf("%w: certificate %s is not gateway %s's current certificate", ErrForbidden, r.OldSerial, g.ID)
	}
	if r.Cert.Kind != ca.KindGateway || r.Cert.Gateway != g.ID {
		return fmt.Errorf("%w: renewed certificate is not a certificate of gateway %s", ErrBadRequest, g.ID)
	}
	return s.checkCert(&r.Cert)
}

// renewGateway records a checked renewal.
func (s *State) renewGateway(r *GatewayRenewRequest) {
	g := s.gateways[r.Gateway]
	c := r.Cert
	c.RenewedFrom = r.OldSerial
	s.addCert(c, r.At, r.Actor)
	g.CertSerial, g.CertExpires = r.Cert.Serial, r.Cert.NotAfter
	g.RenewedFrom = []string{r.OldSerial}
	if r.From != "" && r.From != r.OldSerial {
		g.RenewedFrom = append(g.RenewedFrom, r.From)
	}
}

func (s *State) applyCRLPublish(r *CRLPublishRequest) error {
	ir := s.issuers[r.Issuer]
	switch {
	case r.Issuer == "" || len(r.DER) == 0:
		return fmt.Errorf("%w: a CRL needs its issuer and its DER", ErrBadRequest)
	case !r.NextUpdate.After(r.ThisUpdate):
		return fmt.Errorf("%w: CRL nextUpdate is not after thisUpdate", ErrBadRequest)
	case ir != nil && ir.CRL != nil && r.Number <= ir.CRL.Number:
		return fmt.Errorf("%w: CRL number %d of issuer %s: already at %d", ErrConflict, r.Number, r.Issuer, ir.CRL.Number)
	case r.Number == 0:
		return fmt.Errorf("%w: CRL numbers start at 1", ErrBadRequest)
	}
	if ir == nil {
		ir = &issuerRecord{Issuer: r.Issuer}
		s.issuers[r.Issuer] = ir
	}
	ir.CRL = &crlRecord{Number: r.Number, Covers: r.Covers, ThisUpdate: r.ThisUpdate, NextUpdate: r.NextUpdate, DER: slices.Clone(r.DER)}
	for _, e := range r.Revoked {
		if c := s.certs[e.Serial]; c != nil && c.Status == api.CertValid && c.Issuer == r.Issuer {
			s.revoke([]*api.Certificate{c}, "", e.Reason, e.At, r.Actor, s.applying)
		}
	}
	return nil
}

func (s *State) applyIssuerUpsert(r *IssuerUpsertRequest) error {
	if r.Issuer == "" || strings.Trim(r.Issuer, "0123456789abcdef") != "" {
		return fmt.Errorf("%w: issuer %q: want the issuer id in hex", ErrBadRequest, r.Issuer)
	}
	if !validID(r.Node) {
		return fmt.Errorf("%w: node name %q", ErrBadRequest, r.Node)
	}
	if _, err := netip.ParseAddrPort(r.HTTPAddr); err != nil {
		return fmt.Errorf("%w: http_addr %q: want ip:port", ErrBadRequest, r.HTTPAddr)
	}
	ir := s.issuers[r.Issuer]
	if ir == nil {
		ir = &issuerRecord{Issuer: r.Issuer}
		s.issuers[r.Issuer] = ir
	}
	ir.Node, ir.HTTPAddr = r.Node, r.HTTPAddr
	return nil
}

// validGatewayCerts returns the valid certificates of the gateways ids,
// each gateway's by serial, in one pass over the inventory however many
// gateways are asked for.
func (s *State) validGatewayCerts(ids map[string]bool) map[string][]*api.Certificate {
	out := map[string][]*api.Certificate{}
	for _, c := range s.certs {
		if ids[c.Gateway] && c.Kind == ca.KindGateway && c.Status == api.CertValid {
			out[c.Gateway] = append(out[c.Gateway], c)
		}
	}
	for _, certs := range out {
		sortBy(certs, func(c *api.Certificate) string { return c.Serial })
	}
	return out
}

func (s *State) issuersSorted() []*issuerRecord {
	out := make([]*issuerRecord, 0, len(s.issuers))
	for _, r := range s.issuers {
		out = append(out, r)
	}
	sortBy(out, func(r *issuerRecord) string { return r.Issuer })
	return out
}

// maxRecordBatch bounds the certificates in one CmdCertRecord (about
// 0.5 KiB each in the log).
const maxRecordBatch = 512

// certRecorder records issued certificates in the inventory in batches
// (see groupCommit), so that the raft commit, not one log entry and one
// fsync per certificate, bounds the issuance rate.
type certRecorder = groupCommit[api.Certificate]

// newCertRecorder records through n's raft log, as actor.
func newCertRecorder(n *Node, actor string) *certRecorder {
	return &certRecorder{max: maxRecordBatch, commit: func(ctx context.Context, certs []api.Certificate) error {
		_, err := n.submit(ctx, CmdCertRecord, &CertRecordRequest{Meta: n.meta(actor), Certs: certs})
		return err
	}}
}

// newRenewRecorder commits renewals in batches (CmdGatewayRenews), a
// lone one as CmdGatewayRenew. A batch that a leader's step-down leaves
// in doubt is settled (Node.submitSettled): when the whole network
// renews at once, the step-downs a saturated cluster has would otherwise
// throw away certificates already signed for hundreds of gateways, which
// then wait, reconnect and renew again.
func newRenewRecorder(n *Node) *groupCommit[GatewayRenewRequest] {
	return &groupCommit[GatewayRenewRequest]{max: maxRecordBatch, commit: func(ctx context.Context, rs []GatewayRenewRequest) error {
		serials := make([]string, len(rs))
		for i := range rs {
			serials[i] = rs[i].Cert.Serial
		}
		recorded := func(s *State) bool { return s.recorded(serials...) }
		if len(rs) == 1 {
			return n.submitSettled(ctx, CmdGatewayRenew, &rs[0], recorded)
		}
		return n.submitSettled(ctx, CmdGatewayRenews, &GatewayRenewsRequest{Meta: n.meta("node:" + n.cfg.Node), Renewals: rs}, recorded)
	}}
}

// isVerdict says whether err is the state machine refusing a command (as
// opposed to raft or the transport failing to commit it).
func isVerdict(err error) bool {
	return errors.Is(err, ErrBadRequest) || errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrForbidden)
}
