package controller

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/govnet/govnet/api"
)

// auditLog holds a State's audit chain: the entries in a file, one JSON
// line each (the lines `govnetctl audit export` prints), and in memory
// only where each line starts and the head.
//
// Every committed command adds an entry, so the chain grows with the
// network's activity rather than its size: at 20,000 gateways their
// reports alone add tens of thousands of entries an hour. Kept in memory
// (~330 bytes an entry) it grew each node by gigabytes a week, and every
// snapshot re-encoded all of it under the state's lock; in the file it
// costs 8 bytes an entry, and a snapshot copies the lines.
//
// The file is unlinked as soon as it is created. The chain is part of the
// replicated state and is rebuilt with the rest of it at every start, from
// the latest snapshot and the raft log after it; nothing in the file is
// needed across a restart, and a crash leaves nothing behind to clean up
// (unless it falls between the file's creation and its removal).
//
// An auditLog is guarded by its State's lock. Written lines never change,
// and a restore starts a new file, so a reader may read the lines it was
// handed (lines) after letting go of the lock. The file of a log that a
// restore replaced is closed by the garbage collector once no reader
// holds it (Go collects at least every two minutes): until then its disk
// space stays in use.
//
// Errors of the file itself wrap errAuditIO: they say this node's disk
// failed or is full, not that the chain is wrong.
type auditLog struct {
	dir  string   // where the file is created; "" means os.TempDir()
	f    *os.File // nil until the first entry
	offs []int64  // offs[i] is where the line of seq i+1 starts
	size int64    // bytes written (pending included)
	head api.AuditEntry
	// While a snapshot is read into a log nobody else sees yet, lines
	// gather here and are written 64 KiB at a time (flush).
	buffered bool
	pending  []byte
}

// errAuditIO marks a failure of the audit chain's file.
var errAuditIO = errors.New("audit chain file")

func newAuditLog(dir string) *auditLog { return &auditLog{dir: dir} }

// len is the number of entries, which is also the head's seq.
func (l *auditLog) len() uint64 { return uint64(len(l.offs)) }

// append writes e, whose Seq must be len()+1 and whose Prev must be the
// head's hash (the caller makes or checks them).
func (l *auditLog) append(e api.AuditEntry) error {
	if e.Seq != l.len()+1 {
		return fmt.Errorf("audit chain: entry %d after %d", e.Seq, l.len())
	}
	if l.f == nil {
		f, err := os.CreateTemp(l.dir, "audit-*.jsonl")
		if err != nil {
			return fmt.Errorf("%w: %w", errAuditIO, err)
		}
		if err := os.Remove(f.Name()); err != nil {
			f.Close()
			return fmt.Errorf("%w: %w", errAuditIO, err)
		}
		l.f = f
	}
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("audit chain: entry %d: %w", e.Seq, err)
	}
	b = append(b, '\n')
	if !l.buffered {
		if _, err := l.f.WriteAt(b, l.size); err != nil {
			return fmt.Errorf("%w: write entry %d: %w", errAuditIO, e.Seq, err)
		}
	}
	l.offs = append(l.offs, l.size)
	l.size += int64(len(b))
	l.head = e
	if l.buffered {
		l.pending = append(l.pending, b...)
		if len(l.pending) >= 64<<10 {
			return l.flush()
		}
	}
	return nil
}

// flush writes the pending lines.
func (l *auditLog) flush() error {
	if len(l.pending) == 0 {
		return nil
	}
	if _, err := l.f.WriteAt(l.pending, l.size-int64(len(l.pending))); err != nil {
		return fmt.Errorf("%w: write: %w", errAuditIO, err)
	}
	l.pending = l.pending[:0]
	return nil
}

// entry reads the entry of seq (1 <= seq <= len()).
func (l *auditLog) entry(seq uint64) (api.AuditEntry, error) {
	switch {
	case seq == 0 || seq > l.len():
		return api.AuditEntry{}, fmt.Errorf("audit chain: no entry %d (the chain has %d)", seq, l.len())
	case seq == l.len():
		return l.head, nil
	}
	b := make([]byte, l.offs[seq]-l.offs[seq-1])
	if _, err := l.f.ReadAt(b, l.offs[seq-1]); err != nil {
		return api.AuditEntry{}, fmt.Errorf("%w: read entry %d: %w", errAuditIO, seq, err)
	}
	var e api.AuditEntry
	if err := json.Unmarshal(b, &e); err != nil {
		return api.AuditEntry{}, fmt.Errorf("audit chain: entry %d: %w", seq, err)
	}
	return e, nil
}

// lines returns the lines of the entries after seq since, as they stand
// now; the reader stays valid after the lock is released.
func (l *auditLog) lines(since uint64) *io.SectionReader {
	if since >= l.len() {
		return io.NewSectionReader(strings.NewReader(""), 0, 0)
	}
	return io.NewSectionReader(l.f, l.offs[since], l.size-l.offs[since])
}

// close releases the file; only for a log nobody reads any more (a backup
// that was only checked). A log replaced by a restore is left to the
// garbage collector, which closes its file once no reader holds it.
func (l *auditLog) close() {
	if l.f != nil {
		l.f.Close()
	}
}

// maxAuditLine bounds a line of the chain: an entry is a few hundred
// bytes, but its object may name every gateway of a batch.
const maxAuditLine = 16 << 20

// eachAuditLine calls fn with every line r holds, without its newline;
// the slice is only valid during the call.
func eachAuditLine(r io.Reader, fn func(line []byte) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := api.ReadLine(br, maxAuditLine)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("audit chain: read: %w", err)
		}
		if err := fn(line); err != nil {
			return err
		}
	}
}
