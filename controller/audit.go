package controller

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// handleAudit streams the audit chain as JSON lines, from ?since=SEQ.
func (n *Node) handleAudit(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	since, ok := sinceParam(w, r)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	io.Copy(w, n.State().AuditLines(since))
}

// sinceParam reads ?since=N, an unsigned integer (0 when absent); on
// anything else it answers 400 and returns false.
func sinceParam(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	s := r.URL.Query().Get("since")
	if s == "" {
		return 0, true
	}
	since, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("since %q: want an unsigned integer", s))
		return 0, false
	}
	return since, true
}

// defaultCheckpointEvery is how often the leader signs and records the
// audit chain's head when the config does not say.
const defaultCheckpointEvery = time.Hour

// handleCheckpoint signs the chain's current head with this node's key,
// whose certificate its intermediate issued.
func (n *Node) handleCheckpoint(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	head, ok := n.State().AuditHead()
	if !ok {
		n.fail(w, fmt.Errorf("%w: the audit chain is empty", ErrNotFound))
		return
	}
	cp, err := n.signCheckpoint(head)
	if err != nil {
		n.fail(w, err)
		return
	}
	n.log.Info("audit checkpoint signed", "seq", cp.Seq, "raft_index", head.RaftIndex)
	writeJSON(w, http.StatusOK, cp)
}

// handleCheckpoints lists the recorded checkpoints, oldest first.
func (n *Node) handleCheckpoints(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	writeJSON(w, http.StatusOK, n.State().Checkpoints())
}

// signCheckpoint signs an entry of the chain as its head with this node's
// TLS key; the checkpoint carries the certificate chain that proves it.
func (n *Node) signCheckpoint(head api.AuditEntry) (api.AuditCheckpoint, error) {
	cp := api.AuditCheckpoint{Seq: head.Seq, Hash: head.Hash, At: n.now().UTC(), Node: n.cfg.Node}
	var err error
	cp.Signature, cp.Chain, err = n.signStatement(cp.CheckpointMessage())
	if err != nil {
		return cp, fmt.Errorf("sign checkpoint: %w", err)
	}
	return cp, nil
}

// signStatement signs the SHA-256 of msg, a statement of this node's
// (an audit checkpoint, a backup), with its TLS key. It returns the
// signature in base64 and the certificate chain that proves the key, in
// PEM: the node certificate, its intermediate.
func (n *Node) signStatement(msg []byte) (sig, chain string, err error) {
	cert := n.cert.Load()
	signer, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return "", "", fmt.Errorf("node key %T cannot sign", cert.PrivateKey)
	}
	digest := sha256.Sum256(msg)
	raw, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return "", "", err
	}
	for _, der := range cert.Certificate {
		chain += string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	return base64.StdEncoding.EncodeToString(raw), chain, nil
}

// checkpointIfDue runs on the leader: once the configured period has
// passed since the last recorded checkpoint, and the chain has grown since
// then, it signs the head and records the checkpoint through raft, so
// that every node holds every checkpoint and an auditor can fetch them
// from any node (`govnetctl audit checkpoints`).
func (n *Node) checkpointIfDue(ctx context.Context) error {
	every := n.cfg.AuditCheckpointEvery
	if every <= 0 {
		every = defaultCheckpointEvery
	}
	st := n.State()
	head, ok := st.AuditHead()
	if !ok {
		return nil
	}
	last, ok := st.LastCheckpoint()
	if ok && (head.Seq <= last.Seq+1 || n.now().Sub(last.At) < every) {
		return nil // nothing new but the last checkpoint's own entry, or not yet due
	}
	cp, err := n.signCheckpoint(head)
	if err != nil {
		return err
	}
	_, err = n.submit(ctx, CmdAuditCheckpoint, &AuditCheckpointRequest{Meta: n.meta("node:" + n.cfg.Node), Node: n.cfg.Node, Checkpoint: cp})
	if err == nil {
		n.log.Info("audit checkpoint recorded", "seq", cp.Seq, "raft_index", head.RaftIndex)
	}
	return err
}

// applyAuditCheckpoint records a signed head. It must name an entry of the
// chain with that entry's hash, and come after the last one recorded.
func (s *State) applyAuditCheckpoint(r *AuditCheckpointRequest) error {
	cp := r.Checkpoint
	if cp.Seq == 0 || cp.Seq > s.audit.len() {
		return fmt.Errorf("%w: checkpoint of seq %d: the chain has %d entries", ErrBadRequest, cp.Seq, s.audit.len())
	}
	e, err := s.audit.entry(cp.Seq)
	if err != nil {
		// The node cannot read what it wrote: see FSM.Apply.
		panic(err)
	}
	if e.Seq != cp.Seq || e.Hash != cp.Hash {
		return fmt.Errorf("%w: checkpoint of seq %d names hash %s, the chain has %s", ErrBadRequest, cp.Seq, cp.Hash, e.Hash)
	}
	if n := len(s.checkpoints); n > 0 && cp.Seq <= s.checkpoints[n-1].Seq {
		return fmt.Errorf("%w: checkpoint of seq %d: seq %d is already checkpointed", ErrBadRequest, cp.Seq, s.checkpoints[n-1].Seq)
	}
	if cp.Node != r.Node || cp.Signature == "" || cp.Chain == "" {
		return fmt.Errorf("%w: checkpoint of seq %d is not signed by node %s", ErrBadRequest, cp.Seq, r.Node)
	}
	s.checkpoints = append(s.checkpoints, cp)
	return nil
}

// Checkpoints returns the recorded checkpoints, oldest first.
func (s *State) Checkpoints() []api.AuditCheckpoint {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.checkpoints)
}

// LastCheckpoint returns the newest recorded checkpoint.
func (s *State) LastCheckpoint() (api.AuditCheckpoint, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.checkpoints) == 0 {
		return api.AuditCheckpoint{}, false
	}
	return s.checkpoints[len(s.checkpoints)-1], true
}
