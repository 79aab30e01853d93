package ca

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/govnet/govnet/hsm"
)

// Errors of root operations; errors.Is tells them apart.
var (
	// ErrQuorum: fewer shares than the ceremony's threshold were given.
	ErrQuorum = errors.New("not enough custodian shares")
	// ErrSharesMismatch: the shares are not the ceremony's, or do not
	// reconstruct its secret.
	ErrSharesMismatch = errors.New("shares do not reconstruct the root secret")
)

// Audit outcomes.
const (
	AuditDone    = "done"
	AuditRefused = "refused"
)

// Root actions, as audited.
const (
	ActionRootOpen             = "root.open"
	ActionRootSignIntermediate = "root.sign-intermediate"
	ActionRootCRL              = "root.crl"
)

// AuditEvent is one root operation, done or refused.
type AuditEvent struct {
	Time       time.Time `json:"time"`
	Action     string    `json:"action"`  // ActionRoot...
	Outcome    string    `json:"outcome"` // AuditDone or AuditRefused
	Actor      string    `json:"actor"`
	CeremonyID string    `json:"ceremony_id"`
	Custodians []string  `json:"custodians"` // whose shares were presented
	Detail     string    `json:"detail"`     // what was signed, or why it was refused
}

// AuditFunc receives every root operation. The controller wires it to
// its audit chain; it must not block for long.
type AuditFunc func(context.Context, AuditEvent)

// RootOptions say where the ceremony's output and the root token are.
type RootOptions struct {
	Dir        string // ceremony directory: root.pem, transcript.json, transcript.json.sig
	Module     string // PKCS#11 module; empty: the one the transcript names
	HSMOptions []hsm.Option
	Actor      string // who asks for the operation
	Audit      AuditFunc
	Now        func() time.Time
	// RootCRLURL, if set, goes into intermediates as their CRL
	// distribution point (the root's CRL).
	RootCRLURL string
	// RootCRLValidity is how far ahead a root CRL's nextUpdate is
	// (default and maximum MaxRootCRLValidity): the root is used
	// rarely, so its CRL lives longer than an intermediate's.
	RootCRLValidity time.Duration
}

// MaxRootCRLValidity bounds a root CRL's nextUpdate.
const MaxRootCRLValidity = 90 * 24 * time.Hour

// RootCA is the root key opened by a quorum of custodians.
type RootCA struct {
	o          RootOptions
	tr         *Transcript
	cert       *x509.Certificate
	tok        *hsm.Token
	signer     crypto.Signer
	custodians []string
	linter     *Linter
}

// LoadCeremony reads and verifies a ceremony directory: the transcript's
// signature against root.pem, and that it names that root.
func LoadCeremony(dir string) (*Transcript, *x509.Certificate, error) {
	pemBytes, err := os.ReadFile(filepath.Join(dir, CeremonyRootFile))
	if err != nil {
		return nil, nil, fmt.Errorf("ceremony directory: %w", err)
	}
	certs, err := ParsePEM(pemBytes)
	if err != nil {
		return nil, nil, fmt.Errorf("ceremony directory: %s: %w", CeremonyRootFile, err)
	}
	body, err := os.ReadFile(filepath.Join(dir, CeremonyTranscriptFile))
	if err != nil {
		return nil, nil, fmt.Errorf("ceremony directory: %w", err)
	}
	sig, err := os.ReadFile(filepath.Join(dir, CeremonySignatureFile))
	if err != nil {
		return nil, nil, fmt.Errorf("ceremony directory: %w", err)
	}
	tr, err := VerifyTranscript(body, sig, certs[0])
	if err != nil {
		return nil, nil, err
	}
	return tr, certs[0], nil
}

// ReadShareFiles reads custodians' share files.
func ReadShareFiles(paths ...string) ([][]byte, error) {
	out := make([][]byte, 0, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("share: %w", err)
		}
		out = append(out, b)
	}
	return out, nil
}

// OpenRoot opens the root key with custodians' share files (their
// contents). Fewer than the ceremony's threshold is refused with
// ErrQuorum, shares that are not the ceremony's or do not reconstruct its
// secret with ErrSharesMismatch; the secret is checked against the
// transcript before any PIN reaches the token, so a wrong set of shares
// never costs a PIN attempt. Every refusal and success is reported to
// o.Audit.
func OpenRoot(ctx context.Context, o RootOptions, shareFiles [][]byte) (*RootCA, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.RootCRLValidity == 0 {
		o.RootCRLValidity = MaxRootCRLValidity
	}
	r := &RootCA{o: o}
	tr, cert, err := LoadCeremony(o.Dir)
	if err != nil {
		r.audit(ctx, ActionRootOpen, AuditRefused, err.Error())
		return nil, err
	}
	r.tr, r.cert = tr, cert
	secret, custodians, err := combineShareFiles(tr, shareFiles)
	r.custodians = custodians
	if err != nil {
		r.audit(ctx, ActionRootOpen, AuditRefused, err.Error())
		return nil, err
	}
	defer clear(secret)
	module := o.Module
	if module == "" {
		module = tr.Token.Module
	}
	tok, err := hsm.Open(hsm.Config{Module: module, TokenLabel: tr.Token.Label, PIN: hsm.UserPIN(secret)}, o.HSMOptions...)
	if err != nil {
		err = fmt.Errorf("open the root token: %w", err)
		r.audit(ctx, ActionRootOpen, AuditRefused, err.Error())
		return nil, err
	}
	signer, err := tok.Signer(RootKeyLabel)
	if err == nil && !SamePublicKey(cert.PublicKey, signer.Public()) {
		err = errors.New("the root token's key does not match root.pem")
	}
	if err != nil {
		tok.Close()
		err = fmt.Errorf("root key: %w", err)
		r.audit(ctx, ActionRootOpen, AuditRefused, err.Error())
		return nil, err
	}
	r.tok, r.signer = tok, signer
	r.linter, err = defaultLinter()
	if err != nil {
		tok.Close()
		return nil, err
	}
	r.audit(ctx, ActionRootOpen, AuditDone, fmt.Sprintf("root %s opened with %d of %d shares", Fingerprint(cert), len(custodians), tr.Shares))
	return r, nil
}

// combineShareFiles checks the share files against the transcript and
// reconstructs the secret.
func combineShareFiles(tr *Transcript, files [][]byte) ([]byte, []string, error) {
	want := map[string]string{} // custodian -> share SHA-256
	for _, c := range tr.Custodians {
		want[c.Name] = c.ShareSHA256
	}
	var (
		shares [][]byte
		names  []string
		seen   = map[string]bool{}
	)
	for i, b := range files {
		var sf ShareFile
		if err := json.Unmarshal(b, &sf); err != nil || sf.Kind != shareKind {
			return nil, names, fmt.Errorf("%w: share %d is not a govnet share file", ErrSharesMismatch, i+1)
		}
		if sf.CeremonyID != tr.CeremonyID {
			return nil, names, fmt.Errorf("%w: %s's share is from ceremony %s, not %s", ErrSharesMismatch, sf.Custodian, sf.CeremonyID, tr.CeremonyID)
		}
		sum, ok := want[sf.Custodian]
		if !ok {
			return nil, names, fmt.Errorf("%w: %q is not a custodian of ceremony %s", ErrSharesMismatch, sf.Custodian, tr.CeremonyID)
		}
		if seen[sf.Custodian] {
			return nil, names, fmt.Errorf("%w: %s's share given twice", ErrSharesMismatch, sf.Custodian)
		}
		seen[sf.Custodian] = true
		names = append(names, sf.Custodian)
		raw, err := base64.StdEncoding.DecodeString(sf.Share)
		h := sha256.Sum256(raw)
		if err != nil || hex.EncodeToString(h[:]) != sum {
			return nil, names, fmt.Errorf("%w: %s's share is not the one the ceremony gave them", ErrSharesMismatch, sf.Custodian)
		}
		shares = append(shares, raw)
	}
	if len(shares) < tr.Threshold {
		return nil, names, fmt.Errorf("%w: %d of %d shares given; the ceremony requires %d", ErrQuorum, len(shares), tr.Threshold, tr.Threshold)
	}
	secret, err := hsm.CombineShares(shares)
	for _, sh := range shares {
		clear(sh)
	}
	if err != nil {
		return nil, names, fmt.Errorf("%w: %v", ErrSharesMismatch, err)
	}
	if !hsm.SecretMatches(secret, tr.SecretCheck) {
		clear(secret)
		return nil, names, ErrSharesMismatch
	}
	return secret, names, nil
}

func (r *RootCA) audit(ctx context.Context, action, outcome, detail string) {
	if r.o.Audit == nil {
		return
	}
	e := AuditEvent{Time: r.o.Now().UTC(), Action: action, Outcome: outcome, Actor: r.o.Actor, Custodians: r.custodians, Detail: detail}
	if r.tr != nil {
		e.CeremonyID = r.tr.CeremonyID
	}
	r.o.Audit(ctx, e)
}

// Certificate returns the root certificate.
func (r *RootCA) Certificate() *x509.Certificate { return r.cert }

// Transcript returns the verified ceremony transcript.
func (r *RootCA) Transcript() *Transcript { return r.tr }

// Close closes the root token.
func (r *RootCA) Close() error { return r.tok.Close() }

// nodeNameRe is the form of a controller node name.
var nodeNameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// IntermediateCommonName is the subject CN of node's intermediate.
func IntermediateCommonName(node string) string { return "govnet Intermediate CA " + node }

// SignIntermediate signs the intermediate of controller node from the CSR
// the node made with its own HSM key (ECDSA P-256 or P-384). Only the key
// is taken from the CSR.
func (r *RootCA) SignIntermediate(ctx context.Context, csr *x509.CertificateRequest, node string) (*x509.Certificate, error) {
	cert, err := r.signIntermediate(csr, node)
	if err != nil {
		r.audit(ctx, ActionRootSignIntermediate, AuditRefused, fmt.Sprintf("node %q: %v", node, err))
		return nil, err
	}
	r.audit(ctx, ActionRootSignIntermediate, AuditDone, fmt.Sprintf("node %q: intermediate serial %s, SHA-256 %s", node, Serial(cert), Fingerprint(cert)))
	return cert, nil
}

func (r *RootCA) signIntermediate(csr *x509.CertificateRequest, node string) (*x509.Certificate, error) {
	if !nodeNameRe.MatchString(node) {
		return nil, fmt.Errorf("%w: node name %q is not one lower-case DNS label", ErrProfile, node)
	}
	if csr == nil {
		return nil, fmt.Errorf("%w: none given", ErrBadCSR)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify: %v", ErrBadCSR, err)
	}
	return newIntermediate(r.cert, r.signer, csr.PublicKey, IntermediateCommonName(node), r.o.Now(), r.o.RootCRLURL)
}

// CRL signs the root's CRL: the revoked intermediates in entries, CRL
// number number, nextUpdate RootCRLValidity ahead.
func (r *RootCA) CRL(ctx context.Context, entries []Revoked, number *big.Int) ([]byte, error) {
	der, err := r.linter.crl(r.cert, r.signer, entries, number, r.o.Now(), r.o.RootCRLValidity, MaxRootCRLValidity)
	if err != nil {
		r.audit(ctx, ActionRootCRL, AuditRefused, err.Error())
		return nil, err
	}
	r.audit(ctx, ActionRootCRL, AuditDone, fmt.Sprintf("root CRL %v with %d entries", number, len(entries)))
	return der, nil
}
