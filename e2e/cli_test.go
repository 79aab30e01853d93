package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
)

// cells splits a govnetctl table row into its cells (tabwriter pads with
// two or more spaces) and says how far the first cell is indented.
func cells(line string) (indent int, cs []string) {
	rest := strings.TrimLeft(line, " ")
	return len(line) - len(rest), cellSep.Split(strings.TrimRight(rest, " "), -1)
}

var cellSep = regexp.MustCompile(`\s{2,}`)

// table runs a govnetctl command and returns its table rows, header first.
func (l *lab) table(who string, args ...string) []string {
	l.t.Helper()
	out := l.mustCtl(who, args...)
	return strings.Split(strings.TrimRight(out, "\n"), "\n")
}

// asJSON runs a govnetctl command with -o json and decodes its output.
func (l *lab) asJSON(v any, who string, args ...string) {
	l.t.Helper()
	out := l.mustCtl(who, append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		l.t.Fatalf("govnetctl %s -o json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (l *lab) write(name, content string) string {
	l.t.Helper()
	f := l.path(name)
	if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
		l.t.Fatal(err)
	}
	return f
}

const registryCSV = `code,name,parent
000.00.00.G22,Văn phòng Chính phủ,
000.00.00.H29,Ủy ban nhân dân tỉnh Quảng Ninh,
000.00.00.H01,Ủy ban nhân dân thành phố Hà Nội,
000.00.04.H01,Ủy ban nhân dân quận Hoàn Kiếm,
000.12.04.H01,Ủy ban nhân dân phường Hàng Bạc,000.00.04.H01
000.00.00.H48,Ủy ban nhân dân thành phố Đà Nẵng,
`

const mergePolicy = `version: 1
groups:
  h29: {subtree: 000.00.00.H29}
  h01: {subtree: 000.00.00.H01}
rules:
  - {from: [h29], to: [h29], ports: [tcp/22]}
  - {from: [h01], to: [h01], ports: [tcp/443]}
`

// TestCLIRegistry runs govnetctl against a real controller through the
// registry's life: a bad import that adds nothing, an import, searches,
// list/tree/show whose JSON matches their tables, a merger previewed and
// then done (the preview is what it did, and packets follow the new
// hierarchy), a closed code refused, a refused close, a decommission.
func TestCLIRegistry(t *testing.T) {
	l := newLab(t)
	l.startController()

	t.Run("bad import adds nothing", func(t *testing.T) {
		for _, c := range []struct{ csv, want string }{
			// The controller refuses line 3: its parent is not registered.
			{"code,name,parent\n000.00.00.H29,Quảng Ninh,\n000.00.04.H77,Quận X,000.00.00.H77\n", "bad.csv:3: "},
			// The file is refused before it is sent.
			{"code,name\n000.00.00.H29,Quảng Ninh\n\nH01,Hà Nội\n", "bad.csv:4: agency code \"H01\""},
		} {
			out, err := l.ctlctl("op", "agency", "import", l.write("bad.csv", c.csv))
			if err == nil || !strings.Contains(out, c.want) || !strings.Contains(out, "nothing was registered") {
				t.Fatalf("import accepted or error without the line %q: %v\n%s", c.want, err, out)
			}
		}
		var ags []api.Agency
		l.asJSON(&ags, "op", "agency", "list")
		if len(ags) != 0 {
			t.Fatalf("a refused import registered %+v", ags)
		}
	})

	f := l.write("agencies.csv", registryCSV)
	t.Run("import", func(t *testing.T) {
		var dry api.AgencyImportResult
		l.asJSON(&dry, "op", "agency", "import", f, "--dry-run")
		if !dry.DryRun || len(dry.Added) != 6 {
			t.Fatalf("dry run %+v", dry)
		}
		if out := l.mustCtl("op", "agency", "import", f, "--dry-run"); strings.Count(out, "would add") != 6 {
			t.Fatalf("dry run table:\n%s", out)
		}
		var ags []api.Agency
		l.asJSON(&ags, "op", "agency", "list")
		if len(ags) != 0 {
			t.Fatalf("a dry run registered %+v", ags)
		}
		var res api.AgencyImportResult
		l.asJSON(&res, "op", "agency", "import", f)
		if len(res.Added) != 6 || res.RaftIndex == 0 {
			t.Fatalf("import %+v", res)
		}
		l.asJSON(&res, "op", "agency", "import", f) // again: nothing changes
		if len(res.Added)+len(res.Renamed) != 0 || res.Unchanged != 6 {
			t.Fatalf("second import %+v", res)
		}
	})

	t.Run("search ignores case and diacritics", func(t *testing.T) {
		for q, want := range map[string]string{"ha noi": "000.00.00.H01", "DA NANG": "000.00.00.H48", "Hàng bạc": "000.12.04.H01", "quang ninh": "000.00.00.H29"} {
			var ags []api.Agency
			l.asJSON(&ags, "op", "agency", "list", "--search", q)
			if len(ags) != 1 || ags[0].Code != want {
				t.Errorf("--search %q: %+v, want %s", q, ags, want)
			}
		}
	})

	h29 := l.addGateway("gw-h29", "000.00.00.H29", "192.0.2.11")
	h01 := l.addGateway("gw-h01", "000.00.00.H01", "192.0.2.12")
	h01c := l.addGateway("gw-h01c", "000.12.04.H01", "192.0.2.13")
	l.publish(mergePolicy)
	l.flows(h01c, h01, false, true)
	l.flows(h01c, h29, false, false)

	t.Run("json matches the table", func(t *testing.T) {
		checkListTable(t, l)
		checkTreeTable(t, l)
		checkShowTable(t, l, "000.00.04.H01")
		var gws []api.Gateway
		l.asJSON(&gws, "op", "gateway", "list")
		rows := l.table("op", "gateway", "list")[1:]
		if len(rows) != len(gws) {
			t.Fatalf("gateway list: %d rows, %d in JSON", len(rows), len(gws))
		}
		for i, r := range rows {
			_, c := cells(r)
			if c[0] != gws[i].ID || c[1] != gws[i].Agency || c[2] != gws[i].Status || c[3] != gws[i].OverlayIP.String() {
				t.Errorf("gateway row %q, JSON %+v", r, gws[i])
			}
		}
	})

	t.Run("merge: the preview is what the merge does", func(t *testing.T) {
		args := []string{"agency", "merge", "000.00.00.H01", "--into", "000.00.00.H29"}
		out := l.mustCtl("op", args...)
		if !strings.Contains(out, "preview only: nothing changed") || !strings.Contains(out, "--yes") {
			t.Fatalf("preview table:\n%s", out)
		}
		t.Logf("govnetctl %s\n%s", strings.Join(args, " "), out)
		var preview, done api.AgencyPlan
		l.asJSON(&preview, "op", args...)
		if !preview.DryRun || !slices.Equal(preview.Closed, []string{"000.00.00.H01"}) ||
			len(preview.Agencies) != 1 || preview.Agencies[0].Code != "000.00.04.H01" ||
			len(preview.Gateways) != 1 || preview.Gateways[0].Gateway != h01.id ||
			len(preview.PolicyRefs) != 1 || !strings.Contains(preview.PolicyRefs[0].What, "group h01: subtree") {
			t.Fatalf("preview %+v", preview)
		}
		var affected []string
		for _, g := range preview.Views.Gateways {
			affected = append(affected, g.Gateway)
		}
		if !slices.Equal(affected, []string{h01.id, h01c.id, h29.id}) {
			t.Fatalf("preview says views change for %v", affected)
		}
		var before []api.Agency
		l.asJSON(&before, "op", "agency", "list")
		if len(before) != 6 || before[2].Closed() {
			t.Fatalf("the preview changed the registry: %+v", before)
		}

		l.asJSON(&done, "op", append(args, "--yes")...)
		if done.DryRun || done.RaftIndex == 0 {
			t.Fatalf("merge %+v", done)
		}
		d := done
		d.RaftIndex = 0
		d.DryRun = true
		if !reflect.DeepEqual(d, preview) {
			t.Fatalf("the merge did something else than the preview:\n%+v\n%+v", done, preview)
		}
		// What the registry says now.
		var h01Show struct {
			api.Agency
			Children []api.Agency  `json:"children"`
			Gateways []api.Gateway `json:"gateways"`
		}
		l.asJSON(&h01Show, "op", "agency", "show", "000.00.00.H01")
		if !h01Show.Closed() || h01Show.MergedInto != "000.00.00.H29" || len(h01Show.Gateways) != 0 {
			t.Fatalf("H01 after the merge %+v", h01Show)
		}
		var ags []api.Agency
		l.asJSON(&ags, "op", "agency", "list")
		var closed, moved []string
		for i, a := range ags {
			if a.Closed() && !before[i].Closed() {
				closed = append(closed, a.Code)
			}
			if a.Parent != before[i].Parent {
				moved = append(moved, a.Code)
			}
		}
		if !slices.Equal(closed, done.Closed) || !slices.Equal(moved, []string{done.Agencies[0].Code}) {
			t.Fatalf("closed %v moved %v; plan %+v", closed, moved, done)
		}
		g, err := l.ctlctl("op", "gateway", "show", h01.id, "-o", "json")
		if err != nil || !strings.Contains(g, `"agency": "000.00.00.H29"`) {
			t.Fatalf("gateway after the merge: %v\n%s", err, g)
		}
		// Every affected gateway applies a view at or after the merge, and
		// packets follow the new hierarchy: H01's commune is in H29 now.
		eventually(t, 30*time.Second, "affected gateways apply the merged views", func() error {
			for _, g := range l.gateways() {
				if slices.Contains(affected, g.ID) && (g.Report == nil || g.Report.RaftIndex < done.RaftIndex || g.Ruleset != api.RulesetOK) {
					return fmt.Errorf("%s reports %+v (ruleset %s)", g.ID, g.Report, g.Ruleset)
				}
			}
			return nil
		})
		l.flows(h01c, h29, true, false)
		l.flows(h01c, h01, true, false)
		checkTreeTable(t, l)
		t.Logf("govnetctl agency tree 000.00.00.H29\n%s", l.mustCtl("op", "agency", "tree", "000.00.00.H29"))
	})

	t.Run("closed codes are never reused", func(t *testing.T) {
		out, err := l.ctlctl("op", "agency", "add", "000.00.00.H01", "--name", "Hà Nội")
		if err == nil || !strings.Contains(out, "closed codes are never reused") || !strings.Contains(out, "merged into 000.00.00.H29") {
			t.Fatalf("re-adding a closed code: %v\n%s", err, out)
		}
		out, err = l.ctlctl("op", "agency", "import", l.write("again.csv", "code,name\n000.00.00.H70,Mới\n000.00.00.H01,Hà Nội\n"))
		if err == nil || !strings.Contains(out, "again.csv:3: ") || !strings.Contains(out, "never reused") {
			t.Fatalf("importing a closed code: %v\n%s", err, out)
		}
		var ags []api.Agency
		l.asJSON(&ags, "op", "agency", "list", "--search", "H70")
		if len(ags) != 0 {
			t.Fatalf("a refused import registered %+v", ags)
		}
		// A policy that names the closed code still compiles, and the plan says so.
		f := l.write("policy.yaml", mergePolicy)
		var plan api.PolicyPlan
		l.asJSON(&plan, "op", "policy", "plan", f)
		if len(plan.ClosedRefs) != 1 || plan.ClosedRefs[0].Code != "000.00.00.H01" || plan.ClosedRefs[0].Where != "policy.yaml:4:18" {
			t.Fatalf("policy plan closed refs %+v", plan.ClosedRefs)
		}
		// Its rule on h01 allows nothing: the plan says that too.
		if len(plan.IdleRules) != 1 || plan.IdleRules[0].Rule != 2 || plan.IdleRules[0].Where != "policy.yaml:7:5" {
			t.Fatalf("policy plan idle rules %+v", plan.IdleRules)
		}
		if out := l.mustCtl("op", "policy", "plan", f); !strings.Contains(out, "note: policy.yaml:4:18: group h01: subtree names 000.00.00.H01, a closed agency code") ||
			!strings.Contains(out, "note: policy.yaml:7:5: rule 2 allows nothing now: no enrolled gateway in from or in to") {
			t.Fatalf("policy plan:\n%s", out)
		}
	})

	t.Run("close is refused while agencies remain under it", func(t *testing.T) {
		out, err := l.ctlctl("op", "agency", "close", "000.00.04.H01")
		if err == nil || !strings.Contains(out, "000.12.04.H01") || !strings.Contains(out, "reparent") {
			t.Fatalf("close: %v\n%s", err, out)
		}
		var plan api.AgencyPlan
		l.asJSON(&plan, "op", "agency", "reparent", "000.12.04.H01", "--parent", "000.00.00.H29", "--yes")
		if len(plan.Agencies) != 1 || plan.Agencies[0].From != "000.00.04.H01" {
			t.Fatalf("reparent %+v", plan)
		}
		var a api.Agency
		l.asJSON(&a, "op", "agency", "close", "000.00.04.H01")
		if !a.Closed() || a.MergedInto != "" {
			t.Fatalf("closed %+v", a)
		}
	})

	t.Run("decommission", func(t *testing.T) {
		var res api.RevokeResponse
		l.asJSON(&res, "off", "gateway", "decommission", h01.id, "--reason", "merged into H29")
		if len(res.Certificates) == 0 || res.Enforced == 0 {
			t.Fatalf("decommission %+v", res)
		}
		for _, c := range res.Certificates {
			if c.Status != api.CertRevoked || c.ReasonName != "cessationOfOperation" {
				t.Fatalf("certificate %+v", c)
			}
		}
		for _, g := range l.gateways() {
			if g.ID == h01.id && g.Status != api.StatusDecommissioned {
				t.Fatalf("%s is %s", g.ID, g.Status)
			}
		}
		eventually(t, 30*time.Second, "the peers apply views without "+h01.id, func() error {
			for _, g := range l.gateways() {
				if g.ID != h01.id && (g.Report == nil || g.Report.RaftIndex < res.RaftIndex) {
					return fmt.Errorf("%s reports %+v", g.ID, g.Report)
				}
			}
			return nil
		})
		l.flows(h01c, h01, false, false)
		l.flows(h01c, h29, true, false)
	})

	t.Run("help has examples", func(t *testing.T) {
		for _, c := range [][]string{{"agency", "add"}, {"agency", "list"}, {"agency", "import"}, {"agency", "tree"}, {"agency", "show"},
			{"agency", "merge"}, {"agency", "reparent"}, {"agency", "close"}, {"gateway", "decommission"}} {
			out := l.mustCtl("op", append(c, "--help")...)
			if !strings.Contains(out, "Examples:") {
				t.Errorf("govnetctl %s --help has no example:\n%s", strings.Join(c, " "), out)
			}
		}
	})
}

func checkListTable(t *testing.T, l *lab) {
	t.Helper()
	var ags []api.Agency
	l.asJSON(&ags, "op", "agency", "list")
	rows := l.table("op", "agency", "list")[1:]
	if len(rows) != len(ags) {
		t.Fatalf("agency list: %d rows, %d in JSON", len(rows), len(ags))
	}
	for i, r := range rows {
		_, c := cells(r)
		a := ags[i]
		if c[0] != a.Code || c[1] != a.Level || c[2] != dashed(a.Parent) || !strings.HasPrefix(c[3], a.Status) || c[4] != a.Name {
			t.Errorf("agency row %q, JSON %+v", r, a)
		}
	}
}

type tree struct {
	api.Agency
	Depth    int      `json:"depth"`
	Gateways []string `json:"gateways"`
	Children []*tree  `json:"children"`
}

func checkTreeTable(t *testing.T, l *lab) {
	t.Helper()
	var roots []*tree
	l.asJSON(&roots, "op", "agency", "tree")
	var flat []*tree
	var walk func([]*tree)
	walk = func(ns []*tree) {
		for _, n := range ns {
			flat = append(flat, n)
			walk(n.Children)
		}
	}
	walk(roots)
	rows := l.table("op", "agency", "tree")[1:]
	if len(rows) != len(flat) {
		t.Fatalf("agency tree: %d rows, %d in JSON", len(rows), len(flat))
	}
	for i, r := range rows {
		indent, c := cells(r)
		n := flat[i]
		if indent != 2*n.Depth || c[0] != n.Code || c[3] != dashed(strings.Join(n.Gateways, ",")) || c[4] != n.Name {
			t.Errorf("tree row %q, JSON %+v", r, n)
		}
	}
}

func checkShowTable(t *testing.T, l *lab, code string) {
	t.Helper()
	var d struct {
		api.Agency
		Children []api.Agency  `json:"children"`
		Gateways []api.Gateway `json:"gateways"`
	}
	l.asJSON(&d, "op", "agency", "show", code)
	rows := l.table("op", "agency", "show", code)
	var codes []string
	for _, r := range rows[1:] {
		if _, c := cells(r); strings.Contains(c[0], ".") {
			codes = append(codes, c[0])
		}
	}
	want := []string{d.Code}
	for _, c := range d.Children {
		want = append(want, c.Code)
	}
	if !slices.Equal(codes, want) || len(d.Children) == 0 {
		t.Errorf("agency show %s: table codes %v, JSON %v", code, codes, want)
	}
}

func dashed(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
