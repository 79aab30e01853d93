package policy

import (
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
