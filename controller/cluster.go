package controller

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/hashicorp/raft"
)

// Node-to-node calls. A follower forwards what only the leader can do to
// the leader's API under /v1/internal/, presenting its node certificate;
// the leader admits only nodes that are members of the cluster.
//
// A forwarded write carries the encoded command. The leader answers
// 200 with the state machine's verdict (applyResponse), or an error status
// for raft and transport failures; a leader that has lost leadership
// before writing anything sets notLeaderHeader, and only then does the
// follower retry, so a write is never applied twice.
const (
	notLeaderHeader = "X-Govnet-Not-Leader"
	// leadershipLostHeader marks an error answer to a forwarded write
	// that was in the leader's log when it lost leadership
	// (errLeadershipLost).
	leadershipLostHeader = "X-Govnet-Leadership-Lost"
	actorHeader          = "X-Govnet-Actor"
	// ConsistencyHeader asks for a linearizable read: the answering node
	// first catches up with everything the leader had committed when the
	// request arrived.
	ConsistencyHeader = api.ConsistencyHeader
)

// maxSnapshotBody bounds an uploaded backup.
const maxSnapshotBody = 1 << 30

// restoreBodyTimeout bounds the upload of a backup to restore: govnetctl
// gives the whole restore api.RestoreTimeout, so a body still arriving
// after that is nobody's (a variable for tests).
var restoreBodyTimeout = api.RestoreTimeout

func newPeerClient(roots *x509.CertPool, cert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) *http.Client {
	return &http.Client{
		Timeout: applyTimeout,
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, GetClientCertificate: cert},
			ForceAttemptHTTP2:   true,
			TLSHandshakeTimeout: 5 * time.Second,
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     90 * time.Second,
		},
	}
}

// applyResponse is the leader's answer to a forwarded command.
type applyResponse struct {
	Index uint64 `json:"index"`
	Error string `json:"error,omitempty"`
	Kind  string `json:"kind,omitempty"` // bad_request, forbidden, not_found, conflict or internal
}

var errKinds = []struct {
	kind string
	err  error
}{
	{"bad_request", ErrBadRequest}, {"forbidden", ErrForbidden}, {"not_found", ErrNotFound}, {"conflict", ErrConflict},
}

// stateError is a state machine error that crossed the wire: it keeps the
// leader's message and matches the same sentinel with errors.Is.
type stateError struct {
	kind error
	msg  string
}

func (e *stateError) Error() string { return e.msg }
func (e *stateError) Unwrap() error { return e.kind }

func encodeVerdict(index uint64, verdict error) applyResponse {
	res := applyResponse{Index: index}
	if verdict == nil {
		return res
	}
	res.Error, res.Kind = verdict.Error(), "internal"
	for _, k := range errKinds {
		if errors.Is(verdict, k.err) {
			res.Kind = k.kind
			break
		}
	}
	return res
}

func (r applyResponse) verdict() error {
	if r.Error == "" {
		return nil
	}
	for _, k := range errKinds {
		if r.Kind == k.kind {
			return &stateError{kind: k.err, msg: r.Error}
		}
	}
	return errors.New(r.Error)
}

// forwardApply sends an encoded command to the leader at apiAddr.
func (n *Node) forwardApply(ctx context.Context, apiAddr string, b []byte) (uint64, error, error) {
	var res applyResponse
	err := n.peerCall(ctx, apiAddr, "/v1/internal/apply", "application/octet-stream", bytes.NewReader(b), "", &res)
	if err != nil {
		return 0, nil, err
	}
	return res.Index, res.verdict(), nil
}

// peerCall POSTs body to another node and decodes its JSON answer into
// out. Errors wrap ErrNotLeader when the other node wrote nothing because
// it does not lead, or when the connection was refused (nothing was sent);
// other transport failures wrap ErrUnknownOutcome.
func (n *Node) peerCall(ctx context.Context, apiAddr, path, ctype string, body io.Reader, actor string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+apiAddr+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", ctype)
	if actor != "" {
		req.Header.Set(actorHeader, actor)
	}
	client := n.peers.Load()
	if d, ok := ctx.Deadline(); ok && time.Until(d) > client.Timeout {
		long := *client // the same connections, bounded by ctx alone (a restore)
		long.Timeout = 0
		client = &long
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w: leader at %s: %v", ErrNotLeader, apiAddr, err)
		}
		return fmt.Errorf("%w: forward to leader at %s: %v", ErrUnknownOutcome, apiAddr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e api.Error
		_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e)
		if resp.Header.Get(notLeaderHeader) != "" {
			return fmt.Errorf("%w: %s", ErrNotLeader, e.Error)
		}
		if resp.Header.Get(leadershipLostHeader) != "" {
			return fmt.Errorf("leader at %s: %w", apiAddr, errLeadershipLost)
		}
		for _, k := range []struct {
			code int
			err  error
		}{{400, ErrBadRequest}, {403, ErrForbidden}, {404, ErrNotFound}, {409, ErrConflict}} {
			if resp.StatusCode == k.code {
				return &stateError{kind: k.err, msg: e.Error}
			}
		}
		return fmt.Errorf("leader at %s: HTTP %d: %s", apiAddr, resp.StatusCode, e.Error)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%w: leader at %s: decode answer: %v", ErrUnknownOutcome, apiAddr, err)
	}
	return nil
}

// onLeader runs local if this node leads, or POSTs in as JSON to path on
// the leader; it retries while nothing can have been done.
func (n *Node) onLeader(ctx context.Context, actor, path string, in, out any, local func(context.Context) error) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return n.routeToLeader(ctx, applyTimeout, actor, path, "application/json", body, out, local)
}

// linearizable makes this node's state include every write committed
// before it was called (the read-index protocol): the leader confirms its
// leadership with a barrier and names its applied index, and this node
// waits until it has applied as much.
func (n *Node) linearizable(ctx context.Context) error {
	var res struct {
		Index uint64 `json:"index"`
	}
	err := n.onLeader(ctx, "", "/v1/internal/barrier", struct{}{}, &res, func(ctx context.Context) error {
		var err error
		res.Index, err = n.barrier(ctx)
		return err
	})
	if err != nil {
		return err
	}
	return n.fsm.State().waitIndex(ctx, res.Index)
}

func (n *Node) barrier(ctx context.Context) (uint64, error) {
	if err := n.raft.Barrier(timeoutOf(ctx)).Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrAbortedByRestore) {
			return 0, ErrNotLeader // a barrier changes no state: safe to retry
		}
		return 0, fmt.Errorf("raft barrier: %w", err)
	}
	return n.fsm.State().Index(), nil
}

// addMember records a node's addresses and makes it a voter.
func (n *Node) addMember(ctx context.Context, actor string, req api.JoinRequest) error {
	return n.onLeader(ctx, actor, "/v1/internal/members", req, nil, func(ctx context.Context) error {
		// Decided on the leader, whose state is current.
		if at, ok := n.State().wasRemoved(req.Node); ok && actor == "node:"+req.Node {
			return fmt.Errorf("%w: node %s was removed from the cluster at %s: only an operator adds it back (govnetctl cluster join)",
				ErrForbidden, req.Node, at.UTC().Format(time.RFC3339))
		}
		n.memberMu.Lock() // no level raised meanwhile (raiseLevel)
		defer n.memberMu.Unlock()
		if _, err := n.barrier(ctx); err != nil { // the level as committed
			return err
		}
		cur := n.State().Level()
		switch {
		case req.Level != 0 && req.Level < cur:
			return fmt.Errorf("%w: node %s runs a release of level %d and the cluster is at level %d: install the cluster's release on it first",
				ErrConflict, req.Node, req.Level, cur)
		case req.Level == 0 && cur > 1 && actor == "node:"+req.Node:
			// A node asking itself names its level from level 2 on.
			return fmt.Errorf("%w: node %s runs a release before levels (level 1) and the cluster is at level %d: install the cluster's release on it first",
				ErrConflict, req.Node, cur)
		case req.Level == 0:
			// An operator's join: the node reports its level once it runs;
			// a node joined again at the same addresses keeps the one it
			// reported.
			if m, ok := n.State().Member(req.Node); ok && m.RaftAddr == req.RaftAddr && m.APIAddr == req.APIAddr {
				req.Level = m.Level
			}
		}
		err := n.submitHere(ctx, CmdMemberUpsert, &MemberUpsertRequest{Meta: n.meta(actor), Node: req.Node, RaftAddr: req.RaftAddr, APIAddr: req.APIAddr, Level: req.Level})
		if err != nil {
			return err
		}
		if _, ok := n.serverAt(req.Node, req.RaftAddr); ok {
			return nil // joined before: its record is all that changed
		}
		// From level 2 on, a node whose level is not known yet (an
		// operator added it) follows the log without a vote until it
		// reports a level the cluster's (promoteNonvoters): one of an
		// earlier release never counts towards a quorum it cannot keep.
		add, as := n.raft.AddVoter, "voter"
		if s, ok := n.serverAt(req.Node, ""); req.Level < cur && cur > 1 && (!ok || s.Suffrage != raft.Voter) {
			add, as = n.raft.AddNonvoter, "nonvoter" // (a voter moved to new addresses stays one)
		}
		if err := add(raft.ServerID(req.Node), raft.ServerAddress(req.RaftAddr), 0, timeoutOf(ctx)).Error(); err != nil {
			if errors.Is(err, raft.ErrNotLeader) {
				return ErrNotLeader
			}
			return fmt.Errorf("add %s %s: %w", as, req.Node, err)
		}
		n.log.Info("node joined the cluster", "node", req.Node, "raft_addr", req.RaftAddr, "as", as, "actor", actor)
		return nil
	})
}

// removeMember takes a node out of the cluster and forgets its record.
func (n *Node) removeMember(ctx context.Context, actor, node string) error {
	return n.onLeader(ctx, actor, "/v1/internal/members/remove", api.JoinRequest{Node: node}, nil, func(ctx context.Context) error {
		n.memberMu.Lock() // no node made a voter meanwhile (promoteNonvoters)
		defer n.memberMu.Unlock()
		cf := n.raft.GetConfiguration()
		if err := cf.Error(); err != nil {
			return err
		}
		srv, found := n.serverAt(node, "")
		if found && srv.Suffrage == raft.Voter && countVoters(cf.Configuration()) <= 1 {
			return fmt.Errorf("%w: %s is the last voter", ErrConflict, node)
		}
		if _, ok := n.fsm.State().Member(node); ok {
			if err := n.submitHere(ctx, CmdMemberRemove, &MemberRemoveRequest{Meta: n.meta(actor), Node: node}); err != nil {
				return err
			}
		} else if !found {
			return fmt.Errorf("%w: node %s is not a member", ErrNotFound, node)
		}
		if found {
			if err := n.raft.RemoveServer(raft.ServerID(node), 0, timeoutOf(ctx)).Error(); err != nil {
				return fmt.Errorf("remove server %s: %w", node, err)
			}
		}
		n.log.Info("node removed from the cluster", "node", node, "actor", actor)
		return nil
	})
}

// countVoters is the number of voters in c.
func countVoters(c raft.Configuration) int {
	k := 0
	for _, s := range c.Servers {
		if s.Suffrage == raft.Voter {
			k++
		}
	}
	return k
}

// autoJoin asks the members listed in the join key to add this node,
// until it is part of a raft configuration.
func (n *Node) autoJoin(ctx context.Context) {
	if len(n.cfg.Join) == 0 {
		return
	}
	req := api.JoinRequest{Node: n.cfg.Node, RaftAddr: n.cfg.RaftAddr, APIAddr: n.advertisedAPI(), Level: releaseLevel}
	for attempt := 0; ; attempt++ {
		if cf := n.raft.GetConfiguration(); cf.Error() == nil && len(cf.Configuration().Servers) > 0 {
			return
		}
		addr := n.cfg.Join[attempt%len(n.cfg.Join)]
		body, _ := json.Marshal(req)
		cctx, cancel := context.WithTimeout(ctx, applyTimeout)
		err := n.peerCall(cctx, addr, "/v1/cluster/members", "application/json", bytes.NewReader(body), "", nil)
		cancel()
		if err != nil && errors.Is(err, ErrBadRequest) && strings.Contains(err.Error(), `unknown field "level"`) {
			// A node of a release before levels: it records none, and
			// this node reports its level once it is a member.
			req.Level = 0
			n.log.Info("the cluster's node runs a release before levels: joining without one", "via", addr)
			continue
		}
		if err == nil {
			n.log.Info("joined the cluster", "via", addr)
		} else {
			n.log.Warn("join the cluster", "via", addr, "err", err)
		}
		if pause(ctx, time.Second) != nil {
			return
		}
	}
}

// internalNode admits another member of the cluster, by its node
// certificate, checked as raft's connections are (checkNodeChain).
func (n *Node) internalNode(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, ok := identity(r)
		if !ok || id.Kind != ca.KindNode {
			writeError(w, http.StatusUnauthorized, "a controller node's certificate is required")
			return
		}
		if !n.isMemberNode(r) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("node %s is not a member of this cluster, or its certificate is not its own", id.Name))
			return
		}
		h(w, r, id)
	}
}

// isMemberNode says whether r comes from a member of the cluster with a
// certificate checkNodeChain accepts. The rate limiter, which every API
// request passes first, has the answer already (memberVerdict).
func (n *Node) isMemberNode(r *http.Request) bool {
	if v, ok := r.Context().Value(memberVerdict{}).(bool); ok {
		return v
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || n.fsm == nil {
		return false
	}
	id, err := n.checkNodeChain(r.TLS.PeerCertificates, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return false
	}
	_, ok := n.State().Member(id.Name)
	return ok
}

// actorOf names who a forwarded request acts for.
func actorOf(r *http.Request, id ca.Identity) string {
	if a := r.Header.Get(actorHeader); a != "" {
		return a
	}
	return "node:" + id.Name
}

func (n *Node) handleInternalApply(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	b, err := io.ReadAll(r.Body) // bounded by the route's limit (limitBody)
	if err != nil || len(b) < 2 {
		writeError(w, http.StatusBadRequest, "request body: want an encoded command")
		return
	}
	if n.raft.State() != raft.Leader {
		n.fail(w, ErrNotLeader)
		return
	}
	// The leader's clock stamps every command, forwarded or not.
	if b, err = restamp(b, n.now().UTC()); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	t := CommandType(b[0])
	index, verdict, err := n.applyLocal(r.Context(), t, b)
	if err != nil {
		n.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, encodeVerdict(index, verdict))
}

// restamp sets a forwarded command's "at" to the leader's time.
func restamp(b []byte, at time.Time) ([]byte, error) {
	if CommandType(b[0]).packed() {
		return restampPacked(b, at)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b[1:], &fields); err != nil {
		return nil, fmt.Errorf("forwarded command: %v", err)
	}
	ts, _ := json.Marshal(at)
	fields["at"] = ts
	body, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	return append([]byte{b[0]}, body...), nil
}

func (n *Node) handleInternalBarrier(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	if n.raft.State() != raft.Leader {
		n.fail(w, ErrNotLeader)
		return
	}
	index, err := n.barrier(r.Context())
	if err != nil {
		n.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]uint64{"index": index})
}

func (n *Node) handleInternalMembers(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	var req api.JoinRequest
	if !decode(w, r, &req) {
		return
	}
	if n.raft.State() != raft.Leader {
		n.fail(w, ErrNotLeader)
		return
	}
	var err error
	if r.URL.Path == "/v1/internal/members/remove" {
		err = n.removeMember(r.Context(), actorOf(r, id), req.Node)
	} else {
		err = n.addMember(r.Context(), actorOf(r, id), req)
	}
	if err != nil {
		n.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// handleJoin adds a node: asked by an operator, or by the node itself
// presenting its node certificate.
func (n *Node) handleJoin(w http.ResponseWriter, r *http.Request) {
	id, ok := identity(r)
	if !ok {
		writeError(w, http.StatusUnauthorized, "a client certificate is required")
		return
	}
	var req api.JoinRequest
	if !decode(w, r, &req) {
		return
	}
	actor := id.Name
	switch {
	case id.Kind == ca.KindNode && id.Name == req.Node:
		// Its own intermediate issued its certificate, and neither is
		// revoked (as for raft's connections).
		if _, err := n.checkNodeChain(r.TLS.PeerCertificates, x509.ExtKeyUsageClientAuth); err != nil {
			n.fail(w, err)
			return
		}
		actor = "node:" + id.Name
	case id.Kind == ca.KindPerson && id.Role == ca.RoleOperator:
		if err := n.checkPerson(id, r); err != nil {
			n.fail(w, err)
			return
		}
	default:
		writeError(w, http.StatusForbidden, "only an operator, or the node itself, may add a node")
		return
	}
	if err := n.addMember(r.Context(), actor, req); err != nil {
		n.fail(w, err)
		return
	}
	n.writeStatusAfter(w, r)
}

func (n *Node) handleRemove(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	if err := n.removeMember(r.Context(), id.Name, r.PathValue("node")); err != nil {
		n.fail(w, err)
		return
	}
	n.writeStatusAfter(w, r)
}

// writeStatusAfter answers a membership change, done on the leader, with
// this node's status once it has applied the change too: a follower's
// answer listed a removed node whose record it had not yet dropped
// (raft's configuration moves as entries arrive, the state as they
// apply). The change is done: a node that cannot catch up in a few
// seconds (or was the node removed, which the leader no longer answers)
// answers with the status it has.
func (n *Node) writeStatusAfter(w http.ResponseWriter, r *http.Request) {
	if _, ok := n.serverAt(n.cfg.Node, ""); ok {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		_ = n.linearizable(ctx)
		cancel()
	}
	n.writeStatus(w, r)
}

func (n *Node) handleClusterStatus(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	n.writeStatus(w, r)
}

func (n *Node) writeStatus(w http.ResponseWriter, r *http.Request) {
	_, leader := n.raft.LeaderWithID()
	st := api.ClusterStatus{
		Node:      n.cfg.Node,
		State:     n.raft.State().String(),
		Leader:    string(leader),
		RaftIndex: n.State().Index(),
		Watchers:  n.hub.watchers(),
		Level:     n.State().Level(),

		ReleaseLevel: releaseLevel,
	}
	if err := n.Ready(); err != nil {
		st.NotReady = err.Error()
	} else {
		st.Ready = true
	}
	members := map[string]*api.Member{}
	for _, m := range n.State().Members() {
		members[m.Node] = &m
	}
	if cf := n.raft.GetConfiguration(); cf.Error() == nil {
		for _, s := range cf.Configuration().Servers {
			m, ok := members[string(s.ID)]
			if !ok {
				m = &api.Member{Node: string(s.ID), RaftAddr: string(s.Address)}
				members[m.Node] = m
			}
			m.Suffrage = map[raft.ServerSuffrage]string{raft.Voter: "voter", raft.Nonvoter: "nonvoter", raft.Staging: "staging"}[s.Suffrage]
		}
	}
	for _, m := range members {
		m.Leader = m.Node == string(leader)
		st.Members = append(st.Members, *m)
	}
	sortBy(st.Members, func(m api.Member) string { return m.Node })
	writeJSON(w, http.StatusOK, st)
}

// handleSnapshotSave streams a backup: the state as of a linearizable
// read, in the snapshot format raft itself stores, and this node's
// signature of it (writeBackup).
func (n *Node) handleSnapshotSave(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	if err := n.linearizable(r.Context()); err != nil {
		n.fail(w, err)
		return
	}
	snap, err := n.fsm.snapshot()
	if err != nil {
		n.fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	if err := n.writeBackup(w, snap); err != nil {
		// The answer has begun: the client sees a backup without its
		// signature line, which it and every restore refuse.
		n.log.Error("snapshot save", "err", err)
	}
}

type httpSink struct{ w io.Writer }

func (s *httpSink) Write(p []byte) (int, error) { return s.w.Write(p) }
func (s *httpSink) ID() string                  { return "http" }
func (s *httpSink) Cancel() error               { return nil }
func (s *httpSink) Close() error                { return nil }

// handleSnapshotRestore restores a backup: the registry goes back to the
// backup's, the history stays (controller/restore.go). The backup is
// checked before raft sees it; raft keeps the current membership and
// replicates the restored state to every node.
func (n *Node) handleSnapshotRestore(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	n.restoreSnapshot(w, r, id, false)
}

// restoreSnapshot is handleSnapshotRestore; forwarded says another node
// sent the restore here, as the leader (handleInternalRestore).
func (n *Node) restoreSnapshot(w http.ResponseWriter, r *http.Request, id ca.Identity, forwarded bool) {
	if _, ok := n.State().approvedRestore("", time.Now()); n.cfg.FourEyes && !ok {
		// Refused before up to maxSnapshotBody of it is read: no
		// backup may be restored now (which one is checked once read).
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		writeError(w, http.StatusForbidden, "four-eyes: restoring a backup needs a restore request for it (govnetctl request restore FILE) that another officer approved within the last "+api.RestoreApprovalTTL.String()+" and that no restore has used: none is, for any backup")
		return
	}
	// One at a time: each holds its backup in memory, up to
	// maxSnapshotBody, and on the leader its state decoded until the
	// restore ends.
	if !n.restoring.CompareAndSwap(false, true) {
		writeError(w, http.StatusConflict, "a restore is already in progress on this node")
		return
	}
	// A body that trickles in would hold the slot, its goroutine and
	// what it sent so far for as long as its client liked.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(restoreBodyTimeout))
	// Free before the answer goes out: a follower that forwarded this
	// restore and hears "not the leader" may send it straight back here,
	// re-elected.
	w = &beforeAnswer{ResponseWriter: w, f: func() { n.restoring.Store(false) }}
	defer n.restoring.Store(false)
	b, err := io.ReadAll(r.Body) // bounded by the route's limit, maxSnapshotBody (limitBody)
	if err != nil {
		var tooBig *http.MaxBytesError
		var timeout net.Error
		switch {
		case errors.As(err, &tooBig):
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("snapshot: a backup is at most %d bytes", maxSnapshotBody))
		case errors.As(err, &timeout) && timeout.Timeout():
			writeError(w, http.StatusRequestTimeout, fmt.Sprintf("snapshot: the backup did not arrive within %s", restoreBodyTimeout))
		default:
			writeError(w, http.StatusBadRequest, fmt.Sprintf("snapshot: reading the backup: %v", err))
		}
		return
	}
	state, sig, chain, err := n.checkBackup(b)
	if err != nil {
		n.fail(w, err)
		return
	}
	ns, err := readSnapshot(bytes.NewReader(state), n.fsm.spillDir)
	if errors.Is(err, errSpillIO) { // this node's disk, not the backup
		writeError(w, http.StatusInternalServerError, "check the backup: "+err.Error())
		return
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	// The backup as checked is what this node recovers if it leads and
	// the backup is another cluster's (decoding it again would hold its
	// writes that much longer; of a backup of this cluster, what the
	// restore takes goes into a command, rollbackOf). A
	// node that forwards the restore lets it go at once, and a second
	// try here (the first failed, the leader moved and came back)
	// decodes it afresh: a merge changes it.
	parsed, backupIndex := ns, ns.index
	defer func() {
		if parsed != nil {
			parsed.close()
		}
	}()
	if err := n.checkSigner(sig, chain, ns); err != nil {
		n.fail(w, err)
		return
	}
	actor := actorOf(r, id)
	sum := sha256.Sum256(b)
	if id.Kind == ca.KindPerson {
		actor = id.Name
		// Four-eyes: a restore replaces every revocation, token, policy
		// and person the cluster holds; one officer alone may not. (A
		// node forwarding a restore checked this where it came in.)
		if n.cfg.FourEyes {
			if _, ok := n.State().approvedRestore(hex.EncodeToString(sum[:]), n.now()); !ok {
				writeError(w, http.StatusForbidden, fmt.Sprintf("four-eyes: restoring backup %x needs a restore request for it (govnetctl request restore FILE) that another officer approved within the last %s",
					sum[:], api.RestoreApprovalTTL))
				return
			}
		}
	}
	if n.raft.State() != raft.Leader {
		parsed.close()
		parsed = nil
	}
	run := func(ctx context.Context) error {
		info := restoreInfo{Actor: actor, At: n.now(), BackupSHA256: hex.EncodeToString(sum[:])}
		if p, ok := n.State().Person(actor); ok {
			info.Role = p.Role
		}
		bk := parsed
		parsed = nil
		if bk == nil {
			var err error
			if bk, err = readSnapshot(bytes.NewReader(state), n.fsm.spillDir); err != nil {
				return err
			}
		}
		if err := n.restoreBackup(ctx, bk, info); err != nil {
			return err
		}
		n.log.Warn("state restored from a backup", "actor", actor, "raft_index", n.State().Index(), "backup_index", backupIndex, "backup_sha256", info.BackupSHA256,
			"signed_by", sig.Node, "signed_at", sig.At)
		return nil
	}
	if forwarded {
		err = n.onLeaderHere(r.Context(), run)
	} else {
		err = n.onLeaderRestore(r.Context(), actor, "/v1/internal/restore", b, run)
	}
	if err != nil {
		n.fail(w, err)
		return
	}
	n.writeStatus(w, r)
}

// beforeAnswer calls f once, before the answer's status or body is
// written.
type beforeAnswer struct {
	http.ResponseWriter
	once sync.Once
	f    func()
}

func (b *beforeAnswer) WriteHeader(code int) {
	b.once.Do(b.f)
	b.ResponseWriter.WriteHeader(code)
}

func (b *beforeAnswer) Write(p []byte) (int, error) {
	b.once.Do(b.f)
	return b.ResponseWriter.Write(p)
}

// onLeaderRestore is onLeader for a restore: a body that is not JSON,
// and up to api.RestoreTimeout, not applyTimeout (merging a large state
// and installing it on every node takes a while).
func (n *Node) onLeaderRestore(ctx context.Context, actor, path string, body []byte, local func(context.Context) error) error {
	return n.routeToLeader(ctx, api.RestoreTimeout, actor, path, "application/octet-stream", body, nil, local)
}

// onLeaderHere is onLeaderRestore for a restore another node forwarded
// here: it runs local only while this node leads, and otherwise fails
// with ErrNotLeader, for that node to try again with the new leader.
// Forwarding it on could bring it back to that node, whose own restore is
// this one (at 20,000 gateways a leader lost its lease while merging,
// sent the restore on to the new leader, the node the officer had
// called, and the officer got "a restore is already in progress").
func (n *Node) onLeaderHere(ctx context.Context, local func(context.Context) error) error {
	if n.raft.State() != raft.Leader {
		return ErrNotLeader
	}
	ctx, cancel := context.WithTimeout(ctx, api.RestoreTimeout)
	defer cancel()
	return local(ctx)
}

// routeToLeader runs local if this node leads, or POSTs body to path on
// the leader and decodes its answer into out (when not nil), retrying
// while there is no leader or the leader moved: nothing was done then.
// It gives up after timeout.
func (n *Node) routeToLeader(ctx context.Context, timeout time.Duration, actor, path, contentType string, body []byte, out any, local func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		var err error
		if n.raft.State() == raft.Leader {
			err = local(ctx)
		} else if _, leader := n.raft.LeaderWithID(); leader == "" {
			err = ErrNoLeader
		} else if m, ok := n.fsm.State().Member(string(leader)); !ok {
			err = ErrNoLeader
		} else {
			err = n.peerCall(ctx, m.APIAddr, path, contentType, bytes.NewReader(body), actor, out)
		}
		if !errors.Is(err, ErrNotLeader) && !errors.Is(err, ErrNoLeader) {
			return err
		}
		if perr := pause(ctx, 20*time.Millisecond); perr != nil {
			return err
		}
	}
}

func (n *Node) handleInternalRestore(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	if n.raft.State() != raft.Leader {
		n.fail(w, ErrNotLeader)
		return
	}
	n.restoreSnapshot(w, r, id, true)
}
