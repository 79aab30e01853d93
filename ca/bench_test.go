package ca

import (
	"context"
	"testing"
	"time"
)

// BenchmarkIssue measures in-process issuance through SoftHSM2: CSR
// check, profile, lint before sign (throwaway signature + zlint + govnet
// lints) and the HSM signature. It reports certs/s for `make bench`.
func BenchmarkIssue(b *testing.B) {
	c, _ := newCA(b)
	csr := csrFor(b, subjectKeys()["P-256"])
	p := GatewayProfile("gw-bench", "000.00.00.H29")
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		if _, err := c.Issue(ctx, csr, p); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "certs/s")
}

// BenchmarkIssueParallel is BenchmarkIssue from GOMAXPROCS goroutines
// sharing one CA (and the token's session pool).
func BenchmarkIssueParallel(b *testing.B) {
	c, _ := newCA(b)
	csr := csrFor(b, subjectKeys()["P-256"])
	p := GatewayProfile("gw-bench", "000.00.00.H29")
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Issue(ctx, csr, p); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "certs/s")
}

// BenchmarkLint is the pre-issuance lint alone (throwaway signature,
// parse, zlint, govnet lints), to see its share of issuance.
func BenchmarkLint(b *testing.B) {
	c, _ := newCA(b)
	chain, err := c.Issue(context.Background(), csrFor(b, subjectKeys()["P-256"]), GatewayProfile("gw-bench", "000.00.00.H29"))
	if err != nil {
		b.Fatal(err)
	}
	tmpl := *chain[0]
	start := time.Now()
	for b.Loop() {
		if err := c.linter.lintCertificate("bench", &tmpl, c.inter, tmpl.PublicKey, c.signer.Public()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "lints/s")
}
