package controller

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/policy"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Request body limits.
const (
	maxBody       = 64 << 10
	maxPolicyBody = 4 << 20
	maxTokenTTL   = 7 * 24 * time.Hour
)

// heartbeat keeps idle watch streams alive through middleboxes and lets
// either side notice a dead peer.
const heartbeat = 15 * time.Second

func (n *Node) serve() error {
	ln, err := net.Listen("tcp", n.cfg.APIAddr)
	if err != nil {
		return fmt.Errorf("api listen: %w", err)
	}
	ln = n.limitConns(ln)
	n.ln = ln
	n.srv = &http.Server{
		Handler:           n.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		// A connection with no request in flight is closed after this
		// (gateway streams, chosen by ALPN, are not served by it).
		IdleTimeout: 2 * time.Minute,
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS13,
			GetCertificate: n.getCert,
		},
	}
	// Client certificates are optional (handlers decide) and verified by
	// n.verifier, which checks each node's intermediate against the P-384
	// root once rather than on every handshake.
	n.verifier.ServerConfig(n.srv.TLSConfig)
	// Gateways' streams are chosen by ALPN (stream.go). A TLSNextProto
	// map without h2 is net/http's old way to turn HTTP/2 off, so the
	// protocols are set explicitly: h2 and http/1.1 join the ALPN list.
	n.srv.TLSConfig.NextProtos = []string{api.StreamProtoRenew, api.StreamProto, "h2", "http/1.1"}
	n.srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){api.StreamProtoRenew: n.serveStream, api.StreamProto: n.serveStream}
	n.srv.Protocols = new(http.Protocols)
	n.srv.Protocols.SetHTTP1(true)
	n.srv.Protocols.SetHTTP2(true)
	n.srv.RegisterOnShutdown(n.streams.closeAll)
	// The handshake happens before http.Server takes the connection (see
	// handshakeListener), with the same timeout it would give it.
	hl := newHandshakeListener(ln, n.srv.TLSConfig, n.srv.ReadHeaderTimeout, n.log)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.srv.Serve(hl); ignoreClosed(err) != nil {
			n.log.Error("api server", "err", err)
		}
	}()
	n.log.Info("api listening", "addr", ln.Addr().String())
	return nil
}

// Who may call a route (checked by its handler; apiRoute.access states it
// for the tests that walk the table).
const (
	byAnyone       = "anyone"         // health, readiness, the root certificate
	byToken        = "token"          // a one-time token in the body is the credential
	byGateway      = "gateway"        // an enrolled gateway's certificate
	byPerson       = "person"         // a registered person's certificate, of a role the handler names
	byPersonOrNode = "person or node" // an operator, or a node adding itself
	byNode         = "node"           // a member node of the cluster forwarding to the leader
)

// apiRoute is one route of the API: its pattern, who may call it, and the
// largest request body it takes. Every route is in routeTable, and the
// body limit is enforced before its handler runs (limitBody).
type apiRoute struct {
	pattern string
	access  string
	maxBody int64
	h       http.HandlerFunc
}

func (n *Node) routes() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range n.routeTable() {
		mux.HandleFunc(rt.pattern, limitBody(rt.maxBody, rt.h))
	}
	return n.limits.middleware(n.whenCaughtUp(mux))
}

// limitBody refuses a request whose declared body is larger than limit
// (413, before any check of the caller: nothing of it is read) and caps
// what the handler can read of the body at limit.
func limitBody(limit int64, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > limit {
			// An HTTP/1.1 connection is closed after the answer:
			// net/http would otherwise read (and discard) up to 256
			// KiB of the body first. An HTTP/2 stream is reset on its
			// own; "Connection: close" there would end the whole
			// connection and every other request on it.
			if r.ProtoMajor == 1 {
				w.Header().Set("Connection", "close")
			}
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", limit))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		h(w, r)
	}
}

// routeTable is every route of the API. A route that takes no body, or
// a small JSON one, is limited to maxBody.
func (n *Node) routeTable() []apiRoute {
	anyone := []string{ca.RoleOperator, ca.RoleOfficer, ca.RoleAuditor}
	metrics := n.metrics.handler()
	return []apiRoute{
		{"GET /healthz", byAnyone, maxBody, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) }},
		{"GET /readyz", byAnyone, maxBody, n.handleReady},
		{"GET /v1/ca/root", byAnyone, maxBody, n.handleRoot},
		{"POST /v1/enroll", byToken, maxBody, n.handleEnroll},
		{"GET /v1/watch", byGateway, maxBody, n.gateway(n.handleWatch)},
		{"POST /v1/report", byGateway, maxBody, n.gateway(n.handleReport)},
		{"POST /v1/renew", byGateway, maxBody, n.handleRenew}, // admits the certificate before the current one too
		{"GET /v1/agencies", byPerson, maxBody, n.person(anyone, n.handleAgencies)},
		{"POST /v1/agencies", byPerson, maxBody, n.person([]string{ca.RoleOperator}, n.handleAgencyAdd)},
		{"POST /v1/agencies/import", byPerson, maxPolicyBody, n.person([]string{ca.RoleOperator}, n.handleAgencyImport)},
		{"POST /v1/agencies/merge", byPerson, maxBody, n.person([]string{ca.RoleOperator}, n.handleAgencyMerge)},
		{"POST /v1/agencies/{code}/reparent", byPerson, maxBody, n.person([]string{ca.RoleOperator}, n.handleAgencyReparent)},
		{"POST /v1/agencies/{code}/close", byPerson, maxBody, n.person([]string{ca.RoleOperator}, n.handleAgencyClose)},
		{"POST /v1/gateways/{id}/decommission", byPerson, maxBody, n.person([]string{ca.RoleOfficer}, n.handleDecommission)},
		{"GET /v1/gateways", byPerson, maxBody, n.person(anyone, n.handleGateways)},
		{"GET /v1/gateways/{id}", byPerson, maxBody, n.person(anyone, n.handleGateway)},
		{"POST /v1/gateways", byPerson, maxBody, n.person([]string{ca.RoleOperator}, n.handleGatewayAdd)},
		{"POST /v1/gateways/{id}/token", byPerson, maxBody, n.person([]string{ca.RoleOfficer}, n.handleToken)},
		{"GET /v1/policy", byPerson, maxBody, n.person(anyone, n.handlePolicy)},
		{"GET /v1/cluster/status", byPerson, maxBody, n.person(anyone, n.handleClusterStatus)},
		{"PUT /v1/policy", byPerson, maxPolicyBody, n.person([]string{ca.RoleOfficer}, n.handlePolicyPublish)},
		{"GET /v1/policy/history", byPerson, maxBody, n.person(anyone, n.handlePolicyHistory)},
		{"POST /v1/policy/plan", byPerson, maxPolicyBody, n.person(anyone, n.handlePolicyPlan)},
		{"GET /v1/certificates", byPerson, maxBody, n.person(anyone, n.handleCertificates)},
		{"GET /v1/certificates/{serial}", byPerson, maxBody, n.person(anyone, n.handleCertificate)},
		{"POST /v1/certificates/renew-all", byPerson, maxBody, n.person([]string{ca.RoleOfficer}, n.handleRenewAll)},
		{"GET /v1/certificates/renew-all", byPerson, maxBody, n.person(anyone, n.handleRenewAllStatus)},
		{"POST /v1/crl/root", byPerson, maxRootCRL, n.person([]string{ca.RoleOfficer}, n.handleRootCRLPublish)},
		{"POST /v1/revoke", byPerson, maxBody, n.person([]string{ca.RoleOfficer}, n.handleRevoke)},
		{"GET /v1/reports/coverage", byPerson, maxBody, n.person(anyone, n.handleCoverage)},

		{"POST /v1/cluster/members", byPersonOrNode, maxBody, n.handleJoin},
		{"DELETE /v1/cluster/members/{node}", byPerson, maxBody, n.person([]string{ca.RoleOperator}, n.handleRemove)},
		{"GET /v1/cluster/snapshot", byPerson, maxBody, n.person([]string{ca.RoleOperator, ca.RoleAuditor}, n.handleSnapshotSave)},
		{"POST /v1/cluster/snapshot", byPerson, maxSnapshotBody, n.person([]string{ca.RoleOfficer}, n.handleSnapshotRestore)},

		{"GET /v1/people", byPerson, maxBody, n.person(anyone, n.handlePeople)},
		{"POST /v1/people", byPerson, maxBody, n.person([]string{ca.RoleOfficer}, n.handlePersonAdd)},
		{"POST /v1/people/{name}/revoke", byPerson, maxBody, n.person([]string{ca.RoleOfficer}, n.handlePersonRevoke)},
		{"POST /v1/people/{name}/invite", byPerson, maxBody, n.person([]string{ca.RoleOfficer}, n.handleInvite)},
		{"POST /v1/people/enroll", byToken, maxBody, n.handlePersonEnroll}, // the invitation's token is the credential
		{"POST /v1/people/renew", byPerson, maxBody, n.handlePersonRenew},  // any registered person, with their own certificate
		{"GET /v1/audit", byPerson, maxBody, n.person([]string{ca.RoleAuditor, ca.RoleOfficer}, n.handleAudit)},
		// Prometheus scrapes with an operator's or an auditor's certificate:
		// the series say how many gateways, certificates and revocations
		// there are, which an unauthenticated caller has no business knowing.
		{"GET /metrics", byPerson, maxBody, n.person([]string{ca.RoleOperator, ca.RoleAuditor}, func(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
			metrics.ServeHTTP(w, r)
		})},
		{"POST /v1/audit/checkpoint", byPerson, maxBody, n.person([]string{ca.RoleAuditor, ca.RoleOfficer}, n.handleCheckpoint)},
		{"GET /v1/audit/checkpoints", byPerson, maxBody, n.person([]string{ca.RoleAuditor, ca.RoleOfficer}, n.handleCheckpoints)},
		{"GET /v1/requests", byPerson, maxBody, n.person(anyone, n.handleRequests)},
		{"POST /v1/requests", byPerson, maxPolicyBody, n.person([]string{ca.RoleOperator, ca.RoleOfficer}, n.handleRequestCreate)},
		{"POST /v1/requests/{id}/approve", byPerson, maxBody, n.person([]string{ca.RoleOfficer}, n.handleRequestDecide(true))},
		{"POST /v1/requests/{id}/reject", byPerson, maxBody, n.person([]string{ca.RoleOfficer}, n.handleRequestDecide(false))},

		{"POST /v1/internal/apply", byNode, 2 * maxPolicyBody, n.internalNode(n.handleInternalApply)},
		{"POST /v1/internal/barrier", byNode, maxBody, n.internalNode(n.handleInternalBarrier)},
		{"POST /v1/internal/members", byNode, maxBody, n.internalNode(n.handleInternalMembers)},
		{"POST /v1/internal/members/remove", byNode, maxBody, n.internalNode(n.handleInternalMembers)},
		{"POST /v1/internal/restore", byNode, maxSnapshotBody, n.internalNode(n.handleInternalRestore)},
	}
}

// whenCaughtUp answers 503 to every API call that reads or writes the
// registry until the state machine has replayed this node's log; health,
// readiness and the root certificate are served at once.
func (n *Node) whenCaughtUp(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/") && r.URL.Path != "/v1/ca/root" && !n.caughtUp() {
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusServiceUnavailable, "starting: replaying the raft log, try again shortly")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// clientLeaf returns the client certificate the TLS handshake verified
// (see chain.Verifier.ServerConfig: a chain that does not verify fails
// the handshake), or nil when the client presented none.
func clientLeaf(r *http.Request) *x509.Certificate {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil
	}
	return r.TLS.PeerCertificates[0]
}

// identity returns the verified client certificate's identity.
func identity(r *http.Request) (ca.Identity, bool) {
	leaf := clientLeaf(r)
	if leaf == nil {
		return ca.Identity{}, false
	}
	id, err := ca.IdentityOf(leaf)
	return id, err == nil
}

type handler func(w http.ResponseWriter, r *http.Request, id ca.Identity)

// person admits a person holding one of roles whose certificate the
// registry knows and has not revoked. A request carrying
// ConsistencyHeader is served only after this node has caught up with the
// leader (see linearizable).
func (n *Node) person(roles []string, h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, ok := identity(r)
		if !ok || id.Kind != ca.KindPerson {
			writeError(w, http.StatusUnauthorized, "a person's client certificate is required")
			return
		}
		if !slices.Contains(roles, id.Role) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("role %q may not do this (needs one of %v)", id.Role, roles))
			return
		}
		if err := n.checkPerson(id, r); err != nil {
			n.fail(w, err)
			return
		}
		if r.Header.Get(ConsistencyHeader) == api.Linearizable {
			if err := n.linearizable(r.Context()); err != nil {
				n.fail(w, err)
				return
			}
		}
		h(w, r, id)
	}
}

// gateway admits an enrolled gateway presenting its current certificate:
// a revoked gateway, or one of its certificates that a renewal replaced,
// is refused. (An expired certificate fails the TLS handshake already.)
func (n *Node) gateway(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, status, err := n.admitGateway(clientLeaf(r))
		if err != nil {
			writeError(w, status, err.Error())
			return
		}
		h(w, r, id)
	}
}

// admitGateway checks that leaf, a verified client certificate, is an
// enrolled gateway's current certificate; if not, it returns the HTTP
// status and the reason.
func (n *Node) admitGateway(leaf *x509.Certificate) (ca.Identity, int, error) {
	var id ca.Identity
	var err error
	if leaf != nil {
		id, err = ca.IdentityOf(leaf)
	}
	if leaf == nil || err != nil || id.Kind != ca.KindGateway {
		return id, http.StatusUnauthorized, errors.New("a gateway's client certificate is required")
	}
	// Before anything else: a certificate that only copies a recorded
	// one's name and serial is nobody's (not 403, which would let a
	// renewal from an older certificate try).
	if err := n.State().keyIsRecorded(leaf); err != nil {
		return id, http.StatusUnauthorized, err
	}
	status, err := n.currentGatewayCert(id.Name, ca.Serial(leaf))
	return id, status, err
}

// keyIsRecorded checks a verified certificate against the inventory's
// record of its serial: it must carry the public key recorded for it.
// Any intermediate of the network can sign a certificate with any name
// and serial (one of a node that was removed, say); it cannot make one
// for another's key that its holder can use. A serial the inventory does
// not know, or a record made before key hashes were kept, passes.
func (s *State) keyIsRecorded(leaf *x509.Certificate) error {
	rec, ok := s.Certificate(ca.Serial(leaf))
	if !ok || rec.KeySHA256 == "" {
		return nil
	}
	if spkiSHA256(leaf.RawSubjectPublicKeyInfo) != rec.KeySHA256 {
		return fmt.Errorf("certificate %s does not carry the key recorded for it", rec.Serial)
	}
	return nil
}

// currentGatewayCert checks that serial is the current certificate of
// gateway, an enrolled gateway; if not, it returns the HTTP status and
// the reason.
func (n *Node) currentGatewayCert(gateway, serial string) (int, error) {
	if err := n.State().gatewayCertIs(gateway, serial); err != nil {
		return http.StatusForbidden, err
	}
	return 0, nil
}

// gatewayCertIs says why serial is not the current certificate of
// gateway, an enrolled gateway; nil if it is.
func (s *State) gatewayCertIs(gateway, serial string) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	g, ok := s.gateways[gateway]
	if !ok || g.Status != api.StatusEnrolled {
		status := "not enrolled"
		if ok {
			status = "not enrolled (" + g.Status + ")"
		}
		return fmt.Errorf("gateway %s is %s", gateway, status)
	}
	if serial != g.CertSerial {
		return fmt.Errorf("certificate %s is not gateway %s's current certificate (%s)", serial, gateway, g.CertSerial)
	}
	return nil
}

func (n *Node) handleReady(w http.ResponseWriter, r *http.Request) {
	if err := n.Ready(); err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	w.Write([]byte("ready\n"))
}

func (n *Node) handleRoot(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Write(ca.EncodePEM(n.ca.Root()))
}

// endpointRefused answers 400 and says true when a gateway's endpoint is
// given and is not IP:port (api.CheckEndpoint).
func endpointRefused(w http.ResponseWriter, endpoint string) bool {
	if endpoint == "" {
		return false
	}
	if err := api.CheckEndpoint(endpoint); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return true
	}
	return false
}

func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// usableToken returns the record and hash of token, and why it may not
// enroll now (nil if it may).
func (n *Node) usableToken(token string) (tokenRecord, string, error) {
	hash := hashToken(token)
	tok, ok := n.State().token(hash)
	return tok, hash, checkToken(&tok, ok, n.now())
}

func (n *Node) handleEnroll(w http.ResponseWriter, r *http.Request) {
	var req api.EnrollRequest
	if !decode(w, r, &req) {
		return
	}
	if _, err := wgtypes.ParseKey(req.PublicKey); err != nil {
		writeError(w, http.StatusBadRequest, "public_key: not a base64 WireGuard key")
		return
	}
	if endpointRefused(w, req.Endpoint) {
		return
	}
	csr, err := ca.ReadCSR([]byte(req.CSR))
	if err != nil {
		writeError(w, http.StatusBadRequest, "csr: "+err.Error())
		return
	}
	tok, hash, err := n.usableToken(req.Token)
	if err != nil {
		if asked := n.enrollAgain(w, r.Context(), tok, req, csr); !asked {
			n.fail(w, err)
		}
		return
	}
	if tok.Person != "" {
		n.fail(w, fmt.Errorf("%w: this token invites a person: enroll with govnetctl person enroll", ErrForbidden))
		return
	}
	gw, ok := n.State().Gateway(tok.Gateway)
	switch {
	case tok.Reenroll && (!ok || gw.Status != api.StatusEnrolled):
		n.fail(w, fmt.Errorf("%w: gateway %s is not enrolled: nothing to re-enroll", ErrConflict, tok.Gateway))
		return
	case !tok.Reenroll && (!ok || gw.Status != api.StatusPending):
		n.fail(w, fmt.Errorf("%w: gateway %s is not pending enrollment", ErrConflict, tok.Gateway))
		return
	}
	// Sign first, then burn the token: if the burn loses a race, the
	// certificate is never handed out.
	chain, err := n.issue(r.Context(), csr, ca.GatewayProfile(gw.ID, gw.Agency))
	if err != nil {
		n.fail(w, err)
		return
	}
	rec := n.certRecord(chain[0])
	recorded := func(s *State) bool { return s.recorded(rec.Serial) }
	err = n.submitSettled(r.Context(), CmdGatewayEnroll, &GatewayEnrollRequest{
		Meta:        n.meta("gateway:" + gw.ID),
		Gateway:     gw.ID,
		TokenHash:   hash,
		PublicKey:   req.PublicKey,
		Endpoint:    req.Endpoint,
		CertSerial:  ca.Serial(chain[0]),
		CertExpires: chain[0].NotAfter.UTC(),
		Cert:        &rec,
	}, recorded)
	if err != nil {
		// The attempt this one repeats may have committed first (the
		// gateway asked again while it was in flight).
		if tok, ok := n.State().token(hash); ok && tok.Used {
			if n.enrollAgain(w, r.Context(), tok, req, csr) {
				return
			}
		}
		n.fail(w, err)
		return
	}
	gw, _ = n.State().Gateway(gw.ID)
	n.log.Info("gateway enrolled", "gateway", gw.ID, "agency", gw.Agency, "serial", ca.Serial(chain[0]), "reenroll", tok.Reenroll)
	writeJSON(w, http.StatusOK, n.enrollResponse(gw, string(ca.EncodePEM(chain...))))
}

func (n *Node) enrollResponse(gw api.Gateway, chainPEM string) *api.EnrollResponse {
	return &api.EnrollResponse{
		Gateway:       gw.ID,
		Agency:        gw.Agency,
		Certificate:   chainPEM,
		Root:          string(ca.EncodePEM(n.ca.Root())),
		OverlayIP:     gw.OverlayIP,
		OverlayPrefix: n.State().Overlay(),
	}
}

// enrollAgain answers an enrollment asked again after its answer was
// lost: the gateway committed, then lost the connection, the leader or
// its own power before it stored the certificate, and asks again with
// the same token, WireGuard key and CSR (govnet-agent keeps them until
// it has the answer). The token must still be valid but for its use,
// its officer still one, and the request must carry the keys the token
// enrolled: the WireGuard key the gateway has, and a CSR for the key of
// both the certificate the token enrolled and the gateway's current one
// (the same certificate, or one answered again for it: the agent makes a
// new key at every renewal, so a gateway that renewed since is refused).
// It gets a new certificate for that key: a renewal of the one it never
// received, under the rules of any renewal (not once that certificate
// is revoked or expired, or a revocation of the gateway is pending). It
// answers and returns true when the request is such a repeat; otherwise
// it writes nothing, and the caller reports the token's own refusal.
func (n *Node) enrollAgain(w http.ResponseWriter, ctx context.Context, tok tokenRecord, req api.EnrollRequest, csr *x509.CertificateRequest) bool {
	if !tok.Used || tok.Cancelled || tok.Person != "" || tok.Enrolled == "" || !n.now().Before(tok.Expires) {
		return false
	}
	for _, who := range []string{tok.Issuer, tok.Requester} {
		if p, ok := n.State().Person(who); who != "" && (!ok || p.Status != api.PersonActive) {
			return false // withdrawn with its person (cancelTokens)
		}
	}
	gw, ok := n.State().Gateway(tok.Gateway)
	if !ok || gw.Status != api.StatusEnrolled || gw.PublicKey != req.PublicKey || !n.now().Before(gw.CertExpires) ||
		!n.keyOfCert(tok.Enrolled, csr) || !n.keyOfCert(gw.CertSerial, csr) {
		return false
	}
	renewed, _, err := n.renewGateway(ctx, gw.ID, gw.CertSerial, "", "", api.RenewRequest{CSR: req.CSR}, nil)
	if err != nil {
		n.fail(w, fmt.Errorf("enrollment asked again: %w", err))
		return true
	}
	gw, _ = n.State().Gateway(gw.ID)
	n.log.Info("gateway enrollment answered again", "gateway", gw.ID, "serial", renewed.Serial, "enrolled", tok.Enrolled)
	writeJSON(w, http.StatusOK, n.enrollResponse(gw, renewed.Certificate))
	return true
}

// handleWatch streams the gateway's view as JSON lines: the current view
// at once (unless the client already has it), then every change. A client
// that asks for deltas gets api.WatchEvents: the first view whole, then
// the difference from the view sent before. Agents use the gateway stream
// (stream.go) instead, which carries the same lines.
func (n *Node) handleWatch(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	since, ok := sinceParam(w, r)
	if !ok {
		return
	}
	deltas := r.URL.Query().Get("deltas") == "1"
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher.Flush()
	enc := json.NewEncoder(w)
	var sent *hubView // the view the client has, when this stream sent it
	changes := make(chan struct{}, 1)
	stop := n.hub.subscribe(id.Name, func() {
		select {
		case changes <- struct{}{}:
		default:
		}
	})
	defer stop()
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		if g, ok := n.State().Gateway(id.Name); !ok || g.Status != api.StatusEnrolled {
			return // revoked or removed: the stream ends
		}
		if msgs, v := n.viewsToSend(id.Name, since, sent, deltas); v != nil {
			for _, msg := range msgs {
				if err := enc.Encode(msg); err != nil {
					return
				}
			}
			flusher.Flush()
			since, sent = v.head.RaftIndex, v
		}
		select {
		case <-r.Context().Done():
			return
		case <-changes:
		case <-tick.C:
			if _, err := w.Write([]byte("\n")); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}

// viewsToSend returns what a stream that has sent the view sent (at raft
// index since) sends next: nothing (v nil) when the gateway's view is not
// newer; with deltas, the first view whole and each later one as the
// difference from the view sent before it (views the hub hands out are
// never modified, so the one last sent is a safe base); without, whole
// views. Whether the stream may still have views is the caller's check.
func (n *Node) viewsToSend(gateway string, since uint64, sent *hubView, deltas bool) (msgs []any, v *hubView) {
	v, ok := n.hub.view(gateway)
	if !ok || v.head.RaftIndex <= since {
		return nil, nil
	}
	switch {
	case !deltas:
		msgs = []any{v.View()} // a client without deltas gets whole views
	case sent == nil:
		msgs = []any{api.WatchEvent{View: v.View()}}
	default:
		for _, d := range n.hub.since(sent, v) {
			msgs = append(msgs, api.WatchEvent{Delta: d})
		}
	}
	return msgs, v
}

func (n *Node) handleReport(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	var rep api.Report
	if !decode(w, r, &rep) {
		return
	}
	if err := n.recordReport(r.Context(), id.Name, rep); err != nil {
		n.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// maxApplyError bounds a report's apply_error and peer_error (the agent
// sends at most 1 KiB and an ellipsis of each).
const maxApplyError = 1100

// checkReport refuses a report that no agent sends: a reason too long or
// not UTF-8, a negative count of peers left out.
func checkReport(rep api.Report) error {
	for _, f := range []struct{ name, text string }{{"apply_error", rep.ApplyError}, {"peer_error", rep.PeerError}} {
		if len(f.text) > maxApplyError {
			return fmt.Errorf("%w: %s: %d bytes, at most %d", ErrBadRequest, f.name, len(f.text), maxApplyError)
		}
		if !utf8.ValidString(f.text) {
			return fmt.Errorf("%w: %s: not UTF-8", ErrBadRequest, f.name)
		}
	}
	if rep.PeersLeftOut < 0 {
		return fmt.Errorf("%w: peers_left_out: %d, negative", ErrBadRequest, rep.PeersLeftOut)
	}
	return nil
}

// recordReport commits a gateway's report. Reports arrive from every
// gateway at once after a change: they are committed in batches
// (CmdGatewayReportsPacked). A report that changes nothing but its time is held
// and committed later with the others like it (controller/refresh.go).
func (n *Node) recordReport(ctx context.Context, gateway string, rep api.Report) error {
	if err := checkReport(rep); err != nil {
		return err
	}
	req := GatewayReportRequest{Meta: n.meta("gateway:" + gateway), Gateway: gateway, Report: rep}
	if n.refresh.record(req) {
		return nil
	}
	return n.reports.Record(ctx, req)
}

// Reports committed at once (not refreshes) go in batches of at most
// maxReportBatch reports and maxReportWeight bytes: after a policy
// change every gateway reports within seconds, and at 512 a batch, the
// bound certificate records have, a node serving 6,700 of 20,000 gateways
// committed thirteen batches one after the other and its gateways waited
// for the last. A report's weight bounds its encoded size as JSON
// (which escapes a byte into at most six) and so also packed, the
// smaller form batches are committed in: a batch stays under the
// leader's limit for a forwarded command (2 × maxPolicyBody).
const (
	maxReportBatch  = 4096
	maxReportWeight = 4 << 20
)

func reportWeight(r GatewayReportRequest) int {
	return 256 + 6*(2*len(r.Gateway)+len(r.Report.RulesetDigest)+len(r.Report.ApplyError)+len(r.Report.PeerError))
}

// newReportRecorder commits reports that change the state in batches
// (CmdGatewayReportsPacked).
func newReportRecorder(n *Node) *groupCommit[GatewayReportRequest] {
	return &groupCommit[GatewayReportRequest]{max: maxReportBatch, weigh: reportWeight, maxWeight: maxReportWeight,
		commit: func(ctx context.Context, reps []GatewayReportRequest) error {
			req := &GatewayReportsRequest{Meta: n.meta("node:" + n.cfg.Node), Reports: reps}
			_, err := n.submit(ctx, CmdGatewayReportsPacked, req)
			if errors.Is(err, errLeadershipLost) {
				// A report says what a gateway holds: applied twice, it
				// says it twice. Submitted again at once, rather than
				// each gateway of the batch retrying after its wait.
				n.log.Warn("a batch of reports left in doubt by a leadership change: submitting it again", "reports", len(reps))
				_, err = n.submit(ctx, CmdGatewayReportsPacked, req)
			}
			return err
		}}
}

func (n *Node) handleAgencies(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	writeJSON(w, http.StatusOK, n.State().Agencies())
}

func (n *Node) handleAgencyAdd(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	var a api.Agency
	if !decode(w, r, &a) {
		return
	}
	row := []api.AgencyRow{{Code: a.Code, Name: a.Name}}
	if err := cleanNames(row); err != nil {
		n.fail(w, err)
		return
	}
	if _, err := n.submit(r.Context(), CmdAgencyUpsert, &AgencyUpsertRequest{Meta: n.meta(id.Name), Code: a.Code, Name: row[0].Name, Parent: a.Parent}); err != nil {
		n.fail(w, err)
		return
	}
	for _, got := range n.State().Agencies() {
		if got.Code == a.Code {
			writeJSON(w, http.StatusOK, got)
			return
		}
	}
}

func (n *Node) handleGateways(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	gws := n.State().Gateways()
	for i := range gws {
		n.attest(&gws[i])
	}
	writeJSON(w, http.StatusOK, gws)
}

// attest compares what a gateway reported with the ruleset its current
// view compiles to.
func (n *Node) attest(g *api.Gateway) {
	want, viewIndex, ok := n.hub.expected(g.ID)
	if !ok || want == "" {
		return
	}
	g.ExpectedDigest = want
	switch {
	case g.Report != nil && g.Report.FailedIndex >= viewIndex:
		g.Ruleset = api.RulesetFailed
	case g.Report != nil && g.Report.RulesetDigest == want:
		g.Ruleset = api.RulesetOK
	case g.Report == nil || g.Report.RaftIndex < viewIndex:
		g.Ruleset = api.RulesetPending
	default:
		g.Ruleset = api.RulesetMismatch
	}
}

func (n *Node) handleGateway(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	g, ok := n.State().Gateway(r.PathValue("id"))
	if !ok {
		n.fail(w, fmt.Errorf("%w: gateway %s", ErrNotFound, r.PathValue("id")))
		return
	}
	n.attest(&g)
	writeJSON(w, http.StatusOK, g)
}

func (n *Node) handleGatewayAdd(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	var g api.Gateway
	if !decode(w, r, &g) {
		return
	}
	if endpointRefused(w, g.Endpoint) {
		return
	}
	req := &GatewayAddRequest{Meta: n.meta(id.Name), ID: g.ID, Agency: g.Agency, Name: g.Name, Endpoint: g.Endpoint, LANs: g.LANs}
	if _, err := n.submit(r.Context(), CmdGatewayRegister, req); err != nil {
		n.fail(w, err)
		return
	}
	got, _ := n.State().Gateway(g.ID)
	writeJSON(w, http.StatusOK, got)
}

// oneStepRefused says whether four-eyes mode forbids a one-step endpoint.
func (n *Node) oneStepRefused(w http.ResponseWriter, what string) bool {
	if !n.cfg.FourEyes {
		return false
	}
	writeError(w, http.StatusForbidden, fmt.Sprintf("four-eyes approval is required: %s with `govnetctl request`, then have another officer approve it", what))
	return true
}

// handleToken issues a token in one step; with four_eyes set it is refused
// (use a token request and an approval).
func (n *Node) handleToken(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	if n.oneStepRefused(w, "request the token") {
		return
	}
	var req api.TokenRequest
	if r.ContentLength != 0 && !decode(w, r, &req) {
		return
	}
	gw := r.PathValue("id")
	token, expires, ok := n.issueToken(w, r, id, req.TTL, func(m Meta, hash string, expires time.Time) (CommandType, any) {
		return CmdTokenIssue, &TokenIssueRequest{Meta: m, Gateway: gw, TokenHash: hash, Expires: expires, Reenroll: req.Reenroll}
	})
	if ok {
		writeJSON(w, http.StatusOK, api.TokenResponse{Gateway: gw, Token: token, Expires: expires})
	}
}

// issueToken makes a one-time token valid for ttl (parseTTL) and commits
// the command that cmd makes of its hash; on failure it writes the error
// and returns false.
func (n *Node) issueToken(w http.ResponseWriter, r *http.Request, id ca.Identity, ttl string, cmd func(m Meta, hash string, expires time.Time) (CommandType, any)) (token string, expires time.Time, ok bool) {
	d, err := parseTTL(ttl)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return "", time.Time{}, false
	}
	token, hash, err := newToken()
	if err != nil {
		n.fail(w, err)
		return "", time.Time{}, false
	}
	m := n.meta(id.Name)
	expires = m.At.Add(d)
	t, req := cmd(m, hash, expires)
	if _, err := n.submit(r.Context(), t, req); err != nil {
		n.fail(w, err)
		return "", time.Time{}, false
	}
	return token, expires, true
}

func (n *Node) handlePolicy(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	p, ok := n.State().Policy()
	if !ok {
		n.fail(w, fmt.Errorf("%w: no policy has been published", ErrNotFound))
		return
	}
	writeJSON(w, http.StatusOK, p)
}

// handlePolicyPublish validates and tests a policy against the live
// registry before it is committed (CheckPolicy): a policy that fails
// either is rejected with its errors and changes nothing.
func (n *Node) handlePolicyPublish(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	if n.oneStepRefused(w, "request the publication") {
		return
	}
	var req api.PolicyRequest
	if !decode(w, r, &req) {
		return
	}
	if req.Name == "" {
		req.Name = "policy.yaml"
	}
	if err := CheckPolicy(req.Name, []byte(req.Source), n.State()); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if _, err := n.submit(r.Context(), CmdPolicyPublish, &PolicyPublishRequest{Meta: n.meta(id.Name), Name: req.Name, Source: req.Source}); err != nil {
		n.fail(w, err)
		return
	}
	p, _ := n.State().Policy()
	n.log.Info("policy published", "policy_version", p.Version, "actor", id.Name)
	writeJSON(w, http.StatusOK, p)
}

func (n *Node) handlePolicyHistory(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	writeJSON(w, http.StatusOK, n.State().PolicyHistory())
}

// handlePolicyPlan checks a draft as publication would and says what it
// would change against the current policy: per gateway, the flows and
// peers gained and lost. Nothing is committed.
func (n *Node) handlePolicyPlan(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	var req api.PolicyRequest
	if !decode(w, r, &req) {
		return
	}
	if req.Name == "" {
		req.Name = "policy.yaml"
	}
	plan, err := PlanPolicy(req.Name, []byte(req.Source), n.State())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, plan)
}

// PlanPolicy checks a draft against the registry in s, as CheckPolicy
// does, and diffs its views against the current policy's.
func PlanPolicy(name string, src []byte, s *State) (*api.PolicyPlan, error) {
	reg := &policy.Registry{Agencies: s.Agencies(), Gateways: s.Gateways()}
	draft, after, err := policy.Check(name, src, reg)
	if err != nil {
		return nil, err
	}
	var before map[string]*api.View
	if cur, ok := s.Policy(); ok {
		p, err := policy.Parse(fmt.Sprintf("policy-v%d.yaml", cur.Version), []byte(cur.Source))
		if err == nil {
			before, err = p.Compile(reg)
		}
		if err != nil {
			// The registry moved under the current policy (a merged
			// agency, say): a plan against it would mean nothing.
			return nil, fmt.Errorf("the current policy v%d no longer compiles against the registry: %w", cur.Version, err)
		}
	}
	plan := policy.Diff(before, after, reg)
	for _, r := range draft.ClosedRefs(reg) {
		plan.ClosedRefs = append(plan.ClosedRefs, api.PolicyRef{Code: r.Code, Where: r.Where(), What: r.What})
	}
	idle, err := draft.IdleRules(reg)
	if err != nil {
		return nil, err
	}
	for _, r := range idle {
		plan.IdleRules = append(plan.IdleRules, api.IdleRule{Rule: r.Index, Where: r.Where(name), Why: r.Why})
	}
	return plan, nil
}

// CheckPolicy parses and validates a policy against the registry in s and
// runs its embedded tests (policy.Test: only the views they read are
// compiled).
func CheckPolicy(name string, src []byte, s *State) error {
	p, err := policy.Parse(name, src)
	if err != nil {
		return err
	}
	// Test validates (a policy that validates compiles) and compiles only
	// the views its tests read.
	return p.Test(&policy.Registry{Agencies: s.Agencies(), Gateways: s.Gateways()})
}

// fail maps an error to a status; internal causes are logged, not sent.
func (n *Node) fail(w http.ResponseWriter, err error) {
	status, msg := n.errorStatus(err)
	switch {
	case errors.Is(err, ErrNotLeader):
		w.Header().Set(notLeaderHeader, "1")
	case errors.Is(err, errLeadershipLost):
		w.Header().Set(leadershipLostHeader, "1")
	}
	writeError(w, status, msg)
}

// errorStatus is the HTTP status and message that tell a client why its
// call failed; errors of no known kind are logged and not shown.
func (n *Node) errorStatus(err error) (int, string) {
	switch {
	case errors.Is(err, ErrBadRequest), errors.Is(err, ca.ErrBadCSR), errors.Is(err, ca.ErrKeyType):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, ErrForbidden), errors.Is(err, ErrUnauthorized):
		return http.StatusForbidden, err.Error()
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, ErrConflict):
		return http.StatusConflict, err.Error()
	case errors.Is(err, ErrNotLeader), errors.Is(err, ErrNoLeader), errors.Is(err, ErrUnknownOutcome),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, err.Error()
	}
	n.log.Error("request failed", "err", err)
	return http.StatusInternalServerError, "internal error (see the controller's log)"
}

// bodyTimeout bounds the reading of a request body that decode reads.
const bodyTimeout = 30 * time.Second

// decode reads a JSON body, which limitBody bounds to the route's limit:
// one value, whose unknown fields are errors, and nothing after it but
// white space.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	// A client that sends its body a byte at a time holds a goroutine
	// for bodyTimeout at most. (Not every ResponseWriter supports it.)
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyTimeout))
	dec := json.NewDecoder(r.Body) // bounded by the route's limit (limitBody)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = fmt.Errorf("data after the JSON value at offset %d", dec.InputOffset())
		}
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", tooBig.Limit))
		} else {
			writeError(w, http.StatusBadRequest, "request body: "+err.Error())
		}
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, api.Error{Error: msg})
}
