package controller

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/internal/atomicfile"
	"github.com/govnet/govnet/internal/yamlfile"
)

// Config is govnetd's configuration: one typed struct, loaded from YAML,
// every key overridable by a flag in cmd/govnetd.
type Config struct {
	Node     string `yaml:"node"`      // this node's name, unique in the cluster
	DataDir  string `yaml:"data_dir"`  // raft log, snapshots, certificates
	RaftAddr string `yaml:"raft_addr"` // host:port for raft traffic
	APIAddr  string `yaml:"api_addr"`  // host:port the API listens on
	// HTTPAddr is the plain-HTTP listener that serves CRLs, OCSP and
	// health to anyone, without a client certificate. Empty: the API's
	// host and the port after the API's (the API's port 0: any port).
	HTTPAddr string `yaml:"http_addr,omitempty"`
	// RevocationURL is the base every certificate this node issues points
	// relying parties at: <base>/crl/<issuer id>.crl and
	// <base>/ocsp/<issuer id>. Every node serves every issuer's CRL and
	// answers (or routes) OCSP for every issuer, so a name that resolves
	// to any controller fits; its path, if any, is served too
	// (underRevocationPath). Empty: http://<http_addr>.
	RevocationURL string `yaml:"revocation_url,omitempty"`
	// Profiles sets certificate lifetimes per profile (gateway, person,
	// node); unset ones take the defaults (24 h, 90 days, one year).
	Profiles      ca.Profiles `yaml:"profiles,omitempty"`
	OverlayPrefix string      `yaml:"overlay_prefix"` // the overlay address plan, e.g. 100.64.0.0/16
	HSM           HSMConfig   `yaml:"hsm"`
	Raft          RaftConfig  `yaml:"raft"`
	// Join lists API addresses (host:port) of running members. A node
	// that is not part of a cluster yet asks them, with its node
	// certificate, to add it as a voter. Empty: an operator adds it with
	// `govnetctl cluster join`.
	Join []string `yaml:"join,omitempty"`
	// FourEyes refuses the one-step token and policy endpoints: tokens,
	// publications and revocations then go through a request that an
	// officer other than the requester approves. Off by default only so
	// that existing scripts keep working; production sets it.
	FourEyes bool `yaml:"four_eyes"`
	// RateLimit bounds each client's requests per second on this node
	// (a burst of twice as many is allowed); 0 means the default, 100.
	RateLimit float64 `yaml:"rate_limit,omitempty"`
	// MaxConnsPerIP caps the connections one client address holds open
	// at once on each of the node's listeners (API, CRL/OCSP, raft);
	// those over it are closed at once. 0 means the default, 256.
	MaxConnsPerIP int `yaml:"max_conns_per_ip,omitempty"`
	// AuditCheckpointEvery is how often the leader signs the audit
	// chain's head and records the checkpoint in the replicated state
	// (when the chain has grown since the last one); 0 means one hour.
	AuditCheckpointEvery time.Duration `yaml:"audit_checkpoint_every,omitempty"`
	// ReportFlush is how often the node commits the report refreshes it
	// answered (controller/refresh.go): how late "last reported" can
	// show on the other nodes, so keep it well under the coverage
	// window. 0 means 30 s.
	ReportFlush time.Duration `yaml:"report_flush,omitempty"`
	// CertArchiveAfter is how long after its expiry a certificate leaves
	// the in-memory inventory for the archive (controller/certarchive.go),
	// where `cert show`, OCSP and `cert list --archived` still find it.
	// 0 means 24 h.
	CertArchiveAfter time.Duration `yaml:"cert_archive_after,omitempty"`
}

// RaftConfig tunes failure detection. Followers start an election after
// ElectionTimeout..2×ElectionTimeout without hearing from the leader; a
// leader steps down after LeaderLeaseTimeout without a quorum of contact.
//
// The defaults (500 ms / 500 ms / 500 ms) suit controllers on one LAN or
// metro network with round trips of a few milliseconds: a dead leader is
// replaced in about 0.6–1.2 s, where raft's own defaults (1 s / 1 s /
// 500 ms) take 1.2–2.6 s. The lease only decides how soon a leader cut
// off from the others steps down (it can commit nothing meanwhile); at
// 250 ms a leader whose node was busy for a quarter of a second stepped
// down needlessly. Going lower makes a busy or paused node (GC, fsync
// stalls, a loaded VM) trigger needless elections; across a WAN raise
// them to at least 10× the round trip. Tests use 150–250 ms.
type RaftConfig struct {
	HeartbeatTimeout   time.Duration `yaml:"heartbeat_timeout"`
	ElectionTimeout    time.Duration `yaml:"election_timeout"`
	LeaderLeaseTimeout time.Duration `yaml:"leader_lease_timeout"`
}

// DefaultRaftConfig returns the tuned timeouts described on RaftConfig.
func DefaultRaftConfig() RaftConfig {
	return RaftConfig{HeartbeatTimeout: 500 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond, LeaderLeaseTimeout: 500 * time.Millisecond}
}

// withDefaults fills unset timeouts.
func (r RaftConfig) withDefaults() RaftConfig {
	d := DefaultRaftConfig()
	if r.HeartbeatTimeout <= 0 {
		r.HeartbeatTimeout = d.HeartbeatTimeout
	}
	if r.ElectionTimeout <= 0 {
		r.ElectionTimeout = d.ElectionTimeout
	}
	if r.LeaderLeaseTimeout <= 0 {
		r.LeaderLeaseTimeout = min(d.LeaderLeaseTimeout, r.HeartbeatTimeout)
	}
	return r
}

// HSMConfig selects the PKCS#11 token holding this node's CA keys. The PIN
// comes from a file or an environment variable, never from a flag.
type HSMConfig struct {
	Module     string `yaml:"module"`
	TokenLabel string `yaml:"token_label"`
	PINFile    string `yaml:"pin_file"`
	PINEnv     string `yaml:"pin_env"`
}

// DefaultConfig returns the defaults `govnetd init` writes.
func DefaultConfig() Config {
	return Config{
		Node:          "ctl1",
		DataDir:       "/var/lib/govnet",
		RaftAddr:      "127.0.0.1:7000",
		APIAddr:       "127.0.0.1:7443",
		OverlayPrefix: "100.64.0.0/16",
		HSM: HSMConfig{
			Module:     hsm.DefaultModules[0],
			TokenLabel: "govnet-ca",
			PINEnv:     "GOVNET_HSM_PIN",
		},
		Raft: DefaultRaftConfig(),
	}
}

// LoadConfig reads a YAML config file over the defaults; unknown keys are errors.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	err := cfg.LoadFile(path)
	return cfg, err
}

// LoadFile reads a YAML config file over the values already in c.
func (c *Config) LoadFile(path string) error { return yamlfile.Decode(path, c) }

// WriteConfig writes cfg as YAML, whole (atomicfile), refusing to
// overwrite a file that holds anything else.
func WriteConfig(path string, cfg Config) error {
	data, err := configFor(path, cfg)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, data, 0o640); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// configFor returns what WriteConfig writes to path for cfg, or why it
// may not: path must not exist, or hold this very config (the same
// command run again after it stopped half way).
func configFor(path string, cfg Config) ([]byte, error) {
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	old, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist) || err == nil && bytes.Equal(old, data):
		return data, nil
	case err != nil:
		return nil, fmt.Errorf("write config: %w", err)
	}
	return nil, fmt.Errorf("write config: %s exists and holds another config: remove it, or choose another path", path)
}

// Validate checks every key and says which one is wrong.
func (c Config) Validate() error {
	var errs []error
	if c.ReportFlush < 0 {
		errs = append(errs, fmt.Errorf("report_flush %s: want a positive duration, or 0 for %s", c.ReportFlush, reportFlush))
	}
	if c.MaxConnsPerIP < 0 {
		errs = append(errs, fmt.Errorf("max_conns_per_ip %d: want a positive number, or 0 for %d", c.MaxConnsPerIP, defaultMaxConnsPerIP))
	}
	if c.CertArchiveAfter < 0 {
		errs = append(errs, fmt.Errorf("cert_archive_after %s: want a positive duration, or 0 for %s", c.CertArchiveAfter, defaultCertArchiveAfter))
	}
	if !validID(c.Node) {
		errs = append(errs, fmt.Errorf("node %q: use 1-63 lowercase letters, digits and '-'", c.Node))
	}
	if c.DataDir == "" || !filepath.IsAbs(c.DataDir) {
		errs = append(errs, fmt.Errorf("data_dir %q: must be an absolute path", c.DataDir))
	}
	for key, addr := range map[string]string{"raft_addr": c.RaftAddr, "api_addr": c.APIAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %v", key, addr, err))
		}
	}
	if p, err := netip.ParsePrefix(c.OverlayPrefix); err != nil || !p.Addr().Is4() || p.Bits() > 30 {
		errs = append(errs, fmt.Errorf("overlay_prefix %q: want an IPv4 prefix of /30 or wider", c.OverlayPrefix))
	}
	if c.HSM.Module == "" || c.HSM.TokenLabel == "" {
		errs = append(errs, errors.New("hsm: module and token_label are required"))
	}
	if c.HSM.PINFile == "" && c.HSM.PINEnv == "" {
		errs = append(errs, errors.New("hsm: set pin_file or pin_env"))
	}
	if r := c.Raft.withDefaults(); r.HeartbeatTimeout < 10*time.Millisecond || r.ElectionTimeout < r.HeartbeatTimeout || r.LeaderLeaseTimeout > r.HeartbeatTimeout {
		errs = append(errs, fmt.Errorf("raft: want 10ms <= heartbeat_timeout (%s) <= election_timeout (%s) and leader_lease_timeout (%s) <= heartbeat_timeout",
			r.HeartbeatTimeout, r.ElectionTimeout, r.LeaderLeaseTimeout))
	}
	if _, err := c.httpAddr(); err != nil {
		errs = append(errs, err)
	}
	if c.RevocationURL != "" {
		u := ca.RevocationURLs{CRLBase: c.RevocationURL + "/crl", OCSPBase: c.RevocationURL + "/ocsp"}
		if err := u.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("revocation_url %q: want http://host[:port][/path]", c.RevocationURL))
		}
	}
	if err := c.profiles().Validate(); err != nil {
		errs = append(errs, err)
	}
	for _, j := range c.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			errs = append(errs, fmt.Errorf("join %q: want host:port of a member's API", j))
		}
	}
	return errors.Join(errs...)
}

// hsmConfig reads the PIN and returns the hsm package's config.
func (c Config) hsmConfig() (hsm.Config, error) {
	pin, err := hsm.ReadPIN(c.HSM.PINFile, c.HSM.PINEnv)
	if err != nil {
		return hsm.Config{}, err
	}
	return hsm.Config{Module: c.HSM.Module, TokenLabel: c.HSM.TokenLabel, PIN: pin}, nil
}

func (c Config) pkiPath(name string) string { return filepath.Join(c.DataDir, "pki", name) }

// httpAddr is the address of the plain-HTTP listener (see HTTPAddr).
func (c Config) httpAddr() (string, error) {
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return "", fmt.Errorf("http_addr %q: %v", c.HTTPAddr, err)
		}
		return c.HTTPAddr, nil
	}
	host, port, err := net.SplitHostPort(c.APIAddr)
	if err != nil {
		return "", fmt.Errorf("api_addr %q: %v", c.APIAddr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p >= 65535 {
		return "", fmt.Errorf("api_addr %q: bad port", c.APIAddr)
	}
	if p > 0 {
		p++
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

// maxConnsPerIP is the configured cap, or the default.
func (c Config) maxConnsPerIP() int { return cmp.Or(c.MaxConnsPerIP, defaultMaxConnsPerIP) }

// profiles returns the configured lifetimes over the defaults.
func (c Config) profiles() ca.Profiles {
	p, d := c.Profiles, ca.DefaultProfiles()
	if p.Gateway == 0 {
		p.Gateway = d.Gateway
	}
	if p.Person == 0 {
		p.Person = d.Person
	}
	if p.Node == 0 {
		p.Node = d.Node
	}
	return p
}
