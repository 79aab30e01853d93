package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
)

// testPKI is a root, an intermediate and leaves made here, shaped as
// govnet's CA makes them, for the offline audit checks: they need no HSM.
type testPKI struct {
	t        *testing.T
	root     *x509.Certificate
	rootKey  *ecdsa.PrivateKey
	inter    *x509.Certificate
	interKey *ecdsa.PrivateKey
	rootFile string
	serial   int64
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	p := &testPKI{t: t, serial: 1}
	p.rootKey, p.root = p.ca("govnet Root CA", nil, nil)
	p.interKey, p.inter = p.ca("govnet Intermediate CA ctl1", p.root, p.rootKey)
	p.rootFile = filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(p.rootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.root.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *testPKI) sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key *ecdsa.PrivateKey) *x509.Certificate {
	p.t.Helper()
	p.serial++
	tmpl.SerialNumber = big.NewInt(p.serial)
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		p.t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		p.t.Fatal(err)
	}
	return c
}

func (p *testPKI) ca(cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*ecdsa.PrivateKey, *x509.Certificate) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if parentKey == nil {
		parentKey = key
	}
	tmpl := &x509.Certificate{Subject: pkix.Name{Organization: []string{"govnet"}, CommonName: cn},
		NotBefore: time.Now().Add(-10 * 365 * 24 * time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	return key, p.sign(tmpl, parent, &key.PublicKey, parentKey)
}

// leaf issues a certificate of the intermediate naming kind/name (node,
// person, gateway), valid from notBefore to notAfter.
func (p *testPKI) leaf(kind, name string, notBefore, notAfter time.Time, usages ...x509.ExtKeyUsage) (*ecdsa.PrivateKey, []*x509.Certificate) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{Subject: pkix.Name{Organization: []string{"govnet"}, CommonName: name},
		NotBefore: notBefore, NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usages,
		URIs: []*url.URL{{Scheme: "govnet", Host: kind + ".govnet", Path: "/" + name}}}
	return key, []*x509.Certificate{p.sign(tmpl, p.inter, &key.PublicKey, p.interKey), p.inter}
}

// nodeLeaf is a controller node's certificate, valid now.
func (p *testPKI) nodeLeaf(name string) (*ecdsa.PrivateKey, []*x509.Certificate) {
	return p.leaf("node", name, time.Now().Add(-time.Hour), time.Now().Add(365*24*time.Hour), x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
}

// checkpoint signs e as the chain's head, at at, as node with key and chain.
func checkpoint(t *testing.T, e api.AuditEntry, at time.Time, node string, key *ecdsa.PrivateKey, chain []*x509.Certificate) api.AuditCheckpoint {
	t.Helper()
	cp := api.AuditCheckpoint{Seq: e.Seq, Hash: e.Hash, At: at.UTC(), Node: node}
	digest := sha256.Sum256(cp.CheckpointMessage())
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	cp.Signature = base64.StdEncoding.EncodeToString(sig)
	for _, c := range chain {
		cp.Chain += string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return cp
}

// auditChain is n entries as the controllers make them.
func auditChain(n int) []api.AuditEntry {
	return auditChainAt(n, time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC))
}

// auditChainAt is n entries written a second apart after at.
func auditChainAt(n int, at time.Time) []api.AuditEntry {
	var out []api.AuditEntry
	prev := ""
	for i := 1; i <= n; i++ {
		e := api.AuditEntry{Seq: uint64(i), RaftIndex: uint64(10 + i), At: at.Add(time.Duration(i) * time.Second).UTC(),
			Actor: "officer1", Role: "officer", Action: "gateway-add", Object: fmt.Sprintf("gw%d", i), RequestSHA256: strings.Repeat("ab", 32), Prev: prev}
		e.Hash = e.ComputeHash()
		prev = e.Hash
		out = append(out, e)
	}
	return out
}

// exportLines encodes entries as audit export writes them.
func exportLines(t *testing.T, entries []api.AuditEntry) []string {
	t.Helper()
	var lines []string
	for _, e := range entries {
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, string(b))
	}
	return lines
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func writeCheckpoints(t *testing.T, cps ...api.AuditCheckpoint) string {
	t.Helper()
	b, err := json.Marshal(cps)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, "checkpoints.json", string(b))
}

// TestAuditVerifyLines: audit verify reads only lines exactly as audit
// export writes them. A line that decodes to the entry its hash covers
// but reads otherwise (a key in other case or twice, which encoding/json
// takes the last of and jq the first; a field the entry has not; a time
// in another zone or format) would let an export show an auditor's tools
// something else than what verify checked.
func TestAuditVerifyLines(t *testing.T) {
	entries := auditChain(3)
	lines := exportLines(t, entries)
	second := lines[1]
	for _, tt := range []struct {
		name, line2 string // the second line, in place of the real one
		whole       string // or the whole file
		wantLine    int
		wantMsg     string
	}{
		{name: "key in other case", line2: strings.Replace(second, `"actor":"officer1"`, `"actor":"mallory","ACTOR":"officer1"`, 1), wantLine: 2},
		{name: "key twice", line2: strings.Replace(second, `"actor":"officer1"`, `"actor":"mallory","actor":"officer1"`, 1), wantLine: 2},
		{name: "unknown field", line2: strings.Replace(second, `"actor":"officer1"`, `"actor":"officer1","approved_by":"officer2"`, 1), wantLine: 2},
		{name: "time in another zone", line2: strings.Replace(second, `"2026-11-23T08:00:02Z"`, `"2026-11-23T15:00:02+07:00"`, 1), wantLine: 2},
		{name: "time in another format", line2: strings.Replace(second, `"2026-11-23T08:00:02Z"`, `"2026-11-23T08:00:02.000Z"`, 1), wantLine: 2},
		{name: "escaped letters", line2: strings.Replace(second, `"officer1"`, `"\u006ffficer1"`, 1), wantLine: 2},
		{name: "spaces", line2: strings.Replace(second, `,"actor"`, `, "actor"`, 1), wantLine: 2},
		{name: "blank line", whole: lines[0] + "\n\n" + lines[1] + "\n" + lines[2] + "\n", wantLine: 2},
		{name: "two entries on a line", whole: lines[0] + "\n" + lines[1] + lines[2] + "\n", wantLine: 2},
		{name: "an entry over two lines", whole: lines[0] + "\n" + strings.Replace(lines[1], `,"actor"`, ",\n\"actor\"", 1) + "\n" + lines[2] + "\n", wantLine: 2},
		{name: "last line cut off", whole: lines[0] + "\n" + lines[1] + "\n" + lines[2][:len(lines[2])-1], wantLine: 3, wantMsg: "cut off"},
		{name: "huge line", line2: strings.Replace(second, `"gw2"`, `"`+strings.Repeat("x", api.MaxAuditLine)+`"`, 1), wantLine: 2, wantMsg: "longer than"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			content := tt.whole
			if content == "" {
				content = lines[0] + "\n" + tt.line2 + "\n" + lines[2] + "\n"
			}
			file := writeFile(t, "audit.jsonl", content)
			out, err := runErr("audit", "verify", file)
			want := fmt.Sprintf("NOT VALID at line %d", tt.wantLine)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("audit verify: %v, want %q\n%s", err, want, out)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("audit verify: %v, want %q", err, tt.wantMsg)
			}
		})
	}
	file := writeFile(t, "audit.jsonl", strings.Join(lines, "\n")+"\n")
	if out, err := runErr("audit", "verify", file); err != nil || !strings.Contains(out, "3 entries") {
		t.Fatalf("audit verify of the export as written: %v\n%s", err, out)
	}
}

// TestAuditVerifyCheckpointSigner: a checkpoint counts only when a
// controller node of this cluster signed it, under its own name, with a
// certificate valid when it says it signed; not a person's or a
// gateway's certificate from the same CA, another node's, a foreign CA's.
// A node's certificate that has expired since (they live a year, the
// chain far longer) still proves the checkpoints it signed.
func TestAuditVerifyCheckpointSigner(t *testing.T) {
	p := newTestPKI(t)
	now := time.Now().Truncate(time.Second)
	year := 365 * 24 * time.Hour
	entries := auditChainAt(5, now.Add(-2*year)) // written two years ago
	file := writeFile(t, "audit.jsonl", strings.Join(exportLines(t, entries), "\n")+"\n")
	head := entries[4]
	nodeKey, nodeChain := p.nodeLeaf("ctl1")
	personKey, personChain := p.leaf("person", "mallory", now.Add(-time.Hour), now.Add(time.Hour), x509.ExtKeyUsageClientAuth)
	gwKey, gwChain := p.leaf("gateway", "gw-h01", now.Add(-time.Hour), now.Add(time.Hour), x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	oldKey, oldChain := p.leaf("node", "ctl1", now.Add(-3*year), now.Add(-2*year+24*time.Hour), x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	foreign := newTestPKI(t)
	foreignKey, foreignChain := foreign.nodeLeaf("ctl1")

	for _, tt := range []struct {
		name string
		cp   api.AuditCheckpoint
		want string // in the error; "" if it verifies
	}{
		{"node", checkpoint(t, head, now, "ctl1", nodeKey, nodeChain), ""},
		{"node expired since", checkpoint(t, head, now.Add(-2*year+time.Hour), "ctl1", oldKey, oldChain), ""},
		{"node backdated", checkpoint(t, head, now.Add(-2*year-time.Hour), "ctl1", oldKey, oldChain), "backdated"},
		{"node expired when it signed", checkpoint(t, head, now, "ctl1", oldKey, oldChain), "expired"},
		{"person of the same CA", checkpoint(t, head, now, "ctl1", personKey, personChain), "incompatible key usage"},
		{"gateway of the same CA", checkpoint(t, head, now, "ctl1", gwKey, gwChain), "not a controller node's certificate"},
		{"another node's name", checkpoint(t, head, now, "ctl2", nodeKey, nodeChain), "names node"},
		{"foreign CA", checkpoint(t, head, now, "ctl1", foreignKey, foreignChain), "unknown authority"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runErr("--root", p.rootFile, "audit", "verify", file, "--checkpoint", writeCheckpoints(t, tt.cp))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("audit verify: %v\n%s", err, out)
			case tt.want == "" && !strings.Contains(out, "checkpoint seq 5 signed by node ctl1"):
				t.Fatalf("audit verify printed:\n%s", out)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), "NOT VALID") || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("audit verify: %v, want NOT VALID ... %q\n%s", err, tt.want, out)
			}
		})
	}
}

// TestAuditVerifyCoverage: audit verify says which entries its
// checkpoints prove and which none does (after the last checkpoint,
// before an export's first entry, all of them without a checkpoint); it
// refuses an empty export, and an export cut or rewritten before a
// checkpoint, naming the entries still proven.
func TestAuditVerifyCoverage(t *testing.T) {
	p := newTestPKI(t)
	key, chain := p.nodeLeaf("ctl1")
	start := time.Now().Add(-time.Hour)
	entries := auditChainAt(5, start)
	at := time.Now()
	cp := func(seq int) api.AuditCheckpoint { return checkpoint(t, entries[seq-1], at, "ctl1", key, chain) }
	export := func(from, to int) string {
		return writeFile(t, "audit.jsonl", strings.Join(exportLines(t, entries[from-1:to]), "\n")+"\n")
	}
	rewritten := auditChainAt(5, start)
	rewritten[2].Actor = "mallory"
	for i := 2; i < 5; i++ {
		rewritten[i].Prev = rewritten[i-1].Hash
		rewritten[i].Hash = rewritten[i].ComputeHash()
	}
	rewrittenFile := writeFile(t, "audit.jsonl", strings.Join(exportLines(t, rewritten), "\n")+"\n")
	for _, tt := range []struct {
		name     string
		file     string
		cps      []api.AuditCheckpoint
		want     []string // in the output
		wantFail string   // in the error
	}{
		{name: "all covered", file: export(1, 5), cps: []api.AuditCheckpoint{cp(3), cp(5)},
			want: []string{"seq 1 to 5 verified against the checkpoint of seq 5"}},
		{name: "tail after the last checkpoint", file: export(1, 5), cps: []api.AuditCheckpoint{cp(3)},
			want: []string{"seq 1 to 3 verified", "NOT COVERED: seq 4 to 5 come after the last checkpoint"}},
		{name: "no checkpoint", file: export(1, 5),
			want: []string{"NOT COVERED: seq 1 to 5: no signed checkpoint"}},
		{name: "since export", file: export(3, 5), cps: []api.AuditCheckpoint{cp(2), cp(4)},
			want: []string{"checkpoint seq 2 not checked", "NOT COVERED: seq 1 to 2 are not in this export", "seq 3 to 4 verified", "NOT COVERED: seq 5 to 5"}},
		{name: "empty", file: writeFile(t, "audit.jsonl", ""), cps: []api.AuditCheckpoint{cp(5)}, wantFail: "no entries"},
		{name: "cut after a checkpoint", file: export(1, 3), cps: []api.AuditCheckpoint{cp(2), cp(5)},
			wantFail: "entries from seq 4 on were removed (seq 1 to 2 verified"},
		{name: "rewritten", file: rewrittenFile, cps: []api.AuditCheckpoint{cp(5), cp(2)},
			wantFail: "checkpoint seq 5: entry 5 differs from the signed checkpoint: the chain up to it was rewritten (seq 1 to 2 verified"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"--root", p.rootFile, "audit", "verify", tt.file}
			if len(tt.cps) > 0 {
				args = append(args, "--checkpoint", writeCheckpoints(t, tt.cps...))
			}
			out, err := runErr(args)
			if tt.wantFail != "" {
				if err == nil || !strings.Contains(err.Error(), "NOT VALID") || !strings.Contains(err.Error(), tt.wantFail) {
					t.Fatalf("audit verify: %v, want NOT VALID ... %q\n%s", err, tt.wantFail, out)
				}
				return
			}
			if err != nil {
				t.Fatalf("audit verify: %v\n%s", err, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("audit verify printed no %q:\n%s", w, out)
				}
			}
		})
	}
}

// crl is the intermediate's CRL, this update at thisUpdate, listing
// entries; key signs it (the intermediate's, unless testing another).
func (p *testPKI) crl(thisUpdate time.Time, key *ecdsa.PrivateKey, entries ...x509.RevocationListEntry) string {
	return p.crlOf(p.inter, thisUpdate, key, entries...)
}

// crlOf is issuer's CRL, signed with key.
func (p *testPKI) crlOf(issuer *x509.Certificate, thisUpdate time.Time, key *ecdsa.PrivateKey, entries ...x509.RevocationListEntry) string {
	p.t.Helper()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(thisUpdate.Unix()), ThisUpdate: thisUpdate, NextUpdate: thisUpdate.Add(24 * time.Hour),
		RevokedCertificateEntries: entries,
	}, issuer, key)
	if err != nil {
		p.t.Fatal(err)
	}
	f := filepath.Join(p.t.TempDir(), "issuer.crl")
	if err := os.WriteFile(f, der, 0o644); err != nil {
		p.t.Fatal(err)
	}
	return f
}

// TestAuditVerifyRevokedSigner: with --crl, a checkpoint whose signer was
// revoked before it signed, or for key compromise whenever, is refused; a
// signer revoked after it signed (a node taken out of the cluster), or
// not on the CRL, still counts. A CRL its issuer did not sign tells
// nothing, and without one the signer's revocation is NOT CHECKED.
func TestAuditVerifyRevokedSigner(t *testing.T) {
	p := newTestPKI(t)
	now := time.Now().Truncate(time.Second)
	entries := auditChainAt(3, now.Add(-time.Hour))
	file := writeFile(t, "audit.jsonl", strings.Join(exportLines(t, entries), "\n")+"\n")
	key, chain := p.nodeLeaf("ctl1")
	cp := writeCheckpoints(t, checkpoint(t, entries[2], now.Add(-10*time.Minute), "ctl1", key, chain))
	revoked := func(at time.Time, reason int) x509.RevocationListEntry {
		return x509.RevocationListEntry{SerialNumber: chain[0].SerialNumber, RevocationTime: at, ReasonCode: reason}
	}
	const cessation, compromise = 5, 1
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, tt := range []struct {
		name     string
		crls     []string
		want     string // in the output
		wantFail string // in the error
	}{
		{name: "no CRL", want: "NOT CHECKED: whether certificate " + fmt.Sprintf("%x", chain[0].SerialNumber)},
		{name: "not revoked", crls: []string{p.crl(now, p.interKey)}, want: "not revoked on the CRL govnet Intermediate CA ctl1's of"},
		{name: "revoked after it signed", crls: []string{p.crl(now, p.interKey, revoked(now.Add(-time.Minute), cessation))}, want: "not revoked on the CRL govnet Intermediate CA ctl1's"},
		{name: "intermediate not checked", crls: []string{p.crl(now, p.interKey)}, want: "NOT CHECKED: whether certificate " + fmt.Sprintf("%x", p.inter.SerialNumber) + " (govnet Intermediate CA ctl1) was revoked: give --crl with govnet Root CA's CRL"},
		{name: "both checked", crls: []string{p.crl(now, p.interKey), p.crlOf(p.root, now, p.rootKey)}, want: "not revoked on the CRL govnet Intermediate CA ctl1's of " + now.UTC().Format(time.RFC3339) + ", the CRL govnet Root CA's of"},
		{name: "intermediate revoked before", crls: []string{p.crl(now, p.interKey), p.crlOf(p.root, now, p.rootKey, x509.RevocationListEntry{SerialNumber: p.inter.SerialNumber, RevocationTime: now.Add(-time.Hour), ReasonCode: cessation})}, wantFail: "(govnet Intermediate CA ctl1) was revoked at"},
		{name: "intermediate compromised", crls: []string{p.crlOf(p.root, now, p.rootKey, x509.RevocationListEntry{SerialNumber: p.inter.SerialNumber, RevocationTime: now, ReasonCode: compromise})}, wantFail: "key compromise"},
		{name: "revoked before it signed", crls: []string{p.crl(now, p.interKey, revoked(now.Add(-20*time.Minute), cessation))}, wantFail: "signer revoked"},
		{name: "key compromise after it signed", crls: []string{p.crl(now, p.interKey, revoked(now.Add(-time.Minute), compromise))}, wantFail: "key compromise"},
		{name: "newest CRL counts", crls: []string{p.crl(now, p.interKey, revoked(now.Add(-20*time.Minute), cessation)), p.crl(now.Add(-30*time.Minute), p.interKey)}, wantFail: "signer revoked"},
		{name: "CRL not signed by the issuer", crls: []string{p.crl(now, other, revoked(now.Add(-20*time.Minute), cessation))}, want: "NOT CHECKED: whether certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"--root", p.rootFile, "audit", "verify", file, "--checkpoint", cp}
			for _, c := range tt.crls {
				args = append(args, "--crl", c)
			}
			out, err := runErr(args)
			if tt.wantFail != "" {
				if err == nil || !strings.Contains(err.Error(), "NOT VALID") || !strings.Contains(err.Error(), tt.wantFail) {
					t.Fatalf("audit verify: %v, want NOT VALID ... %q\n%s", err, tt.wantFail, out)
				}
				return
			}
			if err != nil || !strings.Contains(out, tt.want) {
				t.Fatalf("audit verify: %v; want %q in:\n%s", err, tt.want, out)
			}
		})
	}
	if _, err := runErr("--root", p.rootFile, "audit", "verify", file, "--checkpoint", cp, "--crl", file); err == nil || !strings.Contains(err.Error(), "not a CRL") {
		t.Fatalf("audit verify --crl of an export: %v, want not a CRL", err)
	}
}
