package controller

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/hashicorp/raft"
	"golang.org/x/crypto/ocsp"
)

// TestCertArchiveIndex: a serial whose hash another archived serial holds
// is found through the overflow map, a lookup that lands on another
// serial's line finds nothing, and the archive's file leaves nothing in
// its directory.
func TestCertArchiveIndex(t *testing.T) {
	dir := t.TempDir()
	a := newCertArchive(dir)
	defer a.close()
	c1 := &api.Certificate{Serial: "a1", Kind: ca.KindPerson, Issuer: "ab", NotBefore: t0, NotAfter: t0.Add(time.Hour)}
	c2 := &api.Certificate{Serial: "b2", Kind: ca.KindPerson, Issuer: "ab", NotBefore: t0, NotAfter: t0.Add(time.Hour), Status: api.CertRevoked, ReasonName: "keyCompromise"}
	if err := a.add([]*api.Certificate{c1}); err != nil {
		t.Fatal(err)
	}
	// b2's hash now points at a1's line, as a collision would.
	a.at[maphash.String(a.seed, "b2")] = a.at[maphash.String(a.seed, "a1")]
	if _, ok, err := a.lookup("b2"); ok || err != nil {
		t.Fatalf("b2 found on a1's line (%v)", err)
	}
	if err := a.add([]*api.Certificate{c2}); err != nil {
		t.Fatal(err)
	}
	if len(a.more) != 1 {
		t.Fatalf("b2 not in the overflow map: %v", a.more)
	}
	for _, want := range []*api.Certificate{c1, c2} {
		got, ok, err := a.lookup(want.Serial)
		if !ok || err != nil || got.Serial != want.Serial || !got.Archived || got.Status != want.Status {
			t.Fatalf("lookup %s: %+v %v %v", want.Serial, got, ok, err)
		}
	}
	if a.len() != 2 || a.issued[ca.KindPerson] != 2 || a.revoked["keyCompromise"] != 1 {
		t.Fatalf("counts: %d, %v, %v", a.len(), a.issued, a.revoked)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("files left in the directory: %v", left)
	}
}

// TestCertArchiveRestoreChecks: a backup that archives a serial twice, or
// holds it both archived and in the inventory, is refused.
func TestCertArchiveRestoreChecks(t *testing.T) {
	f := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	for i, c := range history() {
		if err := applyCmd(t, f, uint64(i+1), c.t, c.req); err != nil {
			t.Fatal(err)
		}
	}
	snap := snapshotBytes(t, f)
	var archived, cert []byte
	for line := range bytes.Lines(snap) {
		if bytes.HasPrefix(line, []byte(`{"type":"archived"`)) && archived == nil {
			archived = line
		}
		if bytes.HasPrefix(line, []byte(`{"type":"cert"`)) && cert == nil {
			cert = line
		}
	}
	if archived == nil || cert == nil {
		t.Fatalf("no archived or cert record in the snapshot:\n%s", snap)
	}
	// A backup written by hand, its archived record spread over lines,
	// restores to the same state.
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, bytes.TrimSpace(archived), "", "  "); err != nil {
		t.Fatal(err)
	}
	ns, err := readSnapshot(bytes.NewReader(bytes.Replace(snap, archived, append(pretty.Bytes(), '\n'), 1)), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	g := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	g.state = ns
	if got := snapshotBytes(t, g); !bytes.Equal(got, snap) {
		t.Fatalf("restored from an indented record:\n%s\nwant\n%s", got, snap)
	}
	ns.close()

	asCert := bytes.Replace(archived, []byte(`"archived"`), []byte(`"cert"`), 1)
	for name, b := range map[string][]byte{
		"archived twice":      append(bytes.Clone(snap), archived...),
		"archived and a cert": append(bytes.Clone(snap), asCert...),
	} {
		if _, err := readSnapshot(bytes.NewReader(b), t.TempDir()); err == nil || !strings.Contains(err.Error(), "archived") {
			t.Errorf("%s: %v, want a refusal", name, err)
		}
	}
}

// TestCertArchiveOnNode: on a running node, certificates that expired
// more than cert_archive_after ago leave the inventory for the archive;
// `cert list` leaves them out, `cert list --archived` lists them after
// the others, `cert show` and OCSP still answer for them (a revoked one
// as revoked), revoking one again says it was archived, and the node's
// current certificates stay.
func TestCertArchiveOnNode(t *testing.T) {
	cfg := testConfig(t)
	cfg.CertArchiveAfter = time.Second
	n := startNode(t, cfg)
	defer n.Close()
	ctx := context.Background()
	off := person(t, cfg, n, "officer1")
	waitUntil(t, 10*time.Second, "the node's and people's certificates in the inventory", func() bool {
		return len(n.State().Certificates(CertFilter{})) == 3+1+1 // people, node, intermediate
	})
	live := len(n.State().Certificates(CertFilter{}))

	now := time.Now()
	// abc0 and abc2 expired two hours ago; abc1 expires in 2 s, and is
	// revoked before.
	var old []api.Certificate
	for i := range 3 {
		notAfter := now.Add(-2 * time.Hour)
		if i == 1 {
			notAfter = now.Add(2 * time.Second)
		}
		old = append(old, api.Certificate{Serial: fmt.Sprintf("abc%d", i), Kind: ca.KindGateway, Gateway: "gw-old", Agency: "000.00.00.H29",
			Subject: "gw-old", Issuer: n.issuerID, NotBefore: now.Add(-26 * time.Hour), NotAfter: notAfter})
	}
	if _, err := n.submit(ctx, CmdCertRecord, &CertRecordRequest{Meta: n.meta("node:ctl1"), Certs: old}); err != nil {
		t.Fatal(err)
	}
	if _, err := off.Revoke(ctx, api.RevokeRequest{Serial: "abc1", Reason: "superseded"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the expired certificates archived", func() bool {
		return n.State().ArchivedCount() == 3
	})
	if got := n.State().Certificates(CertFilter{}); len(got) != live {
		t.Fatalf("%d certificates in the inventory, want the %d current ones", len(got), live)
	}

	list, err := off.Certificates(ctx, url.Values{})
	if err != nil || len(list) != live {
		t.Fatalf("cert list: %d, %v", len(list), err)
	}
	all, err := off.Certificates(ctx, url.Values{"archived": {"true"}})
	if err != nil || len(all) != live+3 || !all[live].Archived || all[0].Archived {
		t.Fatalf("cert list --archived: %+v, %v", all, err)
	}
	gw, err := off.Certificates(ctx, url.Values{"archived": {"true"}, "agency": {"000.00.00.H29"}})
	if err != nil || len(gw) != 3 {
		t.Fatalf("cert list --archived --agency: %+v, %v", gw, err)
	}
	_, err = off.Certificates(ctx, url.Values{"archived": {"true"}, "expiring": {"7d"}})
	wantStatus(t, err, 400, "archived certificates have all expired")
	_, err = off.Certificates(ctx, url.Values{"archived": {"yes"}})
	wantStatus(t, err, 400, `archived "yes"`)

	c, err := off.Certificate(ctx, "ABC1")
	if err != nil || !c.Archived || c.Status != api.CertRevoked || c.ReasonName != "superseded" {
		t.Fatalf("cert show abc1: %+v, %v", c, err)
	}
	_, err = off.Revoke(ctx, api.RevokeRequest{Serial: "abc2", Reason: "superseded"})
	wantStatus(t, err, 409, "was archived")

	// OCSP, over the plain-HTTP listener as relying parties ask.
	for serial, want := range map[int64]int{0xabc0: ocsp.Good, 0xabc1: ocsp.Revoked, 0xabc9: ocsp.Unknown} {
		probe := x509.Certificate{SerialNumber: big.NewInt(serial)}
		req, err := ocsp.CreateRequest(&probe, n.ca.Intermediate(), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Post("http://"+n.httpLn.Addr().String()+"/ocsp/"+n.issuerID, "application/ocsp-request", bytes.NewReader(req))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		r, err := ocsp.ParseResponseForCert(body, &probe, n.ca.Intermediate())
		if err != nil || r.Status != want {
			t.Fatalf("OCSP %x: %+v %v, want status %d", serial, r, err, want)
		}
	}

	// This node's disk failing to read the archive is a 500 (the log
	// says what failed), not a certificate missing or a list cut short.
	st := n.State()
	st.mu.Lock()
	st.archive.f.Close()
	st.mu.Unlock()
	_, err = off.Certificate(ctx, "abc1")
	wantStatus(t, err, 500, "internal error (see the controller's log)")
	_, err = off.Certificates(ctx, url.Values{"archived": {"true"}})
	wantStatus(t, err, 500, "internal error (see the controller's log)")
}

// TestCertArchiveTouchesNoView: archiving changes no gateway's view, so
// it must not make the hub recompute them all (0.3 CPU s a node at
// 20,000 gateways).
func TestCertArchiveTouchesNoView(t *testing.T) {
	f := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	h := history()
	k := slices.IndexFunc(h, func(c histCmd) bool { return c.t == CmdCertArchive })
	for i, c := range h[:k] {
		if err := applyCmd(t, f, uint64(i+1), c.t, c.req); err != nil {
			t.Fatal(err)
		}
	}
	f.State().views.take()
	arch := h[k]
	if err := applyCmd(t, f, uint64(k+1), arch.t, arch.req); err != nil {
		t.Fatal(err)
	}
	if ids, all := f.State().views.take(); all || len(ids) != 0 {
		t.Fatalf("cert-archive touched views: all %v, %v", all, ids)
	}
}

// TestArchiveBacklog: a backlog larger than one call's 64 commands is
// archived over several calls from one scan, then nothing is left, and
// the gateways' current certificates stay.
func TestArchiveBacklog(t *testing.T) {
	cfg := testConfig(t)
	cfg.CertArchiveAfter = time.Hour // the test calls archiveIfDue itself
	n := startNode(t, cfg)
	defer n.Close()
	ctx := context.Background()
	waitUntil(t, 10*time.Second, "leadership", func() bool { return n.raft.State() == raft.Leader })
	const backlog = 64*maxArchiveBatch + 100
	now := time.Now()
	for i := 0; i < backlog; i += maxRecordBatch {
		var batch []api.Certificate
		for j := i; j < min(i+maxRecordBatch, backlog); j++ {
			batch = append(batch, api.Certificate{Serial: fmt.Sprintf("%x", 1<<40+j), Kind: ca.KindNode, Subject: "old", Issuer: n.issuerID,
				NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-2 * time.Hour)})
		}
		if _, err := n.submit(ctx, CmdCertRecord, &CertRecordRequest{Meta: n.meta("node:ctl1"), Certs: batch}); err != nil {
			t.Fatal(err)
		}
	}
	var others []string // the live certificates, which stay
	for _, c := range n.State().Certificates(CertFilter{}) {
		if c.Subject != "old" {
			others = append(others, c.Serial)
		}
	}
	// Whatever leaderDuties did meanwhile (it may have archived part of
	// the backlog already), calls finish the backlog.
	n.archiver.mu.Lock()
	n.archiver.lookedAt = time.Time{}
	n.archiver.mu.Unlock()
	for range 3 {
		if err := n.archiveIfDue(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := n.State().ArchivedCount(); got != backlog {
		t.Fatalf("%d archived, want %d", got, backlog)
	}
	left := 0
	for _, c := range n.State().Certificates(CertFilter{}) {
		if c.Subject == "old" {
			left++
		}
	}
	if left != 0 {
		t.Fatalf("%d of the backlog left in the inventory, want none", left)
	}
	for _, serial := range others {
		if c, _ := n.State().Certificate(serial); c.Archived {
			t.Fatalf("live certificate %s was archived", serial)
		}
	}
}

// TestCertArchiveDiskFailure: a node whose archive cannot be written
// stops applying (it would part from the others) instead of going on
// without the certificates.
func TestCertArchiveDiskFailure(t *testing.T) {
	f := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	h := history()
	k := slices.IndexFunc(h, func(c histCmd) bool { return c.t == CmdCertArchive })
	for i, c := range h[:k] { // up to the archive
		if err := applyCmd(t, f, uint64(i+1), c.t, c.req); err != nil {
			t.Fatal(err)
		}
	}
	// Its file exists and is closed: every write fails.
	s := f.State()
	if _, err := s.archive.write([]byte("{}\n")); err != nil {
		t.Fatal(err)
	}
	s.archive.size = 0
	s.archive.f.Close()
	defer func() {
		r := recover()
		if r == nil || !strings.Contains(fmt.Sprint(r), errSpillIO.Error()) {
			t.Fatalf("recovered %v, want a panic naming the disk", r)
		}
		if c, ok := s.certs["2a"]; !ok || c.Archived {
			t.Fatal("2a left the inventory although it was not archived")
		}
	}()
	arch := h[k]
	applyCmd(t, f, uint64(k+1), arch.t, arch.req)
	t.Fatal("applied")
}

// BenchmarkCertArchive measures what a certificate costs a node's memory
// in the inventory and in the archive (controller.inventory_bytes_per_cert,
// controller.archive_bytes_per_cert), and the apply of one full batch.
func BenchmarkCertArchive(b *testing.B) {
	const n = 50_000
	mk := func(i int) *api.Certificate {
		return &api.Certificate{Serial: fmt.Sprintf("%032x", 1<<60+i), Kind: ca.KindGateway, Subject: fmt.Sprintf("gw-%05d", i),
			Gateway: fmt.Sprintf("gw-%05d", i), Agency: "000.12.04.H29", SANs: []string{fmt.Sprintf("gw-%05d.gw.govnet", i)},
			Issuer: "5f0c2a9be0e34c3a8a3b7b2d9c1e4f60", KeySHA256: fmt.Sprintf("%064x", i), Requester: "gateway:gw", RenewedFrom: fmt.Sprintf("%032x", 1<<59+i),
			NotBefore: t0, NotAfter: t0.Add(24 * time.Hour), Issued: t0, IssuedIndex: uint64(i), Status: api.CertValid}
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	s := newState(b.TempDir())
	defer s.close()
	base := heap()
	for i := range n {
		c := mk(i)
		s.certs[c.Serial] = c
	}
	inv := heap()
	batch := make([]*api.Certificate, 0, maxArchiveBatch)
	for _, c := range s.certs {
		batch = append(batch, c)
		if len(batch) == cap(batch) {
			if err := s.archive.add(batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	if err := s.archive.add(batch); err != nil {
		b.Fatal(err)
	}
	clear(s.certs)
	s.certs = map[string]*api.Certificate{}
	arch := heap()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		batch = batch[:0]
		for j := range maxArchiveBatch {
			batch = append(batch, mk(n+i*maxArchiveBatch+j))
		}
		b.StartTimer()
		if err := s.archive.add(batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/batch")
	b.ReportMetric(float64(inv-base)/n, "inventory-B/cert")
	b.ReportMetric(float64(max(arch, base)-base)/n, "archive-B/cert")
}
