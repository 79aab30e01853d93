package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"syscall"
	"testing"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
)

// BenchmarkIssue measures in-process issuance through SoftHSM2: CSR
// check, profile, lint before sign (pre-certificate + zlint + govnet
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

// BenchmarkIssueParallel is BenchmarkIssue from 4×GOMAXPROCS goroutines
// sharing one CA (and the token's session pool): more goroutines than
// CPUs, so that while one waits in the HSM (a cgo call) another lints,
// which is how a controller serving many gateways issues. It also
// reports the CPU time (user+system, all threads, SoftHSM2 included) per
// certificate, a figure that other load on the machine inflates less
// than the rate.
func BenchmarkIssueParallel(b *testing.B) {
	c, _ := newCA(b)
	csr := csrFor(b, subjectKeys()["P-256"])
	p := GatewayProfile("gw-bench", "000.00.00.H29")
	ctx := context.Background()
	b.SetParallelism(4)
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime(b)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Issue(ctx, csr, p); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "certs/s")
	b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-us/cert")
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLint is the pre-issuance lint alone (pre-certificate,
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
		if _, err := c.linter.lintCertificate("bench", &tmpl, c.inter, tmpl.PublicKey, c.signer.Public()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "lints/s")
}

// BenchmarkIssueParts measures the pieces of one issuance one by one, on
// one goroutine (docs/performance.md uses them to account for
// BenchmarkIssue): a CSR signature check (done once per issuance by the
// authority), an ECDSA P-256 verification and signature in Go, one
// SoftHSM2 signature, the pre-certificate (template marshalled by
// crypto/x509, the throwaway signature value set in), zcrypto's
// parse, zlint alone, and the whole lint (parse, zlint, govnet lints).
func BenchmarkIssueParts(b *testing.B) {
	c, _ := newCA(b)
	csr := csrFor(b, subjectKeys()["P-256"])
	chain, err := c.Issue(context.Background(), csr, GatewayProfile("gw-bench", "000.00.00.H29"))
	if err != nil {
		b.Fatal(err)
	}
	leaf := chain[0]
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d := sha256.Sum256([]byte("x"))
	sig, _ := k.Sign(rand.Reader, d[:], crypto.SHA256)
	b.Run("csr-verify", func(b *testing.B) {
		for b.Loop() {
			if err := csr.CheckSignature(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ecdsa-verify", func(b *testing.B) {
		for b.Loop() {
			ecdsa.VerifyASN1(&k.PublicKey, d[:], sig)
		}
	})
	b.Run("ecdsa-sign", func(b *testing.B) {
		for b.Loop() {
			k.Sign(rand.Reader, d[:], crypto.SHA256)
		}
	})
	b.Run("hsm-sign", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.signer.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
				b.Fatal(err)
			}
		}
	})
	tmpl := *leaf
	b.Run("precert", func(b *testing.B) {
		for b.Loop() {
			if _, err := precertificate(&tmpl, c.inter, tmpl.PublicKey, c.signer.Public()); err != nil {
				b.Fatal(err)
			}
		}
	})
	reg, _ := lintRegistry()
	b.Run("zcrypto-parse", func(b *testing.B) {
		for b.Loop() {
			zx509.ParseCertificate(leaf.Raw)
		}
	})
	zc, _ := zx509.ParseCertificate(leaf.Raw)
	b.Run("zlint", func(b *testing.B) {
		for b.Loop() {
			zlint.LintCertificateEx(zc, reg)
		}
	})
	b.Run("lint", func(b *testing.B) {
		for b.Loop() {
			if fs := c.linter.Certificate(leaf.Raw); len(fs) > 0 {
				b.Fatal(fs)
			}
		}
	})
}
