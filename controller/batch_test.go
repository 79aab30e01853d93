package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
)

// TestGroupCommitBatches holds the first commit until every other item is
// waiting, then checks how the rest are cut: in arrival order, at most max
// items and maxWeight of weight a batch, an item heavier than maxWeight
// alone, and a refused batch committed in halves, a refused half halved
// again, so that only the bad item fails.
func TestGroupCommitBatches(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var batches [][]int
	g := &groupCommit[int]{max: 4, maxWeight: 10, weigh: func(i int) int { return max(1, (i-100)/2) },
		commit: func(_ context.Context, items []int) error {
			if items[0] == 0 {
				<-release
			}
			mu.Lock()
			batches = append(batches, slices.Clone(items))
			mu.Unlock()
			if len(items) > 1 && slices.Contains(items, 13) {
				return fmt.Errorf("%w: item 13", ErrBadRequest)
			}
			if len(items) == 1 && items[0] == 13 {
				return fmt.Errorf("%w: item 13", ErrBadRequest)
			}
			return nil
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Weights: 1 each, but 6 for 112 and 113 (not both in a batch) and 50
	// for 200 (alone, over the bound); 13 is refused.
	items := []int{0, 1, 2, 3, 4, 5, 6, 112, 113, 200, 7, 8, 13, 9}
	errs := make([]chan error, len(items))
	for i, it := range items {
		errs[i] = make(chan error, 1)
		go func() { errs[i] <- g.Record(ctx, it) }()
		if i == 0 {
			waitFor(t, 5*time.Second, "the first commit to start", func() error {
				g.mu.Lock()
				defer g.mu.Unlock()
				if !g.running || len(g.pending) != 0 {
					return fmt.Errorf("running %v, %d pending", g.running, len(g.pending))
				}
				return nil
			})
		} else {
			// Arrival order is what the test checks: one at a time.
			waitFor(t, 5*time.Second, "the item to be queued", func() error {
				g.mu.Lock()
				defer g.mu.Unlock()
				if len(g.pending) != i {
					return fmt.Errorf("%d pending", len(g.pending))
				}
				return nil
			})
		}
	}
	close(release)
	for i, it := range items {
		err := <-errs[i]
		if (err != nil) != (it == 13) {
			t.Errorf("item %d: %v", it, err)
		}
	}
	want := [][]int{{0}, {1, 2, 3, 4}, {5, 6, 112}, {113}, {200}, {7, 8, 13, 9}, {7, 8}, {13, 9}, {13}, {9}}
	if fmt.Sprint(batches) != fmt.Sprint(want) {
		t.Errorf("batches %v, want %v", batches, want)
	}
}

func TestReportWeightBoundsEncoding(t *testing.T) {
	r := GatewayReportRequest{Meta: Meta{Actor: "gateway:gw-" + string(make([]byte, 40)), At: t0}, Gateway: "gw-" + string(make([]byte, 40))}
	r.Report.RulesetDigest = "sha256:<>&"
	r.Report.ApplyError = string(make([]byte, maxApplyError)) // NUL bytes: \u0000 each
	r.Report.PeerError = "<<<>>>&&&\u2028"
	r.Report.PolicyVersion, r.Report.RaftIndex, r.Report.Peers, r.Report.PeersLeftOut = 1<<62, 1<<62, 1<<30, 1<<30
	for _, typ := range []CommandType{CmdGatewayReports, CmdGatewayReportsPacked} {
		b, err := encodeCommand(typ, &GatewayReportsRequest{Reports: []GatewayReportRequest{r}})
		if err != nil {
			t.Fatal(err)
		}
		if len(b)-64 > reportWeight(r) {
			t.Errorf("%s: a report encodes to %d bytes, weighs %d", typ, len(b)-64, reportWeight(r))
		}
	}
	// An ordinary report (an agent's digest, a short id): maxReportBatch
	// of them fit the weight bound, which fits the forwarding limit.
	ordinary := GatewayReportRequest{Gateway: "c-12345", Report: api.Report{RulesetDigest: "sha256:" + strings.Repeat("0", 64)}}
	if w := reportWeight(ordinary); maxReportBatch*w > maxReportWeight {
		t.Errorf("%d ordinary reports weigh %d, over maxReportWeight %d: batches are cut by weight first", maxReportBatch, maxReportBatch*w, maxReportWeight)
	}
	if maxReportWeight > 2*maxPolicyBody {
		t.Errorf("maxReportWeight %d is over the leader's limit for a forwarded command, %d", maxReportWeight, 2*maxPolicyBody)
	}
}
