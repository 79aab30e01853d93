package netagent

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
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
	Op      string     `json:"op"` // apply, apply-full, repair, shield, dump, stats, peer, routes, dial
	Peers   []api.Peer `json:"peers,omitempty"`
	Addrs   []string   `json:"addrs,omitempty"` // shield
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
	Dump          []string  `json:"dump,omitempty"`
	Timeout       bool      `json:"timeout,omitempty"`
	// LeftOut is the InvalidPeersError's count of peers left out.
	LeftOut int `json:"left_out,omitempty"`
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
	case "apply", "apply-full", "repair":
		var changed bool
		var err error
		switch req.Op {
		case "apply":
			changed, err = d.ApplyPeers(req.Peers)
		case "apply-full": // as if the previous call had failed
			d.mu.Lock()
			d.synced = false
			d.mu.Unlock()
			changed, err = d.ApplyPeers(req.Peers)
		case "repair":
			changed, err = d.Repair()
		}
		r := helperReply{Changed: changed}
		if err != nil {
			r.Error = err.Error()
		}
		if ip := (*InvalidPeersError)(nil); errors.As(err, &ip) {
			r.LeftOut = ip.Peers
		}
		return r
	case "shield":
		var addrs []netip.Addr
		for _, a := range req.Addrs {
			addrs = append(addrs, netip.MustParseAddr(a))
		}
		d.Shield(addrs)
		return helperReply{}
	case "dump":
		lines, err := dumpDevice(wg, d.Name())
		if err != nil {
			return errReply(err)
		}
		return helperReply{Dump: lines}
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

// dumpDevice describes the device's peers (key, endpoint, keepalive,
// allowed IPs) and our routes through it, sorted: two devices configured
// alike give the same lines.
func dumpDevice(wg *wgctrl.Client, name string) ([]string, error) {
	dev, err := wg.Device(name)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range dev.Peers {
		ep := "-"
		if p.Endpoint != nil {
			ep = p.Endpoint.String()
		}
		out = append(out, fmt.Sprintf("peer %s endpoint %s keepalive %s allowed %v",
			p.PublicKey, ep, p.PersistentKeepaliveInterval, ipNetsToPrefixes(p.AllowedIPs)))
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, err
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: link.Attrs().Index, Protocol: RouteProtocol},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, err
	}
	for _, r := range routes {
		out = append(out, fmt.Sprintf("route %s", r.Dst))
	}
	slices.Sort(out)
	return out, nil
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
	// The first handshake may be lost to a collision or a loaded
	// machine; wireguard-go tries again every 5 s (REKEY_TIMEOUT), and
	// TCP resends its SYN after 1, 3, 7 and 15 s: wait for three tries.
	if r := hA.dial(overlayB, 20*time.Second); r.Error != "" {
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
	// Only the side whose key sorts lower keeps the pair alive.
	wantKeepalive := time.Duration(0)
	if bytes.Compare(pubA[:], pubB[:]) < 0 {
		wantKeepalive = PersistentKeepalive
	}
	if before.Keepalive != wantKeepalive.String() {
		t.Errorf("keepalive %s, want %s", before.Keepalive, wantKeepalive)
	}
	if other := hB.peer(pubA); (other.Keepalive == "0s") == (wantKeepalive == 0) {
		t.Errorf("both sides or neither keep the pair alive: %s and %s", before.Keepalive, other.Keepalive)
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
// ones applied; the error counts the peers not applied in full (conflict
// is applied without the allowed IP ok holds).
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
	if r.LeftOut != 5 {
		t.Errorf("%d peers left out, want 5 (all but ok)", r.LeftOut)
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

// planDevice is a Device without a kernel device: enough for plan and
// commit, the validation and bookkeeping of ApplyPeers.
func planDevice(self wgtypes.Key) *Device {
	return &Device{name: "x", addr: pfx("10.250.0.1/24"), self: self, log: slog.New(slog.DiscardHandler),
		peers: map[string]*peerState{}, owner: map[netip.Prefix]*peerState{},
		shieldFixed: map[netip.Addr]bool{}, shieldCount: map[netip.Addr]int{}, foreign: map[netip.Prefix]bool{}, withheld: map[netip.Prefix]bool{}}
}

// planCommit runs ApplyPeers' validation (incremental, or of every peer if
// all) and records the result as applied, as ApplyPeers does. It returns
// the sorted error messages and the number of peers left out, as
// ApplyPeers' error says them.
func (d *Device) planCommit(peers []api.Peer, all bool) (errs []string, leftOut int) {
	p := d.plan(peers, all)
	d.commit(p)
	var ip *InvalidPeersError
	if err := p.err(); err != nil && (!errors.As(err, &ip) || !errors.Is(err, ErrInvalidPeer)) {
		panic(fmt.Sprintf("ApplyPeers' error %T %v is not an InvalidPeersError", err, err))
	}
	if ip == nil {
		return nil, 0
	}
	for _, err := range ip.Errs {
		errs = append(errs, err.Error())
	}
	slices.Sort(errs)
	return errs, ip.Peers
}

// grants renders who holds what ("gateway endpoint allowed-IPs" per peer,
// sorted), after checking that the owner map is exactly the peers' grants.
func grants(t *testing.T, d *Device, names map[string]string) string {
	t.Helper()
	var lines []string
	n := 0
	for id, w := range d.peers {
		if id != w.id {
			t.Errorf("peer %s filed under %s", w.id, id)
		}
		for _, a := range w.allowed {
			if d.owner[a] != w {
				t.Errorf("%s holds %s, owner map says %v", names[id], a, d.owner[a])
			}
		}
		n += len(w.allowed)
		lines = append(lines, fmt.Sprintf("%s %s %v", names[id], w.endpoint, w.allowed))
	}
	if len(d.owner) != n {
		t.Errorf("owner map has %d prefixes, peers hold %d", len(d.owner), n)
	}
	slices.Sort(lines)
	return strings.Join(lines, "; ")
}

// planKey is the i-th test key, deterministic.
func planKey(i int) wgtypes.Key {
	return wgtypes.Key(sha256.Sum256(fmt.Appendf(nil, "plan key %d", i)))
}

// TestPeerPlan walks ApplyPeers' validation through successive desired
// states, incrementally and with every peer validated (the full path),
// and checks both give the same grants and errors, and the expected ones.
func TestPeerPlan(t *testing.T) {
	self := planKey(99)
	names := map[string]string{}
	peer := func(i int, endpoint string, allowed ...string) api.Peer {
		k := planKey(i)
		names[k.String()] = fmt.Sprintf("p%d", i)
		p := api.Peer{Gateway: fmt.Sprintf("p%d", i), PublicKey: k.String(), Endpoint: endpoint}
		for _, a := range allowed {
			var pf netip.Prefix // "": the zero Prefix, invalid
			if a != "" {
				pf = pfx(a)
			}
			p.AllowedIPs = append(p.AllowedIPs, pf)
		}
		return p
	}
	ep := "198.18.0.1:51820"
	steps := []struct {
		name   string
		peers  []api.Peer
		grants string
		errs   []string // substrings, one per error, in sorted order
		// leftOut: the peers the errors name (InvalidPeersError.Peers)
		leftOut int
	}{
		{"start", []api.Peer{peer(1, ep, "10.1.0.0/24", "10.250.0.2/32"), peer(2, "", "10.2.0.0/24")},
			"p1 198.18.0.1:51820 [10.1.0.0/24 10.250.0.2/32]; p2  [10.2.0.0/24]", nil, 0},
		{"changed peer claims what an unchanged one holds",
			[]api.Peer{peer(2, "", "10.1.0.0/24", "10.2.0.0/24"), peer(1, ep, "10.1.0.0/24", "10.250.0.2/32")},
			"p1 198.18.0.1:51820 [10.1.0.0/24 10.250.0.2/32]; p2  [10.2.0.0/24]",
			[]string{"peer 0 (p2, " + planKey(2).String() + "): allowed IP 10.1.0.0/24 already belongs to " + planKey(1).String()}, 1},
		{"same again: the error again",
			[]api.Peer{peer(2, "", "10.1.0.0/24", "10.2.0.0/24"), peer(1, ep, "10.1.0.0/24", "10.250.0.2/32")},
			"p1 198.18.0.1:51820 [10.1.0.0/24 10.250.0.2/32]; p2  [10.2.0.0/24]",
			[]string{"allowed IP 10.1.0.0/24 already belongs to"}, 1},
		{"holder lets go: the refused claim is granted",
			[]api.Peer{peer(2, "", "10.1.0.0/24", "10.2.0.0/24"), peer(1, ep, "10.250.0.2/32")},
			"p1 198.18.0.1:51820 [10.250.0.2/32]; p2  [10.1.0.0/24 10.2.0.0/24]", nil, 0},
		{"new peer, first in the list, claims a held prefix",
			[]api.Peer{peer(3, "", "10.2.0.0/24", "10.3.0.0/24"), peer(2, "", "10.1.0.0/24", "10.2.0.0/24"), peer(1, ep, "10.250.0.2/32")},
			"p1 198.18.0.1:51820 [10.250.0.2/32]; p2  [10.1.0.0/24 10.2.0.0/24]; p3  [10.3.0.0/24]",
			[]string{"peer 0 (p3"}, 1},
		{"holder removed: granted",
			[]api.Peer{peer(3, "", "10.2.0.0/24", "10.3.0.0/24"), peer(1, ep, "10.250.0.2/32")},
			"p1 198.18.0.1:51820 [10.250.0.2/32]; p3  [10.2.0.0/24 10.3.0.0/24]", nil, 0},
		{"prefix moves between two changed peers",
			[]api.Peer{peer(3, "", "10.3.0.0/24"), peer(1, ep, "10.250.0.2/32", "10.2.0.0/24")},
			"p1 198.18.0.1:51820 [10.2.0.0/24 10.250.0.2/32]; p3  [10.3.0.0/24]", nil, 0},
		{"two new claimants: the first in the list",
			[]api.Peer{peer(3, "", "10.3.0.0/24"), peer(1, ep, "10.250.0.2/32", "10.2.0.0/24"),
				peer(5, "", "10.5.0.0/24"), peer(4, "", "10.5.0.0/24", "10.4.0.0/24")},
			"p1 198.18.0.1:51820 [10.2.0.0/24 10.250.0.2/32]; p3  [10.3.0.0/24]; p4  [10.4.0.0/24]; p5  [10.5.0.0/24]",
			[]string{"peer 3 (p4"}, 1},
		{"incumbent keeps its prefix even when later in the list",
			[]api.Peer{peer(4, "", "10.5.0.0/24", "10.4.0.0/24"), peer(5, "", "10.5.0.0/24", "10.6.0.0/24"),
				peer(3, "", "10.3.0.0/24"), peer(1, ep, "10.250.0.2/32", "10.2.0.0/24")},
			"p1 198.18.0.1:51820 [10.2.0.0/24 10.250.0.2/32]; p3  [10.3.0.0/24]; p4  [10.4.0.0/24]; p5  [10.5.0.0/24 10.6.0.0/24]",
			[]string{"peer 0 (p4"}, 1},
		{"normalised: masked, unmapped, deduplicated, reordered; endpoint changed",
			[]api.Peer{peer(1, "[::ffff:198.18.0.7]:51820", "10.2.0.9/24", "::ffff:10.250.0.2/128", "10.2.0.0/24"),
				peer(3, "", "10.3.0.0/24"), peer(4, "", "10.4.0.0/24"), peer(5, "", "10.6.0.0/24", "10.5.0.0/24")},
			"p1 [::ffff:198.18.0.7]:51820 [10.2.0.0/24 10.250.0.2/32]; p3  [10.3.0.0/24]; p4  [10.4.0.0/24]; p5  [10.5.0.0/24 10.6.0.0/24]", nil, 0},
		// p5 has two problems: one peer, two errors.
		{"bad input: duplicate, bad key, own key, bad endpoint (p3 goes), invalid prefix, default route",
			[]api.Peer{peer(1, "[::ffff:198.18.0.7]:51820", "10.2.0.9/24", "::ffff:10.250.0.2/128", "10.2.0.0/24"),
				peer(1, "", "10.7.0.0/24"),
				{Gateway: "bad", PublicKey: "not a key"},
				{Gateway: "self", PublicKey: self.String()},
				peer(3, "nonsense", "10.3.0.0/24"),
				peer(4, "", "10.4.0.0/24", ""),
				peer(5, "", "10.6.0.0/24", "10.5.0.0/24", "0.0.0.0/0", "")},
			"p1 [::ffff:198.18.0.7]:51820 [10.2.0.0/24 10.250.0.2/32]; p4  [10.4.0.0/24]; p5  [0.0.0.0/0 10.5.0.0/24 10.6.0.0/24]",
			[]string{"peer 1 (p1", "peer 2 (bad", "peer 3 (self", "peer 4 (p3", "peer 5 (p4", "peer 6 (p5", "peer 6 (p5"}, 6},
		{"empty", nil, "", nil, 0},
	}
	inc, full := planDevice(self), planDevice(self)
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			errsInc, leftInc := inc.planCommit(st.peers, false)
			errsFull, leftFull := full.planCommit(st.peers, true)
			gInc, gFull := grants(t, inc, names), grants(t, full, names)
			if gInc != st.grants {
				t.Errorf("incremental grants\n%s\nwant\n%s", gInc, st.grants)
			}
			if gFull != gInc {
				t.Errorf("full grants\n%s\nincremental\n%s", gFull, gInc)
			}
			if !slices.Equal(errsInc, errsFull) {
				t.Errorf("incremental errors %q, full %q", errsInc, errsFull)
			}
			if leftInc != st.leftOut || leftFull != st.leftOut {
				t.Errorf("peers left out: incremental %d, full %d, want %d", leftInc, leftFull, st.leftOut)
			}
			if len(errsInc) != len(st.errs) {
				t.Fatalf("errors %q, want %d: %q", errsInc, len(st.errs), st.errs)
			}
			for i, want := range st.errs {
				if !strings.Contains(errsInc[i], want) || !strings.Contains(errsInc[i], ErrInvalidPeer.Error()) {
					t.Errorf("error %q does not mention %q", errsInc[i], want)
				}
			}
		})
	}
}

// TestPeerPlanRandom: random successive desired states with overlapping
// claims, duplicates and reordering. The incremental path and the full
// path (every peer validated) must agree on every step.
func TestPeerPlanRandom(t *testing.T) {
	self := planKey(999)
	rng := rand.New(rand.NewPCG(1, 2))
	const nKeys, nPrefixes = 24, 16
	names := map[string]string{}
	for i := range nKeys {
		names[planKey(i).String()] = fmt.Sprintf("p%d", i)
	}
	randPeer := func() api.Peer {
		i := rng.IntN(nKeys)
		p := api.Peer{Gateway: fmt.Sprintf("p%d", i), PublicKey: planKey(i).String()}
		if rng.IntN(2) == 0 {
			p.Endpoint = fmt.Sprintf("198.18.0.%d:51820", rng.IntN(3)+1)
		}
		for range rng.IntN(4) {
			p.AllowedIPs = append(p.AllowedIPs, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(rng.IntN(nPrefixes)), 0, 0}), 24))
		}
		return p
	}
	var peers []api.Peer
	inc, full := planDevice(self), planDevice(self)
	for step := range 500 {
		peers = slices.Clone(peers)
		switch op := rng.IntN(10); {
		case op < 4 && len(peers) > 0: // change one
			i := rng.IntN(len(peers))
			q := randPeer()
			q.PublicKey, q.Gateway = peers[i].PublicKey, peers[i].Gateway
			peers[i] = q
		case op < 6: // add one (maybe a duplicate key)
			peers = slices.Insert(peers, rng.IntN(len(peers)+1), randPeer())
		case op < 8 && len(peers) > 0: // remove one
			i := rng.IntN(len(peers))
			peers = slices.Delete(peers, i, i+1)
		case op < 9: // reorder
			rng.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
		}
		errsInc, leftInc := inc.planCommit(peers, false)
		errsFull, leftFull := full.planCommit(peers, true)
		gInc, gFull := grants(t, inc, names), grants(t, full, names)
		if gInc != gFull || !slices.Equal(errsInc, errsFull) || leftInc != leftFull {
			t.Fatalf("step %d: incremental and full differ:\ngrants %s\n  full %s\nerrors %q\n  full %q\nleft out %d, full %d", step, gInc, gFull, errsInc, errsFull, leftInc, leftFull)
		}
	}
}

// TestWireGuardIncrementalAndRepair: a device that gets each desired state
// through the incremental path (every ApplyPeers after the first) ends up
// exactly like one that gets it through the full path (read the device,
// diff, repair), step after step, and Repair finds nothing to fix on it.
// Then the device is changed behind the agent's back: the incremental path
// does not see it (it does not read the kernel), Repair puts it back.
func TestWireGuardIncrementalAndRepair(t *testing.T) {
	netnstest.RequireTools(t, "wg", "ip")
	netnstest.RequireTUN(t)
	nsInc, nsFull := netnstest.New(t), netnstest.New(t)
	nameInc, nameFull := netnstest.IfName("gvi"), netnstest.IfName("gvf")
	// One private key for both: per-peer settings (keepalive) depend on it.
	self := mustKey(t).String()
	hInc := startHelper(t, nsInc, helperConfig{Name: nameInc, PrivateKey: self, Addr: "10.250.0.1/24"})
	hFull := startHelper(t, nsFull, helperConfig{Name: nameFull, PrivateKey: self, Addr: "10.250.0.1/24"})

	dump := func(h *helper) []string {
		t.Helper()
		r := h.call(helperRequest{Op: "dump"})
		if r.Error != "" {
			t.Fatalf("%s: dump: %s", h.name, r.Error)
		}
		return r.Dump
	}
	converged := func(step string) {
		t.Helper()
		inc, full := dump(hInc), dump(hFull)
		if !slices.Equal(inc, full) {
			t.Fatalf("%s: incremental and full paths differ:\n--- incremental\n%s\n--- full\n%s",
				step, strings.Join(inc, "\n"), strings.Join(full, "\n"))
		}
		if r := hInc.call(helperRequest{Op: "repair"}); r.Error != "" || r.Changed {
			t.Fatalf("%s: Repair after the incremental apply: changed %v, %s", step, r.Changed, r.Error)
		}
	}
	// step applies peers to both devices; wantErr is a substring of the
	// (ErrInvalidPeer) error both must return, "" for none.
	step := func(name string, peers []api.Peer, wantChanged bool, wantErr string) {
		t.Helper()
		for _, c := range []struct {
			h  *helper
			op string
		}{{hInc, "apply"}, {hFull, "apply-full"}} {
			r := c.h.call(helperRequest{Op: c.op, Peers: peers})
			if r.Changed != wantChanged {
				t.Errorf("%s: %s reported changed=%v, want %v", name, c.op, r.Changed, wantChanged)
			}
			if (wantErr == "") != (r.Error == "") || !strings.Contains(r.Error, wantErr) {
				t.Fatalf("%s: %s: error %q, want one mentioning %q", name, c.op, r.Error, wantErr)
			}
		}
		converged(name)
	}

	peers := make([]api.Peer, 40)
	for i := range peers {
		peers[i] = benchPeer(i)
	}
	key := func(i int) string { return benchPeer(i).PublicKey }
	lan := func(i int) netip.Prefix { return benchPeer(i).AllowedIPs[1] }

	step("first apply", peers, true, "")
	if got := dump(hInc); len(got) != 40+80 {
		t.Fatalf("%d peers and routes, want 40 peers and 80 routes:\n%s", len(got), strings.Join(got, "\n"))
	}
	step("unchanged", peers, false, "")

	peers = slices.Clone(peers)
	peers[7].AllowedIPs = append(slices.Clone(peers[7].AllowedIPs), pfx("172.16.7.0/24"))
	step("allowed IPs of one peer", peers, true, "")

	peers = slices.Clone(peers)
	peers[8].Endpoint = "198.18.99.8:51820"
	step("endpoint of one peer", peers, true, "")

	peers = append(slices.Delete(slices.Clone(peers), 3, 4), benchPeer(40))
	step("one peer added, one removed", peers, true, "")

	// Peer 10's LAN moves to peer 11, in one change.
	peers = slices.Clone(peers)
	i10 := slices.IndexFunc(peers, func(p api.Peer) bool { return p.PublicKey == key(10) })
	i11 := slices.IndexFunc(peers, func(p api.Peer) bool { return p.PublicKey == key(11) })
	peers[i10].AllowedIPs = peers[i10].AllowedIPs[:1]
	peers[i11].AllowedIPs = append(slices.Clone(peers[i11].AllowedIPs), lan(10))
	step("a LAN moves between peers", peers, true, "")

	// Peer 12 claims peer 13's LAN: refused, 13 keeps it, nothing changes.
	i12 := slices.IndexFunc(peers, func(p api.Peer) bool { return p.PublicKey == key(12) })
	i13 := slices.IndexFunc(peers, func(p api.Peer) bool { return p.PublicKey == key(13) })
	peers = slices.Clone(peers)
	peers[i12].AllowedIPs = append(slices.Clone(peers[i12].AllowedIPs), lan(13))
	step("a changed peer claims an unchanged one's LAN", peers, false, "already belongs to "+key(13))
	// Peer 13 leaves: 12 gets the LAN (the route stays, through the same
	// device).
	peers = slices.Delete(slices.Clone(peers), i13, i13+1)
	step("the holder leaves", peers, true, "")

	// LANs that would capture a controller's address, a peer's endpoint
	// (peer 8's, 198.18.99.8) or a destination the site routes itself:
	// WireGuard gets them, the routing table does not, and the rest of
	// the view applies.
	for _, h := range []*helper{hInc, hFull} {
		if r := h.call(helperRequest{Op: "shield", Addrs: []string{"203.0.113.10"}}); r.Error != "" {
			t.Fatal(r.Error)
		}
	}
	for _, ns := range []*netnstest.NS{nsInc, nsFull} {
		ns.Exec(t, "ip", "route", "add", "blackhole", "10.95.0.0/24")
	}
	at := func(i int) int {
		return slices.IndexFunc(peers, func(p api.Peer) bool { return p.PublicKey == key(i) })
	}
	peers = slices.Clone(peers)
	for i, extra := range map[int]string{14: "203.0.113.0/24", 15: "198.18.99.0/24", 16: "10.95.0.0/24"} {
		peers[at(i)].AllowedIPs = append(slices.Clone(peers[at(i)].AllowedIPs), pfx(extra))
	}
	step("LANs over a controller, a peer's endpoint, a site's route", peers, true, "")
	routeOf := func(h *helper, p string) bool { return slices.Contains(dump(h), "route "+p) }
	for _, p := range []string{"203.0.113.0/24", "198.18.99.0/24", "10.95.0.0/24"} {
		if routeOf(hInc, p) {
			t.Errorf("%s routed through the tunnel", p)
		}
	}
	k14, _ := wgtypes.ParseKey(key(14))
	if got := hInc.peer(k14); !slices.Contains(got.AllowedIPs, "203.0.113.0/24") {
		t.Errorf("peer 14 lost its allowed IP: %v", got.AllowedIPs)
	}
	// Peer 8's endpoint moves away: peer 15's LAN (unchanged) is routed.
	peers = slices.Clone(peers)
	peers[at(8)].Endpoint = "198.18.77.8:51820"
	step("the endpoint inside a LAN moves away", peers, true, "")
	if !routeOf(hInc, "198.18.99.0/24") {
		t.Error("198.18.99.0/24 not routed once no endpoint is in it")
	}
	// The site's route goes: the next repair routes the prefix.
	for _, ns := range []*netnstest.NS{nsInc, nsFull} {
		ns.Exec(t, "ip", "route", "del", "blackhole", "10.95.0.0/24")
	}
	for _, h := range []*helper{hInc, hFull} {
		if r := h.call(helperRequest{Op: "repair"}); r.Error != "" || !r.Changed {
			t.Fatalf("repair once the site's route is gone: changed %v, %s", r.Changed, r.Error)
		}
	}
	if !routeOf(hInc, "10.95.0.0/24") {
		t.Error("10.95.0.0/24 not routed once the site's route is gone")
	}
	converged("after the site's route went")

	rev := slices.Clone(peers)
	slices.Reverse(rev)
	step("same peers, another order", rev, false, "")
	want := dump(hInc)

	// Behind the agent's back.
	stray := mustKey(t).PublicKey().String()
	for _, cmd := range [][]string{
		{"wg", "set", nameInc, "peer", key(5), "remove"},
		{"wg", "set", nameInc, "peer", key(6), "allowed-ips", "10.99.0.0/24"},
		{"wg", "set", nameInc, "peer", key(9), "persistent-keepalive", "off"},
		{"wg", "set", nameInc, "peer", stray, "allowed-ips", "10.98.0.0/24"},
		{"ip", "route", "del", lan(20).String(), "dev", nameInc},
		{"ip", "route", "add", "10.97.0.0/24", "dev", nameInc, "proto", strconv.Itoa(int(RouteProtocol))},
		{"ip", "route", "add", "10.96.0.0/24", "dev", nameInc}, // not ours: left alone
	} {
		nsInc.Exec(t, cmd...)
	}
	drifted := dump(hInc)
	if slices.Equal(drifted, want) {
		t.Fatal("the edits did not change the device")
	}
	// The incremental path trusts what it applied: the same view is no
	// change, and the drift stays until a repair.
	if hInc.apply(rev...) {
		t.Error("incremental ApplyPeers of the same view reported a change")
	}
	if got := dump(hInc); !slices.Equal(got, drifted) {
		t.Errorf("incremental ApplyPeers of the same view touched the device")
	}
	r := hInc.call(helperRequest{Op: "repair"})
	if r.Error != "" || !r.Changed {
		t.Fatalf("Repair after drift: changed %v, %s", r.Changed, r.Error)
	}
	if got := dump(hInc); !slices.Equal(got, want) {
		t.Fatalf("after Repair:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if out := nsInc.Exec(t, "ip", "route", "show", "10.96.0.0/24"); !strings.Contains(out, "10.96.0.0/24") {
		t.Errorf("Repair removed a route that is not ours")
	}
	if r := hInc.call(helperRequest{Op: "repair"}); r.Error != "" || r.Changed {
		t.Fatalf("second Repair: changed %v, %s", r.Changed, r.Error)
	}
	// And incremental changes carry on from the repaired device.
	peers = slices.Clone(rev)
	peers[0].AllowedIPs = peers[0].AllowedIPs[:1]
	step("a change after the repair", peers, true, "")
	step("all peers removed", nil, true, "")
}
