package api

import (
	"encoding/json"
	"slices"
	"testing"
)

// TestSerialsReadsOneSerial: renewed_from as a list, or as the single
// serial of the builds that introduced it.
func TestSerialsReadsOneSerial(t *testing.T) {
	for in, want := range map[string]Serials{
		`{"renewed_from":"0a1b"}`:        {"0a1b"},
		`{"renewed_from":["0a1b","0c"]}`: {"0a1b", "0c"},
		`{"renewed_from":""}`:            nil,
		`{"id":"gw1"}`:                   nil,
	} {
		var g Gateway
		if err := json.Unmarshal([]byte(in), &g); err != nil || !slices.Equal(g.RenewedFrom, want) {
			t.Errorf("%s: %v %v, want %v", in, g.RenewedFrom, err, want)
		}
	}
	var g Gateway
	if err := json.Unmarshal([]byte(`{"renewed_from":3}`), &g); err == nil {
		t.Error("a number read as serials")
	}
}
