package controller

import (
	"cmp"
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/hashicorp/raft"
)

// Reports that change nothing. An agent reports after every change and,
// when nothing changed, every few minutes all the same (netagent's
// report_refresh), so that the controllers know it is alive. At 20,000
// gateways those refreshes were a raft entry and an audit entry every
// few tens of milliseconds, and every raft snapshot copied the audit
// chain they grew. A node now answers a refresh at once and commits the
// refreshes it received together, every reportFlush, as one
// CmdGatewayRefreshesPacked entry per maxRefreshBatch gateways, which moves on
// only the times of a report that still says the same. A report that
// changes what the state records (the applied view, the ruleset digest,
// the number of peers) is committed at once, as before.

// reportFlush (config report_flush) is how long a refresh waits on its
// node before it is
// committed: how much later than the gateway's report a "last reported"
// time can show on the other nodes (the coverage report's window is
// minutes). A node commits what it holds as it stops; one that is
// killed loses it, and the gateways' next refreshes make up for it.
const reportFlush = 30 * time.Second

// maxRefreshBatch bounds the reports of one refresh entry (~250 bytes
// each).
const maxRefreshBatch = 2048

// refresher holds the refreshes a node has answered and not yet
// committed, the newest of each gateway.
type refresher struct {
	n         *Node
	heartbeat time.Duration // raft's heartbeat timeout (inContact)
	mu        sync.Mutex
	pending   map[string]GatewayReportRequest
}

// sameReport says whether rep changes nothing that cur records but its
// time and the WireGuard handshake time, which a refresh carries.
func sameReport(cur *api.Report, rep api.Report) bool {
	return cur != nil && cur.SameState(rep)
}

// record takes req as a refresh if the state already records what it
// says and the node is in touch with the leader, and reports whether it
// did. Otherwise any refresh the node holds
// for the gateway is dropped: the report about to be committed is newer.
func (r *refresher) record(req GatewayReportRequest) bool {
	// A node cut off from the leader takes no refresh: answering one
	// says that the cluster will know the gateway is there, which such
	// a node cannot promise. The report is then committed at once, which
	// fails there, and the gateway moves to another node.
	same := sameReport(r.n.State().gatewayReport(req.Gateway), req.Report) &&
		inContact(r.n.raft.State(), r.n.raft.LastContact(), time.Now(), r.heartbeat)
	r.mu.Lock()
	defer r.mu.Unlock()
	if !same {
		delete(r.pending, req.Gateway)
		return false
	}
	if r.pending == nil {
		r.pending = map[string]GatewayReportRequest{}
	}
	r.pending[req.Gateway] = req
	return true
}

// run commits the held refreshes every reportFlush, and once more when
// ctx ends (the node is stopping), for at most a second.
func (r *refresher) run(ctx context.Context) {
	t := time.NewTicker(cmp.Or(r.n.cfg.ReportFlush, reportFlush))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), time.Second)
			r.flush(fctx)
			cancel()
			return
		case <-t.C:
			r.flush(ctx)
		}
	}
}

// flush commits the held refreshes, oldest report first, in entries of
// at most maxRefreshBatch. What a failed commit held is kept for the next
// flush, unless a newer refresh of the same gateway came in meanwhile.
func (r *refresher) flush(ctx context.Context) {
	r.mu.Lock()
	held := r.pending
	r.pending = nil
	r.mu.Unlock()
	if len(held) == 0 {
		return
	}
	reps := slices.SortedFunc(maps.Values(held), func(a, b GatewayReportRequest) int { return a.At.Compare(b.At) })
	for batch := range slices.Chunk(reps, maxRefreshBatch) {
		if err := r.commit(ctx, batch); err != nil {
			r.n.log.Warn("commit gateway report refreshes", "reports", len(batch), "err", err)
			r.mu.Lock()
			if r.pending == nil {
				r.pending = map[string]GatewayReportRequest{}
			}
			for _, req := range batch {
				if _, newer := r.pending[req.Gateway]; !newer {
					r.pending[req.Gateway] = req
				}
			}
			r.mu.Unlock()
		}
	}
}

// commit submits one batch. Gateways removed from the registry since
// their refresh are left out; a verdict against what remains (one removed
// while the entry was in flight) drops the batch: they are refreshes.
func (r *refresher) commit(ctx context.Context, batch []GatewayReportRequest) error {
	st := r.n.State()
	batch = slices.DeleteFunc(batch, func(req GatewayReportRequest) bool { return st.gatewayReport(req.Gateway) == nil })
	if len(batch) == 0 {
		return nil
	}
	_, err := r.n.submit(ctx, CmdGatewayRefreshesPacked, &GatewayReportsRequest{Meta: r.n.meta("node:" + r.n.cfg.Node), Reports: batch})
	if isVerdict(err) {
		r.n.log.Warn("gateway report refreshes refused", "reports", len(batch), "err", err)
		return nil
	}
	return err
}

// inContact says whether a node in raft state st, which last heard from
// a leader at last, is in touch with the cluster at now: it leads (a
// leader cut off from the others steps down within its lease), or it
// follows and heard from the leader within two heartbeat timeouts.
func inContact(st raft.RaftState, last, now time.Time, heartbeat time.Duration) bool {
	switch st {
	case raft.Leader:
		return true
	case raft.Follower:
		return !last.IsZero() && now.Sub(last) < 2*heartbeat
	}
	return false
}
