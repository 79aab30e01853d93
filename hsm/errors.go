package hsm

import (
	"errors"

	"github.com/miekg/pkcs11"
)

// Sentinel errors. Every error returned by this package that a caller may
// want to act on wraps one of these; test with errors.Is.
var (
	// ErrModuleNotAllowed: the PKCS#11 module path is not on the allowlist.
	ErrModuleNotAllowed = errors.New("PKCS#11 module not on the allowlist")
	// ErrModuleNotFound: the module file does not exist.
	ErrModuleNotFound = errors.New("PKCS#11 module not found")
	// ErrModuleLoad: the module exists but could not be loaded (dlopen or
	// C_GetFunctionList failed).
	ErrModuleLoad = errors.New("PKCS#11 module cannot be loaded")
	// ErrTokenNotFound: no initialized token carries the requested label.
	ErrTokenNotFound = errors.New("token not found")
	// ErrTokenAmbiguous: more than one token carries the requested label.
	ErrTokenAmbiguous = errors.New("token label is not unique")
	// ErrWrongPIN: the token rejected the user PIN.
	ErrWrongPIN = errors.New("wrong PIN")
	// ErrPINLocked: the token has locked the user PIN.
	ErrPINLocked = errors.New("PIN locked")
	// ErrNoPIN: no PIN was supplied.
	ErrNoPIN = errors.New("no PIN")
	// ErrKeyNotFound: no private key carries the requested label.
	ErrKeyNotFound = errors.New("key not found")
	// ErrKeyExists: an object with the requested label already exists.
	ErrKeyExists = errors.New("key already exists")
	// ErrKeyAmbiguous: more than one private key carries the label.
	ErrKeyAmbiguous = errors.New("key label is not unique")
	// ErrUnsupportedCurve: the curve is not one this package generates or
	// can parse.
	ErrUnsupportedCurve = errors.New("unsupported curve")
	// ErrClosed: the Token has been closed.
	ErrClosed = errors.New("token closed")
)

// ckr returns the PKCS#11 return value carried by err, if any.
func ckr(err error) (uint, bool) {
	var e pkcs11.Error
	if errors.As(err, &e) {
		return uint(e), true
	}
	return 0, false
}

// isCKR reports whether err carries one of the given PKCS#11 return values.
func isCKR(err error, codes ...uint) bool {
	rv, ok := ckr(err)
	if !ok {
		return false
	}
	for _, c := range codes {
		if rv == c {
			return true
		}
	}
	return false
}

// needsFreshSession reports whether err means the session is no longer
// usable (closed under us, logged out, or left with an operation active)
// so that the operation should be retried once on a fresh, logged-in one.
func needsFreshSession(err error) bool {
	return isCKR(err,
		pkcs11.CKR_SESSION_HANDLE_INVALID,
		pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_USER_NOT_LOGGED_IN,
		pkcs11.CKR_OPERATION_ACTIVE,
	)
}

// deviceGone reports whether err means the token or its device went away
// (or failed) under the session: the session is dead, and no retry on the
// same device state can help.
func deviceGone(err error) bool {
	return isCKR(err,
		pkcs11.CKR_DEVICE_REMOVED,
		pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_DEVICE_ERROR,
	)
}

// handleInvalid reports whether err means an object handle went stale.
func handleInvalid(err error) bool {
	return isCKR(err, pkcs11.CKR_KEY_HANDLE_INVALID, pkcs11.CKR_OBJECT_HANDLE_INVALID)
}
