package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/policy/policytest"
	"github.com/hashicorp/raft"
)

// viewChangeCPU keeps BenchmarkViewChange's CPU per change by network
// size, one value per run (-count), for the ratio sub-benchmark: with
// -count N, Go runs each sub-benchmark N times in a row, so the ratio
// comes after every run of both sizes and divides their medians.
var viewChangeCPU = map[int][]float64{}

func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// BenchmarkViewChange measures the view hub's work for a one-gateway
// change on a national-shaped registry (policytest.National: communes
// under districts under 34 provinces, every commune reaching NDXP,
// provinces reaching each other): a new commune gateway joins (enrolls)
// and then leaves (is revoked). The commands go through FSM.Apply, not
// timed; what is timed is the hub pass that follows each: its duration
// (the pass runs on one goroutine), process CPU (getrusage, so the
// garbage collector's share counts, but in scheduler ticks: coarse for a
// pass of a tenth of a millisecond, so only a sum over many is
// meaningful) and heap allocations. The ratio sub-benchmark divides the
// time per change at 20,000 gateways by that at 1,000 (issue 4: at most
// 2).
func BenchmarkViewChange(b *testing.B) {
	for _, size := range []struct {
		name                string
		districts, communes int
	}{
		{"gateways=1000", 2, 13},   // 987 gateways
		{"gateways=20000", 20, 29}, // 20,435 gateways
	} {
		b.Run(size.name, func(b *testing.B) {
			agencies, gateways := policytest.National(size.districts, size.communes)
			x := restoredFixture(b, agencies, gateways, policytest.Policy)
			if err := x.h.recompute(); err != nil {
				b.Fatal(err)
			}
			commune := agencies[len(agencies)-1].Code
			// The set-up's garbage (every view compiled) is collected
			// now, not by collector cycles that would run, on other
			// threads, during the first timed passes: the process CPU
			// they measure would count them.
			runtime.GC()
			var join, leave measure
			i := 0
			for b.Loop() {
				i++
				id := fmt.Sprintf("new%d", i)
				x.apply(CmdGatewayAdd, &GatewayAddRequest{Meta: meta("op"), ID: id, Agency: commune, Endpoint: "198.51.100.1:51820",
					LANs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16 + byte(i>>16&15), byte(i >> 8), byte(i)}), 32)}})
				if err := x.h.recompute(); err != nil { // a pending gateway: nothing to do, not timed
					b.Fatal(err)
				}
				x.enroll(id)
				join.run(b, x.h.recompute)
				x.revoke(id)
				leave.run(b, x.h.recompute)
			}
			b.StopTimer()
			x.check()
			if p := x.h.passCounts(); p.Full != 1 || p.Joined != uint64(i) || p.Patched != 2*uint64(i) {
				b.Fatalf("passes %+v after %d joins and leaves", p, i)
			}
			n := float64(i)
			perChange := (join.wall + leave.wall).Seconds() * 1000 / (2 * n)
			b.ReportMetric(perChange, "ms/change")
			cpuPerChange := (join.cpu + leave.cpu).Seconds() * 1000 / (2 * n)
			b.ReportMetric(cpuPerChange, "cpu-ms/change")
			b.ReportMetric(join.wall.Seconds()*1000/n, "ms/join")
			b.ReportMetric(leave.wall.Seconds()*1000/n, "ms/leave")
			b.ReportMetric(float64(join.allocs+leave.allocs)/(2*n), "allocs/change")
			b.ReportMetric(float64(len(gateways)), "gateways")
			viewChangeCPU[len(gateways)] = append(viewChangeCPU[len(gateways)], cpuPerChange)
		})
	}
	b.Run("ratio", func(b *testing.B) {
		small, large := median(viewChangeCPU[987]), median(viewChangeCPU[20435])
		if small == 0 || large == 0 {
			b.Skip("run with both sizes: -bench 'BenchmarkViewChange/'")
		}
		for b.Loop() {
		}
		b.ReportMetric(large/small, "ratio")
	})
}

// measure accumulates the duration, the process CPU time and the heap
// allocations of calls.
type measure struct {
	wall, cpu time.Duration
	allocs    uint64
}

func (m *measure) run(b *testing.B, f func() error) {
	allocs := []metrics.Sample{{Name: "/gc/heap/allocs:objects"}}
	metrics.Read(allocs)
	a0, c0, t0 := allocs[0].Value.Uint64(), cpuTime(b), time.Now()
	if err := f(); err != nil {
		b.Fatal(err)
	}
	m.wall += time.Since(t0)
	c1 := cpuTime(b)
	metrics.Read(allocs)
	m.cpu += c1 - c0
	m.allocs += allocs[0].Value.Uint64() - a0
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// restoredFixture is a hub fixture whose state is restored from a
// snapshot of the registry and the policy, as a node restores one.
func restoredFixture(b testing.TB, agencies []api.Agency, gateways []api.Gateway, pol string) *hubFixture {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	const index = 1
	must := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	must(enc.Encode(snapshotHeader{Format: snapshotFormat, Index: index}))
	rec := func(typ string, v any) {
		data, err := json.Marshal(v)
		must(err)
		must(enc.Encode(snapshotRecord{Type: typ, Data: data}))
	}
	rec("network", snapshotNetwork{Overlay: netip.MustParsePrefix("100.64.0.0/16")})
	for _, a := range agencies {
		rec("agency", a)
	}
	for _, g := range gateways {
		rec("gateway", g)
	}
	rec("policy", api.Policy{Version: 1, Source: pol, Published: t0, Actor: "off"})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f := NewFSM(log, nil)
	must(f.Restore(io.NopCloser(&buf)))
	return &hubFixture{t: b, f: f, h: newViewHub(f.State(), log), index: index}
}

// inProcessCluster starts newTestCluster's three nodes in this process
// (real raft over TCP on 127.0.0.11-13, bbolt log stores, file snapshots,
// one SoftHSM2 token each, the production raft timeouts) and returns
// them and the leader once every node is ready and a voter. The nodes are
// closed when the benchmark or test ends.
func inProcessCluster(b testing.TB) (nodes []*Node, leader *Node) {
	c := newTestCluster(b, 3)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i, p := range c.nodes {
		cfg := p.cfg
		cfg.Raft = RaftConfig{} // production timeouts, not the tests' short ones
		n, err := Start(context.Background(), cfg, log)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { n.Close() })
		nodes = append(nodes, n)
		if i == 0 {
			waitFor(b, 30*time.Second, "the first node to be ready", n.Ready)
		}
	}
	// The last node asks to be added (join key); an operator adds the second.
	waitFor(b, 30*time.Second, "an operator to add ctl2", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cfg := c.nodes[1].cfg
		_, err := c.op[0].JoinNode(ctx, api.JoinRequest{Node: cfg.Node, RaftAddr: cfg.RaftAddr, APIAddr: cfg.APIAddr})
		return err
	})
	c.waitHealthy(30 * time.Second)
	for _, n := range nodes {
		if n.raft.State() == raft.Leader {
			leader = n
		}
	}
	if leader == nil {
		b.Fatal("no leader")
	}
	return nodes, leader
}

// reportWriters registers gateways whose reports the raft benchmarks
// write: reports are the controller's most frequent small write.
func reportWriters(b *testing.B, n *Node, count int) []string {
	ctx := context.Background()
	if _, err := n.submit(ctx, CmdAgencyUpsert, &AgencyUpsertRequest{Meta: n.meta("operator1"), Code: "000.00.00.H01", Name: "Tỉnh 1"}); err != nil {
		b.Fatal(err)
	}
	ids := make([]string, count)
	for i := range ids {
		ids[i] = fmt.Sprintf("gw%d", i+1)
		if _, err := n.submit(ctx, CmdGatewayAdd, &GatewayAddRequest{Meta: n.meta("operator1"), ID: ids[i], Agency: "000.00.00.H01"}); err != nil {
			b.Fatal(err)
		}
	}
	return ids
}

func report(n *Node, gateway string, seq uint64) *GatewayReportRequest {
	return &GatewayReportRequest{Meta: n.meta("gateway:" + gateway), Gateway: gateway,
		Report: api.Report{PolicyVersion: 1, RaftIndex: seq, RulesetDigest: "sha256:0123456789abcdef"}}
}

// BenchmarkRaftWrite measures single writes on a 3-node cluster: one
// writer, each write (a gateway report) submitted on the leader and
// waited for until it is committed by a quorum and applied on the leader.
// It reports the p50 and p99 latency (issue 4: p99 at most 10 ms).
func BenchmarkRaftWrite(b *testing.B) {
	_, leader := inProcessCluster(b)
	gw := reportWriters(b, leader, 1)[0]
	ctx := context.Background()
	var lat []time.Duration
	var seq uint64
	for b.Loop() {
		seq++
		start := time.Now()
		if _, err := leader.submit(ctx, CmdGatewayReport, report(leader, gw, seq)); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	q := func(p float64) float64 { return lat[int(p*float64(len(lat)-1))].Seconds() * 1000 }
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}

// BenchmarkRaftBatchedWrites measures writes per second on a 3-node
// cluster when many clients write at once (256 writers, each a gateway
// reporting): raft's leader appends what is waiting as one batch, one
// disk sync and one AppendEntries per follower for up to MaxAppendEntries
// entries (issue 4: at least 5,000 writes/s).
func BenchmarkRaftBatchedWrites(b *testing.B) {
	_, leader := inProcessCluster(b)
	const writers = 256
	ids := reportWriters(b, leader, writers)
	ctx := context.Background()
	var next atomic.Uint64
	b.SetParallelism(writers / max(1, runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			seq := next.Add(1)
			if _, err := leader.submit(ctx, CmdGatewayReport, report(leader, ids[seq%writers], seq)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "writes/s")
}

// BenchmarkPolicyVersion measures the view hub's pass after a new policy
// version on a national-shaped registry of 20,435 gateways: every view is
// compiled again (the version moves a port every view names), the pass a
// publication costs every node before any gateway hears of it.
func BenchmarkPolicyVersion(b *testing.B) {
	agencies, gateways := policytest.National(20, 29)
	x := restoredFixture(b, agencies, gateways, policytest.Policy)
	if err := x.h.recompute(); err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	var m measure
	i := 0
	for b.Loop() {
		i++
		x.publish(strings.Replace(policytest.Policy, "tcp/8443", fmt.Sprintf("tcp/%d", 9000+i%1000), 1))
		m.run(b, x.h.recompute)
	}
	n := float64(i)
	b.ReportMetric(m.wall.Seconds()*1000/n, "ms/version")
	b.ReportMetric(m.cpu.Seconds()*1000/n, "cpu-ms/version")
	b.ReportMetric(float64(m.allocs)/n, "allocs/version")
}
