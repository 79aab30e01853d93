package nft

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/govnet/govnet/api"
)

// expectIface is the interface name the expected table is built for. Any
// name does: the rendering shows the interface as [IfacePlaceholder].
const expectIface = "govnet0"

// ExpectedDigest returns the digest a gateway whose compiled view holds
// rules and own LANs lans must report: exactly what the agent's
// Firewall.Digest returns after Firewall.Apply(rules, lans) on a real kernel, for any WireGuard interface name.
// It needs no kernel and depends only on the rules (not on their order or
// duplicates).
//
// Rules the agent cannot express are left out of the table the agent
// installs, and so out of the expectation: ExpectedDigest then returns the
// digest of the table of the other rules together with an error wrapping
// [ErrUnsupportedRule] (as Firewall.Apply does), and that digest is the one
// to expect. Any other error comes with an empty digest.
//
// It renders only the sets afresh: the chains depend on which sets the
// table has, not on their elements, and their rendering is kept per such
// layout (see expectedChains), which makes a small gateway's digest about
// five times cheaper than rendering the whole expected table.
func ExpectedDigest(rules []api.Rule, lans []netip.Prefix) (string, error) {
	p, ruleErr := compileRules(rules, lans) // its only errors wrap ErrUnsupportedRule
	specs := p.sets(NewTable())
	chains, err := expectedChains(specs, p.dstCheck)
	if err != nil {
		return "", err
	}
	sets := make([]Set, len(specs))
	for i, s := range specs {
		sets[i] = s.Set
	}
	b := renderBuffers.Get().(*bytes.Buffer)
	defer func() {
		if b.Cap() <= 64<<10 { // the large table of a hub gateway: not kept
			b.Reset()
			renderBuffers.Put(b)
		}
	}()
	renderHead(b, 0, sets)
	b.WriteString(chains)
	return digestOf(b.Bytes()), ruleErr
}

// renderBuffers hold the text ExpectedDigest hashes: a controller or a
// load harness digests tens of thousands of small tables in a burst.
var renderBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// chainRenders holds, per set layout, the rendering of the expected
// table's chains; at most maxChainRenders layouts are kept (a layout is
// which prefix lengths the rules use, so a network has a handful).
var (
	chainRenders    sync.Map // layout key -> string
	chainRenderN    atomic.Int32
	maxChainRenders = int32(256)
)

// expectedChains returns what Render writes for the chains of the
// expected table whose sets are specs.
func expectedChains(specs []setSpec, dstCheck bool) (string, error) {
	var key strings.Builder
	fmt.Fprintf(&key, "%t:", dstCheck)
	for _, s := range specs {
		fmt.Fprintf(&key, "%s/%d/%d/%t/%t,", s.Set.Set.Name, s.Set.Set.ID, s.bits, s.icmp, s.dst)
	}
	if v, ok := chainRenders.Load(key.String()); ok {
		return v.(string), nil
	}
	t := NewTable()
	d := &Desired{Table: t, iface: expectIface}
	for _, ch := range chains(t) {
		d.Chains = append(d.Chains, Chain{Chain: ch, Rules: chainRules(t, ch, specs, expectIface, dstCheck)})
	}
	et, err := d.Expect()
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	et.renderChains(&b, expectIface)
	if chainRenderN.Add(1) <= maxChainRenders {
		chainRenders.Store(key.String(), b.String())
	}
	return b.String(), nil
}

// ExpectedRender is the canonical text whose digest [ExpectedDigest]
// returns (the text Firewall.Render returns after Firewall.Apply(rules)),
// to show how a gateway's table differs from what it should hold.
func ExpectedRender(rules []api.Rule, lans []netip.Prefix) (string, error) {
	t, err := expect(rules, lans)
	if t == nil {
		return "", err
	}
	return t.Render(expectIface), err
}

// expect returns the expected table and nil, or the expected table and an
// error wrapping ErrUnsupportedRule, or nil and another error.
func expect(rules []api.Rule, lans []netip.Prefix) (*Table, error) {
	d, ruleErr := Build(rules, lans, expectIface)
	t, err := d.Expect()
	if err != nil {
		return nil, err
	}
	if ruleErr != nil && !errors.Is(ruleErr, ErrUnsupportedRule) {
		return nil, ruleErr
	}
	return t, ruleErr
}
