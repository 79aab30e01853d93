package controller

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"strconv"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// handleAudit streams the audit chain as JSON lines, from ?since=SEQ.
func (n *Node) handleAudit(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	since, _ := strconv.ParseUint(r.URL.Query().Get("since"), 10, 64)
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	for _, e := range n.State().Audit(since) {
		if err := enc.Encode(e); err != nil {
			return
		}
	}
}

// handleCheckpoint signs the chain's current head with this node's key,
// whose certificate its intermediate issued.
func (n *Node) handleCheckpoint(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	head, ok := n.State().AuditHead()
	if !ok {
		n.fail(w, fmt.Errorf("%w: the audit chain is empty", ErrNotFound))
		return
	}
	cp := api.AuditCheckpoint{Seq: head.Seq, Hash: head.Hash, At: n.now().UTC(), Node: n.cfg.Node}
	signer, ok := n.tls.PrivateKey.(crypto.Signer)
	if !ok {
		n.fail(w, fmt.Errorf("node key %T cannot sign", n.tls.PrivateKey))
		return
	}
	digest := sha256.Sum256(cp.CheckpointMessage())
	sig, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		n.fail(w, fmt.Errorf("sign checkpoint: %w", err))
		return
	}
	cp.Signature = base64.StdEncoding.EncodeToString(sig)
	for _, der := range n.tls.Certificate {
		cp.Chain += string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	n.log.Info("audit checkpoint signed", "seq", cp.Seq, "raft_index", head.RaftIndex)
	writeJSON(w, http.StatusOK, cp)
}
