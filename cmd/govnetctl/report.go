package main

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/spf13/cobra"
)

// csvOutput is the annotation of a command that accepts -o csv.
const csvOutput = "govnetctl/csv"

func (a *app) reportCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "report", Short: "Reports for officers and auditors"}
	var window time.Duration
	coverage := &cobra.Command{
		Use:   "coverage",
		Short: "Per province and level: registered agencies with a healthy enrolled gateway",
		Long: "An agency is covered when at least one of its enrolled gateways is healthy: it reported\n" +
			"within --window (default 5m), its certificate is valid (not expired, not revoked) and the\n" +
			"ruleset it reported is the one its current view compiles to. Provinces are ranked by\n" +
			"coverage; an agency counts in the province its registered parent chain leads to.\n" +
			"The gateway columns say why enrolled gateways are not healthy (one may have several causes).",
		Example: "  govnetctl report coverage\n" +
			"  govnetctl report coverage --window 15m -o csv > coverage-2026-11.csv\n" +
			"  govnetctl report coverage -o json | jq '.provinces[] | select(.coverage < 0.9)'",
		Annotations: map[string]string{csvOutput: "yes"},
		Args:        cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if window < 0 {
				return fmt.Errorf("--window %s: want a positive duration such as 5m or 1h", window)
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				rep, err := c.Coverage(ctx, window)
				if err != nil {
					return err
				}
				switch a.output {
				case "csv":
					return coverageCSV(a.out, rep)
				case "json":
					return a.print(rep, "", nil)
				}
				return coverageTable(a.out, rep)
			})
		},
	}
	coverage.Flags().DurationVar(&window, "window", 0, "a gateway is healthy only if it reported within this long (default 5m, at most 744h)")
	metrics := &cobra.Command{
		Use:   "metrics",
		Short: "The answering node's metrics, in Prometheus text format (operator, auditor)",
		Long: "What Prometheus scrapes at https://<api_addr>/metrics with an operator's or an auditor's\n" +
			"certificate (docs/installer.md, \"Monitoring\"). The certificate and gateway series come from\n" +
			"the replicated state; raft, views and the Go runtime are the answering node's.",
		Example: "  govnetctl report metrics | grep '^govnet_gateways'",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				text, err := c.Metrics(ctx)
				if err != nil {
					return err
				}
				_, err = fmt.Fprint(cmd.OutOrStdout(), text)
				return err
			})
		},
	}
	cmd.AddCommand(coverage, metrics)
	return cmd
}

func percent(c api.Coverage) string {
	if c.Agencies == 0 {
		return "-"
	}
	return strconv.FormatFloat(100*c.Coverage, 'f', 1, 64) + "%"
}

func coverageTable(w io.Writer, rep *api.CoverageReport) error {
	fmt.Fprintf(w, "Coverage at %s (raft index %d): healthy = reported within %s, valid certificate, ruleset as expected\n\n",
		rep.Generated.Format(time.RFC3339), rep.RaftIndex, rep.Window)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RANK\tPROVINCE\tNAME\tAGENCIES\tENROLLED\tHEALTHY\tCOVERAGE\tGATEWAYS\tSTALE\tCERT\tRULESET")
	for _, p := range rep.Provinces {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", p.Rank, p.Code, p.Name, coverageCells(p))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LEVEL\tAGENCIES\tENROLLED\tHEALTHY\tCOVERAGE\tGATEWAYS\tSTALE\tCERT\tRULESET")
	for _, l := range rep.Levels {
		fmt.Fprintf(tw, "%s\t%s\n", l.Level, coverageCells(l))
	}
	fmt.Fprintf(tw, "total\t%s\n", coverageCells(rep.Total))
	return tw.Flush()
}

func coverageCells(c api.Coverage) string {
	return fmt.Sprintf("%d\t%d\t%d\t%s\t%d\t%d\t%d\t%d", c.Agencies, c.Enrolled, c.Healthy, percent(c), c.Gateways, c.Stale, c.CertInvalid, c.RulesetNotOK)
}

// coverageCSV writes one row per province, per level and the total, with
// a header; coverage is a ratio in [0, 1].
func coverageCSV(w io.Writer, rep *api.CoverageReport) error {
	cw := csv.NewWriter(w)
	cw.Write([]string{"scope", "rank", "code", "name", "level", "agencies", "enrolled", "healthy", "coverage",
		"gateways", "healthy_gateways", "stale", "cert_invalid", "ruleset_not_ok", "window", "generated", "raft_index"})
	row := func(scope string, c api.Coverage) {
		rank := ""
		if c.Rank > 0 {
			rank = strconv.Itoa(c.Rank)
		}
		cw.Write([]string{scope, rank, c.Code, c.Name, c.Level,
			strconv.Itoa(c.Agencies), strconv.Itoa(c.Enrolled), strconv.Itoa(c.Healthy), strconv.FormatFloat(c.Coverage, 'f', 4, 64),
			strconv.Itoa(c.Gateways), strconv.Itoa(c.HealthyGWs), strconv.Itoa(c.Stale), strconv.Itoa(c.CertInvalid), strconv.Itoa(c.RulesetNotOK),
			rep.Window, rep.Generated.Format(time.RFC3339), strconv.FormatUint(rep.RaftIndex, 10)})
	}
	for _, p := range rep.Provinces {
		row("province", p)
	}
	for _, l := range rep.Levels {
		row("level", l)
	}
	row("total", rep.Total)
	cw.Flush()
	return cw.Error()
}
