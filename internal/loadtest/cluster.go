package loadtest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/govnet/govnet/api"
)

// Cluster is a 3-node govnetd cluster on loopback: each node a separate
// govnetd process with its own SoftHSM2 token, set up with the same
// commands an installer runs (init, init --join, sign-intermediate,
// finish-join), so its data directory can be kept and reused.
type Cluster struct {
	dir     string // data directories, configs, tokens, people
	govnetd string // the govnetd binary
	nodes   []*node
	out     io.Writer // the nodes' logs go here

	// Operator and Officer are the bootstrap people's clients (against
	// the first node; writes sent to a follower are forwarded).
	Operator, Officer *api.Client
	root              string        // root certificate (PEM file)
	opAt              []*api.Client // an operator's client of each node
	offAt             []*api.Client // an officer's client of each node
	anonAt            []*api.Client // a client without a certificate of each node
}

type node struct {
	name            string
	ip              string
	api, raft, http int
	cfg             string
	cmd             *exec.Cmd
	done            chan struct{}
}

// URL is the node's API base URL.
func (n *node) URL() string { return "https://" + net.JoinHostPort(n.ip, strconv.Itoa(n.api)) }

// NodeIPs are the loopback addresses of the three nodes.
var NodeIPs = []string{"127.0.0.11", "127.0.0.12", "127.0.0.13"}

const hsmModule = "/usr/lib/softhsm/libsofthsm2.so"

// newCluster describes the cluster kept in dir. Ports: apiPort, apiPort+1
// (plain HTTP) and raftPort on every node's address; 0 picks free ones
// (only for a cluster that is set up, not reused).
func newCluster(dir, govnetd string, apiPort, raftPort int, out io.Writer) (*Cluster, error) {
	c := &Cluster{dir: dir, govnetd: govnetd, out: out, root: filepath.Join(dir, "ctl1", "pki", "root.pem")}
	for i, ip := range NodeIPs {
		n := &node{name: fmt.Sprintf("ctl%d", i+1), ip: ip, api: apiPort, http: apiPort + 1, raft: raftPort}
		if apiPort == 0 {
			var err error
			if n.api, n.http, n.raft, err = freePorts(ip); err != nil {
				return nil, err
			}
		}
		n.cfg = filepath.Join(dir, n.name+".yaml")
		c.nodes = append(c.nodes, n)
	}
	return c, nil
}

// freePorts finds an API port whose successor is free too, and a raft port.
func freePorts(ip string) (apiPort, httpPort, raftPort int, err error) {
	for range 50 {
		a, err := net.Listen("tcp", ip+":0")
		if err != nil {
			return 0, 0, 0, err
		}
		p := a.Addr().(*net.TCPAddr).Port
		h, herr := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(p+1)))
		r, rerr := net.Listen("tcp", ip+":0")
		a.Close()
		if herr == nil {
			h.Close()
		}
		if rerr != nil {
			return 0, 0, 0, rerr
		}
		rp := r.Addr().(*net.TCPAddr).Port
		r.Close()
		if herr == nil && rp != p+1 {
			return p, p + 1, rp, nil
		}
	}
	return 0, 0, 0, errors.New("no free pair of ports on " + ip)
}

func (c *Cluster) path(name ...string) string {
	return filepath.Join(append([]string{c.dir}, name...)...)
}

// env is the environment of every govnetd command: the cluster's own
// SoftHSM2 configuration.
func (c *Cluster) env() []string {
	return append(os.Environ(), "SOFTHSM2_CONF="+c.path("hsm", "softhsm2.conf"))
}

func (c *Cluster) run(args ...string) error {
	cmd := exec.Command(c.govnetd, args...)
	cmd.Env = c.env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("govnetd %s: %w: %s", args[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}

// nodeFlags are the nodes' raft timeouts and connection cap. The three
// nodes share two cores with the simulated gateways, so a node can wait
// hundreds of milliseconds for a core: the election timeout is twice the default, and
// the leader lease is the default's (500 ms), which is what raft's own
// defaults set; with 250 ms the leader stepped down four times in eight
// rounds at 20,000 gateways. The simulated gateways all connect from
// 127.0.0.1, so the cap on connections per address is lifted.
var nodeFlags = []string{"--raft-heartbeat-timeout", "500ms", "--raft-election-timeout", "1s", "--raft-leader-lease-timeout", "500ms",
	"--max-conns-per-ip", "1000000"}

// setup creates the tokens and initialises the three nodes; nothing runs
// afterwards. Gateway certificates live gatewayLifetime, so that a kept
// cluster and its enrolled identities can be reused for that long.
func (c *Cluster) setup(gatewayLifetime time.Duration) error {
	if err := os.MkdirAll(c.path("hsm", "tokens"), 0o700); err != nil {
		return err
	}
	conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", c.path("hsm", "tokens"))
	if err := os.WriteFile(c.path("hsm", "softhsm2.conf"), []byte(conf), 0o600); err != nil {
		return err
	}
	pin := make([]byte, 8)
	rand.Read(pin)
	if err := os.WriteFile(c.path("hsm", "pin"), []byte(hex.EncodeToString(pin)+"\n"), 0o600); err != nil {
		return err
	}
	for _, n := range c.nodes {
		cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", "govnet-load-"+n.name,
			"--so-pin", hex.EncodeToString(pin), "--pin", hex.EncodeToString(pin))
		cmd.Env = c.env()
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("softhsm2-util --init-token: %w: %s", err, out)
		}
	}
	for i, n := range c.nodes {
		args := []string{"init", "--config", n.cfg, "--node", n.name, "--data-dir", c.path(n.name),
			"--api-addr", net.JoinHostPort(n.ip, strconv.Itoa(n.api)),
			"--http-addr", net.JoinHostPort(n.ip, strconv.Itoa(n.http)),
			"--raft-addr", net.JoinHostPort(n.ip, strconv.Itoa(n.raft)),
			"--overlay-prefix", "100.64.0.0/14", "--hsm-module", hsmModule, "--hsm-token", "govnet-load-" + n.name,
			"--hsm-pin-file", c.path("hsm", "pin"), "--hsm-pin-env", "",
			"--gateway-cert-lifetime", gatewayLifetime.String(),
		}
		args = append(args, nodeFlags...)
		if i == 0 {
			args = append(args, "--person", "op:operator", "--person", "off:officer", "--people-dir", c.path("people"))
			if err := c.run(args...); err != nil {
				return err
			}
		} else {
			csr, bundle := c.path(n.name+".csr"), c.path(n.name+".bundle")
			args = append(args, "--join", "--join-addr", net.JoinHostPort(c.nodes[0].ip, strconv.Itoa(c.nodes[0].api)), "--csr-out", csr)
			if err := c.run(args...); err != nil {
				return err
			}
			if err := c.run("sign-intermediate", "--config", c.nodes[0].cfg, "--csr", csr, "--out", bundle); err != nil {
				return err
			}
			if err := c.run("finish-join", "--config", n.cfg, "--bundle", bundle); err != nil {
				return err
			}
		}
		// The harness registers thousands of gateways as one operator:
		// lift the per-client rate limit (a config key, no flag).
		f, err := os.OpenFile(n.cfg, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteString("rate_limit: 1000000\n")
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// start runs the three nodes and waits until they form a cluster with a
// leader and three voters, and the people's clients work.
func (c *Cluster) start(ctx context.Context) error {
	for _, n := range c.nodes {
		// The timeouts again: flags override the config, and a cached
		// cluster's config has those of the harness that made it.
		args := append([]string{"run", "--config", n.cfg, "--log-level", "warn"}, nodeFlags...)
		if port := os.Getenv("GOVNET_LOAD_PPROF_PORT"); port != "" {
			args = append(args, "--pprof-addr", net.JoinHostPort(n.ip, port)) // profiling the harness's nodes
		}
		cmd := exec.Command(c.govnetd, args...)
		cmd.Env = c.env()
		cmd.Stdout, cmd.Stderr = c.out, c.out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			c.stop()
			return fmt.Errorf("start %s: %w", n.name, err)
		}
		n.cmd, n.done = cmd, make(chan struct{})
		go func(n *node) { n.cmd.Wait(); close(n.done) }(n)
	}
	offTLS, err := api.TLSConfig(c.root, c.path("people", "off.crt"), c.path("people", "off.key"))
	var opTLS *tls.Config
	if err == nil {
		opTLS, err = api.TLSConfig(c.root, c.path("people", "op.crt"), c.path("people", "op.key"))
	}
	if err != nil {
		c.stop()
		return err
	}
	// Each client gets its own copy of the TLS config: an http.Transport
	// sets up HTTP/2 by editing its config's NextProtos on first use.
	c.Operator, c.Officer = api.NewClient(c.nodes[0].URL(), opTLS.Clone()), api.NewClient(c.nodes[0].URL(), offTLS.Clone())
	anonTLS, err := api.TLSConfig(c.root, "", "")
	if err != nil {
		c.stop()
		return err
	}
	c.opAt, c.offAt, c.anonAt = nil, nil, nil
	for _, n := range c.nodes {
		c.opAt = append(c.opAt, api.NewClient(n.URL(), opTLS.Clone()))
		c.offAt = append(c.offAt, api.NewClient(n.URL(), offTLS.Clone()))
		c.anonAt = append(c.anonAt, api.NewClient(n.URL(), anonTLS.Clone()))
	}
	err = waitFor(ctx, 90*time.Second, "three voters with a leader", func() error {
		for _, n := range c.nodes {
			select {
			case <-n.done:
				return fmt.Errorf("%w: node %s exited: %v", errStop, n.name, n.cmd.ProcessState)
			default:
			}
		}
		for i, n := range c.nodes {
			st, err := c.operatorAt(i).ClusterStatus(ctx)
			if err != nil {
				return err
			}
			voters := 0
			for _, m := range st.Members {
				if m.Suffrage == "voter" {
					voters++
				}
			}
			if st.Leader == "" || voters != len(c.nodes) || !st.Ready {
				return fmt.Errorf("%s: leader %q, %d voters, ready %v (%s)", n.name, st.Leader, voters, st.Ready, st.NotReady)
			}
		}
		return nil
	})
	if err != nil {
		c.stop()
	}
	return err
}

// enrollAt returns a client of node i for enrollment (no certificate).
func (c *Cluster) enrollAt(i int) *api.Client { return c.anonAt[i] }

// officerAt returns an officer's client of node i.
func (c *Cluster) officerAt(i int) *api.Client { return c.offAt[i] }

// operatorAt returns an operator's client of node i.
func (c *Cluster) operatorAt(i int) *api.Client { return c.opAt[i] }

// stop ends the nodes (SIGTERM, then SIGKILL after 20 s).
func (c *Cluster) stop() {
	for _, n := range c.nodes {
		if n.cmd != nil && n.cmd.Process != nil {
			n.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, n := range c.nodes {
		if n.cmd == nil {
			continue
		}
		select {
		case <-n.done:
		case <-time.After(20 * time.Second):
			n.cmd.Process.Kill()
			<-n.done
		}
		n.cmd = nil
	}
}

// waitSettled waits until every node reports govnet_start_settled 1 on
// its /metrics (read as the operator).
func (c *Cluster) waitSettled(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for i, n := range c.nodes {
		for {
			text, err := c.operatorAt(i).Metrics(ctx)
			if err == nil && strings.Contains(text, "\ngovnet_start_settled 1\n") {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("node %s: start not settled (govnet_start_settled on its /metrics) within %s (last error: %v)", n.name, timeout, err)
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	return nil
}

// snapshots is how many raft snapshots the nodes wrote since they
// started (govnet_raft_snapshots_total on their /metrics), or -1 when a
// node's could not be read.
func (c *Cluster) snapshots(ctx context.Context) int {
	total := 0
	for i := range c.nodes {
		text, err := c.operatorAt(i).Metrics(ctx)
		if err != nil {
			return -1
		}
		_, v, ok := strings.Cut(text, "\ngovnet_raft_snapshots_total ")
		if !ok {
			return -1
		}
		v, _, _ = strings.Cut(v, "\n")
		k, err := strconv.Atoi(v)
		if err != nil {
			return -1
		}
		total += k
	}
	return total
}

// pids are the node processes' ids.
func (c *Cluster) pids() []int {
	var p []int
	for _, n := range c.nodes {
		if n.cmd != nil {
			p = append(p, n.cmd.Process.Pid)
		}
	}
	return p
}

// URLs are the nodes' API base URLs.
func (c *Cluster) URLs() []string {
	var u []string
	for _, n := range c.nodes {
		u = append(u, n.URL())
	}
	return u
}

var errStop = errors.New("giving up")

// waitFor calls f until it succeeds, fails with errStop, or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		if errors.Is(err, errStop) {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last: %v)", what, ctx.Err(), err)
		case <-t.C:
		}
	}
}
