package hsm

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/hashicorp/vault/shamir"
	"github.com/miekg/pkcs11"
)

// M-of-N activation of a token (the Cipher Committee's root token).
//
// A token under quorum control has no PIN that any one person knows. Its
// user and SO PINs are derived from a random activation secret
// (NewSecret) that is split with Shamir's scheme (SplitSecret) among
// custodians and never stored whole. Any M shares reconstruct it
// (CombineShares); SecretCheck lets a caller tell a wrong reconstruction
// from the right one before the token sees a PIN, so a wrong set of
// shares never costs a PIN attempt.

// SecretSize is the size in bytes of an activation secret.
const SecretSize = 32

// pinBytes is how much of the derived HMAC a PIN uses: 16 bytes, 32 hex
// characters, which fits the PIN length limits of common HSMs.
const pinBytes = 16

// Errors of quorum activation.
var (
	// ErrShares: the shares are malformed or do not reconstruct a secret.
	ErrShares = errors.New("invalid secret shares")
	// ErrTokenInUse: the token is open in this process, so its login
	// state cannot be changed.
	ErrTokenInUse = errors.New("token is in use in this process")
	// ErrNotFresh: ActivateToken found objects on the token; a token put
	// under quorum control must hold nothing else.
	ErrNotFresh = errors.New("the token is not fresh")
	// ErrTokenUnchanged is wrapped by an ActivateToken error when the
	// token was left as it was (its PINs unchanged).
	ErrTokenUnchanged = errors.New("the token was not changed")
)

// NewSecret returns a fresh random activation secret.
func NewSecret() ([]byte, error) {
	s := make([]byte, SecretSize)
	if _, err := rand.Read(s); err != nil {
		return nil, fmt.Errorf("hsm: activation secret: %w", err)
	}
	return s, nil
}

// SplitSecret splits secret into n shares of which any m reconstruct it
// (2 <= m <= n <= 255). Each share is len(secret)+1 bytes.
func SplitSecret(secret []byte, n, m int) ([][]byte, error) {
	if len(secret) != SecretSize {
		return nil, fmt.Errorf("hsm: split: secret is %d bytes, want %d: %w", len(secret), SecretSize, ErrShares)
	}
	if m < 2 || m > n || n > 255 {
		return nil, fmt.Errorf("hsm: split: threshold %d of %d: want 2 <= M <= N <= 255: %w", m, n, ErrShares)
	}
	shares, err := shamir.Split(secret, n, m)
	if err != nil {
		return nil, fmt.Errorf("hsm: split: %w", err)
	}
	return shares, nil
}

// CombineShares reconstructs a secret from shares. It cannot know whether
// enough shares were given: fewer than the threshold yield a wrong secret
// without error. Compare SecretCheck of the result with the one recorded
// when the secret was made.
func CombineShares(shares [][]byte) ([]byte, error) {
	if len(shares) < 2 {
		return nil, fmt.Errorf("hsm: combine: %d share(s), at least 2 needed: %w", len(shares), ErrShares)
	}
	for i, s := range shares {
		if len(s) != SecretSize+1 {
			return nil, fmt.Errorf("hsm: combine: share %d is %d bytes, want %d: %w", i+1, len(s), SecretSize+1, ErrShares)
		}
	}
	secret, err := shamir.Combine(shares)
	if err != nil {
		return nil, fmt.Errorf("hsm: combine: %v: %w", err, ErrShares)
	}
	return secret, nil
}

// derive returns HMAC-SHA256(secret, purpose).
func derive(secret []byte, purpose string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(purpose))
	return m.Sum(nil)
}

// SecretCheck returns a value that identifies secret without revealing it
// (the secret is 256 random bits, so a hash of it cannot be searched). It
// is recorded when the secret is made and compared, in constant time with
// hmac.Equal, before a reconstructed secret is tried on the token.
func SecretCheck(secret []byte) string {
	return "hmac-sha256:" + hex.EncodeToString(derive(secret, "govnet/hsm/secret-check/v1"))
}

// SecretMatches reports whether secret is the one check was made from.
func SecretMatches(secret []byte, check string) bool {
	return hmac.Equal([]byte(SecretCheck(secret)), []byte(check))
}

// UserPIN derives the token's user PIN from the activation secret.
func UserPIN(secret []byte) string {
	return hex.EncodeToString(derive(secret, "govnet/hsm/user-pin/v1")[:pinBytes])
}

// SOPIN derives the token's security officer PIN from the activation
// secret: after ActivateToken, nobody holds an SO PIN that could reset the
// user PIN behind the custodians' backs.
func SOPIN(secret []byte) string {
	return hex.EncodeToString(derive(secret, "govnet/hsm/so-pin/v1")[:pinBytes])
}

// ActivateToken puts the token cfg.TokenLabel under quorum control: it
// logs in as security officer with soPIN, checks that the token holds no
// object an SO can see (every key pair has a public half, so a token that
// has been used for keys or certificates is refused with ErrNotFresh),
// sets the user PIN to UserPIN(secret) (C_InitPIN) and changes the SO PIN
// to SOPIN(secret) (C_SetPIN). cfg.PIN is ignored. Afterwards soPIN no
// longer works and the token can be opened only with a PIN derived from
// the secret.
//
// An error that left the token as it was wraps ErrTokenUnchanged; any
// other error may come after a PIN was changed, so the secret must be
// kept. The token must not be open in this process (ErrTokenInUse).
func ActivateToken(cfg Config, soPIN string, secret []byte, opts ...Option) error {
	o := options{allowed: DefaultModules}
	for _, opt := range opts {
		opt(&o)
	}
	unchanged := func(err error) error { return fmt.Errorf("%w (%w)", err, ErrTokenUnchanged) }
	if len(secret) != SecretSize {
		return unchanged(fmt.Errorf("hsm: token %q: activation secret is %d bytes, want %d", cfg.TokenLabel, len(secret), SecretSize))
	}
	if soPIN == "" {
		return unchanged(fmt.Errorf("hsm: token %q: SO PIN: %w", cfg.TokenLabel, ErrNoPIN))
	}
	path, err := checkModule(cfg.Module, o.allowed)
	if err != nil {
		return unchanged(err)
	}
	mod, err := acquireModule(path)
	if err != nil {
		return unchanged(err)
	}
	changed, err := activate(mod, cfg.TokenLabel, soPIN, UserPIN(secret), SOPIN(secret))
	if err != nil && !changed {
		err = unchanged(err)
	}
	if rerr := mod.release(); rerr != nil {
		// The token's PINs may have changed: never report this as
		// unchanged.
		err = errors.Join(err, fmt.Errorf("hsm: token %q: release the module after activation: %w", cfg.TokenLabel, rerr))
	}
	return err
}

// activate does ActivateToken's work; changed says whether a PIN may have
// changed.
func activate(mod *module, label, soPIN, userPIN, newSOPIN string) (changed bool, _ error) {
	ctx := mod.ctx
	slot, err := findSlot(ctx, mod.path, label)
	if err != nil {
		return false, err
	}
	ti, err := ctx.GetTokenInfo(slot)
	if err != nil {
		return false, fmt.Errorf("hsm: token %q: token info: %w", label, err)
	}
	if ti.MaxPinLen < uint(len(userPIN)) {
		return false, fmt.Errorf("hsm: token %q: PINs of %d characters are not accepted (max %d)", label, len(userPIN), ti.MaxPinLen)
	}
	// Hold the module's login lock: no Token of this process may log in
	// while the SO is logged in.
	mod.mu.Lock()
	defer mod.mu.Unlock()
	if _, ok := mod.logins[slot]; ok {
		return false, fmt.Errorf("hsm: token %q: %w", label, ErrTokenInUse)
	}
	sh, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return false, fmt.Errorf("hsm: token %q: open session: %w", label, err)
	}
	defer ctx.CloseSession(sh)
	if err := ctx.Login(sh, pkcs11.CKU_SO, soPIN); err != nil {
		switch {
		case isCKR(err, pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE):
			return false, fmt.Errorf("hsm: token %q: SO login: %w", label, ErrWrongPIN)
		case isCKR(err, pkcs11.CKR_PIN_LOCKED):
			return false, fmt.Errorf("hsm: token %q: SO login: %w", label, ErrPINLocked)
		case isCKR(err, pkcs11.CKR_USER_ANOTHER_ALREADY_LOGGED_IN, pkcs11.CKR_USER_ALREADY_LOGGED_IN):
			return false, fmt.Errorf("hsm: token %q: SO login: %w", label, ErrTokenInUse)
		}
		return false, fmt.Errorf("hsm: token %q: SO login: %w", label, err)
	}
	defer ctx.Logout(sh)
	n, err := countObjects(ctx, sh)
	if err != nil {
		return false, fmt.Errorf("hsm: token %q: list objects: %w", label, err)
	}
	if n > 0 {
		return false, fmt.Errorf("hsm: token %q holds %d object(s) (keys or certificates): %w; put a token initialized for this alone under quorum control", label, n, ErrNotFresh)
	}
	if err := ctx.InitPIN(sh, userPIN); err != nil {
		// C_InitPIN either sets the PIN or fails; a real HSM may not
		// say which, so the secret is kept.
		return true, fmt.Errorf("hsm: token %q: set user PIN: %w", label, err)
	}
	if err := ctx.SetPIN(sh, soPIN, newSOPIN); err != nil {
		return true, fmt.Errorf("hsm: token %q: change SO PIN (the user PIN is already derived from the secret): %w", label, err)
	}
	return true, nil
}

// countObjects counts the objects session sh can see, up to 64.
func countObjects(ctx *pkcs11.Ctx, sh pkcs11.SessionHandle) (int, error) {
	if err := ctx.FindObjectsInit(sh, nil); err != nil {
		return 0, err
	}
	objs, _, err := ctx.FindObjects(sh, 64)
	if ferr := ctx.FindObjectsFinal(sh); err == nil {
		err = ferr
	}
	return len(objs), err
}
