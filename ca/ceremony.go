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
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/internal/atomicfile"
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

// CeremonyPendingFile holds an interrupted ceremony's transcript so far
// (no secret: the custodians' share hashes and the secret's check value),
// from just before the token is activated until the ceremony is done.
// ResumeCeremony finishes from it.
const CeremonyPendingFile = "ceremony.pending.json"

// pendingCeremony is what CeremonyPendingFile holds.
type pendingCeremony struct {
	Transcript *Transcript `json:"transcript"`
	CommonName string      `json:"common_name"`
}

// RunCeremony performs the root key ceremony (see the package comment
// above). It refuses to run into a directory that holds an earlier
// ceremony and, because it replaces the token's PINs, can run on a token
// only once; a token that holds any key or certificate is refused before
// anything changes.
//
// Everything that can be checked is checked before the token is touched:
// the options, the output directory, and the root certificate itself,
// linted with a software key of the root key's type. If anything fails
// after the token was activated, the share files and CeremonyPendingFile
// stay and the error says so: ResumeCeremony, with M of the shares,
// finishes the ceremony on the same token.
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

	if _, err := os.Stat(filepath.Join(o.OutDir, CeremonyPendingFile)); err == nil {
		return nil, fmt.Errorf("ceremony: %s holds an interrupted ceremony: finish it with govnetd ceremony resume", o.OutDir)
	}
	for _, f := range []string{CeremonyRootFile, CeremonyTranscriptFile, CeremonySignatureFile} {
		if _, err := os.Stat(filepath.Join(o.OutDir, f)); err == nil {
			return nil, fmt.Errorf("ceremony: %s already exists: an earlier ceremony's output", filepath.Join(o.OutDir, f))
		}
	}
	// The root certificate as it will be, linted with a software key of
	// the root key's type: a subject the lint refuses (a common name over
	// 64 characters, say) is refused here, not after the token is handed
	// over to the quorum.
	if err := preflightRoot(o.CommonName, o.Now()); err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
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
	defer func() {
		for _, sh := range shares {
			clear(sh)
		}
	}()
	checked, subsets, err := checkSubsets(shares, o.Threshold, secret)
	if err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	if subsets.IsInt64() && int64(checked) == subsets.Int64() {
		step("generated a 256-bit activation secret and split it %d-of-%d; every %d-subset of shares (%d) checked", o.Threshold, len(o.Custodians), o.Threshold, subsets)
	} else {
		step("generated a 256-bit activation secret and split it %d-of-%d; %d of the %d %d-subsets of shares checked", o.Threshold, len(o.Custodians), checked, subsets, o.Threshold)
	}

	// Share files first: a token must never be activated without its
	// shares on disk. If activation fails with the token unchanged they
	// are removed; otherwise they are kept whatever happens, since they
	// are the only way in.
	res := &CeremonyResult{ShareFiles: map[string]string{}}
	pending := filepath.Join(o.OutDir, CeremonyPendingFile)
	keep := false
	defer func() {
		if err != nil && !keep {
			for _, p := range res.ShareFiles {
				os.Remove(p)
			}
			os.Remove(pending)
		}
	}()
	for i, name := range o.Custodians {
		path := filepath.Join(sharesDir, name+ShareFileSuffix)
		sum := sha256.Sum256(shares[i])
		tr.Custodians = append(tr.Custodians, CustodianRecord{Name: name, ShareFile: filepath.Join(CeremonySharesDir, name+ShareFileSuffix), ShareSHA256: hex.EncodeToString(sum[:])})
		sf := ShareFile{Version: 1, Kind: shareKind, CeremonyID: tr.CeremonyID, Custodian: name,
			Threshold: o.Threshold, Shares: len(o.Custodians), Share: base64.StdEncoding.EncodeToString(shares[i])}
		b, _ := json.MarshalIndent(sf, "", "  ")
		err := writeOnce(path, append(b, '\n'), 0o600)
		clear(b)
		if err != nil {
			return nil, fmt.Errorf("ceremony: share of %s: %w", name, err)
		}
		res.ShareFiles[name] = path
	}
	step("wrote %d share files (0600, created exclusively), one per custodian: %v", len(o.Custodians), o.Custodians)
	// The journal of the ceremony so far, which ResumeCeremony needs.
	pb, err := json.MarshalIndent(pendingCeremony{Transcript: tr, CommonName: o.CommonName}, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeOnce(pending, append(pb, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	if err := atomicfile.SyncDir(sharesDir); err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	if err := atomicfile.SyncDir(o.OutDir); err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}

	// 2. Hand the token over to the quorum.
	if err := hsm.ActivateToken(o.HSM, o.SOPIN, secret, o.HSMOptions...); err != nil {
		if errors.Is(err, hsm.ErrTokenUnchanged) {
			return nil, fmt.Errorf("ceremony: %w", err)
		}
		keep = true
		return nil, interrupted(o.OutDir, err)
	}
	keep = true
	step("token %q: user PIN and SO PIN replaced by values derived from the secret (the administrator's SO PIN no longer works)", o.HSM.TokenLabel)

	// 3. and 4.
	if err := finishCeremony(o.HSM, o.HSMOptions, o.OutDir, o.CommonName, o.Now, tr, secret, res, false); err != nil {
		return nil, interrupted(o.OutDir, err)
	}
	return res, nil
}

// interrupted is the error of a ceremony that failed after activating its
// token.
func interrupted(dir string, err error) error {
	return fmt.Errorf("ceremony: %w\nThe root token may already be under quorum control: the share files in %s are the only way into it; do not delete them. "+
		"Fix the cause, then finish the ceremony with M of them: govnetd ceremony resume --out %s --shares ...",
		err, filepath.Join(dir, CeremonySharesDir), dir)
}

// preflightRoot lints the root certificate for commonName as NewRoot
// would make it, with a software key of the root key's type.
func preflightRoot(commonName string, now time.Time) error {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return err
	}
	_, err = NewRoot(k, commonName, now)
	return err
}

// ResumeOptions say how to finish an interrupted ceremony.
type ResumeOptions struct {
	// Dir is the interrupted ceremony's directory (CeremonyPendingFile).
	Dir string
	// Module overrides the PKCS#11 module the ceremony recorded.
	Module     string
	HSMOptions []hsm.Option
	// ShareFiles are M custodians' share files (their contents).
	ShareFiles [][]byte
	Operator   string // who resumes it, for the transcript
	Now        func() time.Time
}

// ResumeCeremony finishes a ceremony that failed or was interrupted
// after its token was put under quorum control: with M of its shares it
// opens the token, keeps the root key if it was made (generates it if
// not) and root.pem if it was written for that key, and writes the signed
// transcript, which records the resumption. A directory with no
// CeremonyPendingFile is refused, and so is a token holding anything but
// the one root key.
func ResumeCeremony(o ResumeOptions) (*CeremonyResult, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Operator == "" {
		return nil, errors.New("resume ceremony: no operator named")
	}
	b, err := os.ReadFile(filepath.Join(o.Dir, CeremonyPendingFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("resume ceremony: %s holds no interrupted ceremony (%s)", o.Dir, CeremonyPendingFile)
	}
	if err != nil {
		return nil, fmt.Errorf("resume ceremony: %w", err)
	}
	var p pendingCeremony
	if err := json.Unmarshal(b, &p); err != nil || p.Transcript == nil || p.Transcript.Kind != transcriptKind || p.CommonName == "" {
		return nil, fmt.Errorf("resume ceremony: %s: not a govnet ceremony journal (%v)", filepath.Join(o.Dir, CeremonyPendingFile), err)
	}
	tr := p.Transcript
	secret, names, err := combineShareFiles(tr, o.ShareFiles)
	if err != nil {
		return nil, fmt.Errorf("resume ceremony %s: %w", tr.CeremonyID, err)
	}
	defer clear(secret)
	tr.Steps = append(tr.Steps, Step{At: o.Now().UTC(), Action: fmt.Sprintf("ceremony resumed by %s with the shares of %v", o.Operator, names)})
	cfg := hsm.Config{Module: tr.Token.Module, TokenLabel: tr.Token.Label}
	if o.Module != "" {
		cfg.Module = o.Module
	}
	res := &CeremonyResult{ShareFiles: map[string]string{}}
	for _, c := range tr.Custodians {
		res.ShareFiles[c.Name] = filepath.Join(o.Dir, c.ShareFile)
	}
	if err := finishCeremony(cfg, o.HSMOptions, o.Dir, p.CommonName, o.Now, tr, secret, res, true); err != nil {
		return nil, fmt.Errorf("resume ceremony %s: %w", tr.CeremonyID, err)
	}
	return res, nil
}

// finishCeremony makes the root key in the activated token (or, resuming,
// keeps the one there), the root certificate (or keeps root.pem if it is
// that key's) and the signed transcript, and removes the journal.
func finishCeremony(cfg hsm.Config, opts []hsm.Option, dir, commonName string, now func() time.Time, tr *Transcript, secret []byte, res *CeremonyResult, resume bool) error {
	step := func(format string, args ...any) {
		tr.Steps = append(tr.Steps, Step{At: now().UTC(), Action: fmt.Sprintf(format, args...)})
	}
	cfg.PIN = hsm.UserPIN(secret)
	tok, err := hsm.Open(cfg, opts...)
	if err != nil {
		return fmt.Errorf("open the activated token: %w", err)
	}
	defer tok.Close()
	if resume {
		step("token %q opens with the PIN derived from the secret: its PINs were replaced before the interruption", cfg.TokenLabel)
	}
	keys, err := tok.Keys()
	if err != nil {
		return err
	}
	rootPath := filepath.Join(dir, CeremonyRootFile)
	if _, err := os.Stat(rootPath); resume && err == nil && len(keys) == 0 {
		// Checked before a key is made: a root.pem for no key in the
		// token is not this ceremony's.
		return fmt.Errorf("%s exists but the token holds no root key: it is not this ceremony's; move it away and resume again", rootPath)
	}
	var key crypto.Signer
	generated := len(keys) == 0
	switch {
	case generated:
		if key, err = tok.GenerateKey(RootKeyLabel, elliptic.P384()); err != nil {
			return err
		}
	case resume && len(keys) == 1 && keys[0].Label == RootKeyLabel:
		if key, err = tok.Signer(RootKeyLabel); err != nil {
			return err
		}
	default:
		return fmt.Errorf("token %q already holds %d private key(s); the root token must hold the root key alone", cfg.TokenLabel, len(keys))
	}
	keys, err = tok.Keys()
	if err != nil || len(keys) != 1 {
		return fmt.Errorf("read back the root key: %d keys, %v", len(keys), err)
	}
	k := keys[0]
	tr.RootKey.Label, tr.RootKey.ID, tr.RootKey.Type, tr.RootKey.Curve = k.Label, k.ID, k.KeyType, k.Curve
	tr.RootKey.Sensitive, tr.RootKey.Extractable = k.Sensitive, k.Extractable
	tr.RootKey.AlwaysSensitive, tr.RootKey.NeverExtractable = k.AlwaysSensitive, k.NeverExtractable
	if !k.Sensitive || k.Extractable || !k.AlwaysSensitive || !k.NeverExtractable || k.Curve != "P-384" {
		return fmt.Errorf("root key %s: sensitive=%v extractable=%v curve %s: refusing", k.ID, k.Sensitive, k.Extractable, k.Curve)
	}
	if generated {
		step("generated root key %q (id %s, EC %s) in the token: sensitive, never extractable", k.Label, k.ID, k.Curve)
	} else {
		step("kept root key %q (id %s, EC %s), generated in the token before the interruption: sensitive, never extractable", k.Label, k.ID, k.Curve)
	}

	root, err := resumedRoot(rootPath, key, resume)
	if err != nil {
		return err
	}
	if root == nil {
		if root, err = NewRoot(key, commonName, now()); err != nil {
			return err
		}
		if err := writeOnce(rootPath, EncodePEM(root), 0o644); err != nil {
			return err
		}
	}
	tr.RootCertificate = certRecord(root)
	res.Root = root
	step("self-signed root certificate %q, serial %s, SHA-256 %s, linted clean", commonName, Serial(root), Fingerprint(root))

	// An unsigned transcript left by an interruption is rewritten.
	trPath, sigPath := filepath.Join(dir, CeremonyTranscriptFile), filepath.Join(dir, CeremonySignatureFile)
	if resume {
		os.Remove(sigPath)
		os.Remove(trPath)
	}
	tr.FinishedAt = now().UTC()
	step("transcript signed by the root key")
	body, err := json.MarshalIndent(tr, "", "  ")
	if err != nil {
		return err
	}
	body = append(body, '\n')
	sig, err := signTranscript(key, body)
	if err != nil {
		return fmt.Errorf("sign transcript: %w", err)
	}
	// The signature is written last: a transcript without one is an
	// interrupted ceremony's, and LoadCeremony refuses it.
	if err := writeOnce(trPath, body, 0o644); err != nil {
		return err
	}
	if err := writeOnce(sigPath, sig, 0o644); err != nil {
		return err
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, CeremonyPendingFile)); err != nil {
		return err
	}
	res.Transcript = tr
	return atomicfile.SyncDir(dir)
}

// resumedRoot returns the root certificate at path if resuming and it is
// key's, nil if there is none to keep; a root.pem of another key is
// refused.
func resumedRoot(path string, key crypto.Signer, resume bool) (*x509.Certificate, error) {
	if !resume {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	certs, err := ParsePEM(b)
	if err != nil || len(certs) != 1 {
		return nil, fmt.Errorf("%s: not the one certificate a ceremony writes (%v): move it away and resume again", path, err)
	}
	if !SamePublicKey(certs[0].PublicKey, key.Public()) {
		return nil, fmt.Errorf("%s is not the root token's key's certificate", path)
	}
	return certs[0], nil
}

// maxSubsetChecks bounds how many M-subsets of the shares a ceremony
// combines (all of them for every committee of a usual size: 5-of-9 has
// 126, 7-of-15 6,435).
const maxSubsetChecks = 10000

// checkSubsets combines every M-subset of shares (or, if there are more
// than maxSubsetChecks of them, the first maxSubsetChecks), compares each
// with secret, and returns how many it checked of how many there are.
func checkSubsets(shares [][]byte, m int, secret []byte) (checked int, total *big.Int, _ error) {
	total = new(big.Int).Binomial(int64(len(shares)), int64(m))
	idx := make([]int, m)
	for i := range idx {
		idx[i] = i
	}
	sub := make([][]byte, m)
	for checked < maxSubsetChecks {
		for i, j := range idx {
			sub[i] = shares[j]
		}
		got, err := hsm.CombineShares(sub)
		if err != nil {
			return checked, total, err
		}
		ok := bytes.Equal(got, secret)
		clear(got)
		if !ok {
			return checked, total, fmt.Errorf("shares %v do not reconstruct the secret", idx)
		}
		checked++
		// next combination
		i := m - 1
		for i >= 0 && idx[i] == len(shares)-m+i {
			i--
		}
		if i < 0 {
			break
		}
		idx[i]++
		for j := i + 1; j < m; j++ {
			idx[j] = idx[j-1] + 1
		}
	}
	return checked, total, nil
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
// and syncs data; a file it could not write whole is removed.
func writeOnce(path string, data []byte, perm os.FileMode) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(path)
		}
	}()
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
