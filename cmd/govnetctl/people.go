package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/internal/credfile"
	"github.com/spf13/cobra"
)

func (a *app) personCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "person", Short: "The registry of people: who may call the API, with which certificate and role"}
	list := &cobra.Command{
		Use:     "list",
		Short:   "List registered people",
		Example: "  govnetctl person list",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				ps, err := c.People(ctx)
				if err != nil {
					return err
				}
				return a.print(ps, personHeader, func(w io.Writer) {
					for _, p := range ps {
						personRow(w, p)
					}
				})
			})
		},
	}
	var p api.Person
	add := &cobra.Command{
		Use:     "add NAME --role ROLE --serial HEX",
		Short:   "Register a person's certificate (officer)",
		Example: "  govnetctl person add alice --role operator --serial 3f2a9c...",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				got, err := c.AddPerson(ctx, p)
				if err != nil {
					return err
				}
				return a.print(got, personHeader, func(w io.Writer) { personRow(w, *got) })
			})
		},
	}
	add.Flags().StringVar(&p.Role, "role", "", "operator, officer, auditor or custodian")
	add.Flags().StringVar(&p.Serial, "serial", "", "the person's certificate serial (hex)")
	add.MarkFlagRequired("role")
	add.MarkFlagRequired("serial")
	revoke := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a person's certificate: every later call with it is refused (officer)",
		Long: "Every later call with the certificate is refused, on every node; the inventory marks it revoked\n" +
			"(privilegeWithdrawn), so the CRL and OCSP say so, and the person's record keeps its serial:\n" +
			"it is never registered again, whatever is registered in between.",
		Example: "  govnetctl person revoke alice",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				got, err := c.RevokePerson(ctx, args[0])
				if err != nil {
					return err
				}
				return a.print(got, personHeader, func(w io.Writer) { personRow(w, *got) })
			})
		},
	}
	cmd.AddCommand(list, add, revoke, a.inviteCmd(), a.personKeyCmd(), a.enrollPersonCmd(), a.renewPersonCmd())
	return cmd
}

func (a *app) inviteCmd() *cobra.Command {
	var req api.InviteRequest
	var ttl time.Duration
	var out string
	invite := &cobra.Command{
		Use:   "invite NAME --role ROLE",
		Short: "Give a new person (or one who lost their key) a one-time token to enroll with (officer)",
		Long: "The token lets NAME enroll once, before it expires, for a certificate of ROLE (govnetctl person enroll):\n" +
			"the person makes their key on their own machine, and the name and role come from the invitation.\n" +
			"Inviting a registered person replaces their certificate; the one before is revoked (superseded).\n" +
			"In four-eyes mode this is a request: govnetctl request invite NAME --role ROLE.",
		Example: "  govnetctl person invite dora --role auditor --write /tmp/dora.token\n" +
			"  govnetctl person invite dora --role auditor --key-sha256 9f86d081884c7d65... --write /tmp/dora.token",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.TTL = ttl.String()
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				tok, err := c.Invite(ctx, args[0], req)
				if err != nil {
					return err
				}
				return a.printToken(tok, out)
			})
		},
	}
	invite.Flags().StringVar(&req.Role, "role", "", "operator, officer, auditor or custodian")
	invite.Flags().StringVar(&req.KeySHA256, "key-sha256", "", "only this key may enroll: the SHA-256 that `govnetctl person key` printed for the invitee")
	invite.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid (at most 168h)")
	invite.Flags().StringVar(&out, "write", "", "write the token to this file (mode 0600) instead of printing it")
	invite.MarkFlagRequired("role")
	return invite
}

// printToken writes a token to the file out (mode 0600), or prints it.
func (a *app) printToken(tok *api.TokenResponse, out string) error {
	if out != "" {
		if err := os.WriteFile(out, []byte(tok.Token+"\n"), 0o600); err != nil {
			return err
		}
		tok = &api.TokenResponse{Gateway: tok.Gateway, Person: tok.Person, Role: tok.Role, Token: "(in " + out + ")", Expires: tok.Expires}
	}
	return a.print(tok, "FOR\tEXPIRES\tTOKEN", func(w io.Writer) {
		fmt.Fprintf(w, "%s\t%s\t%s\n", tokenSubject(tok), tok.Expires.Format(time.RFC3339), tok.Token)
	})
}

func tokenSubject(t *api.TokenResponse) string {
	if t.Person != "" {
		return t.Person + " (" + t.Role + ")"
	}
	return t.Gateway
}

func (a *app) personKeyCmd() *cobra.Command {
	var keyType string
	key := &cobra.Command{
		Use:   "key",
		Short: "Make the key you will enroll with, before you are invited, and print its SHA-256 for the invitation",
		Long: "Writes a new private key beside --key (with .new appended, mode 0600), or keeps the one already there,\n" +
			"and prints the SHA-256 of its public key. Give that to the officer who invites you: an invitation that\n" +
			"names it (in four-eyes mode every one does) enrolls that key and no other. Then `person enroll` uses it.",
		Example: "  govnetctl --key ~/.config/govnet/dora.key person key",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if a.cfg.Key == "" {
				return fmt.Errorf("--key (or key in the config file) must name where your key goes")
			}
			k, reused, err := credfile.PendingKey(a.cfg.Key, keyType)
			if err != nil {
				return err
			}
			sum, err := credfile.KeySHA256(k.Public())
			if err != nil {
				return err
			}
			state := "new"
			if reused {
				state = "kept"
			}
			return a.print(map[string]string{"key": a.cfg.Key + credfile.Next, "key_sha256": sum}, "KEY\tSHA-256", func(w io.Writer) {
				fmt.Fprintf(w, "%s (%s)\t%s\n", a.cfg.Key+credfile.Next, state, sum)
			})
		},
	}
	key.Flags().StringVar(&keyType, "key-type", credfile.P256, "p256, p384 or rsa3072 (for a new key)")
	return key
}

func (a *app) enrollPersonCmd() *cobra.Command {
	var tokenFile, keyType string
	enroll := &cobra.Command{
		Use:   "enroll NAME --token-file FILE",
		Short: "Get your first certificate with the token an officer gave you (no certificate needed)",
		Long: "Makes your private key here, sends a certificate request with the token, and writes the key to --key\n" +
			"(mode 0600) and the certificate chain to --cert; neither may exist yet. Needs --controller and --root.",
		Example: "  govnetctl --controller https://ctl1.govnet:7443 --root root.pem --cert ~/.config/govnet/dora.crt \\\n" +
			"    --key ~/.config/govnet/dora.key person enroll dora --token-file /tmp/dora.token",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.cfg.Cert == "" || a.cfg.Key == "" {
				return fmt.Errorf("--cert and --key (or cert and key in the config file) must name where to write your certificate and key")
			}
			for _, p := range []string{a.cfg.Cert, a.cfg.Key} {
				if _, err := os.Stat(p); err == nil {
					return fmt.Errorf("%s exists: to renew a certificate use govnetctl person renew", p)
				}
			}
			token, err := readToken(tokenFile)
			if err != nil {
				return err
			}
			c, err := a.anonClient()
			if err != nil {
				return err
			}
			key, _, err := credfile.PendingKey(a.cfg.Key, keyType)
			if err != nil {
				return err
			}
			csr, err := ca.NewCSR(key, args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			got, err := c.EnrollPerson(ctx, api.PersonEnrollRequest{Name: args[0], Token: token, CSR: csrPEM(csr)})
			if err != nil {
				return err
			}
			return a.installCert(got)
		},
	}
	enroll.Flags().StringVar(&tokenFile, "token-file", "", "file holding the token (- for standard input)")
	enroll.Flags().StringVar(&keyType, "key-type", credfile.P256, "p256, p384 or rsa3072")
	enroll.MarkFlagRequired("token-file")
	return enroll
}

func (a *app) renewPersonCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "renew",
		Short: "Renew your own certificate, with a new key, before it expires",
		Long: "Makes a new key of the same type beside your current one (--key with .new appended), renews with your\n" +
			"current certificate and puts the new key and certificate in place of the old. govnetctl warns once your\n" +
			"certificate is two thirds into its life. If the answer is lost, run it again: it renews for the same new key.",
		Example: "  govnetctl person renew",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a.renewing = true
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				pair, err := tls.LoadX509KeyPair(a.cfg.Cert, a.cfg.Key)
				if err != nil {
					return err
				}
				kind, err := credfile.KindOf(pair.Leaf.PublicKey)
				if err != nil {
					return err
				}
				key, reused, err := credfile.PendingKey(a.cfg.Key, kind)
				if err != nil {
					return err
				}
				if reused {
					fmt.Fprintf(os.Stderr, "govnetctl: renewing for the key in %s%s, left by a renewal that did not finish\n", a.cfg.Key, credfile.Next)
				}
				csr, err := ca.NewCSR(key, pair.Leaf.Subject.CommonName)
				if err != nil {
					return err
				}
				got, err := c.RenewPerson(ctx, api.PersonRenewRequest{CSR: csrPEM(csr)})
				if err != nil {
					return err
				}
				return a.installCert(got)
			})
		},
	}
}

// installCert puts a new certificate in place with the key waiting for it.
func (a *app) installCert(got *api.PersonCertResponse) error {
	if err := credfile.Install(a.cfg.Cert, a.cfg.Key, []byte(got.Certificate)); err != nil {
		return err
	}
	return a.print(got, "NAME\tROLE\tSERIAL\tEXPIRES", func(w io.Writer) {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", got.Name, got.Role, got.Serial, got.Expires.Format(time.RFC3339))
	})
}

func csrPEM(csr *x509.CertificateRequest) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}))
}

// readToken reads a one-time token from path, or standard input for "-".
func readToken(path string) (string, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(io.LimitReader(os.Stdin, 4096))
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return "", err
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("%s: no token in it", path)
	}
	return token, nil
}

const personHeader = "NAME\tROLE\tSTATUS\tSERIAL"

func personRow(w io.Writer, p api.Person) {
	fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", p.Name, p.Role, p.Status, p.Serial)
}

func (a *app) requestCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "request",
		Short: "Four-eyes changes: one person asks, an officer who is someone else approves",
	}
	create := a.createRequest
	var ttl time.Duration
	var reason string
	var reenroll bool
	token := &cobra.Command{
		Use:   "token GATEWAY",
		Short: "Ask for a one-time enrollment token for a pending gateway, or with --reenroll an enrolled one",
		Example: "  govnetctl request token h29-gw1 --ttl 30m\n" +
			"  govnetctl request token h29-gw1 --reenroll --reason 'certificate expired during the outage'",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				return create(ctx, c, api.RequestCreate{Kind: api.RequestToken, Gateway: args[0], TTL: ttl.String(), Reason: reason, Reenroll: reenroll})
			})
		},
	}
	token.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid once approved")
	token.Flags().BoolVar(&reenroll, "reenroll", false, "a token that re-enrolls an enrolled gateway (new keys, same name and address)")
	policy := &cobra.Command{
		Use:     "policy FILE",
		Short:   "Ask for a policy to be published (it is validated and tested now, and again on approval)",
		Example: "  govnetctl request policy deploy/lab/policy.yaml",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				return create(ctx, c, api.RequestCreate{Kind: api.RequestPolicy, PolicyName: filepath.Base(args[0]), PolicySource: string(src), Reason: reason})
			})
		},
	}
	var revSerial, revReason string
	revoke := &cobra.Command{
		Use:   "revoke [GATEWAY | --serial SERIAL] [--revocation-reason REASON]",
		Short: "Ask for a gateway, and every certificate it holds, or one certificate to be revoked",
		Example: "  govnetctl request revoke h29-gw1 --revocation-reason keyCompromise --reason 'stolen'\n" +
			"  govnetctl request revoke --serial 5cfdc3e55583fedb1e12658813d367e4 --revocation-reason superseded",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rc := api.RequestCreate{Kind: api.RequestRevoke, Serial: revSerial, RevocationReason: revReason, Reason: reason}
			if len(args) == 1 {
				rc.Gateway = args[0]
			}
			if (rc.Gateway == "") == (rc.Serial == "") {
				return fmt.Errorf("name a gateway or a --serial, not both")
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				return create(ctx, c, rc)
			})
		},
	}
	revoke.Flags().StringVar(&revSerial, "serial", "", "the certificate serial (hex) to revoke instead of a gateway")
	revoke.Flags().StringVar(&revReason, "revocation-reason", "", "RFC 5280 reason: keyCompromise, affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn, ... (default unspecified)")
	restore := &cobra.Command{
		Use:   "restore FILE",
		Short: "Ask for a backup to be restored (officer; in four-eyes mode `cluster snapshot restore` needs it approved)",
		Long: "Sends the backup's SHA-256, not the backup. Once another officer approved the request, an officer\n" +
			"has an hour to run `govnetctl cluster snapshot restore FILE` with that very file.",
		Example: "  govnetctl request restore /var/backups/govnet-2026-11-23.snap --reason 'undo the 14:02 import'",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("read %s: %w", args[0], err)
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				return create(ctx, c, api.RequestCreate{Kind: api.RequestRestore, BackupSHA256: hex.EncodeToString(h.Sum(nil)), Reason: reason})
			})
		},
	}
	var inviteRole, inviteKey string
	invite := &cobra.Command{
		Use:   "invite NAME --role ROLE --key-sha256 HEX",
		Short: "Ask for a one-time token with which a person enrolls their key for a certificate of ROLE (officer)",
		Long: "The invitee runs `govnetctl person key` and tells you the SHA-256 it prints (in person, or by a channel\n" +
			"you trust); only that key can enroll with the token. The officer who approves it checks the fingerprint\n" +
			"with the invitee too, and gets the token in the answer (govnetctl request approve ID --write FILE).",
		Example: "  govnetctl request invite dora --role auditor --key-sha256 9f86d081884c7d65... --ttl 24h --reason 'new security officer'",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				return create(ctx, c, api.RequestCreate{Kind: api.RequestInvite, PersonName: args[0], PersonRole: inviteRole, KeySHA256: inviteKey, TTL: ttl.String(), Reason: reason})
			})
		},
	}
	invite.Flags().StringVar(&inviteRole, "role", "", "operator, officer, auditor or custodian")
	invite.Flags().StringVar(&inviteKey, "key-sha256", "", "the SHA-256 of the invitee's key, as `govnetctl person key` printed it")
	invite.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid once approved")
	invite.MarkFlagRequired("role")
	invite.MarkFlagRequired("key-sha256")
	var personRole, personSerial string
	personReq := &cobra.Command{
		Use:     "person NAME --role ROLE --serial HEX",
		Short:   "Ask for a person's certificate to be registered (officer; four-eyes mode refuses `person add`)",
		Example: "  govnetctl request person alice --role operator --serial 3f2a9c... --reason 'new network operator'",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				return create(ctx, c, api.RequestCreate{Kind: api.RequestPerson, PersonName: args[0], PersonRole: personRole, Serial: personSerial, Reason: reason})
			})
		},
	}
	personReq.Flags().StringVar(&personRole, "role", "", "operator, officer, auditor or custodian")
	personReq.Flags().StringVar(&personSerial, "serial", "", "the serial (hex) of the person's certificate")
	personReq.MarkFlagRequired("role")
	personReq.MarkFlagRequired("serial")
	for _, c := range []*cobra.Command{token, policy, revoke, restore, personReq, invite} {
		c.Flags().StringVar(&reason, "reason", "", "why, for the approver and the audit log")
	}
	list := &cobra.Command{
		Use:     "list",
		Short:   "List requests",
		Example: "  govnetctl request list",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				rs, err := c.Requests(ctx)
				if err != nil {
					return err
				}
				return a.print(rs, requestHeader, func(w io.Writer) {
					for _, r := range rs {
						requestRow(w, r)
					}
				})
			})
		},
	}
	var tokenOut string
	approve := &cobra.Command{
		Use:   "approve ID",
		Short: "Approve a request (officer; not your own). A token request's answer carries the token.",
		Example: "  govnetctl request approve 9c1f0e2a7b3d4c5e\n" +
			"  govnetctl request approve 9c1f0e2a7b3d4c5e --write /tmp/h29-gw1.token",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				r, err := c.ApproveRequest(ctx, args[0])
				if err != nil {
					return err
				}
				if tokenOut != "" && r.Token != nil {
					if err := os.WriteFile(tokenOut, []byte(r.Token.Token+"\n"), 0o600); err != nil {
						return err
					}
				}
				return a.print(r, requestHeader, func(w io.Writer) {
					requestRow(w, *r)
					if r.Token != nil {
						fmt.Fprintf(w, "\ntoken for %s (expires %s): %s\n", tokenSubject(r.Token), r.Token.Expires.Format(time.RFC3339), r.Token.Token)
					}
				})
			})
		},
	}
	approve.Flags().StringVar(&tokenOut, "write", "", "write an approved token to this file (mode 0600)")
	reject := &cobra.Command{
		Use:     "reject ID",
		Short:   "Reject a request (officer)",
		Example: "  govnetctl request reject 9c1f0e2a7b3d4c5e",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				r, err := c.RejectRequest(ctx, args[0])
				if err != nil {
					return err
				}
				return a.print(r, requestHeader, func(w io.Writer) { requestRow(w, *r) })
			})
		},
	}
	cmd.AddCommand(token, policy, revoke, restore, personReq, invite, list, approve, reject)
	return cmd
}

// createRequest files a four-eyes request and prints it.
func (a *app) createRequest(ctx context.Context, c *api.Client, rc api.RequestCreate) error {
	r, err := c.CreateRequest(ctx, rc)
	if err != nil {
		return err
	}
	return a.print(r, requestHeader, func(w io.Writer) { requestRow(w, *r) })
}

const requestHeader = "ID\tKIND\tSUBJECT\tSTATUS\tREQUESTER\tAPPROVER\tCREATED"

func requestRow(w io.Writer, r api.Request) {
	subject := r.Gateway
	if r.Kind == api.RequestPolicy {
		subject = r.PolicyName
		if r.PolicyVersion > 0 {
			subject += fmt.Sprintf(" (v%d)", r.PolicyVersion)
		}
	}
	if r.Kind == api.RequestRevoke && r.Serial != "" {
		subject = r.Serial
	}
	if r.Kind == api.RequestRestore {
		subject = "backup sha256:" + r.BackupSHA256[:min(16, len(r.BackupSHA256))]
	}
	if r.Kind == api.RequestPerson || r.Kind == api.RequestInvite {
		subject = r.PersonName + " (" + r.PersonRole + ")"
	}
	if r.Kind == api.RequestInvite {
		subject += " key sha256:" + r.KeySHA256[:min(16, len(r.KeySHA256))]
	}
	if r.Kind == api.RequestToken && r.Reenroll {
		subject += " (re-enroll)"
	}
	fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Kind, dash(subject), r.Status, r.Requester, dash(r.Approver), r.Created.Format(time.RFC3339))
}
