package controller

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// A backup is the state in raft's snapshot format, then a line in which
// the node that saved it signs its length and digest (api.BackupSignature):
// a restore reads nothing of a backup before that line checks out, and
// the node that wrote it must be a controller of this cluster's root
// whose certificate was not revoked before it signed.

// maxBackupClockSkew is how far ahead of this node's clock a backup's
// signing time may be.
const maxBackupClockSkew = 5 * time.Minute

// writeBackup writes snap to w, then its signature line.
func (n *Node) writeBackup(w io.Writer, snap *fsmSnapshot) error {
	h := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(w, h)}
	if err := snap.Persist(&httpSink{w: cw}); err != nil {
		return err
	}
	sig := api.BackupSignature{Format: api.BackupSignatureFormat, SHA256: hex.EncodeToString(h.Sum(nil)), Bytes: cw.n,
		RaftIndex: snap.header.Index, At: n.now().UTC(), Node: n.cfg.Node}
	var err error
	if sig.Signature, sig.Chain, err = n.signStatement(sig.Message()); err != nil {
		return fmt.Errorf("sign the backup: %w", err)
	}
	line, err := json.Marshal(sig)
	if err != nil {
		return err
	}
	_, err = w.Write(append(line, '\n'))
	return err
}

// checkBackup checks backup's signature line (api.BackupDigest.Verify),
// that a controller node signed it, and that the inventory does not say
// the signer's certificate or its intermediate was revoked by then (or
// ever, for a compromised key). It returns the state part of backup: what
// the signature covers.
func (n *Node) checkBackup(backup []byte) ([]byte, api.BackupSignature, error) {
	d := api.NewBackupDigest()
	d.Write(backup)
	sig, chain, err := d.Verify(n.verifier.Roots())
	if err != nil {
		return nil, sig, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	signer := fmt.Sprintf("%s (certificate %s)", sig.Node, ca.Serial(chain[0]))
	if id, err := ca.IdentityOf(chain[0]); err != nil || id.Kind != ca.KindNode {
		return nil, sig, fmt.Errorf("%w: the backup was signed by %s, which is not a controller node's certificate", ErrBadRequest, signer)
	}
	if now := n.now(); sig.At.After(now.Add(maxBackupClockSkew)) {
		return nil, sig, fmt.Errorf("%w: the backup was signed by %s at %s, ahead of this node's clock (%s)", ErrBadRequest, signer,
			sig.At.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	st := n.State()
	for _, c := range chain[:len(chain)-1] { // the root is revoked by replacing it
		rec, ok := st.Certificate(ca.Serial(c))
		if !ok || rec.Status != api.CertRevoked {
			continue
		}
		compromised := ca.Reason(rec.Reason) == ca.ReasonKeyCompromise || ca.Reason(rec.Reason) == ca.ReasonCACompromise
		if compromised || !rec.RevokedAt.After(sig.At) {
			return nil, sig, fmt.Errorf("%w: the backup was signed by %s at %s, and certificate %s (%s) was revoked at %s (%s)", ErrBadRequest, signer,
				sig.At.UTC().Format(time.RFC3339), rec.Serial, rec.Subject, rec.RevokedAt.UTC().Format(time.RFC3339), rec.ReasonName)
		}
	}
	return backup[:sig.Bytes], sig, nil
}
