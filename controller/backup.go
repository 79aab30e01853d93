package controller

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
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
// a restore reads nothing of a backup before that line checks out
// (checkBackup), and the node that wrote it must be a controller under
// this cluster's root whose certificate was not revoked (checkSigner).

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
// that a controller node signed it under its own name, not ahead of this
// node's clock. It returns the state part of backup (what the signature
// covers), for checkSigner to finish with.
func (n *Node) checkBackup(backup []byte) ([]byte, api.BackupSignature, []*x509.Certificate, error) {
	sig, chain, err := api.VerifyBackup(bytes.NewReader(backup), n.verifier.Roots())
	if err != nil {
		return nil, sig, nil, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	signer := fmt.Sprintf("%s (certificate %s)", chain[0].Subject.CommonName, ca.Serial(chain[0]))
	if id, err := ca.IdentityOf(chain[0]); err != nil || id.Kind != ca.KindNode {
		return nil, sig, nil, fmt.Errorf("%w: the backup was signed by %s, which is not a controller node's certificate", ErrBadRequest, signer)
	} else if id.Name != sig.Node {
		return nil, sig, nil, fmt.Errorf("%w: the backup was signed by %s, and its signature line names node %q", ErrBadRequest, signer, sig.Node)
	}
	if now := n.now(); sig.At.After(now.Add(maxBackupClockSkew)) {
		return nil, sig, nil, fmt.Errorf("%w: the backup was signed by %s at %s, ahead of this node's clock (%s)", ErrBadRequest, signer,
			sig.At.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return backup[:sig.Bytes], sig, chain, nil
}

// checkSigner finishes checkBackup once the backup's state, bk, is read.
// The signing time is the signer's own claim, so it is held to the
// backup's content: not before the backup's last audit entry (the
// leader's clock, within maxBackupClockSkew), and the backup's index is
// the one signed. The signer's certificate must be in this cluster's
// inventory or the backup's (a lost cluster's node, in a recovery), and
// neither may say that it or its intermediate was revoked, but for a
// renewal (superseded) after the signature.
func (n *Node) checkSigner(sig api.BackupSignature, chain []*x509.Certificate, bk *State) error {
	signer := fmt.Sprintf("%s (certificate %s)", sig.Node, ca.Serial(chain[0]))
	if bk.index != sig.RaftIndex {
		return fmt.Errorf("%w: the backup's state is at raft index %d, and its signature says %d", ErrBadRequest, bk.index, sig.RaftIndex)
	}
	if head := bk.audit.head; head.Seq > 0 && head.At.After(sig.At.Add(maxBackupClockSkew)) {
		return fmt.Errorf("%w: the backup was signed by %s at %s, before its last audit entry (seq %d, %s): a backdated signature",
			ErrBadRequest, signer, sig.At.UTC().Format(time.RFC3339), head.Seq, head.At.UTC().Format(time.RFC3339))
	}
	for i, c := range chain[:len(chain)-1] { // the root is revoked by replacing it
		var recs []api.Certificate
		for _, st := range []*State{n.State(), bk} {
			rec, ok, err := st.LookupCertificate(ca.Serial(c))
			if err != nil {
				return err // this node's disk, or the backup's archive
			}
			if ok {
				recs = append(recs, rec)
			}
		}
		if len(recs) == 0 && i == 0 {
			return fmt.Errorf("%w: the backup was signed by %s, which neither this cluster's inventory nor the backup's records: its revocation cannot be checked (save a backup on another node)", ErrBadRequest, signer)
		}
		for _, rec := range recs {
			if rec.Status != api.CertRevoked || ca.Reason(rec.Reason) == ca.ReasonSuperseded && rec.RevokedAt.After(sig.At) {
				continue
			}
			return fmt.Errorf("%w: the backup was signed by %s, and certificate %s (%s) was revoked at %s (%s)", ErrBadRequest, signer,
				rec.Serial, rec.Subject, rec.RevokedAt.UTC().Format(time.RFC3339), rec.ReasonName)
		}
	}
	return nil
}
