package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/hsm/hsmtest"
	"github.com/govnet/govnet/internal/netnstest"
)

var binDir string

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "govnet-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binDir = dir
		cmd := exec.Command("go", "build", "-o", dir+"/", "../cmd/govnetd", "../cmd/govnet-agent", "../cmd/govnetctl")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build binaries:", err)
			return 1
		}
		return m.Run()
	}()
	hsmtest.Cleanup()
	os.Exit(code)
}

func bin(name string) string { return filepath.Join(binDir, name) }

// lab is a controller and gateways on a transport bridge, each in its own
// namespace; the bridge lives in a namespace too.
type lab struct {
	t      *testing.T
	dir    string
	bridge *netnstest.NS
	ctl    *netnstest.NS
	ctld   *exec.Cmd
	gws    map[string]*gateway
	via    *member  // the node govnetctl talks to, when not the first
	extra  []string // the other nodes' API URLs, for agents to fail over to
}

type gateway struct {
	id, agency, addr, iface string
	ns                      *netnstest.NS
	agent                   *exec.Cmd
	overlay                 string
}

const ctlAddr = "192.0.2.1" // TEST-NET-1, only inside the test's namespaces

func newLab(t *testing.T) *lab {
	netnstest.Require(t)
	netnstest.RequireTUN(t)
	netnstest.RequireTools(t, "nft", "wg")
	hsmtest.Require(t)
	l := &lab{t: t, dir: t.TempDir(), gws: map[string]*gateway{}}
	l.bridge = netnstest.New(t)
	l.bridge.Exec(t, "ip", "link", "add", "br0", "type", "bridge")
	l.bridge.Exec(t, "ip", "link", "set", "br0", "up")
	l.ctl = netnstest.New(t)
	l.attach(l.ctl, ctlAddr)
	return l
}

// attach joins ns to the bridge with address addr/24 on its eth0.
func (l *lab) attach(ns *netnstest.NS, addr string) {
	host := netnstest.IfName("gvb")
	out, err := exec.Command("ip", "link", "add", host, "netns", l.bridge.Name(), "type", "veth", "peer", "name", "eth0", "netns", ns.Name()).CombinedOutput()
	if err != nil {
		l.t.Fatalf("veth: %v: %s", err, out)
	}
	l.bridge.Exec(l.t, "ip", "link", "set", host, "master", "br0", "up")
	ns.Exec(l.t, "ip", "addr", "add", addr+"/24", "dev", "eth0")
	ns.Exec(l.t, "ip", "link", "set", "eth0", "up")
}

func (l *lab) path(name string) string { return filepath.Join(l.dir, name) }

// configure appends lines to the controller's config, between
// initController and startController.
func (l *lab) configure(lines ...string) {
	f, err := os.OpenFile(l.path("govnetd.yaml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		l.t.Fatal(err)
	}
	defer f.Close()
	for _, line := range lines {
		if _, err := f.WriteString(line + "\n"); err != nil {
			l.t.Fatal(err)
		}
	}
}

// startController initialises (once) and starts govnetd.
func (l *lab) startController() {
	l.initController()
	l.ctld = l.ctl.Start(l.t, bin("govnetd"), "run", "--config", l.path("govnetd.yaml"), "--log-level", "warn")
	l.ctl.Exec(l.t, bin("govnetctl"), "--config", l.path("op.yaml"), "cluster", "status", "--wait", "30s")
}

// initController runs govnetd init for the first node, once.
func (l *lab) initController() {
	t := l.t
	if _, err := os.Stat(l.path("govnetd.yaml")); err != nil {
		hc := hsmtest.NewToken(t)
		if err := os.WriteFile(l.path("pin"), []byte(hc.PIN+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		l.ctl.Exec(t, bin("govnetd"), "init", "--config", l.path("govnetd.yaml"), "--data-dir", l.path("ctl"),
			"--node", "ctl1", "--api-addr", ctlAddr+":7443", "--raft-addr", ctlAddr+":7000",
			"--overlay-prefix", "100.64.0.0/24", "--hsm-module", hc.Module, "--hsm-token", hc.TokenLabel,
			"--hsm-pin-file", l.path("pin"), "--hsm-pin-env", "",
			"--person", "op:operator", "--person", "off:officer", "--people-dir", l.path("people"))
		for _, who := range []string{"op", "off"} {
			cfg := fmt.Sprintf("controller: https://%s:7443\nroot: %s\ncert: %s\nkey: %s\n", ctlAddr,
				l.path("ctl/pki/root.pem"), l.path("people/"+who+".crt"), l.path("people/"+who+".key"))
			if err := os.WriteFile(l.path(who+".yaml"), []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// member is a controller node that joined the first one.
type member struct {
	name, addr string
	ns         *netnstest.NS
	cmd        *exec.Cmd
}

// prepareJoin makes a node's keys in its own token, has the root sign its
// intermediate, and finishes its init; start it with startMember.
func (l *lab) prepareJoin(name, addr string) *member {
	t := l.t
	m := &member{name: name, addr: addr, ns: netnstest.New(t)}
	l.attach(m.ns, addr)
	hc := hsmtest.NewToken(t)
	pin := l.path(name + ".pin")
	if err := os.WriteFile(pin, []byte(hc.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m.ns.Exec(t, bin("govnetd"), "init", "--join", "--config", l.path(name+".yaml"), "--node", name,
		"--data-dir", l.path(name), "--api-addr", addr+":7443", "--raft-addr", addr+":7000",
		"--overlay-prefix", "100.64.0.0/24", "--hsm-module", hc.Module, "--hsm-token", hc.TokenLabel,
		"--hsm-pin-file", pin, "--hsm-pin-env", "", "--csr-out", l.path(name+".csr"))
	l.ctl.Exec(t, bin("govnetd"), "sign-intermediate", "--config", l.path("govnetd.yaml"),
		"--csr", l.path(name+".csr"), "--out", l.path(name+".bundle"))
	m.ns.Exec(t, bin("govnetd"), "finish-join", "--config", l.path(name+".yaml"), "--bundle", l.path(name+".bundle"))
	return m
}

// startMember starts a prepared node and has an operator add it as a voter.
func (l *lab) startMember(m *member) {
	m.cmd = m.ns.Start(l.t, bin("govnetd"), "run", "--config", l.path(m.name+".yaml"), "--log-level", "warn")
	eventually(l.t, 30*time.Second, "operator adds "+m.name, func() error {
		_, err := l.ctlctl("op", "cluster", "join", m.name, m.addr+":7000", m.addr+":7443")
		return err
	})
}

func (l *lab) stopController() {
	l.ctld.Process.Signal(syscall.SIGTERM)
	l.ctld.Wait()
}

// ctlctl runs govnetctl as who (op or off) against the first node, or
// against l.via once that is set.
func (l *lab) ctlctl(who string, args ...string) (string, error) {
	ns, cmd := l.ctl, []string{bin("govnetctl"), "--config", l.path(who + ".yaml")}
	if l.via != nil {
		ns, cmd = l.via.ns, append(cmd, "--controller", "https://"+l.via.addr+":7443")
	}
	out, err := ns.Run(append(cmd, args...)...)
	return string(out), err
}

func (l *lab) mustCtl(who string, args ...string) string {
	l.t.Helper()
	out, err := l.ctlctl(who, args...)
	if err != nil {
		l.t.Fatal(err)
	}
	return out
}

// addGateway registers, enrolls and starts a gateway's agent.
func (l *lab) addGateway(id, agency, addr string) *gateway {
	t := l.t
	g := &gateway{id: id, agency: agency, addr: addr, iface: netnstest.IfName("gve"), ns: netnstest.New(t)}
	l.attach(g.ns, addr)
	l.mustCtl("op", "gateway", "add", id, "--agency", agency, "--endpoint", addr+":51820")
	l.mustCtl("off", "gateway", "token", id, "--write", l.path(id+".token"))
	out := g.ns.Exec(t, bin("govnet-agent"), "enroll", "--config", l.path(id+".yaml"),
		"--controller", "https://"+ctlAddr+":7443", "--root", l.path("ctl/pki/root.pem"),
		"--token-file", l.path(id+".token"), "--state-dir", l.path(id), "--interface", g.iface,
		"--listen-port", "51820", "--endpoint", addr+":51820", "--reconcile", "1s", "--report-refresh", "1s",
		"--controllers", strings.Join(l.extra, ","))
	if !strings.Contains(out, "overlay address") {
		t.Fatalf("enroll: %s", out)
	}
	g.overlay = strings.Fields(out[strings.Index(out, "overlay address")+len("overlay address"):])[0]
	g.overlay = strings.TrimSuffix(g.overlay, ",")
	l.startAgent(g)
	// Serve the ports the tests probe, inside the gateway's namespace.
	for _, port := range []string{"22", "443"} {
		g.ns.ServeTCP(t, ":"+port, func(net.Conn) {})
	}
	l.gws[id] = g
	return g
}

func (l *lab) startAgent(g *gateway) {
	g.agent = g.ns.Start(l.t, bin("govnet-agent"), "run", "--config", l.path(g.id+".yaml"), "--log-level", "warn")
	l.t.Cleanup(func() {
		if g.agent.ProcessState == nil {
			g.agent.Process.Signal(syscall.SIGTERM)
			g.agent.Wait()
		}
	})
}

// dial reports whether a TCP connection from g to addr:port completes.
func (g *gateway) dial(to *gateway, port string, timeout time.Duration) bool {
	var c net.Conn
	err := g.ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", net.JoinHostPort(to.overlay, port), timeout)
		return err
	})
	if err == nil {
		c.Close()
	}
	return err == nil
}

// nft lists the gateway's table without counter values, which traffic
// moves and a rebuild resets: what is compared is rules and sets.
func (g *gateway) nft(t *testing.T) string {
	return counters.ReplaceAllString(g.ns.Exec(t, "nft", "list", "table", "inet", "govnet"), "counter")
}

var counters = regexp.MustCompile(`counter packets \d+ bytes \d+`)

func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// publish publishes a policy as the officer and waits until every gateway
// reports it applied.
func (l *lab) publish(src string) uint64 {
	t := l.t
	f := l.path("policy.yaml")
	if err := os.WriteFile(f, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	var p api.Policy
	if err := json.Unmarshal([]byte(l.mustCtl("off", "policy", "publish", f, "-o", "json")), &p); err != nil {
		t.Fatal(err)
	}
	l.waitApplied(p.Version)
	return p.Version
}

func (l *lab) gateways() []api.Gateway {
	var gws []api.Gateway
	out, err := l.ctlctl("op", "gateway", "list", "-o", "json")
	if err != nil {
		l.t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(out), &gws); err != nil {
		l.t.Fatal(err)
	}
	return gws
}

// waitApplied waits until every gateway reports the policy version and
// the controller attests its ruleset: the digest the agent read back from
// its kernel equals the one the controller computed from the view.
func (l *lab) waitApplied(version uint64) {
	eventually(l.t, 30*time.Second, fmt.Sprintf("every gateway reports policy v%d with the expected ruleset", version), func() error {
		for _, g := range l.gateways() {
			if g.Report == nil || g.Report.PolicyVersion != version {
				return fmt.Errorf("%s reports %+v", g.ID, g.Report)
			}
			if g.Ruleset != api.RulesetOK {
				return fmt.Errorf("%s ruleset %q: reported %s, expected %s", g.ID, g.Ruleset, g.Report.RulesetDigest, g.ExpectedDigest)
			}
		}
		return nil
	})
}

// flows asserts which of a's connections to b on 22 and 443 pass.
func (l *lab) flows(a, b *gateway, want22, want443 bool) {
	t := l.t
	t.Helper()
	for _, c := range []struct {
		port string
		want bool
	}{{"22", want22}, {"443", want443}} {
		if c.want {
			// The tunnel may still be handshaking: allowed flows get a few tries.
			eventually(t, 15*time.Second, fmt.Sprintf("%s -> %s tcp/%s allowed", a.id, b.id, c.port), func() error {
				if !a.dial(b, c.port, 2*time.Second) {
					return errors.New("connection failed")
				}
				return nil
			})
		} else if a.dial(b, c.port, time.Second) {
			t.Fatalf("%s -> %s tcp/%s connected, policy denies it", a.id, b.id, c.port)
		}
	}
}

const (
	policySSH = `version: 1
groups:
  provinces:
    level: province
rules:
  - from: [provinces]
    to: [provinces]
    ports: [tcp/22]
tests:
  - from: 000.00.00.H29
    to: 000.00.00.H49
    port: tcp/443
    expect: deny
`
	policyWeb = `version: 1
groups:
  provinces:
    level: province
rules:
  - from: [provinces]
    to: [provinces]
    ports: [tcp/443]
`
)

// TestNetwork runs the whole path: CA in SoftHSM2, controller, two agents
// enrolled with tokens, and real packets through WireGuard and nftables as
// policies are published, rejected, tampered with and served by no one.
func TestNetwork(t *testing.T) {
	l := newLab(t)
	l.startController()
	l.mustCtl("op", "agency", "add", "000.00.00.H29", "--name", "Ủy ban nhân dân tỉnh Quảng Ninh")
	l.mustCtl("op", "agency", "add", "000.00.00.H49", "--name", "Ủy ban nhân dân tỉnh Quảng Nam")
	a := l.addGateway("gw-a", "000.00.00.H29", "192.0.2.11")
	b := l.addGateway("gw-b", "000.00.00.H49", "192.0.2.12")

	// Before any policy: deny-all on the overlay.
	eventually(t, 20*time.Second, "agents report the empty view", func() error {
		for _, g := range l.gateways() {
			if g.Report == nil {
				return fmt.Errorf("%s has not reported", g.ID)
			}
		}
		return nil
	})
	if a.dial(b, "22", time.Second) {
		t.Fatal("connected before any policy was published")
	}

	t.Run("publish", func(t *testing.T) {
		l.publish(policySSH)
		l.flows(a, b, true, false)
		l.flows(b, a, true, false)
		out := a.ns.Exec(t, "wg", "show", a.iface, "latest-handshakes")
		if f := strings.Fields(out); len(f) != 2 || f[1] == "0" {
			t.Fatalf("no handshake: %q", out)
		}
	})

	t.Run("rejected policy changes no gateway", func(t *testing.T) {
		before := map[string]string{a.id: a.nft(t), b.id: b.nft(t)}
		digests := map[string]string{}
		for _, g := range l.gateways() {
			digests[g.ID] = g.Report.RulesetDigest
		}
		for _, bad := range []string{
			"version: 1\nrules:\n  - from: [nosuch]\n    to: [provinces]\n    ports: [tcp/22]\n",
			strings.Replace(policySSH, "tcp/443\n    expect: deny", "tcp/22\n    expect: deny", 1), // a failing embedded test
			"version: 1\ngroups:\n  x:\n    subtree: 000.00.00.H01\n",                              // an agency that does not exist
		} {
			f := l.path("bad.yaml")
			os.WriteFile(f, []byte(bad), 0o644)
			if out, err := l.ctlctl("off", "policy", "publish", f); err == nil || !strings.Contains(out, "bad.yaml:") {
				t.Fatalf("bad policy accepted or error without position: %v\n%s", err, out)
			}
		}
		time.Sleep(1500 * time.Millisecond) // a reconcile period: nothing may move
		for _, g := range []*gateway{a, b} {
			if got := g.nft(t); got != before[g.id] {
				t.Fatalf("%s ruleset changed:\n%s\n---\n%s", g.id, before[g.id], got)
			}
		}
		for _, g := range l.gateways() {
			if g.Report.RulesetDigest != digests[g.ID] {
				t.Fatalf("%s digest moved", g.ID)
			}
		}
		l.flows(a, b, true, false)
	})

	t.Run("flip", func(t *testing.T) {
		// The plan says what publishing will change: each gateway swaps
		// tcp/22 from the other for tcp/443.
		f := l.path("web.yaml")
		os.WriteFile(f, []byte(policyWeb), 0o644)
		var plan api.PolicyPlan
		if err := json.Unmarshal([]byte(l.mustCtl("op", "policy", "plan", f, "-o", "json")), &plan); err != nil {
			t.Fatal(err)
		}
		if len(plan.Gateways) != 2 || plan.FlowsGained != 2 || plan.FlowsLost != 2 || plan.PeersGained+plan.PeersLost != 0 {
			t.Fatalf("plan %+v", plan)
		}
		if g := plan.Gateways[0]; g.Gateway != a.id || g.Gained[0].From != b.id || g.Gained[0].Port != 443 || g.Lost[0].Port != 22 {
			t.Fatalf("plan for %s: %+v", a.id, g)
		}
		v := l.publish(policyWeb)
		l.flows(a, b, false, true)
		if err := json.Unmarshal([]byte(l.mustCtl("op", "policy", "plan", f, "-o", "json")), &plan); err != nil || len(plan.Gateways) != 0 {
			t.Fatalf("plan of the published policy changes %+v (%v)", plan.Gateways, err)
		}
		// Roll back to the version before: the flow flips back.
		var hist []api.Policy
		if err := json.Unmarshal([]byte(l.mustCtl("op", "policy", "history", "-o", "json")), &hist); err != nil || len(hist) != int(v) {
			t.Fatalf("history %+v (%v)", hist, err)
		}
		var p api.Policy
		if err := json.Unmarshal([]byte(l.mustCtl("off", "policy", "rollback", fmt.Sprint(v-1), "-o", "json")), &p); err != nil {
			t.Fatal(err)
		}
		if p.Version != v+1 || p.Source != hist[v-2].Source {
			t.Fatalf("rollback published %+v", p)
		}
		l.waitApplied(p.Version)
		l.flows(a, b, true, false)
	})

	t.Run("drift is restored", func(t *testing.T) {
		clean := b.nft(t)
		digest := ""
		for _, g := range l.gateways() {
			if g.ID == b.id {
				digest = g.Report.RulesetDigest
			}
		}
		// Someone opens tcp/443 by hand on gw-b.
		b.ns.Exec(t, "nft", "add", "element", "inet", "govnet", "allow4", "{ "+a.overlay+" . tcp . 443 }")
		eventually(t, 10*time.Second, "the agent restores its table", func() error {
			if got := b.nft(t); got != clean {
				return errors.New("still drifted")
			}
			return nil
		})
		l.flows(a, b, true, false)
		for _, g := range l.gateways() {
			if g.ID == b.id && g.Report.RulesetDigest != digest {
				t.Fatalf("digest after restore %s, want %s", g.Report.RulesetDigest, digest)
			}
		}
	})

	t.Run("fail static", func(t *testing.T) {
		before := b.nft(t)
		l.stopController()
		// No controller: the last policy stays enforced, never opened.
		time.Sleep(1500 * time.Millisecond)
		if got := b.nft(t); got != before {
			t.Fatalf("ruleset changed without a controller")
		}
		l.flows(a, b, true, false)
		// An agent restarted while no controller answers enforces its saved view.
		b.agent.Process.Signal(syscall.SIGTERM)
		b.agent.Wait()
		l.startAgent(b)
		eventually(t, 10*time.Second, "restarted agent enforces the saved view", func() error {
			if out, _ := b.ns.Run("nft", "list", "table", "inet", "govnet"); counters.ReplaceAllString(string(out), "counter") != before {
				return errors.New("table differs")
			}
			return nil
		})
		l.flows(a, b, true, false)
		// The controller returns and the gateways reconverge on a new policy.
		l.startController()
		l.publish(policyWeb)
		l.flows(a, b, false, true)
	})
}

// TestFailover runs three controllers; the gateways stream from the first.
// Killing it (kill -9), the gateways move to a survivor, and a policy
// published through the survivor reaches them: the flow flips.
func TestFailover(t *testing.T) {
	l := newLab(t)
	l.initController()
	m2, m3 := l.prepareJoin("ctl2", "192.0.2.2"), l.prepareJoin("ctl3", "192.0.2.3")
	l.startController()
	l.startMember(m2)
	l.startMember(m3)
	eventually(t, 30*time.Second, "three voters", func() error {
		out, err := l.ctlctl("op", "cluster", "status", "-o", "json")
		if err != nil {
			return err
		}
		if n := strings.Count(out, `"suffrage": "voter"`); n != 3 {
			return fmt.Errorf("%d voters", n)
		}
		return nil
	})
	l.extra = []string{"https://192.0.2.2:7443", "https://192.0.2.3:7443"}

	l.mustCtl("op", "agency", "add", "000.00.00.H29", "--name", "Ủy ban nhân dân tỉnh Quảng Ninh")
	l.mustCtl("op", "agency", "add", "000.00.00.H49", "--name", "Ủy ban nhân dân tỉnh Quảng Nam")
	a := l.addGateway("gw-a", "000.00.00.H29", "192.0.2.11")
	b := l.addGateway("gw-b", "000.00.00.H49", "192.0.2.12")
	l.publish(policySSH)
	l.flows(a, b, true, false)

	// The node both gateways stream from dies without a word.
	l.ctld.Process.Kill()
	l.ctld.Wait()
	l.via = m2
	eventually(t, 30*time.Second, "a survivor is ready", func() error {
		_, err := l.ctlctl("op", "cluster", "status", "--wait", "5s")
		return err
	})
	// Enforcement never stopped, and a new policy reaches both gateways
	// through the survivors.
	l.flows(a, b, true, false)
	l.publish(policyWeb)
	l.flows(a, b, false, true)
}
