package api

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
)

// CompareRules is the order of View.Rules: by source (netip.Prefix.Compare),
// protocol, port.
func CompareRules(a, b Rule) int {
	return cmp.Or(comparePrefix(a.Source, b.Source), strings.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
}

// comparePrefix is netip.Prefix.Compare, which masks both addresses
// through 128-bit arithmetic on every call; for two IPv4 prefixes, what
// every rule's source is, it compares the same three things (masked
// address, length, address) as 32-bit integers.
func comparePrefix(a, b netip.Prefix) int {
	x, xok := prefix4(a)
	y, yok := prefix4(b)
	if !xok || !yok {
		return a.Compare(b)
	}
	return cmp.Or(cmp.Compare(x.masked, y.masked), cmp.Compare(x.bits, y.bits), cmp.Compare(x.addr, y.addr))
}

type v4prefix struct {
	addr, masked uint32
	bits         int
}

// prefix4 splits a valid IPv4 prefix (not IPv4-mapped IPv6) into integers.
func prefix4(p netip.Prefix) (v4prefix, bool) {
	a, bits := p.Addr(), p.Bits()
	if !a.Is4() || bits < 0 {
		return v4prefix{}, false
	}
	b := a.As4()
	u := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	return v4prefix{addr: u, masked: u & ^(^uint32(0) >> bits), bits: bits}, true
}

// SortRules sorts rules by CompareRules and drops repeated ones, in place,
// and returns the shortened slice. The views of a gateway that a national
// service sits behind hold tens of thousands of rules; when every source
// is a masked IPv4 prefix and there are few protocols, as the compiler
// makes them, each rule packs into one integer that sorts in the same
// order, several times faster than comparing rules.
func SortRules(rules []Rule) []Rule {
	keys, protos, ok := ruleKeys(rules)
	if !ok {
		slices.SortFunc(rules, CompareRules)
		return slices.Compact(rules)
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	for i, k := range keys {
		u := uint32(k >> 32)
		rules[i] = Rule{
			Source:   netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)}), int(k>>24&0xff)),
			Protocol: protos[k>>16&0xff],
			Port:     uint16(k),
		}
	}
	clear(rules[len(keys):])
	return rules[:len(keys)]
}

// ruleKeys packs each rule into address (32 bits), prefix length (8),
// protocol rank (8), port (16), which orders as CompareRules does: a
// masked prefix's address is its masked address. ok is false when a rule
// does not fit: a source that is not a masked IPv4 prefix, or more than
// 256 protocols.
func ruleKeys(rules []Rule) (keys []uint64, protos []string, ok bool) {
	for i := range rules {
		p := rules[i].Protocol
		if i > 0 && p == rules[i-1].Protocol || slices.Contains(protos, p) {
			continue
		}
		if len(protos) == 256 {
			return nil, nil, false
		}
		protos = append(protos, p)
	}
	slices.Sort(protos)
	keys = make([]uint64, len(rules))
	for i := range rules {
		p, ok := prefix4(rules[i].Source)
		if !ok || p.addr != p.masked {
			return nil, nil, false
		}
		rank, _ := slices.BinarySearch(protos, rules[i].Protocol)
		keys[i] = uint64(p.addr)<<32 | uint64(p.bits)<<24 | uint64(rank)<<16 | uint64(rules[i].Port)
	}
	return keys, protos, true
}
