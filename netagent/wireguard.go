package netagent

import (
	"bytes"
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
	// transport path open. Of two peers only one sends it: see keepaliveFor.
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

// InvalidPeersError is the error, wrapping ErrInvalidPeer, with which
// ApplyPeers reports what it left out: one error per problem, each naming
// the peer (its position in the list, gateway and key), and how many
// peers they name.
type InvalidPeersError struct {
	// Peers is the number of listed peers not applied in full: left out
	// (a bad key or endpoint, the device's own key, a duplicate), or
	// applied without some of their allowed IPs (invalid, or claimed by
	// another peer) or without the route to one (a default route). A
	// peer with several problems counts once, so Peers can be less than
	// len(Errs).
	Peers int
	Errs  []error
}

func (e *InvalidPeersError) Error() string   { return errors.Join(e.Errs...).Error() }
func (e *InvalidPeersError) Unwrap() []error { return e.Errs }

// onlyInvalidPeers says whether err, from ApplyPeers, is only about the
// listed peers (an *InvalidPeersError), with no failure of the device
// or the kernel beside it: the valid peers are then in place.
func onlyInvalidPeers(err error) bool {
	if _, ok := err.(*InvalidPeersError); ok {
		return true
	}
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return false
	}
	for _, e := range j.Unwrap() {
		if _, ok := e.(*InvalidPeersError); !ok {
			return false
		}
	}
	return true
}

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

	mu        sync.Mutex
	closed    bool
	kernel    bool // kernel WireGuard link (else wireguard-go)
	wg        *wgctrl.Client
	dev       *device.Device // wireguard-go only
	uapi      net.Listener   // wireguard-go only
	uapiDone  chan struct{}
	self      wgtypes.Key // the device's public key
	linkIndex int

	// The desired state last applied (see ApplyPeers): the valid peers by
	// key (key.String()), and for each allowed IP granted, its peer. They
	// are updated in place, per changed peer.
	peers map[string]*peerState
	owner map[netip.Prefix]*peerState
	// applied: ApplyPeers has run (Repair has a state to repair to).
	// synced: the kernel held that state after the last ApplyPeers or
	// Repair (no error configuring it), so ApplyPeers may apply changes
	// without reading the kernel first.
	applied, synced bool
	gen, markGen    uint64 // generations of ApplyPeers and of repair marks

	// The shield: addresses that no route of ours may capture (see
	// Shield), the controllers' (fixed) and the peers' endpoints (counted
	// per peer holding them), sorted in shieldSorted when not dirty.
	shieldFixed  map[netip.Addr]bool
	shieldCount  map[netip.Addr]int
	shieldSorted []netip.Addr
	shieldDirty  bool
	// foreign: prefixes whose route could not be added because a route
	// not ours exists; logged once, tried again at every repair.
	foreign map[netip.Prefix]bool
	// withheld: prefixes not routed for the shield, logged once.
	withheld map[netip.Prefix]bool
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
	d := &Device{name: name, addr: addr, log: log.With("iface", name), self: privateKey.PublicKey(),
		peers: map[string]*peerState{}, owner: map[netip.Prefix]*peerState{},
		shieldFixed: map[netip.Addr]bool{}, shieldCount: map[netip.Addr]int{}, foreign: map[netip.Prefix]bool{}, withheld: map[netip.Prefix]bool{}}
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
	d.linkIndex = link.Attrs().Index
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

// peerState is one desired peer as validated: the unit of the Device's
// record of what it applied.
type peerState struct {
	key         wgtypes.Key
	id          string // key.String(), the map key in Device.peers
	endpoint    string // as given; "" for none
	endpointUDP *net.UDPAddr
	// allowed are the allowed IPs granted to the peer: masked, sorted,
	// unique, and claimed by no other peer of the device.
	allowed []netip.Prefix
	// rawAllowed is the allowed IP list as the controller sent it: a peer
	// listed again with the same endpoint and rawAllowed is unchanged and
	// not validated again.
	rawAllowed []netip.Prefix
	// sentEndpoint is the desired endpoint last configured on the device
	// (or found there). WireGuard roams: after an authenticated packet from
	// a new address it updates the peer's endpoint itself, and a reconcile
	// must not undo that unless the desired endpoint changed.
	sentEndpoint string
	// recheck: validating the peer found an error (an allowed IP refused,
	// invalid or not routable). Such a peer is validated on every
	// ApplyPeers, so the error is reported every time and a refused allowed
	// IP is granted as soon as its holder lets it go.
	recheck bool
	// seen is the ApplyPeers generation that last listed the peer (valid),
	// validated the generation that last validated it, mark a scratch mark
	// of the full repair.
	seen, validated, mark uint64
}

// ApplyPeers makes the device's peers equal to peers, sending one
// ConfigureDevice with only the per-peer changes: new peers are added,
// changed ones updated in place (UpdateOnly, with ReplaceAllowedIPs when
// their allowed IPs differ), and peers not wanted removed, after the
// additions. A peer is never removed and re-added to change it, and the
// peer list is never replaced, so sessions survive. It returns
// changed=false, without configuring anything, when nothing changed.
//
// It also keeps one route through the device (proto [RouteProtocol]) for
// each allowed prefix outside the overlay prefix (agency LANs), and removes
// such routes that are no longer wanted.
//
// Invalid peers are left out and reported in an [*InvalidPeersError]
// (joined with any error configuring the kernel), which wraps
// ErrInvalidPeer; the valid ones are still applied. Each allowed IP goes to
// one peer: if several claim it, the peer that already held it keeps it,
// otherwise the first in the list gets it; the other claims are refused.
//
// ApplyPeers is incremental. The Device keeps the desired state it last
// applied; a call compares peers with it, validates only the peers that
// changed, and configures only those and their routes, without reading the
// device or the routing table: its cost is one map lookup and comparison
// per listed peer plus the work of the change itself (~1–2 ms for a peer
// change at 10,000 peers, against ~100 ms for a full read). The first
// call, and the first after a call that failed to configure the kernel,
// instead read the device and the routes and repair every difference, as
// [Device.Repair] does: call Repair periodically to find changes made
// behind the agent's back.
func (d *Device) ApplyPeers(peers []api.Peer) (changed bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false, fmt.Errorf("wireguard: %s is closed", d.name)
	}
	start := time.Now()
	full := !d.synced
	p := d.plan(peers, full)
	var kerr error
	if full {
		d.commit(p)
		changed, kerr = d.repair()
	} else {
		changed, kerr = d.applyChanges(p)
	}
	d.applied = true
	d.synced = kerr == nil
	if changed || kerr != nil {
		mode := "incremental"
		if full {
			mode = "full"
		}
		d.log.Info("wireguard peers applied", "mode", mode, "validated", len(p.cands), "peers", len(d.peers),
			"ok", kerr == nil, "took", time.Since(start).Round(time.Microsecond))
	}
	return changed, errors.Join(p.err(), kerr)
}

// Shield names addresses that no route through the device may capture:
// the controllers' addresses, so that a peer's LAN never cuts the gateway
// off from the controllers that could correct it. The peers' endpoints
// are shielded the same way without being named (a route into the tunnel
// for a peer's own endpoint would carry its transport packets into the
// tunnel). A prefix that contains a shielded address stays among its
// peer's allowed IPs in WireGuard, but gets no route: traffic to it keeps
// following the routing table. Shield replaces the addresses named
// before; the next ApplyPeers repairs the routes.
func (d *Device) Shield(addrs []netip.Addr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.shieldFixed)
	for _, a := range addrs {
		if a.IsValid() {
			d.shieldFixed[a.Unmap()] = true
		}
	}
	d.shieldDirty, d.synced = true, false
}

// endpointAddr is the address of w's endpoint, if it has one.
func endpointAddr(w *peerState) (netip.Addr, bool) {
	if w == nil || w.endpointUDP == nil {
		return netip.Addr{}, false
	}
	a := w.endpointUDP.AddrPort().Addr().Unmap()
	return a, a.IsValid()
}

// shieldPeer counts w's endpoint into the shield (by +1) or out of it (-1).
func (d *Device) shieldPeer(w *peerState, by int) {
	a, ok := endpointAddr(w)
	if !ok {
		return
	}
	n := d.shieldCount[a] + by
	if n <= 0 {
		delete(d.shieldCount, a)
	} else {
		d.shieldCount[a] = n
	}
	if n <= 0 || n == by { // the address came or went
		d.shieldDirty = true
	}
}

// shielded returns a shielded address that prefix a contains, if any.
func (d *Device) shielded(a netip.Prefix) (netip.Addr, bool) {
	if d.shieldDirty {
		d.shieldSorted = d.shieldSorted[:0]
		for x := range d.shieldFixed {
			d.shieldSorted = append(d.shieldSorted, x)
		}
		for x := range d.shieldCount {
			if !d.shieldFixed[x] {
				d.shieldSorted = append(d.shieldSorted, x)
			}
		}
		slices.SortFunc(d.shieldSorted, netip.Addr.Compare)
		d.shieldDirty = false
	}
	first := a.Masked().Addr()
	i, _ := slices.BinarySearchFunc(d.shieldSorted, first, netip.Addr.Compare)
	if i < len(d.shieldSorted) && a.Contains(d.shieldSorted[i]) {
		return d.shieldSorted[i], true
	}
	return netip.Addr{}, false
}

// containing appends to out every prefix that contains address x.
func containing(out []netip.Prefix, x netip.Addr) []netip.Prefix {
	for bits := 0; bits <= x.BitLen(); bits++ {
		out = append(out, netip.PrefixFrom(x, bits).Masked())
	}
	return out
}

// Repair reads the device and the routing table and makes them equal to
// the desired state the last [Device.ApplyPeers] computed: peers added,
// removed or edited behind the agent's back are put back, stray peers and
// stray routes of ours removed (sessions of unchanged peers are kept, as in
// ApplyPeers). It costs a full read (~0.1 s of CPU at 10,000 peers): the
// agent calls it once per reconcile period, not on every change. Before
// the first ApplyPeers there is nothing to repair to, and it does nothing.
func (d *Device) Repair() (changed bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false, fmt.Errorf("wireguard: %s is closed", d.name)
	}
	if !d.applied {
		return false, nil
	}
	changed, err = d.repair()
	d.synced = err == nil
	return changed, err
}

// candidate is a peer that plan validated: a changed, new or rechecked
// peer (every listed peer in a full plan).
type candidate struct {
	old    *peerState // what was applied, nil for a new peer
	next   *peerState
	index  int    // position in the desired list
	name   string // gateway, for errors
	claims []netip.Prefix
}

// peerPlan is the new desired state as a change to the applied one.
type peerPlan struct {
	gen     uint64
	cands   []*candidate // in list order
	removed []*peerState // applied peers no longer (validly) listed
	errs    []error
	bad     map[int]bool // positions in the list of the peers errs name
}

// fail records err, about the peer at position i of the list.
func (p *peerPlan) fail(i int, err error) {
	p.errs = append(p.errs, err)
	if p.bad == nil {
		p.bad = map[int]bool{}
	}
	p.bad[i] = true
}

// err is what p left out, as ApplyPeers returns it; nil for nothing.
func (p *peerPlan) err() error {
	if len(p.errs) == 0 {
		return nil
	}
	return &InvalidPeersError{Peers: len(p.bad), Errs: p.errs}
}

// plan compares peers with the applied state (d.peers, d.owner) and
// validates the peers that differ from it, all of them if all is set. A
// listed peer whose key, endpoint and allowed IP list are exactly what was
// applied, and that had no error, is unchanged: it keeps what it was
// granted. plan changes only the generation marks of d.peers.
//
// The invariants hold for the whole device, not only among the validated
// peers: each key appears once (the first valid occurrence counts) and is
// not the device's own, and each allowed IP belongs to one peer. For the
// latter, an allowed IP claimed by a validated peer is granted to it if
//
//   - the peer held it already (an incumbent that still claims it keeps
//     it, whatever the list order), or
//   - its holder is not listed any more, or is validated and no longer
//     claims it (it moves, in the same ConfigureDevice), and no validated
//     peer earlier in the list got it;
//
// it is refused if an unchanged peer holds it (that peer still claims it:
// unchanged peers hold exactly what they claim) or another validated peer
// got it first. A full plan applies the same rules with every peer
// validated, so the incremental and full paths agree on who holds what.
func (d *Device) plan(peers []api.Peer, all bool) *peerPlan {
	d.gen++
	gen := d.gen
	p := &peerPlan{gen: gen}
	var fresh map[wgtypes.Key]bool // new keys listed so far
	for i, ap := range peers {
		old := d.peers[ap.PublicKey]
		if old != nil && old.seen != gen && !all && !old.recheck &&
			ap.Endpoint == old.endpoint && slices.Equal(ap.AllowedIPs, old.rawAllowed) {
			old.seen = gen // unchanged
			continue
		}
		bad := func(format string, args ...any) {
			p.fail(i, fmt.Errorf("%w: peer %d (%s, %s): %s", ErrInvalidPeer, i, ap.Gateway, ap.PublicKey, fmt.Sprintf(format, args...)))
		}
		var key wgtypes.Key
		if old != nil {
			key = old.key
		} else {
			var err error
			if key, err = wgtypes.ParseKey(ap.PublicKey); err != nil {
				bad("public key: %v", err)
				continue
			}
			if key == d.self {
				bad("the device's own key")
				continue
			}
			if id := key.String(); id != ap.PublicKey { // another spelling
				old = d.peers[id]
			}
		}
		if (old != nil && old.seen == gen) || fresh[key] {
			bad("duplicate public key")
			continue
		}
		next := &peerState{key: key, id: key.String(), endpoint: ap.Endpoint, rawAllowed: slices.Clone(ap.AllowedIPs)}
		if old != nil {
			next.id = old.id
		}
		if ap.Endpoint != "" {
			var err error
			if next.endpointUDP, err = resolveEndpoint(ap.Endpoint); err != nil {
				// Not listed validly: like an unlisted peer, it goes.
				bad("endpoint: %v", err)
				continue
			}
		}
		if old != nil {
			old.seen, old.validated = gen, gen
		} else {
			if fresh == nil {
				fresh = map[wgtypes.Key]bool{}
			}
			fresh[key] = true
		}
		c := &candidate{old: old, next: next, index: i, name: ap.Gateway}
		for _, a := range ap.AllowedIPs {
			if !a.IsValid() {
				bad("invalid allowed IP")
				next.recheck = true
				continue
			}
			c.claims = append(c.claims, netip.PrefixFrom(a.Addr().Unmap(), a.Bits()-unmapBits(a.Addr())).Masked())
		}
		slices.SortFunc(c.claims, comparePrefix)
		c.claims = slices.Compact(c.claims)
		p.cands = append(p.cands, c)
	}

	// Allowed IPs: incumbents first, then list order.
	grant := make(map[netip.Prefix]*candidate, 2*len(p.cands))
	for _, c := range p.cands {
		if c.old == nil {
			continue
		}
		for _, a := range c.claims {
			if d.owner[a] == c.old {
				grant[a] = c
			}
		}
	}
	for _, c := range p.cands {
		refuse := func(a netip.Prefix, holder wgtypes.Key) {
			p.fail(c.index, fmt.Errorf("%w: peer %d (%s, %s): allowed IP %s already belongs to %s",
				ErrInvalidPeer, c.index, c.name, c.next.id, a, holder))
			c.next.recheck = true
		}
		for _, a := range c.claims {
			if g := grant[a]; g != nil {
				if g != c {
					refuse(a, g.next.key)
					continue
				}
			} else if o := d.owner[a]; o != nil && o.seen == gen && o.validated != gen {
				refuse(a, o.key) // held by an unchanged peer
				continue
			} else {
				grant[a] = c
			}
			c.next.allowed = append(c.next.allowed, a)
			if a.Bits() == 0 {
				// A default route into the tunnel would also capture the
				// tunnel's own transport packets and the management path:
				// WireGuard gets it, the routing table does not.
				p.fail(c.index, fmt.Errorf("%w: peer %d (%s, %s): not routing %s through %s",
					ErrInvalidPeer, c.index, c.name, c.next.id, a, d.name))
				c.next.recheck = true
			}
		}
	}
	for _, w := range d.peers {
		if w.seen != gen {
			p.removed = append(p.removed, w)
		}
	}
	return p
}

// commit makes p the applied desired state.
func (d *Device) commit(p *peerPlan) {
	for _, w := range p.removed {
		d.release(w)
		d.shieldPeer(w, -1)
		delete(d.peers, w.id)
	}
	for _, c := range p.cands {
		if c.old != nil {
			d.release(c.old)
			d.shieldPeer(c.old, -1)
		}
	}
	for _, c := range p.cands {
		w := c.next
		d.shieldPeer(w, +1)
		w.seen, w.validated = p.gen, p.gen
		if c.old != nil {
			w.sentEndpoint = c.old.sentEndpoint
		}
		for _, a := range w.allowed {
			d.owner[a] = w
		}
		d.peers[w.id] = w
	}
}

// release forgets the allowed IPs w holds.
func (d *Device) release(w *peerState) {
	for _, a := range w.allowed {
		if d.owner[a] == w {
			delete(d.owner, a)
			delete(d.foreign, a)
			delete(d.withheld, a)
		}
	}
}

// routed reports whether a has a route of ours: it is held by a peer, is
// not a default route and is outside the overlay prefix (which the
// device's address routes).
func (d *Device) routed(a netip.Prefix) bool {
	if d.owner[a] == nil || a.Bits() == 0 {
		return false
	}
	overlay := d.addr.Masked()
	if overlay.Bits() <= a.Bits() && overlay.Contains(a.Addr()) {
		return false
	}
	if x, ok := d.shielded(a); ok {
		if !d.withheld[a] {
			d.withheld[a] = true
			d.log.Warn("not routing an allowed IP through the tunnel: it contains a controller's or a peer's transport address",
				"prefix", a, "address", x, "peer", d.owner[a].id, "device", d.name)
		}
		return false
	}
	delete(d.withheld, a)
	return true
}

// keepaliveFor returns the persistent keepalive for a peer. Setting one
// makes wireguard-go send a keepalive at once, which starts a handshake;
// when a policy adds two gateways to each other both would start one at
// the same instant, the handshakes collide ("invalid state for keypair
// derivation") and the tunnel waits for the 5 s rekey timeout. So only the
// side whose public key sorts lower keeps the pair alive; the other
// answers, and still starts a handshake itself when it has data to send.
func (d *Device) keepaliveFor(peer wgtypes.Key) time.Duration {
	if bytes.Compare(d.self[:], peer[:]) < 0 {
		return PersistentKeepalive
	}
	return 0
}

func (d *Device) newPeerConfig(w *peerState) wgtypes.PeerConfig {
	keepalive := d.keepaliveFor(w.key)
	return wgtypes.PeerConfig{
		PublicKey:                   w.key,
		Endpoint:                    w.endpointUDP,
		PersistentKeepaliveInterval: &keepalive,
		ReplaceAllowedIPs:           true,
		AllowedIPs:                  prefixesToIPNets(w.allowed),
	}
}

// configure sends the per-peer changes in one ConfigureDevice: additions
// and updates first, removals last, so an allowed IP moving from a removed
// peer to another one is never unrouted in between.
func (d *Device) configure(adds, updates, removes []wgtypes.PeerConfig) (bool, error) {
	if len(adds)+len(updates)+len(removes) == 0 {
		return false, nil
	}
	byKey := func(a, b wgtypes.PeerConfig) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) }
	slices.SortFunc(adds, byKey)
	slices.SortFunc(updates, byKey)
	slices.SortFunc(removes, byKey)
	if err := d.wg.ConfigureDevice(d.name, wgtypes.Config{Peers: slices.Concat(adds, updates, removes)}); err != nil {
		return false, fmt.Errorf("wireguard: configure %s: %w", d.name, err)
	}
	d.log.Info("wireguard peers configured", "added", len(adds), "updated", len(updates), "removed", len(removes))
	return true, nil
}

// applyChanges is the incremental path: it configures the changes p makes
// to the applied state, assuming the kernel holds that state, and commits
// p. On an error p is committed all the same (it is the desired state) and
// the caller marks the Device unsynced, so the next call repairs.
func (d *Device) applyChanges(p *peerPlan) (changed bool, err error) {
	var adds, updates, removes []wgtypes.PeerConfig
	// The prefixes whose route may change, and whether each had one.
	var touched []netip.Prefix
	for _, c := range p.cands {
		w := c.next
		touched = append(touched, w.allowed...)
		if c.old == nil {
			adds = append(adds, d.newPeerConfig(w))
			continue
		}
		touched = append(touched, c.old.allowed...)
		pc := wgtypes.PeerConfig{PublicKey: w.key, UpdateOnly: true}
		diff := false
		if !slices.Equal(w.allowed, c.old.allowed) {
			pc.ReplaceAllowedIPs, pc.AllowedIPs, diff = true, prefixesToIPNets(w.allowed), true
		}
		if w.endpointUDP != nil && w.endpoint != c.old.sentEndpoint {
			pc.Endpoint, diff = w.endpointUDP, true
		}
		if diff {
			updates = append(updates, pc)
		}
	}
	for _, w := range p.removed {
		removes = append(removes, wgtypes.PeerConfig{PublicKey: w.key, Remove: true})
		touched = append(touched, w.allowed...)
	}
	// An endpoint that moves can shield or unshield a prefix of a peer
	// that did not change: every prefix containing a changed endpoint is
	// touched too (routed says no for the ones nobody holds).
	for _, c := range p.cands {
		was, okWas := endpointAddr(c.old)
		is, okIs := endpointAddr(c.next)
		if okWas && (!okIs || was != is) {
			touched = containing(touched, was)
		}
		if okIs && (!okWas || was != is) {
			touched = containing(touched, is)
		}
	}
	for _, w := range p.removed {
		if x, ok := endpointAddr(w); ok {
			touched = containing(touched, x)
		}
	}
	slices.SortFunc(touched, comparePrefix)
	touched = slices.Compact(touched)
	before := make([]bool, len(touched))
	for i, a := range touched {
		before[i] = d.routed(a)
	}
	d.commit(p)

	changed, err = d.configure(adds, updates, removes)
	if err != nil {
		return false, err
	}
	for _, c := range p.cands {
		if c.next.endpoint != "" {
			c.next.sentEndpoint = c.next.endpoint
		}
	}
	var errs []error
	var added, removed int
	for pass := range 2 { // add before delete
		for i, a := range touched {
			after := d.routed(a)
			switch {
			case pass == 0 && after && !before[i]:
				ok, err := d.addRoute(a)
				if err != nil {
					errs = append(errs, err)
				}
				if ok {
					added++
				}
			case pass == 1 && before[i] && !after:
				r := netlink.Route{LinkIndex: d.linkIndex, Dst: prefixToIPNet(a), Scope: netlink.SCOPE_LINK, Protocol: RouteProtocol}
				if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
					errs = append(errs, fmt.Errorf("wireguard: remove route %s dev %s: %w", a, d.name, err))
					continue
				}
				removed++
			}
		}
	}
	if added+removed > 0 {
		changed = true
		d.log.Info("wireguard routes applied", "added", added, "removed", removed)
	}
	return changed, errors.Join(errs...)
}

// addRoute routes a through the device. A route to a that is not ours
// (the site's own network, say) is left alone and is not an error: the
// prefix stays among its peer's allowed IPs, and traffic to it follows
// the site's route; every repair tries again, and the warning is logged
// once. added says whether the route is now ours.
func (d *Device) addRoute(a netip.Prefix) (added bool, _ error) {
	r := &netlink.Route{LinkIndex: d.linkIndex, Dst: prefixToIPNet(a), Scope: netlink.SCOPE_LINK, Protocol: RouteProtocol}
	if err := netlink.RouteAdd(r); err != nil {
		if errors.Is(err, unix.EEXIST) {
			if !d.foreign[a] {
				d.foreign[a] = true
				d.log.Warn("not routing an allowed IP through the tunnel: a route to it that is not ours exists (left alone)",
					"prefix", a, "peer", d.owner[a].id, "device", d.name)
			}
			return false, nil
		}
		return false, fmt.Errorf("wireguard: add route %s dev %s: %w", a, d.name, err)
	}
	delete(d.foreign, a)
	return true, nil
}

// repair is the full path: read the device, diff it against the applied
// desired state, configure the differences, then the routes.
func (d *Device) repair() (changed bool, err error) {
	dev, err := d.wg.Device(d.name)
	if err != nil {
		return false, fmt.Errorf("wireguard: read %s: %w", d.name, err)
	}
	d.markGen++
	mark := d.markGen
	var adds, updates, removes []wgtypes.PeerConfig
	for i := range dev.Peers {
		cur := &dev.Peers[i]
		w := d.peers[cur.PublicKey.String()]
		if w == nil {
			removes = append(removes, wgtypes.PeerConfig{PublicKey: cur.PublicKey, Remove: true})
			continue
		}
		w.mark = mark
		pc := wgtypes.PeerConfig{PublicKey: w.key, UpdateOnly: true}
		diff := false
		if !slices.Equal(w.allowed, ipNetsToPrefixes(cur.AllowedIPs)) {
			pc.ReplaceAllowedIPs, pc.AllowedIPs, diff = true, prefixesToIPNets(w.allowed), true
		}
		if keepalive := d.keepaliveFor(w.key); cur.PersistentKeepaliveInterval != keepalive {
			pc.PersistentKeepaliveInterval, diff = &keepalive, true
		}
		if w.endpointUDP != nil && !sameUDPAddr(w.endpointUDP, cur.Endpoint) &&
			(cur.Endpoint == nil || w.sentEndpoint != w.endpoint) {
			pc.Endpoint, diff = w.endpointUDP, true
		}
		if diff {
			updates = append(updates, pc)
		}
	}
	for _, w := range d.peers {
		if w.mark != mark {
			adds = append(adds, d.newPeerConfig(w))
		}
	}
	var errs []error
	if n := len(adds) + len(updates) + len(removes); n > 0 {
		d.log.Info("wireguard device differs from the desired state", "missing", len(adds), "differing", len(updates), "stray", len(removes))
	}
	changed, err = d.configure(adds, updates, removes)
	if err != nil {
		errs = append(errs, err)
	} else {
		for _, w := range d.peers {
			if w.endpoint != "" {
				w.sentEndpoint = w.endpoint
			}
		}
	}
	routesChanged, err := d.repairRoutes()
	if err != nil {
		errs = append(errs, err)
	}
	return changed || routesChanged, errors.Join(errs...)
}

// repairRoutes installs a route through the device for each allowed prefix
// held that needs one (see [Device.routed]) and removes the routes of ours
// (proto RouteProtocol on this link) that are not wanted.
func (d *Device) repairRoutes() (changed bool, err error) {
	filter := &netlink.Route{LinkIndex: d.linkIndex, Protocol: RouteProtocol}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return false, fmt.Errorf("wireguard: list routes of %s: %w", d.name, err)
	}
	have := make(map[netip.Prefix]bool, len(routes))
	var stray []netlink.Route
	for _, r := range routes {
		p, ok := ipNetToPrefix(r.Dst)
		if ok && d.routed(p) {
			have[p] = true
			continue
		}
		stray = append(stray, r)
	}
	var add []netip.Prefix
	for a := range d.owner {
		if !have[a] && d.routed(a) {
			add = append(add, a)
		}
	}
	slices.SortFunc(add, comparePrefix)
	var errs []error
	added := 0
	for _, a := range add {
		ok, err := d.addRoute(a)
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			changed = true
			added++
		}
	}
	for _, r := range stray {
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("wireguard: remove route %s dev %s: %w", r.Dst, d.name, err))
			continue
		}
		changed = true
	}
	if changed {
		d.log.Info("wireguard routes repaired", "added", added, "removed", len(stray), "routes", len(have)+added)
	}
	return changed, errors.Join(errs...)
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
