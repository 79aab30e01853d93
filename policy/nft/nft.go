// Package nft turns a gateway's compiled rules ([api.Rule], from its
// [api.View]) into the nftables table govnet-agent installs, inet govnet,
// and defines the canonical rendering and digest of such a table.
//
// Both sides use it: the agent (netagent) builds the objects it sends to the
// kernel with [Build] and renders what it reads back with [Table.Render];
// the controller computes, without a kernel, the digest a gateway must
// report with [ExpectedDigest]. One builder and one renderer serve both, so
// the two digests agree whenever the kernel holds exactly what the agent
// installed, and differ after any edit made behind the agent's back.
package nft

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/govnet/govnet/api"
)

// TableName is the one nftables table (family inet) the agent owns.
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
	// SetLAN4NetPrefix names the sets of the gateway's own LANs, the only
	// destinations the forward chain lets the overlay reach:
	// lan4_net_<len>, hash sets of ipv4_addr holding each LAN's (masked)
	// address, matched on the destination address masked to that length.
	// See [SetLAN4Net].
	SetLAN4NetPrefix = "lan4_net_"
)

// SetLAN4Net is the name of the set of the gateway's LANs of length bits,
// e.g. lan4_net_24.
func SetLAN4Net(bits int) string { return SetLAN4NetPrefix + strconv.Itoa(bits) }

// SetAllow4Net is the name of the TCP/UDP set for source prefixes of
// length bits (0–31), e.g. allow4_net_24.
func SetAllow4Net(bits int) string { return SetAllow4NetPrefix + strconv.Itoa(bits) }

// SetAllow4ICMPNet is the name of the ICMP set for source prefixes of
// length bits (0–31), e.g. allow4_icmp_net_24.
func SetAllow4ICMPNet(bits int) string { return SetAllow4ICMPNetPrefix + strconv.Itoa(bits) }

// ErrUnsupportedRule marks rules that cannot be expressed (bad prefix, IPv6
// source, unknown protocol, missing port). They are left out of the table —
// dropping an allow rule only denies more — and [Build] and
// [ExpectedDigest] return their result with an error wrapping this one.
var ErrUnsupportedRule = errors.New("unsupported rule")

// NewTable returns the table object for inet govnet.
func NewTable() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
}

// ---- compiling rules into set elements ----

// Key layouts. In a concatenation every field is padded to a 4-byte
// register: address (4) . protocol (1 + 3 zero) . port (2, big endian, + 2
// zero) = 12 bytes, which is how the kernel loads ip saddr, meta l4proto
// and th dport into registers 1, 9 and 10.
var concatKeyType = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)

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
	// lans are the gateway's own LANs, the destinations forwarded from
	// the overlay; dstCheck says whether they are known (a view of an
	// earlier controller does not say, and nothing is checked then).
	lans     []netip.Prefix
	dstCheck bool
}

// compileRules compiles rules, and the gateway's own LANs (nil: not
// known, no destination check; empty: none, nothing is forwarded).
func compileRules(rules []api.Rule, lans []netip.Prefix) (*ruleset, error) {
	p := &ruleset{
		exact:    map[[12]byte]struct{}{},
		nets:     map[service][]netip.Prefix{},
		icmp:     map[netip.Addr]struct{}{},
		dstCheck: lans != nil,
	}
	var errs []error
	for _, l := range lans {
		if !l.IsValid() || !l.Addr().Unmap().Is4() {
			errs = append(errs, fmt.Errorf("%w: LAN %s: only IPv4 LANs are supported", ErrUnsupportedRule, l))
			continue
		}
		p.lans = append(p.lans, netip.PrefixFrom(l.Addr().Unmap(), l.Bits()-unmapBits(l.Addr())).Masked())
	}
	p.lans = outermost(p.lans)
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

// Set is a set of the table with its elements.
type Set struct {
	Set   *nftables.Set
	Elems []nftables.SetElement
}

type setSpec struct {
	Set
	// icmp: the set is matched on ICMP packets by source address; else on
	// TCP/UDP packets by source . protocol . destination port.
	icmp bool
	// bits is the source prefix length the set holds: its rule masks the
	// packet's source address to it (32: exact, no mask).
	bits int
	// dst: the set holds the gateway's LANs of length bits, matched on the
	// destination address (see SetLAN4NetPrefix).
	dst bool
}

// elements returns set elements of keys, whose bytes share one array.
func elements(keys [][12]byte) []nftables.SetElement {
	flat := make([]byte, 12*len(keys))
	out := make([]nftables.SetElement, len(keys))
	for i, k := range keys {
		key := flat[12*i : 12*(i+1) : 12*(i+1)]
		copy(key, k[:])
		out[i].Key = key
	}
	return out
}

// sets builds the sets with their elements, in a deterministic order:
// allow4, then allow4_net_<len> by decreasing length, allow4_icmp,
// allow4_icmp_net_<len> by decreasing length, then lan4_net_<len> by
// decreasing length. Only the prefix lengths the
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
// redundant, a packet matching the inner one matches the outer one.
func (p *ruleset) sets(t *nftables.Table) []setSpec {
	// Set IDs only need to be unique within the batch; setting them here
	// keeps google/nftables from using its global, unsynchronised counter.
	var out []setSpec
	// add adds a set: of source . protocol . port (concatenated), of ICMP
	// sources (icmp), or of the gateway's LANs (dst).
	add := func(name string, keyType nftables.SetDatatype, bits int, icmp, dst bool) *setSpec {
		out = append(out, setSpec{icmp: icmp, dst: dst, bits: bits, Set: Set{Set: &nftables.Set{
			Table: t, ID: uint32(len(out) + 1), Name: name, KeyType: keyType,
			Concatenation: !icmp && !dst,
		}}})
		return &out[len(out)-1]
	}

	exact := add(SetAllow4, concatKeyType, 32, false, false)
	keys := make([][12]byte, 0, len(p.exact))
	for k := range p.exact {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b [12]byte) int { return bytes.Compare(a[:], b[:]) })
	exact.Elems = elements(keys)

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
		set := add(SetAllow4Net(bits), concatKeyType, bits, false, false)
		set.Elems = elements(ks)
	}

	icmp := add(SetAllow4ICMP, nftables.TypeIPAddr, 32, true, false)
	addrs := make([]netip.Addr, 0, len(p.icmp))
	for a := range p.icmp {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range addrs {
		icmp.Elems = append(icmp.Elems, nftables.SetElement{Key: a.AsSlice()})
	}

	// Address sets of prefixes (in the order given), one per length, by
	// decreasing length: ICMP sources, then the gateway's LANs.
	byLength := func(prefixes []netip.Prefix, name func(int) string, icmp, dst bool) {
		byLen := map[int][]netip.Addr{}
		for _, pfx := range prefixes {
			byLen[pfx.Bits()] = append(byLen[pfx.Bits()], pfx.Addr())
		}
		for _, bits := range slices.Backward(slices.Sorted(maps.Keys(byLen))) {
			set := add(name(bits), nftables.TypeIPAddr, bits, icmp, dst)
			for _, a := range byLen[bits] {
				set.Elems = append(set.Elems, nftables.SetElement{Key: a.AsSlice()})
			}
		}
	}
	byLength(p.icmpNets, SetAllow4ICMPNet, true, false) // sorted by outermost
	byLength(p.lans, SetLAN4Net, false, true)
	// Each set is made whole in one batch: a size lets the kernel
	// allocate its hash table at once instead of resizing it while the
	// elements arrive, during which a read back (the agent's check of
	// what it installed) could see elements twice or not at all. The
	// kernel also holds a set to its size: the headroom leaves a hand
	// edit possible, for the agent to find and undo as drift.
	for i := range out {
		out[i].Set.Set.Size = uint32(2*len(out[i].Elems) + 64)
	}
	return out
}

// ---- the desired table ----

// Chain is a base chain of the table with its rules, in order.
type Chain struct {
	Chain *nftables.Chain
	Rules []*nftables.Rule
}

// Desired is table inet govnet as the agent sends it: the objects to add,
// in order, in one batch (table, then each set and its elements, then each
// chain and its rules).
type Desired struct {
	Table  *nftables.Table
	Sets   []Set
	Chains []Chain
	iface  string
}

// Build compiles rules into table inet govnet for a gateway whose WireGuard
// interface is iface: it accepts, on iface, exactly the flows in rules
// (plus replies to established connections) and drops everything else
// arriving there; traffic from any other interface is not touched. An empty
// rules list means deny-all on the overlay.
//
// Rules that cannot be expressed are left out; Build then returns the table
// of the others together with an error wrapping [ErrUnsupportedRule]. It
// returns no other error.
//
// lans are the gateway's own LANs: when they are known (not nil), the
// forward chain drops what arrives on iface for any other destination
// before the flows are looked at, so a flow the policy allows to this
// gateway never reaches beyond it (its uplink, the transport network, the
// Internet). nil, from a controller of an earlier release, checks no
// destination.
func Build(rules []api.Rule, lans []netip.Prefix, iface string) (*Desired, error) {
	p, err := compileRules(rules, lans)
	t := NewTable()
	specs := p.sets(t)
	d := &Desired{Table: t, iface: iface}
	for _, s := range specs {
		d.Sets = append(d.Sets, s.Set)
	}
	for _, ch := range chains(t) {
		d.Chains = append(d.Chains, Chain{Chain: ch, Rules: chainRules(t, ch, specs, iface, p.dstCheck)})
	}
	return d, err
}

// Elements is the number of set elements the table holds.
func (d *Desired) Elements() int {
	n := 0
	for _, s := range d.Sets {
		n += len(s.Elems)
	}
	return n
}

// Expect returns the table as the kernel holds it once d is installed and
// read back: the same model that the agent fills from the kernel, so that
// [Table.Render] of both can be compared.
func (d *Desired) Expect() (*Table, error) {
	fam := byte(d.Table.Family)
	t := &Table{Flags: d.Table.Flags, Sets: slices.Clone(d.Sets)}
	for _, ch := range d.Chains {
		t.Chains = append(t.Chains, ch.Chain)
		for _, r := range ch.Rules {
			kr := Rule{Chain: ch.Chain.Name, Userdata: bytes.Clone(r.UserData)}
			for _, e := range r.Exprs {
				x, err := marshalExpr(fam, e)
				if err != nil {
					return nil, fmt.Errorf("nftables: marshal %T in chain %s: %w", e, ch.Chain.Name, err)
				}
				kr.Exprs = append(kr.Exprs, x)
			}
			t.Rules = append(t.Rules, kr)
		}
	}
	return t, nil
}

// Digest is the digest of the table d once installed and read back, as
// [Table.Digest] renders it for the interface d was built for.
func (d *Desired) Digest() (string, error) {
	t, err := d.Expect()
	if err != nil {
		return "", err
	}
	return t.Digest(d.iface), nil
}

// marshalExpr encodes e as google/nftables sends it (NFTA_EXPR_NAME and
// NFTA_EXPR_DATA).
func marshalExpr(fam byte, e expr.Any) (Expr, error) {
	b, err := expr.Marshal(fam, e)
	if err != nil {
		return Expr{}, err
	}
	ad, err := netlinkDecoder(b)
	if err != nil {
		return Expr{}, err
	}
	var x Expr
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_EXPR_NAME:
			x.Name = ad.String()
		case unix.NFTA_EXPR_DATA:
			x.Data = bytes.Clone(ad.Bytes())
		}
	}
	if err := ad.Err(); err != nil {
		return Expr{}, err
	}
	if x.Name == "" {
		return Expr{}, fmt.Errorf("expression %T has no name", e)
	}
	return x, nil
}

// ---- chains and rules ----

func chains(t *nftables.Table) []*nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return []*nftables.Chain{
		{Name: "input", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput,
			Priority: nftables.ChainPriorityFilter, Policy: &accept},
		{Name: "forward", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward,
			Priority: nftables.ChainPriorityFilter, Policy: &accept},
	}
}

// ifname is how an interface name is compared with meta iifname: padded
// with zeros to IFNAMSIZ.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// chainRules are, for each chain:
//
//	iifname IFACE ct state related accept
//	iifname IFACE ct direction reply ct state established accept
//	iifname IFACE meta nfproto ipv4 ip daddr & MASK(L) != @lan4_net_L ... counter drop  (forward, LANs known)
//	iifname IFACE ip saddr . meta l4proto . th dport @allow4 accept
//	iifname IFACE ip saddr & MASK(L) . meta l4proto . th dport @allow4_net_L accept   (each L in use)
//	iifname IFACE meta l4proto icmp ip saddr @allow4_icmp accept
//	iifname IFACE meta l4proto icmp ip saddr & MASK(L) @allow4_icmp_net_L accept      (each L in use)
//	iifname IFACE counter drop
//
// in the order of sets (see [ruleset.sets]). Only replies pass on
// conntrack's word alone: a packet a peer sends in a connection it opened
// is checked against the sets like its first, so a policy that no longer
// allows a flow stops the connections already open too.
func chainRules(t *nftables.Table, ch *nftables.Chain, sets []setSpec, iface string, dstCheck bool) []*nftables.Rule {
	onIface := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(iface)},
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
	// addr loads the IPv4 header's address at offset (12: source, 16:
	// destination) into register 1, masked to bits.
	addr := func(offset uint32, bits int) []expr.Any {
		e := []expr.Any{&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1,
			Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}}
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
	ctState := func(bits uint32) []expr.Any {
		return []expr.Any{
			&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(bits),
				Xor:  binaryutil.NativeEndian.PutUint32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		}
	}
	reply := []expr.Any{
		&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}}, // IP_CT_DIR_REPLY
	}
	rules := []*nftables.Rule{
		rule(onIface, ctState(expr.CtStateBitRELATED), accept),
		rule(onIface, reply, ctState(expr.CtStateBitESTABLISHED), accept),
	}
	if dstCheck && ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookForward {
		// Forwarded only to the gateway's own LANs: a packet whose
		// destination is in none of them is dropped (one inverted lookup
		// per LAN length, all in one rule; no LAN at all: everything).
		e := slices.Concat(onIface, ipv4)
		for _, s := range sets {
			if !s.dst {
				continue
			}
			e = append(e, addr(16, s.bits)...)
			e = append(e, &expr.Lookup{SourceRegister: 1, SetName: s.Set.Set.Name, SetID: s.Set.Set.ID, Invert: true})
		}
		rules = append(rules, rule(e, []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}))
	}
	for _, s := range sets {
		if s.dst {
			continue
		}
		if s.icmp {
			rules = append(rules, rule(onIface, isICMP, ipv4, addr(12, s.bits), lookup(s.Set.Set), accept))
		} else {
			rules = append(rules, rule(onIface, ipv4, addr(12, s.bits), protoPort, lookup(s.Set.Set), accept))
		}
	}
	return append(rules, rule(onIface, []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}))
}
