package controller

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"sync"
	"time"
)

// handshakeListener accepts TCP connections and completes each one's TLS
// handshake on a goroutine of its own, which ends with it, before
// http.Server sees the connection. http.Server would run the handshake
// on the goroutine that then serves the connection for as long as it
// lasts; the handshake's verification grows that goroutine's stack to
// 16–32 KiB, and Go gives a stack back only slowly, one halving per
// garbage collection. A gateway stream's connection is served by that
// one goroutine for days, so its stack is most of what the gateway costs
// the node (docs/performance.md, "Controller fan-out under load").
type handshakeListener struct {
	net.Listener
	cfg     *tls.Config
	timeout time.Duration
	log     *slog.Logger

	ready  chan *tls.Conn
	done   chan struct{}
	closed sync.Once
}

func newHandshakeListener(ln net.Listener, cfg *tls.Config, timeout time.Duration, log *slog.Logger) *handshakeListener {
	l := &handshakeListener{Listener: ln, cfg: cfg, timeout: timeout, log: log, ready: make(chan *tls.Conn), done: make(chan struct{})}
	go l.accept()
	return l
}

// accept takes connections until the listener is closed.
func (l *handshakeListener) accept() {
	defer l.Close()
	var wait time.Duration // after a temporary error, as http.Server does
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				wait = min(max(2*wait, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(wait):
					continue
				case <-l.done:
					return
				}
			}
			return
		}
		wait = 0
		go l.handshake(c)
	}
}

// handshake completes c's handshake and hands it to Accept, or drops it.
func (l *handshakeListener) handshake(c net.Conn) {
	tc := tls.Server(c, l.cfg)
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		l.log.Debug("TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	select {
	case l.ready <- tc:
	case <-l.done:
		c.Close()
	}
}

// Accept returns the next connection whose handshake is complete.
func (l *handshakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; connections mid-handshake are closed.
func (l *handshakeListener) Close() error {
	var err error
	l.closed.Do(func() {
		close(l.done)
		err = l.Listener.Close()
	})
	return err
}
