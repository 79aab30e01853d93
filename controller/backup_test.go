package controller

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// resign returns backup's state with a new signature line: its index,
// signed at at by the key and chain of cert (a node's, a gateway's).
func resign(t *testing.T, backup []byte, at time.Time, node string, cert tls.Certificate) []byte {
	t.Helper()
	state := backup[:bytes.LastIndexByte(backup[:len(backup)-1], '\n')+1]
	var sig api.BackupSignature
	if err := json.Unmarshal(backup[len(state):], &sig); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(state)
	sig.SHA256, sig.Bytes, sig.At, sig.Node, sig.Chain = hex.EncodeToString(sum[:]), int64(len(state)), at, node, ""
	digest := sha256.Sum256(sig.Message())
	raw, err := cert.PrivateKey.(crypto.Signer).Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	sig.Signature = base64.StdEncoding.EncodeToString(raw)
	for _, der := range cert.Certificate {
		sig.Chain += string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	line, err := json.Marshal(sig)
	if err != nil {
		t.Fatal(err)
	}
	return append(append(bytes.Clone(state), line...), '\n')
}

// backupFixture starts a node with an agency, and a gateway when
// withGateway, and returns an officer's client and a backup saved then.
func backupFixture(t *testing.T, withGateway bool) (*Node, *api.Client, []byte, *enrolled) {
	t.Helper()
	ctx := context.Background()
	cfg := testConfig(t)
	n := startNode(t, cfg)
	t.Cleanup(func() { n.Close() })
	op, off := person(t, cfg, n, "operator1"), person(t, cfg, n, "officer1")
	if _, err := op.AddAgency(ctx, api.Agency{Code: "000.00.00.H29", Name: "Quảng Ninh"}); err != nil {
		t.Fatal(err)
	}
	var gw *enrolled
	if withGateway {
		gw = enrollNew(t, ctx, cfg, n, op, off, "gw1", "000.00.00.H29")
	}
	var saved bytes.Buffer
	if err := op.SaveSnapshot(ctx, &saved); err != nil {
		t.Fatal(err)
	}
	return n, off, saved.Bytes(), gw
}

// TestRestoreChecksSignature: a restore reads nothing of a backup before
// its signature line checks out: a backup without one (cut short, or
// saved before backups were signed), altered within what a merge would
// accept (an agency renamed), signed by a gateway, by another cluster's
// node, ahead of the clock, or by a node whose key was compromised since,
// is refused, and changes nothing.
func TestRestoreChecksSignature(t *testing.T) {
	ctx := context.Background()
	n, off, backup, gw := backupFixture(t, true)

	// Another cluster's node signs a backup of it.
	otherCfg := testConfig(t)
	other := startNode(t, otherCfg)
	otherSigned := resign(t, backup, time.Now(), "ctl1", *other.cert.Load())
	other.Close()

	state := backup[:bytes.LastIndexByte(backup[:len(backup)-1], '\n')+1]
	renamed := bytes.Replace(backup, []byte(`"name":"Quảng Ninh"`), []byte(`"name":"Quảng Minh"`), 1)
	if bytes.Equal(renamed, backup) {
		t.Fatal("the agency's name is not in the backup")
	}
	nodeCert := *n.cert.Load()
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"no signature line", state, "does not end with a signature line"},
		{"cut short", backup[:len(backup)/2], "does not end with a signature line"},
		{"an agency renamed", renamed, "the file was altered"},
		{"an agency renamed, signed by a gateway", resign(t, renamed, time.Now(), "ctl1", gw.tls.Certificates[0]), "which is not a controller node's certificate"},
		{"signed by another cluster's node", otherSigned, "does not verify under this cluster's root"},
		{"signed an hour ahead", resign(t, backup, time.Now().Add(time.Hour), "ctl1", nodeCert), "ahead of this node's clock"},
		{"another node named", resign(t, backup, time.Now(), "ctl9", nodeCert), `its signature line names node "ctl9"`},
	} {
		_, err := off.RestoreSnapshot(ctx, bytes.NewReader(tc.b))
		wantStatus(t, err, 400, tc.want)
	}
	if as := n.State().Agencies(); len(as) != 1 || as[0].Name != "Quảng Ninh" {
		t.Fatalf("a refused backup changed the agencies: %+v", as)
	}

	// The signing time is the signer's claim, held to the backup's
	// content: its index, and its last audit entry's time.
	sig, chain, err := api.VerifyBackup(bytes.NewReader(backup), n.verifier.Roots())
	if err != nil {
		t.Fatal(err)
	}
	bk, err := readSnapshot(bytes.NewReader(state), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer bk.close()
	if err := n.checkSigner(sig, chain, bk); err != nil {
		t.Fatalf("the saved backup's signer: %v", err)
	}
	early := sig
	early.At = bk.audit.head.At.Add(-maxBackupClockSkew - time.Second)
	if err := n.checkSigner(early, chain, bk); !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "a backdated signature") {
		t.Errorf("signed before its last audit entry: %v", err)
	}
	moved := sig
	moved.RaftIndex++
	if err := n.checkSigner(moved, chain, bk); !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "its signature says") {
		t.Errorf("another index signed: %v", err)
	}

	// Revoked for anything but a renewal, the key's backups are worthless,
	// whenever they were signed (TestRestoreSignerSuperseded: a renewal).
	serial := ca.Serial(nodeCert.Leaf)
	if _, err := off.Revoke(ctx, api.RevokeRequest{Serial: serial, Reason: "keyCompromise"}); err != nil {
		t.Fatal(err)
	}
	_, err = off.RestoreSnapshot(ctx, bytes.NewReader(backup))
	wantStatus(t, err, 400, "certificate "+serial+" (ctl1) was revoked at")
}

// TestRestoreSignerSuperseded: a node certificate revoked as superseded
// (renewed) leaves the backups it signed before good; one it signs after
// is refused.
func TestRestoreSignerSuperseded(t *testing.T) {
	ctx := context.Background()
	n, off, backup, _ := backupFixture(t, false)
	nodeCert := *n.cert.Load()
	serial := ca.Serial(nodeCert.Leaf)
	if _, err := off.Revoke(ctx, api.RevokeRequest{Serial: serial, Reason: "superseded"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // signed after the revocation
	_, err := off.RestoreSnapshot(ctx, bytes.NewReader(resign(t, backup, time.Now(), "ctl1", nodeCert)))
	wantStatus(t, err, 400, "certificate "+serial+" (ctl1) was revoked at")
	if _, err := off.RestoreSnapshot(ctx, bytes.NewReader(backup)); err != nil {
		t.Fatalf("a backup signed before the certificate was superseded: %v", err)
	}
}

// TestSavedBackupSignature: a saved backup's signature line names the
// node that saved it, the state's index, and a chain to the root.
func TestSavedBackupSignature(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	op := person(t, cfg, n, "operator1")
	var saved bytes.Buffer
	if err := op.SaveSnapshot(context.Background(), &saved); err != nil {
		t.Fatal(err)
	}
	sig, chain, err := api.VerifyBackup(bytes.NewReader(saved.Bytes()), n.verifier.Roots())
	if err != nil {
		t.Fatal(err)
	}
	if sig.Node != "ctl1" || sig.RaftIndex == 0 || sig.RaftIndex > n.State().Index() {
		t.Fatalf("signature line %+v (state index %d)", sig, n.State().Index())
	}
	if id, _ := ca.IdentityOf(chain[0]); id.Kind != ca.KindNode || id.Name != "ctl1" {
		t.Fatalf("signed by %+v", id)
	}
}

// flagAtAnswer records whether a restore was still marked in progress
// when the answer's status was written.
type flagAtAnswer struct {
	*httptest.ResponseRecorder
	n    *Node
	busy bool
}

func (f *flagAtAnswer) WriteHeader(code int) {
	f.busy = f.n.restoring.Load()
	f.ResponseRecorder.WriteHeader(code)
}

// TestRestoreFreedBeforeAnswer: a node lets go of its one restore before
// it answers, so that a follower told "not the leader" can send the same
// restore straight back to it, re-elected, without a 409.
func TestRestoreFreedBeforeAnswer(t *testing.T) {
	n, _, backup, _ := backupFixture(t, false)
	for _, body := range [][]byte{[]byte("not a backup"), backup[:len(backup)/2]} {
		w := &flagAtAnswer{ResponseRecorder: httptest.NewRecorder(), n: n}
		r := httptest.NewRequest(http.MethodPost, "/v1/cluster/snapshot", bytes.NewReader(body))
		n.handleSnapshotRestore(w, r, ca.Identity{Kind: ca.KindPerson, Name: "officer1"})
		if w.Code != http.StatusBadRequest || w.busy {
			t.Fatalf("HTTP %d %s; restore still in progress when answered: %v", w.Code, w.Body.String(), w.busy)
		}
	}
}
