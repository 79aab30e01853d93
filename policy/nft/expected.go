package nft

import (
	"errors"

	"github.com/govnet/govnet/api"
)

// expectIface is the interface name the expected table is built for. Any
// name does: the rendering shows the interface as [IfacePlaceholder].
const expectIface = "govnet0"

// ExpectedDigest returns the digest a gateway whose compiled view holds
// rules must report: exactly what the agent's Firewall.Digest returns after
// Firewall.Apply(rules) on a real kernel, for any WireGuard interface name.
// It needs no kernel and depends only on the rules (not on their order or
// duplicates).
//
// Rules the agent cannot express are left out of the table the agent
// installs, and so out of the expectation: ExpectedDigest then returns the
// digest of the table of the other rules together with an error wrapping
// [ErrUnsupportedRule] (as Firewall.Apply does), and that digest is the one
// to expect. Any other error comes with an empty digest.
func ExpectedDigest(rules []api.Rule) (string, error) {
	t, err := expect(rules)
	if t == nil {
		return "", err
	}
	return t.Digest(expectIface), err
}

// ExpectedRender is the canonical text whose digest [ExpectedDigest]
// returns (the text Firewall.Render returns after Firewall.Apply(rules)),
// to show how a gateway's table differs from what it should hold.
func ExpectedRender(rules []api.Rule) (string, error) {
	t, err := expect(rules)
	if t == nil {
		return "", err
	}
	return t.Render(expectIface), err
}

// expect returns the expected table and nil, or the expected table and an
// error wrapping ErrUnsupportedRule, or nil and another error.
func expect(rules []api.Rule) (*Table, error) {
	d, ruleErr := Build(rules, expectIface)
	t, err := d.Expect()
	if err != nil {
		return nil, err
	}
	if ruleErr != nil && !errors.Is(ruleErr, ErrUnsupportedRule) {
		return nil, ruleErr
	}
	return t, ruleErr
}
