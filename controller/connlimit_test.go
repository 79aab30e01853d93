package controller

import (
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// TestConnLimit: an address holds at most max connections open; one more
// is closed on accept, and a closed one frees its place.
func TestConnLimit(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var refused atomic.Uint64
	ln := newConnLimitListener(raw, 2, &refused, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer ln.Close()
	accepted := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	next := func() net.Conn {
		select {
		case c := <-accepted:
			return c
		case <-time.After(5 * time.Second):
			t.Fatal("no connection accepted")
			return nil
		}
	}
	dial()
	first := next()
	dial()
	next()
	// The third is closed by the listener: its reader sees the end.
	third := dial()
	third.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := third.Read(make([]byte, 1)); err == nil {
		t.Fatal("the connection over the cap was served")
	}
	if n := refused.Load(); n != 1 {
		t.Fatalf("refused %d, want 1", n)
	}
	first.Close()
	first.Close() // closing twice gives the place back once
	dial()
	next()
	dial()
	for deadline := time.Now().Add(5 * time.Second); refused.Load() != 2 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := refused.Load(); n != 2 {
		t.Fatalf("refused %d after the place was taken again, want 2", n)
	}
	select {
	case c := <-accepted:
		t.Fatalf("a connection over the cap was accepted: %v", c.RemoteAddr())
	default:
	}
}
