package api

import (
	"strings"
	"testing"
)

func TestCheckEndpoint(t *testing.T) {
	for _, ok := range []string{"192.0.2.11:51820", "[2001:db8::11]:51820", "10.0.0.1:1", "127.0.0.1:65535"} {
		if err := CheckEndpoint(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for s, want := range map[string]string{
		"192.0.2.11":           "want IP:port",
		"192.0.2.11:518200":    "want IP:port",
		"192.0.2.11:0":         "port 0",
		"gw.example:51820":     "want IP:port",
		"0.0.0.0:51820":        "not a unicast address",
		"224.0.0.1:51820":      "not a unicast address",
		"[fe80::1%eth0]:51820": "link-local",
		"169.254.1.1:51820":    "link-local",
		"":                     "want IP:port",
		"192.0.2.11:51820 ":    "want IP:port",
	} {
		if err := CheckEndpoint(s); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error with %q", s, err, want)
		}
	}
}
