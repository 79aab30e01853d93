package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sampleOutput = ` 08:37:15 up 34 min,  0 user,  load average: 4.57, 3.22, 3.82
goos: linux
goarch: amd64
pkg: github.com/govnet/govnet/hsm
cpu: Oxide Virtual Turin-like Processor
BenchmarkSign-2   	   24000	     92000 ns/op	     10900 signs/s
BenchmarkSign-2   	   25000	     90000 ns/op	     11100 signs/s
BenchmarkSign-2   	   23000	     95000 ns/op	     10500 signs/s
PASS
ok  	github.com/govnet/govnet/hsm	12.1s
goos: linux
goarch: amd64
pkg: github.com/govnet/govnet/netagent
BenchmarkFirewallApply/elements=1000-2         	       5	  16423720 ns/op	        13.05 ms/apply	        28.31 ms/apply-p90	         5.165 ms/flush
BenchmarkFirewallApply/elements=10000-2        	       5	 107043196 ns/op	       114.3 ms/apply	       177.9 ms/apply-p90	        43.83 ms/flush
BenchmarkFirewallPacket/path=exact-2         	     200	   5468047 ns/op	      1521 ns/pkt@100k	         1.005 ratio@100k	         0.9977 ratio@control
--- BENCH: BenchmarkFirewallPacket/path=exact-2
    firewall_bench_test.go:416: path exact: FAIL is only a word here
BenchmarkFirewallPacket/path=net-2
helper output that got in the way
     200	   8382615 ns/op	      3232 ns/pkt@100k	         1.668 ratio@100k	         0.9994 ratio@control
BenchmarkPeerChange/change=add-remove-2          	      12	 628582547 ns/op	       183.5 ms/add	      1076 ms/add-p90
BenchmarkOther-2   	 10	 5 ns/op	 7.5 ms/thing
PASS
ok  	github.com/govnet/govnet/netagent	24.601s
`

const sampleMap = `
# comment
hsm.raw_sign_per_s   hsm       BenchmarkSign                           signs/s
ca.issue_inprocess_per_s  ca   BenchmarkIssue                          certs/s      optional
nft.apply_ms_10000   netagent  BenchmarkFirewallApply/elements=10000   ms/apply     <=150
nft.apply_ms_1000    netagent  BenchmarkFirewallApply/elements=1000    ms/apply     <=10
nft.ratio            netagent  BenchmarkFirewallPacket/path=*          ratio@100k   max  <=1.2
wg.add               github.com/govnet/govnet/netagent  BenchmarkPeerChange/change=add-remove  ms/add
`

func TestParseAndMap(t *testing.T) {
	out, err := parse(strings.NewReader(sampleOutput))
	if err != nil {
		t.Fatal(err)
	}
	if len(out.results) != 9 {
		t.Fatalf("%d results: %+v", len(out.results), out.results)
	}
	if len(out.failures) != 0 {
		t.Fatalf("failures %q", out.failures)
	}
	if len(out.load) != 1 {
		t.Fatalf("load %q", out.load)
	}
	net := out.results[6]
	if net.name != "BenchmarkFirewallPacket/path=net" || net.iters != 200 || net.metrics[2].value != 1.668 {
		t.Fatalf("split result line: %+v", net)
	}
	rules, err := parseRules(strings.NewReader(sampleMap))
	if err != nil {
		t.Fatal(err)
	}
	figs, err := figures(rules, out)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]figure{}
	for _, f := range figs {
		got[f.name] = f
	}
	for name, want := range map[string]struct {
		value  float64
		status string
	}{
		"hsm.raw_sign_per_s": {10900, ""}, // median of 3
		"nft.apply_ms_10000": {114.3, "ok"},
		"nft.apply_ms_1000":  {13.05, "MISSED"},
		"nft.ratio":          {1.668, "MISSED"}, // max over paths
		"wg.add":             {183.5, ""},
	} {
		f, ok := got[name]
		if !ok {
			t.Errorf("%s missing", name)
			continue
		}
		if f.value != want.value || f.status() != want.status {
			t.Errorf("%s = %v %q, want %v %q", name, f.value, f.status(), want.value, want.status)
		}
	}
	if _, ok := got["ca.issue_inprocess_per_s"]; ok {
		t.Error("optional figure without a result present")
	}
	if u := unmapped(rules, out); len(u) != 1 || !strings.Contains(u[0], "BenchmarkOther") {
		t.Errorf("unmapped = %q", u)
	}
}

func TestMissingAndFailed(t *testing.T) {
	out, err := parse(strings.NewReader(`pkg: github.com/govnet/govnet/netagent
--- SKIP: BenchmarkFirewallApply
    netnstest.go:80: skipping privileged test: needs root
--- FAIL: BenchmarkPeerChange/change=none
    wireguard_bench_test.go:1: boom
FAIL
exit status 1
FAIL	github.com/govnet/govnet/netagent	3.2s
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(out.failures) != 3 || len(out.skipped) != 1 {
		t.Fatalf("failures %q, skipped %q", out.failures, out.skipped)
	}
	rules, _ := parseRules(strings.NewReader(sampleMap))
	if _, err := figures(rules, out); err == nil || !strings.Contains(err.Error(), "hsm.raw_sign_per_s") ||
		strings.Contains(err.Error(), "ca.issue") {
		t.Fatalf("missing figures error: %v", err)
	}
}

func TestBadMap(t *testing.T) {
	for _, m := range []string{
		"a hsm BenchmarkSign",
		"a hsm BenchmarkSign signs/s sometimes",
		"a hsm BenchmarkSign signs/s <=x",
		"a hsm BenchmarkSign signs/s\na hsm BenchmarkSign signs/s",
		"a hsm Benchmark[ signs/s",
	} {
		if _, err := parseRules(strings.NewReader(m)); err == nil {
			t.Errorf("map %q accepted", m)
		}
	}
}

// TestRunMerges: figures are merged into an existing file, other entries
// kept; the exit error reports failures but the found figures are written.
func TestRunMerges(t *testing.T) {
	dir := t.TempDir()
	mapFile := filepath.Join(dir, "results.map")
	outFile := filepath.Join(dir, "bench-results.json")
	in := filepath.Join(dir, "bench.log")
	os.WriteFile(mapFile, []byte(sampleMap), 0o644)
	os.WriteFile(outFile, []byte(`{"raft.writes_per_s": 9000, "nft.apply_ms_10000": 999}`), 0o644)
	os.WriteFile(in, []byte(sampleOutput), 0o644)
	var table bytes.Buffer
	if err := run(mapFile, outFile, []string{in}, &table); err != nil {
		t.Fatal(err)
	}
	t.Logf("table:\n%s", table.String())
	for _, want := range []string{"nft.apply_ms_10000", "114.3", "<=150", "MISSED", "load average: 4.57"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q", want)
		}
	}
	var got map[string]float64
	b, _ := os.ReadFile(outFile)
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got["raft.writes_per_s"] != 9000 || got["nft.apply_ms_10000"] != 114.3 || got["hsm.raw_sign_per_s"] != 10900 {
		t.Fatalf("merged file: %s", b)
	}

	os.WriteFile(in, []byte(sampleOutput+"--- FAIL: BenchmarkX\nFAIL\n"), 0o644)
	if err := run(mapFile, outFile, []string{in}, &table); err == nil || !strings.Contains(err.Error(), "BenchmarkX") {
		t.Fatalf("run with a failure: %v", err)
	}
	os.WriteFile(outFile, []byte(`not json`), 0o644)
	if err := run(mapFile, outFile, []string{in}, &table); err == nil {
		t.Fatal("corrupt results file overwritten")
	}
	if b, _ := os.ReadFile(outFile); string(b) != "not json" {
		t.Fatalf("corrupt file changed: %s", b)
	}
}

func TestRound(t *testing.T) {
	for in, want := range map[float64]float64{
		0: 0, 114.2857: 114.3, 0.99774: 0.9977, 10923.7: 10924, 1.6684: 1.668, 0.000123456: 0.0001235,
	} {
		if got := round(in); got != want {
			t.Errorf("round(%v) = %v, want %v", in, got, want)
		}
	}
}
