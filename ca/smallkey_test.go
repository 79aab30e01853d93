package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/ca/internal/smallkey"
	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3/lint"
)

// raceEnabled is set by race_test.go under the race detector.
var raceEnabled bool

// The embedded tables are what gen_smallkeys.go writes. Building both
// takes ~0.9 s of CPU, ~4 s under the race detector, so with -short or
// -race P-384's is only checked at random.
func TestSmallKeyTables(t *testing.T) {
	for _, curve := range []elliptic.Curve{elliptic.P256(), elliptic.P384()} {
		t.Run(curve.Params().Name, func(t *testing.T) {
			table := smallKeyTable(curve)
			if len(table) != smallkey.Size {
				t.Fatalf("%d bytes, want %d", len(table), smallkey.Size)
			}
			keys, logs := table[:smallkey.Max*8], table[smallkey.Max*8:]
			key := func(i int) uint64 { return binary.BigEndian.Uint64(keys[8*i:]) }
			j := func(i int) int { return int(binary.BigEndian.Uint16(logs[2*i:])) + 1 }
			// Sorted, and every j once.
			seen := make([]bool, smallkey.Max+1)
			dups := 0
			for i := range smallkey.Max {
				if seen[j(i)] {
					t.Fatalf("j=%d twice", j(i))
				}
				seen[j(i)] = true
				if i > 0 && key(i) <= key(i-1) {
					if key(i) < key(i-1) || j(i) < j(i-1) {
						t.Fatalf("entry %d out of order", i)
					}
					dups++
				}
			}
			if dups > 0 {
				t.Logf("%d duplicate keys", dups)
			}
			// Entries at random against crypto/ecdsa's arithmetic.
			for range 300 {
				i := mrand.IntN(smallkey.Max)
				if x := xOf(t, curve, big.NewInt(int64(j(i)))); binary.BigEndian.Uint64(x[len(x)-8:]) != key(i) {
					t.Fatalf("entry %d: j=%d, key %x, want the low 64 bits of %x", i, j(i), key(i), x)
				}
			}
			if curve == elliptic.P384() && (testing.Short() || raceEnabled) {
				return
			}
			built, err := smallkey.Build(curve)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(table, built) {
				t.Fatal("the embedded table is not what gen_smallkeys.go writes: run go generate ./ca")
			}
		})
	}
}

// xOf returns the X coordinate of d·G.
func xOf(t *testing.T, curve elliptic.Curve, d *big.Int) []byte {
	t.Helper()
	pub, err := smallKeyFor(t, curve, d).PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return pub[1 : 1+len(pub)/2]
}

// smallKeyFor returns the key whose private scalar is d.
func smallKeyFor(t testing.TB, curve elliptic.Curve, d *big.Int) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.ParseRawPrivateKey(curve, d.FillBytes(make([]byte, (curve.Params().BitSize+7)/8)))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// smallKeyLint is e_govnet_ecdsa_small_private_key.
func smallKeyLint(t testing.TB) GovnetLint {
	t.Helper()
	i := slices.IndexFunc(GovnetLints, func(g GovnetLint) bool { return g.Name == "e_govnet_ecdsa_small_private_key" })
	if i < 0 {
		t.Fatal("e_govnet_ecdsa_small_private_key is not in GovnetLints")
	}
	return GovnetLints[i]
}

// The govnet lint refuses exactly the keys zlint's e_ecdsa_small_private_key
// (Bits=16) refuses, with the same details; zlint's is not run.
func TestSmallKeyLintAgreesWithZlint(t *testing.T) {
	names, err := ZlintNames()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(names, "e_ecdsa_small_private_key") {
		t.Error("zlint's e_ecdsa_small_private_key still runs")
	}
	zl := lint.GlobalRegistry().CertificateLints().ByName("e_ecdsa_small_private_key")
	if zl == nil {
		t.Fatal("zlint has no e_ecdsa_small_private_key")
	}
	ours := smallKeyLint(t)
	issuer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "small"},
		NotBefore:    time.Now(),
		NotAfter:     time.Now().Add(time.Hour),
	}
	for _, curve := range []elliptic.Curve{elliptic.P256(), elliptic.P384()} {
		n := curve.Params().N
		neg := func(d int64) *big.Int { return new(big.Int).Sub(n, big.NewInt(d)) }
		type keyCase struct {
			name  string
			d     *big.Int
			small int64 // what the details name, 0: passes
		}
		cases := []keyCase{
			{"1", big.NewInt(1), 1},
			{"2", big.NewInt(2), 2},
			{"3", big.NewInt(3), 3},
			{"8193", big.NewInt(8193), 8193},    // zlint's giant step
			{"57351", big.NewInt(57351), 57351}, // 7 giant steps: zlint meets the point at infinity
			{"65535", big.NewInt(65535), 65535},
			{"65536", big.NewInt(65536), 65536},
			{"n-1", neg(1), 1},
			{"n-57351", neg(57351), 57351},
			{"n-65536", neg(65536), 65536},
			{"65537", big.NewInt(65537), 0},
			{"n-65537", neg(65537), 0},
			{"2^32", big.NewInt(1 << 32), 0},
		}
		for range 3 {
			d := mrand.Int64N(smallkey.Max) + 1
			cases = append(cases, keyCase{fmt.Sprint(d), big.NewInt(d), d}, keyCase{fmt.Sprint("n-", d), neg(d), d})
		}
		for range 4 {
			k, _ := ecdsa.GenerateKey(curve, rand.Reader)
			d := new(big.Int).SetBytes(must(k.Bytes()))
			cases = append(cases, keyCase{"random", d, 0})
		}
		for _, tt := range cases {
			t.Run(curve.Params().Name+"/"+tt.name, func(t *testing.T) {
				der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &smallKeyFor(t, curve, tt.d).PublicKey, issuer)
				if err != nil {
					t.Fatal(err)
				}
				c, err := x509.ParseCertificate(der)
				if err != nil {
					t.Fatal(err)
				}
				zc, err := zx509.ParseCertificate(der)
				if err != nil {
					t.Fatal(err)
				}
				if !ours.Applies(c, Identity{}) {
					t.Fatal("the govnet lint does not apply")
				}
				got := ours.Check(nil, c, Identity{})
				zr := zl.Execute(zc, lint.NewEmptyConfig())
				switch {
				case tt.small == 0 && got != "":
					t.Fatalf("refused: %s", got)
				case tt.small != 0 && !strings.Contains(got, fmt.Sprintf(" is %d,", tt.small)):
					t.Fatalf("got %q, want it to name %d", got, tt.small)
				}
				wantStatus := lint.Pass
				if got != "" {
					wantStatus = lint.Error
				}
				if zr.Status != wantStatus || zr.Details != got {
					t.Fatalf("zlint says %v %q, govnet %v %q", zr.Status, zr.Details, wantStatus, got)
				}
			})
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// Equal keys in a table are all tried, and a key that matches is only
// a candidate.
func TestSmallKeyFindEqualKeys(t *testing.T) {
	curve := elliptic.P256()
	pub5 := must(smallKeyFor(t, curve, big.NewInt(5)).PublicKey.Bytes())
	x5 := pub5[1:33]
	key5 := binary.BigEndian.Uint64(x5[24:])
	table := func(entries ...[2]uint64) []byte { // key, j
		b := make([]byte, 10*len(entries))
		for i, e := range entries {
			binary.BigEndian.PutUint64(b[8*i:], e[0])
			binary.BigEndian.PutUint16(b[8*len(entries)+2*i:], uint16(e[1]-1))
		}
		return b
	}
	for _, tt := range []struct {
		name  string
		table []byte
		want  int
	}{
		{"alone", table([2]uint64{key5, 5}), 5},
		{"after a false candidate", table([2]uint64{key5 - 1, 9}, [2]uint64{key5, 3}, [2]uint64{key5, 4}, [2]uint64{key5, 5}, [2]uint64{key5 + 1, 6}), 5},
		{"only false candidates", table([2]uint64{key5, 3}, [2]uint64{key5, 4}, [2]uint64{key5 + 1, 5}), 0},
	} {
		if got, err := smallkey.Find(curve, tt.table, pub5); err != nil || got != tt.want {
			t.Errorf("%s: got %d, %v; want %d", tt.name, got, err, tt.want)
		}
	}
	// −5·G too.
	neg := must(smallKeyFor(t, curve, new(big.Int).Sub(curve.Params().N, big.NewInt(5))).PublicKey.Bytes())
	if got, _ := smallkey.Find(curve, table([2]uint64{key5, 3}, [2]uint64{key5, 5}), neg); got != 5 {
		t.Errorf("-5G: got %d", got)
	}
	if _, err := smallkey.Find(elliptic.P521(), smallKeysP256, pub5); err == nil {
		t.Error("P-521 searched")
	}
}

// A root, intermediate or leaf certificate for a small key is refused
// before anything signs it, naming the lint and d.
func TestLintBlocksSmallKey(t *testing.T) {
	p256, p384 := elliptic.P256(), elliptic.P384()
	var le *LintError
	wantBlocked := func(t *testing.T, err error, d int) {
		t.Helper()
		const name = "e_govnet_ecdsa_small_private_key"
		if !errors.As(err, &le) || !slices.Contains(le.Lints(), name) || !strings.Contains(err.Error(), name) ||
			!strings.Contains(err.Error(), fmt.Sprintf("private key is %d,", d)) {
			t.Fatalf("got %v, want a *LintError naming %s and %d", err, name, d)
		}
		t.Log(err)
	}
	t.Run("root", func(t *testing.T) {
		_, err := NewRoot(smallKeyFor(t, p384, big.NewInt(1)), "small root", time.Now())
		wantBlocked(t, err, 1)
	})
	t.Run("intermediate", func(t *testing.T) {
		rootKey, _ := ecdsa.GenerateKey(p384, rand.Reader)
		root, err := NewRoot(rootKey, "root", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		small := smallKeyFor(t, p256, new(big.Int).Sub(p256.Params().N, big.NewInt(65536)))
		_, err = NewIntermediate(root, rootKey, small.Public(), "small intermediate", time.Now())
		wantBlocked(t, err, 65536)
	})
	t.Run("leaf", func(t *testing.T) {
		c, tok := newCA(t)
		counter := &countingSigner{Signer: mustSigner(t, tok, "intermediate")}
		c2, err := New(c.Root(), c.Intermediate(), counter)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []struct {
			curve elliptic.Curve
			d     *big.Int
			small int
		}{
			{p256, big.NewInt(65536), 65536},
			{p384, new(big.Int).Sub(p384.Params().N, big.NewInt(2)), 2},
		} {
			_, err := c2.Issue(context.Background(), csrFor(t, smallKeyFor(t, k.curve, k.d)), GatewayProfile("gw-1", "000.00.00.H29"))
			wantBlocked(t, err, k.small)
		}
		if n := counter.n.Load(); n != 0 {
			t.Fatalf("the HSM signed %d times for blocked certificates", n)
		}
	})
}

// BenchmarkSmallKeyLint is the small-key lint on a certificate for a
// random key: govnet's table lookup against zlint's search.
func BenchmarkSmallKeyLint(b *testing.B) {
	issuer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	zl := lint.GlobalRegistry().CertificateLints().ByName("e_ecdsa_small_private_key")
	ours := smallKeyLint(b)
	for _, curve := range []elliptic.Curve{elliptic.P256(), elliptic.P384()} {
		k, _ := ecdsa.GenerateKey(curve, rand.Reader)
		der := must(x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, issuer))
		c, zc := must(x509.ParseCertificate(der)), must(zx509.ParseCertificate(der))
		b.Run(curve.Params().Name+"/govnet", func(b *testing.B) {
			for b.Loop() {
				if ours.Check(nil, c, Identity{}) != "" {
					b.Fatal("refused")
				}
			}
		})
		b.Run(curve.Params().Name+"/zlint", func(b *testing.B) {
			zl.Execute(zc, lint.NewEmptyConfig()) // the one-time table
			for b.Loop() {
				if zl.Execute(zc, lint.NewEmptyConfig()).Status != lint.Pass {
					b.Fatal("refused")
				}
			}
		})
	}
}
