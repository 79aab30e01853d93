package hsmtest_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/hsm/hsmtest"
)

func TestMain(m *testing.M) {
	os.Setenv("SOFTHSM2_CONF", "/nonexistent/softhsm2.conf")
	code := m.Run()
	dir := hsmtest.Dir()
	hsmtest.Cleanup()
	if dir != "" {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			fmt.Fprintf(os.Stderr, "Cleanup left %s behind (%v)\n", dir, err)
			code = 1
		}
	}
	os.Exit(code)
}

func TestNewToken(t *testing.T) {
	seen := map[string]bool{}
	for range hsmtest.BatchSize + 2 { // crosses a pool refill
		cfg := hsmtest.NewToken(t)
		if seen[cfg.TokenLabel] || len(cfg.TokenLabel) > 32 || cfg.PIN == "" {
			t.Fatalf("bad config %+v", cfg)
		}
		seen[cfg.TokenLabel] = true
	}
	conf := os.Getenv("SOFTHSM2_CONF")
	if filepath.Dir(conf) != hsmtest.Dir() || !strings.HasPrefix(conf, os.TempDir()) {
		t.Fatalf("SOFTHSM2_CONF = %q, want a file in %q under %q", conf, hsmtest.Dir(), os.TempDir())
	}
	body, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"directories.tokendir = " + filepath.Join(hsmtest.Dir(), "tokens"),
		"objectstore.backend = file",
		"log.level = ERROR",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("softhsm2.conf lacks %q:\n%s", want, body)
		}
	}
	// All of them are usable, several at once.
	var toks []*hsm.Token
	for range 3 {
		tok, err := hsm.Open(hsmtest.NewToken(t))
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	for _, tok := range toks {
		if err := tok.Close(); err != nil {
			t.Error(err)
		}
	}
}

// fakeTB records what Require does instead of stopping the test.
type fakeTB struct {
	testing.TB
	fatal, skip string
}

func (f *fakeTB) Helper()                        {}
func (f *fakeTB) Fatalf(format string, a ...any) { f.fatal = fmt.Sprintf(format, a...) }
func (f *fakeTB) Skipf(format string, a ...any)  { f.skip = fmt.Sprintf(format, a...) }

func TestRequire(t *testing.T) {
	for _, tc := range []struct {
		name      string
		env       map[string]string
		wantFatal bool
	}{
		{"skip", map[string]string{"CI": "", "GOVNET_REQUIRE_PRIVILEGED": ""}, false},
		{"CI", map[string]string{"CI": "true", "GOVNET_REQUIRE_PRIVILEGED": ""}, true},
		{"privileged", map[string]string{"CI": "", "GOVNET_REQUIRE_PRIVILEGED": "1"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PATH", t.TempDir()) // no softhsm2-util
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			f := &fakeTB{}
			hsmtest.Require(f)
			if tc.wantFatal && (f.fatal == "" || f.skip != "") {
				t.Errorf("want Fatal, got fatal=%q skip=%q", f.fatal, f.skip)
			}
			if !tc.wantFatal && (f.skip == "" || f.fatal != "") {
				t.Errorf("want Skip, got fatal=%q skip=%q", f.fatal, f.skip)
			}
		})
	}
}
