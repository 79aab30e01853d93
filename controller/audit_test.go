package controller

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
)

// TestPeriodicCheckpoints: the leader signs the audit chain's head every
// period, when it has grown, and records the checkpoint through raft; the
// recorded checkpoints verify against the root and the exported chain,
// move forward, and survive a restart.
func TestPeriodicCheckpoints(t *testing.T) {
	cfg := testConfig(t)
	cfg.AuditCheckpointEvery = 100 * time.Millisecond
	n := startNode(t, cfg)
	defer func() { n.Close() }()
	ctx := context.Background()
	off := person(t, cfg, n, "officer1")
	rootPEM, err := os.ReadFile(cfg.pkiPath(rootFile))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)

	waitCheckpoint := func(after uint64) api.AuditCheckpoint {
		t.Helper()
		var last api.AuditCheckpoint
		waitUntil(t, 10*time.Second, fmt.Sprintf("a checkpoint after seq %d", after), func() bool {
			cps, err := off.AuditCheckpoints(ctx)
			if err != nil {
				return false // the first leader may not have registered the bootstrap people yet
			}
			if len(cps) > 0 {
				last = cps[len(cps)-1]
			}
			return last.Seq > after
		})
		return last
	}
	verify := func(cp api.AuditCheckpoint) {
		t.Helper()
		var entries []api.AuditEntry
		if err := off.AuditExport(ctx, 0, func(e api.AuditEntry) error { entries = append(entries, e); return nil }); err != nil {
			t.Fatal(err)
		}
		if err := api.VerifyAudit(entries); err != nil {
			t.Fatal(err)
		}
		if _, err := api.VerifyCheckpoint(cp, roots, entries); err != nil {
			t.Fatalf("recorded checkpoint seq %d: %v", cp.Seq, err)
		}
	}
	first := waitCheckpoint(0)
	if first.Node != "ctl1" {
		t.Fatalf("checkpoint %+v", first)
	}
	verify(first)

	// Bootstrap entries may still land after the first checkpoint; wait
	// until the newest checkpoint covers all but its own entry. From then on
	// the chain is idle and no new checkpoint may appear.
	var idle []api.AuditCheckpoint
	waitUntil(t, 10*time.Second, "a checkpoint of the whole chain", func() bool {
		cps, err := off.AuditCheckpoints(ctx)
		head := auditLen(t, off)
		if err != nil || len(cps) == 0 || cps[len(cps)-1].Seq+1 != head {
			return false
		}
		idle = cps
		return true
	})
	time.Sleep(3 * cfg.AuditCheckpointEvery)
	if cps, _ := off.AuditCheckpoints(ctx); len(cps) != len(idle) {
		t.Fatalf("%d checkpoints of an idle chain, want %d", len(cps), len(idle))
	}
	first = idle[len(idle)-1]
	// The chain grows: the next checkpoint covers the new entries.
	if _, err := off.PublishPolicy(ctx, "p.yaml", "version: 1\n"); err != nil {
		t.Fatal(err)
	}
	second := waitCheckpoint(first.Seq)
	verify(second)

	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	cfg.AuditCheckpointEvery = time.Hour
	n = startNode(t, cfg)
	off = person(t, cfg, n, "officer1")
	cps, err := off.AuditCheckpoints(ctx)
	if err != nil || len(cps) != len(idle)+1 || cps[len(cps)-1] != second {
		t.Fatalf("after restart: %d checkpoints %v, want the %d recorded", len(cps), err, len(idle)+1)
	}
}

// auditLen returns the number of entries in the audit chain.
func auditLen(t *testing.T, c *api.Client) uint64 {
	t.Helper()
	var n uint64
	if err := c.AuditExport(context.Background(), 0, func(api.AuditEntry) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}
