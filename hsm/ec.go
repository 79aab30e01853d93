package hsm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/asn1"
	"fmt"
	"math/big"
)

var (
	oidP256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidP384 = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
	oidP521 = asn1.ObjectIdentifier{1, 3, 132, 0, 35}
)

// ecParams returns CKA_EC_PARAMS (the DER-encoded named-curve OID) for the
// curves GenerateKey supports.
func ecParams(c elliptic.Curve) ([]byte, error) {
	var oid asn1.ObjectIdentifier
	switch c {
	case elliptic.P256():
		oid = oidP256
	case elliptic.P384():
		oid = oidP384
	default:
		name := "<nil>"
		if c != nil {
			name = c.Params().Name
		}
		return nil, fmt.Errorf("%w: %s (want P-256 or P-384)", ErrUnsupportedCurve, name)
	}
	return asn1.Marshal(oid)
}

// curveFromParams parses CKA_EC_PARAMS. Only named curves are accepted.
func curveFromParams(der []byte) (elliptic.Curve, error) {
	var oid asn1.ObjectIdentifier
	rest, err := asn1.Unmarshal(der, &oid)
	if err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("%w: CKA_EC_PARAMS is not a named curve", ErrUnsupportedCurve)
	}
	switch {
	case oid.Equal(oidP256):
		return elliptic.P256(), nil
	case oid.Equal(oidP384):
		return elliptic.P384(), nil
	case oid.Equal(oidP521):
		return elliptic.P521(), nil
	}
	return nil, fmt.Errorf("%w: %s", ErrUnsupportedCurve, oid)
}

// parseECPoint decodes CKA_EC_POINT. PKCS#11 says it is a DER OCTET STRING
// around the uncompressed point; some modules return the bare point.
func parseECPoint(curve elliptic.Curve, data []byte) (*ecdsa.PublicKey, error) {
	n := (curve.Params().BitSize + 7) / 8
	point := data
	if len(data) != 1+2*n || data[0] != 4 {
		var inner []byte
		rest, err := asn1.Unmarshal(data, &inner)
		if err != nil || len(rest) != 0 {
			return nil, fmt.Errorf("CKA_EC_POINT: neither a DER OCTET STRING nor an uncompressed point")
		}
		point = inner
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(curve, point)
	if err != nil {
		return nil, fmt.Errorf("CKA_EC_POINT: %w", err)
	}
	return pub, nil
}

// rawToASN1 converts the PKCS#11 ECDSA signature r||s into the ASN.1 DER
// ECDSA-Sig-Value that crypto.Signer users (x509, ecdsa.VerifyASN1) expect.
func rawToASN1(raw []byte, n int) ([]byte, error) {
	if len(raw) != 2*n {
		return nil, fmt.Errorf("signature is %d bytes, want %d", len(raw), 2*n)
	}
	r := new(big.Int).SetBytes(raw[:n])
	s := new(big.Int).SetBytes(raw[n:])
	return asn1.Marshal(struct{ R, S *big.Int }{r, s})
}
