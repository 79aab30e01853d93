package controller

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// personCSR returns a CSR for key in PEM.
func personCSR(t *testing.T, key crypto.Signer, name string) string {
	t.Helper()
	csr, err := ca.NewCSR(key, name)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}))
}

// personClient is the API client of a person holding key and the chain in resp.
func personClient(t *testing.T, cfg Config, n *Node, key crypto.Signer, resp *api.PersonCertResponse) *api.Client {
	t.Helper()
	chain, err := ca.ParsePEM([]byte(resp.Certificate))
	if err != nil {
		t.Fatal(err)
	}
	tc, err := api.TLSConfig(cfg.pkiPath(rootFile), "", "")
	if err != nil {
		t.Fatal(err)
	}
	tc.Certificates = []tls.Certificate{{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key}}
	return api.NewClient("https://"+n.Addr().String(), tc)
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// TestPersonCredentials: after init, an officer invites a person, who
// enrolls for a certificate of the invited role with a key of their own
// and renews it with the current one; bad tokens, CSRs and certificates
// are refused and change nothing.
func TestPersonCredentials(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	ctx := context.Background()
	off := person(t, cfg, n, "officer1")
	op := person(t, cfg, n, "operator1")
	anon := client(t, cfg, n, "", "")

	_, err := op.Invite(ctx, "dora", api.InviteRequest{Role: ca.RoleAuditor})
	wantStatus(t, err, 403, "role")
	_, err = off.Invite(ctx, "dora", api.InviteRequest{Role: "admin"})
	wantStatus(t, err, 400, `role "admin"`)
	_, err = off.Invite(ctx, "dora/x", api.InviteRequest{Role: ca.RoleAuditor})
	if err == nil {
		t.Fatal("an invitation for a bad name was accepted")
	}
	inv, err := off.Invite(ctx, "dora", api.InviteRequest{Role: ca.RoleAuditor, TTL: "10m"})
	if err != nil {
		t.Fatal(err)
	}
	if inv.Person != "dora" || inv.Role != ca.RoleAuditor || inv.Token == "" {
		t.Fatalf("invitation: %+v", inv)
	}

	key := newKey(t)
	// Another name, a forged CSR, a gateway enrollment: refused, and the
	// token still works after them.
	_, err = anon.EnrollPerson(ctx, api.PersonEnrollRequest{Name: "eve", Token: inv.Token, CSR: personCSR(t, key, "eve")})
	wantStatus(t, err, 403, "does not invite")
	forged := []byte(personCSR(t, key, "dora"))
	blk, _ := pem.Decode(forged)
	blk.Bytes[len(blk.Bytes)-3] ^= 0xff
	_, err = anon.EnrollPerson(ctx, api.PersonEnrollRequest{Name: "dora", Token: inv.Token, CSR: string(pem.EncodeToMemory(blk))})
	wantStatus(t, err, 400, "")
	_, err = anon.Enroll(ctx, api.EnrollRequest{Token: inv.Token, CSR: personCSR(t, key, "dora"), PublicKey: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="})
	wantStatus(t, err, 403, "invites a person")
	if _, ok := n.State().Person("dora"); ok {
		t.Fatal("dora registered by a refused enrollment")
	}

	got, err := anon.EnrollPerson(ctx, api.PersonEnrollRequest{Name: "dora", Token: inv.Token, CSR: personCSR(t, key, "dora")})
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "dora" || got.Role != ca.RoleAuditor || got.Serial == "" {
		t.Fatalf("enrolled: %+v", got)
	}
	_, err = anon.EnrollPerson(ctx, api.PersonEnrollRequest{Name: "dora", Token: inv.Token, CSR: personCSR(t, newKey(t), "dora")})
	wantStatus(t, err, 403, "already used")
	rec, ok := n.State().Certificate(got.Serial)
	if !ok || rec.Kind != ca.KindPerson || rec.Role != ca.RoleAuditor || rec.Approver != "officer1" || rec.Requester != "officer1" {
		t.Fatalf("inventory record: %+v", rec)
	}
	dora := personClient(t, cfg, n, key, got)
	if _, err := dora.AuditCheckpoints(ctx); err != nil {
		t.Fatalf("dora audits: %v", err)
	}
	_, err = dora.AddAgency(ctx, api.Agency{Code: "000.00.00.H30", Name: "x"})
	wantStatus(t, err, 403, "role")

	// Renewal: a new key; the old certificate then only renews.
	key2 := newKey(t)
	renewed, err := dora.RenewPerson(ctx, api.PersonRenewRequest{CSR: personCSR(t, key2, "dora")})
	if err != nil {
		t.Fatal(err)
	}
	if renewed.Serial == got.Serial || renewed.Role != ca.RoleAuditor {
		t.Fatalf("renewed: %+v", renewed)
	}
	if rec, _ := n.State().Certificate(renewed.Serial); rec.RenewedFrom != got.Serial || rec.Requester != "dora" {
		t.Fatalf("the renewed certificate's record: %+v", rec)
	}
	_, err = dora.AuditCheckpoints(ctx)
	wantStatus(t, err, 403, "was renewed to "+renewed.Serial)
	dora2 := personClient(t, cfg, n, key2, renewed)
	if _, err := dora2.AuditCheckpoints(ctx); err != nil {
		t.Fatalf("dora with the renewed certificate: %v", err)
	}
	// The answer was lost: the old certificate renews again, for the key
	// the lost certificate certifies, and for no other.
	_, err = dora.RenewPerson(ctx, api.PersonRenewRequest{CSR: personCSR(t, newKey(t), "dora")})
	wantStatus(t, err, 403, "takes a CSR for the key")
	again, err := dora.RenewPerson(ctx, api.PersonRenewRequest{CSR: personCSR(t, key2, "dora")})
	if err != nil {
		t.Fatal(err)
	}
	p, _ := n.State().Person("dora")
	if p.Serial != again.Serial || p.Previous != got.Serial {
		t.Fatalf("after the retried renewal: %+v; want serial %s, previous %s", p, again.Serial, got.Serial)
	}
	_, err = dora2.AuditCheckpoints(ctx)
	wantStatus(t, err, 403, "not the one registered")
	dora3 := personClient(t, cfg, n, key2, again)
	// The certificate whose answer was lost is revoked; the first stays
	// valid, for another retry.
	wantCert := func(serial, status, reason string) {
		t.Helper()
		if c, _ := n.State().Certificate(serial); c.Status != status || c.ReasonName != reason {
			t.Fatalf("certificate %s: %s (%s), want %s (%s)", serial, c.Status, c.ReasonName, status, reason)
		}
	}
	wantCert(renewed.Serial, api.CertRevoked, "superseded")
	wantCert(got.Serial, api.CertValid, "")

	// A lost key: invited again, the person enrolls anew and the
	// certificate before is revoked as superseded.
	// Two invitations out: enrolling with one cancels the other.
	inv2, err := off.Invite(ctx, "dora", api.InviteRequest{Role: ca.RoleAuditor})
	if err != nil {
		t.Fatal(err)
	}
	inv3, err := off.Invite(ctx, "dora", api.InviteRequest{Role: ca.RoleOfficer})
	if err != nil {
		t.Fatal(err)
	}
	key4 := newKey(t)
	fresh, err := anon.EnrollPerson(ctx, api.PersonEnrollRequest{Name: "dora", Token: inv2.Token, CSR: personCSR(t, key4, "dora")})
	if err != nil {
		t.Fatal(err)
	}
	wantCert(again.Serial, api.CertRevoked, "superseded")
	wantCert(got.Serial, api.CertRevoked, "superseded")
	_, err = dora3.AuditCheckpoints(ctx)
	wantStatus(t, err, 403, "not the one registered")
	_, err = anon.EnrollPerson(ctx, api.PersonEnrollRequest{Name: "dora", Token: inv3.Token, CSR: personCSR(t, newKey(t), "dora")})
	wantStatus(t, err, 403, "cancelled")

	// Revoked: no renewal; the certificate before the current one and an
	// invitation still out are withdrawn with it.
	dora4 := personClient(t, cfg, n, key4, fresh)
	key5 := newKey(t)
	fifth, err := dora4.RenewPerson(ctx, api.PersonRenewRequest{CSR: personCSR(t, key5, "dora")})
	if err != nil {
		t.Fatal(err)
	}
	dora5 := personClient(t, cfg, n, key5, fifth)
	inv4, err := off.Invite(ctx, "dora", api.InviteRequest{Role: ca.RoleOfficer})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := off.RevokePerson(ctx, "dora"); err != nil {
		t.Fatal(err)
	}
	wantCert(fifth.Serial, api.CertRevoked, "privilegeWithdrawn")
	wantCert(fresh.Serial, api.CertRevoked, "privilegeWithdrawn")
	_, err = dora5.RenewPerson(ctx, api.PersonRenewRequest{CSR: personCSR(t, key5, "dora")})
	wantStatus(t, err, 403, "revoked")
	_, err = dora4.RenewPerson(ctx, api.PersonRenewRequest{CSR: personCSR(t, key5, "dora")})
	wantStatus(t, err, 403, "not the one registered")
	_, err = anon.EnrollPerson(ctx, api.PersonEnrollRequest{Name: "dora", Token: inv4.Token, CSR: personCSR(t, newKey(t), "dora")})
	wantStatus(t, err, 403, "cancelled")
	// A person's renewal is no gateway's.
	_, err = anon.RenewPerson(ctx, api.PersonRenewRequest{CSR: personCSR(t, key, "dora")})
	wantStatus(t, err, 401, "client certificate")
}

// TestInviteFourEyes: in four-eyes mode an invitation is a request that
// an officer other than the requester approves; the approval carries the
// token.
func TestInviteFourEyes(t *testing.T) {
	cfg, n, op, off1, off2 := fourEyesNode(t)
	ctx := context.Background()
	_, err := off1.Invite(ctx, "erin", api.InviteRequest{Role: ca.RoleOfficer})
	wantStatus(t, err, 403, "request invite")
	_, err = op.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestInvite, PersonName: "erin", PersonRole: ca.RoleOfficer})
	wantStatus(t, err, 403, "may not request invite")
	_, err = off1.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestInvite, PersonName: "erin", PersonRole: "root"})
	wantStatus(t, err, 400, "role")
	// The request names erin's key: the approver, who gets the token,
	// cannot enroll a key of their own as erin.
	_, err = off1.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestInvite, PersonName: "erin", PersonRole: ca.RoleOfficer})
	wantStatus(t, err, 400, "key_sha256")
	key := newKey(t)
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	sum := sha256.Sum256(spki)
	req, err := off1.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestInvite, PersonName: "erin", PersonRole: ca.RoleOfficer, TTL: "30m", KeySHA256: hex.EncodeToString(sum[:])})
	if err != nil {
		t.Fatal(err)
	}
	_, err = off1.ApproveRequest(ctx, req.ID)
	wantStatus(t, err, 403, "own request")
	ok, err := off2.ApproveRequest(ctx, req.ID)
	if err != nil {
		t.Fatal(err)
	}
	if ok.Token == nil || ok.Token.Person != "erin" || ok.Token.Role != ca.RoleOfficer {
		t.Fatalf("approval: %+v", ok.Token)
	}
	if d := time.Until(ok.Token.Expires); d < 29*time.Minute || d > 31*time.Minute {
		t.Fatalf("token expires in %s, want 30m", d)
	}
	_, err = client(t, cfg, n, "", "").EnrollPerson(ctx, api.PersonEnrollRequest{Name: "erin", Token: ok.Token.Token, CSR: personCSR(t, newKey(t), "erin")})
	wantStatus(t, err, 403, "another key")
	got, err := client(t, cfg, n, "", "").EnrollPerson(ctx, api.PersonEnrollRequest{Name: "erin", Token: ok.Token.Token, CSR: personCSR(t, key, "erin")})
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := n.State().Certificate(got.Serial)
	if rec.Requester != "officer1" || rec.Approver != "officer2" {
		t.Fatalf("erin's certificate: requester %q, approver %q; want officer1, officer2", rec.Requester, rec.Approver)
	}
	erin := personClient(t, cfg, n, key, got)
	if _, err := erin.Requests(ctx); err != nil {
		t.Fatalf("erin calls: %v", err)
	}
}
