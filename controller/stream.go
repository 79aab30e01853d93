package controller

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// The gateway stream (api.StreamProto): http.Server hands a connection
// that negotiated it by ALPN to serveStream once the TLS handshake has
// verified the client's chain. The stream is the agent's watch and its
// reports on one connection. Its own goroutine (net/http's, which did
// the handshake) only reads reports; views and heartbeats are written by
// the node's few sender goroutines (streamSender), which each stream
// wakes when its view changes. At 20,000 gateways, goroutine stacks were
// most of what a gateway cost a node: net/http's HTTP/2 server kept
// three per watch (docs/performance.md).

const (
	// streamHelloTimeout bounds the wait for the gateway's first line.
	streamHelloTimeout = 10 * time.Second
	// streamWriteTimeout bounds one write to a gateway: a gateway that
	// takes nothing for that long (its socket buffer full) loses its
	// stream, and reconnects to get its view whole. While it lasts, the
	// write holds one of the node's senders, so it is short.
	streamWriteTimeout = 5 * time.Second
	// streamReadBuffer holds a report line; longer lines (up to maxBody)
	// are assembled from it.
	streamReadBuffer = 1 << 10
)

// serveStream serves one gateway stream until the gateway leaves, its
// stream fails or the gateway is no longer enrolled. A stream that is
// refused gets one event saying why.
func (n *Node) serveStream(_ *http.Server, conn *tls.Conn, _ http.Handler) {
	defer conn.Close()
	out := &streamConn{conn: conn}
	leaf := peerLeaf(conn.ConnectionState())
	// In the HTTP API's order: a node still replaying its log does not
	// know recent enrollments and renewals yet.
	var id ca.Identity
	var status int
	var err error
	if !n.caughtUp() {
		status, err = http.StatusServiceUnavailable, errors.New("starting: replaying the raft log, try again shortly")
	} else if id, status, err = n.admitGateway(leaf); err == nil {
		if ok, _ := n.limits.allow(limitKey(id)); !ok {
			status, err = http.StatusTooManyRequests, errors.New("rate limit exceeded: slow down")
		}
	}
	if err != nil {
		out.event(api.WatchEvent{Code: status, Error: err.Error()})
		return
	}
	br := bufio.NewReaderSize(conn, streamReadBuffer)
	conn.SetReadDeadline(time.Now().Add(streamHelloTimeout))
	var hello api.StreamHello
	if err := readStreamLine(br, &hello); err != nil {
		out.event(api.WatchEvent{Code: http.StatusBadRequest, Error: "stream hello: " + err.Error()})
		return
	}
	conn.SetReadDeadline(time.Time{})

	st := &gwStream{gateway: id.Name, opened: ca.Serial(leaf), serial: ca.Serial(leaf), notAfter: leaf.NotAfter, out: out, since: hello.Since,
		renewCalls: conn.ConnectionState().NegotiatedProtocol == api.StreamProtoRenew}
	stop, ok := n.streams.add(st)
	if !ok {
		out.event(api.WatchEvent{Code: http.StatusServiceUnavailable, Error: "the node is shutting down"})
		return
	}
	defer stop()
	n.streamReports(br, st)
}

// readmit checks again what admitted st, and the certificate's expiry:
// a stream outlives the handshake that checked its certificate, so every
// report, view and heartbeat is admitted anew (the certificate may have
// been renewed, revoked or have expired since).
func (n *Node) readmit(st *gwStream) (int, error) {
	// The stream's serials are held while the state is read: a renewal
	// on the stream sets its pending serial (under certMu) before it
	// commits, and moves the serial on after. Read apart, a renewal
	// that committed in between made a stream standing for the current
	// certificate look stale, and closed it under the gateway renewing
	// on it.
	st.certMu.Lock()
	serial, notAfter, pending := st.serial, st.notAfter, st.pending
	status, err := n.currentGatewayCert(st.gateway, serial)
	if err != nil && (st.renewingFrom || pending != "" && n.State().gatewayCertIs(st.gateway, pending) == nil) {
		// A renewal on the stream committed a moment before the stream
		// learns its serial, or one from its stale certificate is on
		// its way (streamRenew looks again when it ends).
		status, err = 0, nil
	}
	st.certMu.Unlock()
	if err != nil {
		return status, err
	}
	if time.Now().After(notAfter) {
		return http.StatusForbidden, fmt.Errorf("certificate %s of gateway %s expired at %s", serial, st.gateway, notAfter.UTC().Format(time.RFC3339))
	}
	return 0, nil
}

// gwStream is a gateway stream as the senders see it.
type gwStream struct {
	gateway string
	opened  string // the serial of the certificate the stream was opened with
	out     *streamConn
	// The gateway's certificate: the one it was opened with, or the one
	// renewed on it (certMu).
	certMu   sync.Mutex
	serial   string
	notAfter time.Time
	pending  string // the serial of a renewal in flight on the stream
	// renewingFrom: a renewal from the stream's certificate, no longer
	// the current one (its renewal's answer lost), is in flight; the
	// senders leave the stream open until it ends.
	renewingFrom bool
	// renewCalls: the gateway takes renewal calls (api.StreamProtoRenew).
	renewCalls bool

	// Under streamSender.mu.
	queued   bool      // in the senders' queue
	busy     bool      // a sender is on it
	dirty    bool      // the view may have changed since a sender last looked
	beat     bool      // a heartbeat is due
	nextBeat time.Time // when the next one falls due
	gone     bool      // ended: nothing more is sent

	// Only the sender that is on it (busy) touches these.
	since uint64    // raft index of the view the gateway has
	sent  *hubView  // the view it has, when this stream sent it
	told  renewTold // the renewal call the gateway was told of on this stream
}

// renewTold is a renewal call a stream's gateway was told of, and the
// certificate it held then: a gateway whose renewal still predates the
// call (a second call made while it renewed for the first) is told again.
type renewTold struct {
	call   time.Time
	serial string
}

// streamSender writes views and heartbeats to the node's gateway
// streams from a fixed number of goroutines. A stream woken while a
// sender is on it is looked at again by that sender, so a stream's lines
// are written in order by one goroutine at a time.
type streamSender struct {
	n      *Node
	mu     sync.Mutex
	all    map[*gwStream]struct{}
	byGW   map[string]*gwStream // the newest stream of each gateway
	q      []*gwStream
	wake   chan struct{} // a stream was queued (capacity 1)
	closed bool          // the node is shutting down: no new streams
}

// streamSenders is how many goroutines write to gateway streams. A
// stuck gateway holds one for at most streamWriteTimeout.
func streamSenders() int { return max(8, 4*runtime.GOMAXPROCS(0)) }

func newStreamSender(n *Node) *streamSender {
	return &streamSender{n: n, all: map[*gwStream]struct{}{}, byGW: map[string]*gwStream{}, wake: make(chan struct{}, 1)}
}

// add starts sending to st: its view at once, then every change. stop
// ends it (and must be called once the stream's reader is done). It
// refuses a stream once the node is shutting down. A gateway has one
// stream per node: an older one is closed, saying why (an agent that
// reconnects after its connection died unseen has the newer).
func (s *streamSender) add(st *gwStream) (stop func(), ok bool) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, false
	}
	old := s.byGW[st.gateway]
	if old != nil {
		old.gone = true
	}
	st.nextBeat = time.Now().Add(heartbeat)
	s.all[st] = struct{}{}
	s.byGW[st.gateway] = st
	s.mu.Unlock()
	if old != nil {
		old.out.event(api.WatchEvent{Code: http.StatusConflict, Error: "replaced by a newer stream of gateway " + st.gateway})
		old.out.conn.Close()
	}
	unsubscribe := s.n.hub.subscribe(st.gateway, func() { s.queue(st, false) })
	s.queue(st, false)
	return func() {
		unsubscribe()
		s.mu.Lock()
		st.gone = true
		delete(s.all, st)
		if s.byGW[st.gateway] == st {
			delete(s.byGW, st.gateway)
		}
		s.mu.Unlock()
	}, true
}

// closeAll closes every stream, telling each gateway why (http.Server's
// Shutdown calls it: it does not know these connections are busy), and
// refuses new ones. The gateways move to another node.
func (s *streamSender) closeAll() {
	s.mu.Lock()
	s.closed = true
	all := make([]*gwStream, 0, len(s.all))
	for st := range s.all {
		all = append(all, st)
	}
	s.mu.Unlock()
	for _, st := range all {
		st.out.conn.SetWriteDeadline(time.Now().Add(time.Second))
		st.out.event(api.WatchEvent{Code: http.StatusServiceUnavailable, Error: "the node is shutting down"})
		st.out.conn.Close()
	}
}

// queue marks st as having a changed view (or a heartbeat due) and
// queues it unless a sender has it already.
func (s *streamSender) queue(st *gwStream, beat bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queueLocked(st, beat)
}

func (s *streamSender) queueLocked(st *gwStream, beat bool) {
	if st.gone {
		return
	}
	if beat {
		st.beat = true
	} else {
		st.dirty = true
	}
	if st.busy || st.queued {
		return
	}
	st.queued = true
	s.q = append(s.q, st)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run is one sender; the one given a ticker (every second) also queues
// the heartbeats that fall due.
func (s *streamSender) run(ctx context.Context, tick <-chan time.Time) {
	for {
		s.mu.Lock()
		var st *gwStream
		if len(s.q) > 0 {
			st = s.q[0]
			s.q[0] = nil
			s.q = s.q[1:]
			st.queued, st.busy = false, true
			if len(s.q) > 0 {
				select { // another sender can take the next
				case s.wake <- struct{}{}:
				default:
				}
			}
		}
		s.mu.Unlock()
		if st != nil {
			s.serve(st)
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case now := <-tick:
			s.mu.Lock()
			for st := range s.all {
				if st.beatDue(now) {
					s.queueLocked(st, true)
				}
			}
			s.mu.Unlock()
		}
	}
}

// cert returns the serial and expiry of the certificate st stands for.
func (st *gwStream) cert() (serial string, notAfter time.Time) {
	st.certMu.Lock()
	defer st.certMu.Unlock()
	return st.serial, st.notAfter
}

// beatDue says whether st's heartbeat is due at now, and moves the next
// one on. A heartbeat falls due heartbeat after the last line written to
// the stream, counted from when it opened: spread over the period rather
// than every stream's at once, and never on a stream that views or acks
// keep busy (a write is a system call; at 20,000 gateways heartbeats
// were 5% of a node's CPU). streamSender.mu must be held.
func (st *gwStream) beatDue(now time.Time) bool {
	if !now.After(st.nextBeat) {
		return false
	}
	if last := st.out.lastWrite(); now.Sub(last) < heartbeat {
		st.nextBeat = last.Add(heartbeat)
		return false
	}
	st.nextBeat = now.Add(heartbeat)
	return true
}

// serve sends st what it is owed until nothing is; st.busy is set.
func (s *streamSender) serve(st *gwStream) {
	for {
		s.mu.Lock()
		dirty, beat, gone := st.dirty, st.beat, st.gone
		st.dirty, st.beat = false, false
		s.mu.Unlock()
		ok := !gone
		if ok && dirty {
			ok = s.send(st)
		}
		if ok && beat {
			ok = s.admitted(st) && st.out.heartbeat() == nil
		}
		s.mu.Lock()
		if !ok {
			st.gone = true
		}
		if st.gone || !st.dirty && !st.beat {
			st.busy = false
			s.mu.Unlock()
			if !ok {
				st.out.conn.Close() // the reader sees it and ends the stream
			}
			return
		}
		s.mu.Unlock()
	}
}

// send writes st's newer view, if any, and a renewal call it is owed;
// false ends the stream: a failed
// write, or a certificate no longer admitted (the gateway revoked or
// removed, the certificate renewed, revoked or expired), which the
// gateway is told.
func (s *streamSender) send(st *gwStream) bool {
	if !s.admitted(st) {
		return false
	}
	if msgs, v := s.n.viewsToSend(st.gateway, st.since, st.sent, true); v != nil {
		if st.out.send(msgs) != nil {
			return false
		}
		st.since, st.sent = v.head.RaftIndex, v
	}
	return s.callRenewal(st)
}

// wakeAll has every stream looked at again (a renewal call was made).
func (s *streamSender) wakeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for st := range s.all {
		s.queueLocked(st, false)
	}
}

// admitted says whether st may still be written to; if not, the gateway
// is told why.
func (s *streamSender) admitted(st *gwStream) bool {
	if status, err := s.n.readmit(st); err != nil {
		st.out.event(api.WatchEvent{Code: status, Error: err.Error()})
		return false
	}
	return true
}

// streamReports reads the gateway's reports until the stream ends, and
// answers each once it is committed (or refused). A line that is not a
// report ends the stream, after an event saying what is wrong.
func (n *Node) streamReports(br *bufio.Reader, st *gwStream) {
	for {
		var sr api.StreamReport
		if err := readStreamLine(br, &sr); err != nil {
			if !errors.Is(err, errStreamRead) {
				st.out.event(api.WatchEvent{Code: http.StatusBadRequest, Error: "stream report: " + err.Error()})
			}
			return
		}
		if sr.Seq == 0 {
			st.out.event(api.WatchEvent{Code: http.StatusBadRequest, Error: "stream report: seq must be set (from 1)"})
			return
		}
		ack := api.WatchEvent{Ack: sr.Seq}
		status, err := n.readmit(st)
		from := ""
		if serial, notAfter := st.cert(); err != nil && status == http.StatusForbidden && sr.Renew != nil && time.Now().Before(notAfter) && n.renewableFrom(st.gateway, serial) {
			// The stream's certificate was renewed by a renewal whose
			// answer was lost (on another node, or over HTTPS): it
			// may renew from it, as over HTTPS (handleRenew).
			from, err = serial, nil
		}
		if err != nil {
			ack.Code, ack.Error = status, err.Error()
		} else if ok, _ := n.limits.allow(limitKey(ca.Identity{Kind: ca.KindGateway, Name: st.gateway})); !ok {
			ack.Code, ack.Error = http.StatusTooManyRequests, "rate limit exceeded: slow down"
		} else if sr.Renew != nil {
			ack = n.streamRenew(st, sr, from)
		} else if err := n.recordReport(context.Background(), st.gateway, sr.Report); err != nil {
			ack.Code, ack.Error = n.errorStatus(err)
		}
		if st.out.event(ack) != nil {
			return
		}
	}
}

// streamRenew renews the gateway's certificate on its stream
// (api.StreamProtoRenew): the stream then stands for the new certificate,
// as a new connection with it would (the renewal proved possession of
// both keys, the old one through this stream's handshake).
func (n *Node) streamRenew(st *gwStream, sr api.StreamReport, from string) api.WatchEvent {
	ack := api.WatchEvent{Ack: sr.Seq}
	if !st.renewCalls {
		ack.Code, ack.Error = http.StatusBadRequest, "renewal on "+api.StreamProto+": renew over HTTPS, or open "+api.StreamProtoRenew
		return ack
	}
	serial, _ := st.cert()
	held := "" // the stream's own certificate, if renewed on since: the gateway may not have had the answers
	switch {
	case from != "":
		// As over HTTPS: the certificate kept for a lost answer is the
		// one presented, which the stream stands for. (RenewedFrom
		// keeps one such certificate: a gateway that also lost this
		// stream's earlier answers, and holds the one the stream was
		// opened with, can no longer renew with that one.)
		held = from
		st.certMu.Lock()
		st.renewingFrom = true
		st.certMu.Unlock()
	case serial != st.opened:
		held = st.opened
	}
	// Bounded as the agent's wait for the answer is: past it, the
	// gateway has given up on this attempt.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, cert, err := n.renewGateway(ctx, st.gateway, serial, from, held, *sr.Renew, func(serial string) {
		st.certMu.Lock()
		st.pending = serial
		st.certMu.Unlock()
	})
	st.certMu.Lock()
	if err == nil {
		st.serial, st.notAfter = resp.Serial, cert.NotAfter
	}
	// An outcome left unknown (the commit timed out) may still commit:
	// the stream then looks stale and is closed, and the gateway renews
	// again from the certificate it holds, over HTTPS.
	st.pending, st.renewingFrom = "", false
	st.certMu.Unlock()
	// The sender looks at the stream again: a call made while this
	// renewal was signed is still owed (callRenewal), and a stream
	// whose renewal from a stale certificate failed is closed.
	n.streams.queue(st, false)
	if err != nil {
		ack.Code, ack.Error = n.errorStatus(err)
		return ack
	}
	ack.Renewed = resp
	return ack
}

// errStreamRead wraps a failed read (the gateway left, or the node closed
// the stream), as opposed to a line that does not parse.
var errStreamRead = errors.New("read")

// readStreamLine reads one line of at most maxBody bytes into v, which
// must hold all of it: unknown fields and trailing data are errors.
func readStreamLine(br *bufio.Reader, v any) error {
	line, err := api.ReadLine(br, maxBody)
	if errors.Is(err, api.ErrLineTooLong) {
		return fmt.Errorf("a line longer than %d bytes", maxBody)
	}
	if err != nil {
		return fmt.Errorf("%w: %w", errStreamRead, err)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("more than one JSON value on a line")
	}
	return nil
}

// streamConn writes lines to a gateway stream, from the senders and the
// report reader alike.
type streamConn struct {
	mu      sync.Mutex
	conn    *tls.Conn
	written atomic.Int64 // when a line was last written, in Unix nanoseconds
}

// lastWrite is when a line was last written to the stream.
func (s *streamConn) lastWrite() time.Time { return time.Unix(0, s.written.Load()) }

// lineBuffers are shared by all streams: a stream holds none between
// writes (tens of thousands of streams each keeping the buffer of its
// largest view added up).
var lineBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// send writes msgs as JSON lines, in one write.
func (s *streamConn) send(msgs []any) error {
	buf := lineBuffers.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 64<<10 { // a full view of a large gateway: not kept
			buf.Reset()
			lineBuffers.Put(buf)
		}
	}()
	enc := json.NewEncoder(buf)
	for _, m := range msgs {
		if err := enc.Encode(m); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.write(buf.Bytes())
}

func (s *streamConn) event(ev api.WatchEvent) error { return s.send([]any{ev}) }

func (s *streamConn) heartbeat() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.write([]byte("\n"))
}

// write sends b; s.mu is held. The deadline is per 64 KiB: a large view
// to a slow but moving gateway goes through; one that takes nothing for
// streamWriteTimeout fails.
func (s *streamConn) write(b []byte) error {
	for len(b) > 0 {
		chunk := b[:min(len(b), 64<<10)]
		s.conn.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		if _, err := s.conn.Write(chunk); err != nil {
			return err
		}
		b = b[len(chunk):]
	}
	s.written.Store(time.Now().UnixNano())
	return nil
}

// peerLeaf is the client certificate the handshake verified, if any.
func peerLeaf(cs tls.ConnectionState) *x509.Certificate {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	return cs.PeerCertificates[0]
}
