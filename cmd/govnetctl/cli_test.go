package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/controller"
	"github.com/govnet/govnet/hsm/hsmtest"
)

// testNode starts a single-node controller initialised at initAt (the
// people's certificates are issued then) with the people named, and
// returns the govnetctl arguments that act as each of them.
func testNode(t *testing.T, initAt time.Time, people ...controller.Person) map[string][]string {
	t.Helper()
	hsmtest.Require(t)
	hc := hsmtest.NewToken(t)
	dir := t.TempDir()
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte(hc.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := controller.Config{
		Node: "ctl1", DataDir: filepath.Join(dir, "data"), RaftAddr: freeAddr(t), APIAddr: "127.0.0.1:0",
		OverlayPrefix: "100.64.0.0/24",
		HSM:           controller.HSMConfig{Module: hc.Module, TokenLabel: hc.TokenLabel, PINFile: pinFile},
	}
	peopleDir := filepath.Join(dir, "people")
	if err := controller.Init(context.Background(), controller.InitOptions{Config: cfg, PeopleDir: peopleDir, People: people, Now: initAt}); err != nil {
		t.Fatal(err)
	}
	n, err := controller.Start(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	for deadline := time.Now().Add(15 * time.Second); n.Ready() != nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("node not ready: %v", n.Ready())
		}
	}
	as := map[string][]string{}
	for _, p := range people {
		as[p.Name] = []string{"--controller", "https://" + n.Addr().String(), "--root", filepath.Join(cfg.DataDir, "pki", "root.pem"),
			"--cert", filepath.Join(peopleDir, p.Name+".crt"), "--key", filepath.Join(peopleDir, p.Name+".key")}
	}
	return as
}

// TestExpiredPersonCertificate: with an expired certificate every command
// says so and what to do (a new invitation: it cannot renew), instead of
// the TLS error the controller's refusal makes (a broken pipe, "bad
// certificate") or the advice to renew.
func TestExpiredPersonCertificate(t *testing.T) {
	as := testNode(t, time.Now().Add(-100*24*time.Hour), controller.Person{Name: "officer1", Role: ca.RoleOfficer})
	for _, args := range [][]string{{"gateway", "list"}, {"person", "renew"}, {"cluster", "status"}} {
		_, err := runErr(as["officer1"], args)
		if err == nil {
			t.Fatalf("govnetctl %v with an expired certificate: no error", args)
		}
		for _, want := range []string{"officer1.crt expired at", "cannot renew", "person invite officer1 --role officer", "person enroll officer1"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("govnetctl %v with an expired certificate: %v\nwant it to say %q", args, err, want)
			}
		}
	}
}

// TestEmptyListsJSON: a list with nothing in it is [] in -o json, never
// null (which `jq '.[]'` refuses), whatever the controller sent.
func TestEmptyListsJSON(t *testing.T) {
	as := testNode(t, time.Time{}, controller.Person{Name: "officer1", Role: ca.RoleOfficer})
	for _, args := range [][]string{
		{"agency", "list"}, {"agency", "list", "--search", "hue"}, {"gateway", "list"}, {"policy", "history"},
		{"request", "list"}, {"cert", "list", "--revoked"}, {"cert", "audit"},
	} {
		out, err := runErr(as["officer1"], args, "-o", "json")
		if err != nil {
			t.Errorf("govnetctl %v -o json: %v", args, err)
		}
		if strings.TrimSpace(out) != "[]" {
			t.Errorf("govnetctl %v -o json printed %q, want []", args, out)
		}
	}
}
