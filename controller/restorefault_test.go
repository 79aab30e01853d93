package controller

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
)

// TestRestoreLeaderLost: the leader of a restore stops (as if cut off or
// frozen) right after it took the restored state. The other two elect a
// leader and go on writing; when the old leader comes back, every node
// must hold the same registry and the same audit chain: no node keeps a
// state the cluster never committed. (Restores went through raft.Restore
// before, which installs the result on the leader before any follower
// has it: the old leader came back with a state of its own, and refused
// every entry the new leader sent it from then on.)
//
// Another cluster's backup is recovered only into a cluster of one node,
// for the same reason: a three-node cluster refuses it.
func TestRestoreLeaderLost(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster of processes")
	}
	c := newTestCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfgA := testConfigUnder(t, c.nodes[0].cfg) // a lost cluster, under the same root
	nA := startNode(t, cfgA)
	var lost bytes.Buffer
	if err := person(t, cfgA, nA, "operator1").SaveSnapshot(ctx, &lost); err != nil {
		t.Fatal(err)
	}
	nA.Close()
	c.startThree(t)
	_, err := c.off[0].RestoreSnapshot(ctx, bytes.NewReader(lost.Bytes()))
	wantStatus(t, err, 409, "cluster of a single node")

	old, err := c.leader()
	if err != nil {
		t.Fatal(err)
	}
	backup := c.backupBeforeGateway(ctx, t, old)

	if err := os.WriteFile(filepath.Join(c.nodes[old].cfg.DataDir, freezeLeaderFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	restored := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		_, err := c.off[old].RestoreSnapshot(ctx, bytes.NewReader(backup))
		restored <- err
	}()
	waitFor(t, 60*time.Second, c.nodes[old].name+" to stop after applying the restore", func() error {
		return stopped(c.nodes[old])
	})
	waitFor(t, 30*time.Second, "a new leader among the others", func() error {
		_, err := c.leader(old)
		return err
	})
	other := (old + 1) % 3
	if _, err := c.op[other].AddGateway(ctx, api.Gateway{ID: "while-stopped", Agency: registerKeys[0]}); err != nil {
		t.Fatal(err)
	}
	c.nodes[old].signal(syscall.SIGCONT)
	select {
	case err := <-restored:
		if err != nil {
			t.Fatalf("the restore, which its leader applied: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("no answer to the restore")
	}
	if _, err := c.op[other].AddGateway(ctx, api.Gateway{ID: "after-return", Agency: registerKeys[0]}); err != nil {
		t.Fatal(err)
	}
	same := func(what string) {
		t.Helper()
		waitFor(t, 60*time.Second, what, func() error {
			var first string
			for i := range c.nodes {
				got, err := c.view(ctx, i)
				if err != nil {
					return fmt.Errorf("%s: %w", c.nodes[i].name, err)
				}
				if !strings.Contains(got, `"after-return" pending`) || !strings.Contains(got, `"after-backup" decommissioned`) {
					return fmt.Errorf("%s does not hold the restore and the write after it: %s", c.nodes[i].name, got)
				}
				if i == 0 {
					first = got
				} else if got != first {
					return fmt.Errorf("%s differs from %s:\n%s\n%s", c.nodes[i].name, c.nodes[0].name, got, first)
				}
			}
			return nil
		})
	}
	same("every node to hold the same registry and audit chain")
	// Every node killed and started again replays the restore from its
	// log, to the same state.
	for _, p := range c.nodes {
		p.kill()
	}
	for _, p := range c.nodes {
		p.start(t)
	}
	c.waitHealthy(60 * time.Second)
	same("the same registry and audit chain after a restart")
}

// backupBeforeGateway registers an agency through node i, saves a backup
// there, and then registers the gateway "after-backup", which a restore
// of the backup decommissions.
func (c *testCluster) backupBeforeGateway(ctx context.Context, t *testing.T, i int) []byte {
	t.Helper()
	if _, err := c.op[i].AddAgency(ctx, api.Agency{Code: registerKeys[0], Name: "v0"}); err != nil {
		t.Fatal(err)
	}
	var backup bytes.Buffer
	if err := c.op[i].SaveSnapshot(ctx, &backup); err != nil {
		t.Fatal(err)
	}
	if _, err := c.op[i].AddGateway(ctx, api.Gateway{ID: "after-backup", Agency: registerKeys[0]}); err != nil {
		t.Fatal(err)
	}
	return backup.Bytes()
}

// stopped says whether the node's process is stopped (state T).
func stopped(p *procNode) error {
	p.mu.Lock()
	pid := p.cmd.Process.Pid
	p.mu.Unlock()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return err
	}
	// pid (comm) S ...: the state follows the last ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) == 0 || f[0] != "T" {
		return errors.New("still running")
	}
	return nil
}

// view is node i's registry and audit chain (gateway ids and statuses,
// audit actions and objects), read linearizably.
func (c *testCluster) view(ctx context.Context, i int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	gws, err := c.op[i].Linearizable().Gateways(ctx)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	slices.SortFunc(gws, func(x, y api.Gateway) int { return strings.Compare(x.ID, y.ID) })
	for _, g := range gws {
		fmt.Fprintf(&b, "%q %s; ", g.ID, g.Status)
	}
	b.WriteString("| ")
	err = c.off[i].AuditExport(ctx, 0, func(e api.AuditEntry) error {
		fmt.Fprintf(&b, "%d %s %s; ", e.Seq, e.Action, e.Object)
		return nil
	})
	return b.String(), err
}
