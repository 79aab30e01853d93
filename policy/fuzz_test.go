package policy

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse parses arbitrary bytes and, when they parse, validates,
// compiles and tests them against testRegistry: none of it may panic, and a
// policy that validates must compile into a view per participating gateway.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, file := range files {
		src, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(src)
	}
	for _, s := range []string{
		"version: 1\ngroups:\n  a: {groups: [b]}\n  b: {groups: [a]}\n",
		"version: 1\nrules:\n  - {from: [g22-gw1], to: [h49-gw1], ports: [tcp/1-1024, udp/7, icmp]}\n",
		"version: 1\ngroups:\n  a: &x {level: province}\n  b: *x\n",
		"version: 1\ntests:\n  - {from: 000.00.00.H29, to: g22-gw1, port: icmp, expect: deny}\n",
	} {
		f.Add([]byte(s))
	}
	reg := testRegistry()
	members := 0
	for i := range reg.Gateways {
		if Participates(&reg.Gateways[i]) {
			members++
		}
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		p, err := Parse("fuzz.yaml", src)
		if err != nil {
			if len(AsList(err)) == 0 {
				t.Fatalf("Parse error is not an ErrorList: %v", err)
			}
			return
		}
		if err := p.Validate(reg); err != nil {
			return
		}
		views, err := p.Compile(reg)
		if err != nil {
			t.Fatalf("Compile after Validate: %v", err)
		}
		if len(views) != members {
			t.Fatalf("%d views, want %d", len(views), members)
		}
		_ = p.Test(reg)
		_ = p.Summary()
	})
}
