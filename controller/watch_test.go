package controller

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
)

// TestWatchDeltas: a stream opened with deltas sends the full view first,
// then only what changed, each against the view sent before, and the
// client's Watch rebuilds exactly the hub's views from them. A client
// that does not ask for deltas gets whole views.
func TestWatchDeltas(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	ctx := context.Background()
	op, off := person(t, cfg, n, "operator1"), person(t, cfg, n, "officer1")
	for _, a := range []api.Agency{{Code: "000.00.00.H29", Name: "a"}, {Code: "000.00.00.H49", Name: "b"}, {Code: "000.00.00.H01", Name: "c"}} {
		if _, err := op.AddAgency(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	gws, tokens := map[string]*enrolled{}, map[string]string{}
	for _, g := range []api.Gateway{{ID: "gw1", Agency: "000.00.00.H29"}, {ID: "gw2", Agency: "000.00.00.H49"}, {ID: "gw3", Agency: "000.00.00.H01"}} {
		if _, err := op.AddGateway(ctx, g); err != nil {
			t.Fatal(err)
		}
		tr, err := off.IssueToken(ctx, g.ID, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if tokens[g.ID] = tr.Token; g.ID == "gw3" {
			continue // enrolls once gw1 watches
		}
		if gws[g.ID], err = enroll(t, cfg, n, tr.Token); err != nil {
			t.Fatal(err)
		}
	}
	const pol = "version: 1\ngroups:\n  provinces:\n    level: province\nrules:\n  - from: [provinces]\n    to: [provinces]\n    ports: [tcp/22]\n"
	if _, err := off.PublishPolicy(ctx, "p.yaml", pol); err != nil {
		t.Fatal(err)
	}

	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream := func(query string) *bufio.Scanner {
		req, _ := http.NewRequestWithContext(wctx, http.MethodGet, "https://"+n.Addr().String()+"/v1/watch?"+query, nil)
		resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: gws["gw1"].tls}}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		return sc
	}
	next := func(sc *bufio.Scanner, v any) {
		t.Helper()
		reflect.ValueOf(v).Elem().SetZero() // decode into a fresh value: absent fields are empty
		for sc.Scan() {
			if len(sc.Bytes()) > 0 {
				if err := json.Unmarshal(sc.Bytes(), v); err != nil {
					t.Fatalf("%s: %v", sc.Bytes(), err)
				}
				return
			}
		}
		t.Fatalf("stream ended: %v", sc.Err())
	}
	hubView := func() *api.View {
		v, _ := n.hub.view("gw1")
		return v.View()
	}
	deltas, whole := stream("deltas=1&since=0"), stream("since=0")
	var first api.WatchEvent
	next(deltas, &first)
	if first.View == nil || first.Delta != nil || len(first.View.Peers) != 1 {
		t.Fatalf("first event: want gw1's whole view with gw2 as peer, got %+v", first)
	}
	var plain api.View
	next(whole, &plain)
	if plain.Gateway != "gw1" || plain.RaftIndex != first.View.RaftIndex {
		t.Fatalf("stream without deltas: %+v", plain)
	}
	cur := first.View

	// gw3 enrolls: gw1 gains one peer and one rule, and the delta says just that.
	if _, err := enroll(t, cfg, n, tokens["gw3"]); err != nil {
		t.Fatal(err)
	}
	var ev api.WatchEvent
	next(deltas, &ev)
	d := ev.Delta
	if ev.View != nil || d == nil || d.BaseIndex != cur.RaftIndex || len(d.PeersSet) != 1 || d.PeersSet[0].Gateway != "gw3" ||
		len(d.PeersRemoved) != 0 || len(d.RulesAdded) != 1 || len(d.RulesRemoved) != 0 {
		t.Fatalf("enroll of gw3: want a delta adding peer gw3 and its rule, got %+v", ev)
	}
	var err error
	if cur, err = d.Apply(cur); err != nil {
		t.Fatal(err)
	}

	// A policy that adds a port: rules only.
	if _, err := off.PublishPolicy(ctx, "p.yaml", pol[:len(pol)-2]+", tcp/443]\n"); err != nil {
		t.Fatal(err)
	}
	next(deltas, &ev)
	if d = ev.Delta; d == nil || d.PolicyVersion != 2 || len(d.PeersSet)+len(d.PeersRemoved) != 0 || len(d.RulesAdded) != 2 || len(d.RulesRemoved) != 0 {
		t.Fatalf("new port: want a delta adding two rules, got %+v", ev)
	}
	if cur, err = d.Apply(cur); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cur, hubView()) {
		t.Fatalf("views rebuilt from deltas differ from the hub's:\n got %+v\nwant %+v", cur, hubView())
	}

	// The client's Watch does the same and hands out whole views.
	var last *api.View
	err = gws["gw1"].client.Watch(wctx, 0, func(v *api.View) error {
		last = v
		if v.RaftIndex >= cur.RaftIndex {
			return context.Canceled
		}
		return nil
	})
	if err != context.Canceled || !reflect.DeepEqual(last, hubView()) {
		t.Fatalf("Watch: %v, last view %+v", err, last)
	}
}
