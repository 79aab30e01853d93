package ca

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/govnet/govnet/internal/atomicfile"
)

// RootCRLStateFile, in the ceremony directory, records what the root has
// revoked and the number of its last CRL, so that each new root CRL lists
// every earlier revocation and numbers increase.
const RootCRLStateFile = "root-crl.json"

// RootCRLFile, in the ceremony directory, is the last root CRL signed
// (DER). It is the authority on what the root has revoked: a record
// (RootCRLStateFile) that lost any of its serials, or its number, is
// refused, and a record that is gone is rebuilt from it.
const RootCRLFile = "root.crl"

// RootCRLState is the content of RootCRLStateFile.
type RootCRLState struct {
	Number  uint64           `json:"number"`
	Revoked []RootRevocation `json:"revoked"`
}

// RootRevocation is one intermediate the root revoked.
type RootRevocation struct {
	Serial string    `json:"serial"` // hex
	Reason string    `json:"reason"` // RFC 5280 name
	At     time.Time `json:"at"`
	Actor  string    `json:"actor"`
}

// ErrRevokedTwice: the serial is already on the root's CRL.
var ErrRevokedTwice = errors.New("already revoked")

// LoadRootCRLState reads the ceremony directory's record; a ceremony that
// never signed a CRL has an empty one.
func LoadRootCRLState(dir string) (RootCRLState, error) {
	var st RootCRLState
	b, err := os.ReadFile(filepath.Join(dir, RootCRLStateFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s: %w", RootCRLStateFile, err)
	}
	return st, nil
}

// RevokeAndSignCRL adds revocations of intermediates (serials in hex) to
// the root's record and signs the next root CRL with every revocation so
// far; with no revocations it re-signs the CRL (before its nextUpdate).
// The record is written only once the CRL is signed, atomically, so a
// failure leaves it as it was.
func (r *RootCA) RevokeAndSignCRL(ctx context.Context, add []RootRevocation) ([]byte, error) {
	st, err := LoadRootCRLState(r.o.Dir)
	if err != nil {
		return nil, err
	}
	if st, err = r.checkLastCRL(st); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, rv := range st.Revoked {
		seen[rv.Serial] = true
	}
	for _, rv := range add {
		n, ok := new(big.Int).SetString(rv.Serial, 16)
		if !ok || n.Sign() <= 0 {
			return nil, fmt.Errorf("serial %q: want the certificate serial in hex", rv.Serial)
		}
		if _, err := ParseReason(rv.Reason); err != nil {
			return nil, err
		}
		rv.Serial = n.Text(16)
		if seen[rv.Serial] {
			return nil, fmt.Errorf("serial %s: %w", rv.Serial, ErrRevokedTwice)
		}
		seen[rv.Serial] = true
		st.Revoked = append(st.Revoked, rv)
	}
	entries := make([]Revoked, 0, len(st.Revoked))
	for _, rv := range st.Revoked {
		n, _ := new(big.Int).SetString(rv.Serial, 16)
		reason, _ := ParseReason(rv.Reason)
		entries = append(entries, Revoked{Serial: n, At: rv.At, Reason: reason})
	}
	st.Number++
	der, err := r.CRL(ctx, entries, new(big.Int).SetUint64(st.Number))
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, err
	}
	// The record first: one a crash leaves ahead of root.crl still
	// covers it.
	if err := atomicfile.Write(filepath.Join(r.o.Dir, RootCRLStateFile), append(b, '\n'), 0o644); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(r.o.Dir, RootCRLFile), der, 0o644); err != nil {
		return nil, err
	}
	return der, nil
}

// checkLastCRL compares the record st with the last root CRL signed
// (RootCRLFile), checked against the root: a record without a CRL file
// is taken as it is (a ceremony directory of an earlier release); an
// empty record beside a CRL file is rebuilt from the CRL; a record that
// lacks a serial of the CRL or is numbered below it is refused.
func (r *RootCA) checkLastCRL(st RootCRLState) (RootCRLState, error) {
	path := filepath.Join(r.o.Dir, RootCRLFile)
	der, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return st, fmt.Errorf("%s: %w", path, err)
	}
	if err := crl.CheckSignatureFrom(r.cert); err != nil {
		return st, fmt.Errorf("%s: not signed by this root: %w", path, err)
	}
	if st.Number == 0 && len(st.Revoked) == 0 {
		// The record is gone: the signed CRL says what it held (but who
		// asked for each revocation).
		st.Number = crl.Number.Uint64()
		for _, e := range crl.RevokedCertificateEntries {
			st.Revoked = append(st.Revoked, RootRevocation{Serial: e.SerialNumber.Text(16), Reason: Reason(e.ReasonCode).String(), At: e.RevocationTime.UTC(), Actor: "(rebuilt from " + RootCRLFile + ")"})
		}
		return st, nil
	}
	have := map[string]bool{}
	for _, rv := range st.Revoked {
		have[rv.Serial] = true
	}
	for _, e := range crl.RevokedCertificateEntries {
		if !have[e.SerialNumber.Text(16)] {
			return st, fmt.Errorf("%s lacks serial %s, which the last root CRL (%s, number %s) lists: restore the record", RootCRLStateFile, e.SerialNumber.Text(16), RootCRLFile, crl.Number)
		}
	}
	if crl.Number.Cmp(new(big.Int).SetUint64(st.Number)) > 0 {
		return st, fmt.Errorf("%s is at number %d, the last root CRL (%s) at %s: restore the record", RootCRLStateFile, st.Number, RootCRLFile, crl.Number)
	}
	return st, nil
}
