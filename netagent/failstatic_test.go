package netagent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/internal/netnstest"
	"github.com/govnet/govnet/policy/nft"
)

// The fail-static tests run the whole agent (Run) in a helper process
// inside a namespace: the test binary re-executed under `ip netns exec`
// with GOVNET_AGENT_HELPER set to a Config. No controller listens at the
// configured address, so the agent only ever has its state directory.

// TestAgentRunHelper is not a test: it is the agent helper's entry point.
func TestAgentRunHelper(t *testing.T) {
	cfgJSON := os.Getenv("GOVNET_AGENT_HELPER")
	if cfgJSON == "" {
		return
	}
	var cfg Config
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if err := Run(ctx, cfg, log); err != nil {
		fmt.Fprintln(os.Stderr, "run:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// failStaticLab is an enrolled gateway's state directory (written by
// hand: no controller) and a namespace to run its agent in.
type failStaticLab struct {
	t    *testing.T
	ns   *netnstest.NS
	cfg  Config
	fw   *Firewall // reads the namespace's table
	view *api.View // the view saved in the state directory
}

func newFailStaticLab(t *testing.T, notAfter time.Time) *failStaticLab {
	netnstest.RequireTUN(t)
	l := &failStaticLab{t: t, ns: netnstest.New(t)}
	l.cfg = DefaultConfig()
	l.cfg.Controller = "https://127.0.0.1:1" // nothing listens: every controller is down
	l.cfg.StateDir = t.TempDir()
	l.cfg.Interface = netnstest.IfName("gfs")
	l.cfg.Reconcile = time.Second
	var err error
	if l.fw, err = NewFirewall(l.cfg.Interface, WithNetNS(l.ns.Fd())); err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "gw-fs"},
		NotBefore: notAfter.Add(-24 * time.Hour), NotAfter: notAfter,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	wg, _ := wgtypes.GeneratePrivateKey()
	peer, _ := wgtypes.GeneratePrivateKey()
	id := Identity{Gateway: "gw-fs", Agency: "000.00.00.H29",
		OverlayIP: netip.MustParseAddr("100.64.0.1"), OverlayPrefix: netip.MustParsePrefix("100.64.0.0/24")}
	idJSON, _ := json.Marshal(id)
	l.view = &api.View{Gateway: "gw-fs", RaftIndex: 42, PolicyVersion: 3,
		OverlayIP: id.OverlayIP, OverlayPrefix: id.OverlayPrefix,
		Peers: []api.Peer{{Gateway: "gw-peer", Agency: "000.00.00.H49", PublicKey: peer.PublicKey().String(),
			Endpoint: "192.0.2.12:51820", AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.0.2/32")}}},
		Rules: []api.Rule{{Source: netip.MustParsePrefix("100.64.0.2/32"), Protocol: "tcp", Port: 22}},
		LANs:  []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")},
	}
	viewJSON, _ := json.Marshal(l.view)
	for name, data := range map[string][]byte{
		fileTLSKey: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}),
		fileCert:   certPEM,
		fileRoot:   certPEM,
		fileWGKey:  []byte(wg.String() + "\n"),
		fileIdent:  idJSON,
		fileView:   viewJSON,
	} {
		if err := os.WriteFile(l.cfg.path(name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// start runs the agent in the namespace; its output goes to the returned
// buffer (and to the test log when the test fails).
func (l *failStaticLab) start() (*exec.Cmd, *lockedBuffer) {
	l.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		l.t.Fatal(err)
	}
	cfgJSON, _ := json.Marshal(l.cfg)
	cmd := l.ns.Command(exe, "-test.run=^TestAgentRunHelper$", "-test.timeout=0")
	cmd.Env = append(os.Environ(), "GOVNET_AGENT_HELPER="+string(cfgJSON))
	out := new(lockedBuffer)
	cmd.Stdout, cmd.Stderr = out, out
	netnstest.StartCmd(l.t, cmd)
	l.t.Cleanup(func() {
		if l.t.Failed() {
			l.t.Logf("agent output:\n%s", out.String())
		}
	})
	return cmd, out
}

// stop sends SIGTERM and waits for a clean exit.
func (l *failStaticLab) stop(cmd *exec.Cmd) {
	l.t.Helper()
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			l.t.Fatalf("agent after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		l.t.Fatal("agent still running 20s after SIGTERM")
	}
}

// waitFor polls cond until it holds.
func (l *failStaticLab) waitFor(what string, cond func() error) {
	l.t.Helper()
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if err = cond(); err == nil {
			return
		}
	}
	l.t.Fatalf("%s: %v", what, err)
}

// digestIs is a condition: the namespace's table has digest want.
func (l *failStaticLab) digestIs(want string) func() error {
	return func() error {
		got, err := l.fw.Digest()
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("table digest %s, want %s", got, want)
		}
		return nil
	}
}

// peers returns the public keys the namespace's WireGuard interface holds.
func (l *failStaticLab) peers() (string, error) {
	out, err := l.ns.Run("wg", "show", l.cfg.Interface, "peers")
	return strings.TrimSpace(string(out)), err
}

// watchTable records, until the returned stop, every moment the table
// is absent or holds anything but one of allowed.
func (l *failStaticLab) watchTable(allowed ...string) (stop func() []string) {
	var (
		bad  []string
		done = make(chan struct{})
		end  = make(chan struct{})
	)
	go func() {
		defer close(end)
		for {
			select {
			case <-done:
				return
			case <-time.After(2 * time.Millisecond):
			}
			// A read is several netlink dumps: one that straddles an
			// atomic replacement can mix the two tables. Only what two
			// reads in a row agree on counts.
			got, err := l.fw.Digest()
			if err == nil && slices.Contains(allowed, got) {
				continue
			}
			again, err2 := l.fw.Digest()
			switch {
			case errors.Is(err, ErrNoTable) && errors.Is(err2, ErrNoTable):
				bad = append(bad, "no table")
			case err == nil && err2 == nil && got == again && !slices.Contains(allowed, got):
				bad = append(bad, "table "+got)
			}
		}
	}()
	return func() []string { close(done); <-end; return bad }
}

// TestFailStaticRestart runs the agent with every controller down and a
// certificate that expired meanwhile. It enforces the saved view (table
// and WireGuard peers) without a controller and says how to bring the
// gateway back; SIGTERM and SIGKILL leave the table in place, and a
// restart re-applies the saved view with the table never absent or
// different in between. A saved view that is torn, empty or another
// gateway's is refused with an error that names the file, and the agent
// enforces deny-all on the overlay instead, never an open firewall.
func TestFailStaticRestart(t *testing.T) {
	netnstest.RequireTools(t, "nft", "wg")
	l := newFailStaticLab(t, time.Now().Add(-time.Hour))
	want, err := nft.ExpectedDigest(l.view.Rules, l.view.LANs)
	if err != nil {
		t.Fatal(err)
	}
	denyAll, err := nft.ExpectedDigest([]api.Rule{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	enforcing := func() {
		t.Helper()
		l.waitFor("the saved view's table", l.digestIs(want))
		l.waitFor("the saved view's peers", func() error {
			got, err := l.peers()
			if err != nil || got != l.view.Peers[0].PublicKey {
				return fmt.Errorf("peers %q (%v), want %s", got, err, l.view.Peers[0].PublicKey)
			}
			return nil
		})
	}

	cmd, out := l.start()
	enforcing()
	l.waitFor("a clear word about the expired certificate", func() error {
		if s := out.String(); !strings.Contains(s, "ErrCertExpired") && !strings.Contains(s, "re-enroll") {
			return errors.New("no mention of re-enrollment yet")
		}
		return nil
	})

	// SIGTERM: the table stays (fail static), and a restart keeps it so.
	l.stop(cmd)
	if err := l.digestIs(want)(); err != nil {
		t.Fatalf("after SIGTERM: %v", err)
	}
	watch := l.watchTable(want)
	cmd, out = l.start()
	enforcing()
	if bad := watch(); len(bad) > 0 {
		t.Fatalf("between the restart and the saved view: %q", bad[:min(len(bad), 5)])
	}

	// SIGKILL (a crash, at any point of an apply): the same.
	cmd.Process.Kill()
	cmd.Wait()
	if err := l.digestIs(want)(); err != nil {
		t.Fatalf("after SIGKILL: %v", err)
	}
	cmd, out = l.start()
	enforcing()
	l.stop(cmd)

	good, _ := os.ReadFile(l.cfg.path(fileView))
	other := *l.view
	other.Gateway = "gw-other"
	foreign, _ := json.Marshal(other)
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"torn", good[:len(good)/2]},
		{"empty", nil},
		{"null", []byte("null")},
		{"another gateway's", foreign},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := os.WriteFile(l.cfg.path(fileView), c.data, 0o600); err != nil {
				t.Fatal(err)
			}
			watch := l.watchTable(want, denyAll)
			cmd, out := l.start()
			l.waitFor("deny-all", l.digestIs(denyAll))
			l.waitFor("the refusal logged", func() error {
				for _, line := range strings.Split(out.String(), "\n") {
					if strings.Contains(line, "level=ERROR") && strings.Contains(line, l.cfg.path(fileView)) && strings.Contains(line, "deny-all") {
						return nil
					}
				}
				return errors.New("no error that names the saved view's file and says deny-all is enforced")
			})
			if bad := watch(); len(bad) > 0 {
				t.Errorf("table while refusing the saved view: %q", bad[:min(len(bad), 5)])
			}
			l.waitFor("a device without peers", func() error {
				if got, err := l.peers(); err != nil || got != "" {
					return fmt.Errorf("peers %q (%v), want none", got, err)
				}
				return nil
			})
			l.stop(cmd)
			// Back to the saved view for the next case.
			os.WriteFile(l.cfg.path(fileView), good, 0o600)
			cmd, out = l.start()
			enforcing()
			l.stop(cmd)
		})
	}
}

// startWatching runs an agent whose reconcile tick is an hour away, so
// that only its watch of the table can repair it, once it enforces the
// saved view (digest want).
func startWatching(t *testing.T) (l *failStaticLab, want string, cmd *exec.Cmd, out *lockedBuffer) {
	t.Helper()
	netnstest.RequireTools(t, "nft", "wg")
	l = newFailStaticLab(t, time.Now().Add(24*time.Hour))
	l.cfg.Reconcile = time.Hour
	want, err := nft.ExpectedDigest(l.view.Rules, l.view.LANs)
	if err != nil {
		t.Fatal(err)
	}
	cmd, out = l.start()
	l.waitFor("the saved view's table", l.digestIs(want))
	time.Sleep(200 * time.Millisecond) // the watch has joined
	return l, want, cmd, out
}

// TestFlushRulesetRestored: `nft flush ruleset` (what nftables.service
// runs on every start and reload) deletes the agent's table with every
// other; the agent puts it back as soon as the kernel says so, not at
// its next reconcile tick (an hour here), during which the overlay's
// packets would meet no govnet rule.
func TestFlushRulesetRestored(t *testing.T) {
	l, want, cmd, out := startWatching(t)
	for i := range 3 {
		l.ns.Exec(t, "nft", "flush", "ruleset")
		l.waitFor(fmt.Sprintf("the table back after flush %d", i+1), l.digestIs(want))
	}
	if n := strings.Count(out.String(), "firewall drifted"); n < 3 {
		t.Errorf("%d drift repairs logged, want 3", n)
	}
	l.stop(cmd)
}

// TestFirewallFightPaced: another process that changes the table back
// whenever the agent restores it (a second agent, a configuration
// manager) makes every restore a notification of another's change. The
// agent's repairs slow down instead of following it as fast as netlink
// goes, and the table is back once the other process stops.
func TestFirewallFightPaced(t *testing.T) {
	l, want, cmd, out := startWatching(t)

	// The other process: this test's, whose own commits its watch skips.
	addRule := func() error {
		c, err := nftables.New(nftables.WithNetNSFd(l.ns.Fd()))
		if err != nil {
			return err
		}
		c.AddRule(&nftables.Rule{
			Table: &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet},
			Chain: &nftables.Chain{Name: "input"},
			Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}},
		})
		return c.Flush()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.fw.Watch(ctx, func() { addRule() }) }()
	time.Sleep(200 * time.Millisecond)
	if err := addRule(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Watch: %v", err)
	}
	n := strings.Count(out.String(), "firewall drifted")
	t.Logf("%d repairs in 3 s of a fight", n)
	if n > 12 {
		t.Errorf("%d repairs in 3 s of a fight: the agent follows the other process as fast as it can", n)
	}
	l.waitFor("the table back after the fight", l.digestIs(want))
	l.stop(cmd)
}
