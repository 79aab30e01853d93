package netagent

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/internal/atomicfile"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Identity is what enrollment taught the gateway about itself.
type Identity struct {
	Gateway       string       `json:"gateway"`
	Agency        string       `json:"agency"`
	OverlayIP     netip.Addr   `json:"overlay_ip"`
	OverlayPrefix netip.Prefix `json:"overlay_prefix"`
}

// Enroll generates the gateway's keys on this machine, sends a CSR and the
// WireGuard public key with the one-time token, and stores the answer in
// the state directory. The private keys never leave the machine; with an
// hsm: section in cfg the TLS key is generated in that token and never
// leaves it (see keystore.go). rootFile is the govnet root certificate,
// obtained out of band, that the controller must prove it chains to.
func Enroll(ctx context.Context, cfg Config, token, rootFile string, opts ...EnrollOption) (*Identity, error) {
	return enroll(ctx, cfg, token, rootFile, false, opts)
}

// EnrollOption adjusts an enrollment.
type EnrollOption func(*enrollOptions)

type enrollOptions struct{ configFile string }

// SaveConfig has the enrollment write cfg to path once its checks pass,
// before its request goes out: a gateway the controllers enrolled always
// has its config, and a refused enrollment leaves the file as it was.
func SaveConfig(path string) EnrollOption {
	return func(o *enrollOptions) { o.configFile = path }
}

func (o enrollOptions) saveConfig(cfg Config) error {
	if o.configFile == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(o.configFile), 0o700); err != nil {
		return err
	}
	return cfg.Save(o.configFile)
}

// Reenroll enrolls an enrolled gateway again, with a token an officer
// issued for that (govnetctl gateway token --reenroll): new keys, the
// same name and overlay address. The agent must not run meanwhile.
func Reenroll(ctx context.Context, cfg Config, token, rootFile string, opts ...EnrollOption) (*Identity, error) {
	return enroll(ctx, cfg, token, rootFile, true, opts)
}

// An enrollment survives a crash and a lost answer. Its keys are written
// to fileEnrollPending before the request goes out, and the answer is
// added to it before the first live file is replaced; the live files are
// then written one by one, the identity last, and fileEnrollPending
// removed. So:
//   - a crash while the files are replaced: the next start of the agent,
//     or the same enroll command again, finishes the installation
//     (finishEnrollment);
//   - an answer lost after the controllers committed (a connection, a
//     leader or the gateway's power lost): the same command with the
//     same token sends the same keys again, and the controllers, who
//     know those keys as the gateway's, answer with a new certificate
//     for them;
//   - a refusal: the keys stay kept until an enrollment with another
//     token replaces them (a refusal may have raced the commit of an
//     earlier attempt with the same keys).
const fileEnrollPending = "enroll.pending"

// enrollFile is what fileEnrollPending holds (0600).
type enrollFile struct {
	TokenSHA256 string `json:"token_sha256"` // the token the keys were made for
	Reenroll    bool   `json:"reenroll"`
	Key         string `json:"key"` // the TLS key file's contents: PEM, or a token key's label
	WGKey       string `json:"wg_key"`
	// The controllers' answer, once it came.
	Certificate string    `json:"certificate,omitempty"`
	Root        string    `json:"root,omitempty"`
	Identity    *Identity `json:"identity,omitempty"`
}

func readEnrollFile(cfg Config) (*enrollFile, error) {
	data, err := os.ReadFile(cfg.path(fileEnrollPending))
	if err != nil {
		return nil, err
	}
	p := new(enrollFile)
	if err := json.Unmarshal(data, p); err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.path(fileEnrollPending), err)
	}
	return p, nil
}

func writeEnrollFile(cfg Config, p *enrollFile) error {
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return atomicfile.Write(cfg.path(fileEnrollPending), data, 0o600)
}

func tokenSHA256(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

func enroll(ctx context.Context, cfg Config, token, rootFile string, again bool, opts []EnrollOption) (*Identity, error) {
	var o enrollOptions
	for _, opt := range opts {
		opt(&o)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	// Checked here, not in Validate: only an enrollment sends it, and an
	// agent enrolled with a name before names were refused still runs.
	if cfg.Endpoint != "" {
		if err := api.CheckEndpoint(cfg.Endpoint); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
	}
	keys, err := openKeyStore(cfg)
	if err != nil {
		return nil, err
	}
	defer keys.Close()
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	unlock, err := lockState(cfg)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// An enrollment answered but not installed is finished first: the
	// controllers made its keys the gateway's.
	if id, err := finishEnrollment(cfg, keys); err != nil || id != nil {
		if err == nil {
			err = o.saveConfig(cfg)
		}
		return id, err
	}
	_, statErr := os.Stat(cfg.path(fileIdent))
	switch {
	case !again && statErr == nil:
		return nil, fmt.Errorf("%s exists: this gateway is already enrolled (to enroll it again, ask an officer for a re-enrollment token and use --reenroll)", cfg.path(fileIdent))
	case again && statErr != nil:
		return nil, fmt.Errorf("%s: this gateway is not enrolled yet: enroll it without --reenroll", cfg.path(fileIdent))
	}
	rootPEM, err := os.ReadFile(rootFile)
	if err != nil {
		return nil, fmt.Errorf("root certificate: %w", err)
	}
	tlsCfg, err := api.TLSConfig(rootFile, "", "")
	if err != nil {
		return nil, err
	}
	if err := o.saveConfig(cfg); err != nil {
		return nil, err
	}
	p, key, wgKey, err := enrollKeys(cfg, keys, token, again)
	if err != nil {
		return nil, err
	}
	req, err := enrollRequest(cfg, token, key, wgKey)
	if err != nil {
		return nil, err
	}
	resp, err := api.NewClient(cfg.Controller, tlsCfg).Enroll(ctx, req)
	var refused *api.StatusError
	switch {
	case errors.As(err, &refused) && refused.Code < 500:
		return nil, fmt.Errorf("enroll: %w", err)
	case err != nil:
		return nil, fmt.Errorf("enroll: %w (the keys made for this enrollment stay in %s: if the controllers enrolled them before the answer was lost, the same command with the same token gets their certificate)", err, cfg.path(fileEnrollPending))
	}
	// Check what came back before keeping it.
	chain, err := ca.ParsePEM([]byte(resp.Certificate))
	if err != nil {
		return nil, fmt.Errorf("enroll: certificate: %w", err)
	}
	if !samePublicKey(key.Public(), chain[0].PublicKey) {
		return nil, fmt.Errorf("enroll: the certificate is not for this gateway's key")
	}
	if err := verifyChain(chain, rootPEM); err != nil {
		return nil, err
	}
	if err := checkEnrollAnswer(resp, chain[0]); err != nil {
		return nil, err
	}
	p.Certificate, p.Root = resp.Certificate, string(rootPEM)
	p.Identity = &Identity{Gateway: resp.Gateway, Agency: resp.Agency, OverlayIP: resp.OverlayIP, OverlayPrefix: resp.OverlayPrefix}
	if err := writeEnrollFile(cfg, p); err != nil {
		return nil, err
	}
	return p.Identity, installEnrollment(cfg, keys, p)
}

// checkEnrollAnswer checks that an enrollment answer agrees with the
// certificate it carries and gives a usable overlay address, before any
// of it is kept: a gateway that kept a wrong name or address would refuse
// every view, or fail to bring its interface up, until enrolled again.
func checkEnrollAnswer(resp *api.EnrollResponse, cert *x509.Certificate) error {
	id, err := ca.IdentityOf(cert)
	if err != nil {
		return fmt.Errorf("enroll: certificate: %w", err)
	}
	switch {
	case id.Kind != ca.KindGateway || id.Name != resp.Gateway || id.Agency != resp.Agency:
		return fmt.Errorf("enroll: the answer names gateway %q of agency %q, its certificate %s %q of agency %q", resp.Gateway, resp.Agency, id.Kind, id.Name, id.Agency)
	case !resp.OverlayPrefix.IsValid() || !resp.OverlayIP.IsValid() || !resp.OverlayPrefix.Contains(resp.OverlayIP):
		return fmt.Errorf("enroll: overlay address %s is not inside the overlay network %s", resp.OverlayIP, resp.OverlayPrefix)
	}
	return nil
}

// enrollRequest is what an enrollment with these keys sends.
func enrollRequest(cfg Config, token string, key crypto.Signer, wgKey wgtypes.Key) (api.EnrollRequest, error) {
	csr, err := ca.NewCSR(key, "gateway")
	if err != nil {
		return api.EnrollRequest{}, err
	}
	return api.EnrollRequest{
		Token:     token,
		CSR:       string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw})),
		PublicKey: wgKey.PublicKey().String(),
		Endpoint:  cfg.Endpoint,
	}, nil
}

// enrollKeys returns the keys for an enrollment with token: those an
// earlier attempt with the same token kept, or new ones, kept in
// fileEnrollPending before they are sent anywhere. Keys kept for another
// token are thrown away.
func enrollKeys(cfg Config, keys keyStore, token string, again bool) (*enrollFile, crypto.Signer, wgtypes.Key, error) {
	sum := tokenSHA256(token)
	p, err := readEnrollFile(cfg)
	switch {
	case err == nil && p.TokenSHA256 == sum && p.Reenroll == again:
		key, kerr := keys.loadKey([]byte(p.Key))
		wgKey, werr := wgtypes.ParseKey(p.WGKey)
		if err := errors.Join(kerr, werr); err != nil {
			return nil, nil, wgtypes.Key{}, fmt.Errorf("%s: the keys kept for this token: %w (remove the file to start afresh with a new token)", cfg.path(fileEnrollPending), err)
		}
		return p, key, wgKey, nil
	case err == nil:
		if err := keys.discard([]byte(p.Key)); err != nil {
			return nil, nil, wgtypes.Key{}, fmt.Errorf("%s: the key kept for another token: %w", cfg.path(fileEnrollPending), err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, nil, wgtypes.Key{}, err
	}
	key, keyData, err := keys.newKey()
	if err != nil {
		return nil, nil, wgtypes.Key{}, fmt.Errorf("TLS key: %w", err)
	}
	wgKey, err := wgtypes.GeneratePrivateKey()
	if err == nil {
		p = &enrollFile{TokenSHA256: sum, Reenroll: again, Key: string(keyData), WGKey: wgKey.String()}
		err = writeEnrollFile(cfg, p)
	}
	if err != nil { // a key in a token would otherwise stay there, unnamed
		return nil, nil, wgtypes.Key{}, errors.Join(err, keys.discard(keyData))
	}
	return p, key, wgKey, nil
}

// finishEnrollment installs an enrollment that was answered but whose
// files a crash left half written, and returns its identity; nil when
// there is none.
func finishEnrollment(cfg Config, keys keyStore) (*Identity, error) {
	p, err := readEnrollFile(cfg)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, nil
	case err != nil:
		return nil, err
	case p.Identity == nil:
		return nil, nil // asked, never answered: only enroll may ask again
	}
	return p.Identity, installEnrollment(cfg, keys, p)
}

// installEnrollment writes the answered enrollment p over the live files,
// the identity last, then drops what belonged to the identity it
// replaces and fileEnrollPending. Writing the same files again is
// harmless, so a crash anywhere in it is finished by doing it again.
func installEnrollment(cfg Config, keys keyStore, p *enrollFile) error {
	idJSON, _ := json.MarshalIndent(p.Identity, "", "  ")
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{keys.keyFile(), []byte(p.Key), 0o600},
		{fileWGKey, []byte(p.WGKey + "\n"), 0o600},
		{fileCert, []byte(p.Certificate), 0o644},
		{fileRoot, []byte(p.Root), 0o644},
		{fileIdent, idJSON, 0o644}, // last: its presence means "enrolled"
	} {
		if err := atomicfile.Write(cfg.path(f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("enrollment answered, but %w: the next start of the agent finishes it", err)
		}
	}
	// What the identity replaced may have left: the other kind of key, a
	// renewal staged or unanswered (its certificate was revoked as
	// superseded), keys in the token that nothing names.
	for _, f := range []string{fileTLSKey, fileTLSKeyLabel} {
		if f != keys.keyFile() {
			os.Remove(cfg.path(f))
		}
	}
	for _, f := range []string{filePendingRenewal, keys.keyFile() + nextSuffix, fileCertNext, fileEnrollPending} {
		if err := os.Remove(cfg.path(f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	_, _ = keys.cleanup() // best effort: Run cleans up again at every start
	return nil
}

func verifyChain(chain []*x509.Certificate, rootPEM []byte) error {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return fmt.Errorf("enroll: certificate does not verify against the root: %w", err)
	}
	return nil
}

// loadIdentity reads what Enroll stored; the TLS key comes from keys.
func loadIdentity(cfg Config, keys keyStore) (*Identity, wgtypes.Key, *tls.Config, error) {
	data, err := os.ReadFile(cfg.path(fileIdent))
	if err != nil {
		return nil, wgtypes.Key{}, nil, fmt.Errorf("%w (run `govnet-agent enroll` first)", err)
	}
	id := new(Identity)
	if err := json.Unmarshal(data, id); err != nil {
		return nil, wgtypes.Key{}, nil, fmt.Errorf("%s: %w", cfg.path(fileIdent), err)
	}
	wgData, err := os.ReadFile(cfg.path(fileWGKey))
	if err != nil {
		return nil, wgtypes.Key{}, nil, err
	}
	wgKey, err := wgtypes.ParseKey(string(trimSpace(wgData)))
	if err != nil {
		return nil, wgtypes.Key{}, nil, fmt.Errorf("%s: %w", cfg.path(fileWGKey), err)
	}
	tlsCfg, err := api.TLSConfig(cfg.path(fileRoot), "", "")
	if err != nil {
		return nil, wgtypes.Key{}, nil, err
	}
	cert, err := keys.loadPair(cfg.path(fileCert), cfg.path(keys.keyFile()))
	if err != nil {
		return nil, wgtypes.Key{}, nil, fmt.Errorf("client certificate: %w", keyKindError(cfg, keys, err))
	}
	tlsCfg.Certificates = []tls.Certificate{cert}
	return id, wgKey, tlsCfg, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
