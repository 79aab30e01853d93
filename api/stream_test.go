package api

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestStream runs Watch and Report against a server that speaks the
// gateway stream the way the controller does: the hello carries since,
// views and deltas arrive whole through fn, a report made inside fn is
// answered on the stream (the server's HTTP report endpoint fails the
// test), a refused report and a refused stream come back as
// *StatusErrors, and once Watch has returned Report goes over HTTP.
func TestStream(t *testing.T) {
	refuse := false
	httpReports := 0
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpReports++
		w.WriteHeader(http.StatusNoContent)
	}))
	srv.TLS = &tls.Config{NextProtos: []string{StreamProto, "http/1.1"}}
	srv.Config.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){StreamProto: func(_ *http.Server, c *tls.Conn, _ http.Handler) {
		defer c.Close()
		br := bufio.NewReader(c)
		send := func(ev WatchEvent) {
			b, _ := json.Marshal(ev)
			c.Write(append(b, '\n'))
		}
		line, _ := br.ReadBytes('\n')
		var hello StreamHello
		if err := json.Unmarshal(line, &hello); err != nil || hello.Since != 5 {
			t.Errorf("hello %q: %v", line, err)
		}
		if refuse {
			send(WatchEvent{Code: http.StatusForbidden, Error: "gateway gw1 is not enrolled (revoked)"})
			return
		}
		v := &View{Gateway: "gw1", RaftIndex: 6, Peers: []Peer{{Gateway: "gw2"}}}
		send(WatchEvent{View: v})
		c.Write([]byte("\n")) // a heartbeat
		send(WatchEvent{Delta: &ViewDelta{Gateway: "gw1", BaseIndex: 6, RaftIndex: 7, PeersSet: []Peer{{Gateway: "gw3"}}}})
		for i := 0; ; i++ {
			line, err := br.ReadBytes('\n')
			if err != nil {
				return
			}
			var sr StreamReport
			if err := json.Unmarshal(line, &sr); err != nil {
				t.Errorf("report %q: %v", line, err)
				return
			}
			ack := WatchEvent{Ack: sr.Seq}
			if sr.Report.RaftIndex != 7 {
				ack.Code, ack.Error = http.StatusConflict, "stale"
			}
			send(ack)
		}
	}}
	srv.StartTLS()
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	c := NewClient(srv.URL, &tls.Config{RootCAs: roots})
	ctx := context.Background()
	done := errors.New("done")
	var got *View
	err := c.Watch(ctx, 5, func(v *View) error {
		if v.RaftIndex < 7 {
			return nil
		}
		got = v
		if err := c.Report(ctx, Report{RaftIndex: 7}); err != nil {
			t.Errorf("report: %v", err)
		}
		var se *StatusError
		if err := c.Report(ctx, Report{RaftIndex: 6}); !errors.As(err, &se) || se.Code != http.StatusConflict || se.Msg != "stale" {
			t.Errorf("refused report: %v", err)
		}
		return done
	})
	if err != done {
		t.Fatalf("Watch: %v", err)
	}
	if got == nil || len(got.Peers) != 2 || got.Peers[1].Gateway != "gw3" {
		t.Fatalf("view with the delta applied: %+v", got)
	}
	if httpReports != 0 {
		t.Fatalf("%d reports went over HTTP while the stream was open", httpReports)
	}
	if err := c.Report(ctx, Report{}); err != nil || httpReports != 1 {
		t.Fatalf("report without a stream: %v, %d over HTTP", err, httpReports)
	}

	refuse = true
	var se *StatusError
	if err := c.Watch(ctx, 5, func(*View) error { return nil }); !errors.As(err, &se) || se.Code != http.StatusForbidden || !strings.Contains(se.Msg, "revoked") {
		t.Fatalf("refused stream: %v", err)
	}
}

// TestReadLine: a line of exactly the limit passes and the next line
// still reads; one byte more is ErrLineTooLong; a last line without its
// newline is io.ErrUnexpectedEOF, not a clean end.
func TestReadLine(t *testing.T) {
	const max = 40
	in := strings.Repeat("a", max) + "\n" + "next\n" + strings.Repeat("b", max+1) + "\n"
	br := bufio.NewReaderSize(strings.NewReader(in), 16)
	if l, err := ReadLine(br, max); err != nil || string(l) != strings.Repeat("a", max) {
		t.Fatalf("line of the limit: %q %v", l, err)
	}
	if l, err := ReadLine(br, max); err != nil || string(l) != "next" {
		t.Fatalf("next line: %q %v", l, err)
	}
	if _, err := ReadLine(br, max); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("line over the limit: %v", err)
	}
	br = bufio.NewReaderSize(strings.NewReader("{\"view\":"), 16)
	if _, err := ReadLine(br, max); err != io.ErrUnexpectedEOF {
		t.Fatalf("cut-off line: %v", err)
	}
	br = bufio.NewReaderSize(strings.NewReader(""), 16)
	if _, err := ReadLine(br, max); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
}
