package certaudit

import (
	"strings"
	"testing"

	"github.com/govnet/govnet/api"
)

func TestCheck(t *testing.T) {
	gw := func(serial, gateway, approver, from string) api.Certificate {
		return api.Certificate{Serial: serial, Kind: "gateway", Subject: gateway, Gateway: gateway, Requester: "gateway:" + gateway, Approver: approver, RenewedFrom: from}
	}
	certs := []api.Certificate{
		{Serial: "i1", Kind: "intermediate", Subject: "govnet ctl1 intermediate", Requester: "node:ctl1"},
		{Serial: "n1", Kind: "node", Subject: "ctl1", Requester: "node:ctl1"},
		{Serial: "n2", Kind: "node", Subject: "ctl1", Requester: "node:ctl1", RenewedFrom: "n1"},
		{Serial: "p1", Kind: "person", Subject: "alice", Requester: "node:ctl1"}, // at init
		{Serial: "p2", Kind: "person", Subject: "dora", Requester: "officer1", Approver: "officer2"},
		{Serial: "p3", Kind: "person", Subject: "dora", Requester: "dora", RenewedFrom: "p2"},
		gw("g1", "gw1", "officer1", ""),
		gw("g2", "gw1", "", "g1"),
		gw("g3", "gw1", "", "g2"),
		// Not accounted for:
		gw("x1", "gw2", "", ""),   // no approval
		gw("x2", "gw2", "", "x1"), // renewed an unapproved one
		gw("x3", "gw3", "", "g3"), // renewed another gateway's
		gw("x4", "gw4", "", "zz"), // renewed one not held
		{Serial: "x5", Kind: "person", Subject: "eve", Requester: "eve", RenewedFrom: "p2"}, // another person's
		{Serial: "x6", Kind: "node", Subject: "ctl2", Requester: "node:ctl1"},               // a node's made by another
		{Serial: "x7", Kind: "intermediate", Subject: "rogue", Requester: "officer1"},
		gw("x8", "gw5", "", "x9"), gw("x9", "gw5", "", "x8"), // a cycle
		{Serial: "x10", Kind: "person", Subject: "mallory", Requester: "node:ctl1", RenewedFrom: "x11"},
	}
	got := map[string]string{}
	for _, f := range Check(certs) {
		got[f.Serial] = f.Problem
	}
	for _, ok := range []string{"i1", "n1", "n2", "p1", "p2", "p3", "g1", "g2", "g3"} {
		if p, bad := got[ok]; bad {
			t.Errorf("%s flagged: %s", ok, p)
		}
	}
	for serial, want := range map[string]string{
		"x1": "neither an approver", "x2": "renewed x1, which no approval", "x3": "another gateway", "x4": "does not hold",
		"x5": "another person", "x6": "not by node ctl2", "x7": "not by its node", "x8": "renewed x9, which no approval", "x9": "renewed x8, which no approval", "x10": "does not hold",
	} {
		if !strings.Contains(got[serial], want) {
			t.Errorf("%s: %q, want %q", serial, got[serial], want)
		}
	}
}
