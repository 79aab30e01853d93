package controller

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
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
		ok := decode(w, r, 64, &v)
		switch {
		case tt.code == 0 && (!ok || v.Name != "a"):
			t.Errorf("%q refused: %d %s", tt.body, w.Code, w.Body)
		case tt.code != 0 && (ok || w.Code != tt.code || !strings.Contains(w.Body.String(), tt.msg)):
			t.Errorf("%q: accepted %v, %d %s; want %d %q", tt.body, ok, w.Code, w.Body, tt.code, tt.msg)
		}
	}
}
