package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ocsp"
)

// MaxCRLValidity bounds how far ahead a CRL's nextUpdate may be.
const MaxCRLValidity = 24 * time.Hour

// Reason is an RFC 5280 CRLReason (5.3.1).
type Reason int

// Reasons a certificate can be revoked for. certificateHold (6) is not
// offered: govnet's revocations are final, a gateway that comes back is
// re-enrolled. removeFromCRL (8) exists only in delta CRLs.
const (
	ReasonUnspecified          Reason = 0
	ReasonKeyCompromise        Reason = 1
	ReasonCACompromise         Reason = 2
	ReasonAffiliationChanged   Reason = 3
	ReasonSuperseded           Reason = 4
	ReasonCessationOfOperation Reason = 5
	ReasonPrivilegeWithdrawn   Reason = 9
)

var reasonNames = map[Reason]string{
	ReasonUnspecified:          "unspecified",
	ReasonKeyCompromise:        "keyCompromise",
	ReasonCACompromise:         "cACompromise",
	ReasonAffiliationChanged:   "affiliationChanged",
	ReasonSuperseded:           "superseded",
	ReasonCessationOfOperation: "cessationOfOperation",
	ReasonPrivilegeWithdrawn:   "privilegeWithdrawn",
}

func (r Reason) String() string {
	if n, ok := reasonNames[r]; ok {
		return n
	}
	return "reason(" + strconv.Itoa(int(r)) + ")"
}

// Valid reports whether r is a reason govnet revokes for.
func (r Reason) Valid() bool { _, ok := reasonNames[r]; return ok }

// ErrReason is wrapped by errors about an unknown revocation reason.
var ErrReason = errors.New("unknown revocation reason")

// ParseReason reads a reason by its RFC 5280 name ("keyCompromise"), in
// any case and with or without dashes ("key-compromise").
func ParseReason(s string) (Reason, error) {
	norm := strings.ToLower(strings.ReplaceAll(strings.ReplaceAll(s, "-", ""), "_", ""))
	for r, n := range reasonNames {
		if strings.ToLower(n) == norm {
			return r, nil
		}
	}
	names := make([]string, 0, len(reasonNames))
	for _, n := range reasonNames {
		names = append(names, n)
	}
	slices.Sort(names)
	return 0, fmt.Errorf("%w %q (want one of %s)", ErrReason, s, strings.Join(names, ", "))
}

// Revoked is one revoked certificate, as the inventory records it.
type Revoked struct {
	Serial *big.Int
	At     time.Time
	Reason Reason
}

// CRL returns a DER CRL of entries, signed (through the HSM) by the CA's
// intermediate, with CRL number number, thisUpdate now and nextUpdate
// now + MaxCRLValidity. The CRL is linted before it is signed.
func (c *CA) CRL(entries []Revoked, number *big.Int, now time.Time) ([]byte, error) {
	return c.linter.crl(c.inter, c.signer, entries, number, now, MaxCRLValidity, MaxCRLValidity)
}

func (l *Linter) crl(issuer *x509.Certificate, signer crypto.Signer, entries []Revoked, number *big.Int, now time.Time, validity, maxValidity time.Duration) ([]byte, error) {
	what := fmt.Sprintf("CRL %v of %q", number, issuer.Subject.CommonName)
	if number == nil || number.Sign() < 0 || number.BitLen() > 159 {
		return nil, fmt.Errorf("%s: CRL number must be a non-negative integer of at most 20 octets", what)
	}
	if validity <= 0 || validity > maxValidity {
		return nil, fmt.Errorf("%s: validity %v: want (0, %v]", what, validity, maxValidity)
	}
	// CRL times have whole seconds.
	now = now.UTC().Truncate(time.Second)
	tmpl := &x509.RevocationList{
		Number:     number,
		ThisUpdate: now,
		NextUpdate: now.Add(validity),
	}
	seen := map[string]bool{}
	for _, e := range entries {
		e.At = e.At.UTC().Truncate(time.Second)
		switch {
		case e.Serial == nil || e.Serial.Sign() <= 0:
			return nil, fmt.Errorf("%s: entry with serial %v: want a positive serial", what, e.Serial)
		case seen[e.Serial.String()]:
			return nil, fmt.Errorf("%s: serial %s listed twice", what, e.Serial.Text(16))
		case !e.Reason.Valid():
			return nil, fmt.Errorf("%s: serial %s: %w %d", what, e.Serial.Text(16), ErrReason, e.Reason)
		case e.At.After(now):
			return nil, fmt.Errorf("%s: serial %s revoked at %v, after thisUpdate %v", what, e.Serial.Text(16), e.At, now)
		}
		seen[e.Serial.String()] = true
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber:   e.Serial,
			RevocationTime: e.At,
			ReasonCode:     int(e.Reason), // 0 (unspecified) is left out, as RFC 5280 5.3.1 asks
		})
	}
	slices.SortFunc(tmpl.RevokedCertificateEntries, func(a, b x509.RevocationListEntry) int {
		return a.SerialNumber.Cmp(b.SerialNumber)
	})
	return l.signCRL(what, tmpl, issuer, signer, maxValidity)
}

// CertState is what the inventory knows of a serial.
type CertState int

// Certificate states for OCSP.
const (
	StateUnknown CertState = iota // not issued by this CA as far as the inventory knows
	StateGood
	StateRevoked
)

// CertStatus is the answer of a StatusLookup.
type CertStatus struct {
	State     CertState
	RevokedAt time.Time // StateRevoked only
	Reason    Reason    // StateRevoked only
}

// StatusLookup answers for a serial issued by the responder's issuer. The
// controller implements it over the replicated inventory.
type StatusLookup func(ctx context.Context, serial *big.Int) (CertStatus, error)

// OCSPValidity is how long an OCSP response is valid (nextUpdate -
// thisUpdate), and how long HTTP caches may keep a GET response.
const OCSPValidity = time.Hour

// maxOCSPRequest bounds the size of a request body.
const maxOCSPRequest = 4 << 10

// OCSPResponder answers RFC 6960 requests about certificates of one
// issuer, signing responses with the issuer's own key (no delegated
// responder certificate). It serves POST (application/ocsp-request) on
// any path and GET with the base64 request as the last path segment
// (RFC 6960 A.1). Requests about another issuer get "unauthorized".
type OCSPResponder struct {
	issuer *x509.Certificate
	signer crypto.Signer
	lookup StatusLookup
	now    func() time.Time

	mu     sync.Mutex
	signed map[ocspKey]signedAnswer // answers signed lately, by what they answer
}

// ocspReuse is how long a signed answer is given again to the same
// question while the certificate's status stays as it said: anyone may
// ask, and each new answer is an HSM signature, so a flood of requests
// for a few serials costs one signature per serial a minute. A change of
// status is answered anew at once.
const ocspReuse = time.Minute

// maxSignedAnswers bounds the answers kept for reuse; past it they are
// all dropped (a flood over many serials is what the rate limit is for).
const maxSignedAnswers = 1 << 16

// ocspKey is what an answer answers: the serial, and the hash the
// request's CertID used, which the answer's CertID repeats.
type ocspKey struct {
	serial string
	hash   crypto.Hash
}

type signedAnswer struct {
	ocspAnswer
	status CertStatus
}

// OCSPResponder returns an http.Handler that answers OCSP requests for
// this CA's intermediate with the status lookup says.
func (c *CA) OCSPResponder(lookup StatusLookup) *OCSPResponder {
	return &OCSPResponder{issuer: c.inter, signer: c.signer, lookup: lookup, now: c.now}
}

func (o *OCSPResponder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var raw []byte
	switch r.Method {
	case http.MethodPost:
		b, err := io.ReadAll(io.LimitReader(r.Body, maxOCSPRequest+1))
		if err != nil || len(b) > maxOCSPRequest {
			o.write(w, r, ocspAnswer{der: ocsp.MalformedRequestErrorResponse})
			return
		}
		raw = b
	case http.MethodGet:
		b, ok := requestFromPath(r.URL)
		if !ok {
			o.write(w, r, ocspAnswer{der: ocsp.MalformedRequestErrorResponse})
			return
		}
		raw = b
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "OCSP takes GET or POST", http.StatusMethodNotAllowed)
		return
	}
	o.write(w, r, o.respond(r.Context(), raw))
}

// write sends an answer. A signed answer to a GET may be cached as RFC
// 5019 6.2 says: Last-Modified its thisUpdate, Expires its nextUpdate,
// max-age the seconds left to nextUpdate; anything else may not.
func (o *OCSPResponder) write(w http.ResponseWriter, r *http.Request, a ocspAnswer) {
	h := w.Header()
	h.Set("Content-Type", "application/ocsp-response")
	h.Set("Content-Length", strconv.Itoa(len(a.der)))
	left := int(a.nextUpdate.Sub(o.now()) / time.Second)
	if !a.nextUpdate.IsZero() && r.Method == http.MethodGet && left > 0 {
		h.Set("Last-Modified", a.thisUpdate.UTC().Format(http.TimeFormat))
		h.Set("Expires", a.nextUpdate.UTC().Format(http.TimeFormat))
		h.Set("Cache-Control", fmt.Sprintf("max-age=%d, public, no-transform, must-revalidate", left))
	} else {
		h.Set("Cache-Control", "no-store")
	}
	w.WriteHeader(http.StatusOK)
	w.Write(a.der)
}

// maxPathAttempts bounds how many suffixes of a GET path are decoded in
// full: one is the request unless a suffix that looks like one comes first.
const maxPathAttempts = 4

// requestFromPath finds the base64 request at the end of a GET path.
// RFC 6960 A.1 asks clients to URL-encode it, but many do not, and base64
// contains '/': so try the suffixes that start after a '/', longest first,
// and take the first that decodes to an OCSP request. Only a suffix whose
// first characters decode to a DER SEQUENCE header announcing exactly its
// length is decoded in full, and at most maxPathAttempts are: the work is
// linear in the path, which anyone may send (decoding every suffix was
// quadratic, tens of milliseconds of CPU for one path of slashes).
func requestFromPath(u *url.URL) ([]byte, bool) {
	p := u.Path // already unescaped
	if len(p) > 2*maxOCSPRequest {
		return nil, false
	}
	attempts := 0
	for i := 0; i < len(p) && attempts < maxPathAttempts; i++ {
		if p[i] != '/' || !wholeDERSequence(p[i+1:]) {
			continue
		}
		attempts++
		b, err := base64.StdEncoding.DecodeString(p[i+1:])
		if err != nil {
			continue
		}
		if _, err := parseOCSPRequest(b); err == nil {
			return b, true
		}
	}
	return nil, false
}

// wholeDERSequence says whether s, standard base64, starts with a DER
// SEQUENCE header whose length, at most maxOCSPRequest, is all of s.
func wholeDERSequence(s string) bool {
	if len(s) < 8 || len(s)%4 != 0 {
		return false
	}
	var src [8]byte
	var h [6]byte
	copy(src[:], s)
	if _, err := base64.StdEncoding.Decode(h[:], src[:]); err != nil || h[0] != 0x30 {
		return false
	}
	var n int
	switch h[1] {
	case 0x81:
		n = 3 + int(h[2])
	case 0x82:
		n = 4 + int(h[2])<<8 | int(h[3])
	default:
		if h[1] >= 0x80 {
			return false
		}
		n = 2 + int(h[1])
	}
	return n <= maxOCSPRequest && base64.StdEncoding.EncodedLen(n) == len(s)
}

// An ocspAnswer is a DER OCSP response and, if it is a signed one, the
// thisUpdate and nextUpdate it holds (zero for an error response).
type ocspAnswer struct {
	der                    []byte
	thisUpdate, nextUpdate time.Time
}

// respond answers one DER OCSP request.
func (o *OCSPResponder) respond(ctx context.Context, raw []byte) ocspAnswer {
	req, err := parseOCSPRequest(raw)
	if err != nil {
		return ocspAnswer{der: ocsp.MalformedRequestErrorResponse}
	}
	if !o.issuedByUs(req) {
		return ocspAnswer{der: ocsp.UnauthorizedErrorResponse}
	}
	st, err := o.lookup(ctx, req.SerialNumber)
	if err != nil {
		return ocspAnswer{der: ocsp.InternalErrorErrorResponse}
	}
	now := o.now().UTC().Truncate(time.Second)
	key := ocspKey{req.SerialNumber.String(), req.HashAlgorithm}
	if a, ok := o.reuse(key, st, now); ok {
		return a
	}
	tmpl := ocsp.Response{
		SerialNumber: req.SerialNumber,
		IssuerHash:   req.HashAlgorithm,
		ThisUpdate:   now,
		NextUpdate:   now.Add(OCSPValidity),
		ProducedAt:   now,
	}
	switch st.State {
	case StateGood:
		tmpl.Status = ocsp.Good
	case StateRevoked:
		tmpl.Status = ocsp.Revoked
		// Another node's clock stamped the revocation: a response may
		// not say it happened after its own thisUpdate (the CRL clamps
		// it the same way).
		tmpl.RevokedAt = st.RevokedAt.UTC()
		if tmpl.RevokedAt.After(now) {
			tmpl.RevokedAt = now
		}
		tmpl.RevocationReason = int(st.Reason)
	default:
		tmpl.Status = ocsp.Unknown
	}
	der, err := ocsp.CreateResponse(o.issuer, o.issuer, tmpl, o.signer)
	if err != nil {
		return ocspAnswer{der: ocsp.InternalErrorErrorResponse}
	}
	a := ocspAnswer{der: der, thisUpdate: tmpl.ThisUpdate, nextUpdate: tmpl.NextUpdate}
	o.keep(key, st, a)
	return a
}

// reuse returns the answer signed for key within ocspReuse of now, if the
// status it gave is still st.
func (o *OCSPResponder) reuse(key ocspKey, st CertStatus, now time.Time) (ocspAnswer, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s, ok := o.signed[key]
	if !ok || !sameStatus(s.status, st) || now.Sub(s.thisUpdate) >= ocspReuse || now.Before(s.thisUpdate) {
		return ocspAnswer{}, false
	}
	return s.ocspAnswer, true
}

func (o *OCSPResponder) keep(key ocspKey, st CertStatus, a ocspAnswer) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.signed == nil || len(o.signed) >= maxSignedAnswers {
		o.signed = make(map[ocspKey]signedAnswer)
	}
	o.signed[key] = signedAnswer{a, st}
}

func sameStatus(a, b CertStatus) bool {
	return a.State == b.State && a.RevokedAt.Equal(b.RevokedAt) && a.Reason == b.Reason
}

// RFC 6960 4.1.1's OCSPRequest, as parseOCSPRequest reads it.
type ocspRequest struct {
	TBSRequest        tbsRequest
	OptionalSignature asn1.RawValue `asn1:"explicit,tag:0,optional"`
}

type tbsRequest struct {
	Version       int           `asn1:"explicit,tag:0,default:0,optional"`
	RequestorName asn1.RawValue `asn1:"explicit,tag:1,optional"`
	RequestList   []singleRequest
	Extensions    []pkix.Extension `asn1:"explicit,tag:2,optional"`
}

type singleRequest struct {
	Cert       certID
	Extensions []pkix.Extension `asn1:"explicit,tag:0,optional"`
}

type certID struct {
	HashAlgorithm pkix.AlgorithmIdentifier
	NameHash      []byte
	IssuerKeyHash []byte
	SerialNumber  *big.Int
}

// certIDHashes are the CertID hash algorithms a request may use (those
// x/crypto/ocsp can answer with).
var certIDHashes = []struct {
	oid  asn1.ObjectIdentifier
	hash crypto.Hash
}{
	{asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}, crypto.SHA1},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}, crypto.SHA256},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}, crypto.SHA384},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}, crypto.SHA512},
}

// parseOCSPRequest reads a DER OCSPRequest asking about exactly one
// certificate. Unlike ocsp.ParseRequest it answers a signed request (RFC
// 6960 4.1.2: a requestor may sign; this responder requires no signature
// and ignores it: openssl ocsp -signer was told "malformed"), and it
// refuses a request for several certificates rather than take the first
// (RFC 5019 2.1.1: one Request per OCSPRequest; a response can only say
// what was asked of the first, which left the client with no status for
// the others).
func parseOCSPRequest(der []byte) (*ocsp.Request, error) {
	var req ocspRequest
	rest, err := asn1.Unmarshal(der, &req)
	if err != nil {
		return nil, fmt.Errorf("OCSP request: %w", err)
	}
	if len(rest) > 0 {
		return nil, errors.New("OCSP request: trailing data")
	}
	if n := len(req.TBSRequest.RequestList); n != 1 {
		return nil, fmt.Errorf("OCSP request: %d certificates asked about, want 1", n)
	}
	id := req.TBSRequest.RequestList[0].Cert
	for _, h := range certIDHashes {
		if id.HashAlgorithm.Algorithm.Equal(h.oid) {
			return &ocsp.Request{HashAlgorithm: h.hash, IssuerNameHash: id.NameHash, IssuerKeyHash: id.IssuerKeyHash, SerialNumber: id.SerialNumber}, nil
		}
	}
	return nil, fmt.Errorf("OCSP request: CertID hash %v not supported", id.HashAlgorithm.Algorithm)
}

// issuedByUs compares the request's issuer name and key hashes with ours.
func (o *OCSPResponder) issuedByUs(req *ocsp.Request) bool {
	h := req.HashAlgorithm
	if !h.Available() {
		return false
	}
	var spki struct {
		Algorithm asn1.RawValue
		Key       asn1.BitString
	}
	if _, err := asn1.Unmarshal(o.issuer.RawSubjectPublicKeyInfo, &spki); err != nil {
		return false
	}
	kh := h.New()
	kh.Write(spki.Key.RightAlign())
	nh := h.New()
	nh.Write(o.issuer.RawSubject)
	return bytes.Equal(kh.Sum(nil), req.IssuerKeyHash) && bytes.Equal(nh.Sum(nil), req.IssuerNameHash)
}
