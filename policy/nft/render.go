package nft

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Table is the model of table inet govnet that is rendered and digested:
// either read back from the kernel (by the agent) or derived from what the
// agent sends ([Desired.Expect]). Rules keep every expression as raw netlink
// attributes, so nothing the kernel holds escapes the rendering, even an
// expression google/nftables cannot parse.
type Table struct {
	Flags  uint32
	Sets   []Set
	Chains []*nftables.Chain
	// Rules of every chain, each chain's rules in order.
	Rules []Rule
}

// Rule is one rule as its raw expressions.
type Rule struct {
	Chain    string
	Exprs    []Expr
	Userdata []byte
}

// Expr is one expression: its name and its NFTA_EXPR_DATA attributes.
type Expr struct {
	Name string
	Data []byte
}

// Elements returns the elements of the named set (nil if there is none).
func (t *Table) Elements(set string) []nftables.SetElement {
	for _, s := range t.Sets {
		if s.Set.Name == set {
			return s.Elems
		}
	}
	return nil
}

// IfacePlaceholder stands, in the rendering, for the WireGuard interface
// name the table filters on, so that the digest does not depend on it.
const IfacePlaceholder = "$IFACE"

// Digest returns "sha256:" and the hex SHA-256 of [Table.Render].
func (t *Table) Digest(iface string) string { return digestOf([]byte(t.Render(iface))) }

func digestOf(rendered []byte) string {
	sum := sha256.Sum256(rendered)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Render writes the table in a canonical text form: sets sorted by name
// with sorted elements, chains sorted by name with their rules in order,
// each rule as its expressions in order, each expression as its attributes
// sorted by attribute type. Left out or normalised, so that what
// google/nftables sends and what the kernel dumps back render the same:
//
//   - volatile state: handles, counter values, quota consumption, element
//     expiry;
//   - the order of the attributes inside an expression, which carries no
//     meaning;
//   - attributes that only refer to the batch (lookup set_id) or that
//     state the value the kernel assumes when they are absent (lookup
//     flags 0, bitwise op 0 = NFT_BITWISE_BOOL): the kernel dumps them,
//     google/nftables does not send them.
//
// A cmp whose data is iface, encoded as meta iifname loads it (padded to
// IFNAMSIZ), renders as [IfacePlaceholder]: the rendering of the agent's
// table is the same whatever its interface's name. Any other value, any
// attribute or expression not named here, is rendered as hex, so every
// other edit still changes the text.
func (t *Table) Render(iface string) string {
	var b bytes.Buffer
	renderHead(&b, t.Flags, t.Sets)
	t.renderChains(&b, iface)
	return b.String()
}

// renderHead writes the table's line and its sets: the part of Render
// before the chains.
func renderHead(b *bytes.Buffer, flags uint32, sets []Set) {
	fmt.Fprintf(b, "table inet %s", TableName)
	if flags != 0 {
		fmt.Fprintf(b, " flags 0x%x", flags)
	}
	b.WriteString("\n")

	sets = slices.Clone(sets)
	slices.SortFunc(sets, func(a, b Set) int { return strings.Compare(a.Set.Name, b.Set.Name) })
	for _, s := range sets {
		b.WriteString(renderSetHeader(s.Set))
		key := newKeyLayout(s.Set.KeyType)
		lines := make([]string, 0, len(s.Elems))
		var buf []byte
		for _, e := range s.Elems {
			buf = append(buf[:0], "\telem "...)
			buf = appendElement(buf, key, e)
			buf = append(buf, '\n')
			lines = append(lines, string(buf))
		}
		slices.Sort(lines)
		for _, l := range lines {
			b.WriteString(l)
		}
	}
}

// renderChains writes the chains and their rules: the part of Render
// after the sets.
func (t *Table) renderChains(b *bytes.Buffer, iface string) {
	r := renderer{}
	if iface != "" {
		r.iface = ifname(iface)
	}
	chains := slices.Clone(t.Chains)
	slices.SortFunc(chains, func(a, b *nftables.Chain) int { return strings.Compare(a.Name, b.Name) })
	for _, ch := range chains {
		b.WriteString(renderChainHeader(ch))
		for _, rl := range t.Rules {
			if rl.Chain != ch.Name {
				continue
			}
			b.WriteString("\trule")
			for _, e := range rl.Exprs {
				b.WriteString(" [ ")
				b.WriteString(r.expr(e))
				b.WriteString(" ]")
			}
			if len(rl.Userdata) > 0 {
				b.WriteString(" userdata 0x" + hex.EncodeToString(rl.Userdata))
			}
			b.WriteString("\n")
		}
	}
	// Rules of chains that were not listed (cannot normally happen) still
	// count.
	for _, rl := range t.Rules {
		if !slices.ContainsFunc(chains, func(c *nftables.Chain) bool { return c.Name == rl.Chain }) {
			fmt.Fprintf(b, "orphan rule in %q: %d expressions\n", rl.Chain, len(rl.Exprs))
		}
	}
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
	// The size is left out: it is a hint the kernel allocates by, not
	// what the table admits, and digests stay those of earlier releases.
	return h + "\n"
}

func appendElement(b []byte, key keyLayout, e nftables.SetElement) []byte {
	b = key.append(b, e.Key)
	if len(e.KeyEnd) > 0 {
		b = append(b, " - "...)
		b = key.append(b, e.KeyEnd)
	}
	if e.IntervalEnd {
		b = append(b, " end"...)
	}
	if e.VerdictData != nil {
		b = append(b, " : "+verdictName(int32(e.VerdictData.Kind))+quoteIf(e.VerdictData.Chain)...)
	} else if len(e.Val) > 0 {
		b = append(b, " : 0x"...)
		b = hex.AppendEncode(b, e.Val)
	}
	if e.Timeout != 0 {
		b = append(b, " timeout "+e.Timeout.String()...)
	}
	if e.Counter != nil {
		b = append(b, " counter"...)
	}
	if e.Comment != "" {
		b = append(b, " comment "...)
		b = strconv.AppendQuote(b, e.Comment)
	}
	return b
}

func quoteIf(s string) string {
	if s == "" {
		return ""
	}
	return " " + strconv.Quote(s)
}

// keyLayout is how the keys of a set's (possibly concatenated) type are
// laid out: each field's type and its size padded to a 4-byte register in
// a concatenation.
type keyLayout struct {
	fields []nftables.SetDatatype
	sizes  []int
	total  int
}

func newKeyLayout(t nftables.SetDatatype) keyLayout {
	l := keyLayout{fields: nftables.ConcatSetTypeElements(t)}
	for _, f := range l.fields {
		n := int(f.Bytes)
		if len(l.fields) > 1 && n%4 != 0 {
			n += 4 - n%4
		}
		l.sizes = append(l.sizes, n)
		l.total += n
	}
	return l
}

// renderKey decodes a key by its (possibly concatenated) type; anything it
// does not understand is shown as hex.
func renderKey(t nftables.SetDatatype, k []byte) string {
	return string(newKeyLayout(t).append(nil, k))
}

func (l keyLayout) append(b, k []byte) []byte {
	if l.total != len(k) || l.total == 0 {
		b = append(b, "0x"...)
		return hex.AppendEncode(b, k)
	}
	for i, f := range l.fields {
		if i > 0 {
			b = append(b, " . "...)
		}
		v := k[:l.sizes[i]]
		k = k[l.sizes[i]:]
		b = appendField(b, f.Name, v[:min(int(f.Bytes), len(v))], v)
	}
	return b
}

func appendField(b []byte, typ string, v, padded []byte) []byte {
	hexed := func() []byte {
		return hex.AppendEncode(append(b, "0x"...), padded)
	}
	for _, c := range padded[len(v):] {
		if c != 0 {
			return hexed() // padding must be zero
		}
	}
	switch {
	case typ == "ipv4_addr" && len(v) == 4:
		return netip.AddrFrom4([4]byte(v)).AppendTo(b)
	case typ == "ipv6_addr" && len(v) == 16:
		return netip.AddrFrom16([16]byte(v)).AppendTo(b)
	case typ == "inet_proto" && len(v) == 1:
		return append(b, protoName(v[0])...)
	case typ == "inet_service" && len(v) == 2:
		return strconv.AppendUint(b, uint64(binary.BigEndian.Uint16(v)), 10)
	}
	return hexed()
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
	unix.NF_INET_LOCAL_OUT: "output", unix.NF_INET_POST_ROUTING: "postrouting", nfInetIngress: "ingress",
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
	if c.Device != "" {
		h += " device " + strconv.Quote(c.Device)
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
	"bitwise":   {unix.NFTA_BITWISE_SREG: "sreg", unix.NFTA_BITWISE_DREG: "dreg", unix.NFTA_BITWISE_LEN: "len", nftaBitwiseOp: "op", unix.NFTA_BITWISE_MASK: "mask", unix.NFTA_BITWISE_XOR: "xor", nftaBitwiseData: "data"},
	"immediate": {unix.NFTA_IMMEDIATE_DREG: "dreg", unix.NFTA_IMMEDIATE_DATA: "data"},
}

// Kernel constants golang.org/x/sys/unix does not name.
const (
	nfInetIngress   = 5 // NF_INET_INGRESS
	nftaBitwiseOp   = 6 // NFTA_BITWISE_OP
	nftaBitwiseData = 7 // NFTA_BITWISE_DATA
)

// volatileAttrs change with traffic or time and are left out of the
// rendering; nil means all of the expression's attributes.
var volatileAttrs = map[string]map[uint16]bool{
	"counter": nil,
	"last":    nil,
	"quota":   {unix.NFTA_QUOTA_CONSUMED: true},
}

// implicitAttrs are attributes the kernel dumps with the value it assumes
// when they are absent (and google/nftables does not send), or that only
// name an object of the same batch: left out, they mean the same thing.
// nil means: whatever the value.
var implicitAttrs = map[string]map[uint16][]byte{
	"lookup":  {unix.NFTA_LOOKUP_SET_ID: nil, unix.NFTA_LOOKUP_FLAGS: {0, 0, 0, 0}},
	"bitwise": {nftaBitwiseOp: {0, 0, 0, 0}}, // NFT_BITWISE_BOOL
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

// renderer renders expressions; iface is the agent's interface name as a
// cmp against meta iifname holds it (nil: none).
type renderer struct {
	iface []byte
}

type attr struct {
	typ uint16
	v   []byte
}

// exprMemo caches rendered expressions: a pure function of the interface
// name and the expression's name and bytes. A table's rules are a fixed
// skeleton plus lookups into sets (the elements live in the sets), so the
// distinct expressions are few and every digest renders the same ones:
// without the cache they were most of a small table's digest. Bounded, in
// case something renders an unbounded variety.
var exprMemo struct {
	sync.Mutex
	m map[string]string
}

const exprMemoMax = 4096

func (r renderer) expr(e Expr) string {
	key := string(r.iface) + "\x00" + e.Name + "\x00" + string(e.Data)
	exprMemo.Lock()
	s, ok := exprMemo.m[key]
	exprMemo.Unlock()
	if ok {
		return s
	}
	s = r.renderExpr(e)
	exprMemo.Lock()
	if exprMemo.m == nil {
		exprMemo.m = map[string]string{}
	}
	if len(exprMemo.m) < exprMemoMax {
		exprMemo.m[key] = s
	}
	exprMemo.Unlock()
	return s
}

func (r renderer) renderExpr(e Expr) string {
	vol, isVolatile := volatileAttrs[e.Name]
	if isVolatile && vol == nil {
		return e.Name
	}
	raw := e.Name + " raw=0x" + hex.EncodeToString(e.Data)
	ad, err := netlinkDecoder(e.Data)
	if err != nil {
		return raw
	}
	implicit := implicitAttrs[e.Name]
	var attrs []attr
	for ad.Next() {
		typ, v := ad.Type(), ad.Bytes()
		if vol[typ] {
			continue
		}
		if want, ok := implicit[typ]; ok && (want == nil || bytes.Equal(v, want)) {
			continue
		}
		// Keep the flag bits (nested, byte order) apart from the type:
		// they are part of what the kernel was told.
		attrs = append(attrs, attr{typ: typ | ad.TypeFlags()&^unix.NLA_F_NESTED, v: v})
	}
	if ad.Err() != nil {
		return raw
	}
	// Attribute order carries no meaning; a duplicated attribute keeps its
	// relative order (stable sort), so it still shows.
	slices.SortStableFunc(attrs, func(a, b attr) int { return int(a.typ) - int(b.typ) })
	names := exprAttrNames[e.Name]
	var b strings.Builder
	b.WriteString(e.Name)
	for _, a := range attrs {
		name, known := names[a.typ]
		if !known {
			fmt.Fprintf(&b, " a%d=0x%s", a.typ, hex.EncodeToString(a.v))
			continue
		}
		b.WriteString(" " + name + "=" + r.attr(e.Name, name, a.v))
	}
	return b.String()
}

func (r renderer) attr(exprName, attr string, v []byte) string {
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
	case exprName == "cmp" && attr == "data":
		return r.data(v, r.iface)
	case attr == "data" || attr == "mask" || attr == "xor":
		return r.data(v, nil)
	}
	if n, ok := u32(); ok {
		return strconv.FormatUint(uint64(n), 10)
	}
	return "0x" + hex.EncodeToString(v)
}

// data decodes a nested nft_data: a value or a verdict. A value equal to
// iface (if not nil) renders as [IfacePlaceholder].
func (r renderer) data(b []byte, iface []byte) string {
	ad, err := netlinkDecoder(b)
	if err != nil {
		return "raw:0x" + hex.EncodeToString(b)
	}
	var parts []string
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_DATA_VALUE:
			if iface != nil && bytes.Equal(ad.Bytes(), iface) {
				parts = append(parts, IfacePlaceholder)
			} else {
				parts = append(parts, "0x"+hex.EncodeToString(ad.Bytes()))
			}
		case unix.NFTA_DATA_VERDICT:
			vd, err := netlinkDecoder(ad.Bytes())
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
			if vd.Err() != nil {
				s = "verdict:0x" + hex.EncodeToString(ad.Bytes())
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

func netlinkDecoder(b []byte) (*netlink.AttributeDecoder, error) {
	return netlink.NewAttributeDecoder(b)
}
