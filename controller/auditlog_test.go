package controller

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
)

// TestAuditLog: the chain kept in its file reads back entry by entry and
// as lines, survives a snapshot and restore whole (a line longer than the
// reading buffer included), leaves no file in its directory, and a reader
// handed out before a restore still reads the chain it was handed.
func TestAuditLog(t *testing.T) {
	dir := t.TempDir()
	f := newFSMIn(dir, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	s := f.State()
	long := strings.Repeat("gw-h01-d01-c01,", 8000) // 120,000 bytes: a batch naming many gateways
	var want []api.AuditEntry
	for i := range 50 {
		e := api.AuditEntry{RaftIndex: uint64(i + 1), At: t0.Add(time.Duration(i) * time.Second), Actor: "node:ctl1", Role: "node", Action: "gateway-reports", Object: "gw1"}
		if i == 20 {
			e.Object = long
		}
		if err := s.appendAudit(e); err != nil {
			t.Fatal(err)
		}
		head, _ := s.AuditHead()
		want = append(want, head)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("files left in the audit directory: %v", left)
	}
	for _, seq := range []uint64{1, 2, 21, 49, 50} {
		e, err := s.audit.entry(seq)
		if err != nil || e != want[seq-1] {
			t.Fatalf("entry %d: %+v, %v; want %+v", seq, e, err, want[seq-1])
		}
	}
	if _, err := s.audit.entry(51); err == nil {
		t.Fatal("entry 51 of 50 read")
	}
	got, err := s.Audit(10)
	if err != nil || len(got) != 40 || got[0] != want[10] || got[10] != want[20] || got[39] != want[49] {
		t.Fatalf("Audit(10): %d entries, %v", len(got), err)
	}
	if got, err := s.Audit(50); err != nil || len(got) != 0 {
		t.Fatalf("Audit(50): %v, %v", got, err)
	}
	// Every line is what the export has always printed: one entry encoded
	// as JSON, and the chain verifies.
	old := s.AuditLines(0)
	snap := snapshotBytes(t, f)
	g := newFSMIn(t.TempDir(), slog.Default(), nil)
	if err := g.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	if again := snapshotBytes(t, g); !bytes.Equal(again, snap) {
		t.Fatal("a restored chain snapshots differently")
	}
	if got, err := g.State().Audit(0); err != nil || len(got) != 50 || got[20] != want[20] {
		t.Fatalf("restored chain: %d entries, %v", len(got), err)
	}
	// Restoring f from a shorter chain: the reader it handed out before
	// still reads all 50 entries.
	short := newFSMIn(t.TempDir(), slog.Default(), nil)
	if err := short.State().appendAudit(want[0]); err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, short)))); err != nil {
		t.Fatal(err)
	}
	if head, _ := s.AuditHead(); head.Seq != 1 {
		t.Fatalf("head after the restore: %d", head.Seq)
	}
	n := 0
	if err := eachAuditLine(old, func([]byte) error { n++; return nil }); err != nil || n != 50 {
		t.Fatalf("reader from before the restore: %d lines, %v", n, err)
	}
}

// TestRestoreRefusesBrokenChain: a snapshot whose chain does not start at
// seq 1, skips an entry or was edited is refused, and refused as a
// backup too.
func TestRestoreRefusesBrokenChain(t *testing.T) {
	f := newFSMIn(t.TempDir(), slog.Default(), nil)
	for i := range 3 {
		if err := f.State().appendAudit(api.AuditEntry{RaftIndex: uint64(i + 1), At: t0, Actor: "op", Action: "agency-upsert", Object: "000.00.00.H01"}); err != nil {
			t.Fatal(err)
		}
	}
	snap := string(snapshotBytes(t, f))
	lines := strings.SplitAfter(snap, "\n")
	var audit []int
	for i, l := range lines {
		if strings.HasPrefix(l, `{"type":"audit"`) {
			audit = append(audit, i)
		}
	}
	if len(audit) != 3 {
		t.Fatalf("%d audit records in\n%s", len(audit), snap)
	}
	without := func(i int) string { return strings.Join(append(append([]string{}, lines[:i]...), lines[i+1:]...), "") }
	for name, bad := range map[string]string{
		"first removed":  without(audit[0]),
		"middle removed": without(audit[1]),
		"edited":         strings.Replace(snap, `"object":"000.00.00.H01"`, `"object":"000.00.00.H02"`, 1),
	} {
		g := NewFSM(slog.Default(), nil)
		if err := g.Restore(io.NopCloser(strings.NewReader(bad))); err == nil || !strings.Contains(err.Error(), "does not extend the chain") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// FuzzSnapshot: a backup an officer uploads is outside input. readSnapshot
// never panics, leaves no file behind (its audit chain's file is unlinked
// at once, and closed when the backup is refused), reads what
// encoding/json alone reads (accepting and refusing the same backups), and
// a backup it accepts restores to a state whose own snapshot restores to
// itself.
func FuzzSnapshot(f *testing.F) {
	full := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	for i, c := range history() {
		applyCmd(f, full, uint64(i+1), c.t, c.req)
	}
	f.Add(snapshotBytes(f, full))
	f.Add([]byte(`{"format":"govnet-state/1","index":3}` + "\n"))
	f.Add([]byte(`{"format":"govnet-state/1","index":3}` + "\n" + `{"type":"audit","data":{"seq":1,"prev":"","hash":"x"}}` + "\n"))
	// Records not as Persist writes them, which recordReader hands to
	// encoding/json: spaces around the data, a record over two lines
	// (the first ending as a record would, or not), a field more, an
	// escaped type, a header over two lines, CRLF line ends.
	const hdr = `{"format":"govnet-state/1","index":3}` + "\n"
	for _, recs := range []string{
		`{"type":"network","data": {"overlay":"100.64.0.0/16"} }` + "\n\n",
		`{"type":"network","data":{"overlay":` + "\n" + `"100.64.0.0/16"}}` + "\n",
		`{"type":"agency","data":{"code":"01","name":"x","level":"province","x":{}` + "\n" + `}}` + "\n",
		`{"type":"network","data":{"overlay":"100.64.0.0/16"},"extra":1}` + "\n",
		`{"type":"netw\u006frk","data":{"overlay":"100.64.0.0/16"}}`,
		`{"type":"network","data":{"overlay":"100.64.0.0/16"}} {"type":"removed-node","data":{"node":"ctl9"}}` + "\n",
	} {
		f.Add([]byte(hdr + recs))
	}
	f.Add([]byte(`{"format":"govnet-state/1",` + "\n" + `"index":3}{"type":"network","data":{"overlay":"100.64.0.0/16"}}`))
	f.Add(bytes.ReplaceAll(snapshotBytes(f, full), []byte("\n"), []byte("\r\n")))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		ns, err := readSnapshot(bytes.NewReader(data), dir)
		// encoding/json alone (recordReader's fallback) reads the same
		// bytes the same way.
		ref := newRecordReader(bytes.NewReader(data))
		ref.generic(nil)
		gs, gerr := readRecords(ref, dir)
		if left, _ := os.ReadDir(dir); len(left) != 0 {
			t.Fatalf("files left behind: %v", left)
		}
		if (err == nil) != (gerr == nil) {
			t.Fatalf("read by hand: %v; by encoding/json: %v", err, gerr)
		}
		if err != nil {
			return
		}
		defer ns.close()
		defer gs.close()
		logger := slog.New(slog.NewTextHandler(io.Discard, nil))
		fsmOf := func(s *State) *FSM {
			return &FSM{state: s, spillDir: dir, log: logger, onApply: func(uint64, CommandType) {}}
		}
		if a, b := snapshotBytes(t, fsmOf(ns)), snapshotBytes(t, fsmOf(gs)); !bytes.Equal(a, b) {
			t.Fatalf("read by hand:\n%s\n---\nby encoding/json:\n%s", a, b)
		}
		g := &FSM{state: ns, spillDir: dir, log: slog.New(slog.NewTextHandler(io.Discard, nil)), onApply: func(uint64, CommandType) {}}
		once := snapshotBytes(t, g)
		h := newFSMIn(dir, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
		if err := h.Restore(io.NopCloser(bytes.NewReader(once))); err != nil {
			t.Fatalf("an accepted backup's own snapshot is refused: %v", err)
		}
		defer h.state.close()
		if twice := snapshotBytes(t, h); !bytes.Equal(once, twice) {
			t.Fatalf("snapshot changed on a second round:\n%s\n---\n%s", once, twice)
		}
	})
}
