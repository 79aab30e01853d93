package api

import (
	"bufio"
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
	"time"
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
	base   string
	http   *http.Client
	stream *http.Client // no overall timeout: watch streams live long
}

// NewClient returns a client for the controller at base (https://host:port).
func NewClient(base string, tlsConfig *tls.Config) *Client {
	tr := &http.Transport{TLSClientConfig: tlsConfig, ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second}
	return &Client{
		base:   base,
		http:   &http.Client{Transport: tr, Timeout: 30 * time.Second},
		stream: &http.Client{Transport: tr},
	}
}

// TLSConfig builds a client TLS config that trusts the root in rootFile and,
// when certFile is set, presents that certificate chain and key.
func TLSConfig(rootFile, certFile, keyFile string) (*tls.Config, error) {
	rootPEM, err := os.ReadFile(rootFile)
	if err != nil {
		return nil, fmt.Errorf("root certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(rootPEM) {
		return nil, fmt.Errorf("root certificate %s: no PEM certificate in it", rootFile)
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
	resp, err := c.http.Do(req)
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

// Report tells the controller what the gateway applied.
func (c *Client) Report(ctx context.Context, r Report) error {
	return c.do(ctx, http.MethodPost, "/v1/report", r, nil)
}

// ErrStreamEnded is returned by Watch when the controller closes the stream.
var ErrStreamEnded = errors.New("watch stream ended")

// Watch streams the gateway's view, calling fn for every view newer than
// since, until ctx ends, fn fails or the stream breaks.
func (c *Client) Watch(ctx context.Context, since uint64, fn func(*View) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/watch?since="+strconv.FormatUint(since, 10), nil)
	if err != nil {
		return err
	}
	resp, err := c.stream.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := checkStatus(resp); err != nil {
		return err
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue // heartbeat
		}
		v := new(View)
		if err := json.Unmarshal(line, v); err != nil {
			return fmt.Errorf("watch: decode view: %w", err)
		}
		if err := fn(v); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	return ErrStreamEnded
}

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
	var out TokenResponse
	req := TokenRequest{}
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

// ClusterStatus returns the answering node's view of the cluster.
func (c *Client) ClusterStatus(ctx context.Context) (*ClusterStatus, error) {
	var out ClusterStatus
	return &out, c.do(ctx, http.MethodGet, "/v1/cluster/status", nil, &out)
}
