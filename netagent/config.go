// Package netagent is govnet-agent: it enrolls a gateway once with a
// one-time token, then keeps the gateway's WireGuard interface and its
// nftables table `inet govnet` equal to the view the controllers send,
// reports what it applied, and keeps enforcing the last applied view when
// no controller answers (fail static, never open).
package netagent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/govnet/govnet/internal/atomicfile"
	"github.com/govnet/govnet/internal/yamlfile"
)

// Config is the agent's configuration file.
type Config struct {
	Controller  string        `yaml:"controller"`  // https://host:port of a controller node
	Controllers []string      `yaml:"controllers"` // more nodes of the same cluster, to fail over to
	StateDir    string        `yaml:"state_dir"`   // keys, certificate, last applied view
	Interface   string        `yaml:"interface"`   // WireGuard interface name, unique on the machine
	ListenPort  int           `yaml:"listen_port"`
	Endpoint    string        `yaml:"endpoint"`  // IP:port peers reach this gateway at (sent at enrollment)
	Reconcile   time.Duration `yaml:"reconcile"` // how often the kernel state is checked for drift
	// ReportRefresh is how often the agent reports when nothing changed,
	// so the controllers know it is alive; 0 means 2 minutes. Every report
	// is a replicated write: at 20,000 gateways one per 30 s would be 670
	// raft writes a second carrying nothing new.
	ReportRefresh time.Duration `yaml:"report_refresh,omitempty"`
	// MetricsAddr is host:port for /metrics, /healthz and /readyz (plain
	// HTTP); empty: not served.
	MetricsAddr string `yaml:"metrics_addr"`
	// HSM, when set, keeps the gateway's TLS key in this PKCS#11 token
	// instead of a file in StateDir (see keystore.go).
	HSM HSMConfig `yaml:"hsm,omitempty"`
}

// HSMConfig selects the gateway's own PKCS#11 token (as
// controller.HSMConfig does for a controller's). The PIN comes from a file
// or an environment variable, never from a flag. All empty: the TLS key is
// a file.
type HSMConfig struct {
	Module     string `yaml:"module"`      // PKCS#11 module; must be on hsm.DefaultModules
	TokenLabel string `yaml:"token_label"` // the token, selected by label
	PINFile    string `yaml:"pin_file"`    // file holding the user PIN, not readable by others
	PINEnv     string `yaml:"pin_env"`     // or: environment variable holding it
}

// Enabled reports whether any key of the section is set.
func (h HSMConfig) Enabled() bool { return h != HSMConfig{} }

// DefaultConfig returns the defaults `govnet-agent enroll` writes.
func DefaultConfig() Config {
	return Config{
		StateDir:   "/var/lib/govnet-agent",
		Interface:  "govnet0",
		ListenPort: 51820,
		Reconcile:  30 * time.Second,
	}
}

// LoadConfig reads a YAML config over the defaults; unknown keys are errors.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	err := cfg.LoadFile(path)
	return cfg, err
}

// LoadFile reads a YAML config file over the values already in c.
func (c *Config) LoadFile(path string) error { return yamlfile.Decode(path, c) }

// Save writes the config file.
func (c Config) Save(path string) error {
	data, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o640)
}

// Validate says which key is wrong.
func (c Config) Validate() error {
	var errs []error
	if c.Controller == "" {
		errs = append(errs, errors.New("controller: required (https://host:port)"))
	}
	for _, u := range append([]string{c.Controller}, c.Controllers...) {
		if u != "" && !strings.HasPrefix(u, "https://") {
			errs = append(errs, fmt.Errorf("controller %q: want https://host:port", u))
		}
	}
	if !filepath.IsAbs(c.StateDir) {
		errs = append(errs, fmt.Errorf("state_dir %q: must be an absolute path", c.StateDir))
	}
	if c.Interface == "" || len(c.Interface) > 15 {
		errs = append(errs, fmt.Errorf("interface %q: want 1-15 characters", c.Interface))
	}
	if c.ListenPort < 1 || c.ListenPort > 65535 {
		errs = append(errs, fmt.Errorf("listen_port %d: out of range", c.ListenPort))
	}
	if c.ReportRefresh < 0 {
		errs = append(errs, fmt.Errorf("report_refresh %s: must not be negative (0: 2m)", c.ReportRefresh))
	}
	if c.Reconcile < time.Second {
		errs = append(errs, fmt.Errorf("reconcile %s: at least 1s", c.Reconcile))
	}
	if c.MetricsAddr != "" {
		if _, port, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			errs = append(errs, fmt.Errorf("metrics_addr %q: want host:port, e.g. 127.0.0.1:9475 (empty: no metrics)", c.MetricsAddr))
		} else if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("metrics_addr %q: port %q: want 1-65535", c.MetricsAddr, port))
		}
	}
	if c.HSM.Enabled() {
		errs = append(errs, c.HSM.validate()...)
	}
	return errors.Join(errs...)
}

// endpoints returns every controller node to try, the configured one first.
func (c Config) endpoints() []string {
	out := []string{c.Controller}
	for _, u := range c.Controllers {
		if u != c.Controller && !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

// Files in the state directory.
func (c Config) path(name string) string { return filepath.Join(c.StateDir, name) }

const (
	fileTLSKey = "tls.key"  // the gateway's TLS private key, 0600
	fileCert   = "tls.crt"  // its certificate chain
	fileRoot   = "root.crt" // the govnet root it trusts
	fileWGKey  = "wg.key"   // the WireGuard private key, 0600
	fileIdent  = "identity.json"
	fileView   = "view.json" // the last applied view, for fail-static restarts
	// A renewal whose answer never came, kept across restarts (0600):
	// renew.go's pendingFile.
	filePendingRenewal = "renewal.pending"
)

// fileLock is the state directory's lock: one govnet-agent, running or
// enrolling, uses the directory at a time (lockState).
const fileLock = "lock"

// lockState takes the state directory's lock for as long as the process
// holds it (flock: released when the process ends, however it ends) and
// returns its release. A directory that does not exist yet has nothing
// to protect.
func lockState(cfg Config) (release func(), err error) {
	f, err := os.OpenFile(cfg.path(fileLock), os.O_RDWR|os.O_CREATE, 0o600)
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(cfg.StateDir); errors.Is(serr, os.ErrNotExist) {
			return func() {}, nil
		}
	}
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("state directory %s is in use by another govnet-agent (run or enroll): stop it first", cfg.StateDir)
		}
		return nil, fmt.Errorf("lock %s: %w", cfg.path(fileLock), err)
	}
	return func() { f.Close() }, nil
}
