package controller

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/internal/atomicfile"
	"github.com/govnet/govnet/internal/credfile"
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
	// Found (PrepareJoin only): this node founds the cluster with a root
	// the custodians hold; see PrepareJoin.
	Found bool
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
	if err := checkInitInput(o); err != nil {
		return err
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

	rootKey, err := tokenKey(tok, cfg, RootKeyLabel, elliptic.P384())
	if err != nil {
		return err
	}
	root, err := ca.NewRoot(rootKey, "govnet Root CA", o.Now)
	if err != nil {
		return err
	}
	interKey, err := tokenKey(tok, cfg, IntermediateKeyLabel(cfg.Node), elliptic.P256())
	if err != nil {
		return err
	}
	inter, err := ca.NewIntermediate(root, rootKey, interKey.Public(), IntermediateCN(cfg.Node), o.Now)
	if err != nil {
		return err
	}
	authority, err := initCA(cfg, root, inter, interKey, o.Now)
	if err != nil {
		return err
	}
	tlsKey, err := tokenKey(tok, cfg, TLSKeyLabel(cfg.Node), elliptic.P256())
	if err != nil {
		return err
	}
	node, err := issueNodeCert(ctx, authority, cfg, o.APIHosts, tlsKey)
	if err != nil {
		return err
	}
	if err := writeCert(cfg, intermediateFile, inter); err != nil {
		return err
	}
	if err := writeCert(cfg, nodeFile, node); err != nil {
		return err
	}
	if err := found(ctx, cfg, authority, o.People, o.PeopleDir); err != nil {
		return err
	}
	if o.ConfigPath != "" {
		if err := WriteConfig(o.ConfigPath, cfg); err != nil {
			return err
		}
	}
	return writeCert(cfg, rootFile, root) // last: its presence means "initialised"
}

// A crash, a full disk or a wrong argument can stop `govnetd init`,
// `init --join` and `finish-join` half way. Each then runs again to the
// end: its input is checked before anything is made, the keys an earlier
// run made in the token are taken again (tokenKey), every file is
// written whole (atomicfile) and may be written again, and the file that
// says the step is done is written last (root.pem; intermediate.csr for
// `init --join`).

// checkInitInput refuses, before anything is made, what init would
// refuse half way: bootstrap people the registry would not take, and a
// config file that exists with other contents.
func checkInitInput(o InitOptions) error {
	var errs []error
	seen := map[string]bool{}
	for _, p := range o.People {
		if err := checkPersonNameRole(p.Name, p.Role); err != nil {
			errs = append(errs, err)
		} else if seen[p.Name] {
			errs = append(errs, fmt.Errorf("person %q is named twice", p.Name))
		}
		seen[p.Name] = true
	}
	if o.ConfigPath != "" {
		if _, err := configFor(o.ConfigPath, o.Config); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// madeKeysFile records the keys init (or init --join) made in the
// node's token: label -> SHA-256 of the public key (SubjectPublicKeyInfo),
// or keyBeingMade from just before the key is generated until it is
// recorded.
const madeKeysFile = "token-keys.json"

// keyBeingMade is what madeKeysFile records for a label while this
// node's init generates its key: the token and the CKA_ID the key gets,
// chosen before it exists. A key found later under the label is the one
// init made only if it is in that token with that id.
func keyBeingMade(token, id string) string { return "being made in token " + token + " with id " + id }

// tokenKey returns the key labelled label in tok, generating it on curve
// if the token has none. A key the token already holds is taken only if
// an interrupted run of this step made it (madeKeysFile says so): a key
// left by an earlier cluster, or put there by someone else, is refused.
func tokenKey(tok *hsm.Token, cfg Config, label string, curve elliptic.Curve) (crypto.Signer, error) {
	made := map[string]string{}
	b, err := os.ReadFile(cfg.pkiPath(madeKeysFile))
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &made); err != nil {
			return nil, fmt.Errorf("%s: %w", cfg.pkiPath(madeKeysFile), err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	key, err := tok.Signer(label)
	if errors.Is(err, hsm.ErrKeyNotFound) {
		// Recorded before it is made, so that a stop in between leaves
		// a key the next run takes.
		id, err := hsm.NewKeyID()
		if err != nil {
			return nil, err
		}
		made[label] = keyBeingMade(tok.Label(), hex.EncodeToString(id))
		if err := writeJSONFile(cfg.pkiPath(madeKeysFile), made); err != nil {
			return nil, err
		}
		if key, err = tok.GenerateKeyID(label, id, curve); err != nil {
			// The mark stays: the key may exist all the same (a failure
			// after the token made it), and only a key with that random
			// id matches it.
			return nil, err
		}
		if made[label], err = credfile.KeySHA256(key.Public()); err != nil {
			return nil, err
		}
		return key, writeJSONFile(cfg.pkiPath(madeKeysFile), made)
	}
	if err != nil {
		return nil, err
	}
	sum, err := credfile.KeySHA256(key.Public())
	if err != nil {
		return nil, err
	}
	var id string
	if k, ok := key.(*hsm.Key); ok {
		id = k.ID()
	}
	beingMade := made[label] == keyBeingMade(tok.Label(), id)
	if made[label] != sum && !beingMade {
		return nil, fmt.Errorf("token %q already holds a key %q that this node's init did not make (an earlier cluster's, or someone else's): use a fresh token, or destroy the key", tok.Label(), label)
	}
	if pub, ok := key.Public().(*ecdsa.PublicKey); !ok || pub.Curve != curve {
		return nil, fmt.Errorf("token %q: key %q is not on %s", tok.Label(), label, curve.Params().Name)
	}
	if beingMade {
		made[label] = sum
		return key, writeJSONFile(cfg.pkiPath(madeKeysFile), made)
	}
	return key, nil
}

// found makes this node the founder of a new cluster: it issues the
// bootstrap people's credentials and marks the node to bootstrap raft on
// its first start.
func found(ctx context.Context, cfg Config, authority *ca.CA, ps []Person, peopleDir string) error {
	var people []bootstrapPerson
	for _, p := range ps {
		cert, err := issuePerson(ctx, authority, p, peopleDir)
		if err != nil {
			return err
		}
		rec := certRecordOf(cert)
		rec.Requester = "node:" + cfg.Node
		people = append(people, bootstrapPerson{Name: p.Name, Role: p.Role, Serial: rec.Serial, Cert: &rec})
	}
	if err := writeJSONFile(cfg.pkiPath(bootstrapPeopleFile), people); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(cfg.DataDir, bootstrapFile), []byte("this node founds a new cluster on its first start\n"), 0o600)
}

// Founding says whether the node at cfg is initialised to found a new
// cluster on its first start.
func Founding(cfg Config) bool {
	_, err := os.Stat(filepath.Join(cfg.DataDir, bootstrapFile))
	return err == nil
}

// bootstrapPeopleFile lists the people Init issued credentials to; the
// first leader registers them in the replicated registry.
const bootstrapPeopleFile = "bootstrap-people.json"

type bootstrapPerson struct {
	Name   string `json:"name"`
	Role   string `json:"role"`
	Serial string `json:"serial"`
	// Cert is the inventory record of the person's certificate, which
	// the first leader records with the person.
	Cert *api.Certificate `json:"cert,omitempty"`
}

func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o644)
}

// initCA is the authority `govnetd init` and `finish-join` issue the
// node's and the first people's certificates with: the configured
// lifetimes and, when the address is known, revocation URLs, as the
// running node's.
func initCA(cfg Config, root, inter *x509.Certificate, key crypto.Signer, now time.Time) (*ca.CA, error) {
	opts := []ca.Option{ca.WithClock(func() time.Time { return now }), ca.WithProfiles(cfg.profiles())}
	if listen, err := cfg.httpAddr(); err == nil {
		if urls, ok := cfg.revocationURLs(listen); ok {
			opts = append(opts, ca.WithRevocationURLs(urls))
		}
	}
	return ca.New(root, inter, key, opts...)
}

func issueNodeCert(ctx context.Context, authority *ca.CA, cfg Config, hosts []string, tlsKey crypto.Signer) (*x509.Certificate, error) {
	var dns []string
	var ips []net.IP
	for _, h := range append([]string{"localhost"}, hosts...) {
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
		return nil, err
	}
	chain, err := authority.Issue(ctx, csr, ca.NodeProfile(cfg.Node, dns, ips))
	if err != nil {
		return nil, err
	}
	return chain[0], nil
}

func writeCert(cfg Config, name string, c *x509.Certificate) error {
	return atomicfile.Write(cfg.pkiPath(name), ca.EncodePEM(c), 0o644)
}

// Adding a node to a cluster takes three steps, so that no key ever
// leaves its HSM:
//
//  1. PrepareJoin, on the new node: its intermediate and TLS keys are
//     generated in ITS token, and a CSR for the intermediate is written.
//  2. SignIntermediate, where the root key is: the root signs the CSR
//     (today with the root key in the first node's token; the M-of-N
//     ceremony replaces this one step).
//  3. FinishJoin, on the new node: it checks the intermediate against the
//     root and its own key, and issues its TLS certificate.
//
// Then the node starts (`govnetd run`) and is added as a voter, by
// `govnetctl cluster join` or by itself through the join config key.

// joinFile remembers, between PrepareJoin and FinishJoin, what the node
// certificate must name.
const (
	joinFile = "join.json"
	csrFile  = "intermediate.csr"
)

type joinState struct {
	APIHosts []string `json:"api_hosts"`
	// Found: this node founds the cluster once its intermediate is signed
	// (the root is held by the custodians' ceremony, not by this node),
	// issuing People's credentials into PeopleDir.
	Found     bool     `json:"found,omitempty"`
	People    []Person `json:"people,omitempty"`
	PeopleDir string   `json:"people_dir,omitempty"`
}

// IntermediateCN is the subject common name of a node's intermediate.
func IntermediateCN(node string) string { return "govnet Intermediate CA " + node }

// PrepareJoin is step 1: it returns the intermediate's CSR (PEM), also
// written to <data_dir>/pki/intermediate.csr. With o.Found the node will
// found a new cluster instead of joining one: the root is held by the
// custodians (`govnetd ceremony`), who sign the CSR with M shares, and
// FinishJoin then also issues o.People's credentials.
func PrepareJoin(ctx context.Context, o InitOptions) ([]byte, error) {
	cfg := o.Config
	if !o.Found && len(o.People) > 0 {
		return nil, fmt.Errorf("bootstrap people are created by the founding node only")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if _, err := os.Stat(cfg.pkiPath(rootFile)); err == nil {
		return nil, fmt.Errorf("%s exists: this node is already initialised", cfg.pkiPath(rootFile))
	}
	if _, err := os.Stat(cfg.pkiPath(csrFile)); err == nil {
		return nil, fmt.Errorf("%s exists: finish the join with the signed intermediate", cfg.pkiPath(csrFile))
	}
	if err := checkInitInput(o); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(cfg.pkiPath(rootFile)), 0o755); err != nil {
		return nil, err
	}
	hc, err := cfg.hsmConfig()
	if err != nil {
		return nil, err
	}
	tok, err := hsm.Open(hc)
	if err != nil {
		return nil, err
	}
	defer tok.Close()
	interKey, err := tokenKey(tok, cfg, IntermediateKeyLabel(cfg.Node), elliptic.P256())
	if err != nil {
		return nil, err
	}
	if _, err := tokenKey(tok, cfg, TLSKeyLabel(cfg.Node), elliptic.P256()); err != nil {
		return nil, err
	}
	csr, err := ca.NewCSR(interKey, IntermediateCN(cfg.Node))
	if err != nil {
		return nil, err
	}
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw})
	js := joinState{APIHosts: o.APIHosts}
	if o.Found {
		js.Found, js.People, js.PeopleDir = true, o.People, o.PeopleDir
	}
	if o.ConfigPath != "" {
		if err := WriteConfig(o.ConfigPath, cfg); err != nil {
			return nil, err
		}
	}
	if err := writeJSONFile(cfg.pkiPath(joinFile), js); err != nil {
		return nil, err
	}
	// Last: its presence means "step 1 done".
	if err := atomicfile.Write(cfg.pkiPath(csrFile), csrPEM, 0o644); err != nil {
		return nil, err
	}
	return csrPEM, nil
}

// SignIntermediate is step 2 as the holder of the root key in cfg's token
// does it: it returns the PEM bundle intermediate, root.
func SignIntermediate(ctx context.Context, cfg Config, csrPEM []byte, now time.Time) ([]byte, error) {
	root, err := readCert(cfg.pkiPath(rootFile))
	if err != nil {
		return nil, err
	}
	hc, err := cfg.hsmConfig()
	if err != nil {
		return nil, err
	}
	tok, err := hsm.Open(hc)
	if err != nil {
		return nil, err
	}
	defer tok.Close()
	rootKey, err := tok.Signer(RootKeyLabel)
	if err != nil {
		return nil, fmt.Errorf("the root key is not in token %q: %w", cfg.HSM.TokenLabel, err)
	}
	inter, err := SignIntermediateCSR(root, rootKey, csrPEM, now)
	if err != nil {
		return nil, err
	}
	return ca.EncodePEM(inter, root), nil
}

// SignIntermediateCSR is the one function that uses the root key to admit
// a node: whatever holds the root (a token, or the custodians' M-of-N
// ceremony) passes its signer here. The CSR must name a node's
// intermediate (IntermediateCN).
func SignIntermediateCSR(root *x509.Certificate, rootKey crypto.Signer, csrPEM []byte, now time.Time) (*x509.Certificate, error) {
	csr, err := ca.ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	node, ok := strings.CutPrefix(csr.Subject.CommonName, IntermediateCN(""))
	if !ok || !validID(node) {
		return nil, fmt.Errorf("%w: subject %q does not name a node's intermediate (%q)", ca.ErrBadCSR, csr.Subject.CommonName, IntermediateCN("<node>"))
	}
	return ca.NewIntermediate(root, rootKey, csr.PublicKey, IntermediateCN(node), now)
}

// FinishJoin is step 3: bundle is SignIntermediate's output.
func FinishJoin(ctx context.Context, cfg Config, bundle []byte, now time.Time) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if _, err := os.Stat(cfg.pkiPath(rootFile)); err == nil {
		return fmt.Errorf("%s exists: this node is already initialised", cfg.pkiPath(rootFile))
	}
	var js joinState
	b, err := os.ReadFile(cfg.pkiPath(joinFile))
	if err != nil {
		return fmt.Errorf("%w (run `govnetd init --join` first)", err)
	}
	if err := json.Unmarshal(b, &js); err != nil {
		return fmt.Errorf("%s: %w", cfg.pkiPath(joinFile), err)
	}
	certs, err := ca.ParsePEM(bundle)
	if err != nil {
		return err
	}
	var root, inter *x509.Certificate
	for _, c := range certs {
		if c.IsCA && bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil {
			root = c
		} else if c.Subject.CommonName == IntermediateCN(cfg.Node) {
			inter = c
		}
	}
	if root == nil || inter == nil {
		return fmt.Errorf("the bundle must hold the root and the intermediate %q", IntermediateCN(cfg.Node))
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
	interKey, err := tok.Signer(IntermediateKeyLabel(cfg.Node))
	if err != nil {
		return err
	}
	tlsKey, err := tok.Signer(TLSKeyLabel(cfg.Node))
	if err != nil {
		return err
	}
	// ca.New checks that the root signed the intermediate and that the
	// intermediate is for this token's key.
	authority, err := initCA(cfg, root, inter, interKey, now)
	if err != nil {
		return err
	}
	node, err := issueNodeCert(ctx, authority, cfg, js.APIHosts, tlsKey)
	if err != nil {
		return err
	}
	if err := writeCert(cfg, intermediateFile, inter); err != nil {
		return err
	}
	if err := writeCert(cfg, nodeFile, node); err != nil {
		return err
	}
	if js.Found {
		if err := found(ctx, cfg, authority, js.People, js.PeopleDir); err != nil {
			return err
		}
	}
	return writeCert(cfg, rootFile, root) // last: its presence means "initialised"
}

// issuePerson creates a key pair on this machine for a bootstrap person and
// writes <dir>/<name>.key (0600) and <dir>/<name>.crt (the chain).
func issuePerson(ctx context.Context, authority *ca.CA, p Person, dir string) (*x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := ca.NewCSR(key, p.Name)
	if err != nil {
		return nil, err
	}
	chain, err := authority.Issue(ctx, csr, ca.PersonProfile(p.Name, p.Role))
	if err != nil {
		return nil, err
	}
	keyPEM, err := credfile.EncodeKey(key)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, p.Name+".key"), keyPEM, 0o600); err != nil {
		return nil, err
	}
	return chain[0], atomicfile.Write(filepath.Join(dir, p.Name+".crt"), ca.EncodePEM(chain...), 0o644)
}
