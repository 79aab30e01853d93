// Package netnstest gives tests throwaway Linux network namespaces: real
// kernel objects (nftables tables, veth pairs, TUN and WireGuard devices)
// that a test may create and break without touching the host's own network.
//
// Everything a helper creates is registered with t.Cleanup, so it is removed
// even when the test fails. Names are random and machine-unique: namespaces
// start with "gvt-", interfaces get a random suffix (WireGuard's
// /var/run/wireguard is shared by all namespaces).
//
// Tests that need these privileges call [Require] (New does it for them):
// without root or the ip tool they skip, except when CI=true or
// GOVNET_REQUIRE_PRIVILEGED=1, where a privileged test that cannot run is a
// failure rather than a silent skip.
package netnstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Prefix starts the name of every namespace this package creates.
const Prefix = "gvt-"

// tb is the part of testing.TB that the requirement checks use; a narrow
// interface so the skip-or-fail decision itself can be tested.
type tb interface {
	Helper()
	Skipf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// Mandatory reports whether privileged tests must run here: in CI
// (CI=true) or when GOVNET_REQUIRE_PRIVILEGED=1. There a missing privilege
// or tool fails the test instead of skipping it.
func Mandatory() bool {
	return os.Getenv("CI") == "true" || os.Getenv("GOVNET_REQUIRE_PRIVILEGED") == "1"
}

func skipOrFail(t tb, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Mandatory() {
		t.Fatalf("privileged test cannot run: %s (CI=true or GOVNET_REQUIRE_PRIVILEGED=1 forbids skipping)", msg)
		return
	}
	t.Skipf("skipping privileged test: %s", msg)
}

// Require skips the test unless it runs as root with the ip tool available
// (it fails instead when [Mandatory] is true).
func Require(t testing.TB) {
	t.Helper()
	require(t)
}

func require(t tb) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		missing = append(missing, "the ip tool (iproute2)")
	}
	if len(missing) > 0 {
		skipOrFail(t, "needs %s", strings.Join(missing, " and "))
	}
}

// RequireTools is [Require] plus the named programs in PATH (e.g. "nft",
// "wg").
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	require(t)
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFail(t, "needs the %s tool", tool)
		}
	}
}

// RequireTUN is [Require] plus a usable /dev/net/tun.
func RequireTUN(t testing.TB) {
	t.Helper()
	require(t)
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		skipOrFail(t, "needs /dev/net/tun: %v", err)
		return
	}
	f.Close()
}

// randomHex returns n random bytes as 2n hex digits.
func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// IfName returns a random interface name that starts with prefix, at most
// 15 bytes long (IFNAMSIZ-1). prefix must be at most 7 bytes.
func IfName(prefix string) string {
	if len(prefix) > 7 {
		panic("netnstest: interface name prefix longer than 7 bytes: " + prefix)
	}
	return prefix + randomHex(4)
}

// NS is a network namespace named under /var/run/netns, deleted at the end
// of the test that created it.
type NS struct {
	name string
	file *os.File
}

// New creates a namespace with a unique name, brings its loopback up and
// registers its deletion (and that of everything in it) with t.Cleanup.
func New(t testing.TB) *NS {
	t.Helper()
	Require(t)
	name := Prefix + randomHex(5)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	ns := &NS{name: name}
	t.Cleanup(func() {
		if ns.file != nil {
			ns.file.Close()
		}
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v: %s", name, err, out)
		}
	})
	f, err := os.Open(filepath.Join("/var/run/netns", name))
	if err != nil {
		t.Fatalf("open namespace %s: %v", name, err)
	}
	ns.file = f
	ns.Exec(t, "ip", "link", "set", "lo", "up")
	return ns
}

// Name is the namespace's name, as `ip netns` knows it.
func (ns *NS) Name() string { return ns.name }

// Fd is a file descriptor referring to the namespace, valid until the test
// ends (for nftables.WithNetNSFd, netlink handles and similar).
func (ns *NS) Fd() int { return int(ns.file.Fd()) }

// Command returns, unstarted, `ip netns exec <ns> args...`.
func (ns *NS) Command(args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.name}, args...)...)
}

// Run runs args inside the namespace and returns its combined output.
func (ns *NS) Run(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), ns.name, err, bytes.TrimSpace(out))
	}
	return out, nil
}

// Exec runs args inside the namespace and fails the test if it fails.
func (ns *NS) Exec(t testing.TB, args ...string) string {
	t.Helper()
	out, err := ns.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// Start starts args inside the namespace in the background; the process is
// killed (if still running) and reaped at cleanup. Its output goes to the
// test log when the test fails.
func (ns *NS) Start(t testing.TB, args ...string) *exec.Cmd {
	t.Helper()
	cmd := ns.Command(args...)
	var out syncBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	StartCmd(t, cmd)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("output of %s:\n%s", strings.Join(args, " "), out.String())
		}
	})
	return cmd
}

// StartCmd starts cmd (typically from [NS.Command], with pipes attached by
// the caller) and registers a cleanup that kills it unless it has already
// been waited for, then reaps it. A caller that stops the process gracefully
// in its own, later-registered cleanup must call cmd.Wait there.
func StartCmd(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", strings.Join(cmd.Args, " "), err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState != nil {
			return // already reaped by the caller
		}
		_ = cmd.Process.Kill()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("process %d (%s) did not exit after SIGKILL", cmd.Process.Pid, cmd.Path)
		}
	})
}

// Do runs fn on an OS thread that has entered the namespace, so sockets fn
// opens (net.Listen, net.Dial, raw sockets) live in the namespace; they keep
// working from any goroutine afterwards. fn must not start goroutines that
// expect to be in the namespace. Do not use it for wireguard-go, which opens
// sockets on other threads: run such code in a process started inside the
// namespace instead.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is locked for the goroutine's whole life; if it cannot
		// return to its original namespace it is never unlocked, and the
		// runtime destroys it when the goroutine exits.
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(ns.file.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace %s: %w", ns.name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave namespace %s: %w", ns.name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// ServeTCP listens on addr inside ns until the test ends and runs handle
// on each connection, which it then closes. It returns the address
// listened on.
func (ns *NS) ServeTCP(t testing.TB, addr string, handle func(net.Conn)) string {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// Veth joins a and b with a veth pair whose ends get addrA and addrB and
// are brought up. It returns the interface names (unique, random). The pair
// is created directly inside the namespaces: nothing appears in the host's.
func Veth(t testing.TB, a, b *NS, addrA, addrB netip.Prefix) (ifA, ifB string) {
	t.Helper()
	base := IfName("gv")
	ifA, ifB = base+"a", base+"b"
	a.Exec(t, "ip", "link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", b.name)
	t.Cleanup(func() {
		// Deleting either end removes the pair; the namespaces' own cleanup
		// would do it too, this just keeps the order tidy.
		_, _ = a.Run("ip", "link", "del", ifA)
	})
	a.Exec(t, "ip", "addr", "add", addrA.String(), "dev", ifA)
	b.Exec(t, "ip", "addr", "add", addrB.String(), "dev", ifB)
	a.Exec(t, "ip", "link", "set", ifA, "up")
	b.Exec(t, "ip", "link", "set", ifB, "up")
	return ifA, ifB
}

// syncBuffer is a bytes.Buffer safe for a process's concurrent writers and
// the test's reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
