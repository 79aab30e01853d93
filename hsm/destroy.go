package hsm

import (
	"fmt"

	"github.com/miekg/pkcs11"
)

// DestroyKey destroys the key pair labelled label: every object on the
// token that carries the label (the private key and its public key, and
// both halves of any duplicate pair another process may have raced in).
// It fails with ErrKeyNotFound if no object carries label, so that a
// caller cleaning up can tell "already gone" apart from a failure.
// Signers of the destroyed key stop working.
func (t *Token) DestroyKey(label string) error {
	if label == "" {
		return fmt.Errorf("hsm: token %q: empty key label", t.label)
	}
	// Destruction changes the token's object store like creation does:
	// serialize it with GenerateKey (see there; SoftHSM2's file store
	// fails at random under concurrent changes).
	t.mod.genMu.Lock()
	defer t.mod.genMu.Unlock()
	err := t.withSession(func(sh pkcs11.SessionHandle) error {
		if err := t.requireLogin(sh); err != nil {
			return err
		}
		// The private key goes last: if the process dies half way, what
		// is left is still a private key that Keys lists and a second
		// DestroyKey removes, never a public key nobody looks for.
		pub, err := t.findObjects(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		})
		if err != nil {
			return err
		}
		all, err := t.findObjects(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		})
		if err != nil {
			return err
		}
		if len(all) == 0 {
			return ErrKeyNotFound
		}
		for _, h := range append(pub, all...) {
			if err := t.ctx.DestroyObject(sh, h); err != nil && !handleInvalid(err) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hsm: token %q: key %q: destroy: %w", t.label, label, err)
	}
	return nil
}
