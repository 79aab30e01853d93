package netagent

// BenchmarkPeerChange: one peer change on a WireGuard device with 10,000
// peers. wireguard-go must start inside the namespace, so, like the
// WireGuard tests, the benchmark re-executes the test binary under
// `ip netns exec` (TestPeerBenchHelper); the helper owns the Device, keeps
// the 10,000 desired peers, times Device.ApplyPeers itself and answers one
// JSON line per request. Only the helper's timing of ApplyPeers (or
// Repair) is reported, not the round trip over the pipe.

import (
	"bufio"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/internal/netnstest"
)

const (
	benchHelperEnv  = "GOVNET_WG_BENCH_HELPER"
	benchHelperMark = "GVTBENCH "
	benchPeers      = 10_000
	// benchProfileEnv, if set, names a file for a CPU profile of the
	// helper while it serves requests (after setup): the parent's
	// -cpuprofile does not see the helper process.
	benchProfileEnv = "GOVNET_WG_BENCH_CPUPROFILE"
)

type benchHelperConfig struct {
	Name  string `json:"name"`
	Peers int    `json:"peers"`
}

// benchHelperReply answers a request: the ApplyPeers (or Repair) call's
// duration and result.
type benchHelperReply struct {
	Error string        `json:"error,omitempty"`
	Took  time.Duration `json:"took"`
	// CPU is the process's CPU time (user+system, all threads) during the
	// call: ApplyPeers, wireguard-go answering it over UAPI, and the
	// garbage collector. Time spent waiting for a CPU, which other load on
	// the machine adds to Took, is not in it.
	CPU     time.Duration `json:"cpu"`
	Changed bool          `json:"changed"`
	Peers   int           `json:"peers"`
	// GCs is the number of garbage collections that ended during the call.
	GCs uint32 `json:"gcs"`
	// HeapMB is the live heap after the warm-up (as of the last
	// collection), and Warmup the number of reconciles it took (setup
	// reply only).
	HeapMB float64 `json:"heap_mb,omitempty"`
	Warmup int     `json:"warmup,omitempty"`
}

// benchPeer is the i-th peer of the benchmark device, the shape an agent
// gets from the controller: a key, an endpoint, the gateway's overlay
// address and its agency LAN (so the device also carries one route per
// peer, as a hub does).
func benchPeer(i int) api.Peer {
	seed := sha256.Sum256(fmt.Appendf(nil, "govnet bench peer %d", i))
	key := wgtypes.Key(seed) // any 32 bytes are a valid X25519 public key
	j := i + 2               // .0 and .1 (the device) are not peers
	return api.Peer{
		Gateway:   fmt.Sprintf("gw%d", i),
		PublicKey: key.String(),
		Endpoint:  fmt.Sprintf("198.18.%d.%d:51820", byte(j>>8), byte(j)),
		AllowedIPs: []netip.Prefix{
			netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64 + byte(j>>16), byte(j >> 8), byte(j)}), 32),
			netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(j >> 8), byte(j), 0}), 24),
		},
	}
}

// TestPeerBenchHelper is not a test: it is the benchmark helper's entry
// point (see the top of this file).
func TestPeerBenchHelper(t *testing.T) {
	cfg := os.Getenv(benchHelperEnv)
	if cfg == "" {
		return
	}
	os.Exit(benchHelperMain(cfg))
}

// benchHelperMain opens the device with cfg.Peers peers, then serves, one
// line each on stdin:
//
//	allowed  toggle an extra LAN prefix on the middle peer
//	add      add one more peer
//	remove   remove that extra peer again
//	none     apply the unchanged view
//	repair   Device.Repair: the full read, diff and repair of the device
//	         and its routes (the agent's periodic reconcile)
//	up       bring the wireguard-go device up (see quiet below)
//
// Each answer carries the duration of the ApplyPeers or Repair call.
func benchHelperMain(cfgJSON string) int {
	reply := func(r benchHelperReply) {
		b, _ := json.Marshal(r)
		os.Stdout.WriteString(benchHelperMark + string(b) + "\n")
	}
	var cfg benchHelperConfig
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		reply(benchHelperReply{Error: err.Error()})
		return 2
	}
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		reply(benchHelperReply{Error: err.Error()})
		return 1
	}
	// The device logs every failed handshake (the peers' endpoints are
	// unreachable from here): warnings and errors are not wanted.
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError + 4}))
	d, err := OpenDevice(cfg.Name, key, 0, netip.MustParsePrefix("100.64.0.1/10"), log)
	if err != nil {
		reply(benchHelperReply{Error: err.Error()})
		return 1
	}
	defer d.Close()

	// Quiet: the wireguard-go device is kept down (its TUN link stays up,
	// with its address and routes), so its 10,000 peers are configured but
	// not running. Running, each would retry a handshake with its
	// unreachable endpoint every 5 s: 2,000 X25519 handshakes a second,
	// 20% of a core, which no real hub spends (its peers answer). The
	// measured path (UAPI get and set, validation, diff, routes) is the
	// same; only starting a new peer and its first handshake initiation
	// (~0.2 ms) are left out. Down is idempotent and is repeated before
	// every apply because wireguard-go brings the device back up on a late
	// link event from the kernel. The "up" request switches this off.
	quiet := true
	quieten := func() {
		if quiet && d.dev != nil {
			d.dev.Down()
		}
	}
	peers := make([]api.Peer, cfg.Peers)
	for i := range peers {
		peers[i] = benchPeer(i)
	}
	measure := func(call func() (bool, error), wantChange bool) benchHelperReply {
		quieten()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		cpu0 := processCPU()
		start := time.Now()
		changed, err := call()
		r := benchHelperReply{Took: time.Since(start), CPU: processCPU() - cpu0, Changed: changed}
		runtime.ReadMemStats(&m1)
		r.GCs = m1.NumGC - m0.NumGC
		if err != nil {
			r.Error = err.Error()
		} else if changed != wantChange {
			r.Error = fmt.Sprintf("reported changed=%v, want %v", changed, wantChange)
		}
		return r
	}
	apply := func(ps []api.Peer, wantChange bool) benchHelperReply {
		r := measure(func() (bool, error) { return d.ApplyPeers(ps) }, wantChange)
		r.Peers = len(ps)
		return r
	}
	repair := func() benchHelperReply {
		r := measure(d.Repair, false)
		r.Peers = len(peers)
		return r
	}
	r := apply(peers, true) // setup: the first apply installs every peer
	if r.Error != "" {
		reply(r)
		return 1
	}
	// Warm up to the steady state of a long-running agent: repair (the
	// periodic full reconcile) until the garbage collector has run twice
	// more. Before that the heap grows into pages the process has never
	// touched, and each full read pays the page faults for its ~50 MiB of
	// garbage (2-3x its steady cost on this VM); afterwards the heap reuses
	// its pages, and a collection of the live heap (mostly wireguard-go's
	// peers) comes every few full reads.
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	for gc0, i := m.NumGC, 0; m.NumGC < gc0+2 && i < 100; i++ {
		if w := repair(); w.Error != "" {
			reply(w)
			return 1
		}
		runtime.ReadMemStats(&m)
		r.Warmup++
	}
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(live)
	if live[0].Value.Kind() == metrics.KindUint64 {
		r.HeapMB = float64(live[0].Value.Uint64()) / (1 << 20)
	}
	reply(r)

	mid := &peers[len(peers)/2]
	baseAllowed := mid.AllowedIPs
	extraLAN := netip.MustParsePrefix("172.16.0.0/24")
	extraPeer := benchPeer(cfg.Peers)
	if path := os.Getenv(benchProfileEnv); path != "" {
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "cpu profile:", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "cpu profile:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch op := strings.TrimSpace(in.Text()); op {
		case "allowed":
			if len(mid.AllowedIPs) == len(baseAllowed) {
				mid.AllowedIPs = append(slices.Clone(baseAllowed), extraLAN)
			} else {
				mid.AllowedIPs = baseAllowed
			}
			reply(apply(peers, true))
		case "add":
			reply(apply(append(peers[:len(peers):len(peers)], extraPeer), true))
		case "remove":
			reply(apply(peers, true))
		case "none":
			reply(apply(peers, false))
		case "repair":
			reply(repair())
		case "up":
			quiet = false
			if d.dev != nil {
				d.dev.Up() // every peer starts and sends a handshake initiation
			}
			reply(benchHelperReply{Peers: len(peers)})
		default:
			reply(benchHelperReply{Error: "unknown op " + op})
		}
	}
	if err := d.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "close:", err)
		return 1
	}
	return 0
}

// processCPU returns the user and system CPU time the process has used.
func processCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchHelper is the benchmark's side of the helper process.
type benchHelper struct {
	stdin   io.WriteCloser
	replies chan benchHelperReply
	stderr  *lockedBuffer
}

func startBenchHelper(b *testing.B, ns *netnstest.NS, cfg benchHelperConfig) (*benchHelper, benchHelperReply) {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cfgJSON, _ := json.Marshal(cfg)
	cmd := ns.Command(exe, "-test.run=^TestPeerBenchHelper$", "-test.timeout=0")
	cmd.Env = append(os.Environ(), benchHelperEnv+"="+string(cfgJSON))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	h := &benchHelper{stdin: stdin, replies: make(chan benchHelperReply, 1), stderr: &lockedBuffer{}}
	cmd.Stderr = h.stderr
	netnstest.StartCmd(b, cmd)
	go func() {
		defer close(h.replies)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line, ok := strings.CutPrefix(sc.Text(), benchHelperMark)
			if !ok {
				continue
			}
			var r benchHelperReply
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				r.Error = "bad reply: " + err.Error()
			}
			h.replies <- r
		}
	}()
	b.Cleanup(func() {
		stdin.Close() // the helper closes the device and exits
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				b.Errorf("benchmark helper %s: %v", cfg.Name, err)
			}
		case <-time.After(60 * time.Second):
			b.Errorf("benchmark helper %s did not exit after stdin closed; killing it", cfg.Name)
			cmd.Process.Kill()
			<-done
		}
		if b.Failed() {
			b.Logf("helper %s stderr:\n%s", cfg.Name, h.stderr.String())
		}
		sock := filepath.Join("/var/run/wireguard", cfg.Name+".sock")
		if _, err := os.Stat(sock); err == nil {
			b.Errorf("stale UAPI socket %s left behind", sock)
			os.Remove(sock)
		}
	})
	return h, h.wait(b, "setup", 5*time.Minute)
}

func (h *benchHelper) wait(b *testing.B, op string, timeout time.Duration) benchHelperReply {
	b.Helper()
	select {
	case r, ok := <-h.replies:
		if !ok {
			b.Fatalf("benchmark helper exited during %s:\n%s", op, h.stderr.String())
		}
		if r.Error != "" {
			b.Fatalf("benchmark helper, %s: %s\n%s", op, r.Error, h.stderr.String())
		}
		return r
	case <-time.After(timeout):
		b.Fatalf("benchmark helper: no answer to %s in %v\n%s", op, timeout, h.stderr.String())
	}
	return benchHelperReply{}
}

func (h *benchHelper) call(b *testing.B, op string) benchHelperReply {
	b.Helper()
	if _, err := io.WriteString(h.stdin, op+"\n"); err != nil {
		b.Fatalf("benchmark helper: send %s: %v", op, err)
	}
	return h.wait(b, op, time.Minute)
}

// BenchmarkPeerChange measures Device.ApplyPeers on a wireguard-go device
// that has 10,000 peers (each with an endpoint, an overlay /32 and a LAN
// /24, hence 10,000 routes), when the desired view differs by one peer:
//
//   - change=allowed-ips: one peer gains or loses a LAN prefix (an in-place
//     update plus one route added or removed);
//   - change=add-remove: a 10,001st peer is added, then removed again
//     (ms/add and ms/remove separately);
//   - change=none: the view is unchanged;
//   - change=repair: Device.Repair, the full reconcile the agent runs once
//     per reconcile period: read the device over UAPI and every route of
//     ours, diff against the applied state, repair (nothing to repair
//     here);
//   - change=allowed-ips,device=up: the first case again, with the
//     wireguard-go device up, its 10,000 unreachable peers retrying
//     handshakes in the background (the others keep it down; see
//     benchHelperMain).
//
// ApplyPeers after the first is incremental: compare the 10,000 desired
// peers with the applied state, validate the changed ones, one
// ConfigureDevice with the change, the changed routes; it does not read
// the device or the routing table. Reported: the median (and p90) of the
// helper's timings.
func BenchmarkPeerChange(b *testing.B) {
	netnstest.RequireTUN(b)
	ns := netnstest.New(b)
	name := netnstest.IfName("gvb")
	h, setup := startBenchHelper(b, ns, benchHelperConfig{Name: name, Peers: benchPeers})
	setupLog := fmt.Sprintf("device %s in %s: %d peers installed by the first ApplyPeers in %v; %d warm-up repairs; live heap %.0f MiB",
		name, ns.Name(), setup.Peers, setup.Took.Round(time.Millisecond), setup.Warmup, setup.HeapMB)

	// report gives the median wall time of the replies as unit ("ms/op"),
	// its p90, and the median CPU time as "cpu-" unit.
	report := func(b *testing.B, rs []benchHelperReply, unit string) {
		var wall, cpu []float64
		var gcs []uint32
		for _, r := range rs {
			wall = append(wall, ms(r.Took))
			cpu = append(cpu, ms(r.CPU))
			gcs = append(gcs, r.GCs)
		}
		b.Logf("%s: wall %.1f; cpu %.1f; GCs %d", unit, wall, cpu, gcs)
		b.ReportMetric(quantile(slices.Clone(wall), 0.9), unit+"-p90")
		b.ReportMetric(median(wall), unit)
		b.ReportMetric(median(cpu), "cpu-"+unit)
	}
	b.Run("change=allowed-ips", func(b *testing.B) {
		b.Log(setupLog) // a parent benchmark's log is not printed
		var rs []benchHelperReply
		for b.Loop() {
			rs = append(rs, h.call(b, "allowed"))
		}
		report(b, rs, "ms/change")
	})
	b.Run("change=add-remove", func(b *testing.B) {
		var adds, removes []benchHelperReply
		for b.Loop() {
			adds = append(adds, h.call(b, "add"))
			removes = append(removes, h.call(b, "remove"))
		}
		report(b, adds, "ms/add")
		report(b, removes, "ms/remove")
	})
	b.Run("change=none", func(b *testing.B) {
		var rs []benchHelperReply
		for b.Loop() {
			rs = append(rs, h.call(b, "none"))
		}
		report(b, rs, "ms/apply")
	})
	b.Run("change=repair", func(b *testing.B) {
		var rs []benchHelperReply
		for b.Loop() {
			rs = append(rs, h.call(b, "repair"))
		}
		report(b, rs, "ms/repair")
	})
	// Last, with the device up: all 10,000 peers retrying handshakes with
	// unreachable endpoints in the same process (the worst case, e.g. a hub
	// whose gateways are all offline).
	b.Run("change=allowed-ips,device=up", func(b *testing.B) {
		h.call(b, "up")
		var rs []benchHelperReply
		for b.Loop() {
			rs = append(rs, h.call(b, "allowed"))
		}
		report(b, rs, "ms/change")
	})
}
