package netagent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"os"

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
func Enroll(ctx context.Context, cfg Config, token, rootFile string) (*Identity, error) {
	return enroll(ctx, cfg, token, rootFile, false)
}

// Reenroll enrolls an enrolled gateway again, with a token an officer
// issued for that (govnetctl gateway token --reenroll): new keys, the
// same name and overlay address. Its files are replaced one by one, the
// identity last; the agent must not run meanwhile.
func Reenroll(ctx context.Context, cfg Config, token, rootFile string) (*Identity, error) {
	return enroll(ctx, cfg, token, rootFile, true)
}

func enroll(ctx context.Context, cfg Config, token, rootFile string, again bool) (_ *Identity, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
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
	keys, err := openKeyStore(cfg)
	if err != nil {
		return nil, err
	}
	defer keys.Close()
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	key, keyData, err := keys.newKey()
	if err != nil {
		return nil, fmt.Errorf("TLS key: %w", err)
	}
	defer func() {
		if err != nil { // a key in a token would otherwise stay there, unused
			err = errors.Join(err, keys.discard(keyData))
		}
	}()
	wgKey, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return nil, err
	}
	csr, err := ca.NewCSR(key, "gateway")
	if err != nil {
		return nil, err
	}
	resp, err := api.NewClient(cfg.Controller, tlsCfg).Enroll(ctx, api.EnrollRequest{
		Token:     token,
		CSR:       string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw})),
		PublicKey: wgKey.PublicKey().String(),
		Endpoint:  cfg.Endpoint,
	})
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
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
	id := &Identity{Gateway: resp.Gateway, Agency: resp.Agency, OverlayIP: resp.OverlayIP, OverlayPrefix: resp.OverlayPrefix}
	idJSON, _ := json.MarshalIndent(id, "", "  ")
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{keys.keyFile(), keyData, 0o600},
		{fileWGKey, []byte(wgKey.String() + "\n"), 0o600},
		{fileCert, []byte(resp.Certificate), 0o644},
		{fileRoot, rootPEM, 0o644},
		{fileIdent, idJSON, 0o644}, // last: its presence means "enrolled"
	} {
		if err := atomicfile.Write(cfg.path(f.name), f.data, f.mode); err != nil {
			return nil, err
		}
	}
	// What an earlier, unfinished enrollment may have left: the other
	// kind of key, keys in the token that nothing names.
	for _, f := range []string{fileTLSKey, fileTLSKeyLabel} {
		if f != keys.keyFile() {
			os.Remove(cfg.path(f))
		}
	}
	// ... and a renewal of the identity this one replaces.
	os.Remove(cfg.path(filePendingRenewal))
	_, _ = keys.cleanup() // best effort: Run cleans up again at every start
	return id, nil
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
