// Command govnetd is the govnet controller: a raft-replicated registry of
// agencies and gateways with an embedded, HSM-backed CA, serving the API
// that agents and people use.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/govnet/govnet/controller"
	"github.com/govnet/govnet/internal/cli"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func main() {
	if err := rootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "govnetd:", err)
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "govnetd",
		Short:         "govnet controller: registry, CA and policy distribution",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(initCmd(), runCmd())
	return root
}

// bindConfig registers a flag for every config key.
func bindConfig(fs *pflag.FlagSet, c *controller.Config) {
	fs.StringVar(&c.Node, "node", c.Node, "this node's name, unique in the cluster")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "directory for the raft log, snapshots and certificates")
	fs.StringVar(&c.RaftAddr, "raft-addr", c.RaftAddr, "host:port for raft traffic")
	fs.StringVar(&c.APIAddr, "api-addr", c.APIAddr, "host:port the API listens on")
	fs.StringVar(&c.OverlayPrefix, "overlay-prefix", c.OverlayPrefix, "overlay address plan (IPv4 prefix)")
	fs.StringVar(&c.HSM.Module, "hsm-module", c.HSM.Module, "PKCS#11 module path (must be on the allowlist)")
	fs.StringVar(&c.HSM.TokenLabel, "hsm-token", c.HSM.TokenLabel, "label of the HSM token holding the CA keys")
	fs.StringVar(&c.HSM.PINFile, "hsm-pin-file", c.HSM.PINFile, "file holding the token's user PIN")
	fs.StringVar(&c.HSM.PINEnv, "hsm-pin-env", c.HSM.PINEnv, "environment variable holding the token's user PIN")
}

func initCmd() *cobra.Command {
	cfg := controller.DefaultConfig()
	var (
		configPath, peopleDir string
		hosts, people         []string
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create this node's CA keys in the HSM, its certificates, bootstrap credentials and config",
		Example: `  softhsm2-util --init-token --free --label govnet-ca --so-pin 0000 --pin 1234
  echo 1234 > /etc/govnet/pin
  govnetd init --config /etc/govnet/govnetd.yaml --data-dir /var/lib/govnet \
    --hsm-token govnet-ca --hsm-pin-file /etc/govnet/pin \
    --api-addr 10.0.0.1:7443 --person alice:operator --person bob:officer --people-dir ./people`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ps []controller.Person
			for _, p := range people {
				name, role, ok := strings.Cut(p, ":")
				if !ok {
					return fmt.Errorf("--person %q: want name:role", p)
				}
				ps = append(ps, controller.Person{Name: name, Role: role})
			}
			err := controller.Init(cmd.Context(), controller.InitOptions{
				Config: cfg, APIHosts: hosts, People: ps, PeopleDir: peopleDir, ConfigPath: configPath,
			})
			if err != nil {
				return err
			}
			fmt.Printf("initialised node %s: certificates in %s/pki, keys in HSM token %q, config %s\n", cfg.Node, cfg.DataDir, cfg.HSM.TokenLabel, configPath)
			return nil
		},
	}
	fs := cmd.Flags()
	bindConfig(fs, &cfg)
	fs.StringVar(&configPath, "config", "", "config file to write")
	fs.StringSliceVar(&hosts, "api-host", nil, "extra DNS name or IP the API is reached at (repeatable)")
	fs.StringArrayVar(&people, "person", nil, "bootstrap person as name:role (operator, officer, auditor); repeatable")
	fs.StringVar(&peopleDir, "people-dir", "people", "directory to write the bootstrap people's key and certificate to")
	cmd.MarkFlagRequired("config")
	return cmd
}

func runCmd() *cobra.Command {
	cfg := controller.DefaultConfig()
	var (
		configPath, logLevel string
		check                bool
	)
	cmd := &cobra.Command{
		Use:     "run",
		Short:   "Run the controller",
		Example: "  govnetd run --config /etc/govnet/govnetd.yaml\n  govnetd run --config /etc/govnet/govnetd.yaml --check",
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
			log := cli.Logger(os.Stderr, logLevel)
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			node, err := controller.Start(ctx, cfg, log)
			if err != nil {
				return err
			}
			<-ctx.Done()
			log.Info("shutting down")
			return node.Close()
		},
	}
	fs := cmd.Flags()
	bindConfig(fs, &cfg)
	fs.StringVar(&configPath, "config", "", "config file (flags override its keys)")
	fs.BoolVar(&check, "check", false, "validate the configuration and exit")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
