package policy

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/govnet/govnet/api"
)

// TestFlowDepth: a document nesting flow collections deeper than
// MaxFlowDepth is refused where it does, before the YAML parser (which
// took 45 s on this one); quoted brackets and comments do not count.
func TestFlowDepth(t *testing.T) {
	deep := "version: 1\ngroups: " + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + "\n"
	_, err := Parse("p.yaml", []byte(deep))
	if err == nil || !strings.Contains(err.Error(), "p.yaml:2:") || !strings.Contains(err.Error(), "nested deeper than 64") {
		t.Fatalf("deep flow nesting: %v", err)
	}
	if _, err := ParseRegistry("r.yaml", []byte("agencies: "+strings.Repeat("{a: ", 100)+"1"+strings.Repeat("}", 100))); err == nil || !strings.Contains(err.Error(), "nested deeper than 64") {
		t.Fatalf("deep registry: %v", err)
	}

	// An apostrophe inside a plain scalar opens no quote.
	for _, src := range []string{
		"description: it's\nx: " + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + "\n",
		"a: \"open\nx: " + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + "\n", // a quote never closed
	} {
		if err := checkFlowDepth([]byte(src)); err == nil {
			t.Errorf("deep nesting after %q let through", src[:12])
		}
	}

	ok := "version: 1 # [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n" +
		"groups:\n  g: {gateways: [gw-1]}\n" +
		"services:\n  s: {group: g, ports: [tcp/22], description: \"" + strings.Repeat("[", 70) + "\"}\n" +
		"  t: {group: g, ports: [tcp/23], description: '" + strings.Repeat("{", 70) + "'' it''s'}\n"
	if err := checkFlowDepth([]byte(ok)); err != nil {
		t.Fatalf("quoted brackets or a comment counted: %v", err)
	}
	if err := checkFlowDepth([]byte(strings.Repeat("[", MaxFlowDepth) + strings.Repeat("]", MaxFlowDepth))); err != nil {
		t.Fatalf("depth %d refused: %v", MaxFlowDepth, err)
	}
}

// TestHintsCapped: the first maxHints errors of a file get a "did you
// mean" hint, the rest none (each is an edit distance to every gateway).
func TestHintsCapped(t *testing.T) {
	var b strings.Builder
	b.WriteString("version: 1\nrules:\n")
	for range maxHints + 10 {
		b.WriteString("  - {from: [g22-gw], to: [h49-gw1], ports: [tcp/1]}\n")
	}
	_, _, err := Check("p.yaml", []byte(b.String()), testRegistry())
	l := AsList(err)
	if len(l) != maxHints+10 {
		t.Fatalf("%d errors, want %d: %v", len(l), maxHints+10, err)
	}
	hinted := 0
	for _, e := range l {
		if e.Hint != "" {
			hinted++
		}
	}
	if hinted != maxHints {
		t.Errorf("%d errors with a hint, want %d", hinted, maxHints)
	}
}

// TestAllowedMatchesScan: allowed's searches in the sorted rules and
// peers agree with a plain scan, for every pair of gateways and every
// flow the views hold (and ports they do not).
func TestAllowedMatchesScan(t *testing.T) {
	reg := testRegistry()
	scan := func(views map[string]*api.View, from, to *api.Gateway, proto string, port uint16) bool {
		sv, dv := views[from.ID], views[to.ID]
		if sv == nil || dv == nil || !from.OverlayIP.IsValid() {
			return false
		}
		if from.ID == to.ID {
			return true
		}
		peer := func(v *api.View, id string) bool {
			return slices.ContainsFunc(v.Peers, func(p api.Peer) bool { return p.Gateway == id })
		}
		if !peer(sv, to.ID) || !peer(dv, from.ID) {
			return false
		}
		if proto == api.ProtoICMP {
			port = 0
		}
		return slices.ContainsFunc(dv.Rules, func(r api.Rule) bool {
			return r.Protocol == proto && r.Port == port && r.Source.Contains(from.OverlayIP.Unmap())
		})
	}
	for _, src := range []string{
		"version: 1\ngroups:\n  all:\n    level: province\n  c:\n    level: central\nrules:\n  - {from: [all, c], to: [all, c], ports: [tcp/22, udp/53, icmp, tcp/8000-8003]}\n",
		"version: 1\nservices:\n  ndxp:\n    gateways: [g22-gw1]\n    ports: [tcp/443, icmp]\nrules:\n  - from: [h29c-gw1, h49-gw1]\n    to: [ndxp]\n",
	} {
		views := compileSrc(t, reg, src)
		checked := 0
		for i := range reg.Gateways {
			for j := range reg.Gateways {
				from, to := &reg.Gateways[i], &reg.Gateways[j]
				for _, f := range []struct {
					proto string
					port  uint16
				}{{"tcp", 22}, {"tcp", 23}, {"udp", 53}, {"icmp", 0}, {"tcp", 443}, {"tcp", 8002}, {"tcp", 8004}} {
					if got, want := allowed(views, from, to, f.proto, f.port), scan(views, from, to, f.proto, f.port); got != want {
						t.Errorf("%s -> %s %s/%d: allowed %v, a scan says %v", from.ID, to.ID, f.proto, f.port, got, want)
					}
					if scan(views, from, to, f.proto, f.port) && from.ID != to.ID {
						checked++
					}
				}
			}
		}
		if checked == 0 {
			t.Fatal("no pair allowed: the comparison proves nothing")
		}
	}
}

// TestParseBOM: a policy saved with a byte order mark parses.
func TestParseBOM(t *testing.T) {
	if _, err := Parse("p.yaml", []byte("\ufeffversion: 1\n")); err != nil {
		t.Fatal(err)
	}
}

// TestIdleRules: the rules that allow nothing with the gateways enrolled
// now are named, with why; the others are not.
func TestIdleRules(t *testing.T) {
	src := `version: 1
groups:
  nowhere:
    level: central
    subtree: 000.00.00.H29
  provinces:
    level: province
rules:
  - {from: [nowhere], to: [g22-gw1], ports: [tcp/443]}
  - {from: [h49-gw1], to: [h49-gw1], ports: [tcp/22]}
  - {from: [provinces], to: [h49-gw2], ports: [tcp/22]}
  - {from: [provinces], to: [g22-gw1], ports: [tcp/443]}
`
	p := mustParse(t, "p.yaml", src)
	idle, err := p.IdleRules(testRegistry())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range idle {
		got = append(got, fmt.Sprintf("%d %s %s", r.Index, r.Where("p.yaml"), r.Why))
	}
	want := []string{
		"1 p.yaml:9:5 no enrolled gateway in from",
		"2 p.yaml:10:5 from and to are the same gateway, h49-gw1",
		"3 p.yaml:11:5 no enrolled gateway in to",
	}
	if !slices.Equal(got, want) {
		t.Errorf("idle rules:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
