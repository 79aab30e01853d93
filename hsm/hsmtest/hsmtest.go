// Package hsmtest gives tests real SoftHSM2 tokens.
//
// All tokens of a test process live in one process-wide temporary
// directory with its own softhsm2.conf. SoftHSM2 reads SOFTHSM2_CONF when
// the library is initialized, and the library is initialized once per
// process, so the first call of NewToken sets SOFTHSM2_CONF for the whole
// process (overriding any value from the environment) before any token is
// opened. Tests must therefore not open a SoftHSM2 token through hsm.Open
// before their first NewToken.
//
// Tokens are created with softhsm2-util --init-token --free, each with a
// unique label and random PINs.
//
// SoftHSM2 (2.6) scans its token directory only in C_Initialize: a token
// created by softhsm2-util after the library was initialized in this
// process stays invisible until every hsm.Token of the module is closed
// (which finalizes the library) and one is opened again. So that tests can
// keep several tokens open at once, NewToken hands out tokens from a pool
// that it fills BatchSize at a time, before the first token is opened and
// again whenever the pool runs dry. A test process that keeps a Token open
// throughout and then needs more than BatchSize further tokens can fail
// with hsm.ErrTokenNotFound; raise BatchSize (before the first NewToken)
// if that happens.
//
// Tokens are not deleted one by one; call Cleanup from TestMain to remove
// the directory:
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		hsmtest.Cleanup()
//		os.Exit(code)
//	}
//
// Without that the directory (govnet-softhsm-*) is left in os.TempDir.
package hsmtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/govnet/govnet/hsm"
)

var (
	once     sync.Once
	dir      string // process-wide temp dir
	confPath string
	setupErr error
	seq      atomic.Uint64

	cleanMu sync.Mutex // guards dir, confPath, setupErr, pool and soPINs
	pool    []hsm.Config
	soPINs  = map[string]string{} // token label -> SO PIN
)

// BatchSize is how many tokens NewToken creates whenever its pool is
// empty. Set it before the first NewToken.
var BatchSize = 16

// strict reports whether a missing SoftHSM2 must fail tests instead of
// skipping them.
func strict() bool {
	return os.Getenv("CI") == "true" || os.Getenv("GOVNET_REQUIRE_PRIVILEGED") == "1"
}

// Module returns the first of hsm.DefaultModules that exists, or "".
func Module() string {
	for _, m := range hsm.DefaultModules {
		if fi, err := os.Stat(m); err == nil && fi.Mode().IsRegular() {
			return m
		}
	}
	return ""
}

// Require skips the test when softhsm2-util or the SoftHSM2 module is
// missing. When CI=true or GOVNET_REQUIRE_PRIVILEGED=1, it fails the test
// instead.
func Require(t testing.TB) {
	t.Helper()
	var missing string
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		missing = "softhsm2-util not in PATH"
	} else if Module() == "" {
		missing = fmt.Sprintf("SoftHSM2 module not found in %v", hsm.DefaultModules)
	}
	if missing == "" {
		return
	}
	if strict() {
		t.Fatalf("hsmtest: %s (install softhsm2; required because CI=true or GOVNET_REQUIRE_PRIVILEGED=1)", missing)
		return
	}
	t.Skipf("hsmtest: %s (install softhsm2)", missing)
}

func setup() {
	d, err := os.MkdirTemp("", "govnet-softhsm-")
	if err != nil {
		setupErr = err
		return
	}
	tokens := filepath.Join(d, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		setupErr = err
		return
	}
	conf := filepath.Join(d, "softhsm2.conf")
	body := fmt.Sprintf(`# written by govnet hsmtest
directories.tokendir = %s
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
library.reset_on_fork = false
`, tokens)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		setupErr = err
		return
	}
	// With cgo, os.Setenv also updates the C environment that
	// libsofthsm2 reads with getenv at C_Initialize.
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		setupErr = err
		return
	}
	dir, confPath = d, conf
}

// Dir returns the process-wide SoftHSM2 directory ("" before the first
// NewToken).
func Dir() string {
	cleanMu.Lock()
	defer cleanMu.Unlock()
	return dir
}

// NewToken creates a fresh SoftHSM2 token with a unique label and random
// PINs and returns a Config for it. It calls Require first.
func NewToken(t testing.TB) hsm.Config {
	t.Helper()
	Require(t)
	cleanMu.Lock()
	once.Do(setup)
	conf := confPath
	if setupErr != nil {
		cleanMu.Unlock()
		t.Fatalf("hsmtest: set up SoftHSM2 directory: %v", setupErr)
	}
	if dir == "" {
		cleanMu.Unlock()
		t.Fatal("hsmtest: SoftHSM2 directory already cleaned up")
	}
	if len(pool) == 0 {
		if err := fillPool(conf); err != nil {
			cleanMu.Unlock()
			t.Fatal(err)
		}
	}
	cfg := pool[0]
	pool = pool[1:]
	cleanMu.Unlock()
	return cfg
}

// CreateToken creates one token right away, bypassing the pool, and
// returns its Config. Unlike NewToken's tokens it is invisible to a
// SoftHSM2 library that is already initialized in this process (see the
// package documentation); it exists to test exactly that.
func CreateToken(t testing.TB) hsm.Config {
	t.Helper()
	Require(t)
	cleanMu.Lock()
	defer cleanMu.Unlock()
	once.Do(setup)
	if setupErr != nil {
		t.Fatalf("hsmtest: set up SoftHSM2 directory: %v", setupErr)
	}
	if dir == "" {
		t.Fatal("hsmtest: SoftHSM2 directory already cleaned up")
	}
	cfg, err := createToken(confPath)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// fillPool creates BatchSize tokens. The softhsm2-util runs are
// sequential: concurrent runs see each other's half-written token
// directories and fail.
func fillPool(conf string) error {
	for range max(BatchSize, 1) {
		cfg, err := createToken(conf)
		if err != nil {
			return err
		}
		pool = append(pool, cfg)
	}
	return nil
}

// createToken runs softhsm2-util --init-token for a new unique label.
func createToken(conf string) (hsm.Config, error) {
	// Labels are at most 32 bytes.
	label := fmt.Sprintf("govnet-test-%d-%d", os.Getpid()%100000, seq.Add(1))
	pin, err := randomPIN()
	if err != nil {
		return hsm.Config{}, err
	}
	soPIN, err := randomPIN()
	if err != nil {
		return hsm.Config{}, err
	}
	cmd := exec.Command("softhsm2-util", "--init-token", "--free",
		"--label", label, "--so-pin", soPIN, "--pin", pin)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		return hsm.Config{}, fmt.Errorf("hsmtest: softhsm2-util --init-token --label %s: %v\n%s", label, err, out)
	}
	soPINs[label] = soPIN
	return hsm.Config{Module: Module(), TokenLabel: label, PIN: pin}, nil
}

// SOPIN returns the security officer PIN of a token made by NewToken or
// CreateToken ("" for any other label).
func SOPIN(label string) string {
	cleanMu.Lock()
	defer cleanMu.Unlock()
	return soPINs[label]
}

func randomPIN() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("hsmtest: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// Cleanup removes the process-wide SoftHSM2 directory. Call it from
// TestMain after m.Run, when no Token is open any more; NewToken fails
// afterwards.
func Cleanup() {
	cleanMu.Lock()
	defer cleanMu.Unlock()
	once.Do(func() {}) // a later NewToken must not recreate the directory
	if dir != "" {
		_ = os.RemoveAll(dir)
		dir, pool = "", nil
	}
}
