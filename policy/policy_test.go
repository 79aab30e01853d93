package policy

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/govnet/govnet/api"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the compiler's output")

// testRegistry is a small state: Hanoi (H29) with a district and a commune
// under it, province H49, Hanoi's People's Council (K29, no gateways) and
// the Government Office (G22), which hosts NDXP. Two gateways do not take
// part: one pending, one revoked.
func testRegistry() *Registry {
	key := func(b byte) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, 32)) }
	pfx := netip.MustParsePrefix
	ip := netip.MustParseAddr
	return &Registry{
		Agencies: []api.Agency{
			{Code: "000.00.00.G22", Name: "Văn phòng Chính phủ", Level: "central"},
			{Code: "000.00.00.H29", Name: "Ủy ban nhân dân thành phố Hà Nội", Level: "province"},
			{Code: "000.00.04.H29", Name: "Ủy ban nhân dân quận Hoàn Kiếm", Parent: "000.00.00.H29", Level: "district"},
			{Code: "000.12.04.H29", Name: "Ủy ban nhân dân phường Hàng Bạc", Parent: "000.00.04.H29", Level: "commune"},
			{Code: "000.00.00.H49", Name: "Ủy ban nhân dân tỉnh Quảng Nam", Level: "province"},
			{Code: "000.00.00.K29", Name: "Hội đồng nhân dân thành phố Hà Nội", Level: "province"},
		},
		Gateways: []api.Gateway{
			{ID: "g22-gw1", Agency: "000.00.00.G22", Endpoint: "172.16.0.1:51820", LANs: []netip.Prefix{pfx("10.22.0.0/24")}, Status: api.StatusEnrolled, PublicKey: key(1), OverlayIP: ip("100.64.0.1")},
			{ID: "h29-gw1", Agency: "000.00.00.H29", Endpoint: "172.16.0.2:51820", LANs: []netip.Prefix{pfx("10.29.0.0/24")}, Status: api.StatusEnrolled, PublicKey: key(2), OverlayIP: ip("100.64.0.2")},
			{ID: "h29d-gw1", Agency: "000.00.04.H29", Endpoint: "172.16.0.3:51820", Status: api.StatusEnrolled, PublicKey: key(3), OverlayIP: ip("100.64.0.3")},
			{ID: "h29c-gw1", Agency: "000.12.04.H29", Endpoint: "172.16.0.4:51820", LANs: []netip.Prefix{pfx("10.29.12.0/24"), pfx("10.29.13.7/24")}, Status: api.StatusEnrolled, PublicKey: key(4), OverlayIP: ip("100.64.0.4")},
			{ID: "h29c-gw2", Agency: "000.12.04.H29", Status: api.StatusRevoked, PublicKey: key(5), OverlayIP: ip("100.64.0.5")},
			{ID: "h49-gw1", Agency: "000.00.00.H49", Endpoint: "172.16.0.6:51820", LANs: []netip.Prefix{pfx("10.49.0.0/24")}, Status: api.StatusEnrolled, PublicKey: key(6), OverlayIP: ip("100.64.0.6")},
			{ID: "h49-gw2", Agency: "000.00.00.H49", Status: api.StatusPending},
		},
	}
}

func mustParse(t testing.TB, name, src string) *Policy {
	t.Helper()
	p, err := Parse(name, []byte(src))
	if err != nil {
		t.Fatalf("Parse:\n%v", err)
	}
	return p
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // Error() of each error, in order
	}{
		{
			name: "unknown key",
			src:  "version: 1\ngroups:\n  provinces:\n    levle: province\n",
			want: []string{`p.yaml:4:5: unknown key "levle" in group provinces (did you mean level?)`},
		},
		{
			name: "unknown top-level key",
			src:  "version: 1\npolicies: []\n",
			want: []string{`p.yaml:2:1: unknown key "policies" in the policy (known keys: version, groups, services, rules, tests)`},
		},
		{
			name: "bad port",
			src:  "version: 1\nservices:\n  web:\n    gateways: [g22-gw1]\n    ports: [tcp/443, tcp/0, sctp/9, tcp/x]\n",
			want: []string{
				`p.yaml:5:22: service web: ports: bad port spec "tcp/0": ports are 1 to 65535 (want tcp/N, udp/N, tcp/N-M, udp/N-M or icmp)`,
				`p.yaml:5:29: service web: ports: bad port spec "sctp/9" (want tcp/N, udp/N, tcp/N-M, udp/N-M or icmp)`,
				`p.yaml:5:37: service web: ports: bad port spec "tcp/x": ports are 1 to 65535 (want tcp/N, udp/N, tcp/N-M, udp/N-M or icmp)`,
			},
		},
		{
			name: "bad range",
			src:  "version: 1\nrules:\n  - from: [g22-gw1]\n    to: [h49-gw1]\n    ports:\n      - udp/10-5\n      - tcp/1000-2024\n      - tcp/1000-2023\n",
			want: []string{
				`p.yaml:6:9: rule 1: ports: bad port range "udp/10-5": 10 is above 5 (want tcp/N, udp/N, tcp/N-M, udp/N-M or icmp)`,
				`p.yaml:7:9: rule 1: ports: port range "tcp/1000-2024" has 1025 ports, more than 1024 (want tcp/N, udp/N, tcp/N-M, udp/N-M or icmp)`,
			},
		},
		{
			name: "unknown group in rule",
			src:  "version: 1\ngroups:\n  provinces:\n    level: province\nrules:\n  - from: [provnces]\n    to: [provinces]\n    ports: [icmp]\n",
			want: []string{`p.yaml:6:12: rule 1: from: unknown group or gateway provnces (did you mean provinces?)`},
		},
		{
			name: "unknown gateway in rule",
			src:  "version: 1\nrules:\n  - from: [g22-gw]\n    to: [h49-gw1]\n    ports: [icmp]\n",
			want: []string{`p.yaml:3:12: rule 1: from: unknown group or gateway g22-gw (did you mean g22-gw1?)`},
		},
		{
			name: "unknown service",
			src:  "version: 1\nservices:\n  ndxp:\n    gateways: [g22-gw1]\n    ports: [tcp/443]\nrules:\n  - from: [h49-gw1]\n    to: [nxdp]\n",
			want: []string{`p.yaml:8:10: rule 1: to: unknown service, group or gateway nxdp (did you mean ndxp?)`},
		},
		{
			name: "unknown group in group",
			src:  "version: 1\ngroups:\n  provinces:\n    level: province\n  all:\n    groups: [provinces, province]\n",
			want: []string{`p.yaml:6:25: group all: unknown group province (did you mean provinces?)`},
		},
		{
			name: "unknown agency code",
			src:  "version: 1\ngroups:\n  hn:\n    subtree: 000.00.00.H28\n  g:\n    agencies: [000.00.00.G22, 000.00.00.G23]\n",
			want: []string{
				`p.yaml:4:14: group hn: subtree: unknown agency 000.00.00.H28 (did you mean 000.00.00.H29?)`,
				`p.yaml:6:31: group g: agencies: unknown agency 000.00.00.G23 (did you mean 000.00.00.G22?)`,
			},
		},
		{
			name: "malformed agency code",
			src:  "version: 1\ngroups:\n  hn:\n    subtree: 000.12.00.H29\n",
			want: []string{`p.yaml:4:14: group hn: subtree: agency code "000.12.00.H29": a group is set while the group to its right is zero`},
		},
		{
			name: "unknown gateway in group",
			src:  "version: 1\ngroups:\n  core:\n    gateways: [g22-gw1, g22-gw2]\n",
			want: []string{`p.yaml:4:25: group core: gateways: unknown gateway g22-gw2 (did you mean g22-gw1?)`},
		},
		{
			name: "cycle in groups",
			src:  "version: 1\ngroups:\n  a:\n    groups: [b]\n  b:\n    groups: [c]\n  c:\n    groups: [a]\n  d:\n    groups: [d]\n",
			want: []string{
				`p.yaml:8:14: group cycle: a -> b -> c -> a (a group cannot include itself)`,
				`p.yaml:10:14: group cycle: d -> d (a group cannot include itself)`,
			},
		},
		{
			name: "rule to a group without ports",
			src:  "version: 1\ngroups:\n  provinces:\n    level: province\nrules:\n  - from: [provinces]\n    to: [provinces, h49-gw1]\n",
			want: []string{
				`p.yaml:7:10: rule 1: to provinces: a rule to a group needs ports (add ports: [tcp/N, ...] or name a service)`,
				`p.yaml:7:21: rule 1: to h49-gw1: a rule to a gateway needs ports (add ports: [tcp/N, ...] or name a service)`,
			},
		},
		{
			name: "rule to a service with ports",
			src:  "version: 1\nservices:\n  ndxp:\n    gateways: [g22-gw1]\n    ports: [tcp/443]\nrules:\n  - from: [h49-gw1]\n    to: [ndxp]\n    ports: [tcp/22]\n",
			want: []string{`p.yaml:8:10: rule 1: to ndxp: a service brings its own ports (drop ports or put the service in a rule of its own)`},
		},
		{
			name: "rule from a service",
			src:  "version: 1\nservices:\n  ndxp:\n    gateways: [g22-gw1]\n    ports: [tcp/443]\nrules:\n  - from: [ndxp]\n    to: [h49-gw1]\n    ports: [icmp]\n",
			want: []string{`p.yaml:7:12: rule 1: from ndxp: ndxp is a service (a rule goes from groups or gateways; name the service's group or gateways)`},
		},
		{
			name: "agency code in a rule",
			src:  "version: 1\nrules:\n  - from: [000.00.00.H29]\n    to: [h49-gw1]\n    ports: [icmp]\n",
			want: []string{`p.yaml:3:12: rule 1: from: agency code 000.00.00.H29 not allowed here (rules name groups or gateways; put the agency in a group: agencies: [000.00.00.H29])`},
		},
		{
			name: "rule missing from and empty to",
			src:  "version: 1\nrules:\n  - to: []\n",
			want: []string{
				`p.yaml:3:5: rule 1: missing from (set from: [name, ...])`,
				`p.yaml:3:5: rule 1: to is empty (list at least one name)`,
			},
		},
		{
			name: "bad level name",
			src:  "version: 1\ngroups:\n  provinces:\n    level: provence\n  x:\n    level: city\n",
			want: []string{
				`p.yaml:4:12: group provinces: unknown level "provence" (did you mean province?)`,
				`p.yaml:6:12: group x: unknown level "city" (want central, province, district, commune, unit)`,
			},
		},
		{
			name: "bad names",
			src:  "version: 1\ngroups:\n  Core:\n    level: central\n  ok:\n    gateways: [G22_gw1]\n",
			want: []string{
				`p.yaml:3:3: group: bad name "Core" (names are lowercase letters, digits and -)`,
				`p.yaml:6:16: group ok: gateways: bad name "G22_gw1" (names are lowercase letters, digits and -)`,
			},
		},
		{
			name: "empty group",
			src:  "version: 1\ngroups:\n  nothing:\n  none: {agencies: []}\n",
			want: []string{
				`p.yaml:3:3: group nothing selects nothing (set level, subtree, agencies, gateways or groups)`,
				`p.yaml:4:3: group none selects nothing (set level, subtree, agencies, gateways or groups)`,
			},
		},
		{
			name: "service shapes",
			src:  "version: 1\ngroups:\n  web:\n    level: central\nservices:\n  a:\n    ports: [tcp/1]\n  b:\n    gateways: [g22-gw1]\n    group: web\n  c:\n    gateways: [g22-gw1]\n  web:\n    group: web\n    ports: [tcp/80]\n",
			want: []string{
				`p.yaml:6:3: service a has no gateways (set gateways: [id, ...] or group: name)`,
				`p.yaml:8:3: service b has no ports (list them, like ports: [tcp/443])`,
				`p.yaml:10:5: service b: set gateways or group, not both (a service names its gateways one way)`,
				`p.yaml:11:3: service c has no ports (list them, like ports: [tcp/443])`,
				`p.yaml:13:3: service web: name already used by a group (groups and services share one set of names)`,
			},
		},
		{
			name: "name clashes with a gateway id",
			src:  "version: 1\ngroups:\n  h49-gw1:\n    level: province\n",
			want: []string{`p.yaml:3:3: group h49-gw1: name is also a gateway id (rename the group: rules could not tell them apart)`},
		},
		{
			name: "bad tests",
			src: "version: 1\ntests:\n  - from: 000.00.00.H29\n    to: h49-gw1\n    port: tcp/1-2\n    expect: maybe\n" +
				"  - from: g22-gw1\n",
			want: []string{
				`p.yaml:5:11: test 1: port "tcp/1-2" is a range (a test checks one port, like tcp/443)`,
				`p.yaml:6:13: test 1: bad expect "maybe" (want allow or deny)`,
				`p.yaml:7:5: test 2: missing to (a test sets from, to, port and expect)`,
				`p.yaml:7:5: test 2: missing port (a test sets from, to, port and expect)`,
				`p.yaml:7:5: test 2: missing expect (a test sets from, to, port and expect)`,
			},
		},
		{
			name: "unknown names in tests",
			src: "version: 1\ngroups:\n  p: {level: province}\ntests:\n" +
				"  - from: g22-gw9\n    to: 000.00.00.H50\n    port: icmp\n    expect: deny\n" +
				"  - {from: p, to: p, port: icmp, expect: deny}\n",
			want: []string{
				`p.yaml:5:11: test 1: from: unknown gateway g22-gw9 (did you mean g22-gw1?)`,
				`p.yaml:6:9: test 1: to: unknown agency 000.00.00.H50 (did you mean 000.00.00.H29?)`,
				`p.yaml:9:12: test 2: from: unknown gateway p (a test goes from an agency code or a gateway id)`,
				`p.yaml:9:19: test 2: to: unknown service or gateway p (a test goes to a service, a gateway id or an agency code)`,
			},
		},
		{
			name: "syntax error",
			src:  "version: 1\ngroups:\n  a: {level: [province}\n",
			want: []string{`p.yaml:3:23: ',' or ']' must be specified`},
		},
		{
			name: "duplicate key",
			src:  "version: 1\ngroups:\n  a:\n    level: province\n  a:\n    level: commune\n",
			want: []string{`p.yaml:5:3: mapping key "a" already defined at [3:3]`},
		},
		{
			name: "missing version",
			src:  "groups: {}\n",
			want: []string{`p.yaml:1:1: missing version (start the policy with version: 1)`},
		},
		{
			name: "empty document",
			src:  "# nothing\n",
			want: []string{`p.yaml:1:1: missing version (start the policy with version: 1)`},
		},
		{
			name: "wrong version",
			src:  "version: 2\n",
			want: []string{`p.yaml:1:10: unsupported version "2" (this release reads version 1)`},
		},
		{
			name: "not a mapping",
			src:  "- version: 1\n",
			want: []string{`p.yaml:1:1: policy: want a mapping of keys to values, found a list`},
		},
		{
			name: "wrong types",
			src:  "version: 1\ngroups: [a]\nrules:\n  - from: provinces\n    to: [a]\n",
			want: []string{
				`p.yaml:2:9: groups: want a mapping of keys to values, found a list`,
				`p.yaml:4:11: rule 1: from: want a list, found a single value (want a list of names, like [a, b])`,
			},
		},
		{
			name: "second document",
			src:  "version: 1\n---\nversion: 1\n",
			want: []string{`p.yaml:2:1: a second YAML document (put the whole policy in one document)`},
		},
		{
			name: "anchors",
			src:  "version: 1\ngroups:\n  a: &sel\n    level: province\n  b: *sel\n",
			want: []string{
				`p.yaml:3:6: group a: anchors, aliases and merge keys are not supported (write the value out)`,
				`p.yaml:5:6: group b: anchors, aliases and merge keys are not supported (write the value out)`,
			},
		},
	}
	reg := testRegistry()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(tt.src))
			if err == nil {
				err = p.Validate(reg)
			}
			var got []string
			for _, e := range AsList(err) {
				got = append(got, e.Error())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if err != nil && err.Error() != strings.Join(got, "\n") {
				t.Errorf("Error() = %q, want the errors one per line", err.Error())
			}
		})
	}
}

func TestErrorFormat(t *testing.T) {
	e := &Error{File: "a.yaml", Line: 3, Column: 7, Msg: "bad", Hint: "fix it"}
	if got, want := e.Error(), "a.yaml:3:7: bad (fix it)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	l := ErrorList{
		{File: "a.yaml", Line: 9, Column: 1, Msg: "late"},
		{File: "a.yaml", Line: 2, Column: 5, Msg: "second"},
		{File: "a.yaml", Line: 2, Column: 1, Msg: "first"},
	}
	if got, want := l.Err().Error(), "a.yaml:2:1: first\na.yaml:2:5: second\na.yaml:9:1: late"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if (ErrorList{}).Err() != nil {
		t.Error("empty list: Err() != nil")
	}
}

func TestPortSpec(t *testing.T) {
	tests := []struct {
		in   string
		want PortSpec
		bad  bool
	}{
		{in: "tcp/443", want: PortSpec{Proto: "tcp", First: 443, Last: 443}},
		{in: "udp/5000-5010", want: PortSpec{Proto: "udp", First: 5000, Last: 5010}},
		{in: "tcp/1-1024", want: PortSpec{Proto: "tcp", First: 1, Last: 1024}},
		{in: "tcp/65535", want: PortSpec{Proto: "tcp", First: 65535, Last: 65535}},
		{in: "icmp", want: PortSpec{Proto: "icmp"}},
		{in: "tcp/1-1025", bad: true},
		{in: "tcp/65536", bad: true},
		{in: "tcp/0", bad: true},
		{in: "tcp/+1", bad: true},
		{in: "tcp/-1", bad: true},
		{in: "tcp/1-", bad: true},
		{in: "tcp/", bad: true},
		{in: "tcp", bad: true},
		{in: "TCP/22", bad: true},
		{in: "icmp/8", bad: true},
		{in: "tcp/22-10", bad: true},
		{in: "tcp/1-2-3", bad: true},
	}
	for _, tt := range tests {
		got, msg := parsePortSpec(tt.in)
		if tt.bad != (msg != "") {
			t.Errorf("parsePortSpec(%q): msg %q, want bad=%v", tt.in, msg, tt.bad)
			continue
		}
		if !tt.bad && got != tt.want {
			t.Errorf("parsePortSpec(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		if !tt.bad && got.String() != tt.in {
			t.Errorf("String() = %q, want %q", got.String(), tt.in)
		}
	}
}

func TestDidYouMean(t *testing.T) {
	tests := []struct {
		name  string
		cands []string
		want  string
	}{
		{"provnces", []string{"core", "provinces"}, "did you mean provinces?"},
		{"abc", []string{"provinces"}, ""},
		{"000.00.00.H30", []string{"000.00.00.G22", "000.00.00.H29", "000.00.00.H39"}, "did you mean 000.00.00.H39?"},
		{"ab", []string{"ba", "ab-"}, "did you mean ab-?"},
		{"x", nil, ""},
	}
	for _, tt := range tests {
		if got := didYouMean(tt.name, tt.cands); got != tt.want {
			t.Errorf("didYouMean(%q, %q) = %q, want %q", tt.name, tt.cands, got, tt.want)
		}
	}
}

// TestGolden compiles every testdata/*.yaml against testRegistry, runs its
// embedded tests, and compares the views' JSON with testdata/NAME.golden.
// Run with -update to rewrite the golden files.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			src, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			_, views, err := Check(file, src, testRegistry())
			if err != nil {
				t.Fatalf("Check:\n%v", err)
			}
			got := viewsJSON(t, views)
			golden := strings.TrimSuffix(file, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("views differ from %s (run go test -update to accept):\n%s", golden, got)
			}
		})
	}
}

func viewsJSON(t testing.TB, views map[string]*api.View) []byte {
	t.Helper()
	b, err := json.MarshalIndent(views, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func TestCompileViews(t *testing.T) {
	src, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p := mustParse(t, "example.yaml", string(src))
	views, err := p.Compile(testRegistry())
	if err != nil {
		t.Fatal(err)
	}
	// Every participating gateway, and only those, gets a view.
	var ids []string
	for id := range views {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if want := []string{"g22-gw1", "h29-gw1", "h29c-gw1", "h29d-gw1", "h49-gw1"}; !slices.Equal(ids, want) {
		t.Errorf("views for %v, want %v", ids, want)
	}
	// The district is in no rule: it denies everything, and says so with
	// empty lists rather than null.
	d := views["h29d-gw1"]
	if len(d.Peers) != 0 || d.Rules == nil || len(d.Rules) != 0 {
		t.Errorf("h29d-gw1 view = %+v, want empty", d)
	}
	if b := viewsJSON(t, map[string]*api.View{"x": d}); !bytes.Contains(b, []byte(`"peers": []`)) || !bytes.Contains(b, []byte(`"rules": []`)) {
		t.Errorf("empty view JSON:\n%s", b)
	}
	// NDXP admits the commune's overlay address and both of its LANs
	// (masked) on tcp/443, and peers with the commune.
	g := views["g22-gw1"]
	for _, src := range []string{"100.64.0.4/32", "10.29.12.0/24", "10.29.13.0/24"} {
		r := api.Rule{Source: netip.MustParsePrefix(src), Protocol: "tcp", Port: 443}
		if !slices.Contains(g.Rules, r) {
			t.Errorf("g22-gw1 lacks %+v", r)
		}
	}
	i := slices.IndexFunc(g.Peers, func(p api.Peer) bool { return p.Gateway == "h29c-gw1" })
	if i < 0 {
		t.Fatal("g22-gw1 does not peer with h29c-gw1")
	}
	want := api.Peer{
		Gateway: "h29c-gw1", Agency: "000.12.04.H29", PublicKey: testRegistry().Gateways[3].PublicKey, Endpoint: "172.16.0.4:51820",
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.0.4/32"), netip.MustParsePrefix("10.29.12.0/24"), netip.MustParsePrefix("10.29.13.0/24")},
	}
	if got := g.Peers[i]; got.Gateway != want.Gateway || got.Agency != want.Agency || got.PublicKey != want.PublicKey || got.Endpoint != want.Endpoint || !slices.Equal(got.AllowedIPs, want.AllowedIPs) {
		t.Errorf("peer = %+v, want %+v", got, want)
	}
	// Revoked and pending gateways are nobody's peers.
	for id, v := range views {
		for _, p := range v.Peers {
			if p.Gateway == "h29c-gw2" || p.Gateway == "h49-gw2" {
				t.Errorf("%s peers with %s", id, p.Gateway)
			}
		}
	}
	// Sorted and deduplicated.
	for id, v := range views {
		if !slices.IsSortedFunc(v.Rules, api.CompareRules) {
			t.Errorf("%s: rules not sorted", id)
		}
		if len(slices.Compact(slices.Clone(v.Rules))) != len(v.Rules) {
			t.Errorf("%s: duplicate rules", id)
		}
		if !slices.IsSortedFunc(v.Peers, func(a, b api.Peer) int { return strings.Compare(a.Gateway, b.Gateway) }) {
			t.Errorf("%s: peers not sorted", id)
		}
	}
}

func TestDeterminism(t *testing.T) {
	src, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p := mustParse(t, "example.yaml", string(src))
	reg := testRegistry()
	first, err := p.Compile(reg)
	if err != nil {
		t.Fatal(err)
	}
	want := viewsJSON(t, first)
	again, err := p.Compile(reg)
	if err != nil {
		t.Fatal(err)
	}
	if got := viewsJSON(t, again); !bytes.Equal(got, want) {
		t.Error("second compile differs")
	}
	// The registry's order does not matter either.
	slices.Reverse(reg.Gateways)
	slices.Reverse(reg.Agencies)
	reversed, err := mustParse(t, "example.yaml", string(src)).Compile(reg)
	if err != nil {
		t.Fatal(err)
	}
	if got := viewsJSON(t, reversed); !bytes.Equal(got, want) {
		t.Error("compile with the registry reversed differs")
	}
}

func TestEmbeddedTests(t *testing.T) {
	const src = `version: 1
groups:
  h29-communes: {subtree: 000.00.00.H29, level: commune}
services:
  ndxp: {gateways: [g22-gw1], ports: [tcp/443]}
rules:
  - from: [h29-communes]
    to: [ndxp]
tests:
  - {from: 000.12.04.H29, to: ndxp, port: tcp/443, expect: allow}
  - {from: 000.00.00.H29, to: ndxp, port: tcp/443, expect: allow}
  - {from: 000.12.04.H29, to: ndxp, port: tcp/443, expect: deny}
  - {from: 000.00.00.K29, to: ndxp, port: tcp/443, expect: deny}
  - {from: h29c-gw1, to: 000.12.04.H29, port: icmp, expect: deny}
  - {from: 000.12.04.H29, to: 000.00.00.G22, port: icmp, expect: deny}
  - {from: h49-gw2, to: ndxp, port: icmp, expect: deny}
`
	p := mustParse(t, "t.yaml", src)
	err := p.Test(testRegistry())
	want := []string{
		"t.yaml:11:5: test 2: 000.00.00.H29 -> ndxp tcp/443: expected allow, got deny (gateways h29-gw1)",
		"t.yaml:12:5: test 3: 000.12.04.H29 -> ndxp tcp/443: expected deny, got allow (gateways h29c-gw1)",
		"t.yaml:13:5: test 4: 000.00.00.K29 -> ndxp tcp/443: no enrolled gateway for 000.00.00.K29 (a test needs an enrolled gateway on each side)",
		"t.yaml:14:5: test 5: h29c-gw1 -> 000.12.04.H29 icmp: from and to are the same gateway (name two different gateways)",
		"t.yaml:16:5: test 7: h49-gw2 -> ndxp icmp: no enrolled gateway for h49-gw2 (a test needs an enrolled gateway on each side)",
	}
	var got []string
	for _, e := range AsList(err) {
		got = append(got, e.Error())
	}
	if !slices.Equal(got, want) {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Check refuses to hand out views when a test fails.
	if _, views, err := Check("t.yaml", []byte(src), testRegistry()); err == nil || views != nil {
		t.Errorf("Check = %v, %v; want error and no views", views != nil, err)
	}
}

func TestEmbeddedTestsManyPairs(t *testing.T) {
	const src = `version: 1
rules:
  - {from: [g22-gw1], to: [h29-gw1], ports: [tcp/22]}
tests:
  - {from: g22-gw1, to: 000.00.00.H29, port: tcp/22, expect: allow}
  - {from: 000.00.00.G22, to: 000.12.04.H29, port: tcp/22, expect: allow}
`
	reg := testRegistry()
	// A second enrolled gateway at the commune: failures name both pairs.
	reg.Gateways[4].Status = api.StatusEnrolled
	err := mustParse(t, "t.yaml", src).Test(reg)
	want := "t.yaml:6:5: test 2: 000.00.00.G22 -> 000.12.04.H29 tcp/22: expected allow, got deny (gateways g22-gw1->h29c-gw1, g22-gw1->h29c-gw2)"
	if err == nil || err.Error() != want {
		t.Errorf("Test = %v\nwant %s", err, want)
	}
}

func TestAllowed(t *testing.T) {
	src, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p := mustParse(t, "example.yaml", string(src))
	reg := testRegistry()
	views, err := p.Compile(reg)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		from, to, proto string
		port            uint16
		want            bool
	}{
		{"h29c-gw1", "g22-gw1", "tcp", 443, true},
		{"h29c-gw1", "g22-gw1", "tcp", 444, false},
		{"h29c-gw1", "g22-gw1", "udp", 443, false},
		{"g22-gw1", "h29c-gw1", "tcp", 443, false}, // rules are one-way
		{"h29-gw1", "h49-gw1", "tcp", 22, true},
		{"h49-gw1", "h29-gw1", "icmp", 0, true},
		{"h49-gw1", "h29-gw1", "icmp", 8, true}, // the port of ICMP does not matter
		{"g22-gw1", "h49-gw1", "udp", 5003, true},
		{"g22-gw1", "h49-gw1", "udp", 5004, false},
		{"h29d-gw1", "g22-gw1", "tcp", 443, false},
		{"h29c-gw2", "g22-gw1", "tcp", 443, false}, // revoked
		{"h49-gw2", "h29-gw1", "tcp", 22, false},   // pending
		{"nosuch", "g22-gw1", "tcp", 443, false},
		{"g22-gw1", "g22-gw1", "tcp", 1, true},
	}
	for _, tt := range tests {
		if got := p.Allowed(views, reg, tt.from, tt.to, tt.proto, tt.port); got != tt.want {
			t.Errorf("Allowed(%s -> %s %s/%d) = %v, want %v", tt.from, tt.to, tt.proto, tt.port, got, tt.want)
		}
	}
}

func TestRegistryDuplicates(t *testing.T) {
	reg := testRegistry()
	reg.Gateways = append(reg.Gateways, reg.Gateways[0])
	_, err := mustParse(t, "p.yaml", "version: 1\n").Compile(reg)
	if err == nil || !strings.Contains(err.Error(), `registry: gateway id "g22-gw1" appears twice`) {
		t.Errorf("Compile = %v, want duplicate gateway error", err)
	}
}

func TestSummary(t *testing.T) {
	src, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p := mustParse(t, "example.yaml", string(src))
	if got, want := p.Summary(), "version 1: 5 groups, 2 services, 3 rules, 7 tests"; got != want {
		t.Errorf("Summary() = %q, want %q", got, want)
	}
}

// TestConcurrentUse runs Validate, Compile and Test on one Policy from
// several goroutines: the controller does that, and -race checks it.
func TestConcurrentUse(t *testing.T) {
	src, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p := mustParse(t, "example.yaml", string(src))
	reg := testRegistry()
	want, err := p.Compile(reg)
	if err != nil {
		t.Fatal(err)
	}
	wantJSON := viewsJSON(t, want)
	errc := make(chan error, 8)
	for range 8 {
		go func() {
			if err := p.Test(reg); err != nil {
				errc <- err
				return
			}
			views, err := p.Compile(reg)
			if err == nil && !bytes.Equal(viewsJSON(t, views), wantJSON) {
				err = errors.New("views differ")
			}
			errc <- err
		}()
	}
	for range 8 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}
