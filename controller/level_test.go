package controller

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/hashicorp/raft"
)

// TestClusterLevel: the level a network starts at, how it is raised and
// refused, what a snapshot keeps, and a node whose release is below it.
func TestClusterLevel(t *testing.T) {
	newFSM := func() *FSM { return NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil) }
	prefix := netip.MustParsePrefix("100.64.0.0/24")

	// Initialised by a release before levels: level 1, and its
	// snapshots' network record as they were.
	f := newFSM()
	if err := applyCmd(t, f, 1, CmdInitNetwork, &InitNetworkRequest{Meta: meta("node:ctl1"), OverlayPrefix: prefix}); err != nil {
		t.Fatal(err)
	}
	if got := f.State().Level(); got != 1 {
		t.Fatalf("level after an init without one: %d, want 1", got)
	}
	if snap := snapshotBytes(t, f); !bytes.Contains(snap, []byte(`{"type":"network","data":{"overlay":"100.64.0.0/24"}}`)) {
		t.Fatalf("a level-1 snapshot's network record changed:\n%s", snap)
	}
	// By this release: its level.
	g := newFSM()
	if err := applyCmd(t, g, 1, CmdInitNetwork, &InitNetworkRequest{Meta: meta("node:ctl1"), OverlayPrefix: prefix, Level: 2}); err != nil {
		t.Fatal(err)
	}
	if got := g.State().Level(); got != 2 {
		t.Fatalf("level after an init at 2: %d", got)
	}

	// Raised, once; never lowered.
	if err := applyCmd(t, f, 2, CmdClusterLevel, &ClusterLevelRequest{Meta: meta("node:ctl1"), Level: 2}); err != nil {
		t.Fatal(err)
	}
	before := snapshotBytes(t, f)
	for _, l := range []int{2, 1, 0} {
		err := applyCmd(t, f, 3, CmdClusterLevel, &ClusterLevelRequest{Meta: meta("node:ctl1"), Level: l})
		if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "at level 2 already") {
			t.Fatalf("level %d at level 2: %v", l, err)
		}
	}
	after := snapshotBytes(t, f)
	if !bytes.Equal(stripIndex(before), stripIndex(after)) {
		t.Fatal("a refused level command changed the state")
	}
	// Format 2 names the level; a release before levels refuses it.
	if !bytes.HasPrefix(after, []byte(`{"format":"govnet-state/2","index":3,"level":2}`+"\n")) {
		t.Fatalf("the snapshot does not keep level 2:\n%s", after)
	}
	for _, hdr := range []string{`{"format":"govnet-state/2","index":3}`, `{"format":"govnet-state/2","index":3,"level":1}`, `{"format":"govnet-state/1","index":3,"level":2}`} {
		if _, err := readSnapshot(strings.NewReader(hdr+"\n"), t.TempDir()); err == nil || !strings.Contains(err.Error(), "snapshot format") {
			t.Errorf("header %s: %v", hdr, err)
		}
	}
	r := newFSM()
	if err := r.Restore(io.NopCloser(bytes.NewReader(after))); err != nil {
		t.Fatal(err)
	}
	if got := r.State().Level(); got != 2 {
		t.Fatalf("level after a restore: %d", got)
	}
	// Nothing lowers it: not a snapshot of level 1, nor an init after
	// the raise (one that failed before it, say).
	if err := r.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, g0(t))))); err != nil {
		t.Fatal(err)
	}
	if got := r.State().Level(); got != 2 {
		t.Fatalf("level after a level-1 snapshot: %d", got)
	}
	k := newFSM()
	if err := applyCmd(t, k, 1, CmdClusterLevel, &ClusterLevelRequest{Meta: meta("node:ctl1"), Level: 2}); err != nil {
		t.Fatal(err)
	}
	if err := applyCmd(t, k, 2, CmdInitNetwork, &InitNetworkRequest{Meta: meta("node:ctl1"), OverlayPrefix: prefix}); err != nil || k.State().Level() != 2 {
		t.Fatalf("an init without a level after the raise: %v, level %d", err, k.State().Level())
	}

	// A node whose release is below: it stops at the command that raises
	// the cluster past it, and refuses a snapshot past it.
	defer func(l int) { releaseLevel = l }(releaseLevel)
	releaseLevel = 1
	h := newFSM()
	if err := applyCmd(t, h, 1, CmdInitNetwork, &InitNetworkRequest{Meta: meta("node:ctl1"), OverlayPrefix: prefix}); err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() {
			if p := recover(); p == nil || !strings.Contains(p.(string), "this node's release is of level 1: upgrade this node") {
				t.Errorf("a level-1 node applying level 2: panic %v", p)
			}
		}()
		applyCmd(t, h, 2, CmdClusterLevel, &ClusterLevelRequest{Meta: meta("node:ctl1"), Level: 2})
	}()
	func() {
		defer func() {
			if p := recover(); p == nil || !strings.Contains(p.(string), "initialised at level 2 and this node's release is of level 1: upgrade this node") {
				t.Errorf("a level-1 node applying an init at level 2: panic %v", p)
			}
		}()
		applyCmd(t, newFSM(), 1, CmdInitNetwork, &InitNetworkRequest{Meta: meta("node:ctl1"), OverlayPrefix: prefix, Level: 2})
	}()
	if got := h.State().Level(); got != 1 {
		t.Fatalf("the level-1 node moved to level %d", got)
	}
	err := h.Restore(io.NopCloser(bytes.NewReader(after)))
	if !errors.Is(err, errUpgradeNode) || !strings.Contains(err.Error(), "cluster level is 2 and this node's release is of level 1") {
		t.Fatalf("a level-1 node restoring a level-2 snapshot: %v", err)
	}
	if got := h.State().Level(); got != 1 || !h.State().Overlay().IsValid() {
		t.Fatal("a refused snapshot changed the state")
	}
}

// g0 is a network initialised at level 1, with nothing else.
func g0(t *testing.T) *FSM {
	f := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err := applyCmd(t, f, 1, CmdInitNetwork, &InitNetworkRequest{Meta: meta("node:ctl1"), OverlayPrefix: netip.MustParsePrefix("100.64.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	return f
}

// stripIndex drops a snapshot's header line (its index moves with every
// command, refused or not).
func stripIndex(snap []byte) []byte {
	_, rest, _ := bytes.Cut(snap, []byte("\n"))
	return rest
}

// TestLevelReports: which nodes hold the cluster's level back; from
// level 2 on, a node's report changes only the level of its own record,
// and brings back no record of a node removed meanwhile.
func TestLevelReports(t *testing.T) {
	f := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	idx := uint64(0)
	apply := func(typ CommandType, req any) error {
		idx++
		return applyCmd(t, f, idx, typ, req)
	}
	if err := apply(CmdInitNetwork, &InitNetworkRequest{Meta: meta("node:ctl1"), OverlayPrefix: netip.MustParsePrefix("100.64.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	up := func(node string, level int, report bool) *MemberUpsertRequest {
		ip := map[string]string{"ctl1": "127.0.0.11", "ctl2": "127.0.0.12", "ctl3": "127.0.0.13", "ctl4": "127.0.0.14"}[node]
		return &MemberUpsertRequest{Meta: meta("node:" + node), Node: node, RaftAddr: ip + ":7000", APIAddr: ip + ":7443", Level: level, Report: report}
	}
	for _, r := range []*MemberUpsertRequest{up("ctl1", 2, false), up("ctl2", 0, false), up("ctl3", 1, false)} {
		if err := apply(CmdMemberUpsert, r); err != nil {
			t.Fatal(err)
		}
	}
	levels := func() map[string]int {
		out := map[string]int{}
		for _, m := range f.State().Members() {
			out[m.Node] = m.Level
		}
		return out
	}
	st := f.State()
	all := raft.Configuration{Servers: []raft.Server{{ID: "ctl1"}, {ID: "ctl2"}, {ID: "ctl3"}}}
	if got := fmt.Sprint(belowLevel(st, all, 2)); got != "[ctl2 (level not reported) ctl3 (level 1)]" {
		t.Fatalf("below level 2: %s", got)
	}
	if got := nodesLevel(st, all); got != 0 {
		t.Fatalf("nodes' level with ctl2 unreported: %d", got)
	}
	if CmdBackupRollBack.level() != 2 || CmdGatewayRegister.level() != 1 {
		t.Fatal("command levels")
	}

	if err := apply(CmdMemberUpsert, up("ctl2", 2, true)); err != nil {
		t.Fatal(err)
	}
	if err := apply(CmdMemberUpsert, up("ctl3", 2, true)); err != nil {
		t.Fatal(err)
	}
	if got := levels(); got["ctl1"] != 2 || got["ctl2"] != 2 || got["ctl3"] != 2 {
		t.Fatalf("levels after the reports: %v", got)
	}
	if got := nodesLevel(st, all); got != 2 {
		t.Fatalf("nodes' level: %d, want 2", got)
	}
	if got := nodesLevel(st, raft.Configuration{Servers: append(all.Servers, raft.Server{ID: "ctl4"})}); got != 0 {
		t.Fatalf("nodes' level with a server that has no record: %d", got)
	}
	// A node being added has its record before it is a server.
	if err := apply(CmdMemberUpsert, up("ctl4", 1, false)); err != nil {
		t.Fatal(err)
	}
	if got, below := nodesLevel(st, all), belowLevel(st, all, 2); got != 1 || fmt.Sprint(below) != "[ctl4 (level 1)]" {
		t.Fatalf("nodes' level with ctl4 recorded, not yet a server: %d, %v", got, below)
	}
	// A raise that missed it (a leader's decision crossed its join) is
	// refused, on every node alike.
	before := snapshotBytes(t, f)
	err := apply(CmdClusterLevel, &ClusterLevelRequest{Meta: meta("node:ctl1"), Level: 2})
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "node ctl4 runs a release of level 1, below level 2") {
		t.Fatalf("a raise past a member's level: %v", err)
	}
	if !bytes.Equal(stripIndex(before), stripIndex(snapshotBytes(t, f))) {
		t.Fatal("a refused raise changed the state")
	}
	if err := apply(CmdMemberRemove, &MemberRemoveRequest{Meta: meta("op"), Node: "ctl4"}); err != nil {
		t.Fatal(err)
	}
	// At level 1 a report is an upsert, as a release before levels
	// applies it: one crossing the node's removal brings its record back
	// on every node alike.
	if err := apply(CmdMemberUpsert, up("ctl4", 2, true)); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Member("ctl4"); !ok {
		t.Fatal("at level 1, a report is not applied as an upsert")
	}
	if err := apply(CmdMemberRemove, &MemberRemoveRequest{Meta: meta("op"), Node: "ctl4"}); err != nil {
		t.Fatal(err)
	}
	if err := apply(CmdClusterLevel, &ClusterLevelRequest{Meta: meta("node:ctl1"), Level: 2}); err != nil {
		t.Fatal(err)
	}

	// A report from other addresses, or crossing the node's removal.
	moved := up("ctl3", 3, true)
	moved.APIAddr = "127.0.0.99:7443"
	if err := apply(CmdMemberUpsert, moved); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a report from other addresses: %v", err)
	}
	if err := apply(CmdMemberRemove, &MemberRemoveRequest{Meta: meta("op"), Node: "ctl3"}); err != nil {
		t.Fatal(err)
	}
	if err := apply(CmdMemberUpsert, up("ctl3", 2, true)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a report after the removal: %v", err)
	}
	if _, ok := st.Member("ctl3"); ok {
		t.Fatal("a report brought back a removed node's record")
	}
	if _, ok := st.wasRemoved("ctl3"); !ok {
		t.Fatal("a report cleared a node's removal")
	}
}

// TestClusterLevelUpgrade: a cluster with a node of an earlier release
// (level 1) writes no command of level 2, and says which node holds it
// back; once that node is upgraded, the leader raises the cluster's level
// and the command goes through. A node taken back to the earlier release
// then stops instead of applying what it does not know, and a node of
// that release is not let in.
func TestClusterLevelUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster of processes")
	}
	c := newTestCluster(t, 3)
	earlier := releaseLevelEnv + "=1"
	c.nodes[0].env = []string{earlier} // ctl1 initialises the network, at level 1
	c.startThree(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	levels := func(want string) func() error {
		return func() error {
			for i := range c.nodes {
				if !c.nodes[i].running() {
					continue
				}
				st, err := c.status(i)
				if err != nil {
					return err
				}
				got := fmt.Sprintf("cluster %d;", st.Level)
				for _, m := range st.Members {
					got += fmt.Sprintf(" %s %d", m.Node, m.Level)
				}
				if got != want {
					return fmt.Errorf("%s: %s", st.Node, got)
				}
			}
			return nil
		}
	}
	waitFor(t, 30*time.Second, "every node's level recorded", levels(fmt.Sprintf("cluster 1; ctl1 1 ctl2 %d ctl3 %d", ReleaseLevel, ReleaseLevel)))

	l, err := c.leader()
	if err != nil {
		t.Fatal(err)
	}
	backup := c.backupBeforeGateway(ctx, t, l)
	_, err = c.off[l].RestoreSnapshot(ctx, bytes.NewReader(backup))
	wantStatus(t, err, 409, "backup-rollback needs cluster level 2, and the cluster is at level 1")
	wantStatus(t, err, 409, "below it: ctl1 (level 1)")
	if v, err := c.view(ctx, l); err != nil || !strings.Contains(v, `"after-backup" pending`) || strings.Contains(v, "backup-restore") {
		t.Fatalf("a refused restore changed the state: %s, %v", v, err)
	}

	// ctl1 upgraded.
	c.nodes[0].stop()
	c.nodes[0].env = nil
	c.nodes[0].start(t)
	waitFor(t, 60*time.Second, "the cluster raised to this release's level", levels(fmt.Sprintf("cluster %[1]d; ctl1 %[1]d ctl2 %[1]d ctl3 %[1]d", ReleaseLevel)))
	c.waitHealthy(30 * time.Second)
	if l, err = c.leader(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.off[l].RestoreSnapshot(ctx, bytes.NewReader(backup)); err != nil {
		t.Fatalf("the restore at level 2: %v", err)
	}
	if v, err := c.view(ctx, l); err != nil || !strings.Contains(v, `"after-backup" decommissioned`) || !strings.Contains(v, "cluster-level") {
		t.Fatalf("after the restore: %s, %v", v, err)
	}

	// ctl3 taken back to the earlier release: it stops at the command
	// that raised the cluster past it, and the others go on.
	c.nodes[2].stop()
	c.nodes[2].env = []string{earlier}
	c.nodes[2].start(t)
	if !c.nodes[2].wait(60 * time.Second) {
		t.Fatal("ctl3, of an earlier release, still runs")
	}
	if b, _ := os.ReadFile(c.nodes[2].logPath); !bytes.Contains(b, []byte("this node's release is of level 1: upgrade this node")) {
		t.Fatalf("ctl3's log does not say why it stopped:\n%s", tail(b, 3000))
	}
	waitFor(t, 30*time.Second, "a leader of the two others", func() error {
		l, err = c.leader(2)
		return err
	})
	if _, err := c.op[l].AddGateway(ctx, api.Gateway{ID: "after-downgrade", Agency: registerKeys[0]}); err != nil {
		t.Fatal(err)
	}
	// A node of the earlier release asking to join, and one of a release
	// before levels (its request names none), asking with its own
	// certificate.
	_, err = c.op[l].JoinNode(ctx, api.JoinRequest{Node: "ctl9", RaftAddr: "127.0.0.19:7000", APIAddr: "127.0.0.19:7443", Level: 1})
	wantStatus(t, err, 409, fmt.Sprintf("node ctl9 runs a release of level 1 and the cluster is at level %d", ReleaseLevel))
	cfg3 := c.nodes[2].cfg
	_, err = c.nodeClient(t, 2, l).JoinNode(ctx, api.JoinRequest{Node: cfg3.Node, RaftAddr: cfg3.RaftAddr, APIAddr: cfg3.APIAddr})
	wantStatus(t, err, 409, fmt.Sprintf("node ctl3 runs a release before levels (level 1) and the cluster is at level %d", ReleaseLevel))

	// An operator adds ctl3 back, its level unknown: it joins without a
	// vote, and stays so, its release below the cluster's (it stops
	// again at the raise), while the two others go on.
	if _, err := c.op[l].RemoveNode(ctx, "ctl3"); err != nil {
		t.Fatal(err)
	}
	st, err := c.op[l].JoinNode(ctx, api.JoinRequest{Node: cfg3.Node, RaftAddr: cfg3.RaftAddr, APIAddr: cfg3.APIAddr})
	if err != nil {
		t.Fatal(err)
	}
	suffrage := func(st *api.ClusterStatus) string {
		for _, m := range st.Members {
			if m.Node == "ctl3" {
				return m.Suffrage
			}
		}
		return "absent"
	}
	if got := suffrage(st); got != "nonvoter" {
		t.Fatalf("ctl3 added by an operator at level 2: %s", got)
	}
	c.nodes[2].start(t)
	if !c.nodes[2].wait(60 * time.Second) {
		t.Fatal("ctl3, of an earlier release, still runs")
	}
	if _, err := c.op[l].AddGateway(ctx, api.Gateway{ID: "after-rejoin", Agency: registerKeys[0]}); err != nil {
		t.Fatal(err)
	}
	if st, err = c.status(l); err != nil || suffrage(st) != "nonvoter" {
		t.Fatalf("ctl3 after it stopped: %v, %+v", err, st)
	}

	// A node removed through its own API answers at once (the leader no
	// longer answers it: it once waited for it, and failed).
	if _, err := c.op[l].RemoveNode(ctx, "ctl3"); err != nil {
		t.Fatal(err)
	}
	// (The node removed may never hear of it, its answer say it still
	// votes: the leader commits the removal without it.)
	self := 1 - l // the other of ctl1 and ctl2
	if _, err = c.op[self].RemoveNode(ctx, c.nodes[self].name); err != nil {
		t.Fatalf("%s removed through its own API: %v", c.nodes[self].name, err)
	}
	waitFor(t, 30*time.Second, "the other node to see the removal", func() error {
		for _, other := range []int{0, 1} {
			st, err := c.status(other)
			if other == self || err != nil || st.State != "Leader" {
				continue
			}
			if slices.ContainsFunc(st.Members, func(m api.Member) bool { return m.Node == c.nodes[self].name }) {
				return fmt.Errorf("%s still lists %s: %+v", st.Node, c.nodes[self].name, st.Members)
			}
			return nil
		}
		return errors.New("no leader")
	})

	// One voter left: a nonvoter an operator added by mistake is removed
	// (it is not the last voter).
	if _, err := c.op[l].JoinNode(ctx, api.JoinRequest{Node: cfg3.Node, RaftAddr: cfg3.RaftAddr, APIAddr: cfg3.APIAddr}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.op[l].RemoveNode(ctx, "ctl3"); err != nil {
		t.Fatalf("a nonvoter beside the last voter: %v", err)
	}
	_, err = c.op[l].RemoveNode(ctx, c.nodes[l].name)
	wantStatus(t, err, 409, "is the last voter")
}

func tail(b []byte, n int) []byte { return b[max(0, len(b)-n):] }
