package netagent

import (
	"context"
	"crypto/x509"
	"errors"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// TestEnrollSurvivesFaults: an enrollment survives the faults between
// its request and its last file, with the TLS key in a file and in the
// gateway's own token:
//   - the answer lost after the controllers committed (first enrollment
//     and re-enrollment): the same command with the same token gets a
//     certificate for the keys it kept, even after a start of the agent
//     in between (which must not destroy the kept token key);
//   - a failure while the files are replaced: the next start finishes
//     the installation;
//   - keys kept by a refused attempt are thrown away when another token
//     is used;
//   - no enrollment while an agent holds the state directory.
func TestEnrollSurvivesFaults(t *testing.T) { forEachKeyStore(t, testEnrollSurvivesFaults) }

func testEnrollSurvivesFaults(t *testing.T, c *testCtl, gw string, token bool) {
	ctx := context.Background()
	if _, err := c.op.AddGateway(ctx, api.Gateway{ID: gw, Agency: "000.00.00.H29"}); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Controller, cfg.StateDir = c.base, filepath.Join(t.TempDir(), "agent")
	if token {
		tokenConfig(t, &cfg)
	}
	withKeys := func(f func(keys keyStore)) {
		t.Helper()
		keys, err := openKeyStore(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer keys.Close()
		f(keys)
	}
	// lose sends the request the enrollment would send, with the keys it
	// keeps, and drops the answer: the controllers commit it.
	lose := func(tok string, again bool) *enrollFile {
		t.Helper()
		os.MkdirAll(cfg.StateDir, 0o700) // as enroll does
		withKeys(func(keys keyStore) {
			_, key, wgKey, err := enrollKeys(cfg, keys, tok, again)
			if err != nil {
				t.Fatal(err)
			}
			req, err := enrollRequest(cfg, tok, key, wgKey)
			if err != nil {
				t.Fatal(err)
			}
			tc, _ := api.TLSConfig(c.rootFile, "", "")
			if _, err := api.NewClient(c.base, tc).Enroll(ctx, req); err != nil {
				t.Fatal(err)
			}
		})
		p, err := readEnrollFile(cfg)
		if err != nil || p.Identity != nil {
			t.Fatalf("kept before the request: %+v, %v", p, err)
		}
		return p
	}
	// installed checks that the live files hold an identity whose
	// certificate is the gateway's current one, for the key p kept, and
	// that nothing is pending.
	installed := func(step string, p *enrollFile) {
		t.Helper()
		withKeys(func(keys keyStore) {
			id, wgKey, tlsCfg, err := loadIdentity(cfg, keys)
			if err != nil {
				t.Fatalf("%s: %v", step, err)
			}
			g, err := c.op.Gateway(ctx, gw)
			if err != nil {
				t.Fatal(err)
			}
			leaf := tlsCfg.Certificates[0].Leaf
			key, err := keys.loadKey([]byte(p.Key))
			if err != nil {
				t.Fatalf("%s: the kept key: %v", step, err)
			}
			if id.Gateway != gw || ca.Serial(leaf) != g.CertSerial || wgKey.String() != p.WGKey || g.PublicKey != wgKey.PublicKey().String() || !samePublicKey(key.Public(), leaf.PublicKey) {
				t.Fatalf("%s: identity %+v, certificate %s for the kept key %v, gateway %+v", step, id, ca.Serial(leaf), samePublicKey(key.Public(), leaf.PublicKey), g)
			}
			if err := api.NewClient(c.base, tlsCfg).Report(ctx, api.Report{}); err != nil {
				t.Fatalf("%s: the installed identity: %v", step, err)
			}
		})
		if _, err := os.Stat(cfg.path(fileEnrollPending)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: %s left behind: %v", step, fileEnrollPending, err)
		}
	}

	// The first enrollment's answer lost.
	tok, err := c.off.IssueToken(ctx, gw, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	p := lose(tok.Token, false)
	cfgFile := filepath.Join(t.TempDir(), "etc", "agent.yaml")
	if _, err := Enroll(ctx, cfg, tok.Token, c.rootFile, SaveConfig(cfgFile)); err != nil {
		t.Fatalf("enrollment asked again: %v", err)
	}
	installed("first enrollment asked again", p)
	if got, err := LoadConfig(cfgFile); err != nil || got.StateDir != cfg.StateDir || got.Controller != cfg.Controller {
		t.Fatalf("the config the enrollment saved: %+v, %v", got, err)
	}

	// A running agent holds the state directory: no enrollment meanwhile.
	unlock, err := lockState(cfg)
	if err != nil {
		t.Fatal(err)
	}
	other := cfg
	other.Endpoint = "192.0.2.99:51820"
	if _, err := Reenroll(ctx, other, "any", c.rootFile, SaveConfig(cfgFile)); err == nil || !strings.Contains(err.Error(), "in use by another govnet-agent") {
		t.Fatalf("re-enrollment while the agent runs: %v", err)
	}
	unlock()
	if got, _ := LoadConfig(cfgFile); got.Endpoint == other.Endpoint {
		t.Fatal("a refused enrollment rewrote the config file")
	}

	// A re-enrollment's answer lost, the agent started in between (it
	// cannot connect: its certificate was revoked as superseded).
	rt, err := c.off.ReenrollToken(ctx, gw, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	p = lose(rt.Token, true)
	withKeys(func(keys keyStore) {
		if id, err := finishEnrollment(cfg, keys); id != nil || err != nil {
			t.Fatalf("an unanswered enrollment was finished: %+v, %v", id, err)
		}
		if gone, err := keys.cleanup(); err != nil || slices.Contains(gone, strings.TrimSpace(p.Key)) {
			t.Fatalf("a start destroyed %v (%v), the kept key %q among them", gone, err, p.Key)
		}
	})
	if _, err := Reenroll(ctx, cfg, rt.Token, c.rootFile); err != nil {
		t.Fatalf("re-enrollment asked again: %v", err)
	}
	installed("re-enrollment asked again", p)

	// A failure while the files are replaced: the certificate cannot be
	// written (a directory stands in its place).
	rt, err = c.off.ReenrollToken(ctx, gw, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(cfg.path(fileCert))
	if err := os.MkdirAll(filepath.Join(cfg.path(fileCert), "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := Reenroll(ctx, cfg, rt.Token, c.rootFile); err == nil || !strings.Contains(err.Error(), "next start") {
		t.Fatalf("re-enrollment with its certificate unwritable: %v", err)
	}
	p, err = readEnrollFile(cfg)
	if err != nil || p.Identity == nil {
		t.Fatalf("the answer is not kept: %+v, %v", p, err)
	}
	os.RemoveAll(cfg.path(fileCert))
	withKeys(func(keys keyStore) { // what Run does first
		if id, err := finishEnrollment(cfg, keys); err != nil || id == nil || id.Gateway != gw {
			t.Fatalf("finish the interrupted installation: %+v, %v", id, err)
		}
	})
	installed("installation finished at the start", p)

	// A refused attempt keeps its keys; another token replaces them.
	if _, err := Reenroll(ctx, cfg, "not-a-token", c.rootFile); err == nil || !strings.Contains(err.Error(), "unknown enrollment token") {
		t.Fatalf("re-enrollment with an unknown token: %v", err)
	}
	refused, err := readEnrollFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rt, err = c.off.ReenrollToken(ctx, gw, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Reenroll(ctx, cfg, rt.Token, c.rootFile); err != nil {
		t.Fatal(err)
	}
	withKeys(func(keys keyStore) {
		if _, err := keys.loadKey([]byte(refused.Key)); token && err == nil {
			t.Fatalf("the key kept for the refused token %q is still in the token", refused.Key)
		}
		if kt, ok := keys.(*tokenKeys); ok {
			infos, err := kt.tok.Keys()
			if err != nil || len(infos) != 1 {
				t.Fatalf("token keys %+v (%v), want the live one only", infos, err)
			}
		}
	})
	if data, _ := os.ReadFile(cfg.path(fileWGKey)); strings.TrimSpace(string(data)) == refused.WGKey {
		t.Fatal("the WireGuard key kept for the refused token was used with another")
	}
}

// TestCheckEnrollAnswer: an answer whose name, agency or overlay address
// disagrees with its certificate or itself is refused before it is kept.
func TestCheckEnrollAnswer(t *testing.T) {
	cert := &x509.Certificate{SerialNumber: big.NewInt(7),
		URIs: ca.Identity{Kind: ca.KindGateway, Name: "gw-1", Agency: "000.00.00.H29"}.URIs()}
	good := api.EnrollResponse{Gateway: "gw-1", Agency: "000.00.00.H29",
		OverlayIP: netip.MustParseAddr("100.64.0.7"), OverlayPrefix: netip.MustParsePrefix("100.64.0.0/16")}
	if err := checkEnrollAnswer(&good, cert); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(*api.EnrollResponse){
		"another gateway":    func(r *api.EnrollResponse) { r.Gateway = "gw-2" },
		"another agency":     func(r *api.EnrollResponse) { r.Agency = "000.00.00.H49" },
		"no overlay address": func(r *api.EnrollResponse) { r.OverlayIP = netip.Addr{} },
		"address outside":    func(r *api.EnrollResponse) { r.OverlayIP = netip.MustParseAddr("10.0.0.1") },
		"no overlay prefix":  func(r *api.EnrollResponse) { r.OverlayPrefix = netip.Prefix{} },
	} {
		r := good
		change(&r)
		if err := checkEnrollAnswer(&r, cert); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
