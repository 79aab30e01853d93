package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	_ "embed"
	"fmt"

	"github.com/govnet/govnet/ca/internal/smallkey"
)

// The lint e_govnet_ecdsa_small_private_key refuses an ECDSA subject key
// whose private scalar d is 1..2^16 or its negation n-2^16..n-1: anyone
// can compute such a d from the public key. It finds exactly the keys
// zlint's e_ecdsa_small_private_key finds with its default Bits=16, which
// it replaces (see LintExclusions): zlint's search costs ~16 affine point
// additions, ~140 µs (41% of zlint, ~14% of an issuance's CPU), per
// certificate; this is one binary search in a table of the X coordinates
// of j·G for every j in 1..2^16 (package smallkey). Building the tables
// at run time would cost every process 0.9 to 2.2 s of CPU (13 s under
// the race detector with crypto/elliptic), so gen_smallkeys.go writes
// them once and they are embedded (640 KiB each).
//
// Only P-256 and P-384 have a table: they are the only curves govnet
// issues for. A key on another curve (P-521) never reaches the lints
// from Issue or NewIntermediate, which refuse it first, and from NewRoot
// or Linter.Certificate its certificate is refused by
// e_govnet_subject_key whatever its private scalar (zlint's lint, which
// searched any named curve, added a second finding at most).

//go:generate go run gen_smallkeys.go

var (
	//go:embed smallkeys_p256.bin
	smallKeysP256 []byte
	//go:embed smallkeys_p384.bin
	smallKeysP384 []byte
)

// smallKeyTable returns the embedded table of curve, nil if it has none.
func smallKeyTable(curve elliptic.Curve) []byte {
	switch curve {
	case elliptic.P256():
		return smallKeysP256
	case elliptic.P384():
		return smallKeysP384
	}
	return nil
}

// smallKeyApplies says whether e_govnet_ecdsa_small_private_key concerns
// c: every certificate, CA or leaf, for an ECDSA P-256 or P-384 key.
func smallKeyApplies(c *x509.Certificate, _ Identity) bool {
	k, ok := c.PublicKey.(*ecdsa.PublicKey)
	return ok && smallKeyTable(k.Curve) != nil
}

// checkSmallKey is e_govnet_ecdsa_small_private_key's check. A key that
// cannot be searched fails rather than passes unsearched.
func checkSmallKey(_ *Linter, c *x509.Certificate, _ Identity) string {
	k := c.PublicKey.(*ecdsa.PublicKey)
	table := smallKeyTable(k.Curve)
	if len(table) != smallkey.Size {
		return fmt.Sprintf("cannot search: the %s table is %d bytes, want %d", k.Curve.Params().Name, len(table), smallkey.Size)
	}
	pub, err := k.Bytes()
	if err != nil {
		return "cannot search: " + err.Error()
	}
	d, err := smallkey.Find(k.Curve, table, pub)
	switch {
	case err != nil:
		return "cannot search: " + err.Error()
	case d > 0:
		return fmt.Sprintf("the ECDSA private key is %d, or its negation modulo the group order, and so can be trivially recovered by anyone", d)
	}
	return ""
}
