// Command govnetd is the govnet controller: a raft-replicated registry of
// agencies and gateways with an embedded, HSM-backed CA, serving the API
// that agents and people use.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

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
	root.AddCommand(ceremonyCmd())
	root.AddCommand(signIntermediateCmd(), finishJoinCmd())
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
	fs.DurationVar(&c.Raft.HeartbeatTimeout, "raft-heartbeat-timeout", c.Raft.HeartbeatTimeout, "raft heartbeat timeout")
	fs.DurationVar(&c.Raft.ElectionTimeout, "raft-election-timeout", c.Raft.ElectionTimeout, "raft election timeout")
	fs.DurationVar(&c.Raft.LeaderLeaseTimeout, "raft-leader-lease-timeout", c.Raft.LeaderLeaseTimeout, "raft leader lease timeout")
	fs.StringSliceVar(&c.Join, "join-addr", c.Join, "API host:port of a running member to ask to add this node (config key join; repeatable)")
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, "host:port of the plain-HTTP CRL and OCSP listener (default: the API host, the next port)")
	fs.StringVar(&c.RevocationURL, "revocation-url", c.RevocationURL, "base URL certificates name for CRLs and OCSP (default http://<http-addr>)")
	fs.DurationVar(&c.Profiles.Gateway, "gateway-cert-lifetime", c.Profiles.Gateway, "lifetime of gateway certificates (config key profiles.gateway; 0: 24h)")
	fs.DurationVar(&c.Profiles.Person, "person-cert-lifetime", c.Profiles.Person, "lifetime of people's certificates (config key profiles.person; 0: 90 days)")
	fs.DurationVar(&c.Profiles.Node, "node-cert-lifetime", c.Profiles.Node, "lifetime of controller nodes' certificates (config key profiles.node; 0: one year)")
	fs.BoolVar(&c.FourEyes, "four-eyes", c.FourEyes, "refuse one-step tokens, policy publication, revocation, people's invitation, registration and revocation, and backup restores: require a request approved by another officer")
	fs.Float64Var(&c.RateLimit, "rate-limit", c.RateLimit, "requests per second per client (0: 100)")
	fs.IntVar(&c.MaxConnsPerIP, "max-conns-per-ip", c.MaxConnsPerIP, "connections one client address may hold open on each listener; more are closed at once (0: 256)")
	fs.DurationVar(&c.AuditCheckpointEvery, "audit-checkpoint-every", c.AuditCheckpointEvery, "how often the leader signs and records the audit chain's head (0: 1h)")
	fs.DurationVar(&c.ReportFlush, "report-flush", c.ReportFlush, "how often agents' unchanged reports are committed together (0: 30s)")
	fs.DurationVar(&c.CertArchiveAfter, "cert-archive-after", c.CertArchiveAfter, "how long after expiry a certificate moves to the on-disk archive (0: 24h)")
}

func initCmd() *cobra.Command {
	cfg := controller.DefaultConfig()
	var (
		configPath, peopleDir, csrOut string
		hosts, people                 []string
		join, externalRoot            bool
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create this node's CA keys in the HSM, its certificates, bootstrap credentials and config",
		Long: "The first node of a cluster, with the root held by the Cipher Committee (production):\n" +
			"`govnetd init --external-root --csr-out FILE` creates this node's intermediate and TLS keys in its\n" +
			"token and a CSR for the intermediate; the custodians sign it with M shares (`govnetd ceremony\n" +
			"sign-intermediate`), and `govnetd finish-join` installs it and issues the bootstrap people's\n" +
			"credentials; the node founds the cluster on its first start.\n\n" +
			"The first node with the root in its own token (development and single-machine labs only): plain\n" +
			"`govnetd init` creates the root, this node's intermediate and TLS keys in the HSM, their\n" +
			"certificates and the bootstrap people's credentials.\n\n" +
			"Another node: `govnetd init --join` creates this node's intermediate and TLS keys in ITS token and\n" +
			"a CSR for the intermediate; the root's holder signs it (`govnetd sign-intermediate`), then\n" +
			"`govnetd finish-join` installs the result, and after `govnetd run` an operator adds the node\n" +
			"(`govnetctl cluster join`), or the node asks a member itself (--join-addr HOST:PORT).",
		Example: `  # the first node, its intermediate signed by the custodians' root (see govnetd ceremony):
  govnetd init --external-root --csr-out ctl1.csr --config /etc/govnet/govnetd.yaml --node ctl1 \
    --hsm-token govnet-ca --hsm-pin-file /etc/govnet/pin --api-addr 10.0.0.1:7443 \
    --person alice:operator --person bob:officer --people-dir ./people
  govnetd ceremony sign-intermediate --ceremony-dir /srv/ceremony --shares an.share,cuong.share \
    --csr ctl1.csr --out ctl1.bundle.pem
  govnetd finish-join --config /etc/govnet/govnetd.yaml --bundle ctl1.bundle.pem

  # development: the root in the node's own token
  softhsm2-util --init-token --free --label govnet-ca --so-pin 0000 --pin 1234
  echo 1234 > /etc/govnet/pin
  govnetd init --config /etc/govnet/govnetd.yaml --data-dir /var/lib/govnet \
    --hsm-token govnet-ca --hsm-pin-file /etc/govnet/pin \
    --api-addr 10.0.0.1:7443 --person alice:operator --person bob:officer --people-dir ./people

  # a second node, then on the first node, then on the second again:
  govnetd init --join --config /etc/govnet/govnetd.yaml --node ctl2 --api-addr 10.0.0.2:7443 \
    --raft-addr 10.0.0.2:7000 --hsm-token govnet-ca --hsm-pin-file /etc/govnet/pin --csr-out ctl2.csr
  govnetd sign-intermediate --config /etc/govnet/govnetd.yaml --csr ctl2.csr --out ctl2.bundle.pem
  govnetd finish-join --config /etc/govnet/govnetd.yaml --bundle ctl2.bundle.pem`,
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
			if join || externalRoot {
				switch {
				case join && externalRoot:
					return fmt.Errorf("--join and --external-root: a node either joins a cluster or founds one")
				case join && len(people) > 0:
					return fmt.Errorf("--person: bootstrap people are created by the first node's init only")
				}
				csr, err := controller.PrepareJoin(cmd.Context(), controller.InitOptions{Config: cfg, APIHosts: hosts, ConfigPath: configPath,
					Found: externalRoot, People: ps, PeopleDir: peopleDir})
				if err != nil {
					return err
				}
				if csrOut != "" {
					if err := os.WriteFile(csrOut, csr, 0o644); err != nil {
						return err
					}
				}
				signer := "have the root's holder run `govnetd sign-intermediate`"
				if externalRoot {
					signer = "have M custodians sign it with `govnetd ceremony sign-intermediate`"
				}
				fmt.Printf("node %s: intermediate and TLS keys in HSM token %q; intermediate CSR in %s/pki/intermediate.csr%s\n"+
					"next: %s, then `govnetd finish-join --bundle FILE`\n",
					cfg.Node, cfg.HSM.TokenLabel, cfg.DataDir, map[bool]string{true: " and " + csrOut}[csrOut != ""], signer)
				return nil
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
	fs.BoolVar(&join, "join", false, "prepare a node that joins an existing cluster (keys and intermediate CSR only)")
	fs.BoolVar(&externalRoot, "external-root", false, "found a cluster whose root the custodians hold (govnetd ceremony): keys and intermediate CSR only")
	fs.StringVar(&csrOut, "csr-out", "", "with --join or --external-root: also write the intermediate CSR to this file")
	cmd.MarkFlagRequired("config")
	return cmd
}

func signIntermediateCmd() *cobra.Command {
	cfg := controller.DefaultConfig()
	var configPath, csrPath, out string
	cmd := &cobra.Command{
		Use:     "sign-intermediate --csr FILE --out FILE",
		Short:   "Sign a joining node's intermediate CSR with the root key in this node's HSM token",
		Example: "  govnetd sign-intermediate --config /etc/govnet/govnetd.yaml --csr ctl2.csr --out ctl2.bundle.pem",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.LoadConfig(cmd.Flags(), configPath, cfg.LoadFile); err != nil {
				return err
			}
			csr, err := os.ReadFile(csrPath)
			if err != nil {
				return err
			}
			bundle, err := controller.SignIntermediate(cmd.Context(), cfg, csr, time.Now())
			if err != nil {
				return err
			}
			if err := os.WriteFile(out, bundle, 0o644); err != nil {
				return err
			}
			fmt.Printf("signed: %s (intermediate and root); give it to the joining node's `govnetd finish-join --bundle`\n", out)
			return nil
		},
	}
	fs := cmd.Flags()
	bindConfig(fs, &cfg)
	fs.StringVar(&configPath, "config", "", "this node's config file")
	fs.StringVar(&csrPath, "csr", "", "the joining node's intermediate CSR (PEM)")
	fs.StringVar(&out, "out", "", "where to write the signed intermediate and the root (PEM)")
	cmd.MarkFlagRequired("csr")
	cmd.MarkFlagRequired("out")
	return cmd
}

func finishJoinCmd() *cobra.Command {
	cfg := controller.DefaultConfig()
	var configPath, bundle string
	cmd := &cobra.Command{
		Use:     "finish-join --bundle FILE",
		Short:   "Install a node's signed intermediate and issue its TLS certificate (and, founding, the bootstrap people's)",
		Example: "  govnetd finish-join --config /etc/govnet/govnetd.yaml --bundle ctl2.bundle.pem",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.LoadConfig(cmd.Flags(), configPath, cfg.LoadFile); err != nil {
				return err
			}
			b, err := os.ReadFile(bundle)
			if err != nil {
				return err
			}
			if err := controller.FinishJoin(cmd.Context(), cfg, b, time.Now()); err != nil {
				return err
			}
			if controller.Founding(cfg) {
				fmt.Printf("node %s initialised; start it (govnetd run): it founds the cluster\n", cfg.Node)
				return nil
			}
			fmt.Printf("node %s initialised; start it (govnetd run) and add it: govnetctl cluster join %s %s %s\n",
				cfg.Node, cfg.Node, cfg.RaftAddr, cfg.APIAddr)
			return nil
		},
	}
	fs := cmd.Flags()
	bindConfig(fs, &cfg)
	fs.StringVar(&configPath, "config", "", "this node's config file (written by init --join)")
	fs.StringVar(&bundle, "bundle", "", "the output of sign-intermediate")
	cmd.MarkFlagRequired("config")
	cmd.MarkFlagRequired("bundle")
	return cmd
}

func runCmd() *cobra.Command {
	cfg := controller.DefaultConfig()
	var (
		configPath, logLevel, pprofAddr string
		check                           bool
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
			slog.SetDefault(log) // libraries that use package log write the same format
			if pprofAddr != "" {
				if err := cli.ServePprof(pprofAddr, log); err != nil {
					return err
				}
			}
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
	fs.StringVar(&pprofAddr, "pprof-addr", "", "serve Go runtime profiles (net/http/pprof) on this loopback ip:port, for performance work; off when empty")
	return cmd
}
