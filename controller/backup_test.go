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
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// resign returns backup's state with a new signature line: at, by the
// key and chain of cert (a node's, a gateway's).
func resign(t *testing.T, backup []byte, at time.Time, node string, cert tls.Certificate) []byte {
	t.Helper()
	state := backup[:bytes.LastIndexByte(backup[:len(backup)-1], '\n')+1]
	sum := sha256.Sum256(state)
	sig := api.BackupSignature{Format: api.BackupSignatureFormat, SHA256: hex.EncodeToString(sum[:]), Bytes: int64(len(state)), At: at, Node: node}
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

// TestRestoreChecksSignature: a restore reads nothing of a backup before
// its signature line checks out: a backup without one (cut short, or
// saved before backups were signed), altered within what a merge would
// accept (an agency renamed), signed by a gateway, by another cluster's
// node, ahead of the clock, or by a node whose key was compromised since,
// is refused, and changes nothing.
func TestRestoreChecksSignature(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	op, off := person(t, cfg, n, "operator1"), person(t, cfg, n, "officer1")
	if _, err := op.AddAgency(ctx, api.Agency{Code: "000.00.00.H29", Name: "Quảng Ninh"}); err != nil {
		t.Fatal(err)
	}
	gw := enrollNew(t, ctx, cfg, n, op, off, "gw1", "000.00.00.H29")
	var saved bytes.Buffer
	if err := op.SaveSnapshot(ctx, &saved); err != nil {
		t.Fatal(err)
	}
	backup := saved.Bytes()

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
	} {
		_, err := off.RestoreSnapshot(ctx, bytes.NewReader(tc.b))
		wantStatus(t, err, 400, tc.want)
	}
	if as := n.State().Agencies(); len(as) != 1 || as[0].Name != "Quảng Ninh" {
		t.Fatalf("a refused backup changed the agencies: %+v", as)
	}

	// The saved backup is good until the key that signed it is revoked as
	// compromised (a renewal superseding the certificate would not matter).
	serial := ca.Serial(nodeCert.Leaf)
	if _, err := off.Revoke(ctx, api.RevokeRequest{Serial: serial, Reason: "keyCompromise"}); err != nil {
		t.Fatal(err)
	}
	_, err := off.RestoreSnapshot(ctx, bytes.NewReader(backup))
	wantStatus(t, err, 400, "certificate "+serial+" (ctl1) was revoked at")
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
