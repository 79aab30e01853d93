package netagent

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/internal/atomicfile"
)

// Certificate renewal. The gateway's certificate is short-lived (24 h by
// default); at two thirds of its life the agent makes a new key (in a
// file, or in the gateway's token: keystore.go), sends a CSR over mTLS
// with the current certificate, and replaces the key (or key label) and
// certificate files; a key in a token that no file names any more is then
// destroyed. The API client's TLS config reads the files at every
// handshake (reloadingClientCert), and the client drops its connections,
// so the new certificate is presented from the next call on without a
// restart; a watch stream in flight finishes on its connection.

// Errors a caller can decide on.
var (
	// ErrCertExpired: the certificate expired before it could be renewed.
	// The controllers refuse it in the TLS handshake; only a new
	// enrollment (a new token) brings the gateway back.
	ErrCertExpired = errors.New("gateway certificate expired")
	// ErrRenewRefused: the controllers refused the renewal (the gateway
	// or its certificate was revoked, or the certificate is no longer its
	// current one). Retrying will not help until an officer acts.
	ErrRenewRefused = errors.New("certificate renewal refused")
)

// Files of a renewal in progress: written in full first, then renamed
// over the live files, key first (the key file is the keyStore's: tls.key
// or tls.key.label, staged as keyFile() + nextSuffix). finishRenewal
// completes a renewal that a crash interrupted between the two renames.
const (
	nextSuffix   = ".next"
	fileCertNext = fileCert + nextSuffix
)

// renewRecheck is how often a renewer waiting for the renewal time reads
// the wall clock again (renewer.recheck).
const renewRecheck = time.Minute

// renewTimeout bounds one renewal attempt.
const renewTimeout = 2 * time.Minute

// renewAt is when a certificate is due: two thirds into its life.
func renewAt(cert *x509.Certificate) time.Time {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return cert.NotBefore.Add(life * 2 / 3)
}

// renewer keeps the gateway's certificate fresh.
type renewer struct {
	cfg       Config
	keys      keyStore
	client    func() *api.Client // the client of the controller node in use
	onRenewed func()             // drop connections that present the old certificate
	log       *slog.Logger
	now       func() time.Time
	retry     *backoff
	called    <-chan string // the controllers' calls to renew now; nil for none
	spread    time.Duration // a called renewal waits a random part of it
	// recheck bounds one sleep before the renewal time is computed again
	// from the wall clock: timers run on the monotonic clock, so a wait
	// computed before the wall clock was set right (a gateway that
	// booted without a good real-time clock, then NTP) would otherwise
	// run its whole wrong length.
	recheck time.Duration

	// pending is the key of a renewal whose answer never came (a
	// connection or the controllers' leader lost): it may have been
	// committed, so the next attempt asks again for the same key, which
	// the controllers accept with the certificate the gateway still holds.
	pending *pendingRenewal
}

// pendingRenewal is a renewal attempt whose outcome is unknown.
type pendingRenewal struct {
	from    string // the serial of the certificate it renews
	key     crypto.Signer
	keyData []byte
	csr     string // PEM
}

// pendingFile is a pendingRenewal as filePendingRenewal keeps it, written
// before the renewal is sent and removed once its outcome is known: an
// agent that restarts after a lost answer asks again for the same key
// instead of being locked out.
type pendingFile struct {
	From string `json:"from"`
	Key  string `json:"key"` // the key file's contents: PEM, or a token key's label
	CSR  string `json:"csr"`
}

func newRenewer(cfg Config, keys keyStore, client func() *api.Client, log *slog.Logger) *renewer {
	r := &renewer{
		cfg: cfg, keys: keys, client: client, log: log, now: time.Now,
		onRenewed: func() { client().ResetConnections() },
		retry:     newBackoff(5*time.Second, 10*time.Minute),
		spread:    api.RenewCallSpread,
		recheck:   renewRecheck,
	}
	r.pending = r.loadPending()
	return r
}

// loadPending reads the renewal that an earlier run left unanswered, if
// any. One that cannot be used is dropped: the next renewal makes a new
// key, which is all that was possible before it was kept.
func (r *renewer) loadPending() *pendingRenewal {
	pf, err := readPendingFile(r.cfg)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var key crypto.Signer
	if err == nil {
		key, err = r.keys.loadKey([]byte(pf.Key))
	}
	if err == nil && pf.From == "" {
		err = errors.New("no serial")
	}
	if err == nil {
		err = csrFor(pf.CSR, key)
	}
	if err != nil {
		r.log.Warn("dropped an unanswered renewal kept by an earlier run", "file", r.cfg.path(filePendingRenewal), "err", err)
		r.clearPending(nil)
		return nil
	}
	r.log.Info("an earlier run's renewal got no answer; the next renewal asks again for its key", "serial", pf.From)
	return &pendingRenewal{from: pf.From, key: key, keyData: []byte(pf.Key), csr: pf.CSR}
}

// readPendingFile reads cfg's filePendingRenewal.
func readPendingFile(cfg Config) (pendingFile, error) {
	var pf pendingFile
	data, err := os.ReadFile(cfg.path(filePendingRenewal))
	if err == nil {
		err = json.Unmarshal(data, &pf)
	}
	return pf, err
}

// csrFor checks that csrPEM is a certificate request for key's public
// key.
func csrFor(csrPEM string, key crypto.Signer) error {
	block, _ := pem.Decode([]byte(csrPEM))
	if block == nil {
		return errors.New("no PEM CSR")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return err
	}
	if !samePublicKey(csr.PublicKey, key.Public()) {
		return errors.New("the CSR is not for the kept key")
	}
	return nil
}

// keepPending writes p to filePendingRenewal.
func (r *renewer) keepPending(p *pendingRenewal) error {
	data, err := json.Marshal(pendingFile{From: p.from, Key: string(p.keyData), CSR: p.csr})
	if err != nil {
		return err
	}
	return atomicfile.Write(r.cfg.path(filePendingRenewal), data, 0o600)
}

// clearPending removes filePendingRenewal and, when p is given, discards
// its key, unless that key is the one in use: a renewal installed by a
// start after a crash (finishRenewal) whose file was left behind.
func (r *renewer) clearPending(p *pendingRenewal) error {
	var errs []error
	if p != nil {
		if cur, err := r.current(); err == nil && samePublicKey(cur.PublicKey, p.key.Public()) {
			r.log.Info("an earlier run's renewal was installed at the start", "serial", ca.Serial(cur))
		} else {
			errs = append(errs, r.keys.discard(p.keyData))
		}
	}
	if err := os.Remove(r.cfg.path(filePendingRenewal)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// callRenewal takes a controller's call to renew now (an officer's
// govnetctl cert renew-all); it never blocks the stream's reader.
func (a *Agent) callRenewal(reason string) {
	select {
	case a.renewNow <- reason:
	default: // one is pending already
	}
}

// renewLoop renews the gateway's certificate at two thirds of its life,
// or soon after the controllers call for it, until ctx ends, retrying
// failures with capped, jittered backoff.
func (a *Agent) renewLoop(ctx context.Context) {
	r := newRenewer(a.cfg, a.keys, a.client, a.log)
	r.called = a.renewNow
	r.onRenewed = func() {
		for _, c := range a.clients {
			c.ResetConnections()
		}
	}
	r.run(ctx)
}

func (r *renewer) run(ctx context.Context) {
	var scheduled string // the serial whose renewal time was logged
	for ctx.Err() == nil {
		cert, err := r.current()
		if err != nil {
			r.log.Error("read the gateway certificate", "err", err)
			if r.retry.wait(ctx) != nil {
				return
			}
			continue
		}
		if wait := renewAt(cert).Sub(r.now()); wait > 0 {
			if s := ca.Serial(cert); s != scheduled {
				scheduled = s
				r.log.Debug("certificate renewal scheduled", "serial", s, "in", wait.Round(time.Second).String())
			}
			sleep := wait
			if r.recheck > 0 {
				sleep = min(wait, r.recheck)
			}
			t := time.NewTimer(sleep)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
				if sleep < wait {
					continue // not due yet, unless the wall clock moved: read it again
				}
			case reason := <-r.called:
				t.Stop()
				r.log.Info("the controllers call for a certificate renewal now", "serial", ca.Serial(cert), "reason", reason)
				if r.spread > 0 && pause(ctx, rand.N(r.spread)) != nil {
					return
				}
			}
		}
		err = r.renew(ctx)
		switch {
		case err == nil:
			r.retry.reset()
			// A call that came meanwhile is answered too: it may be a
			// second call, made after the new certificate was issued.
			// (It is more often the call just answered, told again on a
			// stream that reconnected meanwhile: a renewal too many, where
			// dropping it could leave the gateway on a certificate older
			// than an officer's call for hours.)
			continue
		case ctx.Err() != nil:
			return
		case errors.Is(err, ErrCertExpired), errors.Is(err, ErrRenewRefused):
			r.log.Error("certificate renewal", "err", err)
		default:
			r.log.Warn("certificate renewal failed; retrying", "err", err)
		}
		if r.retry.wait(ctx) != nil {
			return
		}
	}
}

// current reads the gateway's certificate from its file.
func (r *renewer) current() (*x509.Certificate, error) {
	data, err := os.ReadFile(r.cfg.path(fileCert))
	if err != nil {
		return nil, err
	}
	chain, err := ca.ParsePEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.cfg.path(fileCert), err)
	}
	return chain[0], nil
}

// renew makes a new key (or takes the pending one), asks for a
// certificate for it, checks the answer and installs both. A new key that
// is not installed is discarded, unless the controllers may have
// certified it (no answer): then it is kept for the next attempt.
func (r *renewer) renew(ctx context.Context) (err error) {
	cur, err := r.current()
	if err != nil {
		return err
	}
	if now := r.now(); !now.Before(cur.NotAfter) {
		return fmt.Errorf("%w: certificate %s expired at %s; the controllers will refuse it in the TLS handshake: re-enroll the gateway with a new token",
			ErrCertExpired, ca.Serial(cur), cur.NotAfter.UTC().Format(time.RFC3339))
	}
	p := r.pending
	r.pending = nil
	if p != nil && p.from != ca.Serial(cur) {
		// Another renewal got through since (or the gateway was
		// enrolled again): the key was never certified for this one.
		if err := r.clearPending(p); err != nil {
			r.log.Warn("discard the key of an abandoned renewal", "err", err)
		}
		p = nil
	}
	// A key asked for before may have been certified then, whatever
	// this attempt's answer: a refusal now (a node that does not know
	// the renewal's answer was lost) does not discard it.
	retry := p != nil
	if p == nil {
		key, keyData, err := r.keys.newKey()
		if err != nil {
			return fmt.Errorf("new TLS key: %w", err)
		}
		p = &pendingRenewal{from: ca.Serial(cur), key: key, keyData: keyData}
		csr, err := ca.NewCSR(key, "gateway")
		if err != nil {
			return errors.Join(err, r.keys.discard(keyData))
		}
		p.csr = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}))
		// Kept before it is sent: a restart while it is in flight
		// must not lose the key the controllers may certify.
		if err := r.keepPending(p); err != nil {
			return errors.Join(fmt.Errorf("keep the renewal's key: %w", err), r.keys.discard(keyData))
		}
	}
	key, keyData := p.key, p.keyData
	staged, unknown := false, false
	defer func() {
		switch {
		case err == nil || staged:
		case unknown:
			r.pending = p
		default:
			err = errors.Join(err, r.clearPending(p))
		}
	}()
	// Generous: when a whole network renews on an officer's call, the
	// renewals queue at the controllers, and an answer given up on is a
	// renewal done twice.
	ctx, cancel := context.WithTimeout(ctx, renewTimeout)
	defer cancel()
	resp, err := r.client().Renew(ctx, api.RenewRequest{CSR: p.csr})
	if err != nil {
		// Only a refusal of a key never asked for before says it was
		// not certified (a retry can meet a rate limit, say, after the
		// first attempt was committed).
		var se *api.StatusError
		refused := errors.As(err, &se) && se.Code < 500
		unknown = retry || !refused
		if refused && (se.Code == http.StatusForbidden || se.Code == http.StatusUnauthorized) {
			return fmt.Errorf("%w: %s", ErrRenewRefused, se.Msg)
		}
		return fmt.Errorf("renew certificate %s: %w", ca.Serial(cur), err)
	}
	// Answered: the controllers have made a certificate for the key
	// current. Whatever fails from here on (a full disk, an answer that
	// does not check out), the key is kept, and asking again for it is
	// what they accept.
	unknown = true
	chain, err := ca.ParsePEM([]byte(resp.Certificate))
	if err != nil {
		return fmt.Errorf("renewed certificate: %w", err)
	}
	if !samePublicKey(key.Public(), chain[0].PublicKey) {
		return errors.New("renewed certificate is not for the key this gateway generated")
	}
	rootPEM, err := os.ReadFile(r.cfg.path(fileRoot))
	if err != nil {
		return err
	}
	if err := verifyChain(chain, rootPEM); err != nil {
		return fmt.Errorf("renewed certificate: %w", err)
	}
	// The gateway's kind and name must not change. Its agency may: a
	// merger moves the gateway to the surviving agency, and the
	// controller certifies the agency the registry holds now.
	curID, _ := ca.IdentityOf(cur)
	id, err := ca.IdentityOf(chain[0])
	if err != nil || id.Kind != curID.Kind || id.Name != curID.Name || id.Role != curID.Role || id.Agency == "" {
		return fmt.Errorf("renewed certificate names %+v, want %+v (its agency may differ)", id, curID)
	}
	if id.Agency != curID.Agency {
		r.log.Info("the renewed certificate names another agency: the gateway was moved", "agency", id.Agency, "old_agency", curID.Agency)
	}
	if err := stageRenewal(r.cfg, r.keys, keyData, []byte(resp.Certificate)); err != nil {
		return fmt.Errorf("install renewed certificate: %w", err)
	}
	// From here on the staged files name the new key: finishRenewal, now
	// or at the next start, installs it; it must not be discarded.
	staged = true
	if err := r.clearPending(nil); err != nil {
		r.log.Warn("remove the answered renewal's file", "err", err)
	}
	if err := finishRenewal(r.cfg, r.keys); err != nil {
		return fmt.Errorf("install renewed certificate: %w", err)
	}
	// New connections present the new certificate; the controllers
	// already refuse the old one for new calls.
	r.onRenewed()
	dropStaleKeys(r.keys, r.log) // the old key, in a token
	r.log.Info("certificate renewed", "serial", ca.Serial(chain[0]), "old_serial", ca.Serial(cur),
		"not_after", chain[0].NotAfter.UTC().Format(time.RFC3339), "renew_at", renewAt(chain[0]).UTC().Format(time.RFC3339))
	return nil
}

// stageRenewal writes the new key (or its label) and certificate in full
// beside the live files; finishRenewal then renames them over the live
// ones.
func stageRenewal(cfg Config, keys keyStore, keyData, certPEM []byte) error {
	if err := atomicfile.Write(cfg.path(keys.keyFile()+nextSuffix), keyData, 0o600); err != nil {
		return err
	}
	return atomicfile.Write(cfg.path(fileCertNext), certPEM, 0o644)
}

// finishRenewal completes an installation that stageRenewal began: the
// controllers made the new certificate current as they issued it, so the
// old one is of no more use and the new files must win. It does nothing
// when no renewal is pending; a key staged without its certificate is
// dropped (a token key then has no name left and goes at the next
// dropStaleKeys).
func finishRenewal(cfg Config, keys keyStore) error {
	keyFile := cfg.path(keys.keyFile())
	keyNext, certNext := keyFile+nextSuffix, cfg.path(fileCertNext)
	if _, err := os.Stat(certNext); errors.Is(err, os.ErrNotExist) {
		os.Remove(keyNext) // a renewal that stopped before its certificate was written
		return nil
	}
	if _, err := os.Stat(keyNext); err == nil {
		if _, err := keys.loadPair(certNext, keyNext); err != nil {
			return fmt.Errorf("pending renewal: %w", err)
		}
		if err := os.Rename(keyNext, keyFile); err != nil {
			return err
		}
	}
	if _, err := keys.loadPair(certNext, keyFile); err != nil {
		return fmt.Errorf("pending renewal: %w", err)
	}
	return os.Rename(certNext, cfg.path(fileCert))
}

// reloadingClientCert returns tc with a GetClientCertificate that presents
// the key pair in the state directory as it is at each handshake: a
// renewal takes effect without a restart. While the files are between
// two renames (a key that does not match the certificate) the pair loaded
// before is presented.
func reloadingClientCert(cfg Config, keys keyStore, tc *tls.Config) *tls.Config {
	src := &certFiles{certFile: cfg.path(fileCert), keyFile: cfg.path(keys.keyFile()), load: keys.loadPair}
	if len(tc.Certificates) > 0 {
		c := tc.Certificates[0]
		src.cert = &c
	}
	out := tc.Clone()
	out.Certificates = nil
	out.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return src.get() }
	return out
}

// certFiles loads a key pair again whenever either file was replaced.
type certFiles struct {
	certFile, keyFile string
	load              func(certFile, keyFile string) (tls.Certificate, error)

	mu               sync.Mutex
	cert             *tls.Certificate
	certInfo, keyInf os.FileInfo
}

func (s *certFiles) get() (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ci, cerr := os.Stat(s.certFile)
	ki, kerr := os.Stat(s.keyFile)
	if cerr == nil && kerr == nil && (s.certInfo == nil || s.keyInf == nil || !os.SameFile(ci, s.certInfo) || !os.SameFile(ki, s.keyInf) ||
		!ci.ModTime().Equal(s.certInfo.ModTime()) || !ki.ModTime().Equal(s.keyInf.ModTime())) {
		if c, err := s.load(s.certFile, s.keyFile); err == nil {
			s.cert, s.certInfo, s.keyInf = &c, ci, ki
		} else if s.cert == nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
	}
	if s.cert == nil {
		return nil, fmt.Errorf("client certificate: %w", errors.Join(cerr, kerr))
	}
	return s.cert, nil
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
