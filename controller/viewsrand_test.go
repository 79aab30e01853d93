package controller

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
)

// try applies a command that may be refused; it consumes a raft index
// either way, as raft does.
func (x *hubFixture) try(typ CommandType, req any) error {
	x.t.Helper()
	x.index++
	return applyCmd(x.t, x.f, x.index, typ, req)
}

// cert returns a new gateway certificate of id and its serial.
func (x *hubFixture) cert(id string) (string, *api.Certificate) {
	x.seq++
	serial := fmt.Sprintf("%x", 0x1000+x.seq)
	g, _ := x.f.State().Gateway(id)
	return serial, &api.Certificate{Serial: serial, Kind: "gateway", Subject: id, Gateway: id, Agency: g.Agency,
		Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(24 * time.Hour)}
}

// reenroll re-enrolls an enrolled gateway with a new WireGuard key and,
// unless endpoint is empty, a new endpoint.
func (x *hubFixture) reenroll(id, endpoint string) {
	x.t.Helper()
	serial, c := x.cert(id)
	hash := "r" + serial
	x.apply(CmdTokenIssue, &TokenIssueRequest{Meta: meta("off"), Gateway: id, TokenHash: hash, Expires: t0.Add(time.Hour), Reenroll: true})
	x.apply(CmdGatewayEnroll, &GatewayEnrollRequest{Meta: meta("gateway:" + id), Gateway: id, TokenHash: hash,
		PublicKey: "rekey-" + serial, Endpoint: endpoint, CertSerial: serial, CertExpires: c.NotAfter, Cert: c})
}

// renew records a renewal of an enrolled gateway's certificate.
func (x *hubFixture) renew(id string) {
	x.t.Helper()
	g, _ := x.f.State().Gateway(id)
	_, c := x.cert(id)
	x.apply(CmdGatewayRenew, &GatewayRenewRequest{Meta: meta("gateway:" + id), Gateway: id, OldSerial: g.CertSerial, Cert: *c})
}

// hubClient is a watch stream as controller/server.go serves one, with
// deltas: it holds the view built from what it was sent.
type hubClient struct {
	slow  bool
	since uint64
	sent  *hubView
	view  *api.View
}

// receive sends c what its stream would send now and checks that the
// view it then holds is the full compile's.
func (x *hubFixture) receive(n *Node, id string, c *hubClient) {
	x.t.Helper()
	msgs, v := n.viewsToSend(id, c.since, c.sent, true)
	if v != nil {
		for _, m := range msgs {
			ev := m.(api.WatchEvent)
			switch {
			case ev.View != nil:
				c.view = ev.View
			case ev.Delta != nil:
				got, err := ev.Delta.Apply(c.view)
				if err != nil {
					x.t.Fatalf("stream of %s: delta %+v on view at %d: %v", id, ev.Delta, c.view.RaftIndex, err)
				}
				c.view = got
			}
		}
		c.since, c.sent = v.head.RaftIndex, v
	}
	w := x.want[id]
	got := c.view
	if got.RaftIndex != c.since || got.PolicyVersion != w.PolicyVersion || got.OverlayIP != w.OverlayIP ||
		got.OverlayPrefix != w.OverlayPrefix || !api.SameLANs(got.LANs, w.LANs) ||
		!slices.EqualFunc(got.Peers, w.Peers, api.SamePeer) || !slices.Equal(got.Rules, w.Rules) {
		x.t.Fatalf("stream of %s holds a view that is not the full compile's:\n got %+v\nwant %+v", id, got, w)
	}
}

// randomPolicy returns a policy made of a random choice of rules over
// groups of every kind (level, subtree, subtree and level, agencies,
// gateways, groups of groups) and services (explicit gateways, a group).
// Every group and service is always defined; the gateways named exist.
func randomPolicy(rng *rand.Rand) string {
	rules := []string{
		"{from: [communes], to: [ndxp]}",
		"{from: [provinces], to: [provinces], ports: [tcp/22, icmp]}",
		"{from: [h01], to: [h01-districts], ports: [udp/5000-5001]}",
		"{from: [districts], to: [provinces], ports: [tcp/443]}",
		"{from: [provinces], to: [gw-ndxp], ports: [tcp/443]}",
		"{from: [picked], to: [dns]}",
		"{from: [mixed, h02-communes], to: [hubs]}",
		"{from: [gw2], to: [gw3, h03-units], ports: [tcp/80]}",
		"{from: [central], to: [communes], ports: [tcp/9100]}",
		"{from: [h02], to: [h02], ports: [udp/7]}",
	}
	var b strings.Builder
	b.WriteString(`version: 1
groups:
  central: {level: central}
  provinces: {level: province}
  districts: {level: district}
  communes: {level: commune}
  h01: {subtree: 000.00.00.H01}
  h02: {subtree: 000.00.00.H02}
  h01-districts: {subtree: 000.00.00.H01, level: district}
  h02-communes: {subtree: 000.00.00.H02, level: commune}
  h03-units: {agencies: [000.00.01.H03, 000.01.01.H03]}
  picked: {gateways: [gw1, gw4, gw5]}
  mixed: {groups: [picked, h03-units]}
services:
  ndxp: {gateways: [gw-ndxp], ports: [tcp/443, tcp/8443]}
  dns: {gateways: [gw1, gw2], ports: [udp/53]}
  hubs: {group: provinces, ports: [tcp/8443]}
rules:
`)
	n := 0
	for _, r := range rules {
		if rng.IntN(2) == 0 {
			fmt.Fprintf(&b, "  - %s\n", r)
			n++
		}
	}
	if n == 0 {
		fmt.Fprintf(&b, "  - %s\n", rules[rng.IntN(len(rules))])
	}
	return b.String()
}

// TestViewsIncrementalRandomAll: random bursts of every command that can
// change a view, as the state machine applies them: registrations (with
// LANs shared, nested or none), enrollments, re-enrollments (a new key,
// a new endpoint), renewals, revocations (by gateway, by serial, by an
// approved request), decommissions, agency mergers, re-parentings,
// closures and new agencies, policies (published, approved), several to
// one gateway in a burst. After every burst the hub's views, indexes and
// Compiler equal a full compile, and every stream, fed what
// viewsToSend sends (some only now and then), holds the full compile's
// view.
func TestViewsIncrementalRandomAll(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 4} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { hubRandom(t, seed, 300) })
	}
}

func hubRandom(t *testing.T, seed uint64, bursts int) {
	x := newHubFixture(t)
	n := &Node{hub: x.h}
	rng := rand.New(rand.NewPCG(seed, seed))
	s := x.f.State()
	x.agency("000.00.00.G22")
	for p := 1; p <= 4; p++ {
		for _, c := range []string{"000.00.00.H%02d", "000.00.01.H%02d", "000.00.02.H%02d", "000.01.01.H%02d", "000.02.01.H%02d", "000.01.02.H%02d"} {
			x.agency(fmt.Sprintf(c, p))
		}
	}
	// LANs from a small pool, so that gateways share some; a /16 that
	// holds /24s of the pool; now and then none or two.
	lans := func() []netip.Prefix {
		var out []netip.Prefix
		for range rng.IntN(3) {
			switch rng.IntN(20) {
			case 0, 1, 2, 3:
				out = append(out, netip.MustParsePrefix("10.0.0.0/16"))
			case 4:
				// Another gateway's overlay address, or a LAN of an earlier
				// release: CmdGatewayRegister refuses both, CmdGatewayAdd not.
				out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, 0, byte(2 + rng.IntN(20))}), 32))
			case 5:
				out = append(out, netip.MustParsePrefix("fd00:1::/64"))
			default:
				out = append(out, lan(rng.IntN(6)))
			}
		}
		slices.SortFunc(out, netip.Prefix.Compare)
		return slices.Compact(out)
	}
	active := func(level string) []string {
		var out []string
		for _, a := range s.Agencies() {
			if !a.Closed() && (level == "" || a.Level == level) {
				out = append(out, a.Code)
			}
		}
		return out
	}
	pick := func(ids []string) string { return ids[rng.IntN(len(ids))] }
	byStatus := func(st string) []string {
		var out []string
		for _, g := range s.Gateways() {
			if g.Status == st && g.ID != "gw-ndxp" {
				out = append(out, g.ID)
			}
		}
		return out
	}
	nGW, nReq, nCode := 0, 0, 10
	// register registers a gateway with CmdGatewayRegister, which
	// refuses LANs in service: then without LANs.
	register := func(req *GatewayAddRequest) {
		if x.try(CmdGatewayRegister, req) != nil {
			req.LANs = nil
			x.apply(CmdGatewayRegister, req)
		}
	}
	// add registers a new gateway, with CmdGatewayAdd (of earlier
	// releases, which lets gateways share LANs) or CmdGatewayRegister.
	add := func() string {
		nGW++
		id := fmt.Sprintf("gw%d", nGW)
		req := &GatewayAddRequest{Meta: meta("op"), ID: id, Agency: pick(active("")), Endpoint: id + ":51820", LANs: lans()}
		if rng.IntN(3) > 0 {
			x.apply(CmdGatewayAdd, req)
		} else {
			register(req)
		}
		return id
	}
	serial := func(id string) string {
		g, _ := s.Gateway(id)
		return g.CertSerial
	}
	x.gateway("gw-ndxp", "000.00.00.G22", lan(1000))
	x.enroll("gw-ndxp")
	for range 12 {
		x.enroll(add())
	}
	for range 6 {
		add()
	}
	// Half the runs start without a policy, and get one later.
	policyAt := -1
	if seed%2 == 0 {
		x.publish(randomPolicy(rng))
	} else {
		policyAt = 20
	}
	x.pass()

	clients := map[string]*hubClient{}
	ops := map[string]int{}
	kinds := map[string]int{}
	// The operations and their weights: leaves only while enough
	// gateways are enrolled, so that the network does not drain.
	weights := []struct {
		op string
		w  int
	}{
		{"add", 14}, {"enroll", 20}, {"reenroll", 6}, {"revoke", 5}, {"revoke pending", 2}, {"revoke by serial", 3},
		{"revoke by request", 3}, {"decommission", 4}, {"enroll, revoke", 3}, {"revoke, register its LANs", 4},
		{"reenroll, revoke", 2}, {"add, enroll, reenroll", 4}, {"renew", 6}, {"report", 3},
		{"publish", 2}, {"publish by request", 1}, {"merge", 2}, {"reparent", 2}, {"close", 2}, {"new agency", 2},
	}
	total := 0
	for _, w := range weights {
		total += w.w
	}
	for burst := range bursts {
		renewOnly := true
		for range 1 + rng.IntN(3) {
			pending, enrolled, revoked := byStatus(api.StatusPending), byStatus(api.StatusEnrolled), byStatus(api.StatusRevoked)
			op := ""
			for i, r := 0, rng.IntN(total); op == ""; i++ {
				if r -= weights[i].w; r < 0 {
					op = weights[i].op
				}
			}
			leave := len(enrolled) > 15
			switch {
			case op == "add":
				add()
			case op == "enroll" && len(pending) > 0:
				x.enroll(pick(pending))
			case op == "reenroll" && len(enrolled) > 0:
				id, ep := pick(enrolled), ""
				if rng.IntN(2) == 0 {
					ep = fmt.Sprintf("%s-%d:51820", id, x.seq)
				}
				x.reenroll(id, ep)
			case op == "revoke" && leave:
				x.revoke(pick(enrolled))
			case op == "revoke pending" && len(pending) > 0:
				x.revoke(pick(pending))
			case op == "revoke by serial" && leave:
				x.apply(CmdCertRevoke, &CertRevokeRequest{Meta: meta("off"), Serial: serial(pick(enrolled)), Reason: 1})
			case op == "revoke by request" && leave:
				nReq++
				id := fmt.Sprintf("r%d", nReq)
				req := &RequestCreateRequest{Meta: meta("op"), ID: id, Role: "operator", Kind: api.RequestRevoke, ReasonCode: 1}
				if g := pick(enrolled); rng.IntN(2) == 0 {
					req.Gateway = g
				} else {
					req.Serial = serial(g)
				}
				x.apply(CmdRequestCreate, req)
				x.apply(CmdRequestDecide, &RequestDecideRequest{Meta: meta("off"), ID: id, Role: "officer", Approve: true})
			case op == "decommission" && (leave || len(pending)+len(revoked) > 0):
				ids := slices.Concat(pending, revoked)
				if leave {
					ids = append(ids, enrolled...)
				}
				x.apply(CmdGatewayDecommission, &GatewayDecommissionRequest{Meta: meta("off"), Gateway: pick(ids)})
			case op == "enroll, revoke" && len(pending) > 0:
				id := pick(pending)
				x.enroll(id)
				x.revoke(id)
			case op == "revoke, register its LANs" && leave:
				id := pick(enrolled)
				x.revoke(id)
				g, _ := s.Gateway(id)
				nGW++
				register(&GatewayAddRequest{Meta: meta("op"), ID: fmt.Sprintf("gw%d", nGW), Agency: g.Agency, Endpoint: "x:1", LANs: g.LANs})
				if rng.IntN(2) == 0 {
					x.enroll(fmt.Sprintf("gw%d", nGW))
				}
			case op == "reenroll, revoke" && leave:
				id := pick(enrolled)
				x.reenroll(id, "")
				x.revoke(id)
			case op == "add, enroll, reenroll":
				id := add()
				x.enroll(id)
				x.reenroll(id, id+"-new:51820")
			case op == "renew" && len(enrolled) > 0:
				x.renew(pick(enrolled))
			case op == "report":
				x.apply(CmdGatewayReport, &GatewayReportRequest{Meta: meta("gateway:gw-ndxp"), Gateway: "gw-ndxp"})
			case op == "publish":
				x.publish(randomPolicy(rng))
			case op == "publish by request":
				nReq++
				id := fmt.Sprintf("r%d", nReq)
				x.apply(CmdRequestCreate, &RequestCreateRequest{Meta: meta("op"), ID: id, Role: "operator", Kind: api.RequestPolicy, PolicyName: "p.yaml", PolicySource: randomPolicy(rng)})
				x.apply(CmdRequestDecide, &RequestDecideRequest{Meta: meta("off"), ID: id, Role: "officer", Approve: true})
			case op == "merge":
				level := []string{"province", "district", "commune"}[rng.IntN(3)]
				codes := active(level)
				if len(codes) < 2 {
					op = ""
					break
				}
				rng.Shuffle(len(codes), func(i, j int) { codes[i], codes[j] = codes[j], codes[i] })
				x.apply(CmdAgencyMerge, &AgencyMergeRequest{Meta: meta("op"), Sources: codes[1:2], Code: codes[0]})
			case op == "reparent":
				child, parent := "district", "province"
				if rng.IntN(2) == 0 {
					child, parent = "commune", "district"
				}
				// Refused when it is there already.
				_ = x.try(CmdAgencyReparent, &AgencyReparentRequest{Meta: meta("op"), Code: pick(active(child)), Parent: pick(active(parent))})
			case op == "close":
				// Refused unless it has no gateways in service and no active children.
				_ = x.try(CmdAgencyClose, &AgencyCloseRequest{Meta: meta("op"), Code: pick(active(""))})
			case op == "new agency":
				nCode++
				switch rng.IntN(3) {
				case 0:
					x.agency(fmt.Sprintf("000.00.00.H%02d", nCode))
				case 1:
					x.agency(fmt.Sprintf("000.00.%02d.%s", nCode, pick(active("province"))[len("000.00.00."):]))
				default:
					x.agency(fmt.Sprintf("000.%02d.%s", nCode, pick(active("district"))[len("000.00."):]))
				}
			default:
				op = ""
			}
			ops[op]++
			if op != "renew" && op != "report" && op != "" {
				renewOnly = false
			}
		}
		kind := x.pass()
		kinds[kind]++
		if renewOnly && kind != "idle" {
			t.Fatalf("renewals and reports: a %s pass, want idle", kind)
		}
		for id := range clients {
			if _, ok := x.want[id]; !ok {
				delete(clients, id) // it left: its stream ends
			}
		}
		for _, id := range slices.Sorted(maps.Keys(x.want)) {
			c := clients[id]
			if c == nil {
				c = &hubClient{slow: rng.IntN(6) == 0}
				clients[id] = c
			}
			// Some streams lag a pass or two behind, a few many passes
			// (more changes than the hub keeps deltas for).
			if c.sent == nil || !c.slow && rng.IntN(3) > 0 || c.slow && rng.IntN(40) == 0 {
				x.receive(n, id, c)
			}
		}
		if burst == policyAt {
			x.publish(randomPolicy(rng))
			kinds[x.pass()]++
		}
	}
	t.Logf("%d views, %d distinct sources, %d in all", len(x.want), len(x.h.srcCount), func() (n int) {
		for _, c := range x.h.srcCount {
			n += c
		}
		return
	}())
	t.Logf("ops %v", ops)
	t.Logf("passes %v", kinds)
	for _, k := range []string{"full", "patched", "joined", "incremental"} {
		if kinds[k] == 0 {
			t.Errorf("no %s pass: %v", k, kinds)
		}
	}
}
