package controller

import (
	"context"
	"sync"
)

// groupCommit commits items in batches: the items that arrive while one
// batch is being committed go together in the next, so that a burst of
// small writes (certificate records, gateway reports) costs a few raft
// entries instead of one each. A lone item is committed at once, without
// waiting for company.
type groupCommit[T any] struct {
	// commit submits one batch; its error is the batch's verdict.
	commit func(ctx context.Context, items []T) error
	max    int // items per batch; 0 means maxRecordBatch
	// weigh, when set, bounds a batch by the sum of its items' weights
	// (an upper bound of each item's encoded size) to maxWeight as well;
	// a batch always takes at least one item.
	weigh     func(T) int
	maxWeight int

	mu      sync.Mutex
	pending []*pendingItem[T]
	running bool // a goroutine is committing batches
}

type pendingItem[T any] struct {
	item T
	done chan error // receives the item's outcome, once
}

// Record adds item to the next batch and waits until that batch has been
// committed and applied on this node. If ctx ends first, Record returns
// ctx's error and the item may still be committed.
func (g *groupCommit[T]) Record(ctx context.Context, item T) error {
	p := &pendingItem[T]{item: item, done: make(chan error, 1)}
	g.mu.Lock()
	g.pending = append(g.pending, p)
	if !g.running {
		g.running = true
		go g.run()
	}
	g.mu.Unlock()
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run commits batches until none is waiting.
func (g *groupCommit[T]) run() {
	limit := g.max
	if limit <= 0 {
		limit = maxRecordBatch
	}
	for {
		g.mu.Lock()
		k := g.fits(limit)
		batch := g.pending[:k:k]
		g.pending = g.pending[len(batch):]
		if len(batch) == 0 {
			g.pending, g.running = nil, false
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		g.commitBatch(batch)
	}
}

// fits returns how many of the pending items the next batch takes: at
// most limit, and no more than maxWeight of them when items are weighed.
// g.mu is held.
func (g *groupCommit[T]) fits(limit int) int {
	n := min(len(g.pending), limit)
	if g.weigh == nil {
		return n
	}
	w := 0
	for i, p := range g.pending[:n] {
		if w += g.weigh(p.item); w > g.maxWeight && i > 0 {
			return i
		}
	}
	return n
}

// commitBatch commits batch as one command. The state machine takes a
// batch whole or not at all, so when it refuses one (a bad or duplicate
// item), each half is committed in turn, and a refused half halved again,
// until only the bad items fail, each alone: one bad item among 512
// costs 19 commits rather than 513, which the node's other items of the
// kind would wait for (in a re-issue, the renewals of thousands of
// gateways behind one stale retry).
func (g *groupCommit[T]) commitBatch(batch []*pendingItem[T]) {
	items := make([]T, len(batch))
	for i, p := range batch {
		items[i] = p.item
	}
	err := g.commit(context.Background(), items)
	if err != nil && len(batch) > 1 && isVerdict(err) {
		g.commitBatch(batch[:len(batch)/2])
		g.commitBatch(batch[len(batch)/2:])
		return
	}
	for _, p := range batch {
		p.done <- err
	}
}
