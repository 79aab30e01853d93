package netagent

// Benchmarks of the nftables side on the real kernel, each in throwaway
// network namespaces (`make bench`; docs/performance.md explains the
// figures). They need root; without it they skip (fail in CI).

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/net/ipv4"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/internal/netnstest"
)

// benchPolicy returns rules that compile to exactly n set elements, shaped
// like a busy gateway's view as policy.Compile produces it: every source
// gateway contributes its overlay address (/32, hash set allow4) and its
// agency LAN (/24, hash set allow4_net_24 matched on the masked source),
// each on two service ports, so half the elements are exact and half are
// prefixes. shift moves the
// window of source gateways (shift 1: one gateway left, another joined),
// so that consecutive applies install different tables of the same size.
func benchPolicy(n, shift int) []api.Rule {
	rules := make([]api.Rule, 0, n)
	ports := [2]uint16{443, 8443}
	for e := range n {
		i := e/4 + shift // source gateway
		overlay := netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
		lan := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		src := netip.PrefixFrom(overlay, 32)
		if e%4 >= 2 {
			src = lan
		}
		rules = append(rules, api.Rule{Source: src, Protocol: api.ProtoTCP, Port: ports[e%2]})
	}
	return rules
}

// applyRecorder is a slog.Handler that keeps the "flush" attribute of
// Firewall.Apply's "nftables table installed" record: the time from the
// start of Apply until the kernel acknowledged the batch. The rest of Apply
// is the read-back and the digest.
type applyRecorder struct {
	mu     sync.Mutex
	flushs []time.Duration
}

func (r *applyRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *applyRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *applyRecorder) WithGroup(string) slog.Handler            { return r }
func (r *applyRecorder) Handle(_ context.Context, rec slog.Record) error {
	if rec.Message != "nftables table installed" {
		return nil
	}
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "flush" && a.Value.Kind() == slog.KindDuration {
			r.mu.Lock()
			r.flushs = append(r.flushs, a.Value.Duration())
			r.mu.Unlock()
			return false
		}
		return true
	})
	return nil
}

func (r *applyRecorder) take() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.flushs
	r.flushs = nil
	return out
}

// median returns the median of xs (the mean of the middle two for an even
// count); xs is sorted in place.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	m := len(xs) / 2
	if len(xs)%2 == 1 {
		return xs[m]
	}
	return (xs[m-1] + xs[m]) / 2
}

// quantile returns the q-quantile (0..1) of xs by the nearest-rank method;
// xs is sorted in place.
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	i := int(q*float64(len(xs))+0.5) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkFirewallApply measures Firewall.Apply of a whole policy of 1,000,
// 10,000 and 100,000 set elements: compile, one atomic netlink batch that
// replaces table inet govnet (deleting the previous one of the same size),
// and the read-back with its element-count check and digest. Iterations
// alternate between two policies of the same size that differ by one
// source gateway. Reported: median ms/apply, and median ms/flush (start of
// Apply to the kernel's acknowledgement of the batch; the remainder is the
// read-back and digest). ns/op is the mean.
func BenchmarkFirewallApply(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("elements=%d", n), func(b *testing.B) {
			netnstest.Require(b)
			ns := netnstest.New(b)
			rec := &applyRecorder{}
			fw, err := NewFirewall("wg0", WithNetNS(ns.Fd()), WithLogger(slog.New(rec)))
			if err != nil {
				b.Fatal(err)
			}
			policies := [2][]api.Rule{benchPolicy(n, 0), benchPolicy(n, 1)}
			if _, err := fw.Apply(policies[1], nil); err != nil { // the table being replaced
				b.Fatal(err)
			}
			rec.take()
			var applies []float64
			i := 0
			for b.Loop() {
				start := time.Now()
				if _, err := fw.Apply(policies[i%2], nil); err != nil {
					b.Fatal(err)
				}
				applies = append(applies, ms(time.Since(start)))
				i++
			}
			var flushes []float64
			for _, d := range rec.take() {
				flushes = append(flushes, ms(d))
			}
			p90 := quantile(slices.Clone(applies), 0.9)
			b.ReportMetric(median(applies), "ms/apply")
			b.ReportMetric(p90, "ms/apply-p90")
			b.ReportMetric(median(flushes), "ms/flush")
		})
	}
}

// Per-packet cost.
//
// A sender namespace is joined by its own veth pair to one receiver
// namespace per table size. Each receiver enforces table inet govnet on
// its veth with that many elements, among them the two probe elements
// below, and has a UDP socket on probePort that is never read (its tiny
// buffer stays full: accepted packets end at the socket after passing the
// firewall). For veth without XDP or GRO the receiver's whole input path,
// nftables included, runs in the sender's sendmmsg call, on the sender's
// CPU, so the time to send a burst is the time to process it.
//
// Three kinds of packet, all UDP to probePort, exercise the chain:
//   - exact: from probeExact, accepted by the hash set allow4;
//   - net:   from inside probeLAN, misses allow4, accepted by the
//     prefix set allow4_net_24 (source masked to /24);
//   - drop:  from outside every set, misses both, dropped by the final rule.
//
// UDP without a reply stays ct state new, so every packet goes through the
// set lookups, not the established shortcut.

const (
	probePort  = 5000
	burstSize  = 500 // packets per timed burst
	batchSize  = 50  // packets per sendmmsg
	pktPayload = 32  // UDP payload bytes
)

var (
	probeExact = netip.MustParseAddr("100.127.255.1")
	probeLAN   = netip.MustParsePrefix("10.250.0.0/24")
	probeNet   = netip.MustParseAddr("10.250.0.1")
	probeDrop  = netip.MustParseAddr("192.0.2.1")
)

// packetPolicy is benchPolicy(n-2) plus the two probe elements.
func packetPolicy(n int) []api.Rule {
	return append(benchPolicy(n-2, 0),
		api.Rule{Source: netip.PrefixFrom(probeExact, 32), Protocol: api.ProtoUDP, Port: probePort},
		api.Rule{Source: probeLAN, Protocol: api.ProtoUDP, Port: probePort})
}

type pktPath struct {
	name string
	src  netip.Addr
}

var pktPaths = []pktPath{{"exact", probeExact}, {"net", probeNet}, {"drop", probeDrop}}

// pktTarget is one receiver namespace and the sender's sockets towards it.
type pktTarget struct {
	label string // size, or "1000'" for the control twin
	ns    *netnstest.NS
	send  map[string]*udpBurst // by path name
}

type udpBurst struct {
	pc   *ipv4.PacketConn
	msgs []ipv4.Message
}

func newUDPBurst(b *testing.B, sender *netnstest.NS, src, dst netip.Addr) *udpBurst {
	b.Helper()
	var c *net.UDPConn
	if err := sender.Do(func() (err error) {
		c, err = net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)),
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, probePort)))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	u := &udpBurst{pc: ipv4.NewPacketConn(c)}
	payload := make([]byte, pktPayload)
	for range batchSize {
		u.msgs = append(u.msgs, ipv4.Message{Buffers: [][]byte{payload}})
	}
	return u
}

// burst sends k packets and returns how long it took.
func (u *udpBurst) burst(k int) (time.Duration, error) {
	start := time.Now()
	for sent := 0; sent < k; {
		n, err := u.pc.WriteBatch(u.msgs[:min(len(u.msgs), k-sent)], 0)
		if err != nil {
			return 0, err
		}
		sent += n
	}
	return time.Since(start), nil
}

// counters returns, in t's namespace, the packets counted by the drop rule
// of the input chain and the UDP datagrams that reached a socket (received
// or dropped for lack of buffer space).
func (t *pktTarget) counters(b *testing.B) (dropped, udp int64) {
	b.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(t.ns.Fd()))
	if err != nil {
		b.Fatal(err)
	}
	tbl := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	rules, err := c.GetRules(tbl, &nftables.Chain{Table: tbl, Name: "input"})
	if err != nil {
		b.Fatal(err)
	}
	found := false
	for _, r := range rules {
		for _, e := range r.Exprs {
			if ctr, ok := e.(*expr.Counter); ok {
				dropped, found = int64(ctr.Packets), true
			}
		}
	}
	if !found {
		b.Fatalf("%s: no counter in chain input", t.ns.Name())
	}
	snmp := t.ns.Exec(b, "cat", "/proc/net/snmp")
	var header []string
	for line := range strings.Lines(snmp) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if header == nil {
			header = f
			continue
		}
		for i, name := range header {
			if (name == "InDatagrams" || name == "InErrors") && i < len(f) {
				v, _ := strconv.ParseInt(f[i], 10, 64)
				udp += v
			}
		}
		break
	}
	return dropped, udp
}

func disableIPv6(b *testing.B, ns *netnstest.NS) {
	b.Helper()
	// No router solicitations or MLD on the veths: only the benchmark's
	// packets reach the drop counter.
	ns.Exec(b, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
}

// BenchmarkFirewallPacket measures the per-packet cost of table inet govnet
// at 1,000, 10,000 and 100,000 elements, for each kind of packet (see
// above). One iteration is a round: a burst of burstSize packets to every
// receiver in turn, starting with a different one each round so that load
// drifts on a shared machine hit every size alike. Per path it reports the
// median over rounds of ns/pkt at each size, and of the per-round ratio of
// 100,000 to 1,000 elements (ratio@100k). A second 1,000-element receiver
// (the control) gives the ratio of two identical receivers, ratio@control:
// the measurement's own noise and bias.
func BenchmarkFirewallPacket(b *testing.B) {
	netnstest.RequireTools(b, "nft")
	sender := netnstest.New(b)
	disableIPv6(b, sender)
	for _, a := range []netip.Addr{probeExact, probeNet, probeDrop} {
		sender.Exec(b, "ip", "addr", "add", netip.PrefixFrom(a, 32).String(), "dev", "lo")
	}
	// The receivers: the reference, its control twin, and the larger tables.
	const iRef, iControl, iBig = 0, 1, 3
	sizes := []struct {
		label string
		n     int
	}{iRef: {"1000", 1_000}, iControl: {"1000'", 1_000}, 2: {"10000", 10_000}, iBig: {"100000", 100_000}}
	var targets []*pktTarget
	for i, size := range sizes {
		rcv := netnstest.New(b)
		disableIPv6(b, rcv)
		addrS := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i), 1}), 24)
		addrR := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i), 2}), 24)
		_, ifR := netnstest.Veth(b, sender, rcv, addrS, addrR)
		for _, dst := range []string{"100.64.0.0/10", "10.0.0.0/8", "192.0.2.0/24"} {
			rcv.Exec(b, "ip", "route", "add", dst, "via", addrS.Addr().String(), "dev", ifR)
		}
		fw, err := NewFirewall(ifR, WithNetNS(rcv.Fd()))
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if _, err := fw.Apply(packetPolicy(size.n), nil); err != nil {
			b.Fatal(err)
		}
		b.Logf("receiver %s (%s): %d elements applied in %v", size.label, rcv.Name(), size.n, time.Since(start).Round(time.Millisecond))
		var sink *net.UDPConn
		if err := rcv.Do(func() (err error) {
			sink, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addrR.Addr(), probePort)))
			return err
		}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { sink.Close() })
		if err := sink.SetReadBuffer(1); err != nil { // the kernel's minimum
			b.Fatal(err)
		}
		t := &pktTarget{label: size.label, ns: rcv, send: map[string]*udpBurst{}}
		for _, p := range pktPaths {
			t.send[p.name] = newUDPBurst(b, sender, p.src, addrR.Addr())
		}
		targets = append(targets, t)
	}
	// Warm up: ARP, conntrack entries, the sink's buffer, caches.
	for _, t := range targets {
		for _, p := range pktPaths {
			for range 4 {
				if _, err := t.send[p.name].burst(burstSize); err != nil {
					b.Fatal(err)
				}
			}
		}
	}

	for _, p := range pktPaths {
		b.Run("path="+p.name, func(b *testing.B) {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			type snap struct{ dropped, udp int64 }
			before := make([]snap, len(targets))
			for i, t := range targets {
				before[i].dropped, before[i].udp = t.counters(b)
			}
			perPkt := make([][]float64, len(targets)) // ns per packet, per target, per round
			var ratio, control []float64
			round := 0
			for b.Loop() {
				cur := make([]float64, len(targets))
				for j := range targets {
					k := (round + j) % len(targets)
					d, err := targets[k].send[p.name].burst(burstSize)
					if err != nil {
						b.Fatal(err)
					}
					cur[k] = float64(d.Nanoseconds()) / burstSize
					perPkt[k] = append(perPkt[k], cur[k])
				}
				ratio = append(ratio, cur[iBig]/cur[iRef])
				control = append(control, cur[iControl]/cur[iRef])
				round++
			}
			b.StopTimer()
			// Every packet sent went through the firewall to its verdict.
			for i, t := range targets {
				dropped, udp := t.counters(b)
				sent := int64(round * burstSize)
				wantDropped, wantUDP := before[i].dropped, before[i].udp+sent
				if p.name == "drop" {
					wantDropped, wantUDP = before[i].dropped+sent, before[i].udp
				}
				if dropped != wantDropped || udp != wantUDP {
					b.Errorf("receiver %s: drop counter %d, UDP datagrams %d; want %d, %d (%d packets sent on path %s)",
						t.label, dropped, udp, wantDropped, wantUDP, sent, p.name)
				}
			}
			var summary []string
			for i, t := range targets {
				m := median(perPkt[i])
				summary = append(summary, fmt.Sprintf("%s: %.0f", t.label, m))
				switch t.label {
				case "1000":
					b.ReportMetric(m, "ns/pkt@1k")
				case "10000":
					b.ReportMetric(m, "ns/pkt@10k")
				case "100000":
					b.ReportMetric(m, "ns/pkt@100k")
				}
			}
			b.ReportMetric(median(slices.Clone(ratio)), "ratio@100k")
			b.ReportMetric(median(slices.Clone(control)), "ratio@control")
			b.Logf("path %s, %d rounds of %d packets: median ns/pkt %s; ratio 100k/1k median %.3f (p10 %.3f, p90 %.3f); control 1k'/1k median %.3f (p10 %.3f, p90 %.3f)",
				p.name, round, burstSize, strings.Join(summary, ", "),
				median(slices.Clone(ratio)), quantile(slices.Clone(ratio), 0.1), quantile(slices.Clone(ratio), 0.9),
				median(slices.Clone(control)), quantile(slices.Clone(control), 0.1), quantile(slices.Clone(control), 0.9))
		})
	}
}
