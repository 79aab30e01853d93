package main

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
)

// TestGatewayShow: gateway list shows the peers a gateway left out beside
// its peers, gateway show says why under the row, with what the gateway
// sent kept from the terminal; a healthy gateway shows neither.
func TestGatewayShow(t *testing.T) {
	sick := api.Gateway{ID: "gw1", Agency: "000.00.00.H29", Status: api.StatusEnrolled, Ruleset: api.RulesetFailed,
		Report: &api.Report{PolicyVersion: 3, RaftIndex: 40, Peers: 2, At: time.Now(),
			FailedIndex: 42, ApplyError: "apply firewall: invalid argument",
			PeersLeftOut: 1, PeerError: "invalid peer: peer 1 (gw3, k3): public key: bad\ninvalid peer: peer 1 (gw3, k3): \x1b[2Jcleared"}}
	healthy := api.Gateway{ID: "gw2", Agency: "000.00.00.H49", Status: api.StatusEnrolled, Ruleset: api.RulesetOK,
		Report: &api.Report{PolicyVersion: 3, RaftIndex: 41, Peers: 3, At: time.Now()}}
	show := func(g api.Gateway, output string) string {
		var out bytes.Buffer
		a := &app{out: &out, output: output}
		if err := a.print(g, gatewayHeader, func(w io.Writer) { gatewayRow(w, g); gatewayProblems(w, g) }); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}

	got := show(sick, "table")
	for _, want := range []string{
		"FAILED", "2 (1 LEFT OUT)",
		"\nCould not apply view 42 (it enforces view 40):\n  apply firewall: invalid argument\n",
		"\nPeers of view 40 left out: 1 (not in its WireGuard device in full):\n  invalid peer: peer 1 (gw3, k3): public key: bad\n  invalid peer: peer 1 (gw3, k3): \uFFFD[2Jcleared\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("gateway show does not say %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "\x1b") {
		t.Errorf("gateway show sent the gateway's escape sequence to the terminal:\n%q", got)
	}
	if got := show(healthy, "table"); strings.Contains(got, "LEFT OUT") || strings.Contains(got, "Could not") ||
		strings.Contains(got, "left out") || strings.Count(got, "\n") != 2 {
		t.Errorf("a healthy gateway:\n%s", got)
	}

	var back api.Gateway
	if err := json.Unmarshal([]byte(show(sick, "json")), &back); err != nil || back.Report.PeersLeftOut != 1 || back.Report.PeerError != sick.Report.PeerError {
		t.Errorf("gateway show -o json: %+v %v", back.Report, err)
	}
}
