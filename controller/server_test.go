package controller

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

// TestDecode: a body is one JSON value of known fields, within the limit,
// and nothing after it but white space.
func TestDecode(t *testing.T) {
	for _, tt := range []struct {
		body string
		code int // 0: accepted
		msg  string
	}{
		{`{"name":"a"}`, 0, ""},
		{"{\"name\":\"a\"}\n\t ", 0, ""},
		{`{"name":"a"}garbage`, 400, "data after the JSON value"},
		{`{"name":"a"}{"name":"b"}`, 400, "data after the JSON value"},
		{`{"name":"a","extra":1}`, 400, "unknown field"},
		{`{"name":"` + strings.Repeat("a", 100) + `"}`, 413, "larger than 64 bytes"},
	} {
		var v struct {
			Name string `json:"name"`
		}
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tt.body))
		ok := false
		limitBody(64, func(w http.ResponseWriter, r *http.Request) { ok = decode(w, r, &v) })(w, r)
		switch {
		case tt.code == 0 && (!ok || v.Name != "a"):
			t.Errorf("%q refused: %d %s", tt.body, w.Code, w.Body)
		case tt.code != 0 && (ok || w.Code != tt.code || !strings.Contains(w.Body.String(), tt.msg)):
			t.Errorf("%q: accepted %v, %d %s; want %d %q", tt.body, ok, w.Code, w.Body, tt.code, tt.msg)
		}
	}
}

// TestRateLimitForwardedOCSP: an OCSP request a member node forwards is
// counted against the client it names, not against the node (its other
// clients would be refused with it); anyone else's X-Forwarded-For is
// ignored; a limited OCSP request gets OCSP's "try later".
func TestRateLimitForwardedOCSP(t *testing.T) {
	l := newLimiter(1, func() time.Time { return t0 }) // a burst of 2
	l.memberHost = func(host string) bool { return host == "192.0.2.1" }
	h := l.middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	get := func(from, xff string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, "/ocsp/abcd/MEow", nil)
		r.RemoteAddr = from + ":40000"
		if xff != "" {
			r.Header.Set("X-Forwarded-For", xff)
			r.Header.Set(proxiedHeader, "ctl1")
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	limited := func(w *httptest.ResponseRecorder) bool {
		return bytes.Equal(w.Body.Bytes(), ocsp.TryLaterErrorResponse)
	}
	for i := range 2 {
		if w := get("192.0.2.1", "198.51.100.1"); limited(w) {
			t.Fatalf("forwarded request %d of client 1 limited", i)
		}
	}
	if w := get("192.0.2.1", "198.51.100.1"); !limited(w) || w.Header().Get("Content-Type") != "application/ocsp-response" {
		t.Fatalf("client 1's third request: %d %q", w.Code, w.Body)
	}
	if w := get("192.0.2.1", "198.51.100.2"); limited(w) {
		t.Fatal("another client forwarded by the same node was limited")
	}
	// Not a member: its X-Forwarded-For names nobody.
	for range 2 {
		get("203.0.113.9", "198.51.100.3")
	}
	if w := get("203.0.113.9", "198.51.100.4"); !limited(w) {
		t.Fatal("a non-member escaped its limit by naming other clients")
	}
}
