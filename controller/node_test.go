package controller

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/hsm/hsmtest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(childNodeEnv); path != "" {
		os.Exit(runChildNode(path))
	}
	// Tests here keep tokens open while others start (leaked nodes close
	// late, clusters hold three), so every token the package needs is
	// made before the first is opened (hsmtest's package documentation):
	// a full run takes 61 now; the rest is room for the next tests (a
	// token costs ~12 ms to make), as each new test that starts a node
	// otherwise fails the package's last ones with hsm.ErrTokenNotFound.
	hsmtest.BatchSize = 96
	code := m.Run()
	hsmtest.Cleanup()
	os.Exit(code)
}

func freePort(t *testing.T) string {
	t.Helper()
	return freePortOn(t, "127.0.0.1")
}

// testNode initialises a controller with a fresh SoftHSM2 token and returns
// its config; people operator1 and officer1 get credentials in dir/people.
func testConfig(t *testing.T, opts ...func(*InitOptions)) Config {
	t.Helper()
	o := testInitOptions(t)
	for _, opt := range opts {
		opt(&o)
	}
	if err := Init(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	return o.Config
}

// testInitOptions is a node's configuration, with its own token, and the
// bootstrap people of a test cluster.
func testInitOptions(t *testing.T) InitOptions {
	t.Helper()
	hsmtest.Require(t)
	hc := hsmtest.NewToken(t)
	dir := t.TempDir()
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte(hc.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Node: "ctl1", DataDir: filepath.Join(dir, "data"), RaftAddr: freePort(t), APIAddr: "127.0.0.1:0",
		OverlayPrefix: "100.64.0.0/24",
		HSM:           HSMConfig{Module: hc.Module, TokenLabel: hc.TokenLabel, PINFile: pinFile},
	}
	return InitOptions{
		Config:    cfg,
		People:    []Person{{"operator1", ca.RoleOperator}, {"officer1", ca.RoleOfficer}, {"officer2", ca.RoleOfficer}},
		PeopleDir: filepath.Join(dir, "people"),
	}
}

// testConfigUnder is testConfig for a new cluster under the root of
// another's first node, rootCfg: what a lost cluster's custodians make
// to recover it (the root survives in its own token).
func testConfigUnder(t *testing.T, rootCfg Config) Config {
	t.Helper()
	ctx := context.Background()
	o := testInitOptions(t)
	o.Found = true
	csr, err := PrepareJoin(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := SignIntermediate(ctx, rootCfg, csr, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := FinishJoin(ctx, o.Config, bundle, time.Now()); err != nil {
		t.Fatal(err)
	}
	return o.Config
}

func startNode(t *testing.T, cfg Config) *Node {
	t.Helper()
	return startNodeAt(t, cfg, time.Now)
}

// startNodeAt starts a node whose clock is now.
func startNodeAt(t *testing.T, cfg Config, now func() time.Time) *Node {
	t.Helper()
	n, err := start(context.Background(), cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), now)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for n.Ready() != nil {
		if time.Now().After(deadline) {
			n.Close()
			t.Fatalf("node not ready: %v", n.Ready())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return n
}

func client(t *testing.T, cfg Config, n *Node, certFile, keyFile string) *api.Client {
	t.Helper()
	tc, err := api.TLSConfig(cfg.pkiPath(rootFile), certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return api.NewClient("https://"+n.Addr().String(), tc)
}

func person(t *testing.T, cfg Config, n *Node, name string) *api.Client {
	people := filepath.Join(filepath.Dir(cfg.DataDir), "people")
	return client(t, cfg, n, filepath.Join(people, name+".crt"), filepath.Join(people, name+".key"))
}

func wantStatus(t *testing.T, err error, code int, contains string) {
	t.Helper()
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != code || !strings.Contains(se.Msg, contains) {
		t.Fatalf("got %v, want HTTP %d containing %q", err, code, contains)
	}
}

type enrolled struct {
	resp   *api.EnrollResponse
	tls    *tls.Config
	client *api.Client
}

// enroll plays an agent: keys made here, CSR and WireGuard key sent with the token.
func enroll(t *testing.T, cfg Config, n *Node, token string) (*enrolled, error) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	wg, _ := wgtypes.GeneratePrivateKey()
	return enrollWith(t, cfg, n, token, key, wg)
}

// enrollWith is enroll with the keys given.
func enrollWith(t *testing.T, cfg Config, n *Node, token string, key *ecdsa.PrivateKey, wg wgtypes.Key) (*enrolled, error) {
	t.Helper()
	csr, err := ca.NewCSR(key, "x")
	if err != nil {
		t.Fatal(err)
	}
	anon := client(t, cfg, n, "", "")
	resp, err := anon.Enroll(context.Background(), api.EnrollRequest{
		Token:     token,
		CSR:       string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw})),
		PublicKey: wg.PublicKey().String(),
	})
	if err != nil {
		return nil, err
	}
	chain, err := ca.ParsePEM([]byte(resp.Certificate))
	if err != nil {
		t.Fatal(err)
	}
	tc, _ := api.TLSConfig(cfg.pkiPath(rootFile), "", "")
	tc.Certificates = []tls.Certificate{{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key}}
	return &enrolled{resp: resp, tls: tc, client: api.NewClient("https://"+n.Addr().String(), tc)}, nil
}

func TestControllerEnrollWatchRestart(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer func() { n.Close() }()
	ctx := context.Background()
	op, off := person(t, cfg, n, "operator1"), person(t, cfg, n, "officer1")

	for _, a := range []api.Agency{
		{Code: "000.00.00.H29", Name: "Ủy ban nhân dân tỉnh Quảng Ninh"},
		{Code: "000.00.04.H29", Name: "Ủy ban nhân dân thành phố Hạ Long"},
		{Code: "000.12.04.H29", Name: "Ủy ban nhân dân phường Hồng Gai"},
		{Code: "000.00.00.H49", Name: "Ủy ban nhân dân tỉnh Quảng Nam"},
	} {
		if _, err := op.AddAgency(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	// Bad input: clear errors, nothing recorded.
	_, err := op.AddAgency(ctx, api.Agency{Code: "000.12.05.H29", Name: "x"})
	wantStatus(t, err, 400, "parent agency 000.00.05.H29")
	_, err = op.AddAgency(ctx, api.Agency{Code: "H29", Name: "x"})
	wantStatus(t, err, 400, "four dot-separated groups")
	if ags, _ := op.Agencies(ctx); len(ags) != 4 {
		t.Fatalf("%d agencies, want 4", len(ags))
	}
	if ags, _ := op.Agencies(ctx); ags[2].Code != "000.00.04.H29" || ags[2].Level != "district" || ags[2].Parent != "000.00.00.H29" {
		t.Fatalf("agencies sorted by code, the district third: %+v", ags)
	}

	for _, g := range []api.Gateway{{ID: "gw1", Agency: "000.00.00.H29"}, {ID: "gw2", Agency: "000.00.00.H49"}, {ID: "gw3", Agency: "000.12.04.H29"}} {
		if _, err := op.AddGateway(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	_, err = op.AddGateway(ctx, api.Gateway{ID: "gw9", Agency: "000.00.00.H01"})
	wantStatus(t, err, 400, "not registered")

	// Separation of duties: an operator cannot issue tokens.
	_, err = op.IssueToken(ctx, "gw1", 0)
	wantStatus(t, err, 403, "officer")

	tokens := map[string]string{}
	for _, id := range []string{"gw1", "gw2", "gw3"} {
		tr, err := off.IssueToken(ctx, id, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		tokens[id] = tr.Token
	}
	gw1, err := enroll(t, cfg, n, tokens["gw1"])
	if err != nil {
		t.Fatal(err)
	}
	if gw1.resp.OverlayIP != netip.MustParseAddr("100.64.0.1") || gw1.resp.Gateway != "gw1" {
		t.Fatalf("enroll: %+v", gw1.resp)
	}
	// The certificate chains to the root and names the gateway and its agency.
	chain, _ := ca.ParsePEM([]byte(gw1.resp.Certificate))
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(gw1.resp.Root))
	inter := x509.NewCertPool()
	inter.AddCert(chain[1])
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	if id, err := ca.IdentityOf(chain[0]); err != nil || id.Name != "gw1" || id.Agency != "000.00.00.H29" {
		t.Fatalf("identity %+v %v", id, err)
	}
	if got := chain[0].NotAfter.Sub(chain[0].NotBefore); got < 24*time.Hour || got > 24*time.Hour+2*time.Minute {
		t.Fatalf("lifetime %v", got)
	}

	// The token is burnt: a second use is refused and changes nothing.
	_, err = enroll(t, cfg, n, tokens["gw1"])
	wantStatus(t, err, 403, "already used")
	_, err = enroll(t, cfg, n, "not-a-token")
	wantStatus(t, err, 403, "unknown enrollment token")
	short, err := off.IssueToken(ctx, "gw3", time.Nanosecond)
	if err != nil {
		t.Fatal(err)
	}
	_, err = enroll(t, cfg, n, short.Token)
	wantStatus(t, err, 403, "expired")

	// A CSR whose signature does not verify is refused and burns no
	// token: gw2 enrolls with the same token next.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := ca.NewCSR(key, "x")
	forged := bytes.Clone(csr.Raw)
	forged[len(forged)-1] ^= 0x01 // the last byte of the signature's s
	wg, _ := wgtypes.GeneratePrivateKey()
	_, err = client(t, cfg, n, "", "").Enroll(ctx, api.EnrollRequest{Token: tokens["gw2"], PublicKey: wg.PublicKey().String(),
		CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: forged}))})
	wantStatus(t, err, 400, "signature does not verify")
	// So is an endpoint that is not IP:port.
	_, err = client(t, cfg, n, "", "").Enroll(ctx, api.EnrollRequest{Token: tokens["gw2"], PublicKey: wg.PublicKey().String(),
		CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw})), Endpoint: "192.0.2.11:0"})
	wantStatus(t, err, 400, `endpoint "192.0.2.11:0": port 0`)

	gw2, err := enroll(t, cfg, n, tokens["gw2"])
	if err != nil {
		t.Fatal(err)
	}
	// A person's certificate does not open the gateway stream.
	err = op.Watch(ctx, 0, func(*api.View) error { return nil })
	wantStatus(t, err, 401, "gateway")

	// A policy with errors is rejected and publishes nothing.
	_, err = off.PublishPolicy(ctx, "bad.yaml", "version: 1\nrules:\n  - from: [nosuch]\n    to: [provinces]\n    ports: [tcp/22]\n")
	wantStatus(t, err, 400, "bad.yaml:3")
	_, err = off.Policy(ctx)
	wantStatus(t, err, 404, "no policy")

	const pol = "version: 1\ngroups:\n  provinces:\n    level: province\nrules:\n  - from: [provinces]\n    to: [provinces]\n    ports: [tcp/22]\n"
	_, err = op.PublishPolicy(ctx, "p.yaml", pol)
	wantStatus(t, err, 403, "officer")
	p, err := off.PublishPolicy(ctx, "p.yaml", pol)
	if err != nil || p.Version != 1 || p.Actor != "officer1" {
		t.Fatalf("publish: %+v %v", p, err)
	}

	// gw1's stream: a view with gw2 as its peer and gw2's address on tcp/22.
	v := firstView(t, gw1.client, 0)
	if v.PolicyVersion != 1 || len(v.Peers) != 1 || v.Peers[0].Gateway != "gw2" || v.RaftIndex == 0 {
		t.Fatalf("view %+v", v)
	}
	wantRule := api.Rule{Source: netip.MustParsePrefix("100.64.0.2/32"), Protocol: "tcp", Port: 22}
	if len(v.Rules) != 1 || v.Rules[0] != wantRule {
		t.Fatalf("rules %+v", v.Rules)
	}
	if err := gw1.client.Report(ctx, api.Report{PolicyVersion: 1, RaftIndex: v.RaftIndex, RulesetDigest: "sha256:x"}); err != nil {
		t.Fatal(err)
	}
	// A digest other than the one the view compiles to is a mismatch.
	if g, err := op.Gateway(ctx, "gw1"); err != nil || g.Ruleset != api.RulesetMismatch || !strings.HasPrefix(g.ExpectedDigest, "sha256:") {
		t.Fatalf("attestation of a wrong digest: %+v %v", g, err)
	}
	// A gateway that could not apply its view says so, and why: failed,
	// whatever the digest of the view it still enforces.
	failed := api.Report{PolicyVersion: 0, RaftIndex: v.RaftIndex - 1, RulesetDigest: "sha256:y", FailedIndex: v.RaftIndex, ApplyError: "apply firewall: nftables: install table inet govnet (previous table kept): invalid argument"}
	if err := gw1.client.Report(ctx, failed); err != nil {
		t.Fatal(err)
	}
	if g, err := op.Gateway(ctx, "gw1"); err != nil || g.Ruleset != api.RulesetFailed || g.Report.ApplyError != failed.ApplyError {
		t.Fatalf("attestation of a failed view: %+v %v", g, err)
	}
	// A gateway that left peers out of its WireGuard device says which:
	// stored with the report, shown as such; its ruleset is attested as
	// before (the digest decides).
	leftOut := api.Report{PolicyVersion: 1, RaftIndex: v.RaftIndex, RulesetDigest: "sha256:x", PeersLeftOut: 1,
		PeerError: "invalid peer: peer 0 (gw2, " + v.Peers[0].PublicKey + "): allowed IP 10.0.0.0/24 already belongs to …"}
	if err := gw1.client.Report(ctx, leftOut); err != nil {
		t.Fatal(err)
	}
	if g, err := op.Gateway(ctx, "gw1"); err != nil || g.Ruleset != api.RulesetMismatch || g.Report.PeersLeftOut != 1 || g.Report.PeerError != leftOut.PeerError {
		t.Fatalf("a report with peers left out: %+v %v", g, err)
	}
	// Reasons no agent sends are refused, whichever field, and nothing
	// of them is recorded. (JSON carries no invalid UTF-8, which
	// encoding/json replaces on both ends: that check is for callers of
	// recordReport, as the stream is.)
	for _, bad := range []struct {
		rep  api.Report
		want string
		http bool // also sent over HTTPS
	}{
		{api.Report{PeersLeftOut: 1, PeerError: strings.Repeat("x", maxApplyError+1)}, "peer_error: 1101 bytes, at most 1100", true},
		{api.Report{PeersLeftOut: 1, PeerError: "peer \xff"}, "peer_error: not UTF-8", false},
		{api.Report{ApplyError: strings.Repeat("é", maxApplyError/2+1)}, "apply_error: 1102 bytes, at most 1100", true},
		{api.Report{ApplyError: "\xc3("}, "apply_error: not UTF-8", false},
		{api.Report{PeersLeftOut: -1}, "peers_left_out: -1, negative", true},
	} {
		bad.rep.PolicyVersion, bad.rep.RaftIndex, bad.rep.RulesetDigest = 1, v.RaftIndex, "sha256:z"
		if bad.http {
			wantStatus(t, gw1.client.Report(ctx, bad.rep), 400, bad.want)
		}
		if err := n.recordReport(ctx, "gw1", bad.rep); !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), bad.want) {
			t.Fatalf("recordReport: %v, want a bad request saying %q", err, bad.want)
		}
		if got := n.State().gatewayReport("gw1"); !got.SameState(leftOut) {
			t.Fatalf("a refused report (%s) changed the one recorded: %+v", bad.want, got)
		}
	}
	if err := gw1.client.Report(ctx, api.Report{PolicyVersion: 1, RaftIndex: v.RaftIndex, RulesetDigest: "sha256:x"}); err != nil {
		t.Fatal(err)
	}
	if g, err := op.Gateway(ctx, "gw1"); err != nil || g.Report.PeersLeftOut != 0 || g.Report.PeerError != "" {
		t.Fatalf("a report with every peer applied left the peers left out recorded: %+v %v", g, err)
	}
	_ = gw2

	// The same report again is a refresh: answered at once, held, and
	// committed at the next flush. A report that changes something is
	// committed at once and drops the held refresh.
	rep := api.Report{PolicyVersion: 1, RaftIndex: v.RaftIndex, RulesetDigest: "sha256:x"}
	first := n.State().gatewayReport("gw1").At
	if err := gw1.client.Report(ctx, rep); err != nil {
		t.Fatal(err)
	}
	if got := n.State().gatewayReport("gw1").At; !got.Equal(first) {
		t.Fatalf("a refresh was committed at once (%s, first report %s)", got, first)
	}
	n.refresh.flush(ctx)
	refreshed := n.State().gatewayReport("gw1").At
	if !refreshed.After(first) {
		t.Fatalf("flushed refresh: report time %s, first report %s", refreshed, first)
	}
	if err := gw1.client.Report(ctx, rep); err != nil {
		t.Fatal(err)
	}
	rep.Peers = 1
	if err := gw1.client.Report(ctx, rep); err != nil {
		t.Fatal(err)
	}
	changed := n.State().gatewayReport("gw1")
	if changed.Peers != 1 || !changed.At.After(refreshed) {
		t.Fatalf("a changed report was not committed at once: %+v", changed)
	}
	n.refresh.flush(ctx)
	if got := n.State().gatewayReport("gw1"); !got.At.Equal(changed.At) {
		t.Fatalf("the refresh held before a changed report was committed after it: %+v", got)
	}
	// A refresh held when the node stops is committed as it stops.
	if err := gw1.client.Report(ctx, rep); err != nil {
		t.Fatal(err)
	}

	// Restart: everything is still there.
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n = startNode(t, cfg)
	op = person(t, cfg, n, "operator1")
	g, err := op.Gateway(ctx, "gw1")
	if err != nil {
		t.Fatal(err)
	}
	if g.Status != api.StatusEnrolled || g.Report == nil || g.Report.PolicyVersion != 1 || g.OverlayIP != netip.MustParseAddr("100.64.0.1") {
		t.Fatalf("after restart: %+v", g)
	}
	if !g.Report.At.After(changed.At) {
		t.Fatalf("the refresh held at shutdown was lost: report at %s, changed report at %s", g.Report.At, changed.At)
	}
	gw1.client = rebase(t, gw1, n)
	if v2 := firstView(t, gw1.client, 0); v2.PolicyVersion != 1 || len(v2.Peers) != 1 {
		t.Fatalf("view after restart %+v", v2)
	}
	_, err = enroll(t, cfg, n, tokens["gw1"])
	wantStatus(t, err, 403, "already used")
}

// enrollNew registers gateway id under agency (operator op), has officer
// off issue its token and enrolls it.
// fourEyesNode starts a node in four-eyes mode with agency 000.00.00.H29
// and returns its config and the clients of operator1, officer1 and
// officer2; the node is closed when the test ends.
func fourEyesNode(t *testing.T) (Config, *Node, *api.Client, *api.Client, *api.Client) {
	cfg := testConfig(t)
	cfg.FourEyes = true
	n := startNode(t, cfg)
	t.Cleanup(func() { n.Close() })
	op, off1, off2 := person(t, cfg, n, "operator1"), person(t, cfg, n, "officer1"), person(t, cfg, n, "officer2")
	if _, err := op.AddAgency(context.Background(), api.Agency{Code: "000.00.00.H29", Name: "Quảng Ninh"}); err != nil {
		t.Fatal(err)
	}
	return cfg, n, op, off1, off2
}

func enrollNew(t *testing.T, ctx context.Context, cfg Config, n *Node, op, off *api.Client, id, agency string) *enrolled {
	t.Helper()
	if _, err := op.AddGateway(ctx, api.Gateway{ID: id, Agency: agency}); err != nil {
		t.Fatal(err)
	}
	tr, err := off.IssueToken(ctx, id, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	e, err := enroll(t, cfg, n, tr.Token)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// rebase points an enrolled gateway's client at a restarted node.
func rebase(t *testing.T, e *enrolled, n *Node) *api.Client {
	t.Helper()
	return api.NewClient("https://"+n.Addr().String(), e.tls)
}

func firstView(t *testing.T, c *api.Client, since uint64) *api.View {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got *api.View
	errStop := errors.New("stop")
	err := c.Watch(ctx, since, func(v *api.View) error { got = v; return errStop })
	if !errors.Is(err, errStop) {
		t.Fatalf("watch: %v", err)
	}
	return got
}

// TestFourEyesAndPeople: the registry of people gates every call, and
// tokens, publications and revocations need an officer other than the
// requester.
func TestFourEyesAndPeople(t *testing.T) {
	cfg, n, op, off1, off2 := fourEyesNode(t)
	ctx := context.Background()
	for _, id := range []string{"gw1", "gw2"} {
		if _, err := op.AddGateway(ctx, api.Gateway{ID: id, Agency: "000.00.00.H29"}); err != nil {
			t.Fatal(err)
		}
	}
	// Four-eyes mode: the one-step endpoints are closed.
	_, err := off1.IssueToken(ctx, "gw1", 0)
	wantStatus(t, err, 403, "four-eyes")
	_, err = off1.PublishPolicy(ctx, "p.yaml", "version: 1\n")
	wantStatus(t, err, 403, "four-eyes")

	// Token: the operator asks, an officer approves and receives the token.
	req, err := op.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestToken, Gateway: "gw1", TTL: "10m"})
	if err != nil || req.Status != api.RequestPending || req.Requester != "operator1" {
		t.Fatalf("request: %+v %v", req, err)
	}
	_, err = op.ApproveRequest(ctx, req.ID)
	wantStatus(t, err, 403, "officer")
	got, err := off1.ApproveRequest(ctx, req.ID)
	if err != nil || got.Status != api.RequestApproved || got.Token == nil || got.Approver != "officer1" {
		t.Fatalf("approve: %+v %v", got, err)
	}
	_, err = off2.ApproveRequest(ctx, req.ID)
	wantStatus(t, err, 409, "already approved")
	gw1, err := enroll(t, cfg, n, got.Token.Token)
	if err != nil {
		t.Fatal(err)
	}

	// Policy: an officer asks; approving it themself is refused.
	const pol = "version: 1\n"
	preq, err := off1.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestPolicy, PolicyName: "p.yaml", PolicySource: pol})
	if err != nil {
		t.Fatal(err)
	}
	_, err = off1.ApproveRequest(ctx, preq.ID)
	wantStatus(t, err, 403, "own request")
	_, err = off1.RejectRequest(ctx, preq.ID)
	wantStatus(t, err, 403, "own request")
	if got, err := off2.ApproveRequest(ctx, preq.ID); err != nil || got.PolicyVersion != 1 {
		t.Fatalf("approve policy: %+v %v", got, err)
	}
	if p, err := op.Policy(ctx); err != nil || p.Version != 1 || p.Actor != "officer2" {
		t.Fatalf("policy: %+v %v", p, err)
	}
	// A policy that does not check is refused at request time.
	_, err = op.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestPolicy, PolicySource: "version: 1\nrules:\n  - from: [nosuch]\n    to: [x]\n    ports: [tcp/22]\n"})
	wantStatus(t, err, 400, "nosuch")

	// Revocation: asked, approved by someone else; the gateway's stream ends.
	rreq, err := op.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestRevoke, Gateway: "gw1", Reason: "key lost"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := off2.ApproveRequest(ctx, rreq.ID); err != nil {
		t.Fatal(err)
	}
	if g, _ := op.Gateway(ctx, "gw1"); g.Status != api.StatusRevoked {
		t.Fatalf("gw1 is %s", g.Status)
	}
	err = gw1.client.Watch(ctx, 0, func(*api.View) error { return nil })
	wantStatus(t, err, 403, "not enrolled")

	// People: a certificate our CA signed but the registry does not know is
	// refused; a revoked person is refused.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := ca.NewCSR(key, "mallory")
	chain, err := n.ca.Issue(ctx, csr, ca.PersonProfile("mallory", ca.RoleOfficer))
	if err != nil {
		t.Fatal(err)
	}
	tc, _ := api.TLSConfig(cfg.pkiPath(rootFile), "", "")
	tc.Certificates = []tls.Certificate{{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key}}
	mallory := api.NewClient("https://"+n.Addr().String(), tc)
	_, err = mallory.Agencies(ctx)
	wantStatus(t, err, 403, "not in the registry")
	// The CA records what it issues.
	if _, err := n.submit(ctx, CmdCertRecord, &CertRecordRequest{Meta: n.meta("node:ctl1"), Certs: []api.Certificate{n.certRecord(chain[0])}}); err != nil {
		t.Fatal(err)
	}
	// In four-eyes mode one officer neither registers nor revokes a
	// person alone (they would approve their own requests through a
	// second officer of their making, or revoke every other officer).
	register := func(serial string) error {
		req, err := off1.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestPerson, PersonName: "mallory", PersonRole: ca.RoleOfficer, Serial: serial})
		if err != nil {
			return err
		}
		_, err = off2.ApproveRequest(ctx, req.ID)
		return err
	}
	_, err = off1.AddPerson(ctx, api.Person{Name: "mallory", Role: ca.RoleOfficer, Serial: ca.Serial(chain[0])})
	wantStatus(t, err, 403, "request person")
	if err := register(ca.Serial(chain[0])); err != nil {
		t.Fatal(err)
	}
	if _, err := mallory.Agencies(ctx); err != nil {
		t.Fatalf("registered person refused: %v", err)
	}
	_, err = off1.RevokePerson(ctx, "mallory")
	wantStatus(t, err, 403, "request revoke --serial "+ca.Serial(chain[0]))
	rv, err := op.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestRevoke, Serial: ca.Serial(chain[0]), RevocationReason: "privilegeWithdrawn"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := off2.ApproveRequest(ctx, rv.ID); err != nil {
		t.Fatal(err)
	}
	_, err = mallory.Agencies(ctx)
	wantStatus(t, err, 403, "revoked")
	err = register(ca.Serial(chain[0]))
	wantStatus(t, err, 409, "was revoked")
	// Nor after another serial was registered in between.
	if err := register("1"); err != nil {
		t.Fatal(err)
	}
	err = register(ca.Serial(chain[0]))
	wantStatus(t, err, 409, "revoked")
	_, err = mallory.Agencies(ctx)
	wantStatus(t, err, 403, "not the one registered")

	// The audit chain names who did what, verifies, and its signed head
	// catches a truncated export.
	cp, err := off2.AuditCheckpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var entries []api.AuditEntry
	if err := off2.AuditExport(ctx, 0, func(e api.AuditEntry) error { entries = append(entries, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := api.VerifyAudit(entries); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range entries {
		if e.Action == "request-decide" && e.Actor == "officer2" && e.Role == ca.RoleOfficer && e.Object == rreq.ID && e.RaftIndex > 0 {
			found = true
		}
	}
	if !found {
		t.Fatalf("no audit entry for officer2 approving the revocation: %+v", entries)
	}
	roots := x509.NewCertPool()
	roots.AddCert(n.ca.Root())
	if _, err := api.VerifyCheckpoint(*cp, roots, entries); err != nil {
		t.Fatal(err)
	}
	cut := entries[:len(entries)-3]
	if _, err := api.VerifyCheckpoint(*cp, roots, cut); err == nil || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("truncated export: %v", err)
	}
	_, err = op.AuditCheckpoint(ctx)
	wantStatus(t, err, 403, "auditor")
}

func TestRateLimit(t *testing.T) {
	now := t0
	l := newLimiter(10, func() time.Time { return now })
	for i := range 20 { // the burst
		if ok, _ := l.allow("person/a"); !ok {
			t.Fatalf("request %d refused within the burst", i)
		}
	}
	ok, wait := l.allow("person/a")
	if ok || wait <= 0 || wait > 100*time.Millisecond {
		t.Fatalf("21st request: ok=%v wait=%v", ok, wait)
	}
	if ok, _ := l.allow("person/b"); !ok {
		t.Fatal("another client was limited")
	}
	now = now.Add(100 * time.Millisecond) // one token back
	if ok, _ := l.allow("person/a"); !ok {
		t.Fatal("refused after refill")
	}
	if ok, _ := l.allow("person/a"); ok {
		t.Fatal("allowed beyond the rate")
	}
}
