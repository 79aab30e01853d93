package controller

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/hashicorp/raft"
)

// TestRogueNodeJoin: a node certificate that a member's intermediate
// signed for a name that is not that member's (any intermediate can sign
// any name) does not make its holder a voter, and, not being a member,
// its holder is rate-limited like any client.
func TestRogueNodeJoin(t *testing.T) {
	cfg := testConfig(t)
	cfg.RateLimit = 5
	n := startNode(t, cfg)
	defer n.Close()
	ctx := context.Background()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := ca.NewCSR(key, "ctl9")
	chain, err := n.ca.Issue(ctx, csr, ca.NodeProfile("ctl9", nil, []net.IP{net.IPv4(127, 0, 0, 1)}))
	if err != nil {
		t.Fatal(err)
	}
	tc, _ := api.TLSConfig(cfg.pkiPath(rootFile), "", "")
	tc.Certificates = []tls.Certificate{{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key}}
	rogue := api.NewClient("https://"+n.Addr().String(), tc)
	_, err = rogue.JoinNode(ctx, api.JoinRequest{Node: "ctl9", RaftAddr: freePort(t), APIAddr: freePort(t)})
	wantStatus(t, err, 403, "not by its own intermediate")
	// Nor with a decoy named as ctl9's intermediate sent before the real
	// issuer: the check is on the chain that verifies.
	tc2, _ := api.TLSConfig(cfg.pkiPath(rootFile), "", "")
	tc2.Certificates = []tls.Certificate{{Certificate: [][]byte{chain[0].Raw, decoyIntermediate(t, "ctl9").Raw, chain[1].Raw}, PrivateKey: key}}
	_, err = api.NewClient("https://"+n.Addr().String(), tc2).JoinNode(ctx, api.JoinRequest{Node: "ctl9", RaftAddr: freePort(t), APIAddr: freePort(t)})
	wantStatus(t, err, 403, "not by its own intermediate")
	// The internal routes and the rate limit's exemption check the
	// same: the member's own certificate passes, the rogue's does not.
	own := &http.Request{TLS: &tls.ConnectionState{PeerCertificates: []*x509.Certificate{n.cert.Load().Leaf, n.ca.Intermediate()}}}
	rogueReq := &http.Request{TLS: &tls.ConnectionState{PeerCertificates: []*x509.Certificate{chain[0], decoyIntermediate(t, "ctl9"), chain[1]}}}
	if !n.isMemberNode(own) || n.isMemberNode(rogueReq) {
		t.Fatalf("member check: own %v, rogue %v", n.isMemberNode(own), n.isMemberNode(rogueReq))
	}
	if _, ok := n.State().Member("ctl9"); ok {
		t.Fatal("ctl9 became a member")
	}
	limited := 0
	for range 40 {
		_, err := rogue.JoinNode(ctx, api.JoinRequest{Node: "ctl9", RaftAddr: "127.0.0.1:1", APIAddr: "127.0.0.1:2"})
		var se *api.StatusError
		if errors.As(err, &se) && se.Code == 429 {
			limited++
		}
	}
	if limited == 0 {
		t.Fatal("a node certificate of a non-member was never rate-limited")
	}
}

// decoyIntermediate is a self-signed certificate named as node's
// intermediate: it verifies to nothing.
func decoyIntermediate(t *testing.T, node string) *x509.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: ca.IntermediateCommonName(node)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// TestRaftNeedsNodeTLS: raft's port answers nothing but mutual TLS with a
// controller node's own certificate: raft's plain TCP transport, a person's
// certificate and a node certificate for another name (which any node's
// intermediate can sign) all fail before a raft message is read.
func TestRaftNeedsNodeTLS(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	waitUntil(t, 10*time.Second, "leadership", func() bool { return n.raft.State() == raft.Leader })
	addr := raft.ServerAddress(cfg.RaftAddr)
	vote := func(trans raft.Transport) error {
		var resp raft.RequestVoteResponse
		return trans.RequestVote("ctl1", addr, &raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ID: []byte("ctl9"), Addr: []byte("127.0.0.1:1")}, Term: 1 << 40}, &resp)
	}
	plain, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, 2*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if err := vote(plain); err == nil {
		t.Fatal("raft answered a plain TCP vote request")
	}

	ctx := context.Background()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, p := range []ca.Profile{ca.PersonProfile("officer1", ca.RoleOfficer), ca.NodeProfile("ctl9", nil, []net.IP{net.IPv4(127, 0, 0, 1)})} {
		csr, _ := ca.NewCSR(key, p.Identity.Name)
		chain, err := n.ca.Issue(ctx, csr, p)
		if err != nil {
			t.Fatal(err)
		}
		stream := &raftTLS{client: &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
			Certificates: []tls.Certificate{{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key}}}}
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		stream.Listener, stream.advertise = ln, ln.Addr()
		trans := raft.NewNetworkTransport(stream, 1, 2*time.Second, io.Discard)
		err = vote(trans)
		trans.Close()
		if err == nil {
			t.Fatalf("raft answered a vote request over TLS with a %s certificate of %s", p.Identity.Kind, p.Identity.Name)
		}
	}
	// A dial checks that the node at an address is the one recorded there.
	dialer, err := n.newRaftTLS("127.0.0.1:0", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer dialer.Close()
	dialer.nodeAt = func(string) (string, bool) { return "ctl9", true }
	if _, err := dialer.Dial(addr, 2*time.Second); err == nil || !strings.Contains(err.Error(), "answers as node ctl1, not ctl9") {
		t.Fatalf("dial of ctl1's address as ctl9's: %v", err)
	}
	dialer.nodeAt = func(string) (string, bool) { return "ctl1", true }
	conn, err := dialer.Dial(addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial of ctl1's address as ctl1's: %v", err)
	}
	conn.Close()
	// The node still leads: no vote request got through with its term.
	if n.raft.State() != raft.Leader {
		t.Fatalf("the node is %s", n.raft.State())
	}
}

// TestRestoreFourEyes: in four-eyes mode one officer alone cannot replace
// the cluster's state with a backup: the restore needs a restore request
// for that very file, approved by another officer.
func TestRestoreFourEyes(t *testing.T) {
	_, n, op, off1, off2 := fourEyesNode(t)
	ctx := context.Background()
	var backup bytes.Buffer
	if err := op.SaveSnapshot(ctx, &backup); err != nil {
		t.Fatal(err)
	}
	_, err := off1.RestoreSnapshot(ctx, bytes.NewReader(backup.Bytes()))
	wantStatus(t, err, 403, "needs a restore request for it")

	sum := sha256.Sum256(backup.Bytes())
	_, err = op.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestRestore, BackupSHA256: hex.EncodeToString(sum[:])})
	wantStatus(t, err, 403, "may not request restore")
	req, err := off1.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestRestore, BackupSHA256: hex.EncodeToString(sum[:]), Reason: "drill"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = off1.ApproveRequest(ctx, req.ID)
	wantStatus(t, err, 403, "own request")
	_, err = off1.RestoreSnapshot(ctx, bytes.NewReader(backup.Bytes()))
	wantStatus(t, err, 403, "needs a restore request for it")
	if _, err := off2.ApproveRequest(ctx, req.ID); err != nil {
		t.Fatal(err)
	}
	// Another file is not the one approved.
	other := append(bytes.Clone(backup.Bytes()), '\n')
	_, err = off1.RestoreSnapshot(ctx, bytes.NewReader(other))
	wantStatus(t, err, 403, "needs a restore request for it")
	if _, err := off1.RestoreSnapshot(ctx, bytes.NewReader(backup.Bytes())); err != nil {
		t.Fatal(err)
	}
	chain, err := n.State().Audit(0)
	if err != nil || !slices.ContainsFunc(chain, func(e api.AuditEntry) bool {
		return e.Action == ActionRestore && e.Actor == "officer1" && e.Role == "officer" && strings.HasSuffix(e.Object, " request:"+req.ID)
	}) {
		t.Fatalf("no audit entry of the restore: %v", err)
	}
}

// TestKeyIsRecorded: a certificate that copies a recorded one's serial
// but not its key is refused; the recorded key, an unknown serial and a
// record without a key hash pass.
func TestKeyIsRecorded(t *testing.T) {
	f := NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	mk := func(serial int64) (*x509.Certificate, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), NotBefore: t0, NotAfter: t0.Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
		return c, hex.EncodeToString(sum[:])
	}
	real, keyHash := mk(0x5a)
	forged, _ := mk(0x5a)
	if err := applyCmd(t, f, 1, CmdCertRecord, &CertRecordRequest{Meta: meta("node:ctl1"), Certs: []api.Certificate{
		{Serial: "5a", Kind: "person", Subject: "alice", Role: "officer", Issuer: "abcd", KeySHA256: keyHash, NotBefore: t0, NotAfter: t0.Add(time.Hour)},
		{Serial: "5b", Kind: "person", Subject: "bob", Role: "officer", Issuer: "abcd", NotBefore: t0, NotAfter: t0.Add(time.Hour)},
	}}); err != nil {
		t.Fatal(err)
	}
	s := f.State()
	if err := s.keyIsRecorded(real); err != nil {
		t.Fatalf("the recorded key refused: %v", err)
	}
	if err := s.keyIsRecorded(forged); err == nil || !strings.Contains(err.Error(), "does not carry the key recorded") {
		t.Fatalf("a copied serial with another key: %v", err)
	}
	for _, serial := range []int64{0x5b, 0x77} {
		if c, _ := mk(serial); s.keyIsRecorded(c) != nil {
			t.Fatalf("serial %x refused", serial)
		}
	}
}
