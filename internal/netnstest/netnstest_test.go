package netnstest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// recorder is a tb that records instead of stopping the test.
type recorder struct {
	skipped, failed string
}

func (r *recorder) Helper()                           {}
func (r *recorder) Skipf(format string, args ...any)  { r.skipped = fmt.Sprintf(format, args...) }
func (r *recorder) Fatalf(format string, args ...any) { r.failed = fmt.Sprintf(format, args...) }

func TestSkipOrFail(t *testing.T) {
	for _, tc := range []struct {
		name, ci, require string
		wantFail          bool
	}{
		{name: "local", wantFail: false},
		{name: "ci", ci: "true", wantFail: true},
		{name: "required", require: "1", wantFail: true},
		{name: "ci=false", ci: "false", wantFail: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			t.Setenv("GOVNET_REQUIRE_PRIVILEGED", tc.require)
			var r recorder
			skipOrFail(&r, "needs %s", "root")
			if got := r.failed != ""; got != tc.wantFail {
				t.Fatalf("failed=%v (%q), skipped=%q; want failed=%v", got, r.failed, r.skipped, tc.wantFail)
			}
			if r.failed == "" && !strings.Contains(r.skipped, "needs root") {
				t.Fatalf("skip message %q does not say why", r.skipped)
			}
		})
	}
}

func TestIfName(t *testing.T) {
	a, b := IfName("gvw"), IfName("gvw")
	if a == b || len(a) > 15 || !strings.HasPrefix(a, "gvw") {
		t.Fatalf("IfName: %q, %q", a, b)
	}
}

func TestNamespaceLifecycle(t *testing.T) {
	var name string
	t.Run("inner", func(t *testing.T) {
		a, b := New(t), New(t)
		name = a.Name()
		if !strings.HasPrefix(name, Prefix) || a.Name() == b.Name() {
			t.Fatalf("names %q, %q", a.Name(), b.Name())
		}
		ifA, ifB := Veth(t, a, b, netip.MustParsePrefix("198.18.200.1/24"), netip.MustParsePrefix("198.18.200.2/24"))
		if out := a.Exec(t, "ip", "-o", "addr", "show", "dev", ifA); !strings.Contains(out, "198.18.200.1/24") {
			t.Fatalf("address missing on %s: %s", ifA, out)
		}

		// A listener in b, a dial from a: sockets opened by Do live in the
		// namespace.
		var ln net.Listener
		if err := b.Do(func() (err error) {
			ln, err = net.Listen("tcp4", "198.18.200.2:0")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err == nil {
				c.Write([]byte("hi"))
				c.Close()
			}
		}()
		var got []byte
		if err := a.Do(func() error {
			c, err := net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			buf := make([]byte, 2)
			_, err = c.Read(buf)
			got = buf
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if string(got) != "hi" {
			t.Fatalf("read %q", got)
		}
		// The test's own thread is still in the host namespace: the
		// namespace's veth is not visible here.
		if _, err := net.InterfaceByName(ifB); err == nil {
			t.Fatalf("%s visible in the host namespace", ifB)
		}

		cmd := a.Start(t, "sleep", "300")
		if cmd.Process == nil {
			t.Fatal("not started")
		}
	})
	if _, err := os.Stat(filepath.Join("/var/run/netns", name)); !os.IsNotExist(err) {
		t.Fatalf("namespace %s left behind: %v", name, err)
	}
}
