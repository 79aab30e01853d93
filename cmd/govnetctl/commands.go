package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/policy"
	"github.com/spf13/cobra"
)

func (a *app) gatewayCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "gateway", Short: "Register gateways, issue enrollment tokens, see their state"}
	var g api.Gateway
	var lans []string
	add := &cobra.Command{
		Use:     "add ID --agency CODE",
		Short:   "Register a gateway of an agency (pending until it enrolls)",
		Example: "  govnetctl gateway add h29-gw1 --agency 000.00.00.H29 --endpoint 192.0.2.10:51820 --lan 10.29.0.0/16",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			g.ID = args[0]
			if err := checkCodes(g.Agency); err != nil {
				return fmt.Errorf("--agency: %w", err)
			}
			for _, l := range lans {
				p, err := netip.ParsePrefix(l)
				if err != nil {
					return fmt.Errorf("--lan %q: %w", l, err)
				}
				g.LANs = append(g.LANs, p)
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				got, err := c.AddGateway(ctx, g)
				if err != nil {
					return err
				}
				return a.print(got, gatewayHeader, func(w io.Writer) { gatewayRow(w, *got) })
			})
		},
	}
	add.Flags().StringVar(&g.Agency, "agency", "", "agency code the gateway belongs to")
	add.Flags().StringVar(&g.Name, "name", "", "a human name")
	add.Flags().StringVar(&g.Endpoint, "endpoint", "", "host:port on the transport network (the agent may also report it)")
	add.Flags().StringSliceVar(&lans, "lan", nil, "agency LAN prefix routed by the gateway (repeatable): IPv4, /8 or narrower, outside the overlay, not another gateway's")
	add.MarkFlagRequired("agency")

	list := &cobra.Command{
		Use:   "list",
		Short: "List gateways with status, overlay address and applied policy",
		Long: "RULESET is MISMATCH when the gateway's table is not what it was sent, FAILED when it could not apply\n" +
			"its current view; PEERS is the number of peers in its WireGuard device, followed by (N LEFT OUT)\n" +
			"when N peers of the view it enforces are not in it in full. `gateway show` says why.",
		Example: "  govnetctl gateway list\n  govnetctl gateway list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				gws, err := c.Gateways(ctx)
				if err != nil {
					return err
				}
				return a.print(gws, gatewayHeader, func(w io.Writer) {
					for _, g := range gws {
						gatewayRow(w, g)
					}
				})
			})
		},
	}
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show one gateway, and why it could not apply its view or left peers out",
		Long: "The gateway's row as in `gateway list`, then, from its last report, the view it could not apply\n" +
			"and why (report.apply_error), and the peers its WireGuard device left out and why (report.peer_error:\n" +
			"one line per problem, each naming the peer by its place in the view, gateway and key).",
		Example: "  govnetctl gateway show h29-gw1\n  govnetctl gateway show h29-gw1 -o json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				g, err := c.Gateway(ctx, args[0])
				if err != nil {
					return err
				}
				return a.print(g, gatewayHeader, func(w io.Writer) {
					gatewayRow(w, *g)
					gatewayProblems(w, *g)
				})
			})
		},
	}
	var ttl time.Duration
	var tokenOut string
	var reenroll bool
	token := &cobra.Command{
		Use:   "token ID",
		Short: "Issue a one-time enrollment token for a pending gateway, or with --reenroll an enrolled one (officer)",
		Long: "--reenroll: for an enrolled gateway whose certificate expired while it was off, or whose machine was\n" +
			"replaced. It enrolls again (govnet-agent enroll --reenroll) with new keys and keeps its name and\n" +
			"overlay address; its certificates before are revoked (superseded) and its peers get the new key.",
		Example: "  govnetctl gateway token h29-gw1 --ttl 30m\n" +
			"  govnetctl gateway token h29-gw1 --write /tmp/h29-gw1.token\n" +
			"  govnetctl gateway token h29-gw1 --reenroll --write /tmp/h29-gw1.token",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				issue := c.IssueToken
				if reenroll {
					issue = c.ReenrollToken
				}
				t, err := issue(ctx, args[0], ttl)
				if err != nil {
					return err
				}
				if tokenOut != "" {
					if err := os.WriteFile(tokenOut, []byte(t.Token+"\n"), 0o600); err != nil {
						return err
					}
				}
				return a.print(t, "GATEWAY\tEXPIRES\tTOKEN", func(w io.Writer) {
					fmt.Fprintf(w, "%s\t%s\t%s\n", t.Gateway, t.Expires.Format(time.RFC3339), t.Token)
				})
			})
		},
	}
	token.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid")
	token.Flags().StringVar(&tokenOut, "write", "", "also write the token to this file (mode 0600)")
	token.Flags().BoolVar(&reenroll, "reenroll", false, "a token that re-enrolls an enrolled gateway")
	cmd.AddCommand(add, list, show, token, a.gatewayDecommissionCmd())
	return cmd
}

const gatewayHeader = "ID\tAGENCY\tSTATUS\tOVERLAY\tENDPOINT\tPOLICY\tRAFT INDEX\tRULESET\tPEERS\tLAST HANDSHAKE\tREPORTED"

func gatewayRow(w io.Writer, g api.Gateway) {
	overlay := "-"
	if g.OverlayIP.IsValid() {
		overlay = g.OverlayIP.String()
	}
	pol, idx, peers, hs, at := "-", "-", "-", "-", "-"
	if r := g.Report; r != nil {
		pol, idx, peers = fmt.Sprintf("v%d", r.PolicyVersion), fmt.Sprint(r.RaftIndex), fmt.Sprint(r.Peers)
		if r.PeersLeftOut > 0 {
			peers += fmt.Sprintf(" (%d LEFT OUT)", r.PeersLeftOut) // not in its WireGuard device in full (report.peer_error)
		}
		if !r.LastHandshake.IsZero() {
			hs = ago(r.LastHandshake)
		}
		at = ago(r.At)
	}
	ruleset := dash(g.Ruleset)
	switch g.Ruleset {
	case api.RulesetMismatch:
		ruleset = "MISMATCH" // the gateway's table is not what it was sent
	case api.RulesetFailed:
		ruleset = "FAILED" // the gateway could not apply its current view (report.apply_error)
	}
	fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.ID, g.Agency, g.Status, overlay, dash(g.Endpoint), pol, idx, ruleset, peers, hs, at)
}

// gatewayProblems writes, under the gateway's row, why its last report
// says it could not apply its view or left peers out, if it does. The
// reasons come from the gateway: control characters are shown as \uFFFD,
// not sent to the terminal.
func gatewayProblems(w io.Writer, g api.Gateway) {
	r := g.Report
	if r == nil {
		return
	}
	if r.ApplyError != "" {
		fmt.Fprintf(w, "\nCould not apply view %d (it enforces view %d):\n", r.FailedIndex, r.RaftIndex)
		indent(w, r.ApplyError)
	}
	if r.PeersLeftOut > 0 || r.PeerError != "" {
		fmt.Fprintf(w, "\nPeers of view %d left out: %d (not in its WireGuard device in full):\n", r.RaftIndex, r.PeersLeftOut)
		indent(w, r.PeerError)
	}
}

// indent writes text's lines indented, control characters replaced.
func indent(w io.Writer, text string) {
	for line := range strings.SplitSeq(text, "\n") {
		fmt.Fprintf(w, "  %s\n", strings.Map(func(r rune) rune {
			if unicode.IsControl(r) {
				return unicode.ReplacementChar
			}
			return r
		}, line))
	}
}

func ago(t time.Time) string {
	return time.Since(t).Round(time.Second).String() + " ago"
}

func (a *app) policyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Check, publish and show the network policy"}
	var registryFile string
	check := &cobra.Command{
		Use:   "check FILE",
		Short: "Check a policy offline: syntax, names, and its embedded tests against a registry file",
		Long: "Without --registry only the file itself is checked (syntax, structure, references between\n" +
			"its own groups and services). With --registry the policy is checked as the controller would\n" +
			"before publishing it: every agency code and gateway is looked up in the registry file, the\n" +
			"policy is compiled for every gateway, and its embedded tests are run. Nothing is contacted.\n" +
			"Write a registry file by hand (see deploy/lab/registry.yaml) or from the live network with\n" +
			"`govnetctl registry export`.",
		Example: "  govnetctl policy check deploy/lab/policy.yaml\n" +
			"  govnetctl policy check deploy/lab/policy.yaml --registry deploy/lab/registry.yaml",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			if registryFile == "" {
				if _, err := policy.Parse(args[0], src); err != nil {
					return fmt.Errorf("policy rejected:\n%w", err)
				}
				fmt.Fprintf(a.out, "%s: ok (syntax only: give --registry FILE to check names and run the tests)\n", args[0])
				return nil
			}
			reg, err := policy.LoadRegistry(registryFile)
			if err != nil {
				return fmt.Errorf("%w\n(fix the registry file, or write a new one with `govnetctl registry export`)", err)
			}
			p, views, err := policy.Check(args[0], src, reg)
			if err != nil {
				return fmt.Errorf("policy rejected:\n%w", err)
			}
			fmt.Fprintf(a.out, "%s: ok: %d tests passed against %s (%d agencies, %d gateways, %d with a view)\n",
				args[0], len(p.Tests), registryFile, len(reg.Agencies), len(reg.Gateways), len(views))
			return nil
		},
	}
	check.Flags().StringVar(&registryFile, "registry", "", "registry `FILE` (YAML or JSON) to check names and run the tests against")
	publish := &cobra.Command{
		Use:   "publish FILE",
		Short: "Validate a policy against the registry, run its tests and publish it (officer)",
		Long: "The controller parses the policy, checks every name against the registry, compiles it for\n" +
			"every gateway and runs its embedded tests. A policy that fails any step is rejected with\n" +
			"its errors and no gateway changes.",
		Example: "  govnetctl policy publish deploy/lab/policy.yaml",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				p, err := c.PublishPolicy(ctx, filepath.Base(args[0]), string(src))
				if err != nil {
					return err
				}
				return a.print(p, "VERSION\tPUBLISHED\tBY", func(w io.Writer) { policyRow(w, *p) })
			})
		},
	}
	show := &cobra.Command{
		Use:     "show",
		Short:   "Show the current policy",
		Example: "  govnetctl policy show",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				p, err := c.Policy(ctx)
				if err != nil {
					return err
				}
				return a.print(p, "VERSION\tPUBLISHED\tBY", func(w io.Writer) {
					policyRow(w, *p)
					fmt.Fprintln(w)
					fmt.Fprint(w, strings.TrimRight(p.Source, "\n")+"\n")
				})
			})
		},
	}
	plan := &cobra.Command{
		Use:   "plan FILE",
		Short: "Say which gateways a policy would change, against the live registry (the blast radius)",
		Long: "The controller checks the draft as publication would (names, compile, embedded tests) and\n" +
			"compares every gateway's view under it with the current policy's: flows and peers gained and\n" +
			"lost, per gateway, with counts. Nothing is committed.",
		Example: "  govnetctl policy plan deploy/lab/policy.yaml\n  govnetctl policy plan new.yaml -o json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				p, err := c.PlanPolicy(ctx, filepath.Base(args[0]), string(src))
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.print(p, "", nil)
				}
				_, err = io.WriteString(a.out, policy.RenderPlan(p))
				for _, r := range p.ClosedRefs {
					fmt.Fprintf(a.out, "note: %s: %s names %s, a closed agency code: it selects nothing\n", r.Where, r.What, r.Code)
				}
				for _, r := range p.IdleRules {
					fmt.Fprintf(a.out, "note: %s: rule %d allows nothing now: %s\n", r.Where, r.Rule, r.Why)
				}
				return err
			})
		},
	}
	history := &cobra.Command{
		Use:     "history",
		Short:   "List every published version of the policy",
		Example: "  govnetctl policy history",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				ps, err := c.PolicyHistory(ctx)
				if err != nil {
					return err
				}
				return a.print(ps, "VERSION\tPUBLISHED\tBY", func(w io.Writer) {
					for _, p := range ps {
						policyRow(w, p)
					}
				})
			})
		},
	}
	var viaRequest bool
	rollback := &cobra.Command{
		Use:   "rollback VERSION",
		Short: "Publish an earlier version's text again, as a new version (officer; or --request under four-eyes)",
		Long: "Fetches the text of VERSION from the history and publishes it as the next version, checked\n" +
			"against today's registry like any other policy. With four-eyes approval on, use --request:\n" +
			"the rollback becomes a request that another officer approves.",
		Example: "  govnetctl policy rollback 3\n  govnetctl policy rollback 3 --request",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			version, err := strconv.ParseUint(strings.TrimPrefix(args[0], "v"), 10, 64)
			if err != nil {
				return fmt.Errorf("version %q: want a number such as 3", args[0])
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				ps, err := c.PolicyHistory(ctx)
				if err != nil {
					return err
				}
				i := slices.IndexFunc(ps, func(p api.Policy) bool { return p.Version == version })
				if i < 0 {
					return fmt.Errorf("no policy version %d (see govnetctl policy history)", version)
				}
				name := fmt.Sprintf("rollback-to-v%d.yaml", version)
				if viaRequest {
					r, err := c.CreateRequest(ctx, api.RequestCreate{Kind: api.RequestPolicy, PolicyName: name, PolicySource: ps[i].Source,
						Reason: fmt.Sprintf("roll back to policy v%d", version)})
					if err != nil {
						return err
					}
					return a.print(r, "REQUEST\tKIND", func(w io.Writer) { fmt.Fprintf(w, "%s\t%s\n", r.ID, r.Kind) })
				}
				p, err := c.PublishPolicy(ctx, name, ps[i].Source)
				if err != nil {
					return err
				}
				return a.print(p, "VERSION\tPUBLISHED\tBY", func(w io.Writer) { policyRow(w, *p) })
			})
		},
	}
	rollback.Flags().BoolVar(&viaRequest, "request", false, "ask for the rollback as a four-eyes request instead of publishing it")
	cmd.AddCommand(check, publish, show, plan, history, rollback)
	cmd.AddCommand(a.policyReviewCmds()...)
	return cmd
}

func policyRow(w io.Writer, p api.Policy) {
	fmt.Fprintf(w, "v%d\t%s\t%s\n", p.Version, p.Published.Format(time.RFC3339), p.Actor)
}

func (a *app) clusterCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "See and change the controller cluster; back it up and restore it"}
	var wait time.Duration
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the answering node's raft state and readiness, the members, and their release levels",
		Example: "  govnetctl cluster status\n" +
			"  govnetctl cluster status --wait 30s   # until the node is ready, or fail",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			deadline := time.Now().Add(wait)
			for {
				ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
				st, err := c.ClusterStatus(ctx)
				cancel()
				if err == nil && (st.Ready || wait == 0) {
					return a.printStatus(st)
				}
				if time.Now().After(deadline) {
					if err == nil {
						err = fmt.Errorf("node %s not ready: %s", st.Node, st.NotReady)
					}
					return err
				}
				time.Sleep(100 * time.Millisecond)
			}
		},
	}
	status.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the node to be ready")
	join := &cobra.Command{
		Use:     "join NODE RAFT_ADDR API_ADDR",
		Short:   "Add an initialised, running controller node to the cluster: a voter once it reports a release of the cluster's level (operator)",
		Example: "  govnetctl cluster join ctl2 10.0.0.2:7000 10.0.0.2:7443",
		Args:    cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				st, err := c.JoinNode(ctx, api.JoinRequest{Node: args[0], RaftAddr: args[1], APIAddr: args[2]})
				if err != nil {
					return err
				}
				return a.printStatus(st)
			})
		},
	}
	remove := &cobra.Command{
		Use:     "remove NODE",
		Short:   "Take a controller node out of the cluster (operator)",
		Example: "  govnetctl cluster remove ctl3",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				st, err := c.RemoveNode(ctx, args[0])
				if err != nil {
					return err
				}
				return a.printStatus(st)
			})
		},
	}
	snapshot := &cobra.Command{Use: "snapshot", Short: "Back up and restore the replicated state"}
	save := &cobra.Command{
		Use:   "save FILE",
		Short: "Write a backup of the replicated state, as of now, to FILE (operator, auditor)",
		Long: "The backup is the replicated state followed by a line in which the node that saved it signs\n" +
			"its length and SHA-256. The line is checked against the root as the backup is saved: a backup\n" +
			"cut short in transit is an error, and FILE is left as it was.",
		Example: "  govnetctl cluster snapshot save /var/backups/govnet-$(date +%F).snap",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.callFor(cmd, transferTimeout, func(ctx context.Context, c *api.Client) error {
				tmp := args[0] + ".part"
				f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
				if err != nil {
					return err
				}
				err = c.SaveSnapshot(ctx, f)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					os.Remove(tmp)
					return err
				}
				if err := os.Rename(tmp, args[0]); err != nil {
					return err
				}
				fmt.Fprintf(a.out, "saved %s\n", args[0])
				return nil
			})
		},
	}
	restore := &cobra.Command{
		Use:   "restore FILE",
		Short: "Roll the registry back to a backup, or recover a lost cluster into a new one (officer)",
		Long: "The backup's signature line is checked first (saved by a controller node under this cluster's\n" +
			"root, not altered since, its signing time within the backup's and this node's clock, the\n" +
			"signer not revoked but for a renewal after it signed), then its content; then the\n" +
			"restore is committed in the raft log like any write, and every node merges the backup\n" +
			"into its state as it applies it.\n" +
			"A backup of this cluster rolls back the agencies, the gateways\n" +
			"registered since (decommissioned: their certificates revoked), each gateway's agency,\n" +
			"and the policy (published again as a new version). It keeps the audit chain, the\n" +
			"certificates and every revocation, enrollments and renewals, people, tokens, requests\n" +
			"and the membership, and appends a backup-restore entry to the chain.\n" +
			"The backup of another cluster is accepted only by a new cluster, which never had a gateway\n" +
			"or a restore (recovery): its state and audit chain become the cluster's, beside the new\n" +
			"cluster's members, issuers and people; that cluster must be founded under the same root,\n" +
			"and have a single node until the recovery is done (join the others after it).\n" +
			"An approved restore request is good for one restore.",
		Example: "  govnetctl cluster snapshot restore /var/backups/govnet-2026-11-23.snap",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			return a.callFor(cmd, api.RestoreTimeout, func(ctx context.Context, c *api.Client) error {
				st, err := c.RestoreSnapshot(ctx, f)
				if err != nil {
					return err
				}
				return a.printStatus(st)
			})
		},
	}
	verify := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check a backup's signature offline: whole, unaltered, saved by a controller node under the root",
		Long: "Checks the backup's signature line against the root (--root or the config file): the length and\n" +
			"SHA-256 of what precedes it, and the certificate chain and signature of the node that saved it.\n" +
			"A restore checks more (revocations, the signing time against the backup's content), which needs\n" +
			"the cluster. Prints the whole file's SHA-256, which `request restore` names. Needs no controller.",
		Example: "  govnetctl cluster snapshot verify /var/backups/govnet-2026-11-23.snap",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			roots, err := a.roots("snapshot verify")
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			whole := sha256.New()
			sig, chain, err := api.VerifyBackup(io.TeeReader(f, whole), roots)
			if err == nil {
				if id, ierr := ca.IdentityOf(chain[0]); ierr != nil || id.Kind != ca.KindNode || id.Name != sig.Node {
					err = fmt.Errorf("the backup was signed by %s (certificate %s), not by controller node %s", chain[0].Subject.CommonName, ca.Serial(chain[0]), sig.Node)
				}
			}
			if err != nil {
				return fmt.Errorf("%s: NOT VALID: %w", args[0], err)
			}
			v := backupVerified{File: args[0], FileSHA256: hex.EncodeToString(whole.Sum(nil)), Node: sig.Node, Certificate: ca.Serial(chain[0]),
				At: sig.At, RaftIndex: sig.RaftIndex, Bytes: sig.Bytes}
			return a.print(v, "", func(w io.Writer) {
				fmt.Fprintf(w, "%s: saved by node %s (certificate %s) at %s, raft index %d; signature verifies\nSHA-256 of the file: %s\n",
					v.File, v.Node, v.Certificate, v.At.UTC().Format(time.RFC3339), v.RaftIndex, v.FileSHA256)
			})
		},
	}
	snapshot.AddCommand(save, restore, verify)
	cmd.AddCommand(status, join, remove, snapshot)
	return cmd
}

// backupVerified is what `cluster snapshot verify` found.
type backupVerified struct {
	File        string    `json:"file"`
	FileSHA256  string    `json:"file_sha256"` // what a restore request names
	Node        string    `json:"node"`
	Certificate string    `json:"certificate"` // the node certificate's serial
	At          time.Time `json:"at"`
	RaftIndex   uint64    `json:"raft_index"`
	Bytes       int64     `json:"bytes"` // the state's, before the signature line
}

// level shows a cluster or release level; "-" for none reported.
func level(l int) string {
	if l == 0 {
		return "-"
	}
	return strconv.Itoa(l)
}

func (a *app) printStatus(st *api.ClusterStatus) error {
	return a.print(st, "NODE\tSTATE\tLEADER\tRAFT INDEX\tREADY\tWATCHERS\tCLUSTER LEVEL", func(w io.Writer) {
		ready := "yes"
		if !st.Ready {
			ready = "no: " + st.NotReady
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%d\t%s\n", st.Node, st.State, dash(st.Leader), st.RaftIndex, ready, st.Watchers, level(st.Level))
		if len(st.Members) > 0 {
			fmt.Fprintln(w)
			fmt.Fprintln(w, "MEMBER\tSUFFRAGE\tRAFT\tAPI\tLEADER\tRELEASE LEVEL")
			for _, m := range st.Members {
				leader := ""
				if m.Leader {
					leader = "*"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", m.Node, dash(m.Suffrage), m.RaftAddr, dash(m.APIAddr), leader, level(m.Level))
			}
		}
	})
}
