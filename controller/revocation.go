package controller

import (
	"bufio"
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"golang.org/x/crypto/ocsp"
)

// errSignCRL: this node's CA could not sign its CRL (its HSM token, most
// likely). Unlike the other failures of issuerDuties (no leader, not a
// member yet), which pass by themselves, it needs an operator: the CRL
// in force runs out at its nextUpdate.
var errSignCRL = errors.New("sign CRL")

// crlRefresh is how often an issuer's CRL is re-signed when nothing was
// revoked: half of ca.MaxCRLValidity, so that a relying party always holds
// one with a day of validity left to the next.
const crlRefresh = 12 * time.Hour

// proxiedHeader marks an OCSP request routed from another node, so that
// two nodes that disagree about who holds an issuer never bounce it.
const proxiedHeader = "X-Govnet-Proxied"

func (n *Node) listenHTTP() error {
	addr, err := n.cfg.httpAddr()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("http listen: %w", err)
	}
	n.httpLn = n.limitConns(ln)
	return nil
}

// advertisedHTTP is the revocation listener's address as others reach it.
func (n *Node) advertisedHTTP() string { return n.cfg.advertisedHTTP(n.httpLn.Addr().String()) }

// advertisedHTTP is the address of the plain-HTTP listener, listening at
// listen, that others reach: the configured host if it is one, else the
// API's.
func (c Config) advertisedHTTP(listen string) string {
	host, port, _ := net.SplitHostPort(listen)
	if cfgHost, _, err := net.SplitHostPort(c.HTTPAddr); err == nil && cfgHost != "" {
		host = cfgHost
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		if apiHost, _, err := net.SplitHostPort(c.APIAddr); err == nil {
			host = apiHost
		}
	}
	return net.JoinHostPort(host, port)
}

// revocationURLs are the URLs certificates of this node's issuer carry.
func (n *Node) revocationURLs() ca.RevocationURLs {
	urls, _ := n.cfg.revocationURLs(n.httpLn.Addr().String())
	return urls
}

// revocationURLs are the URLs certificates of the node's issuer carry,
// its plain-HTTP listener listening at listen; false if they are not
// known yet (no revocation_url, and the listener's port is chosen when it
// opens).
func (c Config) revocationURLs(listen string) (ca.RevocationURLs, bool) {
	base := strings.TrimRight(c.RevocationURL, "/")
	if base == "" {
		if _, port, err := net.SplitHostPort(listen); err != nil || port == "0" {
			return ca.RevocationURLs{}, false
		}
		base = "http://" + c.advertisedHTTP(listen)
	}
	return ca.RevocationURLs{CRLBase: base + "/crl", OCSPBase: base + "/ocsp"}, true
}

// serveHTTP serves, without TLS or client certificates, what relying
// parties and load balancers need: CRLs, OCSP and health. Nothing else
// (the metrics are on the API, for operators and auditors).
func (n *Node) serveHTTP() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", n.handleReady)
	mux.HandleFunc("GET /crl/{file}", n.handleCRL)
	h := n.cfg.underRevocationPath(n.limits.middleware(n.ocspBeforeMux(mux)))
	n.httpSrv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.httpSrv.Serve(n.httpLn); ignoreClosed(err) != nil {
			n.log.Error("revocation http server", "err", err)
		}
	}()
	n.log.Info("crl and ocsp listening", "addr", n.httpLn.Addr().String(), "issuer", n.issuerID)
}

// underRevocationPath serves h's paths also under the path of
// revocation_url, if it has one: certificates name <base>/crl/... and
// <base>/ocsp/..., and a name that reaches a node directly (no proxy in
// between to strip the path) must find them there.
func (c Config) underRevocationPath(h http.Handler) http.Handler {
	u, err := url.Parse(c.RevocationURL)
	prefix := ""
	if err == nil {
		prefix = strings.TrimRight(u.Path, "/")
	}
	if prefix == "" {
		return h
	}
	strip := http.StripPrefix(prefix, h)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, prefix+"/") {
			strip.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// ocspBeforeMux sends /ocsp/{issuer}[/{request}] to handleOCSP before
// mux sees it. An OCSP GET carries its request in base64, unescaped by
// many clients, and base64 may hold "//": ServeMux redirects such a path
// to a cleaned one, which no longer decodes (1 request in 20 or so).
func (n *Node) ocspBeforeMux(mux http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, ok := strings.CutPrefix(r.URL.Path, "/ocsp/")
		if !ok {
			mux.ServeHTTP(w, r)
			return
		}
		issuer, _, _ := strings.Cut(rest, "/")
		r.SetPathValue("issuer", issuer)
		n.handleOCSP(w, r)
	})
}

// handleCRL serves an issuer's latest CRL from the replicated state.
func (n *Node) handleCRL(w http.ResponseWriter, r *http.Request) {
	issuer, ok := strings.CutSuffix(r.PathValue("file"), ".crl")
	if !ok {
		http.NotFound(w, r)
		return
	}
	rec, ok := n.State().issuer(issuer)
	if !ok || rec.CRL == nil {
		http.Error(w, "no CRL of issuer "+issuer, http.StatusNotFound)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/pkix-crl")
	h.Set("Content-Length", strconv.Itoa(len(rec.CRL.DER)))
	h.Set("Last-Modified", rec.CRL.ThisUpdate.UTC().Format(http.TimeFormat))
	// Short: a revocation publishes a new CRL at once.
	h.Set("Cache-Control", "max-age=60, public, no-transform, must-revalidate")
	w.Write(rec.CRL.DER)
}

// handleOCSP answers for this node's issuer and routes requests about
// another issuer to the node that holds its key; an issuer no node
// claims gets "unauthorized" from our responder (RFC 6960 2.3).
func (n *Node) handleOCSP(w http.ResponseWriter, r *http.Request) {
	issuer := r.PathValue("issuer")
	if issuer == n.issuerID || r.Header.Get(proxiedHeader) != "" {
		n.ocsp.ServeHTTP(w, r)
		return
	}
	rec, ok := n.State().issuer(issuer)
	if !ok || rec.HTTPAddr == "" || rec.Node == n.cfg.Node {
		n.ocsp.ServeHTTP(w, r)
		return
	}
	target := &url.URL{Scheme: "http", Host: rec.HTTPAddr}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.SetXForwarded() // the issuer's node limits the client, not this node
			pr.Out.Header.Set(proxiedHeader, n.cfg.Node)
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			n.log.Warn("ocsp: route to the issuer's node", "issuer", issuer, "node", rec.Node, "err", err)
			w.Header().Set("Content-Type", "application/ocsp-response")
			w.Write(ocsp.TryLaterErrorResponse)
		},
	}
	proxy.ServeHTTP(w, r)
}

// issuerDuties runs on every node: it records where this node's issuer
// lives and keeps the issuer's CRL current in the replicated state.
func (n *Node) issuerDuties(ctx context.Context) {
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	renew := time.NewTimer(time.Hour)
	defer renew.Stop()
	var retry <-chan time.Time
	var warned time.Time    // the last warning of a failed renewal of the node's certificate
	var crlWarned time.Time // the last error about a CRL this node could not sign
	for {
		if n.caughtUp() {
			err := n.recordIssuer(ctx)
			if err == nil {
				err = n.publishCRL(ctx)
				if errors.Is(err, errSignCRL) && ctx.Err() == nil && time.Since(crlWarned) > time.Minute {
					var next time.Time
					if rec, _ := n.State().issuer(n.issuerID); rec.CRL != nil {
						next = rec.CRL.NextUpdate
					}
					n.log.Error("this node's CRL cannot be signed: relying parties fail once the one in force runs out",
						"issuer", n.issuerID, "err", err, "next_update", next.UTC().Format(time.RFC3339))
					crlWarned = time.Now()
				}
			}
			if err == nil {
				if err = n.renewNodeCertIfDue(ctx); err != nil && ctx.Err() == nil && time.Since(warned) > time.Minute {
					n.log.Warn("renewing the node certificate", "err", err, "not_after", n.cert.Load().Leaf.NotAfter.UTC().Format(time.RFC3339))
					warned = time.Now()
				}
			}
			if d := nodeCertDue(n.cert.Load().Leaf).Sub(n.now()); d > 0 {
				renew.Reset(d) // else it is due now: retry below
			}
			retry = nil
			if err != nil && ctx.Err() == nil {
				n.log.Debug("issuer duties", "err", err)
				retry = time.After(time.Second)
			}
		} else {
			retry = time.After(100 * time.Millisecond)
		}
		select {
		case <-ctx.Done():
			return
		case <-n.crlWake:
		case <-tick.C:
		case <-renew.C:
		case <-retry:
		}
	}
}

// recordIssuer commits this node's issuer record if it is missing or stale.
func (n *Node) recordIssuer(ctx context.Context) error {
	addr := n.advertisedHTTP()
	if _, ok := n.State().Member(n.cfg.Node); !ok {
		return fmt.Errorf("not a member yet")
	}
	if rec, ok := n.State().issuer(n.issuerID); !ok || rec.Node != n.cfg.Node || rec.HTTPAddr != addr {
		if _, err := n.submit(ctx, CmdIssuerUpsert, &IssuerUpsertRequest{Meta: n.meta("node:" + n.cfg.Node), Issuer: n.issuerID, Node: n.cfg.Node, HTTPAddr: addr}); err != nil {
			return err
		}
	}
	// So does the intermediate the custodians signed for this node.
	if inter := n.ca.Intermediate(); inter != nil {
		if _, ok := n.State().Certificate(ca.Serial(inter)); !ok {
			rec := certRecordOf(inter)
			rec.Kind, rec.Requester = kindIntermediate, "node:"+n.cfg.Node
			if _, err := n.submit(ctx, CmdCertRecord, &CertRecordRequest{Meta: n.meta("node:" + n.cfg.Node), Certs: []api.Certificate{rec}}); err != nil && !errors.Is(err, ErrConflict) {
				return err
			}
		}
	}
	// This node's own TLS certificate joins the inventory too.
	if rec := certRecordOf(n.cert.Load().Leaf); rec.Kind == ca.KindNode {
		if _, ok := n.State().Certificate(rec.Serial); !ok {
			rec.Requester = "node:" + n.cfg.Node
			if _, err := n.submit(ctx, CmdCertRecord, &CertRecordRequest{Meta: n.meta("node:" + n.cfg.Node), Certs: []api.Certificate{rec}}); err != nil && !errors.Is(err, ErrConflict) {
				return err
			}
		}
	}
	return nil
}

// publishCRL signs and commits a new CRL of this node's issuer when a
// revocation is not in the last one, or the last one is due for refresh.
func (n *Node) publishCRL(ctx context.Context) error {
	now := n.now().UTC()
	// Decide from the issuer record alone first: this runs after every
	// applied command, and the scan of the inventory is O(certificates).
	rec, _ := n.State().issuer(n.issuerID)
	if c := rec.CRL; c != nil && c.Covers >= rec.LastRevocation && now.Sub(c.ThisUpdate) < crlRefresh {
		return nil
	}
	entries, last := n.State().revokedOf(n.issuerID, now)
	number := uint64(1)
	if rec.CRL != nil {
		number = rec.CRL.Number + 1
	}
	for i := range entries {
		// Another node's clock stamped the revocation; a CRL may not list
		// one after its own thisUpdate.
		if entries[i].At.After(now) {
			entries[i].At = now
		}
	}
	der, err := n.ca.CRL(entries, new(big.Int).SetUint64(number), now)
	if err != nil {
		return fmt.Errorf("%w %d: %w", errSignCRL, number, err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return err
	}
	_, err = n.submit(ctx, CmdCRLPublish, &CRLPublishRequest{
		Meta: n.meta("node:" + n.cfg.Node), Issuer: n.issuerID, Number: number, Covers: last,
		ThisUpdate: crl.ThisUpdate, NextUpdate: crl.NextUpdate, DER: der,
	})
	if err != nil {
		return fmt.Errorf("publish CRL %d: %w", number, err)
	}
	n.log.Info("crl published", "issuer", n.issuerID, "number", number, "entries", len(entries), "raft_index", last)
	return nil
}

// certRecord is the inventory record of a certificate this node's CA signed.
func (n *Node) certRecord(cert *x509.Certificate) api.Certificate {
	rec := certRecordOf(cert)
	rec.Issuer = n.issuerID
	return rec
}

// spkiSHA256 is the SHA-256 of a SubjectPublicKeyInfo (DER), hex: how the
// inventory records a certificate's key (KeySHA256).
func spkiSHA256(spki []byte) string {
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:])
}

// certRecordOf is the inventory record of a govnet certificate; its
// issuer id is the issuing certificate's key id (ca.IssuerID).
func certRecordOf(cert *x509.Certificate) api.Certificate {
	rec := api.Certificate{
		Serial:    ca.Serial(cert),
		KeySHA256: spkiSHA256(cert.RawSubjectPublicKeyInfo),
		Subject:   cert.Subject.CommonName,
		Issuer:    hex.EncodeToString(cert.AuthorityKeyId),
		NotBefore: cert.NotBefore.UTC(),
		NotAfter:  cert.NotAfter.UTC(),
	}
	if id, err := ca.IdentityOf(cert); err == nil {
		rec.Kind, rec.Agency, rec.Role = id.Kind, id.Agency, id.Role
		if id.Kind == ca.KindGateway {
			rec.Gateway = id.Name
		}
	}
	rec.SANs = sans(cert)
	return rec
}

func sans(cert *x509.Certificate) []string {
	var out []string
	out = append(out, cert.DNSNames...)
	for _, ip := range cert.IPAddresses {
		out = append(out, ip.String())
	}
	for _, u := range cert.URIs {
		out = append(out, u.String())
	}
	return out
}

// handleCertificates lists the inventory from this node's state:
// ?agency=CODE, ?revoked=true, ?expiring=DURATION (Go duration or Nd).
func (n *Node) handleCertificates(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	q := r.URL.Query()
	f := CertFilter{Agency: q.Get("agency"), Revoked: q.Get("revoked") == "true", Now: n.now()}
	if e := q.Get("expiring"); e != "" {
		d, err := ParseDays(e)
		if err != nil || d <= 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("expiring %q: want a duration such as 7d or 36h", e))
			return
		}
		f.Expiring = d
	}
	switch q.Get("archived") {
	case "", "false":
		writeJSON(w, http.StatusOK, n.State().Certificates(f))
	case "true":
		if f.Expiring > 0 {
			writeError(w, http.StatusBadRequest, "archived and expiring: archived certificates have all expired; ask for one or the other")
			return
		}
		n.writeCertificatesArchived(w, f)
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("archived %q: want true or false", q.Get("archived")))
	}
}

// writeCertificatesArchived writes the inventory's certificates that f
// selects, then the archive's, as one JSON array, reading the archive as
// it goes: it may hold millions. This node's disk failing to read it is
// a 500 if nothing was sent yet, and otherwise aborts the response, which
// the client then cannot decode.
func (n *Node) writeCertificatesArchived(w http.ResponseWriter, f CertFilter) {
	live, archived := n.State().CertificatesAndArchive(f)
	sent := &sentWriter{w: w}
	bw := bufio.NewWriterSize(sent, 64<<10)
	enc := json.NewEncoder(bw)
	sep := byte('[')
	var werr error // the client's side: gone, or too slow
	put := func(c *api.Certificate) error {
		bw.WriteByte(sep)
		sep = ','
		werr = enc.Encode(c)
		return werr
	}
	w.Header().Set("Content-Type", "application/json")
	for i := range live {
		put(&live[i])
	}
	err := eachArchived(archived, func(c *api.Certificate) error {
		if f.match(c) {
			return put(c)
		}
		return nil
	})
	switch {
	case err != nil && werr == nil && !sent.any:
		n.fail(w, err)
		return
	case err != nil && werr == nil:
		n.log.Error("list archived certificates", "err", err)
		panic(http.ErrAbortHandler)
	case err != nil:
		panic(http.ErrAbortHandler)
	}
	if sep == '[' {
		bw.WriteByte('[')
	}
	bw.WriteString("]\n")
	bw.Flush()
}

// sentWriter notes whether anything was written to w.
type sentWriter struct {
	w   io.Writer
	any bool
}

func (s *sentWriter) Write(b []byte) (int, error) {
	s.any = s.any || len(b) > 0
	return s.w.Write(b)
}

// ParseDays reads a Go duration that may also count days ("7d").
func ParseDays(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(d)
		if err != nil {
			return 0, fmt.Errorf("duration %q: %w", s, err)
		}
		// More would wrap around (213504d came out as 25 minutes).
		if max := int(math.MaxInt64 / int64(24*time.Hour)); days > max || days < -max {
			return 0, fmt.Errorf("duration %q: at most %dd", s, max)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}

func (n *Node) handleCertificate(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	c, ok, err := n.State().LookupCertificate(r.PathValue("serial"))
	if err != nil {
		n.fail(w, err)
		return
	}
	if !ok {
		n.fail(w, fmt.Errorf("%w: certificate %s", ErrNotFound, r.PathValue("serial")))
		return
	}
	writeJSON(w, http.StatusOK, c)
}

// handleRevoke revokes a certificate or a gateway in one step (officer);
// with four_eyes set it is refused: use a revoke request and an approval.
func (n *Node) handleRevoke(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	if n.oneStepRefused(w, "request the revocation") {
		return
	}
	var req api.RevokeRequest
	if !decode(w, r, &req) {
		return
	}
	reason := ca.ReasonUnspecified
	if req.Reason != "" {
		var err error
		if reason, err = ca.ParseReason(req.Reason); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	serial := req.Serial
	if serial != "" {
		if serial = normSerial(serial); serial == "" {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("serial %q: want the serial in hex", req.Serial))
			return
		}
	}
	start := time.Now()
	index, err := n.submit(r.Context(), CmdCertRevoke, &CertRevokeRequest{Meta: n.meta(id.Name), Serial: serial, Gateway: req.Gateway, Reason: int(reason)})
	if err != nil {
		n.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, n.revokeResponse(r.Context(), index, req.Gateway, serial, start))
}

// revokeResponse says what was revoked at index and, when a gateway was,
// waits until this node's views give it to no peer and reports how long
// that took from start.
func (n *Node) revokeResponse(ctx context.Context, index uint64, gateway, serial string, start time.Time) api.RevokeResponse {
	resp := api.RevokeResponse{RaftIndex: index, Gateway: gateway, Certificates: []api.Certificate{}}
	if serial != "" {
		if c, ok := n.State().Certificate(serial); ok {
			resp.Certificates = append(resp.Certificates, c)
			if g, ok := n.State().Gateway(c.Gateway); ok && c.Kind == ca.KindGateway && g.Status == api.StatusRevoked && g.CertSerial == c.Serial {
				resp.Gateway = g.ID
			}
		}
	}
	if gateway != "" {
		for _, c := range n.State().Certificates(CertFilter{Revoked: true}) {
			if c.Gateway == gateway && c.Kind == ca.KindGateway {
				resp.Certificates = append(resp.Certificates, c)
			}
		}
	}
	if resp.Gateway != "" {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := n.hub.waitGone(ctx, resp.Gateway, index); err != nil {
			n.log.Warn("revocation not yet enforced in the views", "gateway", resp.Gateway, "err", err)
		} else {
			resp.Enforced = time.Since(start)
		}
		n.log.Info("gateway revoked", "gateway", resp.Gateway, "raft_index", index, "enforced", resp.Enforced.String())
	}
	return resp
}

// handleRenew issues a new certificate to the gateway presenting its
// current one (the gateway middleware checked that it is enrolled and
// that this is its current certificate). The profile comes from the
// registry, never from the CSR.
// handleRenew renews a gateway's certificate: with its current one, or
// with the one before if the gateway renewed it and never got the answer
// (a connection or a leader lost after the commit), unless that one was
// revoked. That second way needs a CSR for the key the current
// certificate certifies: the gateway proves both keys, as in the renewal
// it repeats, and gets a new certificate for that key.
func (n *Node) handleRenew(w http.ResponseWriter, r *http.Request) {
	leaf := clientLeaf(r)
	id, status, err := n.admitGateway(leaf)
	from := ""
	if status == http.StatusForbidden && n.renewableFrom(id.Name, ca.Serial(leaf)) {
		from, err = ca.Serial(leaf), nil
	}
	if err != nil {
		writeError(w, status, err.Error())
		return
	}
	var req api.RenewRequest
	if !decode(w, r, &req) {
		return
	}
	resp, _, err := n.renewGateway(r.Context(), id.Name, ca.Serial(leaf), from, from, req, nil)
	if err != nil {
		n.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// renewableFrom says whether serial, no longer gateway's current
// certificate, may still renew it: the certificate the current one was
// renewed from (a renewal whose answer was lost), not revoked. Such a
// renewal renews only the current certificate's key (renewGateway).
func (n *Node) renewableFrom(gateway, serial string) bool {
	g, ok := n.State().Gateway(gateway)
	prev, known := n.State().Certificate(serial)
	return ok && g.Status == api.StatusEnrolled && slices.Contains(g.RenewedFrom, serial) && (!known || prev.Status != api.CertRevoked)
}

// renewGateway issues gateway a certificate for req's CSR in place of
// its current one and records the renewal; it returns the answer and the
// new certificate. presented is the certificate the caller checked: the
// current one, or with from set (equal to presented) the one the current
// one was renewed from, which renews only the current certificate's key.
// held, if set, is the certificate the gateway is known to hold, older
// than presented (its stream's, renewed on since): it stays the one a
// lost answer can be retried with. issued, if set, learns the new serial
// before it is committed.
func (n *Node) renewGateway(ctx context.Context, gateway, presented, from, held string, req api.RenewRequest, issued func(serial string)) (*api.RenewResponse, *x509.Certificate, error) {
	g, _ := n.State().Gateway(gateway)
	old := presented
	if from != "" {
		old = g.CertSerial
	}
	var chain []*x509.Certificate
	var err error
	// The CSR is parsed on the issuance pool too: its ASN.1 parsing
	// grows a stream goroutine's stack as signing would (Node.issue),
	// which was 4% of the nodes' CPU in a re-issue of 20,000 gateways.
	if perr := n.onIssuePool(ctx, func() {
		csr, cerr := ca.ReadCSR([]byte(req.CSR))
		switch {
		case cerr != nil:
			err = fmt.Errorf("%w: csr: %w", ErrBadRequest, cerr)
		case from != "" && !n.keyOfCert(g.CertSerial, csr):
			err = fmt.Errorf("%w: certificate %s is not gateway %s's current certificate (%s); renewing from it takes a CSR for the key of %s, the renewal whose answer was lost",
				ErrForbidden, presented, g.ID, g.CertSerial, g.CertSerial)
		default:
			chain, err = n.ca.Issue(ctx, csr, ca.GatewayProfile(g.ID, g.Agency))
		}
	}); perr != nil {
		return nil, nil, perr
	}
	if err != nil {
		return nil, nil, err
	}
	rec := n.certRecord(chain[0])
	if issued != nil {
		issued(rec.Serial)
	}
	err = n.renewals.Record(ctx, GatewayRenewRequest{Meta: n.meta("gateway:" + g.ID), Gateway: g.ID, OldSerial: old, Cert: rec, From: held})
	if errors.Is(err, ErrForbidden) && from == "" {
		// Another renewal made with the same certificate committed
		// first: the attempt this one repeats, whose answer is lost (a
		// stream that died, a retry over HTTPS). Renew from it, for the
		// key that renewal certified.
		if g2, ok := n.State().Gateway(gateway); ok && g2.Status == api.StatusEnrolled && slices.Contains(g2.RenewedFrom, presented) {
			return n.renewGateway(ctx, gateway, presented, presented, cmp.Or(held, presented), req, issued)
		}
	}
	if err != nil {
		return nil, nil, err
	}
	n.log.Info("gateway certificate renewed", "gateway", g.ID, "agency", g.Agency, "serial", rec.Serial, "old_serial", old, "presented", presented)
	return &api.RenewResponse{Certificate: string(ca.EncodePEM(chain...)), Serial: rec.Serial}, chain[0], nil
}
