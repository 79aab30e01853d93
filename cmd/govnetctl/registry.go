package main

import (
	"context"
	"encoding/json"

	"github.com/spf13/cobra"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/policy"
)

func (a *app) registryCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "registry", Short: "Export the registry for offline policy checks"}
	export := &cobra.Command{
		Use:   "export",
		Short: "Write the live registry (agencies and gateways) as a registry file",
		Long: "Writes the agencies and gateways the controller knows as JSON, in the form that\n" +
			"`govnetctl policy check --registry` reads, so that a policy can be checked and its tests\n" +
			"run offline, against the network as it is.",
		Example: "  govnetctl registry export > registry.json\n" +
			"  govnetctl policy check new-policy.yaml --registry registry.json",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				var rf policy.RegistryFile
				var err error
				if rf.Agencies, rf.Gateways, err = registry(ctx, c); err != nil {
					return err
				}
				enc := json.NewEncoder(a.out)
				enc.SetIndent("", "  ")
				return enc.Encode(rf)
			})
		},
	}
	cmd.AddCommand(export)
	return cmd
}
