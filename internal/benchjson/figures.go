package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// A rule maps benchmark results to one named figure of bench-results.json.
type rule struct {
	name     string // e.g. nft.apply_ms_10000
	pkg      string // package path relative to the module ("netagent"), or a full import path
	bench    string // benchmark name, a path.Match pattern ("BenchmarkX/path=*")
	unit     string // e.g. ms/apply
	agg      string // median (default), max or min over all matching values
	op       string // "<=" or ">=" if the figure has a target
	target   float64
	optional bool // no matching result is not an error
	line     int
}

// parseRules reads a map file: one rule per line,
//
//	name  package  benchmark  unit  [median|max|min]  [<=N|>=N]  [optional]
//
// with # comments.
func parseRules(r io.Reader) ([]rule, error) {
	var rules []rule
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 4 {
			return nil, fmt.Errorf("line %d: want name, package, benchmark and unit, got %q", n, line)
		}
		ru := rule{name: f[0], pkg: f[1], bench: f[2], unit: f[3], agg: "median", line: n}
		if _, err := path.Match(ru.bench, ""); err != nil {
			return nil, fmt.Errorf("line %d: benchmark pattern %q: %w", n, ru.bench, err)
		}
		if seen[ru.name] {
			return nil, fmt.Errorf("line %d: figure %s mapped twice", n, ru.name)
		}
		seen[ru.name] = true
		for _, opt := range f[4:] {
			switch {
			case opt == "median" || opt == "max" || opt == "min":
				ru.agg = opt
			case opt == "optional":
				ru.optional = true
			case strings.HasPrefix(opt, "<=") || strings.HasPrefix(opt, ">="):
				v, err := strconv.ParseFloat(opt[2:], 64)
				if err != nil {
					return nil, fmt.Errorf("line %d: target %q: %w", n, opt, err)
				}
				ru.op, ru.target = opt[:2], v
			default:
				return nil, fmt.Errorf("line %d: unknown option %q", n, opt)
			}
		}
		rules = append(rules, ru)
	}
	return rules, sc.Err()
}

func (ru rule) matches(r result) bool {
	if r.pkg != ru.pkg && !strings.HasSuffix(r.pkg, "/"+ru.pkg) {
		return false
	}
	ok, _ := path.Match(ru.bench, r.name)
	return ok
}

// A figure is a rule's value in this run.
type figure struct {
	rule
	value float64
	n     int // values aggregated
}

func (f figure) status() string {
	switch {
	case f.op == "":
		return ""
	case f.op == "<=" && f.value <= f.target, f.op == ">=" && f.value >= f.target:
		return "ok"
	}
	return "MISSED"
}

// figures applies rules to the run. It returns the figures found and an
// error for every required figure without a result.
func figures(rules []rule, r *benchOutput) ([]figure, error) {
	var out []figure
	var errs []error
	for _, ru := range rules {
		var vals []float64
		for _, res := range r.results {
			if !ru.matches(res) {
				continue
			}
			for _, m := range res.metrics {
				if m.unit == ru.unit {
					vals = append(vals, m.value)
				}
			}
		}
		if len(vals) == 0 {
			if !ru.optional {
				errs = append(errs, fmt.Errorf("%s: no result for %s %s in %s", ru.name, ru.bench, ru.unit, ru.pkg))
			}
			continue
		}
		out = append(out, figure{rule: ru, value: aggregate(ru.agg, vals), n: len(vals)})
	}
	return out, errors.Join(errs...)
}

func aggregate(how string, vals []float64) float64 {
	slices.Sort(vals)
	switch how {
	case "max":
		return vals[len(vals)-1]
	case "min":
		return vals[0]
	}
	m := len(vals) / 2
	if len(vals)%2 == 1 {
		return vals[m]
	}
	return (vals[m-1] + vals[m]) / 2
}

// unmapped lists benchmarks that no rule matches but that report a rate
// or a time in milliseconds: candidates for the map file.
func unmapped(rules []rule, r *benchOutput) []string {
	var out []string
	for _, res := range r.results {
		if slices.ContainsFunc(rules, func(ru rule) bool { return ru.matches(res) }) {
			continue
		}
		for _, m := range res.metrics {
			if strings.HasSuffix(m.unit, "/s") || strings.HasSuffix(m.unit, "ms") || strings.HasPrefix(m.unit, "ms/") {
				out = append(out, fmt.Sprintf("%s %s (%s)", res.pkg, res.name, m.unit))
			}
		}
	}
	return slices.Compact(out)
}

// round keeps four significant digits (and every integer digit).
func round(v float64) float64 {
	if v == 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return v
	}
	d := 4 - int(math.Floor(math.Log10(math.Abs(v)))+1)
	if d <= 0 {
		return math.Round(v)
	}
	p := math.Pow(10, float64(d))
	return math.Round(v*p) / p
}

// merge writes figs into the flat JSON object in file, keeping every other
// entry it holds (other harnesses write there too). The file is replaced
// atomically.
func merge(file string, figs []figure) error {
	all := map[string]json.RawMessage{}
	switch b, err := os.ReadFile(file); {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err
	default:
		if err := json.Unmarshal(b, &all); err != nil {
			return fmt.Errorf("%s: %w (not overwritten)", file, err)
		}
	}
	for _, f := range figs {
		b, err := json.Marshal(round(f.value))
		if err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
		all[f.name] = b
	}
	b, err := json.MarshalIndent(all, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), ".bench-results-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename: already gone
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

// printTable writes the figures as an aligned table.
func printTable(w io.Writer, figs []figure) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tvalue\tunit\ttarget\t\tfrom")
	for _, f := range figs {
		target := "-"
		if f.op != "" {
			target = f.op + strconv.FormatFloat(f.target, 'g', -1, 64)
		}
		from := f.pkg + " " + f.bench
		if f.n > 1 {
			from += fmt.Sprintf(" (%s of %d)", f.agg, f.n)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", f.name,
			strconv.FormatFloat(round(f.value), 'f', -1, 64), f.unit, target, f.status(), from)
	}
	return tw.Flush()
}
