package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/govnet/govnet/policy/policytest"
)

// TestSizeBounds: a policy whose views would exceed MaxViewRules or
// MaxTotalRules is refused at validation, at the rule that adds the most,
// without compiling anything; the national policy is far inside both.
func TestSizeBounds(t *testing.T) {
	agencies, gateways := policytest.National(2, 13) // 987 gateways, 884 communes
	reg := &Registry{Agencies: agencies, Gateways: gateways}
	for _, c := range []struct {
		name, ports, want string
	}{
		{"one view", "tcp/1-1000", "view would hold up to 1766000 firewall rules, 1766000 of them from this rule (at most 500000 in one view)"},
		{"all views", "tcp/1-200", "rule 2: the views would hold up to 312231044 firewall rules in all, 312228800 of them from this rule (at most 40000000)"},
	} {
		src := "version: 1\ngroups:\n  communes: {level: commune}\n  provinces: {level: province}\nrules:\n" +
			"  - {from: [provinces], to: [provinces], ports: [tcp/22]}\n" +
			fmt.Sprintf("  - {from: [communes], to: [communes], ports: [%s]}\n", c.ports)
		p := mustParse(t, "big.yaml", src)
		err := p.Validate(reg)
		var list ErrorList
		if !errors.As(err, &list) || len(list) != 1 || list[0].Line != 7 || !strings.Contains(list[0].Msg, c.want) {
			t.Errorf("%s: %v, want big.yaml:7 saying %q", c.name, err, c.want)
		}
		if _, err := p.Compile(reg); err == nil {
			t.Errorf("%s: compiled", c.name)
		}
	}
	p := mustParse(t, "national.yaml", policytest.Policy)
	if err := p.Validate(&Registry{Agencies: agencies, Gateways: gateways}); err != nil {
		t.Fatal(err)
	}
}
