// Command benchjson turns `go test -bench` output into the figures of
// bench-results.json, the flat JSON object (name → number) that
// `make bench` and other benchmark harnesses write at the repository root.
//
//	benchjson -map internal/benchjson/results.map -out bench-results.json bench.log...
//
// The map file names each figure and says which benchmark, package and
// unit (a b.ReportMetric unit, or ns/op) it comes from, how to combine
// several matching values (median by default: -count repeats, patterns
// such as BenchmarkX/path=*), and optionally its target (<=N or >=N) and
// whether it may be absent. Figures are merged into the output file:
// entries other harnesses wrote are kept. It prints the figures as a table
// with their targets.
//
// It exits with status 1 if the output shows a failed benchmark or
// package, or a figure that is not optional has no result (a skipped or
// missing benchmark); the figures that were found are still written. A
// missed target is reported in the table but is not an error.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

func main() {
	mapFile := flag.String("map", "internal/benchjson/results.map", "figure map `file`")
	out := flag.String("out", "bench-results.json", "JSON `file` to merge the figures into")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: benchjson [-map file] [-out file] [go-test-output...]\n(standard input if no file is given)\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if err := run(*mapFile, *out, flag.Args(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchjson:", err)
		os.Exit(1)
	}
}

func run(mapFile, out string, inputs []string, stdout io.Writer) error {
	mf, err := os.Open(mapFile)
	if err != nil {
		return err
	}
	rules, err := parseRules(mf)
	mf.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", mapFile, err)
	}

	var r io.Reader = os.Stdin
	if len(inputs) > 0 {
		var readers []io.Reader
		for _, in := range inputs {
			f, err := os.Open(in)
			if err != nil {
				return err
			}
			defer f.Close()
			readers = append(readers, f)
		}
		r = io.MultiReader(readers...)
	}
	res, err := parse(r)
	if err != nil {
		return err
	}

	figs, missing := figures(rules, res)
	var errs []error
	if len(res.failures) > 0 {
		errs = append(errs, fmt.Errorf("benchmark failures:\n  %s", strings.Join(res.failures, "\n  ")))
	}
	if missing != nil {
		errs = append(errs, missing)
	}
	for _, s := range res.skipped {
		fmt.Fprintln(os.Stderr, "benchjson: skipped:", strings.TrimPrefix(s, "--- SKIP: "))
	}
	for _, u := range unmapped(rules, res) {
		fmt.Fprintln(os.Stderr, "benchjson: not in the map file:", u)
	}
	if len(figs) > 0 {
		if err := merge(out, figs); err != nil {
			errs = append(errs, fmt.Errorf("write %s: %w", out, err))
		}
	}

	fmt.Fprintln(stdout)
	for _, l := range res.load {
		fmt.Fprintln(stdout, "uptime:", l)
	}
	if err := printTable(stdout, figs); err != nil {
		return err
	}
	if len(figs) > 0 {
		fmt.Fprintf(stdout, "%d figures merged into %s\n", len(figs), out)
	}
	return errors.Join(errs...)
}
