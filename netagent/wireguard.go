package netagent

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/govnet/govnet/api"
)

const (
	// MTU of the overlay interface: 1500 minus WireGuard's worst-case
	// overhead over IPv6 transport (80 bytes).
	MTU = 1420
	// PersistentKeepalive keeps NAT mappings and stateful firewalls on the
	// transport path open.
	PersistentKeepalive = 25 * time.Second
	// RouteProtocol marks the routes [Device.ApplyPeers] installs (the
	// rtm_protocol field, "proto 157" in ip route), so it finds and removes
	// its own strays, even after a restart, and never touches other routes.
	RouteProtocol netlink.RouteProtocol = 157
)

// ErrInvalidPeer marks peers (or parts of them) that ApplyPeers left out:
// a bad key, endpoint or allowed IP, a duplicate, the device's own key, or
// an allowed IP another peer already claims (WireGuard would silently move
// it, and every later reconcile would move it back).
var ErrInvalidPeer = errors.New("invalid peer")

// Device is the gateway's WireGuard interface: a kernel WireGuard link when
// the kernel has the module, otherwise an embedded wireguard-go device on a
// TUN interface. Either way it is configured through wgctrl, so `wg show`
// works. Its methods are safe for concurrent use.
//
// wireguard-go opens its sockets from several threads, so the process must
// already be in the gateway's network namespace (ip netns exec, systemd
// NetworkNamespacePath=); Device never switches namespaces.
type Device struct {
	name string
	addr netip.Prefix
	log  *slog.Logger

	mu       sync.Mutex
	closed   bool
	kernel   bool // kernel WireGuard link (else wireguard-go)
	wg       *wgctrl.Client
	dev      *device.Device // wireguard-go only
	uapi     net.Listener   // wireguard-go only
	uapiDone chan struct{}
	// endpoints remembers the endpoint last configured for each peer from
	// the desired state. WireGuard roams: after an authenticated packet from
	// a new address it updates the peer's endpoint itself, and a reconcile
	// must not undo that unless the desired endpoint changed.
	endpoints map[wgtypes.Key]string
}

// OpenDevice creates (or, for a kernel link left by a previous run, takes
// over) the WireGuard interface name, sets its private key and listen port
// (0: any), gives it addr (the gateway's overlay IP with the overlay
// prefix length, which also routes the overlay prefix through it), and
// brings it up. It starts with no peers; see [Device.ApplyPeers].
func OpenDevice(name string, privateKey wgtypes.Key, listenPort int, addr netip.Prefix, log *slog.Logger) (*Device, error) {
	if name == "" || len(name) >= unix.IFNAMSIZ || strings.ContainsAny(name, "/ \x00") {
		return nil, fmt.Errorf("wireguard: invalid interface name %q", name)
	}
	if !addr.IsValid() {
		return nil, fmt.Errorf("wireguard: invalid address %v", addr)
	}
	if listenPort < 0 || listenPort > 65535 {
		return nil, fmt.Errorf("wireguard: invalid listen port %d", listenPort)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Device{name: name, addr: addr, log: log.With("iface", name), endpoints: map[wgtypes.Key]string{}}
	if err := d.create(); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			d.Close()
		}
	}()

	var err error
	if d.wg, err = wgctrl.New(); err != nil {
		return nil, fmt.Errorf("wireguard: open wgctrl: %w", err)
	}
	if err := d.wg.ConfigureDevice(name, wgtypes.Config{PrivateKey: &privateKey, ListenPort: &listenPort}); err != nil {
		return nil, fmt.Errorf("wireguard: set key and port on %s: %w", name, err)
	}
	if err := d.setupLink(); err != nil {
		return nil, err
	}
	impl := "wireguard-go"
	if d.kernel {
		impl = "kernel"
	}
	d.log.Info("wireguard device up", "impl", impl, "addr", addr, "listen_port", listenPort,
		"public_key", privateKey.PublicKey().String())
	ok = true
	return d, nil
}

// create makes the link: kernel WireGuard if possible, else wireguard-go.
func (d *Device) create() error {
	if link, err := netlink.LinkByName(d.name); err == nil {
		if link.Type() != "wireguard" {
			return fmt.Errorf("wireguard: interface %s exists and is of type %s", d.name, link.Type())
		}
		d.kernel = true // left by a previous run: take it over, reconcile fixes the rest
		d.log.Info("taking over existing kernel WireGuard interface")
		return nil
	}
	la := netlink.NewLinkAttrs()
	la.Name = d.name
	la.MTU = MTU
	kerr := netlink.LinkAdd(&netlink.Wireguard{LinkAttrs: la})
	if kerr == nil {
		d.kernel = true
		return nil
	}
	d.log.Info("kernel WireGuard unavailable, using wireguard-go", "err", kerr)
	if err := d.startUserspace(); err != nil {
		return fmt.Errorf("wireguard: kernel link: %v; userspace: %w", kerr, err)
	}
	return nil
}

func (d *Device) startUserspace() error {
	tdev, err := tun.CreateTUN(d.name, MTU)
	if err != nil {
		return fmt.Errorf("create TUN %s: %w", d.name, err)
	}
	if real, err := tdev.Name(); err == nil && real != d.name {
		tdev.Close()
		return fmt.Errorf("TUN created as %s, not %s", real, d.name)
	}
	wlog := d.log.With("component", "wireguard-go")
	logger := &device.Logger{
		Verbosef: func(format string, args ...any) { wlog.Debug(fmt.Sprintf(format, args...)) },
		Errorf:   func(format string, args ...any) { wlog.Error(fmt.Sprintf(format, args...)) },
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), logger) // owns tdev from here
	f, err := ipc.UAPIOpen(d.name)
	if err != nil {
		dev.Close()
		return fmt.Errorf("open UAPI socket: %w", err)
	}
	uapi, err := ipc.UAPIListen(d.name, f)
	f.Close() // UAPIListen holds its own copy
	if err != nil {
		dev.Close()
		return fmt.Errorf("listen on UAPI socket: %w", err)
	}
	d.dev, d.uapi, d.uapiDone = dev, uapi, make(chan struct{})
	go func() {
		defer close(d.uapiDone)
		for {
			c, err := uapi.Accept()
			if err != nil {
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	return nil
}

// setupLink gives the link its address (removing other global addresses
// of a taken-over link), MTU, and brings it up.
func (d *Device) setupLink() error {
	link, err := netlink.LinkByName(d.name)
	if err != nil {
		return fmt.Errorf("wireguard: find link %s: %w", d.name, err)
	}
	want := &netlink.Addr{IPNet: prefixToIPNet(d.addr)}
	if err := netlink.AddrReplace(link, want); err != nil {
		return fmt.Errorf("wireguard: set address %s on %s: %w", d.addr, d.name, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("wireguard: list addresses of %s: %w", d.name, err)
	}
	for _, a := range addrs {
		if a.Scope == unix.RT_SCOPE_UNIVERSE && !a.IPNet.IP.Equal(want.IP) {
			if err := netlink.AddrDel(link, &a); err != nil {
				return fmt.Errorf("wireguard: remove stray address %s from %s: %w", a.IPNet, d.name, err)
			}
		}
	}
	if link.Attrs().MTU != MTU {
		if err := netlink.LinkSetMTU(link, MTU); err != nil {
			return fmt.Errorf("wireguard: set MTU of %s: %w", d.name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("wireguard: bring %s up: %w", d.name, err)
	}
	return nil
}

// Name is the interface name.
func (d *Device) Name() string { return d.name }

// Close stops the device and removes the interface. For wireguard-go it
// first closes the UAPI listener, which unlinks
// /var/run/wireguard/<name>.sock. It is safe to call more than once.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	if d.uapi != nil {
		if err := d.uapi.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close UAPI listener: %w", err))
		}
		<-d.uapiDone
	}
	if d.dev != nil {
		d.dev.Close() // closes the TUN, which removes its link
	}
	if d.wg != nil {
		if err := d.wg.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close wgctrl: %w", err))
		}
	}
	// A kernel link stays until deleted; a TUN link goes with its file, but
	// remove it too if it is still there.
	if link, err := netlink.LinkByName(d.name); err == nil {
		if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete link: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("wireguard: close %s: %w", d.name, err)
	}
	d.log.Info("wireguard device closed")
	return nil
}

// Stats returns the number of configured peers and the most recent
// handshake with any of them (zero if none).
func (d *Device) Stats() (peers int, lastHandshake time.Time, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, time.Time{}, fmt.Errorf("wireguard: %s is closed", d.name)
	}
	dev, err := d.wg.Device(d.name)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("wireguard: read %s: %w", d.name, err)
	}
	for _, p := range dev.Peers {
		if p.LastHandshakeTime.After(lastHandshake) {
			lastHandshake = p.LastHandshakeTime
		}
	}
	return len(dev.Peers), lastHandshake, nil
}

// wantPeer is one desired peer, validated.
type wantPeer struct {
	key         wgtypes.Key
	endpoint    string // as given; "" for none
	endpointUDP *net.UDPAddr
	allowed     []netip.Prefix // masked, sorted, unique
}

// ApplyPeers makes the device's peers equal to peers. It reads the device,
// diffs, and sends one ConfigureDevice with only the per-peer changes:
// new peers are added, changed ones updated in place (UpdateOnly, with
// ReplaceAllowedIPs when their allowed IPs differ), and peers not wanted
// removed, after the additions. A peer is never removed and re-added to
// change it, and the peer list is never replaced, so sessions survive. It
// returns changed=false, without configuring anything, when the device
// already matches.
//
// It also keeps one route through the device (proto [RouteProtocol]) for
// each allowed prefix outside the overlay prefix (agency LANs), and removes
// such routes that are no longer wanted.
//
// Invalid peers are left out and reported in an error wrapping
// ErrInvalidPeer; the valid ones are still applied.
func (d *Device) ApplyPeers(peers []api.Peer) (changed bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false, fmt.Errorf("wireguard: %s is closed", d.name)
	}
	dev, err := d.wg.Device(d.name)
	if err != nil {
		return false, fmt.Errorf("wireguard: read %s: %w", d.name, err)
	}
	want, invalid := d.desired(peers, dev.PublicKey)

	have := make(map[wgtypes.Key]wgtypes.Peer, len(dev.Peers))
	for _, p := range dev.Peers {
		have[p.PublicKey] = p
	}
	keepalive := PersistentKeepalive
	var adds, updates, removes []wgtypes.PeerConfig
	for _, w := range want {
		cur, exists := have[w.key]
		if !exists {
			adds = append(adds, wgtypes.PeerConfig{
				PublicKey:                   w.key,
				Endpoint:                    w.endpointUDP,
				PersistentKeepaliveInterval: &keepalive,
				ReplaceAllowedIPs:           true,
				AllowedIPs:                  prefixesToIPNets(w.allowed),
			})
			continue
		}
		pc := wgtypes.PeerConfig{PublicKey: w.key, UpdateOnly: true}
		diff := false
		if !slices.Equal(w.allowed, ipNetsToPrefixes(cur.AllowedIPs)) {
			pc.ReplaceAllowedIPs, pc.AllowedIPs, diff = true, prefixesToIPNets(w.allowed), true
		}
		if cur.PersistentKeepaliveInterval != keepalive {
			pc.PersistentKeepaliveInterval, diff = &keepalive, true
		}
		if w.endpointUDP != nil && !sameUDPAddr(w.endpointUDP, cur.Endpoint) &&
			(cur.Endpoint == nil || d.endpoints[w.key] != w.endpoint) {
			pc.Endpoint, diff = w.endpointUDP, true
		}
		if diff {
			updates = append(updates, pc)
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			removes = append(removes, wgtypes.PeerConfig{PublicKey: k, Remove: true})
		}
	}
	byKey := func(a, b wgtypes.PeerConfig) int { return strings.Compare(a.PublicKey.String(), b.PublicKey.String()) }
	slices.SortFunc(adds, byKey)
	slices.SortFunc(updates, byKey)
	slices.SortFunc(removes, byKey)
	// Additions and updates first, removals last: an allowed IP moving from
	// a removed peer to another one is never unrouted in between.
	cfg := slices.Concat(adds, updates, removes)

	var errs []error
	if invalid != nil {
		errs = append(errs, invalid)
	}
	if len(cfg) > 0 {
		if err := d.wg.ConfigureDevice(d.name, wgtypes.Config{Peers: cfg}); err != nil {
			errs = append(errs, fmt.Errorf("wireguard: configure %s: %w", d.name, err))
		} else {
			changed = true
			for k := range d.endpoints {
				if _, ok := want[k]; !ok {
					delete(d.endpoints, k)
				}
			}
			for _, w := range want {
				if w.endpoint != "" {
					d.endpoints[w.key] = w.endpoint
				}
			}
			d.log.Info("wireguard peers applied", "added", len(adds), "updated", len(updates), "removed", len(removes), "peers", len(want))
		}
	}
	routesChanged, err := d.reconcileRoutes(want)
	if err != nil {
		errs = append(errs, err)
	}
	return changed || routesChanged, errors.Join(errs...)
}

// desired validates peers. Each allowed prefix may belong to one peer only;
// later claims are dropped with an error.
func (d *Device) desired(peers []api.Peer, self wgtypes.Key) (map[wgtypes.Key]*wantPeer, error) {
	want := make(map[wgtypes.Key]*wantPeer, len(peers))
	owner := map[netip.Prefix]string{}
	var errs []error
	for i, p := range peers {
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("%w: peer %d (%s, %s): %s", ErrInvalidPeer, i, p.Gateway, p.PublicKey, fmt.Sprintf(format, args...)))
		}
		key, err := wgtypes.ParseKey(p.PublicKey)
		if err != nil {
			bad("public key: %v", err)
			continue
		}
		if key == self {
			bad("the device's own key")
			continue
		}
		if _, dup := want[key]; dup {
			bad("duplicate public key")
			continue
		}
		w := &wantPeer{key: key, endpoint: p.Endpoint}
		if p.Endpoint != "" {
			if w.endpointUDP, err = resolveEndpoint(p.Endpoint); err != nil {
				bad("endpoint: %v", err)
				continue
			}
		}
		for _, a := range p.AllowedIPs {
			if !a.IsValid() {
				bad("invalid allowed IP")
				continue
			}
			a = netip.PrefixFrom(a.Addr().Unmap(), a.Bits()-unmapBits(a.Addr())).Masked()
			if other, taken := owner[a]; taken {
				if other != p.PublicKey {
					bad("allowed IP %s already belongs to %s", a, other)
				}
				continue
			}
			owner[a] = p.PublicKey
			w.allowed = append(w.allowed, a)
		}
		slices.SortFunc(w.allowed, comparePrefix)
		want[key] = w
	}
	return want, errors.Join(errs...)
}

func resolveEndpoint(s string) (*net.UDPAddr, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return net.UDPAddrFromAddrPort(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())), nil
	}
	a, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		return nil, err
	}
	ap := a.AddrPort()
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())), nil
}

func sameUDPAddr(a, b *net.UDPAddr) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := a.AddrPort(), b.AddrPort()
	return x.Addr().Unmap() == y.Addr().Unmap() && x.Port() == y.Port()
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// reconcileRoutes installs a route through the device for each allowed
// prefix outside the overlay prefix and removes the routes of ours (proto
// RouteProtocol on this link) that are not wanted.
func (d *Device) reconcileRoutes(want map[wgtypes.Key]*wantPeer) (changed bool, err error) {
	link, err := netlink.LinkByName(d.name)
	if err != nil {
		return false, fmt.Errorf("wireguard: find link %s: %w", d.name, err)
	}
	overlay := d.addr.Masked()
	wanted := map[netip.Prefix]bool{}
	var errs []error
	for _, w := range want {
		for _, a := range w.allowed {
			switch {
			case a.Bits() == 0:
				// A default route into the tunnel would also capture the
				// tunnel's own transport packets and the management path.
				errs = append(errs, fmt.Errorf("%w: not routing %s through %s", ErrInvalidPeer, a, d.name))
			case overlay.Bits() <= a.Bits() && overlay.Contains(a.Addr()):
				// Covered by the overlay prefix route of the address.
			default:
				wanted[a] = true
			}
		}
	}
	filter := &netlink.Route{LinkIndex: link.Attrs().Index, Protocol: RouteProtocol}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return false, fmt.Errorf("wireguard: list routes of %s: %w", d.name, err)
	}
	have := map[netip.Prefix]bool{}
	var stray []netlink.Route
	for _, r := range routes {
		p, ok := ipNetToPrefix(r.Dst)
		if ok && wanted[p] {
			have[p] = true
			continue
		}
		stray = append(stray, r)
	}
	var add []netip.Prefix
	for p := range wanted {
		if !have[p] {
			add = append(add, p)
		}
	}
	slices.SortFunc(add, comparePrefix)
	for _, p := range add {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixToIPNet(p), Scope: netlink.SCOPE_LINK, Protocol: RouteProtocol}
		if err := netlink.RouteAdd(r); err != nil {
			if errors.Is(err, unix.EEXIST) {
				err = errors.New("a route to it exists already (not ours: left alone)")
			}
			errs = append(errs, fmt.Errorf("wireguard: add route %s dev %s: %w", p, d.name, err))
			continue
		}
		changed = true
	}
	for _, r := range stray {
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("wireguard: remove route %s dev %s: %w", r.Dst, d.name, err))
			continue
		}
		changed = true
	}
	if changed {
		d.log.Info("wireguard routes applied", "added", len(add), "removed", len(stray), "routes", len(wanted))
	}
	return changed, errors.Join(errs...)
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixesToIPNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, 0, len(ps))
	for _, p := range ps {
		out = append(out, *prefixToIPNet(p))
	}
	return out
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	if a.Is4In6() && bits == 32 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, ones).Masked(), true
}

func ipNetsToPrefixes(ns []net.IPNet) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ns))
	for i := range ns {
		if p, ok := ipNetToPrefix(&ns[i]); ok {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, comparePrefix)
	return out
}
