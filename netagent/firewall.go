// Package netagent is the data plane of govnet-agent: it keeps a gateway's
// WireGuard device ([Device]) and its nftables policy ([Firewall]) equal to
// the view the controller publishes. Both reconcile against what the kernel
// actually holds rather than editing it step by step, and say when nothing
// changed. The Firewall rebuilds its whole table in one atomic batch and
// reads it back every time. The Device applies a change to its peers as one
// ConfigureDevice of the peers that changed since its last apply, and
// compares the whole device and its routes with the desired state in
// [Device.Repair], which the agent runs every reconcile period.
package netagent

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/govnet/govnet/api"
)

// TableName is the one nftables table (family inet) the agent owns. It never
// reads or writes any other table.
const TableName = "govnet"

// Names of the sets in table inet govnet.
const (
	// SetAllow4 holds ipv4_addr . inet_proto . inet_service for TCP/UDP
	// rules whose source is a single address: a hash set, O(1) per packet.
	SetAllow4 = "allow4"
	// SetAllow4NetPrefix names the sets for TCP/UDP rules whose source is a
	// wider prefix (agency LANs): allow4_net_<len>, one per prefix length
	// the policy uses, a hash set of the same key as allow4 holding each
	// prefix's (masked) address, matched on the source address masked to
	// that length. See [SetAllow4Net].
	SetAllow4NetPrefix = "allow4_net_"
	// SetAllow4ICMP holds single source addresses allowed to send ICMP.
	SetAllow4ICMP = "allow4_icmp"
	// SetAllow4ICMPNetPrefix names the sets of source prefixes allowed to
	// send ICMP: allow4_icmp_net_<len>, hash sets of ipv4_addr, one per
	// prefix length. See [SetAllow4ICMPNet].
	SetAllow4ICMPNetPrefix = "allow4_icmp_net_"
)

// SetAllow4Net is the name of the TCP/UDP set for source prefixes of
// length bits (0–31), e.g. allow4_net_24.
func SetAllow4Net(bits int) string { return SetAllow4NetPrefix + strconv.Itoa(bits) }

// SetAllow4ICMPNet is the name of the ICMP set for source prefixes of
// length bits (0–31), e.g. allow4_icmp_net_24.
func SetAllow4ICMPNet(bits int) string { return SetAllow4ICMPNetPrefix + strconv.Itoa(bits) }

// maxElementsPerMessage bounds one NEWSETELEM message. google/nftables
// v0.3.0 silently truncates a larger element list (a 16-bit attribute length
// overflows above ~2,700 elements: 10k elements become 169, err == nil), so
// the elements go in chunks, all in the same batch.
const maxElementsPerMessage = 1000

var (
	// ErrUnsupportedRule marks rules Apply could not express (bad prefix,
	// IPv6 source, unknown protocol, missing port). Apply installs the other
	// rules and returns the digest with an error wrapping this one.
	ErrUnsupportedRule = errors.New("unsupported rule")
	// ErrVerify means the kernel holds something other than what Apply
	// sent, found by reading the table back after installing it.
	ErrVerify = errors.New("nftables read-back mismatch")
	// ErrNoTable means table inet govnet does not exist.
	ErrNoTable = errors.New("table inet govnet does not exist")
)

// Firewall installs and reads back the agent's table, inet govnet.
// Its methods are safe for concurrent use.
type Firewall struct {
	iface    string
	netns    int
	hasNetNS bool
	log      *slog.Logger

	mu sync.Mutex
	// beforeFlush, set by tests only, may add messages to the batch just
	// before it is sent (e.g. one the kernel rejects).
	beforeFlush func(c *nftables.Conn, t *nftables.Table)
}

// FirewallOption configures a Firewall.
type FirewallOption func(*Firewall)

// WithNetNS makes the Firewall work in the network namespace fd refers to
// instead of the caller's (tests, in-process use).
func WithNetNS(fd int) FirewallOption {
	return func(f *Firewall) { f.netns, f.hasNetNS = fd, true }
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) FirewallOption {
	return func(f *Firewall) {
		if l != nil {
			f.log = l
		}
	}
}

// NewFirewall returns a Firewall that filters what arrives on iface, the
// WireGuard interface. Traffic from any other interface is never touched,
// so the management path stays open whatever the policy. It checks that
// nf_tables can be reached but changes nothing.
func NewFirewall(iface string, opts ...FirewallOption) (*Firewall, error) {
	if iface == "" || len(iface) >= unix.IFNAMSIZ || strings.ContainsAny(iface, "/ \x00") {
		return nil, fmt.Errorf("nftables: invalid interface name %q", iface)
	}
	f := &Firewall{iface: iface, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(f)
	}
	f.log = f.log.With("table", "inet "+TableName, "iface", iface)
	c, err := f.conn(0)
	if err != nil {
		return nil, err
	}
	if _, err := c.ListTablesOfFamily(nftables.TableFamilyINet); err != nil {
		return nil, fmt.Errorf("nftables: list tables: %w", err)
	}
	return f, nil
}

// conn opens a netlink connection to nf_tables with socket buffers sized
// for a batch of about elements set elements.
func (f *Firewall) conn(elements int) (*nftables.Conn, error) {
	buf := 1<<20 + 256*elements
	opts := []nftables.ConnOption{nftables.WithSockOptions(func(c *netlink.Conn) error {
		// As root these use SO_*BUFFORCE, past net.core.[rw]mem_max.
		if err := c.SetWriteBuffer(buf); err != nil {
			return fmt.Errorf("set netlink write buffer: %w", err)
		}
		if err := c.SetReadBuffer(buf); err != nil {
			return fmt.Errorf("set netlink read buffer: %w", err)
		}
		return nil
	})}
	if f.hasNetNS {
		opts = append(opts, nftables.WithNetNSFd(f.netns))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: open netlink: %w", err)
	}
	return c, nil
}

func (f *Firewall) table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
}

// Apply replaces table inet govnet with one that accepts, on the WireGuard
// interface, exactly the flows in rules (plus replies to established
// connections) and drops everything else arriving there. An empty rules
// list means deny-all on the overlay.
//
// The whole table is built and sent in one netlink batch (add table, delete
// it, add it again with its sets, elements and chains), which the kernel
// applies atomically: if the batch fails, the previous table stays as it
// was. After the batch Apply reads the table back, checks every set holds
// the number of elements sent (ErrVerify otherwise) and returns the digest
// of what the kernel holds (see [Firewall.Digest]).
//
// Rules that cannot be expressed are left out: dropping an allow rule only
// denies more, so the rest is still installed, and the returned error wraps
// ErrUnsupportedRule alongside a valid digest.
func (f *Firewall) Apply(rules []api.Rule) (digest string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	start := time.Now()

	p, ruleErr := compileRules(rules)
	c, err := f.conn(p.elements())
	if err != nil {
		return "", err
	}
	t := f.table()
	c.AddTable(t)
	c.DelTable(t) // add-then-delete: no error whether or not it existed
	c.AddTable(t)
	sets := p.sets(t)
	for _, s := range sets {
		if err := c.AddSet(s.set, nil); err != nil {
			return "", fmt.Errorf("nftables: add set %s: %w", s.set.Name, err)
		}
		for chunk := range slices.Chunk(s.elems, maxElementsPerMessage) {
			if err := c.SetAddElements(s.set, chunk); err != nil {
				return "", fmt.Errorf("nftables: add elements to set %s: %w", s.set.Name, err)
			}
		}
	}
	for _, ch := range f.chains(t) {
		c.AddChain(ch)
		for _, r := range f.chainRules(t, ch, sets) {
			c.AddRule(r)
		}
	}
	if f.beforeFlush != nil {
		f.beforeFlush(c, t)
	}
	if err := c.Flush(); err != nil {
		return "", fmt.Errorf("nftables: install table inet %s (previous table kept): %w", TableName, err)
	}
	flushed := time.Since(start)

	kt, err := f.read()
	if err != nil {
		return "", fmt.Errorf("nftables: read back: %w", err)
	}
	var verr error
	for _, s := range sets {
		got := len(kt.elements(s.set.Name))
		if got != len(s.elems) {
			verr = errors.Join(verr, fmt.Errorf("%w: set %s holds %d elements, sent %d", ErrVerify, s.set.Name, got, len(s.elems)))
		}
	}
	if verr != nil {
		return "", verr
	}
	digest = kt.digest()
	f.log.Info("nftables table installed",
		"ruleset_digest", digest, "rules", len(rules), "elements", p.elements(),
		"flush", flushed.Round(time.Microsecond), "took", time.Since(start).Round(time.Microsecond))
	if ruleErr != nil {
		f.log.Warn("nftables rules left out", "err", ruleErr)
	}
	return digest, ruleErr
}

// Digest returns "sha256:" and the hex SHA-256 of [Firewall.Render]: it
// depends only on what table inet govnet holds (chains, rules with their
// expressions, sets and their sorted elements), not on handles, counters or
// the order elements were added, so the same rules give the same digest on
// every run and any edit made behind the agent's back changes it.
func (f *Firewall) Digest() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	kt, err := f.read()
	if err != nil {
		return "", err
	}
	return kt.digest(), nil
}

// Render returns the canonical text rendering of table inet govnet as the
// kernel holds it, the input of [Firewall.Digest].
func (f *Firewall) Render() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	kt, err := f.read()
	if err != nil {
		return "", err
	}
	return kt.render(), nil
}

// Remove deletes table inet govnet; it is not an error if it does not exist.
func (f *Firewall) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.conn(0)
	if err != nil {
		return err
	}
	t := f.table()
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: delete table inet %s: %w", TableName, err)
	}
	f.log.Info("nftables table removed")
	return nil
}

// ---- compiling rules into set elements ----

// Key layouts. In a concatenation every field is padded to a 4-byte
// register: address (4) . protocol (1 + 3 zero) . port (2, big endian, + 2
// zero) = 12 bytes, which is how the kernel loads ip saddr, meta l4proto
// and th dport into registers 1, 9 and 10.
var (
	concatKeyType = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
)

type service struct {
	proto byte
	port  uint16
}

func concatKey(a netip.Addr, s service) []byte {
	k := make([]byte, 12)
	a4 := a.As4()
	copy(k[0:4], a4[:])
	k[4] = s.proto
	binary.BigEndian.PutUint16(k[8:10], s.port)
	return k
}

// ruleset is the compiled form of a rule list.
type ruleset struct {
	exact    map[[12]byte]struct{}      // /32 sources, TCP/UDP
	nets     map[service][]netip.Prefix // wider sources, TCP/UDP
	icmp     map[netip.Addr]struct{}    // /32 sources, ICMP
	icmpNets []netip.Prefix             // wider sources, ICMP
}

func compileRules(rules []api.Rule) (*ruleset, error) {
	p := &ruleset{
		exact: map[[12]byte]struct{}{},
		nets:  map[service][]netip.Prefix{},
		icmp:  map[netip.Addr]struct{}{},
	}
	var errs []error
	for i, r := range rules {
		bad := func(why string) {
			errs = append(errs, fmt.Errorf("%w: rule %d (%s %s %d): %s", ErrUnsupportedRule, i, r.Source, r.Protocol, r.Port, why))
		}
		if !r.Source.IsValid() {
			bad("invalid source prefix")
			continue
		}
		src := netip.PrefixFrom(r.Source.Addr().Unmap(), r.Source.Bits()-unmapBits(r.Source.Addr())).Masked()
		if !src.Addr().Is4() {
			bad("only IPv4 sources are supported")
			continue
		}
		switch r.Protocol {
		case api.ProtoTCP, api.ProtoUDP:
			if r.Port == 0 {
				bad("tcp/udp rule without a port")
				continue
			}
			s := service{proto: unix.IPPROTO_TCP, port: r.Port}
			if r.Protocol == api.ProtoUDP {
				s.proto = unix.IPPROTO_UDP
			}
			if src.IsSingleIP() {
				p.exact[[12]byte(concatKey(src.Addr(), s))] = struct{}{}
			} else {
				p.nets[s] = append(p.nets[s], src)
			}
		case api.ProtoICMP:
			if r.Port != 0 {
				bad("icmp rule with a port")
				continue
			}
			if src.IsSingleIP() {
				p.icmp[src.Addr()] = struct{}{}
			} else {
				p.icmpNets = append(p.icmpNets, src)
			}
		default:
			bad("unknown protocol")
		}
	}
	for s, ps := range p.nets {
		p.nets[s] = outermost(ps)
	}
	p.icmpNets = outermost(p.icmpNets)
	return p, errors.Join(errs...)
}

// unmapBits is how many prefix bits an IPv4-mapped IPv6 address carries
// in front of the IPv4 part.
func unmapBits(a netip.Addr) int {
	if a.Is4In6() {
		return 96
	}
	return 0
}

// outermost sorts prefixes and drops duplicates and prefixes nested in
// another one, which the outer one already admits. Prefixes are
// either nested or disjoint, so after sorting by address (shortest first) a
// prefix overlaps the set kept so far only if the last kept one contains it.
func outermost(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Bits(), b.Bits())
	})
	out := ps[:0]
	for _, p := range ps {
		if n := len(out); n > 0 && out[n-1].Contains(p.Addr()) {
			continue
		}
		out = append(out, p)
	}
	return out
}

type setSpec struct {
	set   *nftables.Set
	elems []nftables.SetElement
	// icmp: the set is matched on ICMP packets by source address; else on
	// TCP/UDP packets by source . protocol . destination port.
	icmp bool
	// bits is the source prefix length the set holds: its rule masks the
	// packet's source address to it (32: exact, no mask).
	bits int
}

func (p *ruleset) elements() int {
	n := len(p.exact) + len(p.icmp) + len(p.icmpNets)
	for _, ps := range p.nets {
		n += len(ps)
	}
	return n
}

// sets builds the sets with their elements, in a deterministic order:
// allow4, then allow4_net_<len> by decreasing length, allow4_icmp, then
// allow4_icmp_net_<len> by decreasing length. Only the prefix lengths the
// policy uses get a set (and a rule), so their number is bounded by the 32
// possible lengths, not by the policy's size.
//
// Per-packet cost. Every set is a hash set (no interval flag): one O(1)
// lookup each, whatever its size. A packet from a LAN prefix is matched by
// masking its source address to each length in use and looking the masked
// address up (agency LANs are nearly all /24: typically one to three
// lengths), so the chain is a handful of rules whatever the number of
// peers or flows. (One nftables rule per flow costs ~118 µs per packet at
// 10k rules. A concatenated interval set — nft_set_pipapo — was used
// before for the prefixes: its lookup ANDs bitmaps one bit per element
// wide, so it grew linearly with the number of prefixes: 1.5–1.95× per
// packet from 1,000 to 100,000 elements; docs/performance.md.) Nested
// prefixes on the same service are dropped by outermost: they would be
// redundant, not wrong, in sets of different lengths.
func (p *ruleset) sets(t *nftables.Table) []setSpec {
	// Set IDs only need to be unique within the batch; setting them here
	// keeps google/nftables from using its global, unsynchronised counter.
	var out []setSpec
	add := func(name string, keyType nftables.SetDatatype, icmp bool, bits int) *setSpec {
		out = append(out, setSpec{icmp: icmp, bits: bits, set: &nftables.Set{
			Table: t, ID: uint32(len(out) + 1), Name: name, KeyType: keyType,
			Concatenation: !icmp,
		}})
		return &out[len(out)-1]
	}

	exact := add(SetAllow4, concatKeyType, false, 32)
	keys := make([][12]byte, 0, len(p.exact))
	for k := range p.exact {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b [12]byte) int { return bytes.Compare(a[:], b[:]) })
	exact.elems = make([]nftables.SetElement, 0, len(keys))
	for _, k := range keys {
		exact.elems = append(exact.elems, nftables.SetElement{Key: bytes.Clone(k[:])})
	}

	// TCP/UDP prefixes, grouped by length, each group sorted by key.
	byLen := map[int][][12]byte{}
	for s, ps := range p.nets {
		for _, pfx := range ps {
			byLen[pfx.Bits()] = append(byLen[pfx.Bits()], [12]byte(concatKey(pfx.Addr(), s)))
		}
	}
	for _, bits := range slices.Backward(slices.Sorted(maps.Keys(byLen))) {
		ks := byLen[bits]
		slices.SortFunc(ks, func(a, b [12]byte) int { return bytes.Compare(a[:], b[:]) })
		set := add(SetAllow4Net(bits), concatKeyType, false, bits)
		set.elems = make([]nftables.SetElement, 0, len(ks))
		for _, k := range ks {
			set.elems = append(set.elems, nftables.SetElement{Key: bytes.Clone(k[:])})
		}
	}

	icmp := add(SetAllow4ICMP, nftables.TypeIPAddr, true, 32)
	addrs := make([]netip.Addr, 0, len(p.icmp))
	for a := range p.icmp {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range addrs {
		icmp.elems = append(icmp.elems, nftables.SetElement{Key: a.AsSlice()})
	}

	// ICMP prefixes (sorted by outermost), grouped by length.
	icmpByLen := map[int][]netip.Addr{}
	for _, pfx := range p.icmpNets {
		icmpByLen[pfx.Bits()] = append(icmpByLen[pfx.Bits()], pfx.Addr())
	}
	for _, bits := range slices.Backward(slices.Sorted(maps.Keys(icmpByLen))) {
		set := add(SetAllow4ICMPNet(bits), nftables.TypeIPAddr, true, bits)
		for _, a := range icmpByLen[bits] {
			set.elems = append(set.elems, nftables.SetElement{Key: a.AsSlice()})
		}
	}
	return out
}

// ---- chains and rules ----

func (f *Firewall) chains(t *nftables.Table) []*nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return []*nftables.Chain{
		{Name: "input", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput,
			Priority: nftables.ChainPriorityFilter, Policy: &accept},
		{Name: "forward", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward,
			Priority: nftables.ChainPriorityFilter, Policy: &accept},
	}
}

func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// chainRules are, for each chain:
//
//	iifname IFACE ct state established,related accept
//	iifname IFACE ip saddr . meta l4proto . th dport @allow4 accept
//	iifname IFACE ip saddr & MASK(L) . meta l4proto . th dport @allow4_net_L accept   (each L in use)
//	iifname IFACE meta l4proto icmp ip saddr @allow4_icmp accept
//	iifname IFACE meta l4proto icmp ip saddr & MASK(L) @allow4_icmp_net_L accept      (each L in use)
//	iifname IFACE counter drop
//
// in the order of sets (see [ruleset.sets]).
func (f *Firewall) chainRules(t *nftables.Table, ch *nftables.Chain, sets []setSpec) []*nftables.Rule {
	onIface := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(f.iface)},
	}
	ipv4 := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
	isICMP := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}},
	}
	accept := []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
	rule := func(parts ...[]expr.Any) *nftables.Rule {
		var e []expr.Any
		for _, p := range parts {
			e = append(e, p...)
		}
		return &nftables.Rule{Table: t, Chain: ch, Exprs: e}
	}
	// saddr loads the source address into register 1, masked to bits.
	saddr := func(bits int) []expr.Any {
		e := []expr.Any{&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1,
			Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}}
		if bits < 32 {
			e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: net.CIDRMask(bits, 32), Xor: make([]byte, 4)})
		}
		return e
	}
	// In a concatenation every field takes a 4-byte register: the address
	// in register 1 (the first 4 bytes of NFT_REG_1 = NFT_REG32_00), the
	// protocol in NFT_REG32_01 (9), the port in NFT_REG32_02 (10).
	protoPort := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 9},
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 10, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
	lookup := func(s *nftables.Set) []expr.Any {
		return []expr.Any{&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID}}
	}
	established := []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
	rules := []*nftables.Rule{rule(onIface, established, accept)}
	for _, s := range sets {
		if s.icmp {
			rules = append(rules, rule(onIface, isICMP, ipv4, saddr(s.bits), lookup(s.set), accept))
		} else {
			rules = append(rules, rule(onIface, ipv4, saddr(s.bits), protoPort, lookup(s.set), accept))
		}
	}
	return append(rules, rule(onIface, []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}))
}

// ---- reading the table back ----

type kernelSet struct {
	set   *nftables.Set
	elems []nftables.SetElement
}

type rawExpr struct {
	name string
	data []byte
}

type rawRule struct {
	chain    string
	exprs    []rawExpr
	userdata []byte
}

// kernelTable is table inet govnet as read from the kernel.
type kernelTable struct {
	flags  uint32
	sets   []kernelSet
	chains []*nftables.Chain
	rules  []rawRule
}

func (kt *kernelTable) elements(set string) []nftables.SetElement {
	for _, s := range kt.sets {
		if s.set.Name == set {
			return s.elems
		}
	}
	return nil
}

func (f *Firewall) read() (*kernelTable, error) {
	c, err := f.conn(0)
	if err != nil {
		return nil, err
	}
	t, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNoTable
		}
		return nil, fmt.Errorf("nftables: get table: %w", err)
	}
	kt := &kernelTable{flags: t.Flags}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("nftables: list sets: %w", err)
	}
	for _, s := range sets {
		elems, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("nftables: list elements of set %s: %w", s.Name, err)
		}
		kt.sets = append(kt.sets, kernelSet{set: s, elems: elems})
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nftables: list chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == TableName {
			kt.chains = append(kt.chains, ch)
		}
	}
	if kt.rules, err = f.dumpRules(); err != nil {
		return nil, fmt.Errorf("nftables: list rules: %w", err)
	}
	return kt, nil
}

// dumpRules reads the table's rules with their raw expressions.
// google/nftables drops expressions it cannot parse (e.g. byteorder), which
// would let an edit hide from the digest, so the rules are read here and
// every expression is kept byte for byte.
func (f *Firewall) dumpRules() ([]rawRule, error) {
	cfg := &netlink.Config{}
	if f.hasNetNS {
		cfg.NetNS = f.netns
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetReadBuffer(1 << 20)
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: []byte(TableName + "\x00")}})
	if err != nil {
		return nil, err
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return nil, err
	}
	var rules []rawRule
	for _, m := range msgs {
		if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWRULE) || len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		var r rawRule
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_CHAIN:
				r.chain = ad.String()
			case unix.NFTA_RULE_USERDATA:
				r.userdata = bytes.Clone(ad.Bytes())
			case unix.NFTA_RULE_EXPRESSIONS:
				ad.Nested(func(list *netlink.AttributeDecoder) error {
					for list.Next() {
						var e rawExpr
						list.Nested(func(el *netlink.AttributeDecoder) error {
							for el.Next() {
								switch el.Type() {
								case unix.NFTA_EXPR_NAME:
									e.name = el.String()
								case unix.NFTA_EXPR_DATA:
									e.data = bytes.Clone(el.Bytes())
								}
							}
							return nil
						})
						r.exprs = append(r.exprs, e)
					}
					return nil
				})
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// ---- canonical rendering ----

func (kt *kernelTable) digest() string {
	sum := sha256.Sum256([]byte(kt.render()))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// render writes the table in a canonical text form: sets sorted by name
// with sorted elements, chains sorted by name with their rules in order, each
// rule as its expressions in the kernel's own attribute order. Volatile state
// (handles, counter values, quota consumption, element expiry) is left out.
func (kt *kernelTable) render() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s", TableName)
	if kt.flags != 0 {
		fmt.Fprintf(&b, " flags 0x%x", kt.flags)
	}
	b.WriteString("\n")

	sets := slices.Clone(kt.sets)
	slices.SortFunc(sets, func(a, b kernelSet) int { return strings.Compare(a.set.Name, b.set.Name) })
	for _, s := range sets {
		b.WriteString(renderSetHeader(s.set))
		lines := make([]string, 0, len(s.elems))
		for _, e := range s.elems {
			lines = append(lines, "\telem "+renderElement(s.set, e)+"\n")
		}
		slices.Sort(lines)
		for _, l := range lines {
			b.WriteString(l)
		}
	}

	chains := slices.Clone(kt.chains)
	slices.SortFunc(chains, func(a, b *nftables.Chain) int { return strings.Compare(a.Name, b.Name) })
	for _, ch := range chains {
		b.WriteString(renderChainHeader(ch))
		for _, r := range kt.rules {
			if r.chain != ch.Name {
				continue
			}
			parts := make([]string, 0, len(r.exprs))
			for _, e := range r.exprs {
				parts = append(parts, "[ "+renderExpr(e)+" ]")
			}
			b.WriteString("\trule " + strings.Join(parts, " "))
			if len(r.userdata) > 0 {
				b.WriteString(" userdata 0x" + hex.EncodeToString(r.userdata))
			}
			b.WriteString("\n")
		}
	}
	// Rules of chains that were not listed (cannot normally happen) still
	// count.
	for _, r := range kt.rules {
		if !slices.ContainsFunc(chains, func(c *nftables.Chain) bool { return c.Name == r.chain }) {
			fmt.Fprintf(&b, "orphan rule in %q: %d expressions\n", r.chain, len(r.exprs))
		}
	}
	return b.String()
}

func renderSetHeader(s *nftables.Set) string {
	var flags []string
	for _, fl := range []struct {
		on   bool
		name string
	}{
		{s.Anonymous, "anonymous"}, {s.Constant, "constant"}, {s.Interval, "interval"},
		{s.IsMap, "map"}, {s.HasTimeout, "timeout"}, {s.Dynamic, "dynamic"},
		{s.Concatenation, "concat"}, {s.AutoMerge, "automerge"},
	} {
		if fl.on {
			flags = append(flags, fl.name)
		}
	}
	h := fmt.Sprintf("set %s type %s keylen %d", s.Name, s.KeyType.Name, s.KeyType.Bytes)
	if s.IsMap {
		h += fmt.Sprintf(" data %s datalen %d", s.DataType.Name, s.DataType.Bytes)
	}
	if len(flags) > 0 {
		h += " flags " + strings.Join(flags, ",")
	}
	if s.HasTimeout && s.Timeout != 0 {
		h += " timeout " + s.Timeout.String()
	}
	if s.Size != 0 {
		h += " size " + strconv.FormatUint(uint64(s.Size), 10)
	}
	return h + "\n"
}

func renderElement(s *nftables.Set, e nftables.SetElement) string {
	out := renderKey(s.KeyType, e.Key)
	if len(e.KeyEnd) > 0 {
		out += " - " + renderKey(s.KeyType, e.KeyEnd)
	}
	if e.IntervalEnd {
		out += " end"
	}
	if e.VerdictData != nil {
		out += " : " + verdictName(int32(e.VerdictData.Kind)) + quoteIf(e.VerdictData.Chain)
	} else if len(e.Val) > 0 {
		out += " : 0x" + hex.EncodeToString(e.Val)
	}
	if e.Timeout != 0 {
		out += " timeout " + e.Timeout.String()
	}
	if e.Counter != nil {
		out += " counter"
	}
	if e.Comment != "" {
		out += " comment " + strconv.Quote(e.Comment)
	}
	return out
}

func quoteIf(s string) string {
	if s == "" {
		return ""
	}
	return " " + strconv.Quote(s)
}

// renderKey decodes a key by its (possibly concatenated) type; anything it
// does not understand is shown as hex.
func renderKey(t nftables.SetDatatype, k []byte) string {
	fields := nftables.ConcatSetTypeElements(t)
	var sizes []int
	total := 0
	for _, f := range fields {
		n := int(f.Bytes)
		if len(fields) > 1 && n%4 != 0 {
			n += 4 - n%4
		}
		sizes = append(sizes, n)
		total += n
	}
	if total != len(k) || total == 0 {
		return "0x" + hex.EncodeToString(k)
	}
	var parts []string
	for i, f := range fields {
		v := k[:sizes[i]]
		k = k[sizes[i]:]
		parts = append(parts, renderField(f.Name, v[:min(int(f.Bytes), len(v))], v))
	}
	return strings.Join(parts, " . ")
}

func renderField(typ string, v, padded []byte) string {
	for _, b := range padded[len(v):] {
		if b != 0 {
			return "0x" + hex.EncodeToString(padded) // padding must be zero
		}
	}
	switch {
	case typ == "ipv4_addr" && len(v) == 4:
		return netip.AddrFrom4([4]byte(v)).String()
	case typ == "ipv6_addr" && len(v) == 16:
		return netip.AddrFrom16([16]byte(v)).String()
	case typ == "inet_proto" && len(v) == 1:
		return protoName(v[0])
	case typ == "inet_service" && len(v) == 2:
		return strconv.Itoa(int(binary.BigEndian.Uint16(v)))
	}
	return "0x" + hex.EncodeToString(padded)
}

func protoName(p byte) string {
	switch p {
	case unix.IPPROTO_ICMP:
		return "icmp"
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	}
	return strconv.Itoa(int(p))
}

var hookNames = map[nftables.ChainHook]string{
	unix.NF_INET_PRE_ROUTING: "prerouting", unix.NF_INET_LOCAL_IN: "input", unix.NF_INET_FORWARD: "forward",
	unix.NF_INET_LOCAL_OUT: "output", unix.NF_INET_POST_ROUTING: "postrouting",
}

func renderChainHeader(c *nftables.Chain) string {
	h := "chain " + c.Name
	if c.Type != "" {
		h += " type " + string(c.Type)
	}
	if c.Hooknum != nil {
		name, ok := hookNames[*c.Hooknum]
		if !ok {
			name = strconv.Itoa(int(*c.Hooknum))
		}
		h += " hook " + name
	}
	if c.Priority != nil {
		h += " priority " + strconv.Itoa(int(*c.Priority))
	}
	if c.Policy != nil {
		switch *c.Policy {
		case nftables.ChainPolicyAccept:
			h += " policy accept"
		case nftables.ChainPolicyDrop:
			h += " policy drop"
		default:
			h += " policy " + strconv.Itoa(int(*c.Policy))
		}
	}
	return h + "\n"
}

// Attribute names per expression, for readability; attributes without a
// name are rendered as aN=0xHEX, so nothing the kernel returns is dropped.
var exprAttrNames = map[string]map[uint16]string{
	"meta":      {unix.NFTA_META_DREG: "dreg", unix.NFTA_META_KEY: "key", unix.NFTA_META_SREG: "sreg"},
	"cmp":       {unix.NFTA_CMP_SREG: "sreg", unix.NFTA_CMP_OP: "op", unix.NFTA_CMP_DATA: "data"},
	"payload":   {unix.NFTA_PAYLOAD_DREG: "dreg", unix.NFTA_PAYLOAD_BASE: "base", unix.NFTA_PAYLOAD_OFFSET: "offset", unix.NFTA_PAYLOAD_LEN: "len", unix.NFTA_PAYLOAD_SREG: "sreg", unix.NFTA_PAYLOAD_CSUM_TYPE: "csum_type", unix.NFTA_PAYLOAD_CSUM_OFFSET: "csum_offset", unix.NFTA_PAYLOAD_CSUM_FLAGS: "csum_flags"},
	"lookup":    {unix.NFTA_LOOKUP_SET: "set", unix.NFTA_LOOKUP_SREG: "sreg", unix.NFTA_LOOKUP_DREG: "dreg", unix.NFTA_LOOKUP_SET_ID: "set_id", unix.NFTA_LOOKUP_FLAGS: "flags"},
	"ct":        {unix.NFTA_CT_DREG: "dreg", unix.NFTA_CT_KEY: "key", unix.NFTA_CT_DIRECTION: "dir", unix.NFTA_CT_SREG: "sreg"},
	"bitwise":   {unix.NFTA_BITWISE_SREG: "sreg", unix.NFTA_BITWISE_DREG: "dreg", unix.NFTA_BITWISE_LEN: "len", unix.NFTA_BITWISE_MASK: "mask", unix.NFTA_BITWISE_XOR: "xor"},
	"immediate": {unix.NFTA_IMMEDIATE_DREG: "dreg", unix.NFTA_IMMEDIATE_DATA: "data"},
}

// volatileAttrs change with traffic or time and are left out of the
// rendering; nil means all of the expression's attributes.
var volatileAttrs = map[string]map[uint16]bool{
	"counter": nil,
	"last":    nil,
	"quota":   {unix.NFTA_QUOTA_CONSUMED: true},
}

var metaKeys = map[uint32]string{
	unix.NFT_META_LEN: "len", unix.NFT_META_PROTOCOL: "protocol", unix.NFT_META_MARK: "mark",
	unix.NFT_META_IIF: "iif", unix.NFT_META_OIF: "oif", unix.NFT_META_IIFNAME: "iifname",
	unix.NFT_META_OIFNAME: "oifname", unix.NFT_META_NFPROTO: "nfproto", unix.NFT_META_L4PROTO: "l4proto",
}

var ctKeys = map[uint32]string{
	unix.NFT_CT_STATE: "state", unix.NFT_CT_DIRECTION: "direction", unix.NFT_CT_STATUS: "status", unix.NFT_CT_MARK: "mark",
}

var payloadBases = map[uint32]string{
	unix.NFT_PAYLOAD_LL_HEADER: "link", unix.NFT_PAYLOAD_NETWORK_HEADER: "network", unix.NFT_PAYLOAD_TRANSPORT_HEADER: "transport",
}

var cmpOps = map[uint32]string{
	unix.NFT_CMP_EQ: "eq", unix.NFT_CMP_NEQ: "neq", unix.NFT_CMP_LT: "lt", unix.NFT_CMP_LTE: "lte", unix.NFT_CMP_GT: "gt", unix.NFT_CMP_GTE: "gte",
}

func renderExpr(e rawExpr) string {
	vol, isVolatile := volatileAttrs[e.name]
	if isVolatile && vol == nil {
		return e.name
	}
	ad, err := netlink.NewAttributeDecoder(e.data)
	if err != nil {
		return e.name + " raw=0x" + hex.EncodeToString(e.data)
	}
	names := exprAttrNames[e.name]
	out := e.name
	for ad.Next() {
		typ, v := ad.Type(), ad.Bytes()
		if vol[typ] {
			continue
		}
		name, known := names[typ]
		if !known {
			out += fmt.Sprintf(" a%d=0x%s", typ, hex.EncodeToString(v))
			continue
		}
		out += " " + name + "=" + renderAttr(e.name, name, v)
	}
	if ad.Err() != nil {
		return e.name + " raw=0x" + hex.EncodeToString(e.data)
	}
	return out
}

func renderAttr(exprName, attr string, v []byte) string {
	u32 := func() (uint32, bool) {
		if len(v) != 4 {
			return 0, false
		}
		return binary.BigEndian.Uint32(v), true
	}
	sym := func(m map[uint32]string) string {
		n, ok := u32()
		if !ok {
			return "0x" + hex.EncodeToString(v)
		}
		if s, ok := m[n]; ok {
			return s
		}
		return strconv.FormatUint(uint64(n), 10)
	}
	switch {
	case attr == "set":
		return strconv.Quote(strings.TrimRight(string(v), "\x00"))
	case exprName == "meta" && attr == "key":
		return sym(metaKeys)
	case exprName == "ct" && attr == "key":
		return sym(ctKeys)
	case exprName == "payload" && attr == "base":
		return sym(payloadBases)
	case exprName == "cmp" && attr == "op":
		return sym(cmpOps)
	case attr == "data" || attr == "mask" || attr == "xor":
		return renderData(v)
	}
	if n, ok := u32(); ok {
		return strconv.FormatUint(uint64(n), 10)
	}
	return "0x" + hex.EncodeToString(v)
}

// renderData decodes a nested nft_data: a value or a verdict.
func renderData(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "raw:0x" + hex.EncodeToString(b)
	}
	var parts []string
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_DATA_VALUE:
			parts = append(parts, "0x"+hex.EncodeToString(ad.Bytes()))
		case unix.NFTA_DATA_VERDICT:
			vd, err := netlink.NewAttributeDecoder(ad.Bytes())
			if err != nil {
				parts = append(parts, "verdict:0x"+hex.EncodeToString(ad.Bytes()))
				continue
			}
			s := "verdict"
			for vd.Next() {
				switch vd.Type() {
				case unix.NFTA_VERDICT_CODE:
					if len(vd.Bytes()) == 4 {
						s += " " + verdictName(int32(binary.BigEndian.Uint32(vd.Bytes())))
					} else {
						s += " code:0x" + hex.EncodeToString(vd.Bytes())
					}
				case unix.NFTA_VERDICT_CHAIN:
					s += " " + strconv.Quote(strings.TrimRight(string(vd.Bytes()), "\x00"))
				default:
					s += fmt.Sprintf(" a%d=0x%s", vd.Type(), hex.EncodeToString(vd.Bytes()))
				}
			}
			parts = append(parts, s)
		default:
			parts = append(parts, fmt.Sprintf("a%d=0x%s", ad.Type(), hex.EncodeToString(ad.Bytes())))
		}
	}
	if ad.Err() != nil {
		return "raw:0x" + hex.EncodeToString(b)
	}
	return strings.Join(parts, ",")
}

func verdictName(code int32) string {
	switch expr.VerdictKind(code) {
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictAccept:
		return "accept"
	case expr.VerdictStolen:
		return "stolen"
	case expr.VerdictQueue:
		return "queue"
	case expr.VerdictRepeat:
		return "repeat"
	case expr.VerdictStop:
		return "stop"
	case expr.VerdictContinue:
		return "continue"
	case expr.VerdictBreak:
		return "break"
	case expr.VerdictJump:
		return "jump"
	case expr.VerdictGoto:
		return "goto"
	case expr.VerdictReturn:
		return "return"
	}
	return strconv.Itoa(int(code))
}
