// Package smallkey finds ECDSA public keys whose private scalar d is tiny,
// 1 ≤ d ≤ Max or its negation n-Max ≤ d ≤ n-1, with one lookup in a table
// of the X coordinates of j·G for every j in 1..Max. It backs the CA's
// lint e_govnet_ecdsa_small_private_key, which replaces zlint's
// e_ecdsa_small_private_key (Bits=16, the same keys): zlint's
// baby-step giant-step search costs ~16 affine point additions, ~140 µs,
// per certificate; the lookup is a binary search.
//
// Building a table costs 0.44 s (P-256) and 1.8 s (P-384) of CPU with
// crypto/elliptic's Add (13 s under the race detector for P-384), 0.3 and
// 0.55 s with Build's arithmetic: too much for every process that
// issues, so the tables are built once (go generate in ca/) and embedded.
package smallkey

import (
	"bytes"
	"cmp"
	"crypto/ecdh"
	"crypto/elliptic"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sort"
)

// Max is the largest d looked for: 2^16, as zlint's lint by default.
const Max = 1 << 16

// The table format. A table of n entries (Max in a generated table) is
//
//	n keys    8 bytes each, big-endian, ascending: the low 64 bits of the
//	          affine X coordinate of j·G (the last 8 bytes of X as SEC 1
//	          encodes it)
//	n logs    2 bytes each, big-endian: j-1 for the key at the same index
//
// −j·G has the same X as j·G, so one entry covers both d = j and d = n−j.
// Entries with equal keys (none in the generated tables, and unlikely:
// ~2^32 pairs among 2^64 values) are sorted by j and all tried.
const (
	keySize   = 8
	logSize   = 2
	entrySize = keySize + logSize
	// Size is the size of a generated table: 640 KiB.
	Size = Max * entrySize
)

// Build returns the table of curve (P-256 or P-384) for j = 1..Max.
func Build(curve elliptic.Curve) ([]byte, error) {
	dh, err := ecdhCurve(curve)
	if err != nil {
		return nil, err
	}
	params := curve.Params()
	byteLen := (params.BitSize + 7) / 8
	xs := make([][]byte, Max) // xs[j-1] is the X of j·G
	xs[0] = params.Gx.FillBytes(make([]byte, byteLen))
	two, err := point(dh, byteLen, 2)
	if err != nil {
		return nil, err
	}
	x := new(big.Int).SetBytes(two[1 : 1+byteLen])
	y := new(big.Int).SetBytes(two[1+byteLen:])
	// (x, y) is j·G. Adding G by the affine chord rule costs one field
	// inversion with math/big: a third of crypto/elliptic's Add for P-384,
	// a seventh under the race detector. x ≠ Gx, as j·G ≠ ±G for
	// 2 ≤ j < Max.
	p, gx, gy := params.P, params.Gx, params.Gy
	lambda, t := new(big.Int), new(big.Int)
	for j := 2; ; j++ {
		xs[j-1] = x.FillBytes(make([]byte, byteLen))
		if j == Max {
			break
		}
		// λ = (y − Gy) / (x − Gx), x' = λ² − x − Gx, y' = λ(x − x') − y.
		lambda.ModInverse(t.Sub(x, gx), p)
		lambda.Mul(lambda, t.Sub(y, gy)).Mod(lambda, p)
		x2 := new(big.Int).Mul(lambda, lambda)
		x2.Sub(x2, x).Sub(x2, gx).Mod(x2, p)
		y2 := new(big.Int).Mul(lambda, t.Sub(x, x2))
		x, y = x2, y2.Sub(y2, y).Mod(y2, p)
	}
	// Any slip in the arithmetic would carry on to the last point.
	last, err := point(dh, byteLen, Max)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(xs[Max-1], last[1:1+byteLen]) {
		return nil, fmt.Errorf("%s: %d·G by additions is not %d·G", params.Name, Max, Max)
	}

	type entry struct {
		key uint64
		j   int
	}
	entries := make([]entry, Max)
	for i, x := range xs {
		entries[i] = entry{key: low64(x), j: i + 1}
	}
	slices.SortFunc(entries, func(a, b entry) int {
		return cmp.Or(cmp.Compare(a.key, b.key), cmp.Compare(a.j, b.j))
	})
	table := make([]byte, Size)
	logs := table[Max*keySize:]
	for i, e := range entries {
		binary.BigEndian.PutUint64(table[i*keySize:], e.key)
		binary.BigEndian.PutUint16(logs[i*logSize:], uint16(e.j-1))
	}
	return table, nil
}

func ecdhCurve(curve elliptic.Curve) (ecdh.Curve, error) {
	switch curve {
	case elliptic.P256():
		return ecdh.P256(), nil
	case elliptic.P384():
		return ecdh.P384(), nil
	}
	return nil, fmt.Errorf("curve %s has no table", curve.Params().Name)
}

// point returns j·G, SEC 1 uncompressed, for 1 ≤ j < 2^32; byteLen is
// the curve's scalar size.
func point(dh ecdh.Curve, byteLen, j int) ([]byte, error) {
	scalar := make([]byte, byteLen)
	binary.BigEndian.PutUint32(scalar[byteLen-4:], uint32(j))
	k, err := dh.NewPrivateKey(scalar)
	if err != nil {
		return nil, err
	}
	return k.PublicKey().Bytes(), nil
}

func low64(x []byte) uint64 { return binary.BigEndian.Uint64(x[len(x)-keySize:]) }

// Find returns d, 1 ≤ d ≤ the table's largest j, such that pub is d·G or
// −d·G, or 0 if there is none. table is curve's (Build's format); pub is
// a valid point of curve, SEC 1 uncompressed (ecdsa.PublicKey.Bytes). A
// key match is only a candidate: it is confirmed by computing d·G.
func Find(curve elliptic.Curve, table, pub []byte) (int, error) {
	dh, err := ecdhCurve(curve)
	if err != nil {
		return 0, err
	}
	byteLen := (curve.Params().BitSize + 7) / 8
	if len(pub) != 1+2*byteLen || pub[0] != 4 {
		return 0, errors.New("not an uncompressed point")
	}
	if len(table)%entrySize != 0 {
		return 0, fmt.Errorf("table of %d bytes", len(table))
	}
	x := pub[1 : 1+byteLen]
	n := len(table) / entrySize
	key := low64(x)
	keyAt := func(i int) uint64 { return binary.BigEndian.Uint64(table[i*keySize:]) }
	for i := sort.Search(n, func(i int) bool { return keyAt(i) >= key }); i < n && keyAt(i) == key; i++ {
		j := int(binary.BigEndian.Uint16(table[n*keySize+i*logSize:])) + 1
		// Two points of the curve with the same X are P and −P: the
		// full X of j·G confirms pub = ±j·G.
		candidate, err := point(dh, byteLen, j)
		if err != nil {
			return 0, err
		}
		if bytes.Equal(candidate[1:1+byteLen], x) {
			return j, nil
		}
	}
	return 0, nil
}
