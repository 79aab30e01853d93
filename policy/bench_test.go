package policy

import (
	"fmt"
	"strings"
	"testing"

	"github.com/govnet/govnet/policy/policytest"
)

// bigRegistry is a state the size govnet is built for: 34 provinces, 20
// districts each, 29 communes per district, one gateway per agency, and
// the Government Office: 20,435 gateways.
func bigRegistry() *Registry {
	agencies, gateways := policytest.National(20, 29)
	return &Registry{Agencies: agencies, Gateways: gateways}
}

const bigPolicy = policytest.Policy

func BenchmarkCompile(b *testing.B) {
	reg := bigRegistry()
	p, err := Parse("big.yaml", []byte(bigPolicy))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		views, err := p.Compile(reg)
		if err != nil {
			b.Fatal(err)
		}
		if len(views) != len(reg.Gateways) {
			b.Fatalf("%d views", len(views))
		}
	}
}

// provincesPolicy is bigPolicy with a subtree group per province (as
// the load harness publishes) and tests.
func provincesPolicy() string {
	var groups, rules strings.Builder
	for p := 1; p <= 34; p++ {
		fmt.Fprintf(&groups, "  p%02d: {subtree: 000.00.00.H%02d}\n", p, p)
		fmt.Fprintf(&rules, "  - {from: [p%02d], to: [p%02d], ports: [tcp/9100]}\n", p, p)
	}
	src := strings.Replace(bigPolicy, "groups:\n", "groups:\n"+groups.String(), 1)
	return src + rules.String() + `tests:
  - {from: 000.01.01.H01, to: ndxp, port: tcp/443, expect: allow}
  - {from: 000.00.00.H02, to: 000.00.00.H03, port: tcp/22, expect: allow}
  - {from: 000.01.01.H01, to: 000.00.00.H03, port: tcp/22, expect: deny}
`
}

// provinces parses provincesPolicy against bigRegistry.
func provinces(b *testing.B) (*Policy, *Registry) {
	p, err := Parse("big.yaml", []byte(provincesPolicy()))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	return p, bigRegistry()
}

// BenchmarkCheckPublish is what a controller runs before it accepts a
// policy (controller.CheckPolicy): validation against the registry and
// the policy's own tests, at 20,435 gateways.
func BenchmarkCheckPublish(b *testing.B) {
	p, reg := provinces(b)
	for b.Loop() {
		if err := p.Test(reg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkResolve is validation and the resolution of every group to
// its members.
func BenchmarkResolve(b *testing.B) {
	p, reg := provinces(b)
	for b.Loop() {
		r, err := p.resolve(reg)
		if err != nil {
			b.Fatal(err)
		}
		for name := range r.nm.groups {
			r.group(name)
		}
	}
}
