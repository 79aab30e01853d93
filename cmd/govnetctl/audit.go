package main

import (
	"bufio"
	"cmp"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/spf13/cobra"
)

func (a *app) auditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Export and verify the hash-chained audit log (auditor, officer)"}
	var out, cpOut string
	var since uint64
	export := &cobra.Command{
		Use:   "export",
		Short: "Write the audit chain as JSON lines, and optionally a checkpoint of its head signed by the node",
		Example: "  govnetctl audit export --out audit.jsonl --checkpoint audit.checkpoint.json\n" +
			"  govnetctl audit export --since 1200",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.callFor(cmd, transferTimeout, func(ctx context.Context, c *api.Client) error {
				w := a.out
				if out != "" {
					f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
					if err != nil {
						return err
					}
					defer f.Close()
					w = f
				}
				// The checkpoint first: every entry it covers is in the export that follows.
				if cpOut != "" {
					cp, err := c.AuditCheckpoint(ctx)
					if err != nil {
						return err
					}
					b, _ := json.MarshalIndent(cp, "", "  ")
					if err := os.WriteFile(cpOut, append(b, '\n'), 0o644); err != nil {
						return err
					}
				}
				bw := bufio.NewWriter(w)
				enc := json.NewEncoder(bw)
				n := 0
				err := c.Linearizable().AuditExport(ctx, since, func(e api.AuditEntry) error { n++; return enc.Encode(e) })
				if err != nil {
					return err
				}
				if err := bw.Flush(); err != nil {
					return err
				}
				if out != "" {
					fmt.Fprintf(os.Stderr, "wrote %d entries to %s\n", n, out)
				}
				return nil
			})
		},
	}
	export.Flags().StringVar(&out, "out", "", "file to write (default standard output)")
	export.Flags().StringVar(&cpOut, "checkpoint", "", "also write a signed checkpoint of the head to this file")
	export.Flags().Uint64Var(&since, "since", 0, "only entries after this seq")
	var cpIn string
	var crlIn []string
	verify := &cobra.Command{
		Use:   "verify FILE",
		Short: "Recompute an exported chain offline; name the first entry altered, removed or reordered",
		Long: "Reads the export's lines, which must be exactly as audit export writes them, and checks every\n" +
			"entry's hash and its link to the one before. With --checkpoint it also checks each checkpoint's\n" +
			"signature by a controller node of this cluster (against --root, at the time it was signed) and\n" +
			"that the export holds the signed head unchanged, which catches entries rewritten, or cut from\n" +
			"the end, up to it. With --crl it refuses a checkpoint whose signer's certificate, or the\n" +
			"intermediate that issued it, was revoked before it signed, or for key compromise at any time.\n" +
			"It then says which entries no checkpoint covers (NOT COVERED), and what it could not check\n" +
			"(NOT CHECKED): without a checkpoint, the chain proves nothing, as anyone can recompute one.\n" +
			"Needs no controller.",
		Example: "  govnetctl audit verify audit.jsonl --checkpoint audit.checkpoint.json --root root.pem\n" +
			"  curl -so ctl1.crl http://ctl1.govnet.example:7444/crl/ISSUER.crl   # the URL a NOT CHECKED line names\n" +
			"  govnetctl audit verify audit.jsonl --checkpoint checkpoints.json --root root.pem --crl ctl1.crl --crl root.crl",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var cps []api.AuditCheckpoint
			var roots *x509.CertPool
			if cpIn != "" {
				var err error
				if roots, err = a.roots("--checkpoint"); err != nil {
					return err
				}
				if cps, err = readCheckpoints(cpIn); err != nil {
					return err
				}
			}
			var crls []*x509.RevocationList
			for _, f := range crlIn {
				crl, err := readCRL(f)
				if err != nil {
					return err
				}
				crls = append(crls, crl)
			}
			return verifyAuditFile(a.out, args[0], cps, roots, crls)
		},
	}
	verify.Flags().StringVar(&cpIn, "checkpoint", "", "signed checkpoints: one written by audit export --checkpoint, or the list audit checkpoints -o json writes")
	verify.Flags().StringSliceVar(&crlIn, "crl", nil, "CRLs (DER or PEM) of the issuers in the checkpoints' signers' chains (the intermediate's, the root's), to check their revocation; repeatable")
	checkpoints := &cobra.Command{
		Use:   "checkpoints",
		Short: "List the signed checkpoints of the chain's head that the leaders recorded",
		Long: "The leader signs the chain's head with its node key every audit_checkpoint_every (default\n" +
			"one hour) when the chain has grown, and records the checkpoint in the replicated state, so\n" +
			"any node lists them all. Save them with -o json and give the file to audit verify --checkpoint.",
		Example: "  govnetctl audit checkpoints\n" +
			"  govnetctl audit checkpoints -o json > checkpoints.json\n" +
			"  govnetctl audit export --out audit.jsonl\n" +
			"  govnetctl audit verify audit.jsonl --checkpoint checkpoints.json --root root.pem",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				cps, err := c.AuditCheckpoints(ctx)
				if err != nil {
					return err
				}
				return a.print(cps, "SEQ\tSIGNED\tNODE\tHASH", func(w io.Writer) {
					for _, cp := range cps {
						fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", cp.Seq, cp.At.Format(time.RFC3339), cp.Node, cp.Hash)
					}
				})
			})
		},
	}
	cmd.AddCommand(export, verify, checkpoints)
	return cmd
}

func readAudit(path string) ([]api.AuditEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return api.ReadAuditExport(f)
}

// verifyAuditFile checks the export in file against the checkpoints cps
// (none without --checkpoint), whose signers' chains must lead to roots,
// and says what they prove: the checkpoints, oldest first, and which
// entries no checkpoint covers.
func verifyAuditFile(w io.Writer, file string, cps []api.AuditCheckpoint, roots *x509.CertPool, crls []*x509.RevocationList) error {
	entries, err := readAudit(file)
	if err == nil {
		err = api.VerifyAudit(entries)
	}
	if err != nil {
		var ae *api.AuditError
		if errors.As(err, &ae) {
			return fmt.Errorf("%s: NOT VALID at %w", file, err)
		}
		return err
	}
	if len(entries) == 0 {
		return fmt.Errorf("%s: NOT VALID: no entries: an export holds at least the entries of the cluster's initialisation", file)
	}
	first, last := entries[0].Seq, entries[len(entries)-1].Seq
	cps = slices.Clone(cps)
	slices.SortStableFunc(cps, func(x, y api.AuditCheckpoint) int { return cmp.Compare(x.Seq, y.Seq) })
	covered := first - 1   // the last seq a checkpoint proves
	var unchecked []string // certificates of signers' chains whose revocation no CRL given tells
	for _, cp := range cps {
		chain, err := api.VerifyCheckpoint(cp, roots, entries)
		if errors.Is(err, api.ErrCheckpointBeforeExport) {
			fmt.Fprintf(w, "%s: checkpoint seq %d not checked: the export starts at seq %d\n", file, cp.Seq, first)
			continue
		}
		if err == nil {
			if id, ierr := ca.IdentityOf(chain[0]); ierr != nil || id.Kind != ca.KindNode {
				err = fmt.Errorf("signed by %s (certificate %s), which is not a controller node's certificate", chain[0].Subject.CommonName, ca.Serial(chain[0]))
			} else if id.Name != cp.Node {
				err = fmt.Errorf("signed by node %s (certificate %s), and the checkpoint names node %s", id.Name, ca.Serial(chain[0]), cp.Node)
			}
		}
		revocation := ""
		if err == nil {
			var used []*x509.RevocationList
			used, err = api.CheckSignerRevocation(chain, cp.At, crls)
			var of []string
			for i, crl := range used {
				if crl != nil {
					of = append(of, fmt.Sprintf("%s's of %s", chain[i+1].Subject.CommonName, crl.ThisUpdate.UTC().Format(time.RFC3339)))
					continue
				}
				u := fmt.Sprintf("whether certificate %s (%s) was revoked: give --crl with %s's CRL", ca.Serial(chain[i]), chain[i].Subject.CommonName, chain[i+1].Subject.CommonName)
				if len(chain[i].CRLDistributionPoints) > 0 {
					u += " (" + strings.Join(chain[i].CRLDistributionPoints, " ") + ")"
				}
				if !slices.Contains(unchecked, u) {
					unchecked = append(unchecked, u)
				}
			}
			if err == nil && len(of) > 0 {
				revocation = ", not revoked on the CRL " + strings.Join(of, ", the CRL ")
			}
		}
		if err != nil {
			if covered >= first {
				err = fmt.Errorf("%w (seq %d to %d verified by the checkpoint of seq %d: what was altered or removed is after it)", err, first, covered, covered)
			}
			return fmt.Errorf("%s: NOT VALID: checkpoint seq %d: %w", file, cp.Seq, err)
		}
		fmt.Fprintf(w, "%s: checkpoint seq %d signed by node %s (certificate %s) at %s verifies%s\n", file, cp.Seq, cp.Node, ca.Serial(chain[0]), cp.At.UTC().Format(time.RFC3339), revocation)
		covered = max(covered, cp.Seq)
	}
	for _, u := range unchecked {
		fmt.Fprintf(w, "%s: NOT CHECKED: %s\n", file, u)
	}
	fmt.Fprintf(w, "%s: %d entries, seq %d to %d, each linked to the one before\n", file, len(entries), first, last)
	if first > 1 {
		fmt.Fprintf(w, "%s: NOT COVERED: seq 1 to %d are not in this export; that seq %d follows them is taken on trust\n", file, first-1, first)
	}
	switch {
	case len(cps) == 0:
		fmt.Fprintf(w, "%s: NOT COVERED: seq %d to %d: no signed checkpoint given (--checkpoint), and anyone can recompute a chain: nothing proves these entries are the cluster's\n", file, first, last)
	case covered < first:
		fmt.Fprintf(w, "%s: NOT COVERED: seq %d to %d: no checkpoint given signs an entry of this export\n", file, first, last)
	default:
		fmt.Fprintf(w, "%s: seq %d to %d verified against the checkpoint of seq %d\n", file, first, covered, covered)
		if covered < last {
			fmt.Fprintf(w, "%s: NOT COVERED: seq %d to %d come after the last checkpoint: nothing proves they were not altered, nor that none followed them (audit export --checkpoint signs the head)\n", file, covered+1, last)
		}
	}
	return nil
}

// readCheckpoints reads one checkpoint (audit export --checkpoint) or a
// list of them (audit checkpoints -o json).
func readCheckpoints(path string) ([]api.AuditCheckpoint, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cps []api.AuditCheckpoint
	if err := json.Unmarshal(b, &cps); err != nil {
		var cp api.AuditCheckpoint
		if err := json.Unmarshal(b, &cp); err != nil {
			return nil, fmt.Errorf("%s: neither a checkpoint nor a list of them: %w", path, err)
		}
		cps = []api.AuditCheckpoint{cp}
	}
	if len(cps) == 0 {
		return nil, fmt.Errorf("%s: no checkpoints", path)
	}
	return cps, nil
}

// readCRL reads a CRL file, DER or PEM.
func readCRL(path string) (*x509.RevocationList, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "X509 CRL" {
			return nil, fmt.Errorf("%s: a PEM %q block, not an X509 CRL", path, blk.Type)
		}
		b = blk.Bytes
	}
	crl, err := x509.ParseRevocationList(b)
	if err != nil {
		return nil, fmt.Errorf("%s: not a CRL: %w", path, err)
	}
	return crl, nil
}
