package nft

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/govnet/govnet/api"
)

func rule(src, proto string, port uint16) api.Rule {
	return api.Rule{Source: netip.MustParsePrefix(src), Protocol: proto, Port: port}
}

var sample = []api.Rule{
	rule("10.0.0.1/32", api.ProtoTCP, 443),
	rule("10.0.0.2/32", api.ProtoUDP, 53),
	rule("10.20.0.0/16", api.ProtoTCP, 8080),
	rule("10.20.5.0/24", api.ProtoTCP, 8080),
	rule("10.40.1.0/24", api.ProtoTCP, 443),
	rule("10.0.0.3/32", api.ProtoICMP, 0),
	rule("10.30.0.0/24", api.ProtoICMP, 0),
}

func TestKeyEncoding(t *testing.T) {
	k := concatKey(netip.MustParseAddr("10.0.0.1"), service{proto: 6, port: 443})
	want := []byte{10, 0, 0, 1, 6, 0, 0, 0, 0x01, 0xbb, 0, 0}
	if !slices.Equal(k, want) {
		t.Fatalf("key % x, want % x", k, want)
	}
	if got := renderKey(concatKeyType, k); got != "10.0.0.1 . tcp . 443" {
		t.Fatalf("renderKey = %q", got)
	}
}

// TestExpectedDigestPure: the expectation depends on the rules as a set,
// not on their order or duplicates, and changes with them.
func TestExpectedDigestPure(t *testing.T) {
	want, err := ExpectedDigest(sample, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(want, "sha256:") || len(want) != len("sha256:")+64 {
		t.Fatalf("digest %q", want)
	}
	for range 20 {
		r := append(slices.Clone(sample), sample[rand.IntN(len(sample))], sample[rand.IntN(len(sample))])
		rand.Shuffle(len(r), func(i, j int) { r[i], r[j] = r[j], r[i] })
		if got, err := ExpectedDigest(r, nil); err != nil || got != want {
			t.Fatalf("shuffled with duplicates: %s, %v; want %s", got, err, want)
		}
	}
	for i := range sample {
		other := slices.Delete(slices.Clone(sample), i, i+1)
		if i == 3 { // 10.20.5.0/24 is nested in 10.20.0.0/16: not installed
			if got, _ := ExpectedDigest(other, nil); got != want {
				t.Errorf("dropping a nested prefix changed the digest")
			}
			continue
		}
		if got, _ := ExpectedDigest(other, nil); got == want {
			t.Errorf("without rule %d: same digest", i)
		}
	}
	if a, _ := ExpectedDigest(nil, nil); a == want {
		t.Error("deny-all has the digest of the sample")
	}
}

// TestRenderIfaceIndependent: the same rules built for two interface names
// render the same, with the interface as the placeholder; another value in
// the same place does not.
func TestRenderIfaceIndependent(t *testing.T) {
	render := func(iface string) string {
		d, err := Build(sample, nil, iface)
		if err != nil {
			t.Fatal(err)
		}
		tbl, err := d.Expect()
		if err != nil {
			t.Fatal(err)
		}
		return tbl.Render(iface)
	}
	a, b := render("wg0"), render("govnet-gw-1234")
	if a != b {
		t.Fatalf("renderings differ:\n%s\n---\n%s", a, b)
	}
	if n := strings.Count(a, "data="+IfacePlaceholder); n != 2*(5+3) { // 5 sets, related, replies, drop
		t.Errorf("%d placeholders, want one per rule:\n%s", n, a)
	}
	// Built for wg0 but rendered for wg1: the interface is shown as hex.
	d, _ := Build(sample, nil, "wg0")
	tbl, _ := d.Expect()
	if got := tbl.Render("wg1"); got == a || strings.Contains(got, IfacePlaceholder) ||
		!strings.Contains(got, "0x77673000000000000000000000000000") {
		t.Errorf("a table for wg0 rendered for wg1:\n%s", got)
	}
}

func TestExpectedDigestUnsupported(t *testing.T) {
	good := []api.Rule{rule("10.0.0.1/32", api.ProtoTCP, 443)}
	mixed := append([]api.Rule{
		rule("2001:db8::/64", api.ProtoTCP, 1),
		rule("10.0.0.1/32", api.ProtoTCP, 0),
		rule("10.0.0.1/32", "sctp", 1),
		{Protocol: api.ProtoTCP, Port: 1},
	}, good...)
	want, err := ExpectedDigest(good, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ExpectedDigest(mixed, nil)
	if !errors.Is(err, ErrUnsupportedRule) {
		t.Fatalf("error %v, want ErrUnsupportedRule", err)
	}
	if n := len(err.(interface{ Unwrap() []error }).Unwrap()); n != 4 {
		t.Errorf("%d rules refused, want 4: %v", n, err)
	}
	if got != want {
		t.Fatalf("with unsupported rules %s, without %s", got, want)
	}
	text, err := ExpectedRender(mixed, nil)
	if !errors.Is(err, ErrUnsupportedRule) || !strings.Contains(text, "elem 10.0.0.1 . tcp . 443") {
		t.Fatalf("ExpectedRender = %v:\n%s", err, text)
	}
}

func attrs(t *testing.T, as ...netlink.Attribute) []byte {
	t.Helper()
	b, err := netlink.MarshalAttributes(as)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func u32(v uint32) []byte { return binaryutil.BigEndian.PutUint32(v) }

// TestRenderNormalises: google/nftables and the kernel encode the same
// expression differently (attribute order, set_id, default-valued
// attributes); the rendering is the same. Anything else still shows.
func TestRenderNormalises(t *testing.T) {
	r := renderer{iface: ifname("wg0")}
	sent, err := marshalExpr(unix.NFPROTO_INET, &expr.Lookup{SourceRegister: 1, SetName: "allow4", SetID: 7})
	if err != nil {
		t.Fatal(err)
	}
	// As the kernel dumps it: set, sreg, flags 0; no set_id.
	dumped := Expr{Name: "lookup", Data: attrs(t,
		netlink.Attribute{Type: unix.NFTA_LOOKUP_SET, Data: []byte("allow4\x00")},
		netlink.Attribute{Type: unix.NFTA_LOOKUP_SREG, Data: u32(1)},
		netlink.Attribute{Type: unix.NFTA_LOOKUP_FLAGS, Data: u32(0)},
	)}
	if a, b := r.expr(sent), r.expr(dumped); a != b || a != `lookup set="allow4" sreg=1` {
		t.Errorf("lookup: sent %q, dumped %q", a, b)
	}
	inverted := Expr{Name: "lookup", Data: attrs(t,
		netlink.Attribute{Type: unix.NFTA_LOOKUP_SET, Data: []byte("allow4\x00")},
		netlink.Attribute{Type: unix.NFTA_LOOKUP_SREG, Data: u32(1)},
		netlink.Attribute{Type: unix.NFTA_LOOKUP_FLAGS, Data: u32(unix.NFT_LOOKUP_F_INV)},
	)}
	if got := r.expr(inverted); got == r.expr(sent) || !strings.Contains(got, "flags=1") {
		t.Errorf("inverted lookup renders %q", got)
	}

	bw := &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{255, 255, 255, 0}, Xor: make([]byte, 4)}
	sentBw, _ := marshalExpr(unix.NFPROTO_INET, bw)
	data := func(v []byte) []byte {
		return attrs(t, netlink.Attribute{Type: unix.NFTA_DATA_VALUE, Data: v})
	}
	dumpBw := func(op uint32) Expr {
		return Expr{Name: "bitwise", Data: attrs(t,
			netlink.Attribute{Type: unix.NFTA_BITWISE_SREG, Data: u32(1)},
			netlink.Attribute{Type: unix.NFTA_BITWISE_DREG, Data: u32(1)},
			netlink.Attribute{Type: unix.NFTA_BITWISE_LEN, Data: u32(4)},
			netlink.Attribute{Type: nftaBitwiseOp, Data: u32(op)},
			netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_BITWISE_MASK, Data: data([]byte{255, 255, 255, 0})},
			netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_BITWISE_XOR, Data: data(make([]byte, 4))},
		)}
	}
	if a, b := r.expr(sentBw), r.expr(dumpBw(0)); a != b {
		t.Errorf("bitwise: sent %q, dumped %q", a, b)
	}
	if got := r.expr(dumpBw(1)); got == r.expr(sentBw) { // NFT_BITWISE_LSHIFT
		t.Errorf("bitwise shift renders as the mask: %q", got)
	}

	// Attribute order does not matter; an unknown attribute shows.
	meta1 := Expr{Name: "meta", Data: attrs(t,
		netlink.Attribute{Type: unix.NFTA_META_KEY, Data: u32(unix.NFT_META_IIFNAME)},
		netlink.Attribute{Type: unix.NFTA_META_DREG, Data: u32(1)})}
	meta2 := Expr{Name: "meta", Data: attrs(t,
		netlink.Attribute{Type: unix.NFTA_META_DREG, Data: u32(1)},
		netlink.Attribute{Type: unix.NFTA_META_KEY, Data: u32(unix.NFT_META_IIFNAME)})}
	if r.expr(meta1) != r.expr(meta2) {
		t.Errorf("attribute order changes the rendering: %q, %q", r.expr(meta1), r.expr(meta2))
	}
	meta3 := Expr{Name: "meta", Data: append(slices.Clone(meta1.Data), attrs(t, netlink.Attribute{Type: 9, Data: u32(1)})...)}
	if got := r.expr(meta3); !strings.Contains(got, "a9=0x00000001") {
		t.Errorf("unknown attribute not shown: %q", got)
	}
	// An expression the renderer does not know, and undecodable data.
	if got := r.expr(Expr{Name: "byteorder", Data: attrs(t, netlink.Attribute{Type: 1, Data: u32(1)})}); got != "byteorder a1=0x00000001" {
		t.Errorf("unknown expression: %q", got)
	}
	if got := r.expr(Expr{Name: "cmp", Data: []byte{1, 2, 3}}); got != "cmp raw=0x010203" {
		t.Errorf("undecodable expression: %q", got)
	}
	// Counter values are volatile.
	if got := r.expr(Expr{Name: "counter", Data: attrs(t, netlink.Attribute{Type: unix.NFTA_COUNTER_PACKETS, Data: make([]byte, 8)})}); got != "counter" {
		t.Errorf("counter: %q", got)
	}
}

func TestBuildShape(t *testing.T) {
	d, err := Build(sample, nil, "wg0")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range d.Sets {
		names = append(names, s.Set.Name)
	}
	if got := strings.Join(names, " "); got != "allow4 allow4_net_24 allow4_net_16 allow4_icmp allow4_icmp_net_24" {
		t.Errorf("sets %s", got)
	}
	if d.Elements() != 6 {
		t.Errorf("%d elements, want 6 (the nested /24 dropped)", d.Elements())
	}
	if len(d.Chains) != 2 || d.Chains[0].Chain.Name != "input" || d.Chains[1].Chain.Name != "forward" {
		t.Fatalf("chains %+v", d.Chains)
	}
	for _, ch := range d.Chains {
		if len(ch.Rules) != len(d.Sets)+3 { // related, replies, drop
			t.Errorf("chain %s: %d rules", ch.Chain.Name, len(ch.Rules))
		}
		for _, r := range ch.Rules {
			if r.Table != d.Table || r.Chain != ch.Chain {
				t.Errorf("rule of chain %s not bound to it", ch.Chain.Name)
			}
		}
	}
}

// TestExpectedDigestMatchesRender: ExpectedDigest, which keeps the
// rendering of the chains per set layout, gives the digest of the whole
// expected table rendered afresh, for rule lists of every shape, the first
// time a layout is seen and after.
func TestExpectedDigestMatchesRender(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	protos := []string{api.ProtoTCP, api.ProtoUDP, api.ProtoICMP, "sctp"}
	for i := range 300 {
		var rules []api.Rule
		for range rng.IntN(40) {
			a := netip.AddrFrom4([4]byte{10, byte(rng.IntN(4)), byte(rng.IntN(256)), byte(rng.IntN(256))})
			bits := []int{32, 32, 32, 24, 16, 28, 8}[rng.IntN(7)]
			r := api.Rule{Source: netip.PrefixFrom(a, bits), Protocol: protos[rng.IntN(len(protos))]}
			if r.Protocol != api.ProtoICMP && rng.IntN(20) > 0 {
				r.Port = uint16(1 + rng.IntN(3))
			}
			rules = append(rules, r)
		}
		text, rerr := ExpectedRender(rules, nil)
		d, err := Build(rules, nil, "wg-x")
		built, xerr := d.Digest()
		for range 2 {
			got, gerr := ExpectedDigest(rules, nil)
			if got != digestOf([]byte(text)) || got != built || (gerr == nil) != (rerr == nil) || (gerr == nil) != (err == nil) || xerr != nil {
				t.Fatalf("case %d %v: ExpectedDigest %s (%v), rendered %s (%v), built %s (%v)", i, rules, got, gerr, digestOf([]byte(text)), rerr, built, xerr)
			}
		}
	}
}

func BenchmarkExpectedDigestSmall(b *testing.B) {
	// A commune's view: the two NDXP gateways monitor it on one port.
	rules := []api.Rule{
		{Source: netip.MustParsePrefix("100.64.0.1/32"), Protocol: api.ProtoTCP, Port: 9100},
		{Source: netip.MustParsePrefix("100.64.0.2/32"), Protocol: api.ProtoTCP, Port: 9100},
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ExpectedDigest(rules, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkExpectedDigest(b *testing.B) {
	rules := make([]api.Rule, 0, 11_000)
	for i := range 10_000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		rules = append(rules, api.Rule{Source: netip.PrefixFrom(a, 32), Protocol: api.ProtoTCP, Port: uint16(1000 + i%50)})
	}
	for i := range 1000 {
		a := netip.AddrFrom4([4]byte{172, 16 + byte(i>>8)%16, byte(i), 0})
		rules = append(rules, api.Rule{Source: netip.PrefixFrom(a, 24), Protocol: api.ProtoTCP, Port: 443})
	}
	for b.Loop() {
		if _, err := ExpectedDigest(rules, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// TestBuildLANs: with the gateway's LANs known, they get sets of their
// own by length and the forward chain (only it) one rule that drops what
// is bound for none of them; nil (not known) and empty (no LAN) differ
// from each other and from LANs in the digest.
func TestBuildLANs(t *testing.T) {
	lans := []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24"), netip.MustParsePrefix("10.9.1.7/24"), netip.MustParsePrefix("172.20.0.0/16")}
	d, err := Build(sample, lans, "wg0")
	if err != nil {
		t.Fatal(err)
	}
	var lanSets []string
	for _, s := range d.Sets {
		if strings.HasPrefix(s.Set.Name, SetLAN4NetPrefix) {
			lanSets = append(lanSets, fmt.Sprintf("%s:%d", s.Set.Name, len(s.Elems)))
		}
	}
	if got := strings.Join(lanSets, " "); got != "lan4_net_24:2 lan4_net_16:1" {
		t.Errorf("LAN sets %s", got)
	}
	plain, _ := Build(sample, nil, "wg0")
	for i, ch := range d.Chains {
		extra := len(ch.Rules) - len(plain.Chains[i].Rules)
		if want := map[string]int{"input": 0, "forward": 1}[ch.Chain.Name]; extra != want {
			t.Errorf("chain %s: %d more rules with LANs, want %d", ch.Chain.Name, extra, want)
		}
	}
	digests := map[string]bool{}
	for _, l := range [][]netip.Prefix{nil, {}, lans} {
		dg, err := ExpectedDigest(sample, l)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := Build(sample, l, "wg0")
		if bd, _ := b.Digest(); bd != dg {
			t.Errorf("LANs %v: Build's digest %s, ExpectedDigest %s", l, bd, dg)
		}
		digests[dg] = true
	}
	if len(digests) != 3 {
		t.Errorf("%d digests for unknown, no and some LANs", len(digests))
	}
}
