package hsm

import (
	"fmt"

	"github.com/miekg/pkcs11"
)

// Test hooks that reach below the public API.

// ObjectAttr reads one attribute of the single object of class with label.
func ObjectAttr(t *Token, label string, class, attr uint) ([]byte, error) {
	var v []byte
	err := t.withSession(func(sh pkcs11.SessionHandle) error {
		hs, err := t.findObjects(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		})
		if err != nil {
			return err
		}
		if len(hs) != 1 {
			return fmt.Errorf("found %d objects", len(hs))
		}
		a, err := t.ctx.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(attr, nil)})
		if err != nil {
			return err
		}
		v = a[0].Value
		return nil
	})
	return v, err
}

// BreakSessions closes every open pooled session behind the pool's back,
// so that the next use of each fails with CKR_SESSION_HANDLE_INVALID.
// It returns how many it closed.
func BreakSessions(t *Token) int {
	n := 0
	for range t.size {
		s := <-t.pool
		defer func() { t.pool <- s }()
		if s.open {
			if err := t.ctx.CloseSession(s.h); err == nil {
				n++
			}
		}
	}
	return n
}

// Logout logs the whole token out for this process.
func Logout(t *Token) error {
	s, err := t.acquire()
	if err != nil {
		return err
	}
	defer t.release(s)
	return t.ctx.Logout(s.h)
}

// ModuleRefs returns how many Tokens hold the module at the resolved path
// (0 if it is not loaded).
func ModuleRefs(path string) int {
	registry.Lock()
	defer registry.Unlock()
	if m, ok := registry.mods[path]; ok {
		return m.refs
	}
	return 0
}

var CheckModule = checkModule

// FailOnce runs an operation the token refuses with a PKCS#11 error: a
// signature never initialised (CKR_OPERATION_NOT_INITIALIZED).
func FailOnce(t *Token) error {
	return t.withSession(func(sh pkcs11.SessionHandle) error {
		_, err := t.ctx.Sign(sh, []byte("not initialised"))
		return err
	})
}
