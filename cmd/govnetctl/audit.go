package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/govnet/govnet/api"
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
	verify := &cobra.Command{
		Use:   "verify FILE",
		Short: "Recompute an exported chain offline; name the first entry altered, removed or reordered",
		Long: "Checks every entry's hash and its link to the one before. With --checkpoint it also checks the\n" +
			"node's signature (against --root) and that the export reaches the signed head unchanged, which\n" +
			"catches entries cut from the end. Needs no controller.",
		Example: "  govnetctl audit verify audit.jsonl --checkpoint audit.checkpoint.json --root root.pem",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			entries, err := readAudit(args[0])
			if err == nil {
				err = api.VerifyAudit(entries)
			}
			if err != nil {
				var ae *api.AuditError
				if errors.As(err, &ae) {
					return fmt.Errorf("%s: NOT VALID at %w", args[0], err)
				}
				return err
			}
			if cpIn != "" {
				roots, err := a.roots("--checkpoint")
				if err != nil {
					return err
				}
				cps, err := readCheckpoints(cpIn)
				if err != nil {
					return err
				}
				for _, cp := range cps {
					if err := api.VerifyCheckpoint(cp, roots, entries); err != nil {
						return fmt.Errorf("%s: NOT VALID: checkpoint seq %d: %w", args[0], cp.Seq, err)
					}
					fmt.Fprintf(a.out, "%s: checkpoint seq %d signed by node %s at %s verifies\n", args[0], cp.Seq, cp.Node, cp.At.Format(time.RFC3339))
				}
			}
			last := uint64(0)
			if len(entries) > 0 {
				last = entries[len(entries)-1].Seq
			}
			fmt.Fprintf(a.out, "%s: %d entries, chain intact up to seq %d\n", args[0], len(entries), last)
			return nil
		},
	}
	verify.Flags().StringVar(&cpIn, "checkpoint", "", "signed checkpoints: one written by audit export --checkpoint, or the list audit checkpoints -o json writes")
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
