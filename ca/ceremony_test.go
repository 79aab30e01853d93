package ca

import (
	"context"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/hsm/hsmtest"
)

type auditLog struct {
	mu     sync.Mutex
	events []AuditEvent
}

func (a *auditLog) record(_ context.Context, e AuditEvent) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events = append(a.events, e)
}

func (a *auditLog) last() AuditEvent {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.events) == 0 {
		return AuditEvent{}
	}
	return a.events[len(a.events)-1]
}

var custodians = []string{"an", "binh", "cuong", "dung", "em"}

func runCeremony(t *testing.T) (dir string, rootCfg hsm.Config, res *CeremonyResult) {
	t.Helper()
	rootCfg = hsmtest.NewToken(t)
	dir = filepath.Join(t.TempDir(), "ceremony")
	res, err := RunCeremony(CeremonyOptions{
		HSM: rootCfg, SOPIN: hsmtest.SOPIN(rootCfg.TokenLabel),
		Custodians: custodians, Threshold: 3, OutDir: dir, Operator: "officer Trần",
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir, rootCfg, res
}

func shareFiles(t *testing.T, dir string, names ...string) [][]byte {
	t.Helper()
	var paths []string
	for _, n := range names {
		paths = append(paths, filepath.Join(dir, CeremonySharesDir, n+ShareFileSuffix))
	}
	b, err := ReadShareFiles(paths...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCeremony(t *testing.T) {
	dir, rootCfg, res := runCeremony(t)
	tr := res.Transcript

	// One share file per custodian, 0600.
	for _, n := range custodians {
		fi, err := os.Stat(res.ShareFiles[n])
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v", fi.Name(), fi.Mode())
		}
	}
	// The transcript is signed by the new root and says what was done.
	gotTr, root, err := LoadCeremony(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !root.Equal(res.Root) || gotTr.CeremonyID != tr.CeremonyID {
		t.Fatal("ceremony directory does not hold the ceremony's root and transcript")
	}
	if tr.Threshold != 3 || tr.Shares != 5 || len(tr.Custodians) != 5 || tr.RootKey.Extractable || !tr.RootKey.Sensitive ||
		!tr.RootKey.NeverExtractable || tr.RootKey.Curve != "P-384" || tr.RootCertificate.SHA256 != Fingerprint(root) ||
		!strings.HasPrefix(tr.SecretCheck, "hmac-sha256:") || tr.Operator != "officer Trần" || len(tr.Steps) < 5 {
		b, _ := json.MarshalIndent(tr, "", "  ")
		t.Errorf("transcript:\n%s", b)
	}
	body, _ := os.ReadFile(filepath.Join(dir, CeremonyTranscriptFile))
	sig, _ := os.ReadFile(filepath.Join(dir, CeremonySignatureFile))
	tampered := []byte(strings.Replace(string(body), `"threshold": 3`, `"threshold": 2`, 1))
	if _, err := VerifyTranscript(tampered, sig, root); err == nil {
		t.Error("a tampered transcript verified")
	}
	if fs := defaultLinterV.certificate(root.Raw, true); len(fs) > 0 {
		t.Errorf("root: %v", fs)
	}
	// The administrator's PINs no longer open the token.
	if _, err := hsm.Open(rootCfg); !errors.Is(err, hsm.ErrWrongPIN) {
		t.Errorf("administrator's user PIN: %v", err)
	}
	// No second ceremony into the same directory.
	if _, err := RunCeremony(CeremonyOptions{HSM: rootCfg, SOPIN: "x", Custodians: custodians, Threshold: 3, OutDir: dir, Operator: "x"}); err == nil {
		t.Error("second ceremony into the same directory")
	}
	// openssl agrees with the detached signature.
	requireOpenSSL(t)
	pub := writeFile(t, t.TempDir(), "root-pub.pem", []byte(openssl(t, "x509", "-in", filepath.Join(dir, CeremonyRootFile), "-pubkey", "-noout")))
	out := openssl(t, "dgst", "-sha384", "-verify", pub, "-signature", filepath.Join(dir, CeremonySignatureFile), filepath.Join(dir, CeremonyTranscriptFile))
	if !strings.Contains(out, "Verified OK") {
		t.Errorf("openssl dgst -verify: %s", out)
	}
	t.Logf("openssl dgst -sha384 -verify root-pub.pem -signature transcript.json.sig transcript.json: %s", strings.TrimSpace(out))
}

func TestCeremonyRejectsOptions(t *testing.T) {
	for _, tt := range []struct {
		name string
		o    CeremonyOptions
		want string
	}{
		{"threshold 1", CeremonyOptions{Custodians: []string{"a", "b"}, Threshold: 1}, "threshold 1 of 2"},
		{"threshold above N", CeremonyOptions{Custodians: []string{"a", "b"}, Threshold: 3}, "threshold 3 of 2"},
		{"duplicate", CeremonyOptions{Custodians: []string{"a", "a", "b"}, Threshold: 2}, "named twice"},
		{"path in name", CeremonyOptions{Custodians: []string{"../a", "b"}, Threshold: 2}, "custodian \"../a\""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := RunCeremony(tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}

func TestRootQuorum(t *testing.T) {
	dir, _, res := runCeremony(t)
	_, _, other := runCeremony(t)
	log := &auditLog{}
	opts := RootOptions{Dir: dir, Actor: "officer Lê", Audit: log.record}
	ctx := context.Background()

	tamper := func(b []byte) []byte {
		var sf ShareFile
		json.Unmarshal(b, &sf)
		r := []rune(sf.Share)
		if r[3] == 'A' {
			r[3] = 'B'
		} else {
			r[3] = 'A'
		}
		sf.Share = string(r)
		out, _ := json.Marshal(sf)
		return out
	}
	foreign, _ := os.ReadFile(other.ShareFiles["an"])
	three := shareFiles(t, dir, "an", "cuong", "em")
	for _, tt := range []struct {
		name   string
		shares [][]byte
		want   error
		msg    string
	}{
		{"M-1 shares", shareFiles(t, dir, "an", "binh"), ErrQuorum, "2 of 3 shares given; the ceremony requires 3"},
		{"one share", shareFiles(t, dir, "dung"), ErrQuorum, "1 of 3 shares given"},
		{"wrong share", [][]byte{three[0], three[1], tamper(three[2])}, ErrSharesMismatch, "shares do not reconstruct the root secret"},
		{"another ceremony's share", [][]byte{three[0], three[1], foreign}, ErrSharesMismatch, "from ceremony"},
		{"same share twice", [][]byte{three[0], three[1], three[1]}, ErrSharesMismatch, "given twice"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := OpenRoot(ctx, opts, tt.shares)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("got %v, want %v containing %q", err, tt.want, tt.msg)
			}
			if r != nil {
				t.Fatal("a root came back with the error")
			}
			e := log.last()
			if e.Action != ActionRootOpen || e.Outcome != AuditRefused || e.Actor != "officer Lê" ||
				e.CeremonyID != res.Transcript.CeremonyID || !strings.Contains(e.Detail, tt.msg) {
				t.Fatalf("audit event %+v", e)
			}
			t.Log(err)
		})
	}

	// M shares open the root; the root signs a node's intermediate from
	// the CSR of the node's own HSM key, and the node issues under it.
	nodeTok, err := hsm.Open(hsmtest.NewToken(t))
	if err != nil {
		t.Fatal(err)
	}
	defer nodeTok.Close()
	nodeKey, err := nodeTok.GenerateKey("govnet-intermediate-ctl2", elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	csr, err := NewCSR(nodeKey, "ctl2")
	if err != nil {
		t.Fatal(err)
	}
	opts.RootCRLURL = "http://ca.govnet/crl/root.crl"
	root, err := OpenRoot(ctx, opts, shareFiles(t, dir, "binh", "dung", "em"))
	if err != nil {
		t.Fatal(err)
	}
	if e := log.last(); e.Outcome != AuditDone || strings.Join(e.Custodians, ",") != "binh,dung,em" {
		t.Errorf("audit %+v", e)
	}
	if _, err := root.SignIntermediate(ctx, csr, "Bad Name"); !errors.Is(err, ErrProfile) || log.last().Outcome != AuditRefused {
		t.Errorf("bad node name: %v %+v", err, log.last())
	}
	inter, err := root.SignIntermediate(ctx, csr, "ctl2")
	if err != nil {
		t.Fatal(err)
	}
	if e := log.last(); e.Action != ActionRootSignIntermediate || e.Outcome != AuditDone || !strings.Contains(e.Detail, Fingerprint(inter)) {
		t.Errorf("audit %+v", e)
	}
	if err := inter.CheckSignatureFrom(root.Certificate()); err != nil || inter.Subject.CommonName != "govnet Intermediate CA ctl2" ||
		!inter.IsCA || !inter.MaxPathLenZero || inter.CRLDistributionPoints[0] != opts.RootCRLURL {
		t.Fatalf("intermediate: %v %+v", err, inter.Subject)
	}
	node, err := New(root.Certificate(), inter, nodeKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf := issueLeaf(t, node, "gw-under-ctl2")
	pool := x509.NewCertPool()
	pool.AddCert(root.Certificate())
	inters := x509.NewCertPool()
	inters.AddCert(inter)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("leaf does not chain to the ceremony root: %v", err)
	}

	// Revoke the intermediate: the root CRL lists it.
	der, err := root.CRL(ctx, []Revoked{{Serial: inter.SerialNumber, At: time.Now().Add(-time.Second), Reason: ReasonCACompromise}}, big.NewInt(1))
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil || crl.CheckSignatureFrom(root.Certificate()) != nil || len(crl.RevokedCertificateEntries) != 1 ||
		crl.RevokedCertificateEntries[0].SerialNumber.Cmp(inter.SerialNumber) != 0 {
		t.Fatalf("root CRL: %v", err)
	}
	if e := log.last(); e.Action != ActionRootCRL || e.Outcome != AuditDone {
		t.Errorf("audit %+v", e)
	}
	if err := root.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("openssl"); err == nil {
		text := openssl(t, "crl", "-inform", "DER", "-in", writeFile(t, t.TempDir(), "root.crl", der), "-text", "-noout")
		if !strings.Contains(text, "CA Compromise") {
			t.Errorf("openssl crl:\n%s", text)
		}
	}
}

// TestCeremonyRefusesBeforeTouchingToken: a token that has been used and
// a root certificate the lint refuses are refused before the token's PINs
// change, and nothing is left in the directory.
func TestCeremonyRefusesBeforeTouchingToken(t *testing.T) {
	used := hsmtest.NewToken(t)
	tok, err := hsm.Open(used)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tok.GenerateKey("govnet-intermediate-ctl1", elliptic.P256()); err != nil {
		t.Fatal(err)
	}
	tok.Close()
	fresh := hsmtest.NewToken(t)
	for _, tt := range []struct {
		name string
		cfg  hsm.Config
		cn   string
		want string
	}{
		{"used token", used, "", "not fresh"},
		{"common name over 64 characters", fresh, "Tổ chức chứng thực điện tử gốc chuyên dùng Chính phủ - Ban Cơ yếu Chính phủ", "e_subject_common_name_max_length"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ceremony")
			_, err := RunCeremony(CeremonyOptions{HSM: tt.cfg, SOPIN: hsmtest.SOPIN(tt.cfg.TokenLabel),
				Custodians: custodians, Threshold: 3, OutDir: dir, Operator: "o", CommonName: tt.cn})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error naming %q", err, tt.want)
			}
			t.Log(err)
			tok, err := hsm.Open(tt.cfg) // the administrator's user PIN still works
			if err != nil {
				t.Fatalf("the refused ceremony changed the token: %v", err)
			}
			tok.Close()
			left, _ := filepath.Glob(filepath.Join(dir, "*", "*"))
			more, _ := filepath.Glob(filepath.Join(dir, "*.*"))
			if len(left)+len(more) > 0 {
				t.Errorf("left behind: %v %v", left, more)
			}
		})
	}
}

// crashAt returns a clock that panics at its n-th reading, standing in
// for a crash at that point of a ceremony.
func crashAt(n int) func() time.Time {
	calls := 0
	return func() time.Time {
		calls++
		if calls == n {
			panic("crash")
		}
		return time.Now()
	}
}

// TestCeremonyResume: a ceremony that stops at any point after its token
// was activated is finished by ResumeCeremony with M shares, and the
// result is a ceremony directory like any other.
func TestCeremonyResume(t *testing.T) {
	for _, tt := range []struct {
		name  string
		crash int // reading of the clock that crashes
		key   bool
		root  bool
	}{
		// Readings: 1 start, 2 lint, 3 and 4 steps, then activation.
		{"activated, no key", 5, false, false},
		{"key generated, no root.pem", 7, true, false},
		{"root.pem written", 8, true, true},
		{"transcript not written", 9, true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := hsmtest.NewToken(t)
			dir := filepath.Join(t.TempDir(), "ceremony")
			func() {
				defer func() {
					if recover() == nil {
						t.Fatal("the ceremony did not crash")
					}
				}()
				RunCeremony(CeremonyOptions{HSM: cfg, SOPIN: hsmtest.SOPIN(cfg.TokenLabel),
					Custodians: custodians, Threshold: 3, OutDir: dir, Operator: "o", Now: crashAt(tt.crash)})
			}()
			if _, err := hsm.Open(cfg); !errors.Is(err, hsm.ErrWrongPIN) {
				t.Fatalf("the token is not activated at this crash: %v", err)
			}
			var before []byte
			if tt.root {
				if before, _ = os.ReadFile(filepath.Join(dir, CeremonyRootFile)); before == nil {
					t.Fatal("no root.pem at this crash")
				}
			}
			if _, err := os.Stat(filepath.Join(dir, CeremonyRootFile)); tt.root != (err == nil) {
				t.Fatalf("root.pem: %v", err)
			}
			if _, _, err := LoadCeremony(dir); err == nil {
				t.Fatal("an interrupted ceremony loads")
			}
			if _, err := RunCeremony(CeremonyOptions{HSM: cfg, SOPIN: "x", Custodians: custodians, Threshold: 3, OutDir: dir, Operator: "o"}); err == nil || !strings.Contains(err.Error(), "resume") {
				t.Fatalf("a new ceremony into the interrupted one's directory: %v", err)
			}

			_, err := ResumeCeremony(ResumeOptions{Dir: dir, ShareFiles: shareFiles(t, dir, "an", "em"), Operator: "o2"})
			if !errors.Is(err, ErrQuorum) {
				t.Fatalf("resume with M-1 shares: %v", err)
			}
			res, err := ResumeCeremony(ResumeOptions{Dir: dir, ShareFiles: shareFiles(t, dir, "an", "cuong", "em"), Operator: "o2"})
			if err != nil {
				t.Fatal(err)
			}
			if tt.root {
				after, _ := os.ReadFile(filepath.Join(dir, CeremonyRootFile))
				if string(after) != string(before) {
					t.Error("resuming replaced the root certificate written for the same key")
				}
			}
			tr, root, err := LoadCeremony(dir)
			if err != nil {
				t.Fatal(err)
			}
			if !root.Equal(res.Root) || tr.CeremonyID != res.Transcript.CeremonyID {
				t.Fatal("the resumed ceremony's directory does not hold its root and transcript")
			}
			var steps []string
			for _, s := range tr.Steps {
				steps = append(steps, s.Action)
			}
			all := strings.Join(steps, "\n")
			if !strings.Contains(all, "resumed by o2 with the shares of [an cuong em]") ||
				strings.Contains(all, "generated root key") == tt.key || strings.Contains(all, "kept root key") != tt.key {
				t.Errorf("transcript steps:\n%s", all)
			}
			if _, err := os.Stat(filepath.Join(dir, CeremonyPendingFile)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("journal left: %v", err)
			}
			r, err := OpenRoot(context.Background(), RootOptions{Dir: dir}, shareFiles(t, dir, "binh", "dung", "em"))
			if err != nil {
				t.Fatalf("open the resumed root: %v", err)
			}
			r.Close()
			if _, err := ResumeCeremony(ResumeOptions{Dir: dir, ShareFiles: shareFiles(t, dir, "an", "cuong", "em"), Operator: "o2"}); err == nil || !strings.Contains(err.Error(), "no interrupted ceremony") {
				t.Errorf("resume a finished ceremony: %v", err)
			}
		})
	}
}

// TestRootCRLRecordChecked: the last signed root CRL (root.crl) is the
// authority on what the root revoked: a lost record is rebuilt from it,
// one that lost a serial or its number is refused.
func TestRootCRLRecordChecked(t *testing.T) {
	dir, _, _ := runCeremony(t)
	ctx := context.Background()
	r, err := OpenRoot(ctx, RootOptions{Dir: dir}, shareFiles(t, dir, "an", "binh", "cuong"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.RevokeAndSignCRL(ctx, []RootRevocation{{Serial: "5cfd", Reason: "keyCompromise", At: time.Now().UTC(), Actor: "o"}}); err != nil {
		t.Fatal(err)
	}
	record := filepath.Join(dir, RootCRLStateFile)

	// Lost: rebuilt, the next CRL still lists the serial, numbered on.
	os.Remove(record)
	der, err := r.RevokeAndSignCRL(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if crl.Number.Int64() != 2 || len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Text(16) != "5cfd" {
		t.Fatalf("CRL after the record was lost: number %v, %d entries", crl.Number, len(crl.RevokedCertificateEntries))
	}

	// Altered: a serial dropped, or the number set back.
	for name, st := range map[string]RootCRLState{
		"serial dropped": {Number: 2},
		"number back":    {Number: 1, Revoked: []RootRevocation{{Serial: "5cfd", Reason: "keyCompromise"}}},
	} {
		b, _ := json.Marshal(st)
		os.WriteFile(record, b, 0o644)
		if _, err := r.RevokeAndSignCRL(ctx, nil); err == nil || !strings.Contains(err.Error(), "restore the record") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestCeremonyResumeForeignRoot: a root.pem beside a token holding no
// root key is refused before any key is made, and resuming once it is
// moved away works.
func TestCeremonyResumeForeignRoot(t *testing.T) {
	otherDir, _, _ := runCeremony(t)
	cfg := hsmtest.NewToken(t)
	dir := filepath.Join(t.TempDir(), "ceremony")
	func() {
		defer func() { recover() }()
		RunCeremony(CeremonyOptions{HSM: cfg, SOPIN: hsmtest.SOPIN(cfg.TokenLabel),
			Custodians: custodians, Threshold: 3, OutDir: dir, Operator: "o", Now: crashAt(5)})
	}()
	foreign, _ := os.ReadFile(filepath.Join(otherDir, CeremonyRootFile))
	os.WriteFile(filepath.Join(dir, CeremonyRootFile), foreign, 0o644)
	shares := shareFiles(t, dir, "an", "cuong", "em")
	if _, err := ResumeCeremony(ResumeOptions{Dir: dir, ShareFiles: shares, Operator: "o2"}); err == nil || !strings.Contains(err.Error(), "not this ceremony's") {
		t.Fatalf("resume beside another ceremony's root.pem: %v", err)
	}
	os.Remove(filepath.Join(dir, CeremonyRootFile))
	res, err := ResumeCeremony(ResumeOptions{Dir: dir, ShareFiles: shares, Operator: "o2"})
	if err != nil {
		t.Fatalf("resume once it is moved away (a key made by the refused attempt?): %v", err)
	}
	var all []string
	for _, s := range res.Transcript.Steps {
		all = append(all, s.Action)
	}
	if !strings.Contains(strings.Join(all, "\n"), "its PINs were replaced before the interruption") {
		t.Errorf("the resumed transcript does not record the activation:\n%s", strings.Join(all, "\n"))
	}
}
