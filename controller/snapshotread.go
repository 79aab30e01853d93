package controller

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
)

// recordReader reads a snapshot's header and records. The lines Persist
// writes, `{"type":"T","data":D}` each (writeSnapshotRecord), are taken
// apart by hand and only D is decoded (by restoreRecord): encoding/json's
// Decoder scanned each record twice before json.Unmarshal checked D and
// decoded it (to find the record's end, then to skip D into a
// RawMessage): a third of reading a 50 MB snapshot. From the first line in any other form (a
// backup edited by hand, a record spread over lines) to the end, the
// Decoder reads the rest: what a snapshot says does not depend on the
// path, only the time it takes.
type recordReader struct {
	br   *bufio.Reader
	buf  []byte        // a line longer than br's buffer
	dec  *json.Decoder // once a line was not in Persist's form
	line []byte        // the last line taken apart by hand
}

func newRecordReader(r io.Reader) *recordReader {
	return &recordReader{br: bufio.NewReaderSize(r, 64<<10)}
}

// header decodes the snapshot's first value into hdr.
func (r *recordReader) header(hdr *snapshotHeader) error {
	line, err := r.nextLine()
	if err != nil && err != io.EOF {
		return err
	}
	if err == nil && json.Unmarshal(line, hdr) == nil {
		return nil // the line is the header and nothing else
	}
	*hdr = snapshotHeader{}
	r.generic(line)
	return r.dec.Decode(hdr)
}

// next reads the next record into rec; byHand says that rec.Data was cut
// out of a line by hand and has not been checked to be JSON (see again).
// rec.Data is valid until the next read. It returns io.EOF at the end.
func (r *recordReader) next(rec *snapshotRecord) (byHand bool, err error) {
	if r.dec != nil {
		return false, r.dec.Decode(rec)
	}
	line, err := r.nextLine()
	if err != nil {
		return false, err
	}
	if typ, data, ok := splitRecord(line); ok {
		rec.Type, rec.Data = typ, data
		r.line = line
		return true, nil
	}
	r.generic(line)
	return false, r.dec.Decode(rec)
}

// again reads the record that the last call to next took apart by hand
// as encoding/json reads it, and everything after it the same way: its
// data was not one JSON value (restoreRecord failed to decode it, so it
// changed nothing), which a record spread over lines can look like.
func (r *recordReader) again(rec *snapshotRecord) error {
	*rec = snapshotRecord{}
	r.generic(r.line)
	return r.dec.Decode(rec)
}

// generic hands the rest of the input, from line on, to a json.Decoder.
func (r *recordReader) generic(line []byte) {
	rest := make([]byte, len(line)+1)
	copy(rest, line)
	rest[len(line)] = '\n'
	r.dec = json.NewDecoder(io.MultiReader(bytes.NewReader(rest), r.br))
	r.line, r.buf = nil, nil
}

// nextLine returns the next line that holds more than JSON whitespace,
// without its newline (the last one may have none). It is valid until the
// next read. At the end it returns io.EOF.
func (r *recordReader) nextLine() ([]byte, error) {
	for {
		line, err := r.br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			r.buf = append(r.buf[:0], line...)
			for err == bufio.ErrBufferFull {
				line, err = r.br.ReadSlice('\n')
				r.buf = append(r.buf, line...)
			}
			line = r.buf
		}
		if err != nil && err != io.EOF {
			return nil, err
		}
		if len(bytes.Trim(line, " \t\r\n")) > 0 {
			return bytes.TrimSuffix(line, []byte{'\n'}), nil
		}
		if err == io.EOF {
			return nil, io.EOF
		}
	}
}

var (
	recordHead = []byte(`{"type":"`)
	recordData = []byte(`","data":`)
)

// splitRecord takes a line in writeSnapshotRecord's form apart. The type
// must be plain printable ASCII (no escapes, which encoding/json would
// decode); data is the rest of the line but its closing brace and the
// whitespace around it (as a RawMessage has it), unchecked.
func splitRecord(line []byte) (typ string, data []byte, ok bool) {
	rest, ok := bytes.CutPrefix(line, recordHead)
	if !ok || len(rest) == 0 || rest[len(rest)-1] != '}' {
		return "", nil, false
	}
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return "", nil, false
	}
	for _, c := range rest[:end] {
		if c < 0x20 || c > 0x7e || c == '\\' {
			return "", nil, false
		}
	}
	data, ok = bytes.CutPrefix(rest[end:], recordData)
	if !ok {
		return "", nil, false
	}
	return string(rest[:end]), bytes.Trim(data[:len(data)-1], " \t\r\n"), true
}
