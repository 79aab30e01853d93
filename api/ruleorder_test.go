package api

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// referenceCompare is the order CompareRules must keep, with the
// standard library's prefix comparison.
func referenceCompare(a, b Rule) int {
	return cmp.Or(a.Source.Compare(b.Source), strings.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
}

// randomRules makes n rules over few addresses, so that prefixes share
// addresses and lengths and rules repeat. mixed adds what the packed sort
// cannot take: unmasked and IPv6 sources, a zero prefix.
func randomRules(r *rand.Rand, n int, mixed bool) []Rule {
	protos := []string{"tcp", "udp", "icmp", "sctp"}
	rules := make([]Rule, n)
	for i := range rules {
		a := netip.AddrFrom4([4]byte{byte(r.IntN(3) * 127), byte(r.IntN(3)), 0, byte(r.IntN(4) * 64)})
		p := netip.PrefixFrom(a, []int{0, 1, 8, 24, 26, 32}[r.IntN(6)])
		if !mixed || r.IntN(4) > 0 {
			p = p.Masked()
		}
		if mixed && r.IntN(10) == 0 {
			p = netip.PrefixFrom(netip.AddrFrom16(a.As16()), 120+r.IntN(9))
		}
		if mixed && r.IntN(50) == 0 {
			p = netip.Prefix{}
		}
		rules[i] = Rule{Source: p, Protocol: protos[r.IntN(len(protos))], Port: uint16(r.IntN(3) * 30000)}
	}
	return rules
}

// TestRuleOrder checks CompareRules against the standard library's prefix
// order on every pair, and SortRules, packed or not, against a sort with
// it followed by removing repeats.
func TestRuleOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, mixed := range []bool{false, true} {
		for n := range 300 {
			rules := randomRules(r, n%60, mixed)
			for _, a := range rules {
				for _, b := range rules[:min(len(rules), 20)] {
					if got, want := CompareRules(a, b), referenceCompare(a, b); got != want {
						t.Fatalf("CompareRules(%v, %v) = %d, want %d", a, b, got, want)
					}
				}
			}
			want := slices.Clone(rules)
			slices.SortFunc(want, referenceCompare)
			want = slices.Compact(want)
			got := SortRules(slices.Clone(rules))
			if !slices.Equal(got, want) {
				t.Fatalf("mixed %v: SortRules(%v)\n = %v\nwant %v", mixed, rules, got, want)
			}
		}
	}
	if _, _, ok := ruleKeys(randomRules(r, 100, false)); !ok {
		t.Fatal("masked IPv4 sources are not packed")
	}
	many := make([]Rule, 300)
	for i := range many {
		many[i] = Rule{Source: netip.MustParsePrefix("10.0.0.0/8"), Protocol: fmt.Sprintf("p%03d", 299-i)}
	}
	got := SortRules(slices.Clone(many))
	if len(got) != 300 || got[0].Protocol != "p000" || got[299].Protocol != "p299" {
		t.Fatalf("300 protocols: %d rules, first %v, last %v", len(got), got[0], got[len(got)-1])
	}
}

func BenchmarkSortRules(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	rules := make([]Rule, 80000)
	for i := range rules {
		a := netip.AddrFrom4([4]byte{100, 64, byte(r.IntN(256)), byte(r.IntN(256))})
		rules[i] = Rule{Source: netip.PrefixFrom(a, 32), Protocol: "tcp", Port: []uint16{443, 8443}[r.IntN(2)]}
	}
	buf := make([]Rule, len(rules))
	b.Run("packed", func(b *testing.B) {
		for b.Loop() {
			copy(buf, rules)
			SortRules(buf)
		}
	})
	b.Run("compare", func(b *testing.B) {
		for b.Loop() {
			copy(buf, rules)
			slices.SortFunc(buf, CompareRules)
		}
	})
	b.Run("stdlib", func(b *testing.B) {
		for b.Loop() {
			copy(buf, rules)
			slices.SortFunc(buf, referenceCompare)
		}
	})
}
