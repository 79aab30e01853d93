package controller

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/goccy/go-yaml"
	"github.com/govnet/govnet/hsm"
)

// Config is govnetd's configuration: one typed struct, loaded from YAML,
// every key overridable by a flag in cmd/govnetd.
type Config struct {
	Node          string    `yaml:"node"`           // this node's name, unique in the cluster
	DataDir       string    `yaml:"data_dir"`       // raft log, snapshots, certificates
	RaftAddr      string    `yaml:"raft_addr"`      // host:port for raft traffic
	APIAddr       string    `yaml:"api_addr"`       // host:port the API listens on
	OverlayPrefix string    `yaml:"overlay_prefix"` // the overlay address plan, e.g. 100.64.0.0/16
	HSM           HSMConfig `yaml:"hsm"`
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
	}
}

// LoadConfig reads a YAML config file over the defaults; unknown keys are errors.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	err := cfg.LoadFile(path)
	return cfg, err
}

// LoadFile reads a YAML config file over the values already in c.
func (c *Config) LoadFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := yaml.NewDecoder(bytes.NewReader(data), yaml.DisallowUnknownField()).Decode(c); err != nil {
		return fmt.Errorf("config %s: %s", path, yaml.FormatError(err, false, true))
	}
	return nil
}

// WriteConfig writes cfg as YAML, refusing to overwrite a file.
func WriteConfig(path string, cfg Config) error {
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write config: %w", err)
	}
	return f.Close()
}

// Validate checks every key and says which one is wrong.
func (c Config) Validate() error {
	var errs []error
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
