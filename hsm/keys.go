package hsm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync/atomic"

	"github.com/miekg/pkcs11"
)

// keyIDLen is the length of the random CKA_ID given to new key pairs.
const keyIDLen = 16

// Key is a private key held on a token. It implements crypto.Signer and is
// safe for concurrent use; it stops working when its Token is closed.
type Key struct {
	t      *Token
	label  string
	id     []byte
	handle atomic.Uint64 // pkcs11.ObjectHandle of the private key
	pub    *ecdsa.PublicKey
	size   int // bytes per coordinate
}

var _ crypto.Signer = (*Key)(nil)

// Label returns the key's CKA_LABEL.
func (k *Key) Label() string { return k.label }

// ID returns the key's CKA_ID in hex.
func (k *Key) ID() string { return hex.EncodeToString(k.id) }

// Public returns the *ecdsa.PublicKey read from the token's public key
// object.
func (k *Key) Public() crypto.PublicKey { return k.pub }

// Sign signs digest with CKM_ECDSA on the token and returns an ASN.1 DER
// ECDSA signature. rand is ignored: the token uses its own RNG. If
// opts.HashFunc() is not zero, digest must have that hash's length.
func (k *Key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts != nil {
		if h := opts.HashFunc(); h != 0 && len(digest) != h.Size() {
			return nil, fmt.Errorf("hsm: token %q: key %q: digest is %d bytes, %v wants %d",
				k.t.label, k.label, len(digest), h, h.Size())
		}
	}
	if len(digest) == 0 {
		return nil, fmt.Errorf("hsm: token %q: key %q: empty digest", k.t.label, k.label)
	}
	raw, err := k.signRaw(digest)
	if handleInvalid(err) {
		// The object handle went stale: the module was re-initialized,
		// or (SoftHSM2) the token was logged out, which hides private
		// objects. Find the key again on a fresh, logged-in session and
		// retry once.
		raw, err = k.refindAndSign(digest)
	}
	if err != nil {
		return nil, fmt.Errorf("hsm: token %q: key %q: sign: %w", k.t.label, k.label, err)
	}
	sig, err := rawToASN1(raw, k.size)
	if err != nil {
		return nil, fmt.Errorf("hsm: token %q: key %q: %w", k.t.label, k.label, err)
	}
	return sig, nil
}

func (k *Key) signRaw(digest []byte) ([]byte, error) {
	var raw []byte
	err := k.t.withSession(func(sh pkcs11.SessionHandle) error {
		var err error
		raw, err = k.signOn(sh, pkcs11.ObjectHandle(k.handle.Load()), digest)
		return err
	})
	return raw, err
}

func (k *Key) refindAndSign(digest []byte) ([]byte, error) {
	var raw []byte
	err := k.t.withFreshSession(func(sh pkcs11.SessionHandle) error {
		h, err := k.t.findPrivate(sh, k.label, k.id)
		if err != nil {
			return err
		}
		k.handle.Store(uint64(h))
		raw, err = k.signOn(sh, h, digest)
		return err
	})
	return raw, err
}

func (k *Key) signOn(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, digest []byte) ([]byte, error) {
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}
	if err := k.t.ctx.SignInit(sh, mech, h); err != nil {
		return nil, err
	}
	return k.t.ctx.Sign(sh, digest)
}

// GenerateKey generates an EC key pair (P-256 or P-384) on the token and
// returns its signer. The private key is a token object that is private,
// sensitive, not extractable and can only sign; the public key object can
// only verify. Both carry label and the same random CKA_ID. If any object
// already carries label, GenerateKey fails with ErrKeyExists.
func (t *Token) GenerateKey(label string, curve elliptic.Curve) (crypto.Signer, error) {
	id, err := NewKeyID()
	if err != nil {
		return nil, fmt.Errorf("hsm: token %q: key %q: %w", t.label, label, err)
	}
	return t.GenerateKeyID(label, id, curve)
}

// NewKeyID returns a random CKA_ID for GenerateKeyID (Key.ID is its hex).
func NewKeyID() ([]byte, error) {
	id := make([]byte, keyIDLen)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	return id, nil
}

// GenerateKeyID is GenerateKey with the CKA_ID chosen by the caller, who
// can record it before the key exists (Key.ID tells it again).
func (t *Token) GenerateKeyID(label string, id []byte, curve elliptic.Curve) (crypto.Signer, error) {
	if label == "" {
		return nil, fmt.Errorf("hsm: token %q: empty key label", t.label)
	}
	if len(id) == 0 {
		return nil, fmt.Errorf("hsm: token %q: key %q: empty key id", t.label, label)
	}
	params, err := ecParams(curve)
	if err != nil {
		return nil, fmt.Errorf("hsm: token %q: key %q: %w", t.label, label, err)
	}
	// The existence check and the creation must not interleave with
	// another GenerateKey in this process. Serializing per module (not
	// per Token) also avoids a SoftHSM2 bug: concurrent object creation
	// on its file store fails at random with CKR_GENERAL_ERROR or
	// CKR_TEMPLATE_INCONSISTENT (SoftHSMv2 issue #573). Other processes
	// can still race on a label; Signer then reports ErrKeyAmbiguous
	// rather than picking one.
	t.mod.genMu.Lock()
	defer t.mod.genMu.Unlock()

	var priv pkcs11.ObjectHandle
	err = t.withSession(func(sh pkcs11.SessionHandle) error {
		if err := t.requireLogin(sh); err != nil {
			return err
		}
		existing, err := t.findObjects(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		})
		if err != nil {
			return err
		}
		if len(existing) > 0 {
			return ErrKeyExists
		}
		pubTmpl := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		}
		privTmpl := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		}
		mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}
		_, priv, err = t.ctx.GenerateKeyPair(sh, mech, pubTmpl, privTmpl)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: token %q: key %q: generate: %w", t.label, label, err)
	}
	return t.loadKey(label, id, priv)
}

// Signer returns the signer for the existing private key labelled label.
func (t *Token) Signer(label string) (crypto.Signer, error) {
	var (
		priv pkcs11.ObjectHandle
		id   []byte
	)
	err := t.withSession(func(sh pkcs11.SessionHandle) error {
		if err := t.requireLogin(sh); err != nil {
			return err
		}
		hs, err := t.findObjects(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		})
		if err != nil {
			return err
		}
		switch len(hs) {
		case 0:
			return ErrKeyNotFound
		case 1:
		default:
			return fmt.Errorf("%w (%d private keys carry it)", ErrKeyAmbiguous, len(hs))
		}
		priv = hs[0]
		attrs, err := t.ctx.GetAttributeValue(sh, priv, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
		})
		if err != nil {
			return err
		}
		id = attrs[0].Value
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: token %q: key %q: %w", t.label, label, err)
	}
	return t.loadKey(label, id, priv)
}

// loadKey reads the curve from the private key and the public point from
// the matching public key object (same label and CKA_ID).
func (t *Token) loadKey(label string, id []byte, priv pkcs11.ObjectHandle) (*Key, error) {
	var pub *ecdsa.PublicKey
	err := t.withSession(func(sh pkcs11.SessionHandle) error {
		attrs, err := t.ctx.GetAttributeValue(sh, priv, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
		})
		if err != nil {
			return err
		}
		if kt, ok := attrUint(attrs[0]); !ok || kt != pkcs11.CKK_EC {
			return fmt.Errorf("not an EC key (CKA_KEY_TYPE %#x)", kt)
		}
		curve, err := curveFromParams(attrs[1].Value)
		if err != nil {
			return err
		}
		hs, err := t.findObjects(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		})
		if err != nil {
			return err
		}
		if len(hs) != 1 {
			return fmt.Errorf("want one public key object with the same label and CKA_ID, found %d", len(hs))
		}
		pattrs, err := t.ctx.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil),
		})
		if err != nil {
			return err
		}
		pub, err = parseECPoint(curve, pattrs[0].Value)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: token %q: key %q: %w", t.label, label, err)
	}
	k := &Key{t: t, label: label, id: id, pub: pub, size: (pub.Curve.Params().BitSize + 7) / 8}
	k.handle.Store(uint64(priv))
	return k, nil
}

// findPrivate finds the private key with the given label and id again.
func (t *Token) findPrivate(sh pkcs11.SessionHandle, label string, id []byte) (pkcs11.ObjectHandle, error) {
	if err := t.requireLogin(sh); err != nil {
		return 0, err
	}
	hs, err := t.findObjects(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	})
	if err != nil {
		return 0, err
	}
	if len(hs) != 1 {
		return 0, ErrKeyNotFound
	}
	return hs[0], nil
}

// findObjects runs a complete C_FindObjects{Init,,Final} sequence, so
// that the session never stays in an active search.
func (t *Token) findObjects(sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := t.ctx.FindObjectsInit(sh, tmpl); err != nil {
		return nil, err
	}
	var out []pkcs11.ObjectHandle
	for {
		hs, _, err := t.ctx.FindObjects(sh, 64)
		if err != nil {
			return nil, errors.Join(err, t.ctx.FindObjectsFinal(sh))
		}
		if len(hs) == 0 {
			break
		}
		out = append(out, hs...)
	}
	if err := t.ctx.FindObjectsFinal(sh); err != nil {
		return nil, err
	}
	return out, nil
}

// KeyInfo describes a private key on a token, for listing and audit.
type KeyInfo struct {
	Label string
	ID    string // CKA_ID, hex
	// KeyType is "EC", "RSA" or the CKK_ value in hex.
	KeyType string
	// Curve is "P-256", "P-384" or "P-521" for EC keys on those curves,
	// otherwise empty.
	Curve string

	Token       bool // CKA_TOKEN: persistent
	Private     bool // CKA_PRIVATE: needs login
	Sensitive   bool // CKA_SENSITIVE: value never leaves in plaintext
	Extractable bool // CKA_EXTRACTABLE: may be wrapped out
	// AlwaysSensitive and NeverExtractable show that the key was created
	// sensitive and non-extractable (e.g. generated on the token), not
	// downgraded to it later.
	AlwaysSensitive  bool
	NeverExtractable bool
	Sign             bool // CKA_SIGN
}

// Keys lists the private keys on the token, sorted by label then ID.
func (t *Token) Keys() ([]KeyInfo, error) {
	var out []KeyInfo
	err := t.withSession(func(sh pkcs11.SessionHandle) error {
		out = out[:0]
		if err := t.requireLogin(sh); err != nil {
			return err
		}
		hs, err := t.findObjects(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		})
		if err != nil {
			return err
		}
		for _, h := range hs {
			ki, err := t.keyInfo(sh, h)
			if err != nil {
				return err
			}
			out = append(out, ki)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: token %q: list keys: %w", t.label, err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Label != out[j].Label {
			return out[i].Label < out[j].Label
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

func (t *Token) keyInfo(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) (KeyInfo, error) {
	// All of these are readable on any private key object; CKA_VALUE is
	// deliberately not asked for.
	attrs, err := t.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
		pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_ALWAYS_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_NEVER_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, nil),
	})
	if err != nil {
		return KeyInfo{}, err
	}
	ki := KeyInfo{
		Label:            string(attrs[0].Value),
		ID:               hex.EncodeToString(attrs[1].Value),
		Token:            attrBool(attrs[3]),
		Private:          attrBool(attrs[4]),
		Sensitive:        attrBool(attrs[5]),
		Extractable:      attrBool(attrs[6]),
		AlwaysSensitive:  attrBool(attrs[7]),
		NeverExtractable: attrBool(attrs[8]),
		Sign:             attrBool(attrs[9]),
	}
	kt, _ := attrUint(attrs[2])
	switch kt {
	case pkcs11.CKK_EC:
		ki.KeyType = "EC"
		p, err := t.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil)})
		if err == nil {
			if c, err := curveFromParams(p[0].Value); err == nil {
				ki.Curve = c.Params().Name
			}
		}
	case pkcs11.CKK_RSA:
		ki.KeyType = "RSA"
	default:
		ki.KeyType = fmt.Sprintf("%#x", kt)
	}
	return ki, nil
}

// attrBool decodes a CK_BBOOL attribute value.
func attrBool(a *pkcs11.Attribute) bool {
	return len(a.Value) == 1 && a.Value[0] != 0
}

// attrUint decodes a CK_ULONG attribute value (native byte order).
func attrUint(a *pkcs11.Attribute) (uint, bool) {
	switch len(a.Value) {
	case 8:
		return uint(binary.NativeEndian.Uint64(a.Value)), true
	case 4:
		return uint(binary.NativeEndian.Uint32(a.Value)), true
	}
	return 0, false
}
