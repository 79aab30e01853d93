package api

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	certchain "github.com/govnet/govnet/ca/chain"
)

// AuditEntry is one link of the audit chain that the controllers keep in
// their replicated state: one entry per committed command.
type AuditEntry struct {
	Seq           uint64    `json:"seq"`            // 1, 2, 3, ... with no gaps
	RaftIndex     uint64    `json:"raft_index"`     // the command's raft index
	At            time.Time `json:"at"`             // the leader's clock when it was submitted
	Actor         string    `json:"actor"`          // person name, node:<name> or gateway:<id>
	Role          string    `json:"role,omitempty"` // the actor's role when it acted
	Action        string    `json:"action"`         // the command type, e.g. gateway-add
	Object        string    `json:"object,omitempty"`
	RequestSHA256 string    `json:"request_sha256"` // of the encoded command
	Prev          string    `json:"prev"`           // Hash of the previous entry; "" for the first
	Hash          string    `json:"hash"`           // see ComputeHash
}

// ComputeHash returns the hex SHA-256 of the entry's JSON encoding with
// Hash left empty. Prev makes each hash commit to the whole chain before it.
func (e AuditEntry) ComputeHash() string {
	e.Hash = ""
	e.At = e.At.UTC()
	b, _ := json.Marshal(e) // a struct of strings, numbers and a time: cannot fail
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// AuditError names the first entry of an exported chain that does not hold.
type AuditError struct {
	Line int    // 1-based line of the export
	Seq  uint64 // the entry's seq as found
	Msg  string
}

func (e *AuditError) Error() string {
	if e.Seq == 0 {
		return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
	}
	return fmt.Sprintf("line %d (seq %d): %s", e.Line, e.Seq, e.Msg)
}

// MaxAuditLine bounds a line of the audit chain, in the controllers'
// files and in an export: an entry is a few hundred bytes, but its object
// may name every gateway of a batch.
const MaxAuditLine = 16 << 20

// ReadAuditExport reads an export of the audit chain (`govnetctl audit
// export`): one entry a line, each exactly as the controllers encode it
// (AuditEntry's JSON with its time in UTC, then a newline). A line in any
// other form is refused with an *AuditError naming it, even one that
// decodes to an entry whose hash holds: encoding/json matches keys in any
// case, takes the last of a key given twice and skips unknown fields, so
// such a line could show another reader (jq, a script, a person) an
// actor, action or object other than the one its hash covers.
func ReadAuditExport(r io.Reader) ([]AuditEntry, error) {
	var out []AuditEntry
	br := bufio.NewReaderSize(r, 64<<10)
	for line := 1; ; line++ {
		b, err := ReadLine(br, MaxAuditLine)
		switch {
		case err == io.EOF:
			return out, nil
		case errors.Is(err, ErrLineTooLong):
			return nil, &AuditError{Line: line, Msg: fmt.Sprintf("longer than an entry may be (%d bytes)", MaxAuditLine)}
		case err == io.ErrUnexpectedEOF:
			return nil, &AuditError{Line: line, Msg: "cut off: the file ends inside this line (an export ends every line with a newline)"}
		case err != nil:
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		e, err := parseAuditLine(b)
		if err != nil {
			return nil, &AuditError{Line: line, Seq: e.Seq, Msg: err.Error()}
		}
		out = append(out, e)
	}
}

// parseAuditLine decodes one line of an export and checks that it is the
// entry's own encoding.
func parseAuditLine(line []byte) (AuditEntry, error) {
	var e AuditEntry
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return AuditEntry{}, fmt.Errorf("not an audit entry: %w", err)
	}
	canon := e
	canon.At = e.At.UTC()
	want, err := json.Marshal(canon)
	if err != nil {
		return AuditEntry{}, fmt.Errorf("not an audit entry: %w", err)
	}
	if !bytes.Equal(line, want) {
		return e, errors.New("not written as the controllers write entries (keys twice or in another case, other spacing, escapes, number or time formats, or a second entry on the line): " +
			"what another reader sees on this line may differ from what its hash covers")
	}
	return e, nil
}

// VerifyAudit recomputes a chain exported from its first entry (seq 1) or
// from any later one (then the first entry's Prev is taken on trust) and
// returns an *AuditError for the first entry that was altered, or after a
// removal or reordering. It proves nothing about who wrote the chain: an
// adversary can recompute every hash after an entry they alter; only a
// signed checkpoint (VerifyCheckpoint) pins the entries up to its seq.
func VerifyAudit(entries []AuditEntry) error {
	present := make(map[uint64]bool, len(entries))
	for _, e := range entries {
		present[e.Seq] = true
	}
	for i, e := range entries {
		line := i + 1
		if e.ComputeHash() != e.Hash {
			return &AuditError{line, e.Seq, "entry altered: its hash does not match its contents"}
		}
		if i == 0 {
			if e.Seq == 0 {
				return &AuditError{line, e.Seq, "no entry has seq 0: the chain starts at seq 1"}
			}
			if e.Seq == 1 && e.Prev != "" {
				return &AuditError{line, e.Seq, "the first entry names a predecessor"}
			}
			continue
		}
		p := entries[i-1]
		switch {
		case e.Seq <= p.Seq || e.Seq != p.Seq+1 && present[p.Seq+1]:
			return &AuditError{line, e.Seq, fmt.Sprintf("entries reordered: seq %d follows seq %d", e.Seq, p.Seq)}
		case e.Seq != p.Seq+1:
			return &AuditError{line, e.Seq, fmt.Sprintf("entries removed: seq %d follows seq %d", e.Seq, p.Seq)}
		case e.Prev != p.Hash:
			// Both hashes hold, so one of the two entries was altered and
			// its hash recomputed. If it was e (its prev), the link after
			// e breaks too; if that link holds, or there is none, p was.
			if i+1 < len(entries) && entries[i+1].Prev != e.Hash && entries[i+1].Seq == e.Seq+1 {
				return &AuditError{line, e.Seq, "entry altered and its hash recomputed: its prev is not the hash of the entry before it, nor is its hash the prev of the entry after it"}
			}
			return &AuditError{line - 1, p.Seq, fmt.Sprintf("entry altered and its hash recomputed: seq %d, after it, names another hash as its predecessor (or, less likely, seq %d's prev was altered)", e.Seq, e.Seq)}
		}
	}
	return nil
}

// RootCRLPublish carries a root CRL (DER) that M custodians signed with
// `govnetd ceremony crl`, for the controllers to serve.
type RootCRLPublish struct {
	DER []byte `json:"der"`
}

// RootCRLPublished says where the controllers now serve the root CRL.
type RootCRLPublished struct {
	Issuer     string    `json:"issuer"` // the root's id
	Number     uint64    `json:"number"`
	Revoked    int       `json:"revoked"` // intermediates on it
	NextUpdate time.Time `json:"next_update"`
	RaftIndex  uint64    `json:"raft_index"`
	Path       string    `json:"path"` // on every node's plain-HTTP listener
}

// AuditCheckpoint is a signed statement of the chain's head: a node
// signs Seq and Hash with its key, certified by its intermediate, so that
// an auditor can prove that nothing up to Seq was removed or rewritten.
type AuditCheckpoint struct {
	Seq       uint64    `json:"seq"`
	Hash      string    `json:"hash"`
	At        time.Time `json:"at"`
	Node      string    `json:"node"`
	Signature string    `json:"signature"` // base64 ASN.1 ECDSA over SHA-256 of CheckpointMessage
	Chain     string    `json:"chain"`     // PEM: the node certificate, its intermediate
}

// CheckpointMessage is what a checkpoint's signature covers.
func (c AuditCheckpoint) CheckpointMessage() []byte {
	return fmt.Appendf(nil, "govnet-audit-checkpoint/1\n%d\n%s\n%s\n%s\n", c.Seq, c.Hash, c.At.UTC().Format(time.RFC3339Nano), c.Node)
}

// maxCheckpointSkew is how far a checkpoint's time may precede the time
// of the entry it signs: both are leaders' clocks.
const maxCheckpointSkew = 5 * time.Minute

// VerifyCheckpoint checks a checkpoint's signature, and its certificate
// chain against roots at the time the checkpoint says it was signed (node
// certificates expire long before the chain they signed is audited), and
// that entries (an export from seq 1 or a later one) hold its head
// unchanged: a chain cut short or rewritten before the head fails. It
// returns the verified chain (leaf, intermediate, root): the caller
// decides whether the leaf may sign checkpoints, as only a controller
// node's certificate naming cp.Node may.
func VerifyCheckpoint(cp AuditCheckpoint, roots *x509.CertPool, entries []AuditEntry) ([]*x509.Certificate, error) {
	certs, err := certchain.ParsePEM([]byte(cp.Chain))
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	chain, err := certchain.NewVerifier(roots).Verify(certs, x509.ExtKeyUsageServerAuth, cp.At)
	if err != nil {
		return nil, fmt.Errorf("signed by %s (serial %x), whose certificate does not verify under this cluster's root at %s, when it says it signed: %w",
			certs[0].Subject.CommonName, certs[0].SerialNumber, cp.At.UTC().Format(time.RFC3339), err)
	}
	if err := checkSHA256Signature(chain[0], cp.CheckpointMessage(), cp.Signature); err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	for _, e := range entries {
		if e.Seq != cp.Seq {
			continue
		}
		if e.Hash != cp.Hash {
			return nil, fmt.Errorf("entry %d differs from the signed checkpoint: the chain up to it was rewritten", e.Seq)
		}
		if cp.At.Add(maxCheckpointSkew).Before(e.At) {
			return nil, fmt.Errorf("signed at %s, before the entry it signs was written (%s): a backdated checkpoint",
				cp.At.UTC().Format(time.RFC3339), e.At.UTC().Format(time.RFC3339))
		}
		return chain, nil
	}
	last := uint64(0)
	if len(entries) > 0 {
		last = entries[len(entries)-1].Seq
	}
	if len(entries) > 0 && cp.Seq < entries[0].Seq {
		return nil, fmt.Errorf("%w: the export starts at seq %d, after the checkpoint's seq %d", ErrCheckpointBeforeExport, entries[0].Seq, cp.Seq)
	}
	return nil, fmt.Errorf("the export ends at seq %d but node %s signed seq %d at %s: entries from seq %d on were removed", last, cp.Node, cp.Seq, cp.At.UTC().Format(time.RFC3339), last+1)
}

// CheckSignerRevocation looks for each certificate of a checkpoint
// signer's chain but the root (chain[0], the signer, issued by chain[1],
// the node's intermediate, issued by the root, as VerifyCheckpoint returns
// them) on the CRLs given: a CRL counts for chain[i] only if chain[i+1]
// signed it, and the newest such is consulted. A certificate revoked at
// or before at may not have signed then (nor issued the signer); one
// revoked for key compromise (reason 1) vouches for nothing, whenever the
// checkpoint says it was signed, as whoever holds the key can date one as
// they like. used[i] is the CRL consulted for chain[i], nil when none of
// crls is its issuer's.
func CheckSignerRevocation(chain []*x509.Certificate, at time.Time, crls []*x509.RevocationList) (used []*x509.RevocationList, err error) {
	if len(chain) < 2 {
		return nil, errors.New("no issuer in the signer's chain")
	}
	used = make([]*x509.RevocationList, len(chain)-1)
	for i := range used {
		cert, issuer := chain[i], chain[i+1]
		var crl *x509.RevocationList
		for _, l := range crls {
			if !bytes.Equal(l.RawIssuer, issuer.RawSubject) || l.CheckSignatureFrom(issuer) != nil {
				continue
			}
			if crl == nil || l.ThisUpdate.After(crl.ThisUpdate) {
				crl = l
			}
		}
		if used[i] = crl; crl == nil {
			continue
		}
		for _, r := range crl.RevokedCertificateEntries {
			if r.SerialNumber.Cmp(cert.SerialNumber) != 0 {
				continue
			}
			const keyCompromise = 1
			switch {
			case r.ReasonCode == keyCompromise:
				return used, fmt.Errorf("%w: certificate %x (%s) was revoked at %s for key compromise: anything its key signed may be forged",
					ErrSignerRevoked, cert.SerialNumber, cert.Subject.CommonName, r.RevocationTime.UTC().Format(time.RFC3339))
			case !r.RevocationTime.After(at):
				return used, fmt.Errorf("%w: certificate %x (%s) was revoked at %s (reason %d), before %s, when the checkpoint says it was signed",
					ErrSignerRevoked, cert.SerialNumber, cert.Subject.CommonName, r.RevocationTime.UTC().Format(time.RFC3339), r.ReasonCode, at.UTC().Format(time.RFC3339))
			}
		}
	}
	return used, nil
}

// ErrSignerRevoked is CheckSignerRevocation's error for a signer that was
// revoked.
var ErrSignerRevoked = errors.New("signer revoked")

// ErrCheckpointBeforeExport is VerifyCheckpoint's error for a checkpoint
// of an entry before the export's first (`audit export --since`): it
// says nothing about the entries exported.
var ErrCheckpointBeforeExport = errors.New("the checkpoint is before the export")
