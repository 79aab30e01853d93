package controller

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/govnet/govnet/agency"
	"github.com/govnet/govnet/api"
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
	Gateway string    `json:"gateway"`
	Hash    string    `json:"hash"`
	Expires time.Time `json:"expires"`
	Used    bool      `json:"used"`
	Issuer  string    `json:"issuer"`
}

// State is the replicated registry. Only the FSM writes it; readers take
// the read lock through the accessor methods.
type State struct {
	mu        sync.RWMutex
	index     uint64 // raft index of the last applied command
	overlay   netip.Prefix
	agencies  map[string]*api.Agency
	gateways  map[string]*api.Gateway
	tokens    map[string]*tokenRecord // by hash
	policies  []api.Policy            // every published version, oldest first
	addrInUse map[netip.Addr]string   // overlay address -> gateway
}

func newState() *State {
	return &State{
		agencies:  map[string]*api.Agency{},
		gateways:  map[string]*api.Gateway{},
		tokens:    map[string]*tokenRecord{},
		addrInUse: map[netip.Addr]string{},
	}
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
	s.overlay = r.OverlayPrefix.Masked()
	return nil
}

func (s *State) applyAgencyUpsert(r *AgencyUpsertRequest) error {
	code, err := agency.Parse(r.Code)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	if strings.TrimSpace(r.Name) == "" {
		return fmt.Errorf("%w: agency %s needs a name", ErrBadRequest, r.Code)
	}
	a := &api.Agency{Code: code.String(), Name: r.Name, Level: code.Level().String()}
	if p, ok := code.Parent(); ok {
		if _, ok := s.agencies[p.String()]; !ok {
			return fmt.Errorf("%w: parent agency %s of %s is not registered", ErrBadRequest, p, code)
		}
		a.Parent = p.String()
	}
	s.agencies[a.Code] = a
	return nil
}

func (s *State) applyGatewayAdd(r *GatewayAddRequest) error {
	if !validID(r.ID) {
		return fmt.Errorf("%w: gateway id %q: use 1-63 lowercase letters, digits and '-'", ErrBadRequest, r.ID)
	}
	if _, ok := s.gateways[r.ID]; ok {
		return fmt.Errorf("%w: gateway %s exists", ErrConflict, r.ID)
	}
	if _, ok := s.agencies[r.Agency]; !ok {
		return fmt.Errorf("%w: agency %s is not registered", ErrBadRequest, r.Agency)
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
	g, ok := s.gateways[r.Gateway]
	if !ok {
		return fmt.Errorf("%w: gateway %s", ErrNotFound, r.Gateway)
	}
	if g.Status != api.StatusPending {
		return fmt.Errorf("%w: gateway %s is %s, tokens are issued only to pending gateways", ErrConflict, g.ID, g.Status)
	}
	if _, ok := s.tokens[r.TokenHash]; ok {
		return fmt.Errorf("%w: token exists", ErrConflict)
	}
	s.tokens[r.TokenHash] = &tokenRecord{Gateway: r.Gateway, Hash: r.TokenHash, Expires: r.Expires, Issuer: r.Actor}
	return nil
}

// checkToken says whether a token may enroll gateway at time now.
func checkToken(t *tokenRecord, ok bool, now time.Time) error {
	switch {
	case !ok:
		return fmt.Errorf("%w: unknown enrollment token", ErrForbidden)
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
	if !ok || g.Status != api.StatusPending {
		return fmt.Errorf("%w: gateway %s is not pending enrollment", ErrConflict, r.Gateway)
	}
	for _, other := range s.gateways {
		if other.PublicKey == r.PublicKey && other.ID != g.ID {
			return fmt.Errorf("%w: WireGuard key is already used by gateway %s", ErrConflict, other.ID)
		}
	}
	addr, err := s.allocate()
	if err != nil {
		return err
	}
	t.Used = true
	s.addrInUse[addr] = g.ID
	g.OverlayIP = addr
	g.PublicKey = r.PublicKey
	if r.Endpoint != "" {
		g.Endpoint = r.Endpoint
	}
	g.CertSerial = r.CertSerial
	g.CertExpires = r.CertExpires
	g.Status = api.StatusEnrolled
	return nil
}

// allocate returns the lowest free host address of the overlay.
func (s *State) allocate() (netip.Addr, error) {
	if !s.overlay.IsValid() {
		return netip.Addr{}, fmt.Errorf("%w: the overlay network is not initialised", ErrConflict)
	}
	for a := s.overlay.Addr().Next(); s.overlay.Contains(a); a = a.Next() {
		if !s.overlay.Contains(a.Next()) {
			break // broadcast address
		}
		if _, used := s.addrInUse[a]; !used {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: overlay %s is full", ErrConflict, s.overlay)
}

func (s *State) applyPolicyPublish(r *PolicyPublishRequest) error {
	version := uint64(1)
	if n := len(s.policies); n > 0 {
		version = s.policies[n-1].Version + 1
	}
	s.policies = append(s.policies, api.Policy{Version: version, Source: r.Source, Published: r.At, Actor: r.Actor})
	return nil
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
