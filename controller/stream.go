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
	"net/http"
	"sync"
	"time"

	"github.com/govnet/govnet/api"
)

// The gateway stream (api.StreamProto): http.Server hands a connection
// that negotiated it by ALPN to serveStream once the TLS handshake has
// verified the client's chain. The stream is the agent's watch and its
// reports on one connection, served by two goroutines (this one writes
// views, one reads reports), with nothing of net/http's HTTP/2 server
// per gateway: at 20,000 gateways that server's three goroutines and
// buffers per watch were most of a node's memory (docs/performance.md).

const (
	// streamHelloTimeout bounds the wait for the gateway's first line.
	streamHelloTimeout = 10 * time.Second
	// streamWriteTimeout bounds one write to a gateway: a gateway that
	// reads nothing for that long loses its stream (and reconnects),
	// and never holds up anyone else's.
	streamWriteTimeout = 30 * time.Second
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
	id, status, err := n.admitGateway(peerLeaf(conn.ConnectionState()))
	switch {
	case err != nil:
	case !n.caughtUp():
		status, err = http.StatusServiceUnavailable, errors.New("starting: replaying the raft log, try again shortly")
	default:
		if ok, _ := n.limits.allow(id.Kind + "/" + id.Name); !ok {
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

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reading := make(chan struct{})
	go func() {
		defer close(reading)
		defer cancel() // the gateway left, or broke the protocol
		n.streamReports(ctx, br, out, id.Name)
	}()
	n.watchViews(ctx, id.Name, hello.Since, true, out)
	conn.Close()
	<-reading
}

// streamReports reads the gateway's reports until the stream ends, and
// answers each once it is committed (or refused). A line that is not a
// report ends the stream, after an event saying what is wrong.
func (n *Node) streamReports(ctx context.Context, br *bufio.Reader, out *streamConn, gateway string) {
	for {
		var sr api.StreamReport
		if err := readStreamLine(br, &sr); err != nil {
			if !errors.Is(err, errStreamRead) {
				out.event(api.WatchEvent{Code: http.StatusBadRequest, Error: "stream report: " + err.Error()})
			}
			return
		}
		if sr.Seq == 0 {
			out.event(api.WatchEvent{Code: http.StatusBadRequest, Error: "stream report: seq must be set (from 1)"})
			return
		}
		ack := api.WatchEvent{Ack: sr.Seq}
		if ok, _ := n.limits.allow("gateway/" + gateway); !ok {
			ack.Code, ack.Error = http.StatusTooManyRequests, "rate limit exceeded: slow down"
		} else if err := n.recordReport(ctx, gateway, sr.Report); err != nil {
			ack.Code, ack.Error = n.errorStatus(err)
		}
		if out.event(ack) != nil {
			return
		}
	}
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
	if len(bytes.TrimSpace(line[dec.InputOffset():])) > 0 {
		return errors.New("more than one JSON value on a line")
	}
	return nil
}

// streamConn writes lines to a gateway stream, from the view writer and
// the report reader alike.
type streamConn struct {
	mu   sync.Mutex
	conn *tls.Conn
	buf  bytes.Buffer
}

// send writes msgs as JSON lines, in one write.
func (s *streamConn) send(msgs []any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Reset()
	enc := json.NewEncoder(&s.buf)
	for _, m := range msgs {
		if err := enc.Encode(m); err != nil {
			return err
		}
	}
	err := s.write(s.buf.Bytes())
	if s.buf.Cap() > 64<<10 {
		s.buf = bytes.Buffer{} // a full view of a large gateway: not kept
	}
	return err
}

func (s *streamConn) event(ev api.WatchEvent) error { return s.send([]any{ev}) }

func (s *streamConn) heartbeat() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.write([]byte("\n"))
}

// write sends b; s.mu is held.
func (s *streamConn) write(b []byte) error {
	s.conn.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	_, err := s.conn.Write(b)
	return err
}

// peerLeaf is the client certificate the handshake verified, if any.
func peerLeaf(cs tls.ConnectionState) *x509.Certificate {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	return cs.PeerCertificates[0]
}
