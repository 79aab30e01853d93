package controller

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/policy"
)

// Errors from the state machine that callers decide on.
var (
	ErrNotFound   = errors.New("not found")
	ErrConflict   = errors.New("conflict")
	ErrBadRequest = errors.New("bad request")
	ErrForbidden  = errors.New("forbidden")
)

// tokenRecord is a one-time enrollment token, kept only as a hash.
type tokenRecord struct {
	Gateway string `json:"gateway"`
	// Person and Role: an invitation, with which a person enrolls; with
	// KeySHA256 set, for that key only (SHA-256 of its SPKI, hex).
	Person    string `json:"person,omitempty"`
	Role      string `json:"role,omitempty"`
	KeySHA256 string `json:"key_sha256,omitempty"`
	// Reenroll: the token re-enrolls an enrolled gateway.
	Reenroll bool      `json:"reenroll,omitempty"`
	Hash     string    `json:"hash"`
	Expires  time.Time `json:"expires"`
	Used     bool      `json:"used"`
	// Cancelled: an invitation withdrawn before use, because its person
	// was revoked or enrolled with another one (Used is set too).
	Cancelled bool   `json:"cancelled,omitempty"`
	Issuer    string `json:"issuer"`
	// Requester asked for the token in a four-eyes request that Issuer
	// approved; empty for a one-step token.
	Requester string `json:"requester,omitempty"`
	// Enrolled is the serial of the certificate a gateway enrolled with
	// the token (absent in records made before it was kept): an
	// enrollment whose answer was lost is answered again for that
	// certificate's key only (Node.enrollAgain).
	Enrolled string `json:"enrolled,omitempty"`
}

// State is the replicated registry. Only the FSM writes it; readers take
// the read lock through the accessor methods.
type State struct {
	mu      sync.RWMutex
	index   uint64 // raft index of the last applied command
	overlay netip.Prefix
	// level is the cluster's level (controller/level.go; 0 before the
	// network is initialised, read as 1); written with mu held, read
	// without it (applyLocal, on every write).
	level     atomic.Int32
	agencies  map[string]*api.Agency
	gateways  map[string]*api.Gateway
	tokens    map[string]*tokenRecord // by hash
	policies  []api.Policy            // every published version, oldest first
	addrInUse map[netip.Addr]string   // overlay address -> gateway
	keyOwner  map[string]string       // WireGuard public key -> gateway (derived, rebuilt on restore)
	// usedBelow speeds up allocate: every overlay address from the first
	// up to it is in use (addresses are never released). Derived, never
	// snapshotted: invalid after a restore, when the scan starts over.
	usedBelow netip.Addr
	members   map[string]*api.Member // controller nodes by name
	// removed are the nodes taken out of the cluster, and when; only an
	// operator adds one back (a removed node does not join by itself).
	removed  map[string]time.Time
	people   map[string]*api.Person      // by name
	requests map[string]*request         // four-eyes requests by id
	audit    *auditLog                   // the hash chain, one entry per committed command
	certs    map[string]*api.Certificate // the certificate inventory by serial
	archive  *certArchive                // certificates that expired a while ago
	issuers  map[string]*issuerRecord    // intermediates: where they live, their CRLs
	// checkpoints are the signed heads of the audit chain, oldest first.
	checkpoints []api.AuditCheckpoint
	renewCall   *api.RenewCall // the last call on gateways to renew, if any

	applying uint64 // raft index of the command being applied

	// policyNames are the current policy's group and service names by
	// kind (policyNameOf), for the policy source they were read from.
	policyNames struct {
		source string
		kind   map[string]string
	}

	// views collects which gateways' part in the network map the applied
	// commands changed, for the view hub (see touch, in views.go).
	views viewChanges

	applied chan struct{} // closed and replaced whenever index moves
}

// newState returns an empty state whose audit chain spills to a file in
// spillDir ("" for os.TempDir()).
func newState(spillDir string) *State {
	return &State{
		audit:     newAuditLog(spillDir),
		agencies:  map[string]*api.Agency{},
		gateways:  map[string]*api.Gateway{},
		tokens:    map[string]*tokenRecord{},
		addrInUse: map[netip.Addr]string{},
		keyOwner:  map[string]string{},
		members:   map[string]*api.Member{},
		removed:   map[string]time.Time{},
		people:    map[string]*api.Person{},
		requests:  map[string]*request{},
		certs:     map[string]*api.Certificate{},
		archive:   newCertArchive(spillDir),
		issuers:   map[string]*issuerRecord{},
		applied:   make(chan struct{}),
	}
}

// close releases the state's files; only for a state nobody reads any
// more (a backup that was only checked).
func (s *State) close() {
	s.audit.close()
	s.archive.close()
}

// setIndex records the last applied index and wakes waitIndex; s.mu must
// be held for writing.
func (s *State) setIndex(i uint64) {
	s.index = i
	close(s.applied)
	s.applied = make(chan struct{})
}

// waitIndex returns once the state has applied index i, or ctx ends.
func (s *State) waitIndex(ctx context.Context, i uint64) error {
	for {
		s.mu.RLock()
		cur, ch := s.index, s.applied
		s.mu.RUnlock()
		if cur >= i {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for raft index %d (at %d): %w", i, cur, ctx.Err())
		case <-ch:
		}
	}
}

// Members returns the controller nodes' records sorted by name.
func (s *State) Members() []api.Member {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]api.Member, 0, len(s.members))
	for _, m := range s.membersSorted() {
		out = append(out, *m)
	}
	return out
}

// Member returns one controller node's record.
func (s *State) Member(node string) (api.Member, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m, ok := s.members[node]
	if !ok {
		return api.Member{}, false
	}
	return *m, true
}

// Index returns the raft index of the last applied command.
func (s *State) Index() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.index
}

// Overlay returns the overlay prefix.
func (s *State) Overlay() netip.Prefix {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.overlay
}

// Agencies returns every agency sorted by code.
func (s *State) Agencies() []api.Agency {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]api.Agency, 0, len(s.agencies))
	for _, a := range s.agenciesSorted() {
		out = append(out, *a)
	}
	return out
}

// Gateways returns every gateway sorted by id.
func (s *State) Gateways() []api.Gateway {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]api.Gateway, 0, len(s.gateways))
	for _, g := range s.gatewaysSorted() {
		out = append(out, copyGateway(g))
	}
	return out
}

// Gateway returns one gateway.
func (s *State) Gateway(id string) (api.Gateway, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	g, ok := s.gateways[id]
	if !ok {
		return api.Gateway{}, false
	}
	return copyGateway(g), true
}

func copyGateway(g *api.Gateway) api.Gateway {
	c := *g
	c.LANs = slices.Clone(g.LANs)
	if g.Report != nil {
		r := *g.Report
		c.Report = &r
	}
	return c
}

// Policy returns the current policy; ok is false before the first publication.
// PolicyHistory returns every published policy, oldest first.
func (s *State) PolicyHistory() []api.Policy {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.policies)
}

func (s *State) Policy() (api.Policy, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.policies) == 0 {
		return api.Policy{}, false
	}
	return s.policies[len(s.policies)-1], true
}

// Token returns the token record with the given hash.
func (s *State) token(hash string) (tokenRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.tokens[hash]
	if !ok {
		return tokenRecord{}, false
	}
	return *t, true
}

// The apply functions below run under the write lock, in raft order, and
// must be deterministic: no clock, no randomness, no I/O.

func (s *State) applyInitNetwork(r *InitNetworkRequest) error {
	if s.overlay.IsValid() {
		if s.overlay == r.OverlayPrefix {
			return nil
		}
		return fmt.Errorf("%w: overlay is already %s", ErrConflict, s.overlay)
	}
	if !r.OverlayPrefix.IsValid() || !r.OverlayPrefix.Addr().Is4() || r.OverlayPrefix.Bits() > 30 {
		return fmt.Errorf("%w: overlay prefix %s must be an IPv4 prefix of /30 or wider", ErrBadRequest, r.OverlayPrefix)
	}
	if r.Level > releaseLevel {
		return fmt.Errorf("the network is initialised at level %d and this node's release is of level %d: %w to the cluster's release", r.Level, releaseLevel, errUpgradeNode)
	}
	s.overlay, s.usedBelow = r.OverlayPrefix.Masked(), netip.Addr{}
	s.level.Store(max(s.level.Load(), int32(r.Level)))
	return nil
}

// applyAgencyUpsert is an import of one agency (controller/agency.go).
func (s *State) applyAgencyUpsert(r *AgencyUpsertRequest) error {
	return s.applyAgencyImport(&AgencyImportRequest{Meta: r.Meta, Agencies: []api.AgencyRow{{Code: r.Code, Name: r.Name, Parent: r.Parent}}})
}

func (s *State) applyGatewayAdd(r *GatewayAddRequest) error {
	if !validID(r.ID) {
		return fmt.Errorf("%w: gateway id %q: use 1-63 lowercase letters, digits and '-'", ErrBadRequest, r.ID)
	}
	if _, ok := s.gateways[r.ID]; ok {
		return fmt.Errorf("%w: gateway %s exists", ErrConflict, r.ID)
	}
	a, ok := s.agencies[r.Agency]
	if !ok {
		return fmt.Errorf("%w: agency %s is not registered", ErrBadRequest, r.Agency)
	}
	if a.Closed() && s.Level() >= 3 {
		// From level 3 (before it, nodes of earlier releases apply the
		// command without this check): a closed code has no gateways.
		return fmt.Errorf("%w: register the gateway under an active agency", closedErr(a))
	}
	if what := s.policyNameOf(r.ID); what != "" && s.Level() >= 3 {
		// From level 3: a gateway named like a policy's group or service
		// makes the policy invalid, and every view would stay as it was
		// until another is published.
		return fmt.Errorf("%w: gateway id %s is the name of a %s of the current policy: rules could not tell them apart; choose another id", ErrConflict, r.ID, what)
	}
	for _, p := range r.LANs {
		if !p.IsValid() || p != p.Masked() {
			return fmt.Errorf("%w: LAN prefix %s is not a network address", ErrBadRequest, p)
		}
	}
	s.gateways[r.ID] = &api.Gateway{
		ID: r.ID, Agency: r.Agency, Name: r.Name, Endpoint: r.Endpoint,
		LANs: slices.Clone(r.LANs), Status: api.StatusPending,
	}
	return nil
}

// policyNameOf says whether name is a group or a service of the current
// policy ("group", "service"; "" if neither). The names are read from the
// policy's source once (derived state, never snapshotted);
// a source that no longer parses names nothing.
func (s *State) policyNameOf(name string) string {
	if len(s.policies) == 0 {
		return ""
	}
	cur := s.policies[len(s.policies)-1]
	if s.policyNames.kind == nil || s.policyNames.source != cur.Source {
		s.policyNames.source, s.policyNames.kind = cur.Source, policyNames(cur.Source)
	}
	return s.policyNames.kind[name]
}

// policyNames maps the group and service names of a policy source to
// their kind ("group", "service"); a source that does not parse names
// nothing (it was checked in full where it was submitted).
func policyNames(source string) map[string]string {
	names := map[string]string{}
	if p, err := policy.Parse("policy.yaml", []byte(source)); err == nil {
		for _, g := range p.Groups {
			names[g.Name] = "group"
		}
		for _, sv := range p.Services {
			names[sv.Name] = "service"
		}
	}
	return names
}

// minLANBits is the widest LAN prefix a gateway may register: an agency's
// network, not a share of the address space.
const minLANBits = 8

// reservedNet is IPv4's reserved class E, never a LAN.
var reservedNet = netip.MustParsePrefix("240.0.0.0/4")

// applyGatewayRegister is applyGatewayAdd with the LAN rules checked
// here, in raft order, against the gateways as they stand at this index.
func (s *State) applyGatewayRegister(r *GatewayAddRequest) error {
	if err := s.lanProblems(r.LANs); err != nil {
		return err
	}
	return s.applyGatewayAdd(r)
}

// lanProblems says why a new gateway may not register lans: a gateway's
// LANs are the source addresses its peers' firewalls and WireGuard
// routes attribute to it alone, so they must be IPv4 networks (the
// firewall is IPv4 only) of unicast addresses, no wider than /8, outside
// the overlay and clear of the LANs of every other gateway in service
// (pending or enrolled). CmdGatewayRegister checks this in Apply
// (CmdGatewayAdd, of earlier releases, applies without it), so these
// rules are part of the state machine: a change to them (minLANBits,
// reservedNet) needs a new command type. s.mu held.
func (s *State) lanProblems(lans []netip.Prefix) error {
	var errs []error
	for i, p := range lans {
		a := p.Addr()
		switch {
		case !p.IsValid() || p != p.Masked():
			errs = append(errs, fmt.Errorf("LAN prefix %s is not a network address", p))
		case !a.Is4():
			errs = append(errs, fmt.Errorf("LAN prefix %s: only IPv4 networks (the gateways' firewall is IPv4)", p))
		case p.Bits() < minLANBits:
			errs = append(errs, fmt.Errorf("LAN prefix %s is wider than /%d: register the agency's own networks", p, minLANBits))
		case a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast() || a.IsUnspecified() || p.Overlaps(reservedNet):
			errs = append(errs, fmt.Errorf("LAN prefix %s is not a unicast network", p))
		case s.overlay.IsValid() && p.Overlaps(s.overlay):
			errs = append(errs, fmt.Errorf("LAN prefix %s overlaps the overlay network %s", p, s.overlay))
		}
		for _, q := range lans[:i] {
			if p.Overlaps(q) {
				errs = append(errs, fmt.Errorf("LAN prefixes %s and %s overlap", q, p))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrBadRequest, errors.Join(errs...))
	}
	if len(lans) == 0 {
		return nil
	}
	// One pass over the gateways in map order (sorting all their ids here
	// took 0.42 of the 0.67 CPU s that ten joins cost at 20,000
	// gateways); the clashes found are then named in id order, the same
	// on every node.
	var clashes []*api.Gateway
	for _, g := range s.gateways {
		if g.Status == api.StatusDecommissioned || g.Status == api.StatusRevoked {
			continue // its networks are free for the gateway that replaces it
		}
		if slices.ContainsFunc(g.LANs, func(q netip.Prefix) bool {
			return slices.ContainsFunc(lans, q.Overlaps)
		}) {
			clashes = append(clashes, g)
		}
	}
	if len(clashes) == 0 {
		return nil
	}
	sortBy(clashes, func(g *api.Gateway) string { return g.ID })
	for _, g := range clashes {
		for _, q := range g.LANs {
			for _, p := range lans {
				if p.Overlaps(q) {
					errs = append(errs, fmt.Errorf("LAN prefix %s overlaps %s of gateway %s", p, q, g.ID))
				}
			}
		}
	}
	return fmt.Errorf("%w: %w", ErrConflict, errors.Join(errs...))
}

func validID(id string) bool {
	if len(id) == 0 || len(id) > 63 || id[0] == '-' {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

func (s *State) applyTokenIssue(r *TokenIssueRequest) error {
	if err := s.canIssueToken(r.Gateway, r.Reenroll); err != nil {
		return err
	}
	if _, ok := s.tokens[r.TokenHash]; ok {
		return fmt.Errorf("%w: token exists", ErrConflict)
	}
	s.tokens[r.TokenHash] = &tokenRecord{Gateway: r.Gateway, Hash: r.TokenHash, Expires: r.Expires, Issuer: r.Actor, Reenroll: r.Reenroll}
	return nil
}

// checkToken says whether a token may enroll gateway at time now.
func checkToken(t *tokenRecord, ok bool, now time.Time) error {
	switch {
	case !ok:
		return fmt.Errorf("%w: unknown enrollment token", ErrForbidden)
	case t.Cancelled:
		return fmt.Errorf("%w: the token was cancelled (its person, or the officer who issued it, was revoked; or the person enrolled with another invitation)", ErrForbidden)
	case t.Used:
		return fmt.Errorf("%w: enrollment token was already used", ErrForbidden)
	case !now.Before(t.Expires):
		return fmt.Errorf("%w: enrollment token expired at %s", ErrForbidden, t.Expires.UTC().Format(time.RFC3339))
	}
	return nil
}

func (s *State) applyGatewayEnroll(r *GatewayEnrollRequest) error {
	t, ok := s.tokens[r.TokenHash]
	if err := checkToken(t, ok, r.At); err != nil {
		return err
	}
	if t.Gateway != r.Gateway {
		return fmt.Errorf("%w: token is bound to another gateway", ErrForbidden)
	}
	g, ok := s.gateways[r.Gateway]
	switch {
	case t.Reenroll && (!ok || g.Status != api.StatusEnrolled):
		return fmt.Errorf("%w: gateway %s is not enrolled: nothing to re-enroll", ErrConflict, r.Gateway)
	case !t.Reenroll && (!ok || g.Status != api.StatusPending):
		return fmt.Errorf("%w: gateway %s is not pending enrollment", ErrConflict, r.Gateway)
	}
	if t.Reenroll {
		if err := s.noPendingRevocation(g); err != nil {
			return err
		}
	}
	if r.PublicKey == "" {
		return fmt.Errorf("%w: enrollment of gateway %s without a WireGuard key", ErrBadRequest, r.Gateway)
	}
	if other, used := s.keyOwner[r.PublicKey]; used && other != g.ID {
		return fmt.Errorf("%w: WireGuard key is already used by gateway %s", ErrConflict, other)
	}
	if c := r.Cert; c != nil {
		if c.Serial != r.CertSerial || c.Kind != ca.KindGateway || c.Gateway != g.ID {
			return fmt.Errorf("%w: the certificate record is not gateway %s's certificate %s", ErrBadRequest, g.ID, r.CertSerial)
		}
		if err := s.checkCert(c); err != nil {
			return err
		}
	}
	// A re-enrollment keeps the gateway's address and replaces its
	// certificates and key.
	addr, replaced := g.OverlayIP, append([]string{g.CertSerial}, g.RenewedFrom...)
	if !t.Reenroll {
		var err error
		if addr, err = s.allocate(); err != nil {
			return err
		}
		replaced = nil
	}
	if c := r.Cert; c != nil {
		rec := *c
		// Who asked for and who approved the token are who asked for and
		// approved this certificate.
		rec.Requester, rec.Approver = cmp.Or(t.Requester, t.Issuer), t.Issuer
		s.addCert(rec, r.At, r.Actor)
	}
	t.Used, t.Enrolled = true, r.CertSerial
	s.addrInUse[addr] = g.ID
	g.OverlayIP = addr
	if g.PublicKey != "" && g.PublicKey != r.PublicKey {
		delete(s.keyOwner, g.PublicKey)
	}
	g.PublicKey = r.PublicKey
	s.keyOwner[r.PublicKey] = g.ID
	if r.Endpoint != "" {
		g.Endpoint = r.Endpoint
	}
	g.CertSerial, g.RenewedFrom = r.CertSerial, nil
	g.CertExpires = r.CertExpires
	g.Status = api.StatusEnrolled
	for _, serial := range replaced {
		if c := s.certs[normSerial(serial)]; c != nil && c.Kind == ca.KindGateway && c.Gateway == g.ID && c.Status == api.CertValid {
			s.revoke([]*api.Certificate{c}, "", int(ca.ReasonSuperseded), r.At, r.Actor, s.applying)
		}
	}
	return nil
}

// allocate returns the lowest free host address of the overlay.
func (s *State) allocate() (netip.Addr, error) {
	if !s.overlay.IsValid() {
		return netip.Addr{}, fmt.Errorf("%w: the overlay network is not initialised", ErrConflict)
	}
	// The lowest free address, as a scan from the first would find it.
	start := s.overlay.Addr().Next()
	if s.usedBelow.IsValid() && s.overlay.Contains(s.usedBelow) && start.Less(s.usedBelow) {
		start = s.usedBelow
	}
	for a := start; s.overlay.Contains(a); a = a.Next() {
		if !s.overlay.Contains(a.Next()) {
			break // broadcast address
		}
		if _, used := s.addrInUse[a]; !used {
			s.usedBelow = a
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: overlay %s is full", ErrConflict, s.overlay)
}

func (s *State) applyPolicyPublish(r *PolicyPublishRequest) error {
	if err := s.policyClash(r.Source); err != nil {
		return err
	}
	s.publish(r.Source, r.Actor, r.At)
	return nil
}

// policyClash refuses, from level 3, a policy with a group or service
// named as a gateway is: the node that took the publication checked the
// whole policy against the registry it had, and a gateway registered
// since, in raft order before the publication, would make it one that
// does not compile (every view would stay as it was). Before level 3,
// nodes of earlier releases publish it as it comes.
func (s *State) policyClash(source string) error {
	if s.Level() < 3 {
		return nil
	}
	names := policyNames(source)
	for _, name := range slices.Sorted(maps.Keys(names)) {
		if _, ok := s.gateways[name]; ok {
			return fmt.Errorf("%w: %s %s: name is also a gateway id: rename the %[2]s", ErrConflict, names[name], name)
		}
	}
	return nil
}

func (s *State) publish(source, actor string, at time.Time) uint64 {
	version := uint64(1)
	if n := len(s.policies); n > 0 {
		version = s.policies[n-1].Version + 1
	}
	s.policies = append(s.policies, api.Policy{Version: version, Source: source, Published: at, Actor: actor})
	return version
}

func (s *State) applyGatewayReport(r *GatewayReportRequest) error {
	g, ok := s.gateways[r.Gateway]
	if !ok {
		return fmt.Errorf("%w: gateway %s", ErrNotFound, r.Gateway)
	}
	rep := r.Report
	rep.At = r.At
	g.Report = &rep
	return nil
}

// applyGatewayRefreshes applies a node's held refreshes (reports that
// changed nothing but their time when the node took them), all or none:
// each moves the report's times on, only if it is newer than the report
// the gateway has and says the same (a report committed at once may have
// overtaken it).
func (s *State) applyGatewayRefreshes(r *GatewayReportsRequest) error {
	if err := s.checkReports(r, "report refreshes"); err != nil {
		return err
	}
	for i := range r.Reports {
		rep := &r.Reports[i]
		g := s.gateways[rep.Gateway]
		switch cur := g.Report; {
		case cur == nil:
			s.applyGatewayReport(rep)
		case cur.At.Before(rep.At) && sameReport(cur, rep.Report):
			// Only the times move: what the report says stays that of
			// the last report committed (a refresh taken on another node
			// whose clock runs ahead carries nothing newer).
			next := *cur
			next.At, next.LastHandshake = rep.At, rep.Report.LastHandshake
			g.Report = &next
		}
	}
	return nil
}

// gatewayReport returns a copy of gateway id's last report; nil if it
// has none or is not registered.
func (s *State) gatewayReport(id string) *api.Report {
	s.mu.RLock()
	defer s.mu.RUnlock()
	g, ok := s.gateways[id]
	if !ok || g.Report == nil {
		return nil
	}
	rep := *g.Report
	return &rep
}

// applyGatewayReports applies a batch of reports, all or none.
func (s *State) applyGatewayReports(r *GatewayReportsRequest) error {
	if err := s.checkReports(r, "reports"); err != nil {
		return err
	}
	for i := range r.Reports {
		s.applyGatewayReport(&r.Reports[i])
	}
	return nil
}

// checkReports says whether a batch of reports (what, in errors) may
// apply: it is not empty and names only registered gateways.
func (s *State) checkReports(r *GatewayReportsRequest, what string) error {
	if len(r.Reports) == 0 {
		return fmt.Errorf("%w: an empty batch of %s", ErrBadRequest, what)
	}
	for i := range r.Reports {
		if _, ok := s.gateways[r.Reports[i].Gateway]; !ok {
			return fmt.Errorf("%w: gateway %s", ErrNotFound, r.Reports[i].Gateway)
		}
	}
	return nil
}

func (s *State) applyMemberUpsert(r *MemberUpsertRequest) error {
	if !validID(r.Node) {
		return fmt.Errorf("%w: node name %q: use 1-63 lowercase letters, digits and '-'", ErrBadRequest, r.Node)
	}
	for key, addr := range map[string]string{"raft_addr": r.RaftAddr, "api_addr": r.APIAddr} {
		if _, err := netip.ParseAddrPort(addr); err != nil {
			return fmt.Errorf("%w: %s %q: want ip:port", ErrBadRequest, key, addr)
		}
	}
	for _, m := range s.members {
		if m.Node != r.Node && (m.RaftAddr == r.RaftAddr || m.APIAddr == r.APIAddr) {
			return fmt.Errorf("%w: node %s already uses one of these addresses", ErrConflict, m.Node)
		}
	}
	if r.Report && s.Level() > 1 {
		// At level 1 a report is an upsert, as a release before levels
		// applies it: every node of the cluster applies it alike.
		m := s.members[r.Node]
		if m == nil || m.RaftAddr != r.RaftAddr || m.APIAddr != r.APIAddr {
			return fmt.Errorf("%w: node %s is not a member at these addresses: its release level is not recorded", ErrNotFound, r.Node)
		}
		m.Level = r.Level
		return nil
	}
	s.members[r.Node] = &api.Member{Node: r.Node, RaftAddr: r.RaftAddr, APIAddr: r.APIAddr, Level: r.Level}
	delete(s.removed, r.Node)
	return nil
}

func (s *State) applyMemberRemove(r *MemberRemoveRequest) error {
	if _, ok := s.members[r.Node]; !ok {
		return fmt.Errorf("%w: node %s", ErrNotFound, r.Node)
	}
	delete(s.members, r.Node)
	s.removed[r.Node] = r.At
	return nil
}

// wasRemoved says whether node was taken out of the cluster and not
// added back since, and when.
func (s *State) wasRemoved(node string) (time.Time, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	at, ok := s.removed[node]
	return at, ok
}

// request is a four-eyes request as the state keeps it.
type request struct {
	api.Request
	TTLDur     time.Duration `json:"ttl_ns,omitempty"`
	ReasonCode int           `json:"reason_code,omitempty"` // revocations
}

// People returns the registry of people sorted by name.
func (s *State) People() []api.Person {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]api.Person, 0, len(s.people))
	for _, p := range s.peopleSorted() {
		out = append(out, *p)
	}
	return out
}

// Person returns one person's record.
func (s *State) Person(name string) (api.Person, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p, ok := s.people[name]
	if !ok {
		return api.Person{}, false
	}
	return *p, true
}

// Requests returns the four-eyes requests, oldest first.
func (s *State) Requests() []api.Request {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]api.Request, 0, len(s.requests))
	for _, r := range s.requestsSorted() {
		out = append(out, r.Request)
	}
	return out
}

// Request returns one request.
func (s *State) Request(id string) (api.Request, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.requests[id]
	if !ok {
		return api.Request{}, false
	}
	return r.Request, true
}

var roles = []string{"operator", "officer", "auditor", "custodian"}

func (s *State) applyPersonUpsert(r *PersonUpsertRequest) error {
	if err := s.checkPersonUpsert(r); err != nil {
		return err
	}
	s.upsertPerson(r)
	return nil
}

// registration is the registration a person request asks for, made as m
// (the requester's to check it, the approver's to apply it).
func registration(m Meta, name, role, serial string) *PersonUpsertRequest {
	return &PersonUpsertRequest{Meta: m, Name: name, Role: role, Serial: serial, Status: api.PersonActive}
}

// checkPersonUpsert says whether a registration may apply.
func (s *State) checkPersonUpsert(r *PersonUpsertRequest) error {
	if err := checkPersonNameRole(r.Name, r.Role); err != nil {
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	if r.Serial == "" || strings.Trim(strings.ToLower(r.Serial), "0123456789abcdef") != "" {
		return fmt.Errorf("%w: serial %q: want the certificate serial in hex", ErrBadRequest, r.Serial)
	}
	if r.Status != api.PersonActive && r.Status != api.PersonRevoked {
		return fmt.Errorf("%w: status %q: want active or revoked", ErrBadRequest, r.Status)
	}
	if r.Status == api.PersonActive && slices.Contains(s.revokedSerialsOf(r.Name), normSerial(r.Serial)) {
		return fmt.Errorf("%w: certificate %s of %s was revoked; register a new certificate", ErrConflict, r.Serial, r.Name)
	}
	if c := s.certs[normSerial(r.Serial)]; r.Status == api.PersonActive && c != nil && c.Status == api.CertRevoked {
		return fmt.Errorf("%w: certificate %s is revoked in the inventory; register a new certificate", ErrConflict, r.Serial)
	}
	return nil
}

// revokedSerialsOf returns the serials of name's revoked certificates:
// those its record keeps and its current one, if revoked. A revoked
// certificate stays revoked: registering another serial in between does
// not bring it back.
func (s *State) revokedSerialsOf(name string) []string {
	old, ok := s.people[name]
	if !ok {
		return nil
	}
	revoked := slices.Clone(old.RevokedSerials)
	if old.Status == api.PersonRevoked && !slices.Contains(revoked, normSerial(old.Serial)) {
		revoked = append(revoked, normSerial(old.Serial))
	}
	return revoked
}

// upsertPerson applies a checked registration or revocation.
func (s *State) upsertPerson(r *PersonUpsertRequest) {
	serial := strings.ToLower(r.Serial)
	if r.Status == api.PersonRevoked {
		// The serial named, in the inventory too, so that CRLs and OCSP
		// say so; and whatever the person holds now, which a renewal
		// since the revocation was asked for may have changed.
		s.revokePersonCert(serial, ca.ReasonPrivilegeWithdrawn, r.At, r.Actor)
		if old := s.people[r.Name]; old != nil && old.Status == api.PersonActive {
			old.Status = api.PersonRevoked
			s.personRevoked(old, r.At, r.Actor)
		}
	}
	revoked := s.revokedSerialsOf(r.Name)
	if r.Status == api.PersonRevoked && !slices.Contains(revoked, normSerial(serial)) {
		revoked = append(revoked, normSerial(serial))
	}
	var former []string
	if old := s.people[r.Name]; old != nil {
		former = old.FormerRoles
		if old.Role != r.Role && !slices.Contains(former, old.Role) {
			former = append(slices.Clone(former), old.Role)
		}
	}
	s.people[r.Name] = &api.Person{Name: r.Name, Role: r.Role, Serial: serial, Status: r.Status, RevokedSerials: revoked, FormerRoles: former}
}

// checkPersonNameRole says what is wrong with a person's name and role.
func checkPersonNameRole(name, role string) error {
	var errs []error
	if !validPersonName(name) {
		errs = append(errs, fmt.Errorf("person %q: a name is 1-63 letters, digits, '.', '_' and '-'", name))
	}
	if !slices.Contains(roles, role) {
		errs = append(errs, fmt.Errorf("person %q: role %q: want one of %v", name, role, roles))
	}
	return errors.Join(errs...)
}

func validPersonName(n string) bool {
	if n == "" || len(n) > 63 {
		return false
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// whoMay says which roles may ask for and approve each kind of request.
var requesters = map[string][]string{
	api.RequestToken:  {"operator", "officer"},
	api.RequestPolicy: {"operator", "officer"},
	api.RequestRevoke: {"operator", "officer"},
	// Restoring a backup replaces everything: only officers ask.
	api.RequestRestore: {"officer"},
	api.RequestPerson:  {"officer"},
	api.RequestInvite:  {"officer"},
}

func (s *State) applyRequestCreate(r *RequestCreateRequest) error {
	who, ok := requesters[r.Kind]
	if !ok {
		return fmt.Errorf("%w: request kind %q: want token, policy, revoke, restore, person or invite", ErrBadRequest, r.Kind)
	}
	if !slices.Contains(who, r.Role) {
		return fmt.Errorf("%w: role %q may not request %s", ErrForbidden, r.Role, r.Kind)
	}
	if r.ID == "" {
		return fmt.Errorf("%w: request without an id", ErrBadRequest)
	}
	if _, ok := s.requests[r.ID]; ok {
		return fmt.Errorf("%w: request %s exists", ErrConflict, r.ID)
	}
	switch r.Kind {
	case api.RequestToken:
		if err := s.canIssueToken(r.Gateway, r.Reenroll); err != nil {
			return err
		}
		if r.TTL <= 0 || r.TTL > maxTokenTTL {
			return fmt.Errorf("%w: ttl %s: want up to %s", ErrBadRequest, r.TTL, maxTokenTTL)
		}
	case api.RequestRevoke:
		if _, err := s.checkRevoke(r.Serial, r.Gateway, r.ReasonCode); err != nil {
			return err
		}
	case api.RequestPolicy:
		if strings.TrimSpace(r.PolicySource) == "" {
			return fmt.Errorf("%w: empty policy", ErrBadRequest)
		}
	case api.RequestRestore:
		if !isSHA256Hex(r.BackupSHA256) {
			return fmt.Errorf("%w: backup_sha256 %q: want the backup's SHA-256 in lowercase hex", ErrBadRequest, r.BackupSHA256)
		}
	case api.RequestPerson:
		if err := s.checkPersonUpsert(registration(r.Meta, r.PersonName, r.PersonRole, r.Serial)); err != nil {
			return err
		}
	case api.RequestInvite:
		if err := s.checkInvite(r.PersonName, r.PersonRole); err != nil {
			return err
		}
		// The approver gets the token: with the key named here, neither
		// officer can enroll a key of their own as the invitee.
		if !isSHA256Hex(r.KeySHA256) {
			return fmt.Errorf("%w: key_sha256 %q: an invite request names the invitee's key, the SHA-256 of its SubjectPublicKeyInfo in lowercase hex (govnetctl person key prints it)", ErrBadRequest, r.KeySHA256)
		}
		if r.TTL <= 0 || r.TTL > maxTokenTTL {
			return fmt.Errorf("%w: ttl %s: want up to %s", ErrBadRequest, r.TTL, maxTokenTTL)
		}
	}
	req := &request{Request: api.Request{
		ID: r.ID, Kind: r.Kind, Gateway: r.Gateway, PolicyName: r.PolicyName, PolicySource: r.PolicySource,
		Reason: r.Reason, Requester: r.Actor, Created: r.At, Status: api.RequestPending, Serial: r.Serial, BackupSHA256: r.BackupSHA256,
		PersonName: r.PersonName, PersonRole: r.PersonRole, KeySHA256: r.KeySHA256, Reenroll: r.Reenroll,
	}, TTLDur: r.TTL, ReasonCode: r.ReasonCode}
	if r.Kind == api.RequestRevoke {
		req.RevocationReason = ca.Reason(r.ReasonCode).String()
	}
	if r.TTL > 0 {
		req.TTL = r.TTL.String()
	}
	s.requests[r.ID] = req
	return nil
}

func isSHA256Hex(s string) bool {
	return len(s) == 64 && strings.Trim(s, "0123456789abcdef") == ""
}

// approvedRestore returns the id of a restore request for the backup whose
// SHA-256 is sum ("": for any backup) that an officer approved at most
// api.RestoreApprovalTTL before now.
func (s *State) approvedRestore(sum string, now time.Time) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	// Decided is the leader's clock, now this node's: a minute of skew
	// either way does not refuse a fresh approval.
	const skew = time.Minute
	// Oldest first: every node applying a restore picks the same request
	// when two were approved for one backup.
	for _, r := range s.requestsSorted() {
		if r.Kind == api.RequestRestore && r.Status == api.RequestApproved && (sum == "" || r.BackupSHA256 == sum) && r.Restored == 0 &&
			!r.Decided.After(now.Add(skew)) && now.Sub(r.Decided) <= api.RestoreApprovalTTL {
			return r.ID, true
		}
	}
	return "", false
}

// noPendingRevocation refuses a re-enrollment of g while a revocation
// request naming g or one of the certificates it holds waits for approval
// (the re-enrollment would revoke those certificates from under it).
func (s *State) noPendingRevocation(g *api.Gateway) error {
	for _, r := range s.requestsSorted() {
		if r.Status == api.RequestPending && r.Kind == api.RequestRevoke &&
			(r.Gateway == g.ID || r.Serial != "" && (normSerial(r.Serial) == g.CertSerial || slices.Contains(g.RenewedFrom, normSerial(r.Serial)))) {
			return fmt.Errorf("%w: gateway %s: a revocation of it is waiting for approval (request %s): decide that first", ErrConflict, g.ID, r.ID)
		}
	}
	return nil
}

// canIssueToken says whether gateway may get an enrollment token: a
// pending gateway, or for a re-enrollment an enrolled one.
func (s *State) canIssueToken(gateway string, reenroll bool) error {
	g, ok := s.gateways[gateway]
	switch {
	case !ok:
		return fmt.Errorf("%w: gateway %s", ErrNotFound, gateway)
	case reenroll && g.Status != api.StatusEnrolled:
		return fmt.Errorf("%w: gateway %s is %s: only an enrolled gateway re-enrolls", ErrConflict, g.ID, g.Status)
	case reenroll:
		return s.noPendingRevocation(g)
	case g.Status == api.StatusEnrolled:
		return fmt.Errorf("%w: gateway %s is enrolled: a token for it re-enrolls it (a new certificate and WireGuard key, the same address): ask for a re-enrollment token", ErrConflict, g.ID)
	case g.Status != api.StatusPending:
		return fmt.Errorf("%w: gateway %s is %s, tokens are issued only to pending gateways", ErrConflict, g.ID, g.Status)
	}
	return nil
}

func (s *State) canRevoke(gateway string) error {
	g, ok := s.gateways[gateway]
	if !ok {
		return fmt.Errorf("%w: gateway %s", ErrNotFound, gateway)
	}
	if g.Status != api.StatusEnrolled && g.Status != api.StatusPending {
		return fmt.Errorf("%w: gateway %s is %s", ErrConflict, g.ID, g.Status)
	}
	return nil
}

func (s *State) applyRequestDecide(r *RequestDecideRequest) error {
	req, ok := s.requests[r.ID]
	if !ok {
		return fmt.Errorf("%w: request %s", ErrNotFound, r.ID)
	}
	if req.Status != api.RequestPending {
		return fmt.Errorf("%w: request %s is already %s", ErrConflict, r.ID, req.Status)
	}
	if r.Role != "officer" {
		return fmt.Errorf("%w: only an officer decides requests", ErrForbidden)
	}
	if r.Actor == req.Requester {
		return fmt.Errorf("%w: %s may not decide their own request (four-eyes)", ErrForbidden, r.Actor)
	}
	if r.Approve {
		// Check everything before changing anything.
		var revoke []*api.Certificate
		switch req.Kind {
		case api.RequestToken, api.RequestInvite:
			if req.Kind == api.RequestToken {
				if err := s.canIssueToken(req.Gateway, req.Reenroll); err != nil {
					return err
				}
			}
			if r.TokenHash == "" {
				return fmt.Errorf("%w: approving a token request needs the token's hash", ErrBadRequest)
			}
			if _, ok := s.tokens[r.TokenHash]; ok {
				return fmt.Errorf("%w: token exists", ErrConflict)
			}
		case api.RequestRevoke:
			var err error
			if revoke, err = s.checkRevoke(req.Serial, req.Gateway, req.ReasonCode); err != nil {
				return err
			}
		case api.RequestPerson:
			if err := s.checkPersonUpsert(registration(r.Meta, req.PersonName, req.PersonRole, req.Serial)); err != nil {
				return err
			}
		case api.RequestPolicy:
			if err := s.policyClash(req.PolicySource); err != nil {
				return err
			}
		}
		switch req.Kind {
		case api.RequestToken:
			s.tokens[r.TokenHash] = &tokenRecord{Gateway: req.Gateway, Hash: r.TokenHash, Expires: r.At.Add(req.TTLDur), Issuer: r.Actor, Requester: req.Requester, Reenroll: req.Reenroll}
		case api.RequestInvite:
			s.tokens[r.TokenHash] = &tokenRecord{Person: req.PersonName, Role: req.PersonRole, KeySHA256: req.KeySHA256,
				Hash: r.TokenHash, Expires: r.At.Add(req.TTLDur), Issuer: r.Actor, Requester: req.Requester}
		case api.RequestPolicy:
			req.PolicyVersion = s.publish(req.PolicySource, r.Actor, r.At)
		case api.RequestRevoke:
			s.revokeChecked(revoke, req.Serial, req.Gateway, req.ReasonCode, r.At, r.Actor)
		case api.RequestPerson:
			s.upsertPerson(registration(r.Meta, req.PersonName, req.PersonRole, req.Serial))
		}
		req.Status = api.RequestApproved
	} else {
		req.Status = api.RequestRejected
	}
	req.Approver, req.Decided = r.Actor, r.At
	return nil
}

func (s *State) peopleSorted() []*api.Person {
	out := make([]*api.Person, 0, len(s.people))
	for _, p := range s.people {
		out = append(out, p)
	}
	sortBy(out, func(p *api.Person) string { return p.Name })
	return out
}

func (s *State) requestsSorted() []*request {
	out := make([]*request, 0, len(s.requests))
	for _, r := range s.requests {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *request) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// auditFields are the parts of any command that an audit entry names.
type auditFields struct {
	Actor   string    `json:"actor"`
	At      time.Time `json:"at"`
	Gateway string    `json:"gateway"`
	Code    string    `json:"code"`
	Node    string    `json:"node"`
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Serial  string    `json:"serial"`
	Issuer  string    `json:"issuer"`
	// A batch of renewals names every gateway it renews.
	Renewals []struct {
		Gateway string `json:"gateway"`
	} `json:"renewals"`
	// An archive command names every certificate it names.
	Serials []string `json:"serials"`
}

// auditEntry prepares the entry for a command about to be applied (the
// actor's role is the one it held when it acted). Deterministic: it
// reads only the command and the state.
func (s *State) auditEntry(index uint64, t CommandType, data []byte) api.AuditEntry {
	var f auditFields
	if t.packed() {
		m, _ := packedMeta(data[1:]) // a batch names no one object
		f.Actor, f.At = m.Actor, m.At
	} else {
		_ = json.Unmarshal(data[1:], &f) // a command that does not decode is refused anyway
	}
	role := ""
	switch {
	case strings.HasPrefix(f.Actor, "node:"):
		role = "node"
	case strings.HasPrefix(f.Actor, "gateway:"):
		role = "gateway"
	default:
		if p, ok := s.people[f.Actor]; ok {
			role = p.Role
		}
	}
	object := f.Gateway
	for _, o := range []string{f.Code, f.Node, f.ID, f.Name, f.Serial, f.Issuer} {
		if object == "" {
			object = o
		}
	}
	if object == "" && len(f.Renewals) > 0 {
		ids := make([]string, len(f.Renewals))
		for i, r := range f.Renewals {
			ids[i] = r.Gateway
		}
		object = strings.Join(ids, ",")
	}
	if object == "" && len(f.Serials) > 0 {
		object = strings.Join(f.Serials, ",")
	}
	if s.Level() >= 3 {
		object = agencyObject(t, data[1:], object)
	}
	sum := sha256.Sum256(data)
	return api.AuditEntry{RaftIndex: index, At: f.At.UTC(), Actor: f.Actor, Role: role, Action: t.String(), Object: object, RequestSHA256: hex.EncodeToString(sum[:])}
}

// agencyObject is the object of a merge's or a re-parenting's audit entry
// from level 3 on: the codes it closed or the new parent, which the chain
// named only by the request's digest before ("000.00.00.H29 merged from
// 000.00.00.H01,000.00.00.H05", "000.12.04.H29 under 000.00.05.H29").
// Other commands keep object.
func agencyObject(t CommandType, body []byte, object string) string {
	switch t {
	case CmdAgencyMerge:
		var r AgencyMergeRequest
		if json.Unmarshal(body, &r) == nil && len(r.Sources) > 0 {
			return r.Code + " merged from " + strings.Join(r.Sources, ",")
		}
	case CmdAgencyReparent:
		var r AgencyReparentRequest
		if json.Unmarshal(body, &r) == nil && r.Parent != "" {
			return r.Code + " under " + r.Parent
		}
	}
	return object
}

// appendAudit adds e to the chain. An error means this node can no longer
// keep its replicated state (its disk failed or is full).
func (s *State) appendAudit(e api.AuditEntry) error {
	e.Seq, e.Prev = s.audit.len()+1, s.audit.head.Hash
	e.Hash = e.ComputeHash()
	return s.audit.append(e)
}

// Audit returns the chain's entries with seq > since.
func (s *State) Audit(since uint64) ([]api.AuditEntry, error) {
	var out []api.AuditEntry
	err := eachAuditLine(s.AuditLines(since), func(line []byte) error {
		var e api.AuditEntry
		if err := json.Unmarshal(line, &e); err != nil {
			return fmt.Errorf("audit chain: entry %d: %w", since+uint64(len(out))+1, err)
		}
		out = append(out, e)
		return nil
	})
	return out, err
}

// AuditLines returns the chain's entries with seq > since as JSON lines,
// one api.AuditEntry each.
func (s *State) AuditLines(since uint64) io.Reader {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.audit.lines(since)
}

// AuditHead returns the last entry; ok is false while the chain is empty.
func (s *State) AuditHead() (api.AuditEntry, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.audit.head, s.audit.len() > 0
}
