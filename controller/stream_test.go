package controller

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
)

// TestGatewayStream speaks the gateway stream (api.StreamProto) line by
// line: a view on connect, a report answered once committed, and each
// kind of bad input refused with a status that says what is wrong, the
// state untouched. Then the client's Watch reports from inside its
// callback, as the agent does.
func TestGatewayStream(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	ctx := context.Background()
	op, off := person(t, cfg, n, "operator1"), person(t, cfg, n, "officer1")
	if _, err := op.AddAgency(ctx, api.Agency{Code: "000.00.00.H29", Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := op.AddGateway(ctx, api.Gateway{ID: "gw1", Agency: "000.00.00.H29"}); err != nil {
		t.Fatal(err)
	}
	tr, err := off.IssueToken(ctx, "gw1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := enroll(t, cfg, n, tr.Token)
	if err != nil {
		t.Fatal(err)
	}

	type conn struct {
		*tls.Conn
		sc *bufio.Scanner
	}
	dial := func(tc *tls.Config) *conn {
		t.Helper()
		tc = tc.Clone()
		tc.NextProtos = []string{api.StreamProto}
		c, err := tls.Dial("tcp", n.Addr().String(), tc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if p := c.ConnectionState().NegotiatedProtocol; p != api.StreamProto {
			t.Fatalf("ALPN: %q", p)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		sc := bufio.NewScanner(c)
		sc.Buffer(nil, 1<<20)
		return &conn{c, sc}
	}
	send := func(c *conn, line string) {
		t.Helper()
		if _, err := c.Write([]byte(line + "\n")); err != nil {
			t.Fatal(err)
		}
	}
	next := func(c *conn) api.WatchEvent {
		t.Helper()
		for c.sc.Scan() {
			if len(c.sc.Bytes()) > 0 {
				var ev api.WatchEvent
				if err := json.Unmarshal(c.sc.Bytes(), &ev); err != nil {
					t.Fatalf("%s: %v", c.sc.Bytes(), err)
				}
				return ev
			}
		}
		t.Fatalf("stream ended: %v", c.sc.Err())
		return api.WatchEvent{}
	}
	// refused reads the one event a refused stream gets, then its end.
	refused := func(c *conn, code int, msg string) {
		t.Helper()
		ev := next(c)
		if ev.Code != code || !strings.Contains(ev.Error, msg) || ev.Ack != 0 || ev.View != nil {
			t.Fatalf("want a refusal %d %q, got %+v", code, msg, ev)
		}
		if c.sc.Scan() {
			t.Fatalf("the stream goes on after a refusal: %q", c.sc.Bytes())
		}
	}

	people := filepath.Join(filepath.Dir(cfg.DataDir), "people")

	// The view on connect, and a report answered once committed.
	c := dial(gw.tls)
	send(c, `{"since":0}`)
	first := next(c)
	if first.View == nil || first.View.Gateway != "gw1" {
		t.Fatalf("first event: want gw1's view, got %+v", first)
	}
	send(c, `{"seq":7,"report":{"policy_version":0,"raft_index":`+jsonNum(first.View.RaftIndex)+`,"ruleset_digest":"sha256:ab","peers":0}}`)
	if ev := next(c); ev.Ack != 7 || ev.Code != 0 {
		t.Fatalf("want ack 7, got %+v", ev)
	}
	g, _ := n.State().Gateway("gw1")
	if g.Report == nil || g.Report.RulesetDigest != "sha256:ab" || g.Report.RaftIndex != first.View.RaftIndex {
		t.Fatalf("report not recorded: %+v", g.Report)
	}
	// A line that is not a report ends the stream, saying why; nothing recorded.
	send(c, `{"seq":8,"report":{"ruleset_digest":"sha256:cd"},"extra":1}`)
	refused(c, http.StatusBadRequest, `unknown field "extra"`)
	if g, _ := n.State().Gateway("gw1"); g.Report.RulesetDigest != "sha256:ab" {
		t.Fatalf("a refused line changed the report: %+v", g.Report)
	}

	for _, tc := range []struct{ name, hello, msg string }{
		{"not JSON", `hello`, "stream hello: invalid character"},
		{"unknown field", `{"since":0,"deltas":true}`, `unknown field "deltas"`},
		{"two values", `{"since":0} {"since":1}`, "more than one JSON value"},
		{"too long", `{"since":0,"x":"` + strings.Repeat("a", maxBody) + `"}`, "a line longer than 65536 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(gw.tls)
			send(c, tc.hello)
			refused(c, http.StatusBadRequest, tc.msg)
		})
	}
	t.Run("seq 0", func(t *testing.T) {
		c := dial(gw.tls)
		send(c, `{"since":0}`)
		next(c)
		send(c, `{"seq":0,"report":{}}`)
		refused(c, http.StatusBadRequest, "seq must be set")
	})
	t.Run("a person", func(t *testing.T) {
		tc, err := api.TLSConfig(cfg.pkiPath(rootFile), filepath.Join(people, "operator1.crt"), filepath.Join(people, "operator1.key"))
		if err != nil {
			t.Fatal(err)
		}
		refused(dial(tc), http.StatusUnauthorized, "a gateway's client certificate is required")
	})
	t.Run("no certificate", func(t *testing.T) {
		tc := gw.tls.Clone()
		tc.Certificates = nil
		refused(dial(tc), http.StatusUnauthorized, "a gateway's client certificate is required")
	})

	// The client: reports made from inside Watch's callback (the agent
	// reports each view it applied) are answered on the stream, sixteen
	// made at once each with its own answer, and the stream goes on.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = gw.client.Watch(wctx, 0, func(v *api.View) error {
		errs := make(chan error, 16)
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Go(func() {
				errs <- gw.client.Report(wctx, api.Report{RaftIndex: v.RaftIndex, RulesetDigest: fmt.Sprintf("sha256:%02x", i)})
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				return err
			}
		}
		if err := gw.client.Report(wctx, api.Report{RaftIndex: v.RaftIndex, RulesetDigest: "sha256:ef"}); err != nil {
			return err
		}
		return context.Canceled
	})
	if err != context.Canceled {
		t.Fatalf("Watch: %v", err)
	}
	if g, _ := n.State().Gateway("gw1"); g.Report.RulesetDigest != "sha256:ef" {
		t.Fatalf("the last report from Watch's callback is not the one recorded: %+v", g.Report)
	}

	// One stream per gateway on a node: a newer one closes the older,
	// which is told why.
	older := dial(gw.tls)
	send(older, `{"since":0}`)
	next(older)
	newer := dial(gw.tls)
	send(newer, `{"since":0}`)
	next(newer)
	refused(older, http.StatusConflict, "replaced by a newer stream of gateway gw1")
	newer.Close()

	// The API port still speaks HTTP/2 to everyone else.
	ptc, err := api.TLSConfig(cfg.pkiPath(rootFile), filepath.Join(people, "operator1.crt"), filepath.Join(people, "operator1.key"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: ptc, ForceAttemptHTTP2: true}}).Get("https://" + n.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Proto != "HTTP/2.0" {
		t.Fatalf("API over %s, want HTTP/2.0", resp.Proto)
	}

	// A stream opened with a certificate since renewed: its reports are
	// refused, and at its next view or heartbeat it ends, saying why.
	old := dial(gw.tls)
	send(old, `{"since":0}`)
	next(old)
	if _, err := gw.client.Renew(ctx, api.RenewRequest{CSR: newCSR(t)}); err != nil {
		t.Fatal(err)
	}
	send(old, `{"seq":1,"report":{"ruleset_digest":"sha256:00"}}`)
	if ev := next(old); ev.Ack != 1 || ev.Code != http.StatusForbidden || !strings.Contains(ev.Error, "is not gateway gw1's current certificate") {
		t.Fatalf("report on a renewed certificate's stream: %+v", ev)
	}
	if _, err := off.PublishPolicy(ctx, "p.yaml", "version: 1\ngroups:\n  all:\n    level: province\nrules: []\n"); err != nil {
		t.Fatal(err)
	}
	refused(old, http.StatusForbidden, "is not gateway gw1's current certificate")
	if g, _ := n.State().Gateway("gw1"); g.Report.RulesetDigest == "sha256:00" {
		t.Fatal("a report on a renewed certificate's stream was recorded")
	}

	// A revoked gateway's stream ends, and a new one is refused.
	c = dial(gw.tls)
	send(c, `{"since":0}`)
	next(c)
	if _, err := off.Revoke(ctx, api.RevokeRequest{Gateway: "gw1", Reason: "keyCompromise"}); err != nil {
		t.Fatal(err)
	}
	for c.sc.Scan() {
		if ev := c.sc.Bytes(); len(ev) > 0 && !strings.Contains(string(ev), `"delta"`) {
			t.Fatalf("after revocation: %s", ev)
		}
	}
	refused(dial(gw.tls), http.StatusForbidden, "gateway gw1 is not enrolled (revoked)")
}

func jsonNum(v uint64) string { b, _ := json.Marshal(v); return string(b) }

// FuzzStreamLine feeds arbitrary bytes to the reader of a gateway's
// stream lines: it never panics, never accepts a line over maxBody, and
// what it accepts decodes the same on its own.
func FuzzStreamLine(f *testing.F) {
	f.Add([]byte(`{"since":12}` + "\n"))
	f.Add([]byte(`{"seq":1,"report":{"policy_version":2,"raft_index":9,"ruleset_digest":"sha256:ab","peers":3}}` + "\n"))
	f.Add([]byte(`{"seq":1,"report":{}} {"seq":2}` + "\n"))
	f.Add([]byte(`{"seq":1,"x":2}` + "\n"))
	f.Add([]byte("\n\n"))
	f.Add([]byte(`{"seq":1,"report":{}}` + "\v\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(data), 16)
		var sr api.StreamReport
		err := readStreamLine(br, &sr)
		if err != nil {
			return
		}
		line := data[:bytes.IndexByte(data, '\n')]
		if len(line) > maxBody {
			t.Fatalf("accepted a line of %d bytes", len(line))
		}
		var again api.StreamReport
		if err := json.Unmarshal(line, &again); err != nil || !reflect.DeepEqual(sr, again) {
			t.Fatalf("%q: accepted as %+v, alone %+v (%v)", line, sr, again, err)
		}
	})
}

// TestHeartbeatOnlyWhenIdle: a stream gets a heartbeat heartbeat after
// the last line written to it, not while views or acks keep it busy.
func TestHeartbeatOnlyWhenIdle(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	st := &gwStream{out: &streamConn{}, nextBeat: t0.Add(heartbeat)}
	if st.beatDue(t0.Add(heartbeat / 2)) {
		t.Fatal("heartbeat due before its time")
	}
	// A line written 5 s before the heartbeat fell due puts it off.
	st.out.written.Store(t0.Add(heartbeat - 5*time.Second).UnixNano())
	if st.beatDue(t0.Add(heartbeat + time.Second)) {
		t.Fatal("heartbeat on a stream written to 6 s ago")
	}
	if want := t0.Add(2*heartbeat - 5*time.Second); !st.nextBeat.Equal(want) {
		t.Fatalf("next heartbeat at %s, want %s (heartbeat after the last write)", st.nextBeat, want)
	}
	// Nothing written since: due heartbeat after the last write.
	at := t0.Add(2*heartbeat - 4*time.Second)
	if !st.beatDue(at) {
		t.Fatal("no heartbeat on a stream idle for a whole period")
	}
	if !st.nextBeat.Equal(at.Add(heartbeat)) || st.beatDue(at.Add(time.Second)) {
		t.Fatalf("after a heartbeat the next falls due at %s, want %s", st.nextBeat, at.Add(heartbeat))
	}
}
