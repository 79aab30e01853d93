package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/govnet/govnet/api"
)

// policyReviewCmds are the four-eyes path of a policy change, under
// `policy`: an operator proposes, an officer who is someone else approves.
// They are the `request policy` and `request approve` calls, named as an
// operator looks for them.
func (a *app) policyReviewCmds() []*cobra.Command {
	var reason string
	propose := &cobra.Command{
		Use:   "propose FILE",
		Short: "Propose a policy for publication; an officer approves it (four-eyes)",
		Long: "The controller checks the draft now as publication would (names, compile, embedded\n" +
			"tests): a policy whose tests fail cannot be proposed. The answer is a request ID for an\n" +
			"officer to approve with `govnetctl policy approve ID`; it is checked again on approval.",
		Example: "  govnetctl policy plan policy.yaml\n" +
			"  govnetctl policy propose policy.yaml --reason 'open NDXP to the new communes'",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				return a.createRequest(ctx, c, api.RequestCreate{Kind: api.RequestPolicy, PolicyName: filepath.Base(args[0]), PolicySource: string(src), Reason: reason})
			})
		},
	}
	propose.Flags().StringVar(&reason, "reason", "", "why, for the approver and the audit log")
	approve := &cobra.Command{
		Use:   "approve ID",
		Short: "Approve a proposed policy and publish it (officer; not your own proposal)",
		Example: "  govnetctl request list\n" +
			"  govnetctl policy approve 9c1f0e2a7b3d4c5e",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				rs, err := c.Requests(ctx)
				if err != nil {
					return err
				}
				var found *api.Request
				for i := range rs {
					if rs[i].ID == args[0] {
						found = &rs[i]
					}
				}
				switch {
				case found == nil:
					return fmt.Errorf("no request %s: `govnetctl request list` shows the open ones", args[0])
				case found.Kind != api.RequestPolicy:
					return fmt.Errorf("request %s is a %s request, not a policy: approve it with `govnetctl request approve %s`", args[0], found.Kind, args[0])
				}
				r, err := c.ApproveRequest(ctx, args[0])
				if err != nil {
					return err
				}
				return a.print(r, requestHeader, func(w io.Writer) { requestRow(w, *r) })
			})
		},
	}
	return []*cobra.Command{propose, approve}
}
