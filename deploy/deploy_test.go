package deploy

import (
	"bufio"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// binDir holds the three programs: built from this tree by TestMain, or
// the directory named by $GOVNET_BIN (for example bin/ after `make build`)
// to test binaries built elsewhere.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if dir := os.Getenv("GOVNET_BIN"); dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		binDir = abs
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "govnet-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	build := exec.Command("go", "build", "-o", dir+"/", "./cmd/govnetd", "./cmd/govnet-agent", "./cmd/govnetctl")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		return 1
	}
	binDir = dir
	return m.Run()
}

// runBin runs one of the built programs from the repository root and
// returns its combined output and exit code.
func runBin(t *testing.T, name string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	cmd.Dir = ".."
	// Keep the caller's govnetctl config out of the way.
	cmd.Env = append(os.Environ(), "GOVNETCTL_CONFIG=", "HOME="+t.TempDir(), "XDG_CONFIG_HOME=")
	out, err := cmd.CombinedOutput()
	if err == nil {
		return string(out), 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	return "", -1
}

// TestExampleConfigsCheck: the shipped examples pass the programs' own
// validation.
func TestExampleConfigsCheck(t *testing.T) {
	for _, tc := range []struct {
		bin  string
		args []string
		want string
	}{
		{"govnetd", []string{"run", "--config", "deploy/examples/govnetd.yaml", "--check"}, "config ok"},
		{"govnet-agent", []string{"run", "--config", "deploy/examples/agent.yaml", "--check"}, "config ok"},
		// govnetctl has no --check: any command loads and validates the
		// config first, and `policy check` then works offline.
		{"govnetctl", []string{"--config", "deploy/examples/govnetctl.yaml", "policy", "check", "deploy/lab/policy.yaml", "--registry", "deploy/lab/registry.yaml"}, "deploy/lab/policy.yaml: ok: 5 tests passed"},
	} {
		t.Run(tc.bin, func(t *testing.T) {
			out, code := runBin(t, tc.bin, tc.args...)
			if code != 0 || !strings.Contains(out, tc.want) {
				t.Fatalf("%s %s: exit %d, want 0 and %q:\n%s", tc.bin, strings.Join(tc.args, " "), code, tc.want, out)
			}
		})
	}
}

// commentedKey matches an example's optional key left commented out, "# key:
// value" at any indentation under the "# ", and nothing of the prose
// comments (they start with a capital or are not a key).
var commentedKey = regexp.MustCompile(`(?m)^# ( *[a-z_]+:(?: .*)?)$`)

// TestExampleConfigsOptionalKeys: the keys an example shows commented out
// (the optional ones, most with their defaults) are keys the programs
// accept, with values they accept: an installer who uncomments one gets a
// config that passes --check, not "unknown field".
func TestExampleConfigsOptionalKeys(t *testing.T) {
	for _, tc := range []struct {
		bin, example string
		min          int // commented keys the example is known to hold
	}{
		{"govnetd", "govnetd.yaml", 10},
		{"govnet-agent", "agent.yaml", 6},
	} {
		t.Run(tc.bin, func(t *testing.T) {
			src, err := os.ReadFile(filepath.Join("examples", tc.example))
			if err != nil {
				t.Fatal(err)
			}
			if n := len(commentedKey.FindAllIndex(src, -1)); n < tc.min {
				t.Fatalf("%s: %d commented keys, want at least %d: the pattern no longer finds them", tc.example, n, tc.min)
			}
			path := filepath.Join(t.TempDir(), tc.example)
			if err := os.WriteFile(path, commentedKey.ReplaceAll(src, []byte("$1")), 0o600); err != nil {
				t.Fatal(err)
			}
			out, code := runBin(t, tc.bin, "run", "--config", path, "--check")
			if code != 0 || !strings.Contains(out, "config ok") {
				t.Fatalf("%s with its commented keys uncommented: exit %d, want 0 and \"config ok\":\n%s", tc.example, code, out)
			}
		})
	}
}

// setKey returns src with the line of key (at any indentation) replaced by
// key: value, or with extra appended after the line of key when value is
// empty. It fails the test if the key is not in src, so that an example
// that loses a key is noticed here.
func setKey(t *testing.T, src, key, value, extra string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^(\s*)` + regexp.QuoteMeta(key) + `:.*$`)
	if !re.MatchString(src) {
		t.Fatalf("example has no key %q", key)
	}
	if extra != "" {
		return re.ReplaceAllString(src, "$0\n${1}"+extra)
	}
	return re.ReplaceAllString(src, "${1}"+key+": "+value)
}

// TestExampleConfigsReject: an example broken in one key fails the check,
// and the message names that key.
func TestExampleConfigsReject(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join("examples", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	ctld, agent, ctl := read("govnetd.yaml"), read("agent.yaml"), read("govnetctl.yaml")
	for _, tc := range []struct {
		name, bin, config string
		args              []string
		want              []string // each must appear in the output
	}{
		{"govnetd unknown key", "govnetd", setKey(t, ctld, "api_addr", "", "api_adress: 192.0.2.1:7443"), nil,
			[]string{`unknown field "api_adress"`}},
		{"govnetd unknown nested key", "govnetd", setKey(t, ctld, "token_label", "", "token_lable: x"), nil,
			[]string{`unknown field "token_lable"`}},
		{"govnetd bad prefix", "govnetd", setKey(t, ctld, "overlay_prefix", "100.64.0.0/31", ""), nil,
			[]string{"overlay_prefix", "100.64.0.0/31"}},
		{"govnetd bad address", "govnetd", setKey(t, ctld, "raft_addr", "192.0.2.1", ""), nil,
			[]string{"raft_addr", "192.0.2.1"}},
		{"govnetd relative data_dir", "govnetd", setKey(t, ctld, "data_dir", "var/lib/govnet", ""), nil,
			[]string{"data_dir", "absolute"}},
		{"govnetd bad node name", "govnetd", setKey(t, ctld, "node", "Ctl_1", ""), nil,
			[]string{"node", "Ctl_1"}},
		{"govnetd flag overrides file", "govnetd", ctld, []string{"--api-addr", "nonsense"},
			[]string{"api_addr", "nonsense"}},
		{"agent unknown key", "govnet-agent", setKey(t, agent, "listen_port", "", "listen_prot: 51820"), nil,
			[]string{`unknown field "listen_prot"`}},
		{"agent port out of range", "govnet-agent", setKey(t, agent, "listen_port", "70000", ""), nil,
			[]string{"listen_port", "70000"}},
		// The decoder names the Go field (Config.ListenPort); the excerpt
		// it prints shows the YAML key at the reported line.
		{"agent port not a number", "govnet-agent", setKey(t, agent, "listen_port", "abc", ""), nil,
			[]string{"listen_port: abc"}},
		{"agent reconcile too short", "govnet-agent", setKey(t, agent, "reconcile", "10ms", ""), nil,
			[]string{"reconcile", "10ms"}},
		{"agent interface too long", "govnet-agent", setKey(t, agent, "interface", "govnet-interface0", ""), nil,
			[]string{"interface", "govnet-interface0"}},
		{"agent no controller", "govnet-agent", setKey(t, agent, "controller", `""`, ""), nil,
			[]string{"controller"}},
		{"agent metrics_addr without port", "govnet-agent", setKey(t, agent, "metrics_addr", "127.0.0.1", ""), nil,
			[]string{"metrics_addr", "127.0.0.1"}},
		{"agent metrics_addr port out of range", "govnet-agent", setKey(t, agent, "metrics_addr", "127.0.0.1:99999", ""), nil,
			[]string{"metrics_addr", "99999"}},
		{"govnetctl unknown key", "govnetctl", setKey(t, ctl, "key", "", "keyfile: x"), nil,
			[]string{`unknown field "keyfile"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(tc.config), 0o600); err != nil {
				t.Fatal(err)
			}
			var args []string
			switch tc.bin {
			case "govnetctl":
				args = []string{"--config", path, "policy", "check", "deploy/lab/policy.yaml"}
			default:
				args = append([]string{"run", "--config", path, "--check"}, tc.args...)
			}
			out, code := runBin(t, tc.bin, args...)
			if code == 0 {
				t.Fatalf("%s %s: exit 0, want failure:\n%s", tc.bin, strings.Join(args, " "), out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not contain %q:\n%s", w, out)
				}
			}
		})
	}
}

// cobraBuiltin reports whether a command is one cobra adds by itself
// (help, completion and its per-shell subcommands): they are not ours to
// give examples to.
func cobraBuiltin(path []string) bool {
	return len(path) >= 2 && (path[1] == "help" || path[1] == "completion")
}

// subcommands parses the "Available Commands:" section of cobra's help.
func subcommands(help string) []string {
	var subs []string
	in := false
	sc := bufio.NewScanner(strings.NewReader(help))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "Available Commands:":
			in = true
		case in && strings.TrimSpace(line) == "":
			in = false
		case in:
			subs = append(subs, strings.Fields(line)[0])
		}
	}
	return subs
}

// TestHelp walks every command of the three programs through --help: each
// runs, and each command that does something (no subcommands) shows an
// example.
func TestHelp(t *testing.T) {
	var walk func(t *testing.T, path []string)
	walk = func(t *testing.T, path []string) {
		out, code := runBin(t, path[0], append(path[1:], "--help")...)
		if code != 0 {
			t.Fatalf("%s --help: exit %d:\n%s", strings.Join(path, " "), code, out)
		}
		if !strings.Contains(out, "Usage:") {
			t.Fatalf("%s --help: no usage:\n%s", strings.Join(path, " "), out)
		}
		subs := subcommands(out)
		if len(path) == 1 && len(subs) == 0 {
			t.Fatalf("%s --help lists no commands:\n%s", path[0], out)
		}
		if len(subs) == 0 && !cobraBuiltin(path) && !strings.Contains(out, "\nExamples:\n") {
			t.Errorf("%s --help has no example:\n%s", strings.Join(path, " "), out)
		}
		for _, s := range subs {
			t.Run(s, func(t *testing.T) { walk(t, append(append([]string(nil), path...), s)) })
		}
	}
	for _, bin := range []string{"govnetd", "govnet-agent", "govnetctl"} {
		t.Run(bin, func(t *testing.T) { walk(t, []string{bin}) })
	}
}

// TestSystemdUnits verifies the units with systemd-analyze against a
// throwaway root holding the built programs at the paths the packages
// install them to, and keeps their exposure score from creeping up.
func TestSystemdUnits(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	hostUnits := "/usr/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(hostUnits, "sysinit.target")); err != nil {
		t.Skipf("no systemd units in %s to verify against", hostUnits)
	}
	root := t.TempDir()
	units := filepath.Join(root, "usr/lib/systemd/system")
	for _, d := range []string{units, filepath.Join(root, "usr/bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", "-a", hostUnits+"/.", units+"/").CombinedOutput(); err != nil {
		t.Fatalf("copy host units: %v\n%s", err, out)
	}
	for _, b := range []string{"govnetd", "govnet-agent"} {
		// A link, not a symlink: systemd resolves symlinks inside --root.
		src, dst := filepath.Join(binDir, b), filepath.Join(root, "usr/bin", b)
		if err := os.Link(src, dst); err != nil {
			if out, err := exec.Command("cp", src, dst).CombinedOutput(); err != nil {
				t.Fatalf("copy %s: %v\n%s", b, err, out)
			}
		}
		unit, err := os.ReadFile(filepath.Join("systemd", b+".service"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(units, b+".service"), unit, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, unit := range []string{"govnetd.service", "govnet-agent.service"} {
		t.Run(unit, func(t *testing.T) {
			out, err := exec.Command(analyze, "verify", "--man=no", "--root="+root, unit).CombinedOutput()
			if err != nil || len(out) > 0 {
				t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
			}
			out, err = exec.Command(analyze, "security", "--offline=true", "--root="+root, unit).CombinedOutput()
			if err != nil {
				t.Fatalf("systemd-analyze security %s: %v\n%s", unit, err, out)
			}
			m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindStringSubmatch(string(out))
			if m == nil {
				t.Fatalf("no exposure level in:\n%s", out)
			}
			var level float64
			fmt.Sscan(m[1], &level)
			t.Logf("%s exposure %.1f", unit, level)
			if level > 3.0 {
				t.Errorf("%s: exposure level %.1f, want at most 3.0 (measured 1.2 govnetd, 2.2 agent)\n%s", unit, level, out)
			}
		})
	}
}

// TestPackagingSources: every file the nfpm configs put into a package
// exists in the tree (the ${...} ones are built by `make package`), so
// that moving a doc or a unit breaks here rather than in a release.
func TestPackagingSources(t *testing.T) {
	configs, err := filepath.Glob(filepath.Join("packaging", "*.yaml"))
	if err != nil || len(configs) != 3 {
		t.Fatalf("packaging configs: %v %v, want 3", configs, err)
	}
	re := regexp.MustCompile(`(?m)^\s*(?:- src|postinstall|preremove|postremove):\s*(\S+)\s*$`)
	for _, c := range configs {
		src, err := os.ReadFile(c)
		if err != nil {
			t.Fatal(err)
		}
		ms := re.FindAllStringSubmatch(string(src), -1)
		if len(ms) == 0 {
			t.Errorf("%s: no sources found", c)
		}
		for _, m := range ms {
			if strings.Contains(m[1], "${") {
				continue
			}
			// Paths are relative to the repository root.
			if _, err := os.Stat(filepath.Join("..", m[1])); err != nil {
				t.Errorf("%s: %v", c, err)
			}
		}
	}
}

// glibcVersion returns the highest GLIBC_x.y symbol version the ELF file
// needs, as {x, y}, or nil if it needs none (a static binary).
func glibcVersion(t *testing.T, path string) []int {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.ImportedSymbols()
	if err != nil && err != elf.ErrNoSymbols {
		t.Fatalf("%s: %v", path, err)
	}
	var max []int
	for _, s := range syms {
		if v, ok := parseVersion(strings.TrimPrefix(s.Version, "GLIBC_")); ok && strings.HasPrefix(s.Version, "GLIBC_") && versionLess(max, v) {
			max = v
		}
	}
	return max
}

// parseVersion parses "2.34" into {2, 34}.
func parseVersion(s string) ([]int, bool) {
	var v []int
	for _, p := range strings.Split(s, ".") {
		var n int
		if _, err := fmt.Sscanf(p, "%d", &n); err != nil || fmt.Sprint(n) != p {
			return nil, false
		}
		v = append(v, n)
	}
	return v, len(v) > 0
}

// versionString formats {2, 34} as "2.34".
func versionString(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, ".")
}

// versionLess reports whether a < b (a nil a is less than anything).
func versionLess(a, b []int) bool {
	for i := 0; i < max(len(a), len(b)); i++ {
		var x, y int
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			return x < y
		}
	}
	return false
}

// TestPackagingLibcDependency: a package whose program links glibc (cgo:
// the PKCS#11 loader) declares a libc6 at least as new as the symbol
// versions the program needs. An unversioned "libc6" lets dpkg install it
// on a release whose glibc is older, where the program fails to start
// ("version `GLIBC_2.34' not found").
func TestPackagingLibcDependency(t *testing.T) {
	depRE := regexp.MustCompile(`(?m)^\s*-\s*libc6(?:\s*\(>=\s*([0-9.]+)\))?\s*$`)
	for _, b := range []string{"govnetd", "govnet-agent", "govnetctl"} {
		t.Run(b, func(t *testing.T) {
			need := glibcVersion(t, filepath.Join(binDir, b))
			if need == nil {
				t.Skipf("%s needs no glibc symbol version (static)", b)
			}
			src, err := os.ReadFile(filepath.Join("packaging", b+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			m := depRE.FindSubmatch(src)
			if m == nil {
				t.Fatalf("packaging/%s.yaml: no libc6 dependency; %s needs GLIBC_%s", b, b, versionString(need))
			}
			have, ok := parseVersion(string(m[1]))
			if !ok || versionLess(have, need) {
				t.Errorf("packaging/%s.yaml: depends on %q; %s needs GLIBC_%s: declare libc6 (>= %[4]s)",
					b, strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(m[0])), "-")), b, versionString(need))
			}
		})
	}
}

// unitSettings parses a systemd unit into section.Key -> values, in order
// (a key set several times keeps every value; an empty assignment resets).
func unitSettings(t *testing.T, name string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("systemd", name))
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string][]string{}
	section := ""
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: not a setting: %q", name, line)
			}
			key := section + "." + strings.TrimSpace(k)
			if v = strings.TrimSpace(v); v == "" {
				settings[key] = []string{}
			} else {
				settings[key] = append(settings[key], v)
			}
		}
	}
	return settings
}

// TestUnitSettings pins what the units must say for the programs to work
// and for the security office's expectations to hold, each with the
// reason; systemd-analyze (TestSystemdUnits) checks only that they parse.
func TestUnitSettings(t *testing.T) {
	for _, tc := range []struct {
		unit, key string
		want      []string // nil: must not be set
		why       string
	}{
		{"govnetd.service", "Service.User", []string{"govnet"}, "the postinst's unprivileged user"},
		{"govnetd.service", "Service.CapabilityBoundingSet", []string{}, "no capability: every port is above 1024"},
		{"govnetd.service", "Service.StateDirectory", []string{"govnet govnet-hsm"}, "data_dir and the SoftHSM2 token directory of softhsm2.conf, writable under ProtectSystem=strict"},
		{"govnetd.service", "Service.ProcSubset", nil, "the process collector's process_start_time_seconds reads the boot time from /proc/stat, which ProcSubset=pid hides"},
		{"govnet-agent.service", "Service.CapabilityBoundingSet", []string{"CAP_NET_ADMIN"}, "nftables, TUN, WireGuard links, addresses, routes: nothing else"},
		{"govnet-agent.service", "Service.AmbientCapabilities", []string{"CAP_NET_ADMIN"}, "the same, effective"},
		{"govnet-agent.service", "Service.DeviceAllow", []string{"/dev/net/tun rw"}, "the embedded wireguard-go's TUN device"},
		{"govnet-agent.service", "Service.RestrictAddressFamilies", []string{"AF_INET AF_INET6 AF_UNIX AF_NETLINK"}, "netlink for nftables and wgctrl, unix for the UAPI socket"},
		{"govnet-agent.service", "Service.StateDirectory", []string{"govnet-agent"}, "state_dir of the example config"},
		// Fail static: nothing may run at stop that could remove the table.
		{"govnet-agent.service", "Service.ExecStop", nil, "fail static: the table stays when the agent stops"},
		{"govnet-agent.service", "Service.ExecStopPost", nil, "fail static: the table stays when the agent stops"},
		{"govnet-agent.service", "Service.Restart", []string{"always"}, "an agent that exits is brought back to reconcile"},
	} {
		t.Run(tc.unit+"/"+tc.key, func(t *testing.T) {
			got, set := unitSettings(t, tc.unit)[tc.key]
			switch {
			case tc.want == nil && set:
				t.Errorf("%s sets %s=%q; it must not: %s", tc.unit, tc.key, got, tc.why)
			case tc.want != nil && !slices.Equal(got, tc.want):
				t.Errorf("%s: %s=%q, want %q: %s", tc.unit, tc.key, got, tc.want, tc.why)
			}
		})
	}
}
