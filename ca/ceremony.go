package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/govnet/govnet/hsm"
)

// The Cipher Committee's root key ceremony.
//
// The root key lives alone in its own HSM token. The token is initialized
// beforehand by the HSM administrator (SoftHSM2: softhsm2-util
// --init-token --label L --so-pin S --pin <anything>), because
// initializing a token is a vendor procedure on real HSMs and SoftHSM2
// only sees tokens that exist when the library is loaded. The ceremony
// (RunCeremony) then:
//
//  1. makes a random 256-bit activation secret and splits it M-of-N with
//     Shamir's scheme among the named custodians, checks that every
//     M-subset reconstructs it, and writes each share once (O_EXCL, 0600)
//     to its own file;
//  2. logs in as SO with the administrator's SO PIN and replaces both the
//     user PIN and the SO PIN with values derived from the secret
//     (hsm.ActivateToken): from then on no one person can log in;
//  3. generates the root key (ECDSA P-384, sensitive, never extractable)
//     in the token, self-signs and lints the root certificate;
//  4. writes root.pem and a JSON transcript (transcript.json) signed by
//     the new root key (transcript.json.sig, an ASN.1 ECDSA signature over
//     SHA-384 of the file: openssl dgst -sha384 -verify root-pub.pem
//     -signature transcript.json.sig transcript.json).
//
// The secret itself is never written or shown. Later root operations
// (OpenRoot) need M share files and the ceremony directory.

// RootKeyLabel is the label of the root key in the root token.
const RootKeyLabel = "govnet-root"

// Files in a ceremony directory.
const (
	CeremonyRootFile       = "root.pem"
	CeremonyTranscriptFile = "transcript.json"
	CeremonySignatureFile  = "transcript.json.sig"
	CeremonySharesDir      = "shares"
	ShareFileSuffix        = ".share"
)

// CeremonyOptions say how to run the root key ceremony.
type CeremonyOptions struct {
	// HSM names the root token (Module, TokenLabel); its PIN is ignored.
	HSM        hsm.Config
	HSMOptions []hsm.Option
	// SOPIN is the token's SO PIN as the administrator set it. The
	// ceremony replaces it with one derived from the shared secret.
	SOPIN      string
	Custodians []string // N named custodians, one share each
	Threshold  int      // M: shares needed to use the root
	OutDir     string   // created if missing; must hold no earlier ceremony
	Operator   string   // who runs the ceremony, for the transcript
	CommonName string   // root subject CN; default "govnet Root CA"
	Now        func() time.Time
}

// Transcript records a ceremony. It is signed by the root key it created.
type Transcript struct {
	Version    int       `json:"version"`
	Kind       string    `json:"kind"`
	CeremonyID string    `json:"ceremony_id"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	Operator   string    `json:"operator"`
	Host       string    `json:"host"`

	Token struct {
		Module string `json:"module"`
		Label  string `json:"label"`
	} `json:"token"`
	RootKey struct {
		Label            string `json:"label"`
		ID               string `json:"id"`
		Type             string `json:"type"`
		Curve            string `json:"curve"`
		Sensitive        bool   `json:"sensitive"`
		Extractable      bool   `json:"extractable"`
		AlwaysSensitive  bool   `json:"always_sensitive"`
		NeverExtractable bool   `json:"never_extractable"`
	} `json:"root_key"`
	RootCertificate CertRecord `json:"root_certificate"`

	Threshold  int               `json:"threshold"`
	Shares     int               `json:"shares"`
	Custodians []CustodianRecord `json:"custodians"`
	// SecretCheck identifies the activation secret (hsm.SecretCheck), so
	// that a reconstruction is checked before any PIN reaches the token.
	SecretCheck   string `json:"secret_check"`
	PINDerivation string `json:"pin_derivation"`
	Steps         []Step `json:"steps"`
}

// CertRecord identifies a certificate in a transcript.
type CertRecord struct {
	Subject      string    `json:"subject"`
	Serial       string    `json:"serial"`
	SHA256       string    `json:"sha256"`
	SubjectKeyID string    `json:"subject_key_id"`
	NotBefore    time.Time `json:"not_before"`
	NotAfter     time.Time `json:"not_after"`
}

func certRecord(c *x509.Certificate) CertRecord {
	return CertRecord{
		Subject: c.Subject.String(), Serial: Serial(c), SHA256: Fingerprint(c),
		SubjectKeyID: hex.EncodeToString(c.SubjectKeyId), NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(),
	}
}

// CustodianRecord says who holds which share.
type CustodianRecord struct {
	Name        string `json:"name"`
	ShareFile   string `json:"share_file"`
	ShareSHA256 string `json:"share_sha256"` // of the share bytes: names whose share is wrong
}

// Step is one thing the ceremony did.
type Step struct {
	At     time.Time `json:"at"`
	Action string    `json:"action"`
}

// ShareFile is what a custodian keeps.
type ShareFile struct {
	Version    int    `json:"version"`
	Kind       string `json:"kind"`
	CeremonyID string `json:"ceremony_id"`
	Custodian  string `json:"custodian"`
	Threshold  int    `json:"threshold"`
	Shares     int    `json:"shares"`
	Share      string `json:"share"` // base64
}

const (
	transcriptKind = "govnet root key ceremony"
	shareKind      = "govnet root key share"
)

// custodianRe: a name that is also a safe file name.
var custodianRe = regexp.MustCompile(`^[\p{L}\p{N}][\p{L}\p{N}._-]{0,63}$`)

// CeremonyResult is what RunCeremony made.
type CeremonyResult struct {
	Root       *x509.Certificate
	Transcript *Transcript
	ShareFiles map[string]string // custodian -> path
}

func (o *CeremonyOptions) validate() error {
	var errs []error
	n, m := len(o.Custodians), o.Threshold
	if m < 2 || m > n || n > 255 {
		errs = append(errs, fmt.Errorf("threshold %d of %d custodians: want 2 <= M <= N <= 255", m, n))
	}
	seen := map[string]bool{}
	for _, c := range o.Custodians {
		if !custodianRe.MatchString(c) {
			errs = append(errs, fmt.Errorf("custodian %q: want letters, digits, '.', '_' or '-' (at most 64)", c))
		}
		if seen[c] {
			errs = append(errs, fmt.Errorf("custodian %q named twice", c))
		}
		seen[c] = true
	}
	if o.HSM.TokenLabel == "" {
		errs = append(errs, errors.New("no root token label"))
	}
	if o.SOPIN == "" {
		errs = append(errs, errors.New("no SO PIN"))
	}
	if o.OutDir == "" {
		errs = append(errs, errors.New("no output directory"))
	}
	if o.Operator == "" {
		errs = append(errs, errors.New("no operator named"))
	}
	return errors.Join(errs...)
}

// RunCeremony performs the root key ceremony (see the package comment
// above). It refuses to run into a directory that holds an earlier
// ceremony and, because it replaces the token's PINs, can run on a token
// only once.
func RunCeremony(o CeremonyOptions) (_ *CeremonyResult, err error) {
	if err := o.validate(); err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.CommonName == "" {
		o.CommonName = "govnet Root CA"
	}
	tr := &Transcript{Version: 1, Kind: transcriptKind, StartedAt: o.Now().UTC(), Operator: o.Operator,
		Threshold: o.Threshold, Shares: len(o.Custodians),
		PINDerivation: "user PIN and SO PIN = hex(HMAC-SHA256(secret, purpose)[:16]); secret = Shamir-combined shares"}
	tr.Host, _ = os.Hostname()
	tr.Token.Module, tr.Token.Label = o.HSM.Module, o.HSM.TokenLabel
	step := func(format string, args ...any) {
		tr.Steps = append(tr.Steps, Step{At: o.Now().UTC(), Action: fmt.Sprintf(format, args...)})
	}
	id := make([]byte, 8)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	tr.CeremonyID = hex.EncodeToString(id)

	for _, f := range []string{CeremonyRootFile, CeremonyTranscriptFile, CeremonySignatureFile} {
		if _, err := os.Stat(filepath.Join(o.OutDir, f)); err == nil {
			return nil, fmt.Errorf("ceremony: %s already exists: an earlier ceremony's output", filepath.Join(o.OutDir, f))
		}
	}
	sharesDir := filepath.Join(o.OutDir, CeremonySharesDir)
	if err := os.MkdirAll(sharesDir, 0o700); err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}

	// 1. The secret and its shares.
	secret, err := hsm.NewSecret()
	if err != nil {
		return nil, err
	}
	defer clear(secret)
	tr.SecretCheck = hsm.SecretCheck(secret)
	shares, err := hsm.SplitSecret(secret, len(o.Custodians), o.Threshold)
	if err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	if err := checkAllSubsets(shares, o.Threshold, secret); err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	step("generated a 256-bit activation secret and split it %d-of-%d; every %d-subset of shares checked", o.Threshold, len(o.Custodians), o.Threshold)

	// Share files first: a token must never be activated without its
	// shares on disk. If activation fails they are removed; after it they
	// are kept whatever happens, since they are the only way in.
	res := &CeremonyResult{ShareFiles: map[string]string{}}
	activated := false
	defer func() {
		if err != nil && !activated {
			for _, p := range res.ShareFiles {
				os.Remove(p)
			}
		}
	}()
	for i, name := range o.Custodians {
		path := filepath.Join(sharesDir, name+ShareFileSuffix)
		sum := sha256.Sum256(shares[i])
		tr.Custodians = append(tr.Custodians, CustodianRecord{Name: name, ShareFile: filepath.Join(CeremonySharesDir, name+ShareFileSuffix), ShareSHA256: hex.EncodeToString(sum[:])})
		sf := ShareFile{Version: 1, Kind: shareKind, CeremonyID: tr.CeremonyID, Custodian: name,
			Threshold: o.Threshold, Shares: len(o.Custodians), Share: base64.StdEncoding.EncodeToString(shares[i])}
		b, _ := json.MarshalIndent(sf, "", "  ")
		if err := writeOnce(path, append(b, '\n'), 0o600); err != nil {
			return nil, fmt.Errorf("ceremony: share of %s: %w", name, err)
		}
		res.ShareFiles[name] = path
	}

	// 2. Hand the token over to the quorum.
	step("wrote %d share files (0600, created exclusively), one per custodian: %v", len(o.Custodians), o.Custodians)
	if err := hsm.ActivateToken(o.HSM, o.SOPIN, secret, o.HSMOptions...); err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	activated = true
	step("token %q: user PIN and SO PIN replaced by values derived from the secret (the administrator's SO PIN no longer works)", o.HSM.TokenLabel)

	// 3. The root key and certificate.
	cfg := o.HSM
	cfg.PIN = hsm.UserPIN(secret)
	tok, err := hsm.Open(cfg, o.HSMOptions...)
	if err != nil {
		return nil, fmt.Errorf("ceremony: open the activated token: %w", err)
	}
	defer tok.Close()
	if keys, err := tok.Keys(); err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	} else if len(keys) > 0 {
		return nil, fmt.Errorf("ceremony: token %q already holds %d private key(s); the root token must be fresh", o.HSM.TokenLabel, len(keys))
	}
	key, err := tok.GenerateKey(RootKeyLabel, elliptic.P384())
	if err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	keys, err := tok.Keys()
	if err != nil || len(keys) != 1 {
		return nil, fmt.Errorf("ceremony: read back the root key: %d keys, %v", len(keys), err)
	}
	k := keys[0]
	tr.RootKey.Label, tr.RootKey.ID, tr.RootKey.Type, tr.RootKey.Curve = k.Label, k.ID, k.KeyType, k.Curve
	tr.RootKey.Sensitive, tr.RootKey.Extractable = k.Sensitive, k.Extractable
	tr.RootKey.AlwaysSensitive, tr.RootKey.NeverExtractable = k.AlwaysSensitive, k.NeverExtractable
	if !k.Sensitive || k.Extractable || !k.AlwaysSensitive || !k.NeverExtractable {
		return nil, fmt.Errorf("ceremony: root key %s: sensitive=%v extractable=%v: refusing", k.ID, k.Sensitive, k.Extractable)
	}
	step("generated root key %q (id %s, EC %s) in the token: sensitive, never extractable", k.Label, k.ID, k.Curve)
	root, err := NewRoot(key, o.CommonName, o.Now())
	if err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	tr.RootCertificate = certRecord(root)
	res.Root = root
	step("self-signed root certificate %q, serial %s, SHA-256 %s, linted clean", o.CommonName, Serial(root), Fingerprint(root))

	// 4. Root certificate and transcript.
	if err := writeOnce(filepath.Join(o.OutDir, CeremonyRootFile), EncodePEM(root), 0o644); err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	tr.FinishedAt = o.Now().UTC()
	step("transcript signed by the root key")
	body, err := json.MarshalIndent(tr, "", "  ")
	if err != nil {
		return nil, err
	}
	body = append(body, '\n')
	sig, err := signTranscript(key, body)
	if err != nil {
		return nil, fmt.Errorf("ceremony: sign transcript: %w", err)
	}
	if err := writeOnce(filepath.Join(o.OutDir, CeremonyTranscriptFile), body, 0o644); err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	if err := writeOnce(filepath.Join(o.OutDir, CeremonySignatureFile), sig, 0o644); err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	res.Transcript = tr
	return res, nil
}

// checkAllSubsets combines every M-subset of shares (or, if there are
// more than 2000 of them, the first 2000) and compares with secret.
func checkAllSubsets(shares [][]byte, m int, secret []byte) error {
	idx := make([]int, m)
	for i := range idx {
		idx[i] = i
	}
	for tried := 0; tried < 2000; tried++ {
		sub := make([][]byte, m)
		for i, j := range idx {
			sub[i] = shares[j]
		}
		got, err := hsm.CombineShares(sub)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, secret) {
			return fmt.Errorf("shares %v do not reconstruct the secret", idx)
		}
		// next combination
		i := m - 1
		for i >= 0 && idx[i] == len(shares)-m+i {
			i--
		}
		if i < 0 {
			return nil
		}
		idx[i]++
		for j := i + 1; j < m; j++ {
			idx[j] = idx[j-1] + 1
		}
	}
	return nil
}

func signTranscript(key crypto.Signer, body []byte) ([]byte, error) {
	d := sha512.Sum384(body)
	return key.Sign(rand.Reader, d[:], crypto.SHA384)
}

// VerifyTranscript checks sig (from transcript.json.sig) over body (the
// bytes of transcript.json) with root's key, and that the transcript
// names root.
func VerifyTranscript(body, sig []byte, root *x509.Certificate) (*Transcript, error) {
	pub, ok := root.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("transcript: root key is %T, want ECDSA", root.PublicKey)
	}
	d := sha512.Sum384(body)
	if !ecdsa.VerifyASN1(pub, d[:], sig) {
		return nil, errors.New("transcript: signature does not verify with the root key")
	}
	var tr Transcript
	if err := json.Unmarshal(body, &tr); err != nil {
		return nil, fmt.Errorf("transcript: %w", err)
	}
	if tr.Kind != transcriptKind || tr.Version != 1 {
		return nil, fmt.Errorf("transcript: kind %q version %d", tr.Kind, tr.Version)
	}
	if tr.RootCertificate.SHA256 != Fingerprint(root) {
		return nil, errors.New("transcript: names another root certificate")
	}
	return &tr, nil
}

// writeOnce creates path (never overwriting) with mode perm and writes
// data.
func writeOnce(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
