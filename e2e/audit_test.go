package e2e

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
)

// TestAuditCLI: the leader records signed checkpoints periodically; an
// auditor lists them, exports the chain and verifies both offline with
// the real binaries, and an altered export is caught at the entry altered.
func TestAuditCLI(t *testing.T) {
	l := newLab(t)
	l.initController()
	l.configure("audit_checkpoint_every: 200ms")
	l.startController()
	l.mustCtl("op", "agency", "add", "000.00.00.H29", "--name", "Quảng Ninh")

	var cps []api.AuditCheckpoint
	eventually(t, 20*time.Second, "a recorded checkpoint", func() error {
		out, err := l.ctlctl("off", "audit", "checkpoints", "-o", "json")
		if err != nil {
			return err
		}
		if err := json.Unmarshal([]byte(out), &cps); err != nil {
			return err
		}
		if len(cps) == 0 {
			return os.ErrNotExist
		}
		return nil
	})
	table := l.mustCtl("off", "audit", "checkpoints")
	if !strings.Contains(table, cps[0].Hash) || !strings.Contains(table, "ctl1") {
		t.Fatalf("table does not show the checkpoint %+v:\n%s", cps[0], table)
	}
	out, err := l.ctlctl("off", "audit", "checkpoints", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.path("checkpoints.json"), []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	l.mustCtl("off", "audit", "export", "--out", l.path("audit.jsonl"))
	got := l.mustCtl("off", "audit", "verify", l.path("audit.jsonl"), "--checkpoint", l.path("checkpoints.json"))
	if !strings.Contains(got, "signed by node ctl1") || !strings.Contains(got, "verified against the checkpoint of seq") {
		t.Fatalf("verify:\n%s", got)
	}

	// Rewrite the actor of the first entry: the chain no longer verifies.
	export, _ := os.ReadFile(l.path("audit.jsonl"))
	lines := strings.SplitN(string(export), "\n", 2)
	var e api.AuditEntry
	if err := json.Unmarshal([]byte(lines[0]), &e); err != nil {
		t.Fatal(err)
	}
	e.Actor = "someone-else"
	b, _ := json.Marshal(e)
	if err := os.WriteFile(l.path("altered.jsonl"), append(append(b, '\n'), lines[1]...), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err = l.ctlctl("off", "audit", "verify", l.path("altered.jsonl"), "--checkpoint", l.path("checkpoints.json"))
	if err == nil || !strings.Contains(got+err.Error(), "NOT VALID") {
		t.Fatalf("altered export: %v\n%s", err, got)
	}
}
