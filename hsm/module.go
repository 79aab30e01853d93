package hsm

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/miekg/pkcs11"
)

// DefaultModules is the allowlist used when Open is not given
// WithAllowedModules: the places Debian puts SoftHSM2.
var DefaultModules = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
}

// checkModule validates path against the allowlist and the file system and
// returns the key under which the module is registered: the path with
// symlinks resolved, so that two allowed names of one library (Debian's
// /usr/lib/softhsm/libsofthsm2.so is a symlink) share one initialization.
func checkModule(path string, allowed []string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("hsm: module path is empty: %w (allowed: %s)",
			ErrModuleNotAllowed, strings.Join(allowed, ", "))
	}
	clean := filepath.Clean(path)
	ok := false
	if filepath.IsAbs(clean) {
		for _, a := range allowed {
			if filepath.IsAbs(a) && filepath.Clean(a) == clean {
				ok = true
				break
			}
		}
	}
	if !ok {
		return "", fmt.Errorf("hsm: module %q: %w (allowed: %s)",
			path, ErrModuleNotAllowed, strings.Join(allowed, ", "))
	}
	fi, err := os.Stat(clean)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("hsm: module %q: %w", path, ErrModuleNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("hsm: module %q: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("hsm: module %q: not a regular file: %w", path, ErrModuleNotFound)
	}
	real, err := filepath.EvalSymlinks(clean)
	if err != nil {
		return "", fmt.Errorf("hsm: module %q: %w", path, err)
	}
	return real, nil
}

// A PKCS#11 library may be initialized only once per process, so modules
// are shared: the registry maps the resolved module path to one
// *pkcs11.Ctx and counts the Tokens that use it. The last release
// finalizes the library.
var registry = struct {
	sync.Mutex
	mods map[string]*module
}{mods: map[string]*module{}}

type module struct {
	path string
	ctx  *pkcs11.Ctx
	refs int // guarded by registry
	// owned is false when C_Initialize reported that someone else in this
	// process (another PKCS#11 wrapper) had already initialized the
	// library; then we must not finalize it either.
	owned bool

	mu     sync.Mutex
	logins map[uint]*slotLogin // by slot ID

	// genMu serializes key generation (see GenerateKey).
	genMu sync.Mutex
}

// slotLogin remembers which PIN this process logged in to a slot with.
// PKCS#11 login state is per application and token, and C_Login on a token
// that is already logged in returns CKR_USER_ALREADY_LOGGED_IN without
// checking the PIN; without this a second Open with a wrong PIN would
// succeed while a first Token is open.
type slotLogin struct {
	pinHash [32]byte
	refs    int
}

func acquireModule(path string) (*module, error) {
	registry.Lock()
	defer registry.Unlock()
	if m, ok := registry.mods[path]; ok {
		m.refs++
		return m, nil
	}
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("hsm: module %q: %w", path, ErrModuleLoad)
	}
	owned := true
	if err := ctx.Initialize(); err != nil {
		if !isCKR(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			ctx.Destroy()
			return nil, fmt.Errorf("hsm: module %q: initialize: %w", path, err)
		}
		owned = false
	}
	m := &module{path: path, ctx: ctx, refs: 1, owned: owned, logins: map[uint]*slotLogin{}}
	registry.mods[path] = m
	return m, nil
}

func (m *module) release() error {
	registry.Lock()
	defer registry.Unlock()
	m.refs--
	if m.refs > 0 {
		return nil
	}
	delete(registry.mods, m.path)
	var err error
	if m.owned {
		if ferr := m.ctx.Finalize(); ferr != nil && !isCKR(ferr, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED) {
			err = fmt.Errorf("hsm: module %q: finalize: %w", m.path, ferr)
		}
	}
	m.ctx.Destroy()
	return err
}

// login verifies pin for slot and records it; the caller's doLogin opens
// the Token's first session and calls C_Login on it (accepting
// CKR_USER_ALREADY_LOGGED_IN). When this process already holds a login to
// slot through another Token, pin is first compared with the recorded one,
// because the token itself would not check it again.
//
// Opening the first session, logging in and recording happen under m.mu,
// as do closing a Token's sessions and dropping its record (logout), so a
// Token never sees the login of a Token that is being closed. A result of
// CKR_USER_ALREADY_LOGGED_IN without a record means that other code in the
// process (another PKCS#11 wrapper) logged in; the PIN cannot be verified
// then, which is no loss of protection as that code already has the token.
func (m *module) login(slot uint, pin string, doLogin func() error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := sha256.Sum256([]byte(pin))
	l, ok := m.logins[slot]
	if ok && subtle.ConstantTimeCompare(h[:], l.pinHash[:]) != 1 {
		return ErrWrongPIN
	}
	if err := doLogin(); err != nil {
		return err
	}
	if !ok {
		l = &slotLogin{pinHash: h}
		m.logins[slot] = l
	}
	l.refs++
	return nil
}

// logout runs closeSessions and drops one reference to slot's login
// record, atomically with respect to login.
func (m *module) logout(slot uint, closeSessions func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	closeSessions()
	if l, ok := m.logins[slot]; ok {
		l.refs--
		if l.refs <= 0 {
			delete(m.logins, slot)
		}
	}
}
