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
		err := p.Test(reg)
		var list ErrorList
		if !errors.As(err, &list) || len(list) != 1 || list[0].Line != 7 || !strings.Contains(list[0].Msg, c.want) {
			t.Errorf("%s: %v, want big.yaml:7 saying %q", c.name, err, c.want)
		}
		if _, _, err := Check("big.yaml", []byte(src), reg); err == nil || err.Error() != list.Error() {
			t.Errorf("%s: Check says %v", c.name, err)
		}
	}
	if err := mustParse(t, "national.yaml", policytest.Policy).Test(reg); err != nil {
		t.Fatal(err)
	}

	// Bounds are checked before a policy is accepted, not when it is
	// compiled: a committed policy that the registry grows past keeps
	// compiling (the alternative is every view left stale).
	src := "version: 1\ngroups:\n  communes: {level: commune}\nrules:\n  - {from: [communes], to: [gw1], ports: [tcp/1-300]}\n"
	p := mustParse(t, "grown.yaml", src)
	if err := p.Test(reg); err == nil || !strings.Contains(err.Error(), "gateway gw1's view would hold up to 530400") {
		t.Fatalf("Test: %v", err)
	}
	views, err := p.Compile(reg)
	if err != nil || len(views["gw1"].Rules) != 530400 {
		t.Fatalf("Compile: %v", err)
	}
	c, err := p.NewCompiler(reg)
	if err != nil {
		t.Fatal(err)
	}
	if v := c.CompileFor([]string{"gw1"})["gw1"]; v == nil || len(v.Rules) != 530400 {
		t.Fatal("the Compiler's view of gw1 is not whole")
	}
}
