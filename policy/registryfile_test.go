package policy

import (
	"encoding/json"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
)

// The lab's policy passes its embedded tests against the lab's registry
// file, and a policy whose test is wrong fails offline, naming the test.
func TestCheckAgainstRegistryFile(t *testing.T) {
	reg, err := LoadRegistry("../deploy/lab/registry.yaml")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("../deploy/lab/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, views, err := Check("policy.yaml", src, reg)
	if err != nil {
		t.Fatalf("lab policy against the lab registry: %v", err)
	}
	if len(p.Tests) == 0 || len(views) != 4 {
		t.Fatalf("%d tests, %d views; want some tests and 4 views", len(p.Tests), len(views))
	}

	wrong := strings.Replace(string(src), "port: tcp/22\n    expect: deny", "port: tcp/22\n    expect: allow", 1)
	if wrong == string(src) {
		t.Fatal("the lab policy no longer has the test this one inverts")
	}
	_, _, err = Check("policy.yaml", []byte(wrong), reg)
	if err == nil || !strings.Contains(err.Error(), "expected allow, got deny") {
		t.Fatalf("inverted test: got %v, want a failing test", err)
	}

	missing := strings.Replace(string(src), "agencies: [000.00.00.G22]", "agencies: [000.00.00.G23]", 1)
	if _, _, err = Check("policy.yaml", []byte(missing), reg); err == nil || !strings.Contains(err.Error(), "000.00.00.G23") {
		t.Fatalf("unknown agency: got %v", err)
	}
}

// What `govnetctl registry export` writes (the API's JSON) reads back as
// the same registry.
func TestRegistryFileRoundTrip(t *testing.T) {
	rf := RegistryFile{
		Agencies: []api.Agency{
			{Code: "000.00.00.H29", Name: "Quảng Ninh", Level: "province"},
			{Code: "000.12.04.H29", Name: "Hồng Gai", Level: "commune", Parent: "000.00.00.H29"},
		},
		Gateways: []api.Gateway{
			{ID: "gw-a", Agency: "000.00.00.H29", Status: api.StatusEnrolled, PublicKey: placeholderKey(7),
				OverlayIP: netip.MustParseAddr("100.64.0.9"), LANs: []netip.Prefix{netip.MustParsePrefix("10.29.0.0/16")},
				CertExpires: time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC), Ruleset: api.RulesetOK,
				Report: &api.Report{PolicyVersion: 3}},
			{ID: "gw-b", Agency: "000.12.04.H29", Status: api.StatusPending},
		},
	}
	src, err := json.Marshal(rf)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := ParseRegistry("export.json", src)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(reg.Agencies, rf.Agencies) || !reflect.DeepEqual(reg.Gateways, rf.Gateways) {
		t.Fatalf("round trip changed the registry:\n got %+v\nwant %+v", reg, rf)
	}
}

// Gateways without status, address or key are enrolled with distinct
// placeholders that do not collide with the addresses the file gives.
func TestRegistryFileDefaults(t *testing.T) {
	reg, err := ParseRegistry("r.yaml", []byte(`
agencies: [{code: 000.00.00.H29, name: a}]
gateways:
  - {id: a, agency: 000.00.00.H29}
  - {id: b, agency: 000.00.00.H29, overlay_ip: 100.64.0.1}
  - {id: c, agency: 000.00.00.H29, status: pending}
`))
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := reg.Gateways[0], reg.Gateways[1], reg.Gateways[2]
	if !Participates(&a) || !Participates(&b) || Participates(&c) {
		t.Fatalf("participation: a %v b %v c %v; want true true false", Participates(&a), Participates(&b), Participates(&c))
	}
	if a.OverlayIP == b.OverlayIP || a.PublicKey == b.PublicKey {
		t.Fatalf("placeholders collide: %v %v", a, b)
	}
}

func TestRegistryFileErrors(t *testing.T) {
	for _, tc := range []struct{ name, src, want string }{
		{"syntax", "agencies: [", "r.yaml"},
		{"unknown key", "agencies:\n  - {code: 000.00.00.H29, name: a, colour: red}\n", "colour"},
		{"bad code", "agencies:\n  - {code: 000.00.00.H29, name: a}\n  - {code: 00.00.00.H29, name: b}\n", "r.yaml:3:5: agencies[1]: agency code \"00.00.00.H29\""},
		{"twice", "agencies:\n  - {code: 000.00.00.H29, name: a}\n  - {code: 000.00.00.H29, name: b}\n", "r.yaml:3:5: agencies[1]: agency 000.00.00.H29 appears twice"},
		{"no parent", "agencies:\n  - {code: 000.12.04.H29, name: a}\n", "r.yaml:2:5: agency 000.12.04.H29: its parent 000.00.04.H29 is not in the file"},
		{"gateway agency", "agencies: [{code: 000.00.00.H29, name: a}]\ngateways:\n  - {id: x, agency: 000.00.00.H49}\n", "r.yaml:3:5: gateways[0]: gateway x: agency \"000.00.00.H49\" is not in the file"},
		{"gateway twice", "agencies: [{code: 000.00.00.H29, name: a}]\ngateways:\n  - {id: x, agency: 000.00.00.H29}\n  - {id: x, agency: 000.00.00.H29}\n", "gateways[1]: gateway x appears twice"},
		{"no id", "agencies: [{code: 000.00.00.H29, name: a}]\ngateways:\n  - {agency: 000.00.00.H29}\n", "gateways[0]: no id"},
		{"misspelt status", "agencies: [{code: 000.00.00.H29, name: a}]\ngateways:\n  - {id: x, agency: 000.00.00.H29, status: enroled}\n", `r.yaml:3:5: gateways[0]: gateway x: status "enroled": want pending, enrolled, revoked or decommissioned`},
		{"own parent", "agencies:\n  - {code: 000.00.00.H29, name: a, parent: 000.00.00.H29}\n", "r.yaml:2:5: agency 000.00.00.H29: its own parent"},
		{"bad address", "agencies: [{code: 000.00.00.H29, name: a}]\ngateways:\n  - {id: x, agency: 000.00.00.H29, overlay_ip: 1.2.3}\n", "r.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRegistry("r.yaml", []byte(tc.src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func FuzzParseRegistry(f *testing.F) {
	if src, err := os.ReadFile("../deploy/lab/registry.yaml"); err == nil {
		f.Add(src)
	}
	f.Add([]byte(`{"agencies":[{"code":"000.00.00.H29","name":"a"}],"gateways":[{"id":"x","agency":"000.00.00.H29","overlay_ip":"100.64.0.1"}]}`))
	f.Add([]byte("agencies:\n  - {code: 000.12.04.H29, name: a, parent: 000.00.00.H29}\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		reg, err := ParseRegistry("fuzz.yaml", src)
		if err != nil {
			return
		}
		// Whatever is accepted is consistent: every gateway's agency and
		// every parent is registered, and ids are unique.
		codes := map[string]bool{}
		for _, a := range reg.Agencies {
			codes[a.Code] = true
		}
		ids := map[string]bool{}
		for _, g := range reg.Gateways {
			if !codes[g.Agency] || ids[g.ID] {
				t.Fatalf("accepted an inconsistent gateway %+v", g)
			}
			ids[g.ID] = true
		}
		for _, a := range reg.Agencies {
			if a.Parent != "" && !codes[a.Parent] {
				t.Fatalf("accepted agency %s with missing parent %s", a.Code, a.Parent)
			}
		}
	})
}
