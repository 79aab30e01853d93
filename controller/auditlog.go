package controller

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"

	"github.com/govnet/govnet/api"
)

// auditLog holds a State's audit chain: the entries in a spillFile, one
// JSON line each (the lines `govnetctl audit export` prints), and in
// memory only where each line starts and the head.
//
// Every committed command adds an entry, so the chain grows with the
// network's activity rather than its size: at 20,000 gateways their
// reports alone add tens of thousands of entries an hour. Kept in memory
// (~330 bytes an entry) it grew each node by gigabytes a week, and every
// snapshot re-encoded all of it under the state's lock; in the file it
// costs 8 bytes an entry, and a snapshot copies the lines.
type auditLog struct {
	spillFile
	offs []int64 // offs[i] is where the line of seq i+1 starts
	head api.AuditEntry
}

func newAuditLog(dir string) *auditLog {
	return &auditLog{spillFile: spillFile{dir: dir, pattern: "audit-*.jsonl"}}
}

// len is the number of entries, which is also the head's seq.
func (l *auditLog) len() uint64 { return uint64(len(l.offs)) }

// append writes e, whose Seq must be len()+1 and whose Prev must be the
// head's hash (the caller makes or checks them).
func (l *auditLog) append(e api.AuditEntry) error {
	if e.Seq != l.len()+1 {
		return fmt.Errorf("audit chain: entry %d after %d", e.Seq, l.len())
	}
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("audit chain: entry %d: %w", e.Seq, err)
	}
	off, err := l.write(append(b, '\n'))
	if err != nil {
		return fmt.Errorf("audit chain: entry %d: %w", e.Seq, err)
	}
	l.offs = append(l.offs, off)
	l.head = e
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
	b, err := l.read(l.offs[seq-1], int(l.offs[seq]-l.offs[seq-1]))
	if err != nil {
		return api.AuditEntry{}, fmt.Errorf("audit chain: entry %d: %w", seq, err)
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
		return l.from(l.size)
	}
	return l.from(l.offs[since])
}

// maxAuditLine bounds a line of the chain; an export's lines, the same,
// are held to the same bound by audit verify.
const maxAuditLine = api.MaxAuditLine

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
