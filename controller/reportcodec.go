package controller

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
	"unicode/utf8"
)

// Packed report batches (CmdGatewayReportsPacked, CmdGatewayRefreshesPacked).
//
// After a policy version every gateway reports within seconds, and every
// node decodes every report: at 20,000 gateways the JSON of the batches
// (decoded for the audit entry, then for Apply, on three nodes, and once
// more on the leader to stamp it) was about 9 µs a report a node, the
// largest single cost of a round. The packed form is the same
// GatewayReportsRequest in a flat binary layout that decodes in well under
// a microsecond a report:
//
//	batch  = time actor count report*      (the batch's Meta first)
//	report = time actor gateway rtime
//	         uvarint(policy_version) uvarint(raft_index) string(ruleset_digest)
//	         varint(peers) time(last_handshake) uvarint(failed_index)
//	         string(apply_error) varint(peers_left_out) string(peer_error)
//	time   = int64 Unix seconds, uint32 nanoseconds (big-endian, 12 bytes)
//	string = uvarint length, UTF-8 bytes
//	actor, gateway = string; count = uvarint; rtime = time (Report.At)
//
// The batch's time comes first, at a fixed offset, so that the leader
// stamps a forwarded batch without decoding it (restamp). Times decode
// in UTC; the zero time round-trips. A body that is cut short, has bytes
// left over, a string that is not UTF-8, a number not in its shortest
// form, a time outside the years 0-9999 (which JSON, the snapshot's
// form, cannot hold) or a count its length cannot hold is refused.

const packedTimeLen = 12

// The times JSON can hold (the snapshot's form): years 0 to 9999.
const (
	minPackedUnix = -62167219200 // 0000-01-01T00:00:00Z
	maxPackedUnix = 253402300799 // 9999-12-31T23:59:59Z
)

// minPackedReport is the fewest bytes a report takes: three times, three
// empty strings' and two names' lengths, and five one-byte varints.
const minPackedReport = 3*packedTimeLen + 5 + 5

var errPacked = errors.New("packed reports")

// encodeReportsPacked packs r.
func encodeReportsPacked(r *GatewayReportsRequest) []byte {
	n := packedTimeLen + 16 + len(r.Actor)
	for i := range r.Reports {
		p := &r.Reports[i]
		n += minPackedReport + 40 + len(p.Actor) + len(p.Gateway) + len(p.Report.RulesetDigest) + len(p.Report.ApplyError) + len(p.Report.PeerError)
	}
	b := make([]byte, 0, n)
	b = appendPackedTime(b, r.At)
	b = appendPackedString(b, r.Actor)
	b = binary.AppendUvarint(b, uint64(len(r.Reports)))
	for i := range r.Reports {
		p := &r.Reports[i]
		rep := &p.Report
		b = appendPackedTime(b, p.At)
		b = appendPackedString(b, p.Actor)
		b = appendPackedString(b, p.Gateway)
		b = appendPackedTime(b, rep.At)
		b = binary.AppendUvarint(b, rep.PolicyVersion)
		b = binary.AppendUvarint(b, rep.RaftIndex)
		b = appendPackedString(b, rep.RulesetDigest)
		b = binary.AppendVarint(b, int64(rep.Peers))
		b = appendPackedTime(b, rep.LastHandshake)
		b = binary.AppendUvarint(b, rep.FailedIndex)
		b = appendPackedString(b, rep.ApplyError)
		b = binary.AppendVarint(b, int64(rep.PeersLeftOut))
		b = appendPackedString(b, rep.PeerError)
	}
	return b
}

// decodeReportsPacked unpacks a body encodeReportsPacked made.
func decodeReportsPacked(b []byte) (*GatewayReportsRequest, error) {
	d := packedDecoder{b: b}
	r := &GatewayReportsRequest{}
	r.At = d.time()
	r.Actor = d.string()
	count := d.uvarint()
	if d.err == nil && count > uint64(len(d.b))/minPackedReport {
		d.fail("%d reports in %d bytes", count, len(d.b))
	}
	if d.err == nil {
		r.Reports = make([]GatewayReportRequest, count)
	}
	for i := range r.Reports {
		p := &r.Reports[i]
		rep := &p.Report
		p.At = d.time()
		p.Actor = d.string()
		p.Gateway = d.string()
		rep.At = d.time()
		rep.PolicyVersion = d.uvarint()
		rep.RaftIndex = d.uvarint()
		rep.RulesetDigest = d.string()
		rep.Peers = d.int()
		rep.LastHandshake = d.time()
		rep.FailedIndex = d.uvarint()
		rep.ApplyError = d.string()
		rep.PeersLeftOut = d.int()
		rep.PeerError = d.string()
		if d.err != nil {
			return nil, fmt.Errorf("%w: report %d: %w", ErrBadRequest, i, d.err)
		}
	}
	if d.err == nil && len(d.b) > 0 {
		d.fail("%d bytes after the last report", len(d.b))
	}
	if d.err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRequest, d.err)
	}
	return r, nil
}

// packedMeta reads only a packed batch's Meta (for its audit entry).
func packedMeta(b []byte) (Meta, error) {
	d := packedDecoder{b: b}
	m := Meta{At: d.time(), Actor: d.string()}
	return m, d.err
}

// restampPacked sets a packed batch's time (the leader's clock stamps
// every command).
func restampPacked(b []byte, at time.Time) ([]byte, error) {
	if len(b) < 1+packedTimeLen {
		return nil, fmt.Errorf("forwarded command: %v: %d bytes, too short", errPacked, len(b))
	}
	out := appendPackedTime(append(make([]byte, 0, len(b)), b[0]), at)
	return append(out, b[1+packedTimeLen:]...), nil
}

func appendPackedTime(b []byte, t time.Time) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(t.Unix()))
	return binary.BigEndian.AppendUint32(b, uint32(t.Nanosecond()))
}

func appendPackedString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// packedDecoder reads fields off b; the first failure sticks in err and
// every later read returns a zero value.
type packedDecoder struct {
	b   []byte
	err error
}

func (d *packedDecoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{errPacked}, args...)...)
	}
}

func (d *packedDecoder) time() time.Time {
	if d.err != nil {
		return time.Time{}
	}
	if len(d.b) < packedTimeLen {
		d.fail("a time cut short")
		return time.Time{}
	}
	sec, nsec := int64(binary.BigEndian.Uint64(d.b)), binary.BigEndian.Uint32(d.b[8:])
	d.b = d.b[packedTimeLen:]
	if nsec >= 1e9 {
		d.fail("a time with %d nanoseconds", nsec)
		return time.Time{}
	}
	if sec < minPackedUnix || sec > maxPackedUnix {
		d.fail("a time %d s from 1970, outside the years 0-9999", sec)
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

func (d *packedDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	switch {
	case n <= 0:
		d.fail("a number cut short or too long")
		return 0
	case n > 1 && d.b[n-1] == 0:
		d.fail("a number in more bytes than it takes") // one encoding per value
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *packedDecoder) int() int {
	u := d.uvarint()
	if d.err != nil {
		return 0
	}
	v := int64(u>>1) ^ -int64(u&1) // zigzag, as binary.Varint
	if v < math.MinInt || v > math.MaxInt {
		d.fail("%d out of range", v)
		return 0
	}
	return int(v)
}

func (d *packedDecoder) string() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.fail("a string of %d bytes with %d left", n, len(d.b))
		return ""
	}
	s := d.b[:n]
	d.b = d.b[n:]
	if !utf8.Valid(s) {
		d.fail("a string that is not UTF-8")
		return ""
	}
	return string(s)
}
