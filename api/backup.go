package api

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	certchain "github.com/govnet/govnet/ca/chain"
)

// A backup (`govnetctl cluster snapshot save`) is the replicated state
// in raft's snapshot format followed by one more line, a BackupSignature:
// the node that wrote the backup signs its length and SHA-256 with its
// key, certified by its intermediate. A restore checks the line before it
// reads anything else, so an altered or truncated backup is refused
// whatever it holds.

// BackupSignatureFormat names the signature line's format.
const BackupSignatureFormat = "govnet-backup-signature/1"

// maxBackupTrailer bounds the signature line (a certificate chain and a
// few fields: about 3 KiB).
const maxBackupTrailer = 64 << 10

// BackupSignature is a backup's last line.
type BackupSignature struct {
	Format    string    `json:"format"` // BackupSignatureFormat
	SHA256    string    `json:"sha256"` // hex, of the Bytes bytes before this line
	Bytes     int64     `json:"bytes"`
	RaftIndex uint64    `json:"raft_index"` // the state's, as saved
	At        time.Time `json:"at"`         // the signing node's clock
	Node      string    `json:"node"`
	Signature string    `json:"signature"` // base64, over SHA-256 of Message
	Chain     string    `json:"chain"`     // PEM: the node certificate, its intermediate
}

// Message is what the signature covers.
func (s BackupSignature) Message() []byte {
	return fmt.Appendf(nil, "govnet-backup/1\n%s\n%d\n%d\n%s\n%s\n", s.SHA256, s.Bytes, s.RaftIndex, s.At.UTC().Format(time.RFC3339Nano), s.Node)
}

// BackupDigest is an io.Writer that takes a backup as it is written or
// read, without holding it: it hashes all but its last bytes, where the
// signature line is. Verify then checks that line.
type BackupDigest struct {
	h    hash.Hash
	n    int64  // bytes hashed
	tail []byte // the bytes written since: at least the last maxBackupTrailer, at most twice that
}

// NewBackupDigest returns an empty BackupDigest.
func NewBackupDigest() *BackupDigest { return &BackupDigest{h: sha256.New()} }

func (d *BackupDigest) Write(p []byte) (int, error) {
	if len(d.tail)+len(p) <= 2*maxBackupTrailer {
		d.tail = append(d.tail, p...)
		return len(p), nil
	}
	// Hash all but the last maxBackupTrailer bytes of tail and p.
	if len(p) >= maxBackupTrailer {
		k := len(p) - maxBackupTrailer
		d.h.Write(d.tail)
		d.h.Write(p[:k])
		d.n += int64(len(d.tail) + k)
		d.tail = append(d.tail[:0], p[k:]...)
		return len(p), nil
	}
	k := len(d.tail) + len(p) - maxBackupTrailer
	d.h.Write(d.tail[:k])
	d.n += int64(k)
	d.tail = append(d.tail[:copy(d.tail, d.tail[k:])], p...)
	return len(p), nil
}

// Verify checks the signature line of what was written: the length and
// digest of the rest, the signature, and the signer's certificate chain
// against roots at the time it says it signed. It returns the line and
// the verified chain (leaf, intermediate, root); the caller decides
// whether the leaf may sign backups, and whether to believe the time.
func (d *BackupDigest) Verify(roots *x509.CertPool) (BackupSignature, []*x509.Certificate, error) {
	var sig BackupSignature
	// The last line, and the blank space after it, must lie within the
	// last maxBackupTrailer bytes, which tail always holds, with the end
	// of the line before it: however the backup was written.
	body := bytes.TrimRight(d.tail, "\r\n\t ")
	start := bytes.LastIndexByte(body, '\n') + 1
	if len(d.tail)-start >= maxBackupTrailer || start == 0 && d.n > 0 {
		return sig, nil, fmt.Errorf("the backup's last line, with what follows it, is longer than a signature line (%d KiB): not a govnet backup, or one saved before backups were signed (save a new one)", maxBackupTrailer>>10)
	}
	if err := json.Unmarshal(body[start:], &sig); err != nil || sig.Format != BackupSignatureFormat {
		return sig, nil, errors.New("the backup does not end with a signature line: a file cut short, not a govnet backup, or one saved before backups were signed (save a new one)")
	}
	size := d.n + int64(start)
	if sig.Bytes != size {
		return sig, nil, fmt.Errorf("the backup holds %d bytes before its signature line, and its signature says %d: a file cut short or added to", size, sig.Bytes)
	}
	h, err := d.h.(hash.Cloner).Clone() // Verify leaves the digest as it was
	if err != nil {
		return sig, nil, err
	}
	h.Write(d.tail[:start])
	if got := hex.EncodeToString(h.Sum(nil)); got != sig.SHA256 {
		return sig, nil, fmt.Errorf("the backup's SHA-256 is %s, and its signature says %s: the file was altered", got, sig.SHA256)
	}
	certs, err := certchain.ParsePEM([]byte(sig.Chain))
	if err != nil {
		return sig, nil, fmt.Errorf("the backup's signature: %w", err)
	}
	chain, err := certchain.NewVerifier(roots).Verify(certs, x509.ExtKeyUsageServerAuth, sig.At)
	if err != nil {
		return sig, nil, fmt.Errorf("the backup was signed by %s (serial %x), whose certificate does not verify under this cluster's root at %s, when it says it signed: %w",
			certs[0].Subject.CommonName, certs[0].SerialNumber, sig.At.UTC().Format(time.RFC3339), err)
	}
	if err := checkSHA256Signature(chain[0], sig.Message(), sig.Signature); err != nil {
		return sig, nil, fmt.Errorf("the backup's signature by %s: %w: the file was altered", sig.Node, err)
	}
	return sig, chain, nil
}

// VerifyBackup reads a whole backup from r and checks it (BackupDigest).
func VerifyBackup(r io.Reader, roots *x509.CertPool) (BackupSignature, []*x509.Certificate, error) {
	d := NewBackupDigest()
	if _, err := io.Copy(d, r); err != nil {
		return BackupSignature{}, nil, err
	}
	return d.Verify(roots)
}

// checkSHA256Signature checks sig (base64), made by cert's key over the
// SHA-256 of msg: ASN.1 ECDSA, or RSA PKCS #1 v1.5.
func checkSHA256Signature(cert *x509.Certificate, msg []byte, sig string) error {
	raw, err := base64.StdEncoding.DecodeString(sig)
	if err != nil {
		return errors.New("the signature is not base64")
	}
	digest := sha256.Sum256(msg)
	switch pub := cert.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if ecdsa.VerifyASN1(pub, digest[:], raw) {
			return nil
		}
	case *rsa.PublicKey:
		if rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], raw) == nil {
			return nil
		}
	default:
		return fmt.Errorf("a %T key cannot sign", pub)
	}
	return errors.New("the signature does not verify")
}
