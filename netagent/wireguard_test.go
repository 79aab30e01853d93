package netagent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/internal/netnstest"
)

// The WireGuard tests run Device in helper processes: wireguard-go must
// start inside the namespace, which a goroutine of the test process cannot
// do. The test binary re-executes itself under `ip netns exec` with
// GOVNET_WG_HELPER set to a helperConfig; the helper opens the device and
// then serves requests, one JSON line each, on stdin, answering on stdout
// with lines prefixed by helperMark. Closing stdin closes the device and
// ends the helper.

const helperMark = "GVTHELPER "

type helperConfig struct {
	Name       string `json:"name"`
	PrivateKey string `json:"private_key"`
	ListenPort int    `json:"listen_port"`
	Addr       string `json:"addr"`
	ServeTCP   string `json:"serve_tcp,omitempty"` // echo server address
}

type helperRequest struct {
	Op      string     `json:"op"` // apply, stats, peer, routes, dial
	Peers   []api.Peer `json:"peers,omitempty"`
	Key     string     `json:"key,omitempty"`
	Addr    string     `json:"addr,omitempty"`
	Timeout string     `json:"timeout,omitempty"`
}

type peerInfo struct {
	Endpoint   string    `json:"endpoint"`
	AllowedIPs []string  `json:"allowed_ips"`
	Handshake  time.Time `json:"handshake"`
	RxBytes    int64     `json:"rx_bytes"`
	TxBytes    int64     `json:"tx_bytes"`
	Keepalive  string    `json:"keepalive"`
}

type helperReply struct {
	Error         string    `json:"error,omitempty"`
	Changed       bool      `json:"changed,omitempty"`
	Peers         int       `json:"peers,omitempty"`
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	Peer          *peerInfo `json:"peer,omitempty"`
	Routes        []string  `json:"routes,omitempty"`
	Timeout       bool      `json:"timeout,omitempty"`
}

// TestHelperProcess is not a test: it is the helper's entry point.
func TestHelperProcess(t *testing.T) {
	cfg := os.Getenv("GOVNET_WG_HELPER")
	if cfg == "" {
		return
	}
	os.Exit(helperMain(cfg))
}

func helperMain(cfgJSON string) int {
	out := json.NewEncoder(os.Stdout)
	reply := func(r helperReply) {
		os.Stdout.WriteString(helperMark)
		out.Encode(r)
	}
	var cfg helperConfig
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		reply(helperReply{Error: err.Error()})
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	key, err := wgtypes.ParseKey(cfg.PrivateKey)
	if err != nil {
		reply(helperReply{Error: err.Error()})
		return 2
	}
	addr, err := netip.ParsePrefix(cfg.Addr)
	if err != nil {
		reply(helperReply{Error: err.Error()})
		return 2
	}
	d, err := OpenDevice(cfg.Name, key, cfg.ListenPort, addr, log)
	if err != nil {
		reply(helperReply{Error: err.Error()})
		return 1
	}
	defer d.Close()
	if cfg.ServeTCP != "" {
		ln, err := net.Listen("tcp4", cfg.ServeTCP)
		if err != nil {
			reply(helperReply{Error: err.Error()})
			return 1
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); io.Copy(c, c) }()
			}
		}()
	}
	wg, err := wgctrl.New()
	if err != nil {
		reply(helperReply{Error: err.Error()})
		return 1
	}
	defer wg.Close()
	reply(helperReply{}) // ready

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<24)
	for in.Scan() {
		var req helperRequest
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			reply(helperReply{Error: err.Error()})
			continue
		}
		reply(helperServe(d, wg, req))
	}
	if err := d.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "close:", err)
		return 1
	}
	return 0
}

func helperServe(d *Device, wg *wgctrl.Client, req helperRequest) helperReply {
	errReply := func(err error) helperReply {
		var ne net.Error
		return helperReply{Error: err.Error(), Timeout: errors.As(err, &ne) && ne.Timeout()}
	}
	switch req.Op {
	case "apply":
		changed, err := d.ApplyPeers(req.Peers)
		r := helperReply{Changed: changed}
		if err != nil {
			r.Error = err.Error()
		}
		return r
	case "stats":
		n, hs, err := d.Stats()
		if err != nil {
			return errReply(err)
		}
		return helperReply{Peers: n, LastHandshake: hs}
	case "peer":
		dev, err := wg.Device(d.Name())
		if err != nil {
			return errReply(err)
		}
		for _, p := range dev.Peers {
			if p.PublicKey.String() != req.Key {
				continue
			}
			pi := &peerInfo{Handshake: p.LastHandshakeTime, RxBytes: p.ReceiveBytes, TxBytes: p.TransmitBytes,
				Keepalive: p.PersistentKeepaliveInterval.String()}
			if p.Endpoint != nil {
				pi.Endpoint = p.Endpoint.String()
			}
			for _, a := range ipNetsToPrefixes(p.AllowedIPs) {
				pi.AllowedIPs = append(pi.AllowedIPs, a.String())
			}
			return helperReply{Peer: pi}
		}
		return helperReply{Error: "no such peer"}
	case "routes":
		link, err := netlink.LinkByName(d.Name())
		if err != nil {
			return errReply(err)
		}
		routes, err := netlink.RouteList(link, netlink.FAMILY_V4)
		if err != nil {
			return errReply(err)
		}
		var out []string
		for _, r := range routes {
			out = append(out, fmt.Sprintf("%s proto %d", r.Dst, r.Protocol))
		}
		slices.Sort(out)
		return helperReply{Routes: out}
	case "dial":
		timeout, _ := time.ParseDuration(req.Timeout)
		c, err := net.DialTimeout("tcp4", req.Addr, timeout)
		if err != nil {
			return errReply(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		if _, err := c.Write([]byte("hello")); err != nil {
			return errReply(err)
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil {
			return errReply(err)
		}
		if string(buf) != "hello" {
			return helperReply{Error: fmt.Sprintf("echo %q", buf)}
		}
		return helperReply{}
	}
	return helperReply{Error: "unknown op " + req.Op}
}

// helper is the test's side of one helper process.
type helper struct {
	t       *testing.T
	name    string
	stdin   io.WriteCloser
	replies chan helperReply
	mu      sync.Mutex // one request at a time
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startHelper runs a helper in ns and waits until its device is up. At
// cleanup it closes the helper's stdin (the device closes, the UAPI socket
// goes away), kills it if it does not exit, and checks that no socket is
// left in /var/run/wireguard.
func startHelper(t *testing.T, ns *netnstest.NS, cfg helperConfig) *helper {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfgJSON, _ := json.Marshal(cfg)
	cmd := ns.Command(exe, "-test.run=^TestHelperProcess$", "-test.timeout=0")
	cmd.Env = append(os.Environ(), "GOVNET_WG_HELPER="+string(cfgJSON))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	netnstest.StartCmd(t, cmd)
	h := &helper{t: t, name: cfg.Name, stdin: stdin, replies: make(chan helperReply, 1)}
	go func() {
		defer close(h.replies)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			line, ok := strings.CutPrefix(sc.Text(), helperMark)
			if !ok {
				continue
			}
			var r helperReply
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				r.Error = "bad reply: " + err.Error()
			}
			h.replies <- r
		}
	}()
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("helper %s: %v", cfg.Name, err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("helper %s did not exit after stdin closed; killing it", cfg.Name)
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("helper %s stderr:\n%s", cfg.Name, stderr.String())
		}
		sock := filepath.Join("/var/run/wireguard", cfg.Name+".sock")
		if _, err := os.Stat(sock); err == nil {
			t.Errorf("stale UAPI socket %s left behind", sock)
			os.Remove(sock)
		}
	})
	select {
	case r, ok := <-h.replies:
		if !ok || r.Error != "" {
			t.Fatalf("helper %s did not start: %q\n%s", cfg.Name, r.Error, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("helper %s did not start in time\n%s", cfg.Name, stderr.String())
	}
	return h
}

func (h *helper) call(req helperRequest) helperReply {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	b, _ := json.Marshal(req)
	if _, err := h.stdin.Write(append(b, '\n')); err != nil {
		h.t.Fatalf("helper %s: send %s: %v", h.name, req.Op, err)
	}
	select {
	case r, ok := <-h.replies:
		if !ok {
			h.t.Fatalf("helper %s exited during %s", h.name, req.Op)
		}
		return r
	case <-time.After(60 * time.Second):
		h.t.Fatalf("helper %s: no reply to %s", h.name, req.Op)
	}
	return helperReply{}
}

func (h *helper) apply(peers ...api.Peer) bool {
	h.t.Helper()
	r := h.call(helperRequest{Op: "apply", Peers: peers})
	if r.Error != "" {
		h.t.Fatalf("%s: ApplyPeers: %s", h.name, r.Error)
	}
	return r.Changed
}

func (h *helper) peer(key wgtypes.Key) peerInfo {
	h.t.Helper()
	r := h.call(helperRequest{Op: "peer", Key: key.String()})
	if r.Error != "" || r.Peer == nil {
		h.t.Fatalf("%s: peer %s: %s", h.name, key, r.Error)
	}
	return *r.Peer
}

func (h *helper) routes() []string {
	h.t.Helper()
	r := h.call(helperRequest{Op: "routes"})
	if r.Error != "" {
		h.t.Fatalf("%s: routes: %s", h.name, r.Error)
	}
	return r.Routes
}

func (h *helper) dial(addr string, timeout time.Duration) helperReply {
	h.t.Helper()
	return h.call(helperRequest{Op: "dial", Addr: addr, Timeout: timeout.String()})
}

func mustKey(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// TestWireGuardTunnel runs two gateways, each a helper process in its own
// namespace, joined by a veth pair as the transport network, and walks
// them through successive desired states.
func TestWireGuardTunnel(t *testing.T) {
	netnstest.RequireTools(t, "wg")
	netnstest.RequireTUN(t)
	a, b := netnstest.New(t), netnstest.New(t)
	_, ifB := netnstest.Veth(t, a, b, pfx("198.18.1.1/24"), pfx("198.18.1.2/24"))
	keyA, keyB := mustKey(t), mustKey(t)
	nameA, nameB := netnstest.IfName("gvw"), netnstest.IfName("gvw")
	hA := startHelper(t, a, helperConfig{Name: nameA, PrivateKey: keyA.String(), ListenPort: 51820, Addr: "10.250.0.1/24"})
	hB := startHelper(t, b, helperConfig{Name: nameB, PrivateKey: keyB.String(), ListenPort: 51820, Addr: "10.250.0.2/24",
		ServeTCP: "10.250.0.2:7000"})
	pubA, pubB := keyA.PublicKey(), keyB.PublicKey()

	peerA := api.Peer{Gateway: "gw-a", PublicKey: pubA.String(), Endpoint: "198.18.1.1:51820", AllowedIPs: prefixes("10.250.0.1/32")}
	peerB := api.Peer{Gateway: "gw-b", PublicKey: pubB.String(), Endpoint: "198.18.1.2:51820",
		AllowedIPs: prefixes("10.250.0.2/32", "10.251.2.0/24")}
	const overlayB = "10.250.0.2:7000"
	ourRoute := func(p string) string { return fmt.Sprintf("%s proto %d", p, RouteProtocol) }

	// 1. First apply: both sides change, the tunnel carries TCP.
	if !hA.apply(peerB) || !hB.apply(peerA) {
		t.Fatal("first ApplyPeers reported no change")
	}
	if r := hA.dial(overlayB, 10*time.Second); r.Error != "" {
		t.Fatalf("TCP through the tunnel: %s", r.Error)
	}
	out := a.Exec(t, "wg", "show", nameA, "latest-handshakes")
	fields := strings.Fields(out)
	if len(fields) != 2 || fields[0] != pubB.String() {
		t.Fatalf("wg show %s latest-handshakes: %q", nameA, out)
	}
	if sec, _ := strconv.ParseInt(fields[1], 10, 64); sec == 0 || time.Since(time.Unix(sec, 0)) > time.Minute {
		t.Fatalf("no recent handshake in wg show: %q", out)
	}
	t.Logf("wg show %s:\n%s", nameA, a.Exec(t, "wg", "show", nameA))
	if r := hA.call(helperRequest{Op: "stats"}); r.Peers != 1 || time.Since(r.LastHandshake) > time.Minute {
		t.Fatalf("Stats: %d peers, last handshake %v (%s)", r.Peers, r.LastHandshake, r.Error)
	}
	if got, want := hA.routes(), ourRoute("10.251.2.0/24"); !slices.Contains(got, want) {
		t.Fatalf("routes of %s: %v, want %q", nameA, got, want)
	}
	before := hA.peer(pubB)
	if before.Keepalive != PersistentKeepalive.String() {
		t.Errorf("keepalive %s", before.Keepalive)
	}

	// 2. Same desired state: nothing to do.
	if hA.apply(peerB) || hB.apply(peerA) {
		t.Fatal("ApplyPeers with identical state reported a change")
	}

	// 3. New allowed IPs: updated in place, the session survives.
	peerB2 := peerB
	peerB2.AllowedIPs = prefixes("10.250.0.2/32", "10.251.2.0/24", "10.251.3.0/24")
	if !hA.apply(peerB2) {
		t.Fatal("allowed IPs change reported no change")
	}
	after := hA.peer(pubB)
	if !slices.Equal(after.AllowedIPs, []string{"10.250.0.2/32", "10.251.2.0/24", "10.251.3.0/24"}) {
		t.Fatalf("allowed IPs %v", after.AllowedIPs)
	}
	if !after.Handshake.Equal(before.Handshake) || after.RxBytes < before.RxBytes {
		t.Fatalf("peer re-created on allowed IPs change: handshake %v -> %v, rx %d -> %d",
			before.Handshake, after.Handshake, before.RxBytes, after.RxBytes)
	}
	if got := hA.routes(); !slices.Contains(got, ourRoute("10.251.3.0/24")) || !slices.Contains(got, ourRoute("10.251.2.0/24")) {
		t.Fatalf("routes after adding a LAN: %v", got)
	}
	if hA.apply(peerB2) {
		t.Fatal("second identical apply reported a change")
	}

	// 4. New endpoint (a second address of b): updated in place.
	b.Exec(t, "ip", "addr", "add", "198.18.1.3/24", "dev", ifB)
	peerB3 := peerB2
	peerB3.Endpoint = "198.18.1.3:51820"
	if !hA.apply(peerB3) {
		t.Fatal("endpoint change reported no change")
	}
	after = hA.peer(pubB)
	if after.Endpoint != "198.18.1.3:51820" {
		t.Fatalf("endpoint %q", after.Endpoint)
	}
	if !after.Handshake.Equal(before.Handshake) || after.RxBytes < before.RxBytes {
		t.Fatalf("peer re-created on endpoint change: handshake %v -> %v, rx %d -> %d",
			before.Handshake, after.Handshake, before.RxBytes, after.RxBytes)
	}
	if r := hA.dial(overlayB, 10*time.Second); r.Error != "" {
		t.Fatalf("TCP after endpoint change: %s", r.Error)
	}
	after = hA.peer(pubB)
	if !after.Handshake.Equal(before.Handshake) || after.RxBytes <= before.RxBytes {
		t.Fatalf("session after endpoint change: handshake %v -> %v, rx %d -> %d",
			before.Handshake, after.Handshake, before.RxBytes, after.RxBytes)
	}
	// Whatever address b answered from (WireGuard roams to it), the same
	// desired state is no change.
	if hA.apply(peerB3) {
		t.Fatalf("identical apply after traffic reported a change (endpoint now %s)", after.Endpoint)
	}

	// 5. LAN prefix withdrawn: its route goes, the other stays.
	if !hA.apply(peerB) {
		t.Fatal("allowed IPs shrink reported no change")
	}
	if got := hA.routes(); slices.Contains(got, ourRoute("10.251.3.0/24")) || !slices.Contains(got, ourRoute("10.251.2.0/24")) {
		t.Fatalf("routes after removing a LAN: %v", got)
	}

	// 6. Peer removed: no peers, no routes of ours, no traffic.
	if !hA.apply() {
		t.Fatal("peer removal reported no change")
	}
	if r := hA.call(helperRequest{Op: "stats"}); r.Peers != 0 {
		t.Fatalf("%d peers after removal", r.Peers)
	}
	for _, r := range hA.routes() {
		if strings.HasSuffix(r, fmt.Sprintf(" proto %d", RouteProtocol)) {
			t.Fatalf("route %q left after peer removal", r)
		}
	}
	if r := hA.dial(overlayB, 2*time.Second); r.Error == "" {
		t.Fatal("TCP through the tunnel after the peer was removed")
	}
	if hA.apply() {
		t.Fatal("empty apply twice reported a change")
	}

	// 7. And back.
	if !hA.apply(peerB) {
		t.Fatal("re-adding the peer reported no change")
	}
	if r := hA.dial(overlayB, 10*time.Second); r.Error != "" {
		t.Fatalf("TCP after re-adding the peer: %s", r.Error)
	}
}

// TestWireGuardInvalidPeers: bad peers are reported and left out, the good
// ones applied.
func TestWireGuardInvalidPeers(t *testing.T) {
	netnstest.RequireTools(t, "wg")
	netnstest.RequireTUN(t)
	ns := netnstest.New(t)
	key := mustKey(t)
	other1, other2 := mustKey(t).PublicKey(), mustKey(t).PublicKey()
	h := startHelper(t, ns, helperConfig{Name: netnstest.IfName("gvw"), PrivateKey: key.String(), Addr: "10.250.0.1/24"})
	r := h.call(helperRequest{Op: "apply", Peers: []api.Peer{
		{Gateway: "ok", PublicKey: other1.String(), AllowedIPs: prefixes("10.250.0.2/32", "10.251.0.0/24")},
		{Gateway: "badkey", PublicKey: "not-a-key"},
		{Gateway: "self", PublicKey: key.PublicKey().String()},
		{Gateway: "dup", PublicKey: other1.String()},
		{Gateway: "conflict", PublicKey: other2.String(), AllowedIPs: prefixes("10.251.0.0/24", "10.250.0.3/32"), Endpoint: "198.18.9.9:1"},
		{Gateway: "badendpoint", PublicKey: mustKey(t).PublicKey().String(), Endpoint: "nonsense"},
	}})
	for _, want := range []string{"badkey", "self", "dup", "conflict", "badendpoint", ErrInvalidPeer.Error()} {
		if !strings.Contains(r.Error, want) {
			t.Errorf("error %q does not mention %q", r.Error, want)
		}
	}
	if !r.Changed {
		t.Error("valid peers not applied")
	}
	if got := h.peer(other1).AllowedIPs; !slices.Equal(got, []string{"10.250.0.2/32", "10.251.0.0/24"}) {
		t.Errorf("ok peer allowed IPs %v", got)
	}
	p2 := h.peer(other2)
	if !slices.Equal(p2.AllowedIPs, []string{"10.250.0.3/32"}) || p2.Endpoint != "198.18.9.9:1" {
		t.Errorf("conflicting peer: %+v", p2)
	}
	if r := h.call(helperRequest{Op: "stats"}); r.Peers != 2 {
		t.Errorf("%d peers, want 2", r.Peers)
	}
}

func TestDesiredPeers(t *testing.T) {
	self := mustKey(t).PublicKey()
	k1, k2 := mustKey(t).PublicKey(), mustKey(t).PublicKey()
	d := &Device{name: "x", addr: pfx("10.250.0.1/24")}
	want, err := d.desired([]api.Peer{
		{PublicKey: k1.String(), Endpoint: "[::ffff:198.18.0.1]:51820", AllowedIPs: prefixes("10.1.0.0/24", "10.250.0.2/32", "10.1.0.7/24")},
		{PublicKey: k2.String(), AllowedIPs: prefixes("::ffff:10.2.0.0/120")},
		{PublicKey: self.String()},
	}, self)
	if !errors.Is(err, ErrInvalidPeer) || !strings.Contains(err.Error(), "own key") {
		t.Fatalf("err = %v", err)
	}
	w1 := want[k1]
	if w1 == nil || w1.endpointUDP.String() != "198.18.0.1:51820" {
		t.Fatalf("peer 1: %+v", w1)
	}
	if got := fmt.Sprint(w1.allowed); got != "[10.1.0.0/24 10.250.0.2/32]" {
		t.Fatalf("peer 1 allowed %s", got)
	}
	if got := fmt.Sprint(want[k2].allowed); got != "[10.2.0.0/24]" {
		t.Fatalf("peer 2 allowed %s", got)
	}
	if len(want) != 2 {
		t.Fatalf("%d peers", len(want))
	}
}
