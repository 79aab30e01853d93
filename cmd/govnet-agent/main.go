// Command govnet-agent runs on an agency's edge gateway: it enrolls once
// with a one-time token, then keeps the gateway's WireGuard interface and
// nftables table reconciled to what the controllers say.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/govnet/govnet/internal/cli"
	"github.com/govnet/govnet/netagent"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func main() {
	root := &cobra.Command{
		Use:           "govnet-agent",
		Short:         "govnet gateway agent: WireGuard and nftables reconciled to the controllers' view",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(enrollCmd(), runCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "govnet-agent:", err)
		os.Exit(1)
	}
}

func bindConfig(fs *pflag.FlagSet, c *netagent.Config) {
	fs.StringVar(&c.Controller, "controller", c.Controller, "controller API, https://host:port")
	fs.StringSliceVar(&c.Controllers, "controllers", c.Controllers, "more controller nodes to fail over to (comma-separated https://host:port)")
	fs.StringVar(&c.StateDir, "state-dir", c.StateDir, "directory for keys, certificate and the last applied view")
	fs.StringVar(&c.Interface, "interface", c.Interface, "WireGuard interface name")
	fs.IntVar(&c.ListenPort, "listen-port", c.ListenPort, "WireGuard UDP port")
	fs.StringVar(&c.Endpoint, "endpoint", c.Endpoint, "IP:port peers reach this gateway at (sent at enrollment)")
	fs.DurationVar(&c.Reconcile, "reconcile", c.Reconcile, "how often to check the kernel for drift")
	fs.DurationVar(&c.ReportRefresh, "report-refresh", c.ReportRefresh, "how often to report when nothing changed (0: 2m)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "host:port for /metrics, /healthz and /readyz over plain HTTP (empty: off)")
	// The hsm: section; the PIN itself is never a flag.
	fs.StringVar(&c.HSM.Module, "hsm-module", c.HSM.Module, "PKCS#11 module of the token holding the TLS key (must be on the allowlist; empty: the key is a file)")
	fs.StringVar(&c.HSM.TokenLabel, "hsm-token", c.HSM.TokenLabel, "label of the PKCS#11 token holding the TLS key")
	fs.StringVar(&c.HSM.PINFile, "hsm-pin-file", c.HSM.PINFile, "file holding the token's user PIN")
	fs.StringVar(&c.HSM.PINEnv, "hsm-pin-env", c.HSM.PINEnv, "environment variable holding the token's user PIN")
}

func enrollCmd() *cobra.Command {
	cfg := netagent.DefaultConfig()
	var configPath, root, tokenFile string
	var reenroll bool
	cmd := &cobra.Command{
		Use:   "enroll",
		Short: "Generate this gateway's keys and enroll with a one-time token",
		Long: "Generates the TLS and WireGuard keys on this machine (they never leave it), sends a CSR\n" +
			"with the token, and writes the certificate, the identity and a config file.\n" +
			"The token is read from --token-file or the GOVNET_TOKEN environment variable.\n" +
			"With --hsm-module and --hsm-token the TLS key is generated in that PKCS#11 token and\n" +
			"never leaves it; its PIN comes from --hsm-pin-file or --hsm-pin-env, never a flag.\n" +
			"An existing --config file is read first (flags override its keys) and written back.\n" +
			"If it fails after sending its request, run it again with the same token: it keeps the\n" +
			"keys it made (enroll.pending in the state directory) until it holds their certificate.",
		Example: `  GOVNET_TOKEN=... govnet-agent enroll --config /etc/govnet/agent.yaml \
    --controller https://10.0.0.1:7443 --root /etc/govnet/root.crt --endpoint 192.0.2.10:51820

  # the TLS key in the gateway's own PKCS#11 token
  GOVNET_TOKEN=... govnet-agent enroll --config /etc/govnet/agent.yaml \
    --controller https://10.0.0.1:7443 --root /etc/govnet/root.crt --endpoint 192.0.2.10:51820 \
    --hsm-module /usr/lib/softhsm/libsofthsm2.so --hsm-token gw-tls --hsm-pin-file /etc/govnet/agent-hsm.pin`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			token := os.Getenv("GOVNET_TOKEN")
			if tokenFile != "" {
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return err
				}
				token = strings.TrimSpace(string(b))
			}
			if token == "" {
				return errors.New("no token: set --token-file or GOVNET_TOKEN (ask an officer for `govnetctl gateway token`)")
			}
			// A config file already there (the one a re-enrollment
			// replaces, or one written beforehand) keeps every key the
			// flags do not set: failover nodes, metrics, the hsm: section.
			if _, err := os.Stat(configPath); err == nil {
				if err := cli.LoadConfig(cmd.Flags(), configPath, cfg.LoadFile); err != nil {
					return err
				}
			}
			enroll := netagent.Enroll
			if reenroll {
				enroll = netagent.Reenroll
			}
			// The config is written once the checks pass, before the
			// request: an enrolled gateway always has it.
			id, err := enroll(cmd.Context(), cfg, token, root, netagent.SaveConfig(configPath))
			if err != nil {
				return err
			}
			fmt.Printf("enrolled gateway %s of agency %s: overlay address %s, config %s\n", id.Gateway, id.Agency, id.OverlayIP, configPath)
			return nil
		},
	}
	fs := cmd.Flags()
	bindConfig(fs, &cfg)
	fs.StringVar(&configPath, "config", "/etc/govnet/agent.yaml", "config file to write; if it exists, its keys are kept where no flag sets them")
	fs.StringVar(&root, "root", "", "govnet root certificate (PEM), obtained out of band")
	fs.StringVar(&tokenFile, "token-file", "", "file holding the one-time enrollment token")
	fs.BoolVar(&reenroll, "reenroll", false, "enroll this gateway again, with a re-enrollment token (govnetctl gateway token --reenroll): new keys, the same name and address; stop the agent first")
	cmd.MarkFlagRequired("root")
	cmd.MarkFlagRequired("controller")
	return cmd
}

func runCmd() *cobra.Command {
	cfg := netagent.DefaultConfig()
	var (
		configPath, logLevel string
		check                bool
	)
	cmd := &cobra.Command{
		Use:     "run",
		Short:   "Run the agent (inside the gateway's network namespace)",
		Example: "  govnet-agent run --config /etc/govnet/agent.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.LoadConfig(cmd.Flags(), configPath, cfg.LoadFile); err != nil {
				return err
			}
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("config: %w", err)
			}
			if check {
				fmt.Println("config ok")
				return nil
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := cli.Logger(os.Stderr, logLevel)
			slog.SetDefault(log) // libraries that use package log write the same format
			return netagent.Run(ctx, cfg, log)
		},
	}
	fs := cmd.Flags()
	bindConfig(fs, &cfg)
	fs.StringVar(&configPath, "config", "/etc/govnet/agent.yaml", "config file (flags override its keys)")
	fs.BoolVar(&check, "check", false, "validate the configuration and exit")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
