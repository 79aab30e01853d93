package api

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// A gateway stream is one TLS connection to a controller node that
// carries the gateway's view (a full view, then deltas, as WatchEvents)
// and its reports, instead of an HTTP/2 stream for the view and requests
// beside it. It is chosen by ALPN on the API port, so it needs no port or
// certificate of its own; the gateway's client certificate authenticates
// it as it does every API call. A controller keeps one goroutine and a
// few kilobytes per stream, where net/http's HTTP/2 server keeps three
// goroutines and a 4 KiB write buffer per watch: with tens of thousands
// of gateways per node, that is most of what a gateway costs it.
//
// The protocol is JSON lines both ways. The gateway sends a StreamHello,
// then StreamReports whenever it likes; the controller sends WatchEvents:
// views and deltas, an Ack for each report (with Code and Error if it was
// refused), and an empty line as a heartbeat when nothing else was
// written for 15 seconds. A stream
// the controller refuses (not an enrolled gateway's current certificate,
// a node still starting, a rate limit) gets one event with Code and Error
// and is closed.
const StreamProto = "govnet-stream/1"

// StreamProtoRenew is StreamProto with renewal calls: the controller may
// also send a WatchEvent with Renew set, asking the gateway to renew its
// certificate now (an officer's govnetctl cert renew-all). A client that
// handles them (Client.OnRenewCall) offers it before StreamProto; a node
// that does not know it picks StreamProto and sends none.
const StreamProtoRenew = "govnet-stream/2"

// RenewCallSpread: a gateway called to renew waits a random part of it
// first, so that a whole network does not renew in the same second.
const RenewCallSpread = 10 * time.Second

// StreamHello is the first line of a gateway stream.
type StreamHello struct {
	Since uint64 `json:"since"` // the raft index of the view the gateway has; 0 for none
}

// StreamReport is a report sent on a gateway stream, or on
// StreamProtoRenew a renewal of the gateway's certificate (Renew set,
// Report empty; the answer carries the certificate in Renewed). Seq,
// which the gateway picks (non-zero, increasing), is echoed in the
// answer's Ack.
type StreamReport struct {
	Seq    uint64        `json:"seq"`
	Report Report        `json:"report"`
	Renew  *RenewRequest `json:"renew,omitempty"`
}

// Limits of the stream, both ways.
const (
	// MaxStreamLine bounds a line from the controller: a view of a
	// gateway that reaches tens of thousands of others.
	MaxStreamLine = 64 << 20
	// streamIdle is how long a gateway waits for any line, heartbeats
	// included (sent every 15 s), before it takes the node for dead.
	streamIdle = time.Minute
	// streamWriteTimeout bounds a write of the hello or a report.
	streamWriteTimeout = 10 * time.Second
)

// errStreamGone says a report found no open stream to go on.
var errStreamGone = errors.New("gateway stream closed")

// stream is the client's side of an open gateway stream.
type stream struct {
	conn *tls.Conn
	wmu  sync.Mutex // one writer at a time: reports come from any goroutine

	mu      sync.Mutex
	seq     uint64
	waiting map[uint64]chan answer // requests sent, by Seq, until answered
	view    *View                  // the newest view not yet handed to fn
	err     error                  // why the stream ended, once done is closed
	ready   chan struct{}          // a view is waiting (capacity 1)
	done    chan struct{}          // closed when the stream ends
	onRenew func(reason string)    // renewal calls go here (StreamProtoRenew)
	// renewable: the node speaks StreamProtoRenew, which carries
	// renewals (Client.Renew) as well as reports.
	renewable bool
	// renewOn says the node renewed the gateway's certificate on this
	// stream (StreamProtoRenew), which carries on under the new one.
	renewOn atomic.Bool
}

// answer is the node's answer to a request on the stream, or why there
// is none.
type answer struct {
	ev  WatchEvent
	err error
}

// Watch streams the gateway's view, calling fn for every view newer than
// since, until ctx ends, fn fails or the stream breaks. It holds a
// gateway stream (StreamProto) to the node at the base URL, over which
// Report sends reports while it is open. The controller sends one full
// view, then deltas against it, which Watch applies: fn always sees whole
// views, and must not modify them. When views arrive faster than fn
// takes them, fn gets the newest. A delta that does not apply (it should
// not happen) ends the call with ErrDeltaBase; a new call starts with a
// full view again. A refused stream ends with a *StatusError.
func (c *Client) Watch(ctx context.Context, since uint64, fn func(*View) error) error {
	s, err := c.openStream(ctx, since)
	if err != nil {
		return err
	}
	defer s.close(nil)
	stop := context.AfterFunc(ctx, func() { s.close(ctx.Err()) })
	defer stop()
	c.conns.mu.Lock()
	c.conns.gw = s
	c.conns.mu.Unlock()
	defer func() {
		c.conns.mu.Lock()
		if c.conns.gw == s {
			c.conns.gw = nil
		}
		c.conns.mu.Unlock()
	}()
	go s.read()
	for {
		ended := false
		select {
		case <-s.ready:
		case <-s.done:
			ended = true
		}
		// A view that came before the end is still handed over.
		if v := s.take(); v != nil {
			if err := fn(v); err != nil {
				return err
			}
		}
		if ended {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return s.err
		}
	}
}

// openStream dials the node, checks that it speaks StreamProto and sends
// the hello.
func (c *Client) openStream(ctx context.Context, since uint64) (*stream, error) {
	u, err := url.Parse(c.base)
	if err != nil {
		return nil, fmt.Errorf("controller URL %q: %w", c.base, err)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	c.conns.mu.Lock()
	tc := c.conns.tc
	c.conns.mu.Unlock()
	if tc == nil {
		tc = &tls.Config{}
	}
	tc = tc.Clone()
	tc.NextProtos = []string{StreamProto}
	onRenew := c.renewCallHandler()
	if onRenew != nil {
		tc.NextProtos = []string{StreamProtoRenew, StreamProto}
	}
	if tc.ServerName == "" {
		tc.ServerName = u.Hostname()
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}, Config: tc}
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	nc, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("gateway stream to %s: %w", addr, err)
	}
	conn := nc.(*tls.Conn)
	p := conn.ConnectionState().NegotiatedProtocol
	if p != StreamProto && (p != StreamProtoRenew || onRenew == nil) {
		conn.Close()
		return nil, fmt.Errorf("gateway stream to %s: the node does not serve %s (ALPN %q)", addr, StreamProto, p)
	}
	s := &stream{conn: conn, waiting: map[uint64]chan answer{}, ready: make(chan struct{}, 1), done: make(chan struct{}), onRenew: onRenew,
		renewable: p == StreamProtoRenew}
	if err := s.write(ctx, StreamHello{Since: since}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("gateway stream to %s: %w", addr, err)
	}
	return s, nil
}

// write sends one line.
func (s *stream) write(ctx context.Context, v any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	line = append(line, '\n')
	if err := ctx.Err(); err != nil {
		return err
	}
	// Not ctx's deadline: a write cut short breaks the connection, and a
	// report's caller giving up must not end the stream.
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.conn.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	_, err = s.conn.Write(line)
	return err
}

// read reads the controller's lines until the stream ends: views and
// deltas are applied and left for Watch (the newest wins), answers go to
// the reports waiting for them.
func (s *stream) read() {
	br := bufio.NewReaderSize(idleReader{s.conn}, 16<<10)
	var cur *View
	for {
		line, err := ReadLine(br, MaxStreamLine)
		if err == io.EOF {
			s.close(ErrStreamEnded)
			return
		}
		if err != nil {
			s.close(fmt.Errorf("watch: %w", err))
			return
		}
		if len(line) == 0 {
			continue // heartbeat
		}
		var ev WatchEvent
		if err := json.Unmarshal(line, &ev); err != nil {
			s.close(fmt.Errorf("watch: decode: %w", err))
			return
		}
		switch {
		case ev.Ack != 0:
			var err error
			if ev.Code != 0 {
				err = &StatusError{Code: ev.Code, Msg: ev.Error}
			}
			s.answer(ev.Ack, answer{ev: ev, err: err})
			continue
		case ev.Renew != "" && s.onRenew != nil:
			s.onRenew(ev.Renew)
			continue
		case ev.Code != 0:
			s.close(&StatusError{Code: ev.Code, Msg: ev.Error})
			return
		case ev.View != nil:
			cur = ev.View
		case ev.Delta != nil:
			v, err := ev.Delta.Apply(cur)
			if err != nil {
				s.close(fmt.Errorf("watch: index %d: %w", ev.Delta.RaftIndex, err))
				return
			}
			cur = v
		default:
			s.close(errors.New("watch: an event with neither a view, a delta nor an answer"))
			return
		}
		s.mu.Lock()
		s.view = cur
		s.mu.Unlock()
		select {
		case s.ready <- struct{}{}:
		default: // Watch has been told already
		}
	}
}

// idleReader gives each read of the connection streamIdle: a large view
// arriving slowly is not cut off, a node that sends nothing (not even
// its heartbeat) is given up.
type idleReader struct{ conn *tls.Conn }

func (r idleReader) Read(p []byte) (int, error) {
	r.conn.SetReadDeadline(time.Now().Add(streamIdle))
	return r.conn.Read(p)
}

// ErrLineTooLong is returned by ReadLine for a line over its limit.
var ErrLineTooLong = errors.New("line too long")

// ReadLine returns the next line of a gateway stream without its
// newline, reading at most max bytes of it: a longer line is an error
// wrapping ErrLineTooLong, without reading the rest. The slice is valid
// until the next read from br. A last line without its newline is
// io.ErrUnexpectedEOF.
func ReadLine(br *bufio.Reader, max int) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		buf := append([]byte(nil), line...)
		for err == bufio.ErrBufferFull && len(buf) <= max {
			line, err = br.ReadSlice('\n')
			buf = append(buf, line...)
		}
		line = buf
	}
	if len(line) > max+1 || len(line) == max+1 && line[max] != '\n' {
		return nil, fmt.Errorf("%w: over %d bytes", ErrLineTooLong, max)
	}
	if err == io.EOF && len(line) > 0 {
		return nil, io.ErrUnexpectedEOF // a line cut off
	}
	if err != nil {
		return nil, err
	}
	return line[:len(line)-1], nil
}

// take returns the view waiting for Watch, if any.
func (s *stream) take() *View {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.view
	s.view = nil
	return v
}

// report sends r on the stream and waits for its answer.
func (s *stream) report(ctx context.Context, r Report) error {
	_, err := s.request(ctx, "report", func(seq uint64) StreamReport { return StreamReport{Seq: seq, Report: r} })
	return err
}

// renew asks for a new certificate on the stream (StreamProtoRenew).
func (s *stream) renew(ctx context.Context, r RenewRequest) (*RenewResponse, error) {
	ev, err := s.request(ctx, "renew", func(seq uint64) StreamReport { return StreamReport{Seq: seq, Renew: &r} })
	if err != nil {
		return nil, err
	}
	if ev.Renewed == nil {
		return nil, errors.New("renew: the node answered without a certificate")
	}
	s.renewOn.Store(true)
	return ev.Renewed, nil
}

// request sends the line line(seq) makes and waits for its answer.
func (s *stream) request(ctx context.Context, what string, line func(seq uint64) StreamReport) (WatchEvent, error) {
	ch := make(chan answer, 1)
	s.mu.Lock()
	if s.waiting == nil {
		s.mu.Unlock()
		return WatchEvent{}, errStreamGone
	}
	s.seq++
	seq := s.seq
	s.waiting[seq] = ch
	s.mu.Unlock()
	if err := s.write(ctx, line(seq)); err != nil {
		s.answer(seq, answer{})
		if ctx.Err() != nil {
			return WatchEvent{}, err
		}
		s.close(fmt.Errorf("%s: %w", what, err))
		return WatchEvent{}, fmt.Errorf("%s: %w: %w", what, errStreamGone, err)
	}
	select {
	case a := <-ch:
		return a.ev, a.err
	case <-ctx.Done():
		s.answer(seq, answer{})
		return WatchEvent{}, ctx.Err()
	}
}

// answer hands a to the request with Seq seq, if it still waits.
func (s *stream) answer(seq uint64, a answer) {
	s.mu.Lock()
	ch := s.waiting[seq]
	delete(s.waiting, seq)
	s.mu.Unlock()
	if ch != nil {
		ch <- a
	}
}

// close ends the stream (the first error given is the one Watch returns)
// and fails the reports still waiting.
func (s *stream) close(err error) {
	s.mu.Lock()
	if s.waiting == nil {
		s.mu.Unlock()
		return
	}
	waiting := s.waiting
	s.waiting = nil
	if err == nil {
		err = ErrStreamEnded
	}
	s.err = err
	close(s.done)
	s.mu.Unlock()
	s.conn.Close()
	for _, ch := range waiting {
		ch <- answer{err: fmt.Errorf("%w: %w", errStreamGone, err)}
	}
}
