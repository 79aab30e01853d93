package main

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// A result is one benchmark result line of `go test -bench` output.
type result struct {
	pkg   string // import path, from the preceding "pkg:" line
	name  string // without the -GOMAXPROCS suffix
	iters int64
	// metrics in the order printed, e.g. ns/op, then b.ReportMetric's.
	metrics []metric
}

type metric struct {
	value float64
	unit  string
}

// benchOutput is what one or more `go test -bench` runs printed.
type benchOutput struct {
	results  []result
	failures []string // lines that mean a benchmark or package failed
	skipped  []string // "--- SKIP: Benchmark..." lines
	load     []string // "load average: ..." lines (from uptime)
}

var (
	// BenchmarkName-2    12    345 ns/op    6.7 ms/apply
	resultRE = regexp.MustCompile(`^(Benchmark\S+)\s+(\d+)\s+(\S+\s+\S+.*)$`)
	// A name printed alone (output written while the benchmark ran pushed
	// its results to a later line).
	nameOnlyRE = regexp.MustCompile(`^(Benchmark\S+)\s*$`)
	// The results of such a benchmark, on a line of their own.
	valuesOnlyRE = regexp.MustCompile(`^\s*(\d+)\s+(\S+\s+\S+/\S+.*)$`)
	procsRE      = regexp.MustCompile(`-\d+$`)
)

// parse reads `go test -bench` text output (several runs may be
// concatenated). Sub-benchmark names must not end in -<digits>: that
// suffix is taken for GOMAXPROCS and removed.
func parse(r io.Reader) (*benchOutput, error) {
	out := &benchOutput{}
	pkg := ""
	pending := "" // a benchmark name whose results have not been printed yet
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), " \t\r")
		switch {
		case strings.HasPrefix(line, "pkg: "):
			pkg = strings.TrimSpace(strings.TrimPrefix(line, "pkg: "))
			continue
		case strings.HasPrefix(line, "--- FAIL:"), strings.HasPrefix(line, "FAIL"),
			strings.HasPrefix(line, "panic:"), strings.Contains(line, "[build failed]"),
			strings.Contains(line, "[setup failed]"):
			out.failures = append(out.failures, line)
			continue
		case strings.HasPrefix(line, "--- SKIP: Benchmark"):
			out.skipped = append(out.skipped, line)
			continue
		case strings.Contains(line, "load average:"):
			out.load = append(out.load, strings.TrimSpace(line))
			continue
		}
		name, iters, values := "", "", ""
		if m := resultRE.FindStringSubmatch(line); m != nil {
			name, iters, values = m[1], m[2], m[3]
		} else if m := nameOnlyRE.FindStringSubmatch(line); m != nil {
			pending = m[1]
			continue
		} else if m := valuesOnlyRE.FindStringSubmatch(line); m != nil && pending != "" {
			name, iters, values = pending, m[1], m[2]
		} else {
			continue
		}
		pending = ""
		res, err := parseResult(pkg, name, iters, values)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", line, err)
		}
		out.results = append(out.results, res)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

func parseResult(pkg, name, iters, values string) (result, error) {
	res := result{pkg: pkg, name: procsRE.ReplaceAllString(name, "")}
	var err error
	if res.iters, err = strconv.ParseInt(iters, 10, 64); err != nil {
		return result{}, fmt.Errorf("iterations: %w", err)
	}
	f := strings.Fields(values)
	if len(f)%2 != 0 {
		return result{}, fmt.Errorf("odd number of value/unit fields")
	}
	for i := 0; i < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return result{}, fmt.Errorf("value %q: %w", f[i], err)
		}
		res.metrics = append(res.metrics, metric{value: v, unit: f[i+1]})
	}
	return res, nil
}
