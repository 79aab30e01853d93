package hsm

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/miekg/pkcs11"
)

// Config selects a token.
type Config struct {
	Module     string // path to the PKCS#11 module; must be on the allowlist
	TokenLabel string
	PIN        string // user PIN; see ReadPIN
}

// maxTokenLabel is the size of CK_TOKEN_INFO.label.
const maxTokenLabel = 32

// DefaultSessions is the size of a Token's session pool unless WithSessions
// says otherwise.
const DefaultSessions = 4

type options struct {
	allowed  []string
	sessions int
}

// An Option changes how Open behaves.
type Option func(*options)

// WithAllowedModules replaces DefaultModules as the allowlist of module
// paths. Paths must be absolute; they are compared after filepath.Clean.
func WithAllowedModules(paths ...string) Option {
	return func(o *options) { o.allowed = slices.Clone(paths) }
}

// WithSessions sets the number of sessions a Token keeps open for
// concurrent operations (default DefaultSessions). Values below 1 are
// treated as 1.
func WithSessions(n int) Option {
	return func(o *options) { o.sessions = max(n, 1) }
}

// Token is an open, logged-in PKCS#11 token. It is safe for concurrent
// use: operations borrow a session from a small pool and give it back.
type Token struct {
	mod    *module
	ctx    *pkcs11.Ctx
	slot   uint
	label  string
	module string // as configured, for errors
	pin    string

	pool chan *session // idle sessions; cap == number of sessions
	size int
	done chan struct{} // closed by Close

	closeOnce sync.Once
	closeErr  error

	failures atomic.Uint64 // operations that ended in a PKCS#11 error
}

// Failures is how many operations on the token ended in a PKCS#11 error,
// after the retry on a fresh session, since it was opened: a count that
// grows is a token, a device or a PIN an operator must look at.
func (t *Token) Failures() uint64 { return t.failures.Load() }

// session is one pool entry; when open is false, the handle is not valid
// and the session is opened (and logged in) on next use.
type session struct {
	h    pkcs11.SessionHandle
	open bool
}

// Open loads the module named by cfg (if this process has not already),
// finds the token by its label, logs in with the user PIN and returns the
// Token. The module must be on the allowlist (DefaultModules unless
// WithAllowedModules).
func Open(cfg Config, opts ...Option) (*Token, error) {
	o := options{allowed: DefaultModules, sessions: DefaultSessions}
	for _, opt := range opts {
		opt(&o)
	}
	// Token labels are blank-padded to 32 bytes: trailing spaces are not
	// part of a label, and the token reports none.
	cfg.TokenLabel = strings.TrimRight(cfg.TokenLabel, " ")
	if cfg.TokenLabel == "" {
		return nil, fmt.Errorf("hsm: token label is empty: %w", ErrTokenNotFound)
	}
	if cfg.PIN == "" {
		return nil, fmt.Errorf("hsm: token %q: %w", cfg.TokenLabel, ErrNoPIN)
	}
	path, err := checkModule(cfg.Module, o.allowed)
	if err != nil {
		return nil, err
	}
	mod, err := acquireModule(path)
	if err != nil {
		return nil, err
	}
	t := &Token{
		mod:    mod,
		ctx:    mod.ctx,
		label:  cfg.TokenLabel,
		module: cfg.Module,
		pin:    cfg.PIN,
		pool:   make(chan *session, o.sessions),
		size:   o.sessions,
		done:   make(chan struct{}),
	}
	if err := t.open(); err != nil {
		return nil, errors.Join(err, mod.release())
	}
	return t, nil
}

// open finds the slot, verifies the PIN with a first session and fills
// the pool.
func (t *Token) open() error {
	slot, err := findSlot(t.ctx, t.module, t.label)
	if err != nil {
		return err
	}
	t.slot = slot
	first := &session{}
	err = t.mod.login(slot, t.pin, func() error { return t.openSession(first, true) })
	if err == ErrWrongPIN { // differs from the PIN this process logged in with
		return fmt.Errorf("hsm: token %q: login: %w", t.label, err)
	}
	if err != nil {
		return err
	}
	t.pool <- first
	for i := 1; i < t.size; i++ {
		t.pool <- &session{}
	}
	return nil
}

func (t *Token) loginError(err error) error {
	switch {
	case isCKR(err, pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE):
		return fmt.Errorf("hsm: token %q: login: %w", t.label, ErrWrongPIN)
	case isCKR(err, pkcs11.CKR_PIN_LOCKED):
		return fmt.Errorf("hsm: token %q: login: %w", t.label, ErrPINLocked)
	default:
		return fmt.Errorf("hsm: token %q: login: %w", t.label, err)
	}
}

// findSlot returns the slot holding the one initialized token labelled
// label. SoftHSM2 assigns random slot IDs, so tokens are always chosen by
// label. Its errors name the module too: the same label means different
// tokens to different modules (and to SoftHSM2 configurations).
func findSlot(ctx *pkcs11.Ctx, module, label string) (uint, error) {
	// CK_TOKEN_INFO.label is 32 bytes padded with blanks: compare without
	// trailing blanks on both sides, and say so when label cannot fit.
	label = strings.TrimRight(label, " ")
	if len(label) > maxTokenLabel {
		return 0, fmt.Errorf("hsm: token %q: %w: the label is %d bytes; PKCS#11 token labels are at most %d bytes", label, ErrTokenNotFound, len(label), maxTokenLabel)
	}
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("hsm: token %q in module %s: list slots: %w", label, module, err)
	}
	var (
		found  []uint
		labels []string
	)
	for _, s := range slots {
		ti, err := ctx.GetTokenInfo(s)
		if err != nil {
			continue // token removed between the calls
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		l := strings.TrimRight(ti.Label, " \x00")
		labels = append(labels, l)
		if l == label {
			found = append(found, s)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		present := "none"
		if len(labels) > 0 {
			slices.Sort(labels)
			present = fmt.Sprintf("%q", labels)
		}
		return 0, fmt.Errorf("hsm: token %q in module %s: %w (tokens present: %s)", label, module, ErrTokenNotFound, present)
	default:
		return 0, fmt.Errorf("hsm: token %q in module %s: %w (%d tokens carry it)", label, module, ErrTokenAmbiguous, len(found))
	}
}

// Label returns the token label.
func (t *Token) Label() string { return t.label }

// openSession opens s as a read-write session and, if login is set, logs
// in (a token that is already logged in for this process is fine).
func (t *Token) openSession(s *session, login bool) error {
	h, err := t.ctx.OpenSession(t.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("hsm: token %q: open session: %w", t.label, err)
	}
	if login {
		err := t.ctx.Login(h, pkcs11.CKU_USER, t.pin)
		if err != nil && !isCKR(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
			_ = t.ctx.CloseSession(h)
			return t.loginError(err)
		}
	}
	s.h, s.open = h, true
	return nil
}

// dropSession closes s if it is open; errors are ignored because the
// session is being thrown away, usually because it is already invalid.
func (t *Token) dropSession(s *session) {
	if s.open {
		_ = t.ctx.CloseSession(s.h)
	}
	s.h, s.open = 0, false
}

func (t *Token) closedError() error {
	return fmt.Errorf("hsm: token %q: %w", t.label, ErrClosed)
}

// acquire borrows a session from the pool, opening it if needed. It
// blocks while all sessions are in use.
func (t *Token) acquire() (*session, error) {
	select {
	case <-t.done:
		return nil, t.closedError()
	default:
	}
	var s *session
	select {
	case s = <-t.pool:
	case <-t.done:
		return nil, t.closedError()
	}
	select {
	case <-t.done:
		t.pool <- s
		return nil, t.closedError()
	default:
	}
	if !s.open {
		if err := t.openSession(s, true); err != nil {
			t.pool <- s
			return nil, err
		}
	}
	return s, nil
}

func (t *Token) release(s *session) { t.pool <- s }

// withSession runs fn on a pooled session. If fn fails because the session
// was closed, invalidated or logged out, the session is replaced by a
// fresh logged-in one and fn is retried once.
func (t *Token) withSession(fn func(sh pkcs11.SessionHandle) error) error {
	return t.run(false, fn)
}

// withFreshSession is withSession on a session that is replaced by a
// fresh, logged-in one first. It is the fallback when an object handle
// went invalid, which SoftHSM2 also reports for private objects of a
// token that was logged out.
func (t *Token) withFreshSession(fn func(sh pkcs11.SessionHandle) error) error {
	return t.run(true, fn)
}

func (t *Token) run(fresh bool, fn func(sh pkcs11.SessionHandle) error) (err error) {
	defer func() {
		// A handle gone invalid is found again by the caller (refind),
		// on a fresh session: not a failure unless that fails too.
		var pe pkcs11.Error
		if errors.As(err, &pe) && !handleInvalid(err) {
			t.failures.Add(1)
		}
	}()
	s, err := t.acquire()
	if err != nil {
		return err
	}
	defer t.release(s)
	if !fresh {
		err = fn(s.h)
		if deviceGone(err) {
			// The session died with the device: it goes back to the
			// pool closed, so the next caller opens a new one.
			t.dropSession(s)
			return err
		}
		if !needsFreshSession(err) {
			return err
		}
	}
	t.dropSession(s)
	if rerr := t.openSession(s, true); rerr != nil {
		if err != nil {
			return fmt.Errorf("%w (after %w)", rerr, err)
		}
		return rerr
	}
	err = fn(s.h)
	if deviceGone(err) {
		t.dropSession(s)
	}
	return err
}

// requireLogin fails with CKR_USER_NOT_LOGGED_IN (which makes withSession
// retry on a fresh, logged-in session) when sh is not logged in as user.
// Searches for private objects use it: on a logged-out session they would
// quietly find nothing.
func (t *Token) requireLogin(sh pkcs11.SessionHandle) error {
	info, err := t.ctx.GetSessionInfo(sh)
	if err != nil {
		return err
	}
	if info.State != pkcs11.CKS_RW_USER_FUNCTIONS && info.State != pkcs11.CKS_RO_USER_FUNCTIONS {
		return pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN)
	}
	return nil
}

// Close waits for operations in flight, closes the Token's sessions and
// releases the module; the last Token of a module finalizes it. Signers
// obtained from the Token stop working. Close is idempotent.
func (t *Token) Close() error {
	t.closeOnce.Do(func() {
		close(t.done)
		// Wait for operations in flight to give their sessions back.
		sessions := make([]*session, 0, t.size)
		for range t.size {
			sessions = append(sessions, <-t.pool)
		}
		var errs []error
		t.mod.logout(t.slot, func() {
			for _, s := range sessions {
				if !s.open {
					continue
				}
				err := t.ctx.CloseSession(s.h)
				if err != nil && !isCKR(err, pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED) {
					errs = append(errs, fmt.Errorf("hsm: token %q: close session: %w", t.label, err))
				}
				s.open = false
			}
		})
		errs = append(errs, t.mod.release())
		t.closeErr = errors.Join(errs...)
	})
	return t.closeErr
}
