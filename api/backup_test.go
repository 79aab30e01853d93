package api

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// testPKI is a root, an intermediate and a node certificate under it.
type testPKI struct {
	roots   *x509.CertPool
	key     *ecdsa.PrivateKey // the node's
	chain   string            // PEM: node, intermediate
	expires time.Time         // the node certificate's NotAfter
	tls     tls.Certificate   // the node's, to serve with
}

func newTestPKI(t testing.TB) testPKI {
	t.Helper()
	now := time.Now()
	mk := func(tmpl *x509.Certificate, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, *ecdsa.PrivateKey) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c, key
	}
	ca := func(serial int64, cn string) *x509.Certificate {
		return &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	}
	root, rootKey := mk(ca(1, "root"), nil, nil)
	inter, interKey := mk(ca(2, "ctl1 intermediate"), root, rootKey)
	leaf, leafKey := mk(&x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "ctl1"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}, inter, interKey)
	p := testPKI{roots: x509.NewCertPool(), key: leafKey, expires: leaf.NotAfter}
	p.tls = tls.Certificate{Certificate: [][]byte{leaf.Raw, inter.Raw}, PrivateKey: leafKey, Leaf: leaf}
	p.roots.AddCert(root)
	for _, c := range []*x509.Certificate{leaf, inter} {
		p.chain += string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return p
}

// sign returns state followed by the signature line of sig, its digest,
// length and signature filled in.
func (p testPKI) sign(t testing.TB, state []byte, sig BackupSignature) []byte {
	t.Helper()
	sum := sha256.Sum256(state)
	sig.Format, sig.SHA256, sig.Bytes, sig.Chain = BackupSignatureFormat, hex.EncodeToString(sum[:]), int64(len(state)), p.chain
	digest := sha256.Sum256(sig.Message())
	raw, err := ecdsa.SignASN1(rand.Reader, p.key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig.Signature = base64.StdEncoding.EncodeToString(raw)
	line, err := json.Marshal(sig)
	if err != nil {
		t.Fatal(err)
	}
	return append(append(bytes.Clone(state), line...), '\n')
}

// TestBackupSignature: a backup checks out only whole, unaltered and
// signed under the given root, read all at once or in small writes
// (BackupDigest holds back only the end).
func TestBackupSignature(t *testing.T) {
	p := newTestPKI(t)
	state := []byte(strings.Repeat(`{"type":"agency","data":{"code":"000.00.00.H29"}}`+"\n", 10000)) // ~500 KB
	at := time.Now().UTC()
	good := p.sign(t, state, BackupSignature{RaftIndex: 42, At: at, Node: "ctl1"})

	check := func(b []byte, roots *x509.CertPool) (BackupSignature, error) {
		sig, chain, err := VerifyBackup(bytes.NewReader(b), roots)
		if err == nil && (len(chain) != 3 || chain[0].Subject.CommonName != "ctl1") {
			t.Fatalf("verified chain %v", chain)
		}
		// The same, written in pieces.
		for _, piece := range []int{1000, 50000, 70000} {
			d := NewBackupDigest()
			for rest := b; len(rest) > 0; {
				k := min(piece, len(rest))
				d.Write(rest[:k])
				rest = rest[k:]
			}
			if _, _, err2 := d.Verify(roots); (err == nil) != (err2 == nil) {
				t.Fatalf("all at once: %v; in pieces of %d bytes: %v", err, piece, err2)
			}
		}
		return sig, err
	}
	sig, err := check(good, p.roots)
	if err != nil {
		t.Fatal(err)
	}
	if sig.Bytes != int64(len(state)) || sig.RaftIndex != 42 || sig.Node != "ctl1" || !sig.At.Equal(at) {
		t.Fatalf("signature line %+v", sig)
	}
	if _, err := check(append(bytes.Clone(good), "\n\n"...), p.roots); err != nil {
		t.Fatalf("a backup with blank lines after its signature: %v", err)
	}
	small := p.sign(t, []byte(`{"format":"x"}`+"\n"), BackupSignature{At: at, Node: "ctl1"})
	if _, err := check(small, p.roots); err != nil {
		t.Fatalf("a backup smaller than the digest's window: %v", err)
	}

	d := NewBackupDigest()
	d.Write(good)
	if _, _, err := d.Verify(p.roots); err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.Verify(p.roots); err != nil {
		t.Fatalf("verified twice: %v", err)
	}
	// A signature line padded to 70 KiB (still valid JSON, the signature
	// covers its fields): refused however it is written.
	padded := append(append(bytes.Clone(good[:len(state)+1]), bytes.Repeat([]byte(" "), 70<<10)...), good[len(state)+1:]...)

	altered := bytes.Clone(good)
	altered[1000] = 'X'
	otherNode := bytes.Replace(good, []byte(`"node":"ctl1"`), []byte(`"node":"ctl2"`), 1)
	later := p.sign(t, state, BackupSignature{At: p.expires.Add(time.Minute), Node: "ctl1"})
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"altered", altered, "the file was altered"},
		{"cut short", good[:len(good)/2], "does not end with a signature line"},
		{"no signature line", state, "does not end with a signature line"},
		{"one line", good[len(state) : len(good)-1], "holds 0 bytes before its signature line, and its signature says"},
		{"a line added", append(append(bytes.Clone(state), "{}\n"...), good[len(state):]...), "holds 500003 bytes"},
		{"another node named", otherNode, "signature does not verify"},
		{"signed after the certificate expired", later, "does not verify under this cluster's root"},
		{"empty", nil, "does not end with a signature line"},
		{"a long last line", bytes.Repeat([]byte("x"), 200<<10), "longer than a signature line"},
		{"a padded signature line", padded, "longer than a signature line"},
		{"a padded signature line alone", padded[len(state):], "longer than a signature line"},
		{"70 KiB of blank lines after the signature", append(bytes.Clone(good), bytes.Repeat([]byte("\n"), 70<<10)...), "longer than a signature line"},
	} {
		if _, err := check(tc.b, p.roots); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := check(good, newTestPKI(t).roots); err == nil || !strings.Contains(err.Error(), "does not verify under this cluster's root") {
		t.Errorf("another root: got %v", err)
	}
}

// TestSaveSnapshotChecks: the client checks the backup it saves: one cut
// short in transit (the answer had begun when the node failed) is an
// error, not a file that looks whole.
func TestSaveSnapshotChecks(t *testing.T) {
	p := newTestPKI(t)
	good := p.sign(t, []byte(strings.Repeat("{}\n", 50000)), BackupSignature{At: time.Now(), Node: "ctl1"})
	var serve []byte
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(serve) }))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.tls}}
	srv.StartTLS()
	defer srv.Close()
	c := NewClient(srv.URL, &tls.Config{RootCAs: p.roots})
	var saved bytes.Buffer
	serve = good
	if err := c.SaveSnapshot(context.Background(), &saved); err != nil || !bytes.Equal(saved.Bytes(), good) {
		t.Fatalf("a whole backup: %v (%d of %d bytes)", err, saved.Len(), len(good))
	}
	serve = good[:len(good)-200]
	if err := c.SaveSnapshot(context.Background(), io.Discard); err == nil || !strings.Contains(err.Error(), "the backup received does not check out") {
		t.Fatalf("a backup cut short: %v", err)
	}
}

// FuzzBackupSignature: whatever a backup file holds, checking it returns
// an error or a signature whose length and digest match what precedes it.
func FuzzBackupSignature(f *testing.F) {
	p := newTestPKI(f)
	good := p.sign(f, []byte("{}\n"), BackupSignature{At: time.Now(), Node: "ctl1"})
	f.Add(good)
	f.Add(good[:len(good)-10])
	f.Add([]byte(`{"format":"govnet-backup-signature/1","bytes":0}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		sig, _, err := VerifyBackup(bytes.NewReader(b), p.roots)
		if err != nil {
			return
		}
		sum := sha256.Sum256(b[:sig.Bytes])
		if hex.EncodeToString(sum[:]) != sig.SHA256 {
			t.Fatalf("accepted a backup whose digest does not match: %+v", sig)
		}
	})
}
