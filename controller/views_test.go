package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/policy"
	"github.com/govnet/govnet/policy/nft"
	"github.com/govnet/govnet/policy/policytest"
)

// hubFixture drives a state machine and its view hub without raft: the
// commands go through FSM.Apply as raft would hand them over, and each
// step ends with one hub pass, as the hub's loop makes after a burst.
type hubFixture struct {
	t     testing.TB
	f     *FSM
	h     *viewHub
	index uint64
	seq   int
	// want holds, after each pass, every view as a full compile of the
	// state makes it, stamped as the hub stamps its views.
	want map[string]*api.View
}

func newHubFixture(t testing.TB) *hubFixture {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f := NewFSM(log, nil)
	x := &hubFixture{t: t, f: f, h: newViewHub(f.State(), log)}
	x.apply(CmdInitNetwork, &InitNetworkRequest{Meta: meta("node:ctl1"), OverlayPrefix: netip.MustParsePrefix("100.64.0.0/16")})
	return x
}

func (x *hubFixture) apply(typ CommandType, req any) {
	x.t.Helper()
	x.index++
	if err := applyCmd(x.t, x.f, x.index, typ, req); err != nil {
		x.t.Fatalf("%s: %v", typ, err)
	}
}

func (x *hubFixture) agency(code string) {
	x.apply(CmdAgencyUpsert, &AgencyUpsertRequest{Meta: meta("op"), Code: code, Name: "agency " + code})
}

// gateway registers gateway id at agency code with one LAN.
func (x *hubFixture) gateway(id, code string, lan netip.Prefix) {
	x.apply(CmdGatewayAdd, &GatewayAddRequest{Meta: meta("op"), ID: id, Agency: code, Endpoint: id + ":51820", LANs: []netip.Prefix{lan}})
}

// enroll enrolls a registered gateway with a token, keys and a recorded
// certificate whose serial is returned.
func (x *hubFixture) enroll(id string) string {
	x.seq++
	hash, serial := fmt.Sprintf("t%d", x.seq), fmt.Sprintf("%x", 0x1000+x.seq)
	g, _ := x.f.State().Gateway(id)
	x.apply(CmdTokenIssue, &TokenIssueRequest{Meta: meta("off"), Gateway: id, TokenHash: hash, Expires: t0.Add(time.Hour)})
	x.apply(CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("gateway:" + id), Gateway: id, TokenHash: hash,
		PublicKey: fmt.Sprintf("key-%d", x.seq), CertSerial: serial, CertExpires: t0.Add(24 * time.Hour),
		Cert: &api.Certificate{Serial: serial, Kind: "gateway", Subject: id, Gateway: id, Agency: g.Agency,
			Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(24 * time.Hour)}})
	return serial
}

func (x *hubFixture) revoke(id string) {
	x.apply(CmdCertRevoke, &CertRevokeRequest{Meta: meta("off"), Gateway: id, Reason: 1})
}

func (x *hubFixture) publish(src string) {
	x.apply(CmdPolicyPublish, &PolicyPublishRequest{Meta: meta("off"), Name: "p.yaml", Source: src})
}

// pass runs one hub pass and checks that the views equal a full compile
// of the state, that the reverse index and the source counts match the
// views and the registry, and returns the kind of pass it was.
func (x *hubFixture) pass() string {
	x.t.Helper()
	before := x.h.passCounts()
	x.h.mu.Lock()
	prev := maps.Clone(x.h.views)
	x.h.mu.Unlock()
	if err := x.h.recompute(); err != nil {
		x.t.Fatal(err)
	}
	x.want = x.check()
	x.checkDeltas(prev)
	after := x.h.passCounts()
	switch {
	case after.Full > before.Full:
		return "full"
	case after.Patched > before.Patched:
		return "patched"
	case after.Joined > before.Joined:
		return "joined"
	case after.Incremental > before.Incremental:
		return "incremental"
	case after.Idle > before.Idle:
		return "idle"
	}
	x.t.Fatal("no pass was counted")
	return ""
}

// checkDeltas checks the deltas the pass recorded: each view's history,
// from the view it had before the pass, leads to the view after, and the
// pass's own delta is api.Diff's.
func (x *hubFixture) checkDeltas(prev map[string]*hubView) {
	x.t.Helper()
	x.h.mu.Lock()
	defer x.h.mu.Unlock()
	for id, hist := range x.h.deltas {
		cur, old := x.h.views[id], prev[id]
		if old == nil || cur == nil || old == cur {
			continue // recorded by an earlier pass, for views since replaced
		}
		d := hist[len(hist)-1]
		got, err := d.Apply(old.View())
		if err != nil {
			x.t.Fatalf("recorded delta of %s: %v", id, err)
		}
		if !sameView(newHubView(got), cur) {
			x.t.Fatalf("recorded delta of %s does not give its view:\n got %+v\nwant %+v", id, got, cur.View())
		}
		for i := 1; i < len(hist); i++ {
			if hist[i].BaseIndex != hist[i-1].RaftIndex {
				x.t.Fatalf("history of %s is not a chain: %d after %d", id, hist[i].BaseIndex, hist[i-1].RaftIndex)
			}
		}
		diff := api.Diff(old.View(), cur.View())
		if len(diff.PeersSet) != len(d.PeersSet) || len(diff.PeersRemoved) != len(d.PeersRemoved) ||
			len(diff.RulesAdded) != len(d.RulesAdded) || len(diff.RulesRemoved) != len(d.RulesRemoved) {
			x.t.Fatalf("recorded delta of %s is not minimal: %+v, api.Diff %+v", id, d, diff)
		}
	}
}

// check compares the hub with a full compile of the state: its views, its
// reverse index, its source prefixes and their counts, and the views of
// its Compiler, kept current since the last full pass. It returns the
// full compile's views.
func (x *hubFixture) check() map[string]*api.View {
	t, s, h := x.t, x.f.State(), x.h
	t.Helper()
	reg := &policy.Registry{Agencies: s.Agencies(), Gateways: s.Gateways()}
	want := map[string]*api.View{}
	cur, ok := s.Policy()
	if !ok {
		for _, g := range reg.Gateways {
			if g.Status == api.StatusEnrolled {
				want[g.ID] = &api.View{Gateway: g.ID, OverlayIP: g.OverlayIP, Peers: []api.Peer{}, Rules: []api.Rule{}, LANs: policy.OwnLANs(&g)}
			}
		}
	} else {
		p, err := policy.Parse("p.yaml", []byte(cur.Source))
		if err != nil {
			t.Fatal(err)
		}
		if want, err = p.Compile(reg); err != nil {
			t.Fatal(err)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.computed != s.Index() {
		t.Fatalf("views computed at %d, state at %d", h.computed, s.Index())
	}
	if got, exp := slices.Sorted(maps.Keys(h.views)), slices.Sorted(maps.Keys(want)); !slices.Equal(got, exp) {
		t.Fatalf("views of %v, want %v", got, exp)
	}
	peersOf := map[string]map[string]struct{}{}
	for id, w := range want {
		w.OverlayPrefix, w.PolicyVersion = s.Overlay(), cur.Version
		if w.Peers == nil {
			w.Peers = []api.Peer{}
		}
		if w.Rules == nil {
			w.Rules = []api.Rule{}
		}
		hv := h.views[id]
		if !sameView(hv, newHubView(w)) {
			v := hv.View()
			t.Fatalf("view of %s differs from a full compile:\n got %d peers %+v\n     %d rules %v\nwant %d peers %+v\n     %d rules %v",
				id, len(v.Peers), v.Peers, len(v.Rules), v.Rules, len(w.Peers), w.Peers, len(w.Rules), w.Rules)
		}
		if v := hv.View(); !slices.Equal(v.Rules, w.Rules) || !slices.EqualFunc(v.Peers, w.Peers, api.SamePeer) {
			t.Fatalf("view of %s: its API form differs from its chunks", id)
		}
		for _, p := range w.Peers {
			if peersOf[p.Gateway] == nil {
				peersOf[p.Gateway] = map[string]struct{}{}
			}
			peersOf[p.Gateway][id] = struct{}{}
		}
	}
	if !maps.EqualFunc(h.peersOf, peersOf, maps.Equal) {
		t.Fatalf("reverse index %v, want %v", h.peersOf, peersOf)
	}
	counts := map[netip.Prefix]int{}
	for i := range reg.Gateways {
		if policy.Participates(&reg.Gateways[i]) {
			for _, p := range sourcesOf(&reg.Gateways[i]) {
				counts[p]++
			}
		}
	}
	if !maps.Equal(h.srcCount, counts) {
		t.Fatalf("source counts %v, want %v", h.srcCount, counts)
	}
	sources := map[string][]netip.Prefix{}
	for i := range reg.Gateways {
		if g := &reg.Gateways[i]; policy.Participates(g) {
			sources[g.ID] = sourcesOf(g)
		}
	}
	if !maps.EqualFunc(h.sources, sources, slices.Equal) {
		t.Fatalf("sources %v, want %v", h.sources, sources)
	}
	if h.comp != nil {
		// The Compiler, updated gateway by gateway, resolves as a new one would.
		all := h.comp.All()
		if got, exp := slices.Sorted(maps.Keys(all)), slices.Sorted(maps.Keys(want)); !slices.Equal(got, exp) {
			t.Fatalf("the hub's compiler has views of %v, want %v", got, exp)
		}
		for id, v := range all {
			if w := want[id]; !slices.Equal(v.Rules, w.Rules) || !slices.EqualFunc(v.Peers, w.Peers, api.SamePeer) || !api.SameLANs(v.LANs, w.LANs) {
				t.Fatalf("the hub's compiler: view of %s differs from a full compile:\n got %+v\nwant %+v", id, v, w)
			}
		}
	}
	return want
}

const (
	viewsPolicy1 = `version: 1
groups:
  provinces: {level: province}
  communes: {level: commune}
  h01: {subtree: 000.00.00.H01}
  h01-districts: {subtree: 000.00.00.H01, level: district}
services:
  ndxp: {gateways: [gw-ndxp], ports: [tcp/443, tcp/8443]}
rules:
  - {from: [communes], to: [ndxp]}
  - {from: [provinces], to: [provinces], ports: [tcp/22, icmp]}
  - {from: [h01], to: [h01-districts], ports: [udp/5000-5002]}
`
	viewsPolicy2 = `version: 1
groups:
  districts: {level: district}
  provinces: {level: province}
rules:
  - {from: [districts], to: [provinces], ports: [tcp/443]}
  - {from: [provinces], to: [gw-ndxp], ports: [tcp/443]}
`
)

// lan returns a LAN prefix; equal n give equal prefixes.
func lan(n int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(n >> 8), byte(n), 0}), 24)
}

// TestViewsIncremental: after each of a sequence of registry and policy
// changes, the views the hub keeps equal a full compile of the state, and
// the hub took the cheapest pass that is correct (TestRouterStates style:
// a table of successive states).
func TestViewsIncremental(t *testing.T) {
	x := newHubFixture(t)
	x.agency("000.00.00.G22")
	for _, p := range []string{"H01", "H02"} {
		x.agency("000.00.00." + p)
		x.agency("000.00.01." + p)
		x.agency("000.01.01." + p)
		x.agency("000.02.01." + p)
	}
	x.gateway("gw-ndxp", "000.00.00.G22", lan(1))
	x.gateway("p1", "000.00.00.H01", lan(2))
	x.gateway("p2", "000.00.00.H02", lan(3))
	x.gateway("d1", "000.00.01.H01", lan(4))
	x.gateway("c1", "000.01.01.H01", lan(5))
	x.gateway("c2", "000.02.01.H01", lan(6))
	x.gateway("c3", "000.01.01.H02", lan(7))
	x.gateway("c4", "000.02.01.H02", lan(7)) // shares c3's LAN
	if got := x.pass(); got != "full" {
		t.Fatalf("first pass: %s", got)
	}
	serials := map[string]string{}
	steps := []struct {
		name string
		do   func()
		want string // the kind of pass
	}{
		{"enroll before any policy", func() { serials["gw-ndxp"] = x.enroll("gw-ndxp") }, "incremental"},
		{"enroll the rest", func() {
			for _, id := range []string{"p1", "p2", "d1", "c1", "c2", "c3", "c4"} {
				serials[id] = x.enroll(id)
			}
		}, "incremental"},
		{"publish a policy", func() { x.publish(viewsPolicy1) }, "full"},
		{"a report changes no view", func() {
			x.apply(CmdGatewayReport, &GatewayReportRequest{Meta: meta("gateway:c1"), Gateway: "c1", Report: api.Report{PolicyVersion: 1}})
		}, "idle"},
		{"a pending gateway changes no view", func() { x.gateway("c5", "000.02.01.H01", lan(8)) }, "patched"},
		{"a commune joins", func() { serials["c5"] = x.enroll("c5") }, "joined"},
		{"a commune leaves", func() { x.revoke("c1") }, "patched"},
		{"a province leaves by its certificate", func() {
			x.apply(CmdCertRevoke, &CertRevokeRequest{Meta: meta("off"), Serial: serials["p2"], Reason: 1})
		}, "patched"},
		{"a gateway sharing a LAN leaves", func() { x.revoke("c3") }, "incremental"},
		{"the hub leaves", func() { x.revoke("gw-ndxp") }, "patched"},
		{"a four-eyes revocation", func() {
			x.apply(CmdRequestCreate, &RequestCreateRequest{Meta: meta("op"), ID: "r1", Role: "operator", Kind: api.RequestRevoke, Gateway: "c2"})
			x.apply(CmdRequestDecide, &RequestDecideRequest{Meta: meta("off"), ID: "r1", Role: "officer", Approve: true})
		}, "patched"},
		{"join and leave in one burst", func() {
			x.gateway("ndxp2", "000.00.00.G22", lan(9))
			x.enroll("ndxp2")
			x.revoke("c4")
		}, "incremental"},
		{"a new agency recomputes all", func() { x.agency("000.00.00.H03") }, "full"},
		{"another policy", func() { x.publish(viewsPolicy2) }, "full"},
		{"a province joins under it", func() {
			x.gateway("p3", "000.00.00.H03", lan(10))
			x.enroll("p3")
		}, "joined"},
		{"a gateway joins with a LAN another has", func() {
			x.gateway("d2", "000.00.01.H02", lan(10))
			x.enroll("d2")
		}, "incremental"},
	}
	for _, st := range steps {
		st.do()
		if got := x.pass(); got != st.want {
			t.Errorf("%s: a %s pass, want %s", st.name, got, st.want)
		}
	}
}

// TestViewsIncrementalRandom: random bursts of joins, leaves, new
// gateways, new agencies and policies; after every burst the hub's views
// equal a full compile.
func TestViewsIncrementalRandom(t *testing.T) {
	x := newHubFixture(t)
	rng := rand.New(rand.NewPCG(4, 4))
	codes := []string{"000.00.00.G22"}
	x.agency(codes[0])
	for p := 1; p <= 3; p++ {
		for _, c := range []string{"000.00.00.H%02d", "000.00.01.H%02d", "000.01.01.H%02d", "000.02.01.H%02d", "000.00.02.H%02d", "000.01.02.H%02d"} {
			codes = append(codes, fmt.Sprintf(c, p))
			x.agency(codes[len(codes)-1])
		}
	}
	var pending, enrolled []string
	n := 0
	add := func() {
		n++
		id := fmt.Sprintf("gw%d", n)
		x.gateway(id, codes[rng.IntN(len(codes))], lan(rng.IntN(40)))
		pending = append(pending, id)
	}
	x.gateway("gw-ndxp", codes[0], lan(1000))
	x.enroll("gw-ndxp")
	for range 30 {
		add()
	}
	x.publish(viewsPolicy1)
	x.pass()
	kinds := map[string]int{}
	for range 200 {
		for range 1 + rng.IntN(3) {
			switch r := rng.IntN(20); {
			case r < 7 && len(pending) > 0:
				i := rng.IntN(len(pending))
				x.enroll(pending[i])
				enrolled = append(enrolled, pending[i])
				pending = slices.Delete(pending, i, i+1)
			case r < 14 && len(enrolled) > 0:
				i := rng.IntN(len(enrolled))
				x.revoke(enrolled[i])
				enrolled = slices.Delete(enrolled, i, i+1)
			case r < 18:
				add()
			case r < 19:
				x.publish([]string{viewsPolicy1, viewsPolicy2}[rng.IntN(2)])
			default:
				x.apply(CmdGatewayReport, &GatewayReportRequest{Meta: meta("gateway:gw-ndxp"), Gateway: "gw-ndxp"})
			}
		}
		kinds[x.pass()]++
	}
	t.Logf("passes: %v", kinds)
	if kinds["patched"] == 0 || kinds["incremental"] == 0 || kinds["joined"] == 0 {
		t.Errorf("passes %v: want patched, joined and incremental ones", kinds)
	}
}

// TestExpectedDigestShared: the digest a node expects in each gateway's
// report is nft.ExpectedDigest of its view's rules and LANs, whether
// computed or taken from the cache of small tables that gateways share,
// which holds one entry per distinct one.
func TestExpectedDigestShared(t *testing.T) {
	agencies, gateways := policytest.National(2, 13)
	x := restoredFixture(t, agencies, gateways, policytest.Policy)
	if err := x.h.recompute(); err != nil {
		t.Fatal(err)
	}
	x.h.mu.Lock()
	views := maps.Clone(x.h.views)
	x.h.mu.Unlock()
	distinct := map[string]bool{}
	for range 2 { // computed, then all from the caches
		for id, v := range views {
			_, rules := v.lists()
			want, err := nft.ExpectedDigest(rules, v.head.LANs)
			if err != nil && !errors.Is(err, nft.ErrUnsupportedRule) {
				t.Fatal(err)
			}
			if got, _, ok := x.h.expected(id); !ok || got != want {
				t.Fatalf("gateway %s: expected digest %q, want %q", id, got, want)
			}
			if k, ok := digestKey(rules, v.head.LANs); ok {
				distinct[k] = true
			}
		}
		x.h.mu.Lock()
		x.h.digests = nil // the second pass reads the shared cache only
		x.h.mu.Unlock()
	}
	// (The national fixture's gateways each have LANs of their own, which
	// their digests cover: few views share one.)
	if len(x.h.shared) != len(distinct) {
		t.Fatalf("%d shared digests for %d distinct small rule sets among %d views", len(x.h.shared), len(distinct), len(views))
	}
}

// TestDigestKey: rule sets differ in their keys whenever their rules
// differ, in order, address family, prefix, protocol or port.
func TestDigestKey(t *testing.T) {
	r := func(src string, proto string, port uint16) api.Rule {
		return api.Rule{Source: netip.MustParsePrefix(src), Protocol: proto, Port: port}
	}
	base := []api.Rule{r("100.64.0.1/32", api.ProtoTCP, 9100), r("100.64.0.2/32", api.ProtoTCP, 9100)}
	variants := [][]api.Rule{
		nil,
		base[:1],
		{base[1], base[0]},
		{r("100.64.0.1/32", api.ProtoTCP, 9100), r("100.64.0.2/32", api.ProtoUDP, 9100)},
		{r("100.64.0.1/32", api.ProtoTCP, 9100), r("100.64.0.2/32", api.ProtoTCP, 9101)},
		{r("100.64.0.1/32", api.ProtoTCP, 9100), r("100.64.0.0/24", api.ProtoTCP, 9100)},
		{r("100.64.0.1/32", api.ProtoTCP, 9100), r("::ffff:100.64.0.2/128", api.ProtoTCP, 9100)},
		{r("100.64.0.1/32", api.ProtoTCP, 9100), {Protocol: api.ProtoTCP, Port: 9100}},
	}
	key := func(rules []api.Rule) string {
		k, ok := digestKey(rules, nil)
		if !ok {
			t.Fatalf("%d rules not keyed", len(rules))
		}
		return k
	}
	seen := map[string]int{key(base): -1}
	for i, v := range variants {
		k := key(v)
		if j, dup := seen[k]; dup {
			t.Errorf("variant %d has the key of %d", i, j)
		}
		seen[k] = i
	}
	if key(slices.Clone(base)) != key(base) {
		t.Error("equal rule sets, different keys")
	}
	if _, ok := digestKey(make([]api.Rule, maxSharedDigestRules+1), nil); ok {
		t.Error("a large set is keyed")
	}
	// The LANs are part of the key: unknown, none, and each set apart.
	lanKeys := map[string]bool{}
	lists := [][]netip.Prefix{nil, {}, {netip.MustParsePrefix("10.1.0.0/24")}, {netip.MustParsePrefix("10.1.0.0/16")},
		{netip.MustParsePrefix("10.2.0.0/24")}, {netip.MustParsePrefix("fd00:1::/64")}, // a LAN of an earlier release
		{netip.MustParsePrefix("10.2.0.0/24"), netip.MustParsePrefix("fd00:1::/64")}}
	for _, lans := range lists {
		k, _ := digestKey(base, lans)
		lanKeys[k] = true
	}
	if len(lanKeys) != len(lists) {
		t.Errorf("%d keys for %d LAN lists", len(lanKeys), len(lists))
	}
}

// TestViewsLeaveWhileCompileFails: a gateway registered under the name of
// a policy group makes the policy invalid, and no view compiles until a
// policy that validates is published. Meanwhile the views stay as they
// were (fail static), but a gateway revoked or decommissioned must still
// leave every view, and the revocation must be seen as enforced: its peer
// entry goes, and the rules for its prefixes but one another gateway
// still sends from.
func TestViewsLeaveWhileCompileFails(t *testing.T) {
	x := newHubFixture(t)
	x.agency("000.00.00.G22")
	x.agency("000.00.00.H01")
	x.agency("000.00.00.H02")
	x.gateway("gw-ndxp", "000.00.00.G22", lan(1))
	x.gateway("p1", "000.00.00.H01", lan(2))
	x.gateway("p2", "000.00.00.H02", lan(3))
	x.gateway("p3", "000.00.00.H02", lan(3)) // shares p2's LAN
	for _, id := range []string{"gw-ndxp", "p1", "p2", "p3"} {
		x.enroll(id)
	}
	x.publish(viewsPolicy2)
	x.pass()
	before, _ := x.h.view("gw-ndxp")

	x.gateway("provinces", "000.00.00.H01", lan(4)) // viewsPolicy2 has a group of that name
	x.revoke("p2")
	if err := x.h.recompute(); err == nil {
		t.Fatal("a policy with a group named like a gateway compiled")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	if err := x.h.waitGone(ctx, "p2", x.index); err != nil {
		t.Fatalf("the revocation is not enforced: %v", err)
	}
	if _, failing := x.h.compiledAt(); !failing {
		t.Error("the hub does not say that its compile fails")
	}
	after, _ := x.h.view("gw-ndxp")
	p2, _ := x.f.State().Gateway("p2")
	var wantPeers []string
	for _, p := range before.View().Peers {
		if p.Gateway != "p2" {
			wantPeers = append(wantPeers, p.Gateway)
		}
	}
	var gotPeers []string
	for _, p := range after.View().Peers {
		gotPeers = append(gotPeers, p.Gateway)
	}
	if !slices.Equal(gotPeers, wantPeers) {
		t.Errorf("gw-ndxp's peers %v, want %v", gotPeers, wantPeers)
	}
	wantRules := slices.DeleteFunc(slices.Clone(before.View().Rules), func(r api.Rule) bool {
		return r.Source == netip.PrefixFrom(p2.OverlayIP, 32)
	})
	if !slices.Equal(after.View().Rules, wantRules) {
		t.Errorf("gw-ndxp's rules %v, want %v (p3's LAN, shared with p2, stays)", after.View().Rules, wantRules)
	}

	// A decommission while the policy still fails, then a policy that
	// validates: every view is compiled again.
	x.apply(CmdGatewayDecommission, &GatewayDecommissionRequest{Meta: meta("off"), Gateway: "p1"})
	if err := x.h.recompute(); err == nil {
		t.Fatal("a policy with a group named like a gateway compiled")
	}
	x.h.mu.Lock()
	if x.h.inAnyView("p1") {
		t.Error("decommissioned p1 is still in a view")
	}
	x.h.mu.Unlock()
	x.publish(strings.ReplaceAll(viewsPolicy2, "provinces", "provs"))
	if got := x.pass(); got != "full" {
		t.Errorf("a policy that validates: a %s pass, want full", got)
	}
}
