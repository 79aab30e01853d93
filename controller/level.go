package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/raft"
)

// Cluster levels keep a cluster whose nodes run different releases (an
// upgrade under way) from writing what some of its nodes cannot apply.
//
// Each release has a level: the highest cluster level its nodes apply.
// Every node records its release's level in its member record (the
// leader its own in leaderDuties, the others by reporting it, reportLevel),
// and the cluster's level, in the replicated state, is raised by the
// leader to the lowest level of the nodes in raft's configuration once it
// is above the cluster's (raiseLevel). It never goes down.
//
// A command type introduced by a release of level L is written only once
// the cluster is at level L (CommandType.level, checked by the leader
// before it appends a command to its log, applyLocal): until then no node
// of an earlier release can be asked to apply it, nor skip it (an
// ignorable type) and so part its audit chain from the others'. Likewise,
// a release that changes what an existing command does makes the new
// behaviour depend on the level (State.Level), not on the release: the
// nodes of both releases then apply the command alike.
//
// A node whose release is below the cluster's level stops instead of
// applying what it does not know: at the command that raised the level
// (or the init that set it), or at a snapshot of a higher level
// (FSM.Restore). Snapshots of a level above 1 have a format of their own
// (snapshotFormatLevels), which releases before levels refuse; and a
// node asking to join below the cluster's level is refused (addMember),
// as is one of a release before levels, whose request names no level.

// ReleaseLevel is this release's level. Raise it, by one, in a release
// that adds a command type (give the type that level in
// CommandType.level) or changes what a command does.
//
//	1: releases before levels: every command type up to 35.
//	2: a backup restored by a command (36, 38), levels (37).
//	3: a gateway is not registered under a closed agency, nor with the
//	   id of a group or service of the current policy (3, 33), nor a
//	   policy published with a group or service named as a gateway
//	   (6, and 12 approving a policy request); the
//	   audit entries of a merge and a re-parenting name the codes merged
//	   and the new parent (20, 21).
const ReleaseLevel = 3

// releaseLevel is ReleaseLevel, except in the fault tests' nodes that
// stand for nodes of an earlier release.
var releaseLevel = ReleaseLevel

// level is the cluster level from which t may be written.
func (t CommandType) level() int {
	switch t {
	case CmdBackupRestore, CmdBackupRollBack:
		return 2
	}
	// CmdClusterLevel itself is written when every node has the level it
	// raises the cluster to (raiseLevel).
	return 1
}

// ClusterLevelRequest raises the cluster's level.
type ClusterLevelRequest struct {
	Meta
	Level int `json:"level"`
}

// errUpgradeNode is the verdict of a command this node's release cannot
// follow: Apply stops the node rather than let its state part from the
// others'.
var errUpgradeNode = errors.New("upgrade this node")

// Level is the cluster's level.
func (s *State) Level() int { return max(1, int(s.level.Load())) }

func (s *State) applyClusterLevel(r *ClusterLevelRequest) error {
	if cur := s.Level(); r.Level <= cur {
		return fmt.Errorf("%w: the cluster is at level %d already, and levels never go down", ErrConflict, cur)
	}
	for _, m := range s.membersSorted() {
		// Records are written before a node is added (addMember): one
		// below is a node being added that a leader's raise missed.
		if m.Level < r.Level {
			return fmt.Errorf("%w: node %s runs a release of %s, below level %d", ErrConflict, m.Node, levelName(m.Level), r.Level)
		}
	}
	if r.Level > releaseLevel {
		return fmt.Errorf("the cluster's level is raised to %d and this node's release is of level %d: %w to the cluster's release", r.Level, releaseLevel, errUpgradeNode)
	}
	s.level.Store(int32(r.Level))
	return nil
}

// nodeLevels is the release level of every node of the cluster: each
// server of c and each node with a member record (one being added has
// its record before it is a server), 0 where none is recorded.
func nodeLevels(s *State, c raft.Configuration) map[string]int {
	out := map[string]int{}
	for _, m := range s.Members() {
		out[m.Node] = m.Level
	}
	for _, srv := range c.Servers {
		if _, ok := out[string(srv.ID)]; !ok {
			out[string(srv.ID)] = 0
		}
	}
	return out
}

// nodesLevel is the lowest of nodeLevels (0 for a cluster of no node).
func nodesLevel(s *State, c raft.Configuration) int {
	levels := nodeLevels(s, c)
	if len(levels) == 0 {
		return 0
	}
	return slices.Min(slices.Collect(maps.Values(levels)))
}

// belowLevel names the nodes of nodeLevels below level, sorted, as
// "name (level N)".
func belowLevel(s *State, c raft.Configuration, level int) []string {
	levels := nodeLevels(s, c)
	var out []string
	for _, node := range slices.Sorted(maps.Keys(levels)) {
		if l := levels[node]; l < level {
			out = append(out, fmt.Sprintf("%s (%s)", node, levelName(l)))
		}
	}
	return out
}

func levelName(l int) string {
	if l == 0 {
		return "level not reported"
	}
	return fmt.Sprintf("level %d", l)
}

// checkLevel refuses a command the cluster's level does not allow yet.
func (n *Node) checkLevel(t CommandType) error {
	st := n.fsm.State()
	need, cur := t.level(), st.Level()
	if need <= cur {
		return nil
	}
	msg := fmt.Sprintf("%s needs cluster level %d, and the cluster is at level %d until every node runs a release of level %d or later (govnetctl cluster status)", t, need, cur, need)
	if cf := n.raft.GetConfiguration(); cf.Error() == nil {
		if below := belowLevel(st, cf.Configuration(), need); len(below) > 0 {
			msg += ": below it: " + strings.Join(below, ", ")
		}
	}
	return fmt.Errorf("%w: %s", ErrConflict, msg)
}

// raiseLevel, on the leader, raises the cluster's level to the lowest
// release level of its nodes when that is above it.
func (n *Node) raiseLevel(ctx context.Context) error {
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	st := n.fsm.State()
	if to := min(nodesLevel(st, cf.Configuration()), releaseLevel); to <= st.Level() {
		return nil
	}
	// Decide on a current state (a member's report may be in flight),
	// with no node being added meanwhile (addMember).
	n.memberMu.Lock()
	defer n.memberMu.Unlock()
	if _, err := n.barrier(ctx); err != nil {
		return err
	}
	if cf = n.raft.GetConfiguration(); cf.Error() != nil {
		return cf.Error()
	}
	from, to := st.Level(), min(nodesLevel(st, cf.Configuration()), releaseLevel)
	if to <= from {
		return nil
	}
	if err := n.submitHere(ctx, CmdClusterLevel, &ClusterLevelRequest{Meta: n.meta("node:" + n.cfg.Node), Level: to}); err != nil {
		return err
	}
	n.log.Info("cluster level raised: every node runs a release of this level or later", "from", from, "to", to)
	return nil
}

// promoteNonvoters, on the leader, makes a voter of each nonvoter (a node
// an operator added from level 2 on, addMember) whose record shows a
// release of the cluster's level or later.
func (n *Node) promoteNonvoters(ctx context.Context) error {
	due := func(st *State, s raft.Server) bool {
		m, ok := st.Member(string(s.ID))
		return s.Suffrage == raft.Nonvoter && ok && m.Level >= st.Level() && m.RaftAddr == string(s.Address)
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil || !slices.ContainsFunc(cf.Configuration().Servers, func(s raft.Server) bool { return due(n.fsm.State(), s) }) {
		return err
	}
	// Decided under the lock that joins and removals take, on the
	// configuration as it is then: raft refuses the change if it moved.
	n.memberMu.Lock()
	defer n.memberMu.Unlock()
	if cf = n.raft.GetConfiguration(); cf.Error() != nil {
		return cf.Error()
	}
	for _, s := range cf.Configuration().Servers {
		if !due(n.fsm.State(), s) {
			continue
		}
		if err := n.raft.AddVoter(s.ID, s.Address, cf.Index(), timeoutOf(ctx)).Error(); err != nil {
			return fmt.Errorf("%s: %w", s.ID, err)
		}
		n.log.Info("node made a voter: it runs a release of the cluster's level", "node", s.ID)
		return nil // one a turn: the configuration moved
	}
	return nil
}

// levelReportEvery bounds how often a node that is not the leader
// reports its release level while its record shows another.
const levelReportEvery = 5 * time.Second

// reportLevel, on a node of the cluster that does not lead, records its release level
// in its member record when the record shows another (after an upgrade,
// or when an operator added the node).
func (n *Node) reportLevel(ctx context.Context) error {
	if time.Since(n.levelReported) < levelReportEvery || !n.caughtUp() {
		return nil
	}
	m, ok := n.fsm.State().Member(n.cfg.Node)
	if !ok || m.Level == releaseLevel {
		return nil
	}
	if _, ok := n.serverAt(n.cfg.Node, ""); !ok {
		return nil
	}
	n.levelReported = time.Now()
	req := &MemberUpsertRequest{Meta: n.meta("node:" + n.cfg.Node), Node: m.Node, RaftAddr: m.RaftAddr, APIAddr: m.APIAddr, Level: releaseLevel, Report: true}
	if _, err := n.submit(ctx, CmdMemberUpsert, req); err != nil {
		return fmt.Errorf("report this node's release level: %w", err)
	}
	n.log.Info("reported this node's release level", "level", releaseLevel, "was", m.Level)
	return nil
}
