package netagent

import (
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/internal/credfile"
)

// Where the gateway's TLS private key lives. By default it is a PEM file
// in the state directory (tls.key, 0600). With an hsm: section in the
// config it lives in the gateway's own PKCS#11 token instead: generated
// there at enrollment and at every renewal (sensitive, never
// extractable), used through a crypto.Signer for CSRs and TLS handshakes,
// and named in the state directory by its label (tls.key.label); no file
// ever holds it. A keyStore hides the difference from enrollment, renewal
// and the TLS client.
//
// Token keys are labelled keyLabelPrefix + interface + "-" + 16 random
// hex digits. The interface name is unique on the machine, so several
// agents may share one token; each destroys only its own keys that no
// state file names (the key replaced by a renewal, keys a crash left
// behind). Interface names may contain '-', so the prefix of agent "gv"
// also begins the labels of agent "gv-x": a label is this agent's only if
// exactly the random suffix follows the prefix (see own).

// fileTLSKeyLabel names the token key in use; renewals stage the next one
// in fileTLSKeyLabel + ".next" (see finishRenewal).
const fileTLSKeyLabel = "tls.key.label"

// keyLabelPrefix starts the label of every TLS key the agent generates in
// a token.
const keyLabelPrefix = "govnet-agent-tls-"

// keyStore keeps the gateway's TLS private key.
type keyStore interface {
	// keyFile is the state directory file that holds (file) or names
	// (token) the live key. A renewal stages the next one in keyFile() +
	// ".next".
	keyFile() string
	// newKey makes a key that is not in use yet and returns it with the
	// contents of keyFile that would put it in use.
	newKey() (crypto.Signer, []byte, error)
	// discard throws away a key from newKey that will not be used.
	discard(keyData []byte) error
	// loadKey returns the key that keyData (from newKey) holds or names.
	loadKey(keyData []byte) (crypto.Signer, error)
	// loadPair loads the certificate chain in certFile with the key that
	// keyFile holds or names, and checks that they belong together.
	loadPair(certFile, keyFile string) (tls.Certificate, error)
	// cleanup destroys keys that no state file names any more and
	// returns their names. It destroys nothing while the live key is
	// unknown (not enrolled yet).
	cleanup() ([]string, error)
	Close() error
}

// openKeyStore opens the store the config asks for: the token of its hsm:
// section, else files.
func openKeyStore(cfg Config) (keyStore, error) {
	if !cfg.HSM.Enabled() {
		return fileKeys{}, nil
	}
	pin, err := hsm.ReadPIN(cfg.HSM.PINFile, cfg.HSM.PINEnv)
	if err != nil {
		return nil, fmt.Errorf("TLS key token: %w", err)
	}
	tok, err := hsm.Open(hsm.Config{Module: cfg.HSM.Module, TokenLabel: cfg.HSM.TokenLabel, PIN: pin}, hsm.WithSessions(2))
	if err != nil {
		return nil, fmt.Errorf("TLS key token: %w", err)
	}
	return &tokenKeys{tok: tok, cfg: cfg, prefix: keyLabelPrefix + cfg.Interface + "-"}, nil
}

// validate checks the hsm: section of the config; each error names its key.
func (h HSMConfig) validate() []error {
	var errs []error
	switch m := filepath.Clean(h.Module); {
	case h.Module == "":
		errs = append(errs, fmt.Errorf("hsm.module: required with an hsm: section (allowed: %s)", strings.Join(hsm.DefaultModules, ", ")))
	case !filepath.IsAbs(m) || !slices.Contains(hsm.DefaultModules, m):
		errs = append(errs, fmt.Errorf("hsm.module %q: not on the PKCS#11 module allowlist (allowed: %s)", h.Module, strings.Join(hsm.DefaultModules, ", ")))
	default:
		if fi, err := os.Stat(m); err != nil || !fi.Mode().IsRegular() {
			errs = append(errs, fmt.Errorf("hsm.module %q: no such library on this machine (install softhsm2, or the token vendor's module)", h.Module))
		}
	}
	switch {
	case h.TokenLabel == "":
		errs = append(errs, errors.New("hsm.token_label: required (the token's label; `softhsm2-util --show-slots` lists them)"))
	case len(h.TokenLabel) > 32:
		errs = append(errs, fmt.Errorf("hsm.token_label %q: PKCS#11 token labels are at most 32 bytes", h.TokenLabel))
	}
	switch {
	case h.PINFile != "" && h.PINEnv != "":
		errs = append(errs, fmt.Errorf("hsm: pin_file %q and pin_env %q both set: want exactly one PIN source", h.PINFile, h.PINEnv))
	case h.PINFile == "" && h.PINEnv == "":
		errs = append(errs, errors.New("hsm: set pin_file or pin_env (there is no PIN flag)"))
	case h.PINFile != "" && !filepath.IsAbs(h.PINFile):
		errs = append(errs, fmt.Errorf("hsm.pin_file %q: must be an absolute path", h.PINFile))
	}
	return errs
}

// fileKeys keeps the key as PEM in the state directory.
type fileKeys struct{}

func (fileKeys) keyFile() string { return fileTLSKey }

func (fileKeys) newKey() (crypto.Signer, []byte, error) {
	key, err := credfile.NewKey(credfile.P256)
	if err != nil {
		return nil, nil, err
	}
	data, err := credfile.EncodeKey(key)
	return key, data, err
}

func (fileKeys) discard([]byte) error { return nil }

func (fileKeys) loadKey(keyData []byte) (crypto.Signer, error) { return credfile.ParseKey(keyData) }

func (fileKeys) loadPair(certFile, keyFile string) (tls.Certificate, error) {
	return tls.LoadX509KeyPair(certFile, keyFile)
}

func (fileKeys) cleanup() ([]string, error) { return nil, nil }
func (fileKeys) Close() error               { return nil }

// tokenKeys keeps the key in a PKCS#11 token.
type tokenKeys struct {
	tok    *hsm.Token
	cfg    Config
	prefix string // of the labels of this agent's keys
}

func (k *tokenKeys) keyFile() string { return fileTLSKeyLabel }

// keySuffixLen is the number of random hex digits that end a key label.
const keySuffixLen = 16

func (k *tokenKeys) newKey() (crypto.Signer, []byte, error) {
	b := make([]byte, keySuffixLen/2)
	if _, err := rand.Read(b); err != nil {
		return nil, nil, err
	}
	label := k.prefix + hex.EncodeToString(b)
	s, err := k.tok.GenerateKey(label, elliptic.P256())
	if err != nil {
		return nil, nil, err
	}
	return s, []byte(label + "\n"), nil
}

// own reports whether label is one of this agent's key labels: its
// prefix followed by exactly keySuffixLen lower-case hex digits. The
// prefix alone is not enough: it also begins the labels of an agent whose
// interface name extends this one's with '-' (gv and gv-x).
func (k *tokenKeys) own(label string) bool {
	suffix, ok := strings.CutPrefix(label, k.prefix)
	if !ok || len(suffix) != keySuffixLen {
		return false
	}
	for _, c := range []byte(suffix) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// ownLabel is the label keyData names, if it is one of this agent's.
func (k *tokenKeys) ownLabel(keyData []byte) (string, error) {
	label := strings.TrimSpace(string(keyData))
	if !k.own(label) {
		return "", fmt.Errorf("key %q is not this agent's (labels are %q and %d hex digits)", label, k.prefix, keySuffixLen)
	}
	return label, nil
}

func (k *tokenKeys) discard(keyData []byte) error {
	label, err := k.ownLabel(keyData)
	if err != nil {
		return fmt.Errorf("%w: not destroyed", err)
	}
	err = k.tok.DestroyKey(label)
	if errors.Is(err, hsm.ErrKeyNotFound) {
		return nil
	}
	return err
}

func (k *tokenKeys) loadKey(keyData []byte) (crypto.Signer, error) {
	label, err := k.ownLabel(keyData)
	if err != nil {
		return nil, err
	}
	return k.tok.Signer(label)
}

// label reads the key label that file holds.
func (k *tokenKeys) label(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	l := strings.TrimSpace(string(data))
	if l == "" {
		return "", fmt.Errorf("%s: empty: want the label of a key in token %q", file, k.tok.Label())
	}
	return l, nil
}

func (k *tokenKeys) loadPair(certFile, keyFile string) (tls.Certificate, error) {
	label, err := k.label(keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	data, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	chain, err := ca.ParsePEM(data)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s: %w", certFile, err)
	}
	signer, err := k.tok.Signer(label)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s: %w", keyFile, err)
	}
	if !samePublicKey(signer.Public(), chain[0].PublicKey) {
		return tls.Certificate{}, fmt.Errorf("%s: the certificate is not for key %q of token %q", certFile, label, k.tok.Label())
	}
	out := tls.Certificate{PrivateKey: signer, Leaf: chain[0]}
	for _, c := range chain {
		out.Certificate = append(out.Certificate, c.Raw)
	}
	return out, nil
}

func (k *tokenKeys) cleanup() ([]string, error) {
	live, err := k.label(k.cfg.path(fileTLSKeyLabel))
	if err != nil {
		return nil, fmt.Errorf("keeping every key: the key in use is unknown: %w", err)
	}
	// A staged renewal's key stays until finishRenewal settles it, and
	// an unanswered renewal's until its outcome is known.
	staged, _ := k.label(k.cfg.path(fileTLSKeyLabel + ".next"))
	pending, _ := readPendingFile(k.cfg) // unreadable: nothing to spare
	pendingKey := strings.TrimSpace(pending.Key)
	// An enrollment's keys stay until it is installed or replaced.
	var enrollKey string
	if p, err := readEnrollFile(k.cfg); err == nil {
		enrollKey = strings.TrimSpace(p.Key)
	}
	keys, err := k.tok.Keys()
	if err != nil {
		return nil, err
	}
	var (
		gone []string
		errs []error
	)
	for _, ki := range keys {
		if !k.own(ki.Label) || ki.Label == live || ki.Label == staged || ki.Label == pendingKey || ki.Label == enrollKey || slices.Contains(gone, ki.Label) {
			continue
		}
		if err := k.tok.DestroyKey(ki.Label); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
			errs = append(errs, err)
			continue
		}
		gone = append(gone, ki.Label)
	}
	return gone, errors.Join(errs...)
}

func (k *tokenKeys) Close() error { return k.tok.Close() }

// settleKeys is what every start does before it loads the identity: it
// completes or drops a renewal that a crash interrupted (finishRenewal)
// and then destroys the token keys that no state file names. When the
// renewal cannot be settled it destroys nothing and says why.
func settleKeys(cfg Config, keys keyStore, log *slog.Logger) error {
	if err := finishRenewal(cfg, keys); err != nil {
		return err
	}
	dropStaleKeys(keys, log)
	return nil
}

// dropStaleKeys destroys the keys no state file names any more and logs
// what it did; a failure only costs token space and is retried at the
// next start or renewal.
func dropStaleKeys(keys keyStore, log *slog.Logger) {
	gone, err := keys.cleanup()
	for _, l := range gone {
		log.Info("destroyed a TLS key no longer in use", "key", l)
	}
	if err != nil {
		log.Warn("destroy TLS keys no longer in use", "err", err)
	}
}

// keyKindError explains a missing key file when the state directory holds
// the other kind of key: the hsm: section decides at enrollment where the
// key lives, and the config must keep saying so.
func keyKindError(cfg Config, keys keyStore, err error) error {
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	switch keys.(type) {
	case *tokenKeys:
		if _, serr := os.Stat(cfg.path(fileTLSKey)); serr == nil {
			return fmt.Errorf("%w: the gateway was enrolled with its TLS key in %s, but the config has an hsm: section: remove the section, or re-enroll to move the key into the token", err, cfg.path(fileTLSKey))
		}
	case fileKeys:
		if _, serr := os.Stat(cfg.path(fileTLSKeyLabel)); serr == nil {
			return fmt.Errorf("%w: the gateway's TLS key is in a PKCS#11 token (%s names it): the config needs its hsm: section", err, cfg.path(fileTLSKeyLabel))
		}
	}
	return err
}

// samePublicKey reports whether a and b are the same public key.
func samePublicKey(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}
