package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/internal/certaudit"
	"github.com/spf13/cobra"
)

func (a *app) certCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "cert", Short: "The certificate inventory: list, show, revoke, renew-all"}
	var agency, expiring string
	var revoked, archived bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the certificates the CA issued (any node answers, from its replicated state)",
		Long: "Lists the inventory: every certificate but those archived, which expired more than\n" +
			"cert_archive_after (24 h by default) ago. --archived lists those too, after the others:\n" +
			"every certificate the CA ever issued. `cert show` finds an archived one as well.",
		Example: "  govnetctl cert list --agency 000.00.00.H29\n" +
			"  govnetctl cert list --revoked -o json\n" +
			"  govnetctl cert list --expiring 7d\n" +
			"  govnetctl cert list --archived -o json",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if agency != "" {
				if err := checkCodes(agency); err != nil {
					return fmt.Errorf("--agency: %w", err)
				}
				q.Set("agency", agency)
			}
			if revoked {
				q.Set("revoked", "true")
			}
			if expiring != "" {
				q.Set("expiring", expiring)
			}
			if archived {
				q.Set("archived", "true")
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				certs, err := c.Certificates(ctx, q)
				if err != nil {
					return err
				}
				return a.print(certs, certHeader, func(w io.Writer) {
					for _, ct := range certs {
						certRow(w, ct)
					}
				})
			})
		},
	}
	list.Flags().StringVar(&agency, "agency", "", "only certificates of this agency's gateways")
	list.Flags().BoolVar(&revoked, "revoked", false, "only revoked certificates")
	list.Flags().StringVar(&expiring, "expiring", "", "only valid certificates that expire within this long (7d, 36h)")
	list.Flags().BoolVar(&archived, "archived", false, "also the archived certificates (expired a while ago), after the others")
	show := &cobra.Command{
		Use:     "show SERIAL",
		Short:   "Show one certificate of the inventory",
		Example: "  govnetctl cert show 5cfdc3e55583fedb1e12658813d367e4 -o json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				ct, err := c.Certificate(ctx, args[0])
				if err != nil {
					return err
				}
				return a.print(ct, "FIELD\tVALUE", func(w io.Writer) { certDetail(w, *ct) })
			})
		},
	}
	var gateway, reason string
	revoke := &cobra.Command{
		Use:   "revoke [SERIAL | --gateway ID] --reason REASON",
		Short: "Revoke a certificate, or a gateway and its certificates, in one step (officer; four-eyes: use `request revoke`)",
		Long: "Revoking a gateway, or its current certificate, ends its streams on every node, removes it from\n" +
			"every peer's view and puts its certificates in its issuer's next CRL, which is signed at once.\n" +
			"Reasons are RFC 5280 names: unspecified, keyCompromise, cACompromise, affiliationChanged,\n" +
			"superseded, cessationOfOperation, privilegeWithdrawn.",
		Example: "  govnetctl cert revoke --gateway h29-gw1 --reason keyCompromise\n" +
			"  govnetctl cert revoke 5cfdc3e55583fedb1e12658813d367e4 --reason superseded",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.RevokeRequest{Gateway: gateway, Reason: reason}
			if len(args) == 1 {
				req.Serial = args[0]
			}
			if (req.Serial == "") == (req.Gateway == "") {
				return fmt.Errorf("name a SERIAL or a --gateway, not both")
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				res, err := c.Revoke(ctx, req)
				if err != nil {
					return err
				}
				return a.print(res, certHeader, func(w io.Writer) {
					for _, ct := range res.Certificates {
						certRow(w, ct)
					}
					if res.Gateway != "" {
						fmt.Fprintf(w, "\ngateway %s revoked at raft index %d; gone from every view after %v\n", res.Gateway, res.RaftIndex, res.Enforced.Round(time.Microsecond))
					}
				})
			})
		},
	}
	revoke.Flags().StringVar(&gateway, "gateway", "", "revoke this gateway and every valid certificate it holds")
	revoke.Flags().StringVar(&reason, "reason", "unspecified", "RFC 5280 revocation reason")
	publishRoot := &cobra.Command{
		Use:   "publish-root-crl FILE",
		Short: "Publish the root's CRL that the custodians signed (officer)",
		Long: "The controllers check that the root signed it and that it is newer than the one in force,\n" +
			"replicate it, and serve it to anyone at /crl/<root id>.crl on their plain-HTTP listener.",
		Example: "  govnetd ceremony crl --ceremony-dir /srv/ceremony --shares an.share,cuong.share --revoke SERIAL --out root.crl\n" +
			"  govnetctl cert publish-root-crl root.crl",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			der, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				res, err := c.PublishRootCRL(ctx, der)
				if err != nil {
					return err
				}
				return a.print(res, "ROOT\tNUMBER\tREVOKED\tNEXT UPDATE\tSERVED AT", func(w io.Writer) {
					fmt.Fprintf(w, "%s\t%d\t%d\t%s\t%s\n", res.Issuer, res.Number, res.Revoked, res.NextUpdate.Format(time.RFC3339), res.Path)
				})
			})
		},
	}
	var renewReason string
	var renewStatus bool
	renewAll := &cobra.Command{
		Use:   "renew-all --reason REASON | --status",
		Short: "Ask every gateway to renew its certificate now (officer), or show how far the last call got",
		Long: "Every node tells each enrolled gateway whose current certificate was recorded before the call,\n" +
			"over its stream, at once or when it next connects; the agent renews within 10 s as it does at two\n" +
			"thirds of a certificate's life (a new key, renewed on its stream). Agents older than the call's protocol\n" +
			"(govnet-stream/2) are not told and renew on their own schedule. --status counts the gateways\n" +
			"whose certificate still predates the call and lists up to 100 of them.",
		Example: "  govnetctl cert renew-all --reason \"intermediate of ctl2 re-keyed\"\n" +
			"  govnetctl cert renew-all --status",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if renewStatus == (renewReason != "") {
				return fmt.Errorf("give either --reason (make a call) or --status")
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				var st *api.RenewCallStatus
				var err error
				if renewStatus {
					st, err = c.RenewAllStatus(ctx)
				} else {
					st, err = c.RenewAll(ctx, renewReason)
				}
				if err != nil {
					return err
				}
				return a.print(st, "CALLED AT\tBY\tREASON\tGATEWAYS\tPENDING\tWAITING", func(w io.Writer) {
					if st.Call == nil {
						fmt.Fprintf(w, "-\t-\tno call made\t%d\t0\t\n", st.Gateways)
						return
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%s\n", st.Call.At.Format(time.RFC3339), st.Call.Actor, st.Call.Reason,
						st.Gateways, st.Pending, strings.Join(st.Waiting, ","))
				})
			})
		},
	}
	renewAll.Flags().StringVar(&renewReason, "reason", "", "why (the gateways log it)")
	renewAll.Flags().BoolVar(&renewStatus, "status", false, "show the last call and the gateways whose certificate still predates it")
	audit := &cobra.Command{
		Use:   "audit",
		Short: "Check that an approval accounts for every certificate the CA ever issued (archived ones too)",
		Long: "Reads the whole inventory (cert list --archived) and lists the certificates no approval accounts for:\n" +
			"a gateway's or a person's needs the officer who approved its enrollment token or invitation, or must\n" +
			"renew one that has it (renewed_from, the same gateway or person); a person's may come from `govnetd init`;\n" +
			"a node's must be its own and an intermediate its node's. Fails if it finds any.",
		Example: "  govnetctl cert audit\n  govnetctl cert audit -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				certs, err := c.Certificates(ctx, url.Values{"archived": {"true"}})
				if err != nil {
					return err
				}
				people, err := c.People(ctx)
				if err != nil {
					return err
				}
				findings := certaudit.Check(certs, certaudit.Officers(people))
				if err := a.print(findings, "SERIAL\tKIND\tSUBJECT\tPROBLEM", func(w io.Writer) {
					for _, f := range findings {
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", f.Serial, f.Kind, f.Subject, f.Problem)
					}
				}); err != nil {
					return err
				}
				if len(findings) > 0 {
					return fmt.Errorf("%d of %d certificates: no approval accounts for them", len(findings), len(certs))
				}
				fmt.Fprintf(os.Stderr, "govnetctl: an approval accounts for each of the %d certificates\n", len(certs))
				return nil
			})
		},
	}
	cmd.AddCommand(list, show, revoke, publishRoot, renewAll, audit)
	return cmd
}

const certHeader = "SERIAL\tKIND\tSUBJECT\tAGENCY/ROLE\tNOT AFTER\tSTATUS\tREASON"

func certRow(w io.Writer, c api.Certificate) {
	fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Serial, c.Kind, c.Subject, dash(c.Agency+c.Role),
		c.NotAfter.Format(time.RFC3339), c.Status, dash(c.ReasonName))
}

func certDetail(w io.Writer, c api.Certificate) {
	row := func(k, v string) { fmt.Fprintf(w, "%s\t%s\n", k, dash(v)) }
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.Format(time.RFC3339)
	}
	row("serial", c.Serial)
	row("kind", c.Kind)
	row("subject", c.Subject)
	row("gateway", c.Gateway)
	row("agency", c.Agency)
	row("role", c.Role)
	row("sans", strings.Join(c.SANs, ", "))
	row("issuer", c.Issuer)
	row("not before", ts(c.NotBefore))
	row("not after", ts(c.NotAfter))
	row("requester", c.Requester)
	row("approver", c.Approver)
	row("renewed from", c.RenewedFrom)
	row("recorded", ts(c.Issued))
	row("status", c.Status)
	if c.Status == api.CertRevoked {
		row("revoked at", ts(c.RevokedAt))
		row("reason", c.ReasonName+" ("+strconv.Itoa(c.Reason)+")")
		row("revoked by", c.RevokedBy)
	}
	if c.Archived {
		row("archived", "yes (expired, kept on disk)")
	}
}
