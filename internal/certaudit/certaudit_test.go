package certaudit

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
)

func TestCheck(t *testing.T) {
	gw := func(serial, gateway, approver, from string) api.Certificate {
		return api.Certificate{Serial: serial, Kind: "gateway", Subject: gateway, Gateway: gateway, Requester: "gateway:" + gateway, Approver: approver, RenewedFrom: from}
	}
	t0 := time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC)
	certs := []api.Certificate{
		{Serial: "i1", Kind: "intermediate", Subject: "govnet ctl1 intermediate", Requester: "node:ctl1"},
		{Serial: "n1", Kind: "node", Subject: "ctl1", Requester: "node:ctl1", Issuer: "aa", NotBefore: t0},
		{Serial: "n2", Kind: "node", Subject: "ctl1", Requester: "node:ctl1", RenewedFrom: "n1", Issuer: "aa", NotBefore: t0.Add(time.Hour)},
		{Serial: "p1", Kind: "person", Subject: "alice", Requester: "node:ctl1", Issuer: "aa", NotBefore: t0}, // at init
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
		{Serial: "x12", Kind: "person", Subject: "mallory", Requester: "node:ctl1", Issuer: "aa", NotBefore: t0.Add(time.Hour)}, // not at init
		{Serial: "x13", Kind: "person", Subject: "mallory", Requester: "node:ctl9", Issuer: "aa", NotBefore: t0},                // no such node
		gw("x14", "gw6", "nobody", ""), // not an officer
	}
	got := map[string]string{}
	for _, f := range Check(certs, map[string]bool{"officer1": true, "officer2": true}) {
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
		"x12": "not issued with that node's first", "x13": "not issued with that node's first", "x14": `approver "nobody" is not an officer`,
	} {
		if !strings.Contains(got[serial], want) {
			t.Errorf("%s: %q, want %q", serial, got[serial], want)
		}
	}
}

// TestCheckLongChain: a renewal chain of 300,000 certificates is walked
// without recursion.
func TestCheckLongChain(t *testing.T) {
	const n = 300_000
	certs := make([]api.Certificate, n)
	for i := range certs {
		certs[i] = api.Certificate{Serial: fmt.Sprintf("%x", i+1), Kind: "gateway", Subject: "gw1", Gateway: "gw1", Requester: "gateway:gw1"}
		if i == 0 {
			certs[i].Approver = "officer1"
		} else {
			certs[i].RenewedFrom = fmt.Sprintf("%x", i)
		}
	}
	// The newest first: the walk goes down the whole chain at once.
	slices.Reverse(certs)
	if f := Check(certs, map[string]bool{"officer1": true}); len(f) != 0 {
		t.Fatalf("%d findings, the first %+v", len(f), f[0])
	}
}

// TestOfficers: officers now and officers before, not the others.
func TestOfficers(t *testing.T) {
	got := Officers([]api.Person{
		{Name: "a", Role: "officer"},
		{Name: "b", Role: "operator", FormerRoles: []string{"officer"}},
		{Name: "c", Role: "officer", Status: api.PersonRevoked},
		{Name: "d", Role: "auditor", FormerRoles: []string{"operator"}},
	})
	if len(got) != 3 || !got["a"] || !got["b"] || !got["c"] {
		t.Fatalf("officers %v, want a, b and c", got)
	}
}
