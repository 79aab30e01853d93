package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/hsm"
)

// Files under <data_dir>/pki. They hold certificates only: every CA and
// node key stays in the HSM.
const (
	rootFile         = "root.pem"
	intermediateFile = "intermediate.pem"
	nodeFile         = "node.pem"
)

// RootKeyLabel is the HSM label of the root key.
const RootKeyLabel = "govnet-root"

// IntermediateKeyLabel is the HSM label of a node's issuing key.
func IntermediateKeyLabel(node string) string { return "govnet-intermediate-" + node }

// TLSKeyLabel is the HSM label of a node's API server key.
func TLSKeyLabel(node string) string { return "govnet-tls-" + node }

// Person is someone to issue a first credential to at init.
type Person struct {
	Name string
	Role string
}

// InitOptions says what `govnetd init` creates.
type InitOptions struct {
	Config     Config
	APIHosts   []string // DNS names and IPs the API is reached at
	People     []Person // bootstrap credentials, written to PeopleDir
	PeopleDir  string
	ConfigPath string // where to write the config; empty to skip
	Now        time.Time
}

// Init performs the first-start ceremony of a single node: it generates the
// root, intermediate and TLS keys inside the HSM, signs their certificates,
// and issues the bootstrap people's credentials. It refuses to run twice.
func Init(ctx context.Context, o InitOptions) error {
	cfg := o.Config
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	if _, err := os.Stat(cfg.pkiPath(rootFile)); err == nil {
		return fmt.Errorf("%s exists: this node is already initialised", cfg.pkiPath(rootFile))
	}
	if err := os.MkdirAll(filepath.Dir(cfg.pkiPath(rootFile)), 0o755); err != nil {
		return err
	}
	hc, err := cfg.hsmConfig()
	if err != nil {
		return err
	}
	tok, err := hsm.Open(hc)
	if err != nil {
		return err
	}
	defer tok.Close()

	rootKey, err := tok.GenerateKey(RootKeyLabel, elliptic.P384())
	if err != nil {
		return err
	}
	root, err := ca.NewRoot(rootKey, "govnet Root CA", o.Now)
	if err != nil {
		return err
	}
	interKey, err := tok.GenerateKey(IntermediateKeyLabel(cfg.Node), elliptic.P256())
	if err != nil {
		return err
	}
	inter, err := ca.NewIntermediate(root, rootKey, interKey.Public(), "govnet Intermediate CA "+cfg.Node, o.Now)
	if err != nil {
		return err
	}
	authority, err := ca.New(root, inter, interKey, ca.WithClock(func() time.Time { return o.Now }))
	if err != nil {
		return err
	}
	tlsKey, err := tok.GenerateKey(TLSKeyLabel(cfg.Node), elliptic.P256())
	if err != nil {
		return err
	}
	var dns []string
	var ips []net.IP
	for _, h := range append([]string{"localhost"}, o.APIHosts...) {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, h)
		}
	}
	if host, _, err := net.SplitHostPort(cfg.APIAddr); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			ips = append(ips, ip)
		}
	}
	csr, err := ca.NewCSR(tlsKey, cfg.Node)
	if err != nil {
		return err
	}
	nodeChain, err := authority.Issue(ctx, csr, ca.NodeProfile(cfg.Node, dns, ips))
	if err != nil {
		return err
	}
	for name, c := range map[string]*x509.Certificate{rootFile: root, intermediateFile: inter, nodeFile: nodeChain[0]} {
		if err := os.WriteFile(cfg.pkiPath(name), ca.EncodePEM(c), 0o644); err != nil {
			return err
		}
	}
	for _, p := range o.People {
		if err := issuePerson(ctx, authority, p, o.PeopleDir); err != nil {
			return err
		}
	}
	if o.ConfigPath != "" {
		return WriteConfig(o.ConfigPath, cfg)
	}
	return nil
}

// issuePerson creates a key pair on this machine for a bootstrap person and
// writes <dir>/<name>.key (0600) and <dir>/<name>.crt (the chain).
func issuePerson(ctx context.Context, authority *ca.CA, p Person, dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := ca.NewCSR(key, p.Name)
	if err != nil {
		return err
	}
	chain, err := authority.Issue(ctx, csr, ca.PersonProfile(p.Name, p.Role))
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := os.WriteFile(filepath.Join(dir, p.Name+".key"), keyPEM, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, p.Name+".crt"), ca.EncodePEM(chain...), 0o644)
}
