package controller

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// spillFile keeps a part of the replicated state that only grows (the
// audit chain, the archived certificates) on disk instead of in memory:
// an append-only file of lines, of which memory holds only what its owner
// indexes.
//
// The file is unlinked as soon as it is created. Like the rest of the
// state it is rebuilt at every start, from the latest snapshot and the
// raft log after it; nothing in it is needed across a restart, and a crash
// leaves nothing behind to clean up (unless it falls between the file's
// creation and its removal).
//
// A spillFile is guarded by its State's lock. Written bytes never change,
// and a restore starts a new file, so a reader may read the section it was
// handed (from) after letting go of the lock. The file of a State that a
// restore replaced is closed by the garbage collector once no reader holds
// it (Go collects at least every two minutes): until then its disk space
// stays in use.
type spillFile struct {
	dir     string   // where the file is created; "" means os.TempDir()
	pattern string   // its name while it exists, for os.CreateTemp
	f       *os.File // nil until the first write
	size    int64    // bytes written (pending included)
	// While a snapshot is read into a state nobody else sees yet, lines
	// gather here and are written 64 KiB at a time (flush).
	buffered bool
	pending  []byte
}

// errSpillIO marks a failure of a spillFile: this node's disk failed or
// is full; the state it holds is not wrong.
var errSpillIO = errors.New("state file on this node's disk")

// write appends b (whole lines) and returns the offset it starts at. It
// is all or nothing: on an error the file's length, as size counts it,
// has not moved, and the next write overwrites whatever part was written.
func (s *spillFile) write(b []byte) (int64, error) {
	if s.f == nil {
		f, err := os.CreateTemp(s.dir, s.pattern)
		if err != nil {
			return 0, fmt.Errorf("%w: %w", errSpillIO, err)
		}
		if err := os.Remove(f.Name()); err != nil {
			f.Close()
			return 0, fmt.Errorf("%w: %w", errSpillIO, err)
		}
		s.f = f
	}
	off := s.size
	if s.buffered {
		s.pending = append(s.pending, b...)
		s.size += int64(len(b))
		if len(s.pending) >= 64<<10 {
			return off, s.flush()
		}
		return off, nil
	}
	if _, err := s.f.WriteAt(b, off); err != nil {
		return 0, fmt.Errorf("%w: write at %d: %w", errSpillIO, off, err)
	}
	s.size += int64(len(b))
	return off, nil
}

// flush writes the pending lines.
func (s *spillFile) flush() error {
	if len(s.pending) == 0 {
		return nil
	}
	if _, err := s.f.WriteAt(s.pending, s.size-int64(len(s.pending))); err != nil {
		return fmt.Errorf("%w: write: %w", errSpillIO, err)
	}
	s.pending = s.pending[:0]
	return nil
}

// read returns the n bytes written at off.
func (s *spillFile) read(off int64, n int) ([]byte, error) {
	if off < 0 || n < 0 || off+int64(n) > s.size {
		return nil, fmt.Errorf("%w: read %d bytes at %d of %d", errSpillIO, n, off, s.size)
	}
	b := make([]byte, n)
	if start := s.size - int64(len(s.pending)); off >= start {
		copy(b, s.pending[off-start:])
		return b, nil
	}
	if _, err := s.f.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("%w: read %d bytes at %d: %w", errSpillIO, n, off, err)
	}
	return b, nil
}

// from returns what was written from off on, as it stands now; the reader
// stays valid after the lock is released.
func (s *spillFile) from(off int64) *io.SectionReader {
	if s.f == nil || off >= s.size {
		return io.NewSectionReader(strings.NewReader(""), 0, 0)
	}
	return io.NewSectionReader(s.f, off, s.size-off)
}

// close releases the file; only for a state nobody reads any more (a
// backup that was only checked). A state replaced by a restore is left to
// the garbage collector, which closes its files once no reader holds them.
func (s *spillFile) close() {
	if s.f != nil {
		s.f.Close()
	}
}
