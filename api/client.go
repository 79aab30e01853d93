package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	certchain "github.com/govnet/govnet/ca/chain"
)

// StatusError is a non-2xx answer from the controller.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string { return fmt.Sprintf("controller: %s (HTTP %d)", e.Msg, e.Code) }

// Client calls the controller's API. It is the only way govnetctl and
// govnet-agent talk to a controller.
type Client struct {
	base         string
	conns        *conns // shared by copies (Linearizable)
	linearizable bool
}

// conns holds the client's HTTP clients; ResetConnections replaces them.
type conns struct {
	tls    *tls.Config
	host   string              // the server's, from the base URL
	verify *certchain.Verifier // when tls trusts RootCAs: see reset
	mu     sync.Mutex
	tc     *tls.Config // what connections use, verifier included
	tr     *http.Transport
	http   *http.Client
	long   *http.Client // no overall timeout: snapshots and audit exports are long
	gw     *stream      // the gateway stream Watch holds open, if any
	// renewCall receives the controllers' renewal calls (OnRenewCall).
	renewCall func(reason string)
}

func (cs *conns) reset() {
	// Each transport gets its own copy of the TLS config: a transport
	// writes NextProtos into it on first use, and clients (one per
	// controller node, in the agent) share the config they were given.
	tc := cs.tls.Clone()
	if cs.verify != nil && tc != nil && tc.RootCAs == cs.verify.Roots() && !tc.InsecureSkipVerify &&
		tc.VerifyConnection == nil && tc.VerifyPeerCertificate == nil {
		// The same verdicts as crypto/tls's, with each controller node's
		// intermediate verified against the P-384 root once rather than
		// on every connection (see package ca/chain). The name checked is
		// the base URL's host: redirects elsewhere are refused below.
		cs.verify.ClientConfig(tc, cs.host)
	}
	// The transport gets a copy of its own (it writes NextProtos into it
	// on first use, while gateway streams clone tc).
	tr := &http.Transport{TLSClientConfig: tc.Clone(), ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second}
	cs.mu.Lock()
	old, gw := cs.tr, cs.gw
	cs.tc, cs.tr = tc, tr
	cs.http = &http.Client{Transport: tr, Timeout: 30 * time.Second, CheckRedirect: sameHost}
	cs.long = &http.Client{Transport: tr, CheckRedirect: sameHost}
	cs.mu.Unlock()
	if old != nil {
		old.CloseIdleConnections()
	}
	if gw != nil && !gw.renewOn.Load() {
		// It presents the certificate it was opened with, which the
		// controller no longer admits once renewed: Watch returns, and
		// its caller opens a new stream. A stream the renewal was made
		// on carries on under the new certificate.
		gw.close(ErrConnectionsReset)
	}
}

// ErrConnectionsReset ends Watch when ResetConnections closed its stream
// (after a renewal): a new call opens a stream with the new certificate.
var ErrConnectionsReset = errors.New("gateway stream closed: connections reset (a new certificate)")

// sameHost follows a redirect only to the host the client was made for:
// the controller never redirects, and its TLS name check is that host's.
func sameHost(req *http.Request, via []*http.Request) error {
	if req.URL.Host != via[0].URL.Host {
		return fmt.Errorf("redirect from %s to %s refused", via[0].URL.Host, req.URL.Host)
	}
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	return nil
}

func (c *Client) longClient() *http.Client {
	c.conns.mu.Lock()
	defer c.conns.mu.Unlock()
	return c.conns.long
}

func (c *Client) httpClient() *http.Client {
	c.conns.mu.Lock()
	defer c.conns.mu.Unlock()
	return c.conns.http
}

// ResetConnections makes later calls open new connections (and so present
// the client certificate the TLS config yields now, after a renewal).
// Calls in flight finish on their old connection; a gateway stream is
// closed, and Watch returns.
func (c *Client) ResetConnections() { c.conns.reset() }

// Linearizable returns a client whose reads reflect every write the
// cluster committed before they were sent (ConsistencyHeader), whichever
// node answers.
func (c *Client) Linearizable() *Client {
	l := *c
	l.linearizable = true
	return &l
}

// NewClient returns a client for the controller at base (https://host:port).
func NewClient(base string, tlsConfig *tls.Config) *Client {
	cs := &conns{tls: tlsConfig}
	if u, err := url.Parse(base); err == nil && u.Hostname() != "" && tlsConfig != nil && tlsConfig.RootCAs != nil {
		cs.host, cs.verify = u.Hostname(), certchain.NewVerifier(tlsConfig.RootCAs)
	}
	cs.reset()
	return &Client{base: base, conns: cs}
}

// LoadRoots reads the root certificates of a PEM file.
func LoadRoots(file string) (*x509.CertPool, error) {
	rootPEM, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("root certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(rootPEM) {
		return nil, fmt.Errorf("root certificate %s: no PEM certificate in it", file)
	}
	return pool, nil
}

// TLSConfig builds a client TLS config that trusts the root in rootFile and,
// when certFile is set, presents that certificate chain and key.
func TLSConfig(rootFile, certFile, keyFile string) (*tls.Config, error) {
	pool, err := LoadRoots(rootFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.linearizable {
		req.Header.Set(ConsistencyHeader, Linearizable)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := checkStatus(resp); err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}

func checkStatus(resp *http.Response) error {
	if resp.StatusCode/100 == 2 {
		return nil
	}
	var e Error
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = http.StatusText(resp.StatusCode)
	}
	return &StatusError{Code: resp.StatusCode, Msg: e.Error}
}

// Enroll exchanges a one-time token and a CSR for a certificate.
func (c *Client) Enroll(ctx context.Context, req EnrollRequest) (*EnrollResponse, error) {
	var out EnrollResponse
	return &out, c.do(ctx, http.MethodPost, "/v1/enroll", req, &out)
}

// Report tells the controller what the gateway applied: on the gateway
// stream while Watch holds one open, else as a request of its own.
func (c *Client) Report(ctx context.Context, r Report) error {
	c.conns.mu.Lock()
	s := c.conns.gw
	c.conns.mu.Unlock()
	if s != nil {
		if err := s.report(ctx, r); !errors.Is(err, errStreamGone) {
			return err
		}
	}
	return c.do(ctx, http.MethodPost, "/v1/report", r, nil)
}

// ErrStreamEnded is returned by Watch when the controller closes the stream.
var ErrStreamEnded = errors.New("watch stream ended")

// Agencies lists every agency.
func (c *Client) Agencies(ctx context.Context) ([]Agency, error) {
	var out []Agency
	return out, c.do(ctx, http.MethodGet, "/v1/agencies", nil, &out)
}

// AddAgency registers an agency (or renames it).
func (c *Client) AddAgency(ctx context.Context, a Agency) (*Agency, error) {
	var out Agency
	return &out, c.do(ctx, http.MethodPost, "/v1/agencies", a, &out)
}

// Gateways lists every gateway.
func (c *Client) Gateways(ctx context.Context) ([]Gateway, error) {
	var out []Gateway
	return out, c.do(ctx, http.MethodGet, "/v1/gateways", nil, &out)
}

// Gateway returns one gateway.
func (c *Client) Gateway(ctx context.Context, id string) (*Gateway, error) {
	var out Gateway
	return &out, c.do(ctx, http.MethodGet, "/v1/gateways/"+url.PathEscape(id), nil, &out)
}

// AddGateway registers a gateway.
func (c *Client) AddGateway(ctx context.Context, g Gateway) (*Gateway, error) {
	var out Gateway
	return &out, c.do(ctx, http.MethodPost, "/v1/gateways", g, &out)
}

// IssueToken asks for a one-time enrollment token for a gateway.
func (c *Client) IssueToken(ctx context.Context, gateway string, ttl time.Duration) (*TokenResponse, error) {
	return c.token(ctx, gateway, TokenRequest{}, ttl)
}

// ReenrollToken issues a one-time token with which an enrolled gateway
// enrolls again (officer): a new certificate and WireGuard key, the same
// name and overlay address; its certificates before are revoked.
func (c *Client) ReenrollToken(ctx context.Context, gateway string, ttl time.Duration) (*TokenResponse, error) {
	return c.token(ctx, gateway, TokenRequest{Reenroll: true}, ttl)
}

func (c *Client) token(ctx context.Context, gateway string, req TokenRequest, ttl time.Duration) (*TokenResponse, error) {
	var out TokenResponse
	if ttl > 0 {
		req.TTL = ttl.String()
	}
	return &out, c.do(ctx, http.MethodPost, "/v1/gateways/"+url.PathEscape(gateway)+"/token", req, &out)
}

// Policy returns the current policy.
func (c *Client) Policy(ctx context.Context) (*Policy, error) {
	var out Policy
	return &out, c.do(ctx, http.MethodGet, "/v1/policy", nil, &out)
}

// PublishPolicy validates and publishes a policy.
func (c *Client) PublishPolicy(ctx context.Context, name, source string) (*Policy, error) {
	var out Policy
	return &out, c.do(ctx, http.MethodPut, "/v1/policy", PolicyRequest{Name: name, Source: source}, &out)
}

// PolicyHistory returns every published policy, oldest first.
func (c *Client) PolicyHistory(ctx context.Context) ([]Policy, error) {
	var out []Policy
	return out, c.do(ctx, http.MethodGet, "/v1/policy/history", nil, &out)
}

// PlanPolicy checks a draft against the live registry and says which
// gateways would gain or lose which flows; nothing is committed.
func (c *Client) PlanPolicy(ctx context.Context, name, source string) (*PolicyPlan, error) {
	var out PolicyPlan
	return &out, c.do(ctx, http.MethodPost, "/v1/policy/plan", PolicyRequest{Name: name, Source: source}, &out)
}

// ClusterStatus returns the answering node's view of the cluster.
func (c *Client) ClusterStatus(ctx context.Context) (*ClusterStatus, error) {
	var out ClusterStatus
	return &out, c.do(ctx, http.MethodGet, "/v1/cluster/status", nil, &out)
}

// JoinNode adds a controller node to the cluster as a voter.
func (c *Client) JoinNode(ctx context.Context, req JoinRequest) (*ClusterStatus, error) {
	var out ClusterStatus
	return &out, c.do(ctx, http.MethodPost, "/v1/cluster/members", req, &out)
}

// RemoveNode takes a controller node out of the cluster.
func (c *Client) RemoveNode(ctx context.Context, node string) (*ClusterStatus, error) {
	var out ClusterStatus
	return &out, c.do(ctx, http.MethodDelete, "/v1/cluster/members/"+url.PathEscape(node), nil, &out)
}

// Metrics returns the node's metrics in Prometheus text format (operator,
// auditor).
func (c *Client) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if err := checkStatus(resp); err != nil {
		return "", err
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return string(b), err
}

// SaveSnapshot writes a backup of the replicated state to w. When the
// client trusts a root (TLSConfig), it checks the backup's signature
// line as it writes (BackupDigest): a backup cut short, or signed by no
// node of that root, is an error.
func (c *Client) SaveSnapshot(ctx context.Context, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/cluster/snapshot", nil)
	if err != nil {
		return err
	}
	resp, err := c.longClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := checkStatus(resp); err != nil {
		return err
	}
	d := NewBackupDigest()
	if _, err := io.Copy(io.MultiWriter(w, d), resp.Body); err != nil {
		return err
	}
	if c.conns.tls == nil || c.conns.tls.RootCAs == nil {
		return nil
	}
	if _, _, err := d.Verify(c.conns.tls.RootCAs); err != nil {
		return fmt.Errorf("the backup received does not check out: %w", err)
	}
	return nil
}

// RestoreSnapshot replaces the whole cluster's state with a backup.
func (c *Client) RestoreSnapshot(ctx context.Context, r io.Reader) (*ClusterStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/cluster/snapshot", r)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	resp, err := c.longClient().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := checkStatus(resp); err != nil {
		return nil, err
	}
	var out ClusterStatus
	return &out, json.NewDecoder(resp.Body).Decode(&out)
}

// People lists the registry of people.
func (c *Client) People(ctx context.Context) ([]Person, error) {
	var out []Person
	return out, c.do(ctx, http.MethodGet, "/v1/people", nil, &out)
}

// AddPerson registers a person's certificate and role (officer).
func (c *Client) AddPerson(ctx context.Context, p Person) (*Person, error) {
	var out Person
	return &out, c.do(ctx, http.MethodPost, "/v1/people", p, &out)
}

// RevokePerson revokes a person's certificate (officer).
func (c *Client) RevokePerson(ctx context.Context, name string) (*Person, error) {
	var out Person
	return &out, c.do(ctx, http.MethodPost, "/v1/people/"+url.PathEscape(name)+"/revoke", nil, &out)
}

// Invite issues a one-time token with which the person name enrolls for
// a certificate (officer; refused in four-eyes mode: RequestInvite).
func (c *Client) Invite(ctx context.Context, name string, req InviteRequest) (*TokenResponse, error) {
	var out TokenResponse
	return &out, c.do(ctx, http.MethodPost, "/v1/people/"+url.PathEscape(name)+"/invite", req, &out)
}

// EnrollPerson asks for a person's first certificate with an
// invitation's token; the client needs no certificate of its own.
func (c *Client) EnrollPerson(ctx context.Context, req PersonEnrollRequest) (*PersonCertResponse, error) {
	var out PersonCertResponse
	return &out, c.do(ctx, http.MethodPost, "/v1/people/enroll", req, &out)
}

// RenewPerson renews the caller's own certificate, for the key of the CSR.
func (c *Client) RenewPerson(ctx context.Context, req PersonRenewRequest) (*PersonCertResponse, error) {
	var out PersonCertResponse
	return &out, c.do(ctx, http.MethodPost, "/v1/people/renew", req, &out)
}

// Requests lists the four-eyes requests.
func (c *Client) Requests(ctx context.Context) ([]Request, error) {
	var out []Request
	return out, c.do(ctx, http.MethodGet, "/v1/requests", nil, &out)
}

// CreateRequest asks for a change that another officer must approve.
func (c *Client) CreateRequest(ctx context.Context, r RequestCreate) (*Request, error) {
	var out Request
	return &out, c.do(ctx, http.MethodPost, "/v1/requests", r, &out)
}

// ApproveRequest approves a request (an officer who is not the requester);
// for a token request the answer carries the token.
func (c *Client) ApproveRequest(ctx context.Context, id string) (*Request, error) {
	var out Request
	return &out, c.do(ctx, http.MethodPost, "/v1/requests/"+url.PathEscape(id)+"/approve", nil, &out)
}

// RejectRequest rejects a request.
func (c *Client) RejectRequest(ctx context.Context, id string) (*Request, error) {
	var out Request
	return &out, c.do(ctx, http.MethodPost, "/v1/requests/"+url.PathEscape(id)+"/reject", nil, &out)
}

// AuditExport calls fn for every audit entry with seq > since, in order.
func (c *Client) AuditExport(ctx context.Context, since uint64, fn func(AuditEntry) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/audit?since="+strconv.FormatUint(since, 10), nil)
	if err != nil {
		return err
	}
	if c.linearizable {
		req.Header.Set(ConsistencyHeader, Linearizable)
	}
	resp, err := c.longClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := checkStatus(resp); err != nil {
		return err
	}
	dec := json.NewDecoder(resp.Body)
	for dec.More() {
		var e AuditEntry
		if err := dec.Decode(&e); err != nil {
			return fmt.Errorf("audit export: %w", err)
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

// PublishRootCRL hands the controllers a root CRL the custodians signed.
func (c *Client) PublishRootCRL(ctx context.Context, der []byte) (*RootCRLPublished, error) {
	var out RootCRLPublished
	return &out, c.do(ctx, http.MethodPost, "/v1/crl/root", RootCRLPublish{DER: der}, &out)
}

// AuditCheckpoints lists the checkpoints the leaders signed and recorded
// in the replicated state, oldest first.
func (c *Client) AuditCheckpoints(ctx context.Context) ([]AuditCheckpoint, error) {
	var out []AuditCheckpoint
	return out, c.do(ctx, http.MethodGet, "/v1/audit/checkpoints", nil, &out)
}

// AuditCheckpoint asks the answering node to sign the chain's head.
func (c *Client) AuditCheckpoint(ctx context.Context) (*AuditCheckpoint, error) {
	var out AuditCheckpoint
	return &out, c.do(ctx, http.MethodPost, "/v1/audit/checkpoint", nil, &out)
}

// Certificates lists the certificate inventory; query may hold agency,
// revoked=true and expiring (a Go duration).
func (c *Client) Certificates(ctx context.Context, query url.Values) ([]Certificate, error) {
	var out []Certificate
	path := "/v1/certificates"
	if len(query) > 0 {
		path += "?" + query.Encode()
	}
	return out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// Certificate returns one certificate of the inventory by serial (hex).
func (c *Client) Certificate(ctx context.Context, serial string) (*Certificate, error) {
	var out Certificate
	return &out, c.do(ctx, http.MethodGet, "/v1/certificates/"+url.PathEscape(serial), nil, &out)
}

// Revoke revokes a certificate or a gateway in one step (officer; refused
// when the controllers require four-eyes approval).
func (c *Client) Revoke(ctx context.Context, r RevokeRequest) (*RevokeResponse, error) {
	var out RevokeResponse
	return &out, c.do(ctx, http.MethodPost, "/v1/revoke", r, &out)
}

// OnRenewCall makes the gateway streams Watch opens from now on carry
// renewal calls: fn is called, from the stream's reader, when the
// controllers ask the gateway to renew its certificate now. fn must not
// block.
func (c *Client) OnRenewCall(fn func(reason string)) {
	c.conns.mu.Lock()
	defer c.conns.mu.Unlock()
	c.conns.renewCall = fn
}

func (c *Client) renewCallHandler() func(string) {
	c.conns.mu.Lock()
	defer c.conns.mu.Unlock()
	return c.conns.renewCall
}

// RenewAll asks every gateway whose certificate was recorded before now
// to renew it at once (officer).
func (c *Client) RenewAll(ctx context.Context, reason string) (*RenewCallStatus, error) {
	var out RenewCallStatus
	return &out, c.do(ctx, http.MethodPost, "/v1/certificates/renew-all", RenewCall{Reason: reason}, &out)
}

// RenewAllStatus returns the last renewal call and how far it got.
func (c *Client) RenewAllStatus(ctx context.Context) (*RenewCallStatus, error) {
	var out RenewCallStatus
	return &out, c.do(ctx, http.MethodGet, "/v1/certificates/renew-all", nil, &out)
}

// Renew exchanges a CSR for a new certificate, authenticated by the
// gateway's current one: on the gateway stream while Watch holds one
// open with a node that takes renewals there (StreamProtoRenew; no new
// TLS handshake, and the stream carries on under the new certificate),
// else as a request of its own.
func (c *Client) Renew(ctx context.Context, r RenewRequest) (*RenewResponse, error) {
	c.conns.mu.Lock()
	s := c.conns.gw
	c.conns.mu.Unlock()
	if s != nil && s.renewable {
		if resp, err := s.renew(ctx, r); !errors.Is(err, errStreamGone) {
			return resp, err
		}
	}
	var out RenewResponse
	return &out, c.do(ctx, http.MethodPost, "/v1/renew", r, &out)
}

// Coverage returns the coverage report; window 0 means the controller's
// default (DefaultCoverageWindow).
func (c *Client) Coverage(ctx context.Context, window time.Duration) (*CoverageReport, error) {
	path := "/v1/reports/coverage"
	if window > 0 {
		path += "?window=" + url.QueryEscape(window.String())
	}
	var out CoverageReport
	return &out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// ImportAgencies registers many agencies in one all-or-nothing step; with
// req.DryRun it only says what would change.
func (c *Client) ImportAgencies(ctx context.Context, req AgencyImport) (*AgencyImportResult, error) {
	var out AgencyImportResult
	return &out, c.do(ctx, http.MethodPost, "/v1/agencies/import", req, &out)
}

// MergeAgencies merges agencies into a survivor; with req.DryRun it only
// previews the plan.
func (c *Client) MergeAgencies(ctx context.Context, req AgencyMerge) (*AgencyPlan, error) {
	var out AgencyPlan
	return &out, c.do(ctx, http.MethodPost, "/v1/agencies/merge", req, &out)
}

// ReparentAgency moves an agency under another parent; with req.DryRun it
// only previews the plan.
func (c *Client) ReparentAgency(ctx context.Context, code string, req AgencyReparent) (*AgencyPlan, error) {
	var out AgencyPlan
	return &out, c.do(ctx, http.MethodPost, "/v1/agencies/"+url.PathEscape(code)+"/reparent", req, &out)
}

// CloseAgency closes an agency's code.
func (c *Client) CloseAgency(ctx context.Context, code string) (*Agency, error) {
	var out Agency
	return &out, c.do(ctx, http.MethodPost, "/v1/agencies/"+url.PathEscape(code)+"/close", nil, &out)
}

// DecommissionGateway takes a gateway out of service for good.
func (c *Client) DecommissionGateway(ctx context.Context, id string, req DecommissionRequest) (*RevokeResponse, error) {
	var out RevokeResponse
	return &out, c.do(ctx, http.MethodPost, "/v1/gateways/"+url.PathEscape(id)+"/decommission", req, &out)
}
