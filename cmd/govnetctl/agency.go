package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/cobra"
	"golang.org/x/text/runes"
	"golang.org/x/text/transform"
	"golang.org/x/text/unicode/norm"

	"github.com/govnet/govnet/agency"
	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/internal/agencycsv"
	"github.com/govnet/govnet/policy"
)

func (a *app) agencyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "agency", Short: "Register, import, list, merge, re-parent and close agencies"}
	cmd.AddCommand(a.agencyAddCmd(), a.agencyListCmd(), a.agencyImportCmd(), a.agencyTreeCmd(), a.agencyShowCmd(),
		a.agencyMergeCmd(), a.agencyReparentCmd(), a.agencyCloseCmd())
	return cmd
}

const agencyHeader = "CODE\tLEVEL\tPARENT\tSTATUS\tNAME"

func agencyRow(w io.Writer, a api.Agency) {
	status := agencyStatus(a)
	if a.MergedInto != "" {
		status += " (into " + a.MergedInto + ")"
	}
	fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", a.Code, a.Level, dash(a.Parent), status, a.Name)
}

func agencyStatus(a api.Agency) string {
	if a.Status == "" {
		return api.AgencyActive
	}
	return a.Status
}

// checkCodes checks agency codes given on the command line by the rule the
// controller applies (agency.Parse), so that a mistyped code is named as
// such rather than answered "not registered", or with an empty list.
func checkCodes(codes ...string) error {
	for _, c := range codes {
		if _, err := agency.Parse(c); err != nil {
			return err
		}
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (a *app) agencyAddCmd() *cobra.Command {
	var name, parent string
	add := &cobra.Command{
		Use:   "add CODE --name NAME [--parent CODE]",
		Short: "Register an agency (its parent must be registered first)",
		Long: "The parent is the code's own (000.12.04.H29 goes under 000.00.04.H29) unless --parent names\n" +
			"another active agency of a higher level: a commune directly under its province, or an agency\n" +
			"whose code's parent was closed by a merger. Running add on a registered code renames it.",
		Example: `  govnetctl agency add 000.00.00.H29 --name "Ủy ban nhân dân tỉnh Quảng Ninh"` + "\n" +
			`  govnetctl agency add 000.13.04.H01 --name "Xã Phong Quang" --parent 000.00.00.H29`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if parent != "" {
				if err := checkCodes(parent); err != nil {
					return fmt.Errorf("--parent: %w", err)
				}
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				ag, err := c.AddAgency(ctx, api.Agency{Code: args[0], Name: name, Parent: parent})
				if err != nil {
					return err
				}
				return a.print(ag, agencyHeader, func(w io.Writer) { agencyRow(w, *ag) })
			})
		},
	}
	add.Flags().StringVar(&name, "name", "", "the agency's name (UTF-8)")
	add.Flags().StringVar(&parent, "parent", "", "place it under this agency instead of its code's parent")
	add.MarkFlagRequired("name")
	return add
}

func (a *app) agencyListCmd() *cobra.Command {
	var search string
	list := &cobra.Command{
		Use:   "list [--search TEXT]",
		Short: "List agencies, closed ones included; --search matches names without regard to case or diacritics",
		Example: "  govnetctl agency list\n" +
			"  govnetctl agency list --search \"ha noi\"     # finds Hà Nội\n" +
			"  govnetctl agency list --search H29 -o json",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				ags, err := c.Agencies(ctx)
				if err != nil {
					return err
				}
				if search != "" {
					ags = searchAgencies(ags, search)
				}
				return a.print(ags, agencyHeader, func(w io.Writer) {
					for _, ag := range ags {
						agencyRow(w, ag)
					}
				})
			})
		},
	}
	list.Flags().StringVar(&search, "search", "", "only agencies whose name or code contains `TEXT` (case and diacritics ignored)")
	return list
}

// fold reduces text for searching: lower case, without diacritics, and
// đ as d, so that "ha noi" finds "Hà Nội" and "da nang" "Đà Nẵng".
func fold(s string) string {
	t := transform.Chain(norm.NFD, runes.Remove(runes.In(unicode.Mn)), norm.NFC)
	out, _, err := transform.String(t, s)
	if err != nil {
		out = s
	}
	out = strings.ToLower(out)
	return strings.Map(func(r rune) rune {
		if r == 'đ' {
			return 'd'
		}
		return r
	}, out)
}

// searchAgencies keeps the agencies whose folded name or code contains the
// folded query.
func searchAgencies(ags []api.Agency, query string) []api.Agency {
	q := fold(strings.Join(strings.Fields(query), " "))
	out := []api.Agency{}
	for _, ag := range ags {
		if strings.Contains(fold(strings.Join(strings.Fields(ag.Name), " ")), q) || strings.Contains(fold(ag.Code), q) {
			out = append(out, ag)
		}
	}
	return out
}

func (a *app) agencyImportCmd() *cobra.Command {
	var dry bool
	imp := &cobra.Command{
		Use:   "import FILE.csv [--dry-run]",
		Short: "Register many agencies from a CSV file (code,name,parent), all or nothing",
		Long: "The file has a header naming the columns code, name and optionally parent, then one agency\n" +
			"per line, in UTF-8. An empty parent means the code's own parent. A parent must be registered\n" +
			"already or come earlier in the file. Registered codes are renamed when the name differs and\n" +
			"left alone otherwise; closed codes are refused. If any line is wrong nothing is registered and\n" +
			"the error names the line. --dry-run says what would be added and renamed, and changes nothing.",
		Example: "  govnetctl agency import provinces.csv --dry-run\n" +
			"  govnetctl agency import provinces.csv\n\n" +
			"  # provinces.csv:\n" +
			"  code,name,parent\n" +
			"  000.00.00.H29,Ủy ban nhân dân tỉnh Quảng Ninh,\n" +
			"  000.12.04.H29,Phường Hồng Gai,000.00.00.H29",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			rows, err := agencycsv.Parse(args[0], f)
			if err != nil {
				return fmt.Errorf("%w\n(fix the file and import it again: nothing was registered)", err)
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				res, err := c.ImportAgencies(ctx, api.AgencyImport{Agencies: rows, DryRun: dry})
				if err != nil {
					return importError(args[0], err)
				}
				return a.print(res, "CHANGE\tCODE\tLEVEL\tPARENT\tNAME", func(w io.Writer) {
					verb := map[bool][2]string{true: {"would add", "would rename"}, false: {"added", "renamed"}}[dry]
					for _, ag := range res.Added {
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", verb[0], ag.Code, ag.Level, dash(ag.Parent), ag.Name)
					}
					for _, ag := range res.Renamed {
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", verb[1], ag.Code, ag.Level, dash(ag.Parent), ag.Name)
					}
					fmt.Fprintf(w, "unchanged\t%d\t\t\t\n", res.Unchanged)
				})
			})
		},
	}
	imp.Flags().BoolVar(&dry, "dry-run", false, "say what would change; register nothing")
	return imp
}

// importError puts the file's name in front of the controller's "line N:".
func importError(file string, err error) error {
	msg := err.Error()
	if se, ok := err.(*api.StatusError); ok {
		msg = se.Msg
	}
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		return fmt.Errorf("%s:%s\n(fix the file and import it again: nothing was registered)", file, rest)
	}
	return err
}

// treeNode is one agency in `agency tree -o json`.
type treeNode struct {
	api.Agency
	Depth    int         `json:"depth"`
	Gateways []string    `json:"gateways"`
	Children []*treeNode `json:"children"`
}

func (a *app) agencyTreeCmd() *cobra.Command {
	var all bool
	tree := &cobra.Command{
		Use:   "tree [CODE]",
		Short: "Show the hierarchy of agencies as the registry holds it, with each agency's gateways",
		Long: "The tree follows each agency's stored parent, so it shows mergers and re-parentings: a\n" +
			"commune moved under another province appears there. Closed agencies are left out unless --all.",
		Example: "  govnetctl agency tree\n  govnetctl agency tree 000.00.00.H29 -o json",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkCodes(args...); err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				ags, gws, err := registry(ctx, c)
				if err != nil {
					return err
				}
				roots, err := buildTree(ags, gws, args, all)
				if err != nil {
					return err
				}
				return a.print(roots, "CODE\tLEVEL\tSTATUS\tGATEWAYS\tNAME", func(w io.Writer) {
					walkTree(roots, func(n *treeNode) {
						fmt.Fprintf(w, "%s%s\t%s\t%s\t%s\t%s\n", strings.Repeat("  ", n.Depth), n.Code, n.Level, agencyStatus(n.Agency),
							dash(strings.Join(n.Gateways, ",")), n.Name)
					})
				})
			})
		},
	}
	tree.Flags().BoolVar(&all, "all", false, "include closed agencies")
	return tree
}

// buildTree arranges agencies by their stored parents; with a code, only
// that agency's subtree.
func buildTree(ags []api.Agency, gws []api.Gateway, args []string, all bool) ([]*treeNode, error) {
	nodes := map[string]*treeNode{}
	for _, ag := range ags {
		if all || !ag.Closed() || len(args) == 1 && ag.Code == args[0] {
			nodes[ag.Code] = &treeNode{Agency: ag, Gateways: []string{}, Children: []*treeNode{}}
		}
	}
	for _, g := range gws {
		if n := nodes[g.Agency]; n != nil && g.Status != api.StatusDecommissioned {
			n.Gateways = append(n.Gateways, g.ID)
		}
	}
	roots := []*treeNode{}
	for _, ag := range ags { // sorted by code: children come out sorted
		n := nodes[ag.Code]
		if n == nil {
			continue
		}
		if p := nodes[ag.Parent]; p != nil && ag.Parent != "" {
			p.Children = append(p.Children, n)
		} else if len(args) == 0 {
			roots = append(roots, n)
		}
	}
	if len(args) == 1 {
		n := nodes[args[0]]
		if n == nil {
			return nil, fmt.Errorf("agency %s is not registered (see govnetctl agency list --search)", args[0])
		}
		roots = []*treeNode{n}
	}
	var depth func(ns []*treeNode, d int)
	depth = func(ns []*treeNode, d int) {
		for _, n := range ns {
			n.Depth = d
			depth(n.Children, d+1)
		}
	}
	depth(roots, 0)
	return roots, nil
}

func walkTree(ns []*treeNode, fn func(*treeNode)) {
	for _, n := range ns {
		fn(n)
		walkTree(n.Children, fn)
	}
}

// agencyDetail is `agency show -o json`.
type agencyDetail struct {
	api.Agency
	Children []api.Agency  `json:"children"`
	Gateways []api.Gateway `json:"gateways"`
}

func (a *app) agencyShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "show CODE",
		Short:   "Show one agency: status, parent, what it was merged into, its child agencies and gateways",
		Example: "  govnetctl agency show 000.00.00.H29\n  govnetctl agency show 000.00.00.H01 -o json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkCodes(args...); err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				ags, gws, err := registry(ctx, c)
				if err != nil {
					return err
				}
				i := slices.IndexFunc(ags, func(ag api.Agency) bool { return ag.Code == args[0] })
				if i < 0 {
					return fmt.Errorf("agency %s is not registered (see govnetctl agency list --search)", args[0])
				}
				d := agencyDetail{Agency: ags[i], Children: []api.Agency{}, Gateways: []api.Gateway{}}
				for _, ag := range ags {
					if ag.Parent == d.Code {
						d.Children = append(d.Children, ag)
					}
				}
				for _, g := range gws {
					if g.Agency == d.Code {
						d.Gateways = append(d.Gateways, g)
					}
				}
				return a.print(d, agencyHeader, func(w io.Writer) {
					agencyRow(w, d.Agency)
					if !d.ClosedAt.IsZero() {
						fmt.Fprintf(w, "\nclosed %s\t\t\t\t\n", d.ClosedAt.Format(time.RFC3339))
					}
					fmt.Fprintf(w, "\nCHILD\tLEVEL\tPARENT\tSTATUS\tNAME\n")
					for _, ch := range d.Children {
						agencyRow(w, ch)
					}
					fmt.Fprintf(w, "\nGATEWAY\tSTATUS\tOVERLAY\tENDPOINT\t\n")
					for _, g := range d.Gateways {
						overlay := "-"
						if g.OverlayIP.IsValid() {
							overlay = g.OverlayIP.String()
						}
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t\n", g.ID, g.Status, overlay, dash(g.Endpoint))
					}
				})
			})
		},
	}
}

func (a *app) agencyMergeCmd() *cobra.Command {
	var into string
	var yes bool
	merge := &cobra.Command{
		Use:   "merge SRC... --into DST [--yes]",
		Short: "Merge agencies into a survivor: previewed first, done with --yes",
		Long: "Merges the agencies SRC into DST, as the 2025 reform merged provinces: the active child\n" +
			"agencies of each SRC move under DST, the gateways of each SRC move to DST, and each SRC's code\n" +
			"is closed (kept in history with merged_into DST, never registered again). Only agencies of one\n" +
			"level merge (provinces into a province, communes into a commune); DST must be active and not\n" +
			"under a SRC. Without --yes nothing changes: the preview lists the agencies and gateways that\n" +
			"move, the codes closed, the places in the current policy that name a closed code (they keep\n" +
			"compiling and select nothing: edit the policy), and the gateways whose views change.",
		Example: "  govnetctl agency merge 000.00.00.H01 000.00.00.H02 --into 000.00.00.H29\n" +
			"  govnetctl agency merge 000.00.00.H01 000.00.00.H02 --into 000.00.00.H29 --yes",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkCodes(args...); err != nil {
				return err
			}
			if err := checkCodes(into); err != nil {
				return fmt.Errorf("--into: %w", err)
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				plan, err := c.MergeAgencies(ctx, api.AgencyMerge{Sources: args, Into: into, DryRun: !yes})
				if err != nil {
					return err
				}
				return a.printPlan(plan)
			})
		},
	}
	merge.Flags().StringVar(&into, "into", "", "the surviving agency's `CODE`")
	merge.Flags().BoolVar(&yes, "yes", false, "do it (without it, only the preview is shown)")
	merge.MarkFlagRequired("into")
	return merge
}

func (a *app) agencyReparentCmd() *cobra.Command {
	var parent string
	var yes bool
	rp := &cobra.Command{
		Use:   "reparent CODE --parent P [--yes]",
		Short: "Move one agency, and everything under it, under another parent: previewed first, done with --yes",
		Long: "Only district-level agencies and below have parents; P must be active, of a higher level than\n" +
			"CODE, and not under CODE. Gateways stay with their agencies; policy groups that select by\n" +
			"subtree follow the new parent. Without --yes nothing changes and the preview is shown.",
		Example: "  govnetctl agency reparent 000.12.04.H01 --parent 000.00.00.H29\n" +
			"  govnetctl agency reparent 000.12.04.H01 --parent 000.00.00.H29 --yes -o json",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkCodes(args[0], parent); err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				plan, err := c.ReparentAgency(ctx, args[0], api.AgencyReparent{Parent: parent, DryRun: !yes})
				if err != nil {
					return err
				}
				return a.printPlan(plan)
			})
		},
	}
	rp.Flags().StringVar(&parent, "parent", "", "the new parent's `CODE`")
	rp.Flags().BoolVar(&yes, "yes", false, "do it (without it, only the preview is shown)")
	rp.MarkFlagRequired("parent")
	return rp
}

// printPlan shows a merge or re-parenting plan.
func (a *app) printPlan(p *api.AgencyPlan) error {
	if a.output == "json" {
		return a.print(p, "", nil)
	}
	return a.print(p, "CHANGE\tWHAT\tFROM\tTO", func(w io.Writer) {
		for _, c := range p.Closed {
			fmt.Fprintf(w, "close\t%s\t-\tmerged into %s\n", c, p.Into)
		}
		for _, m := range p.Agencies {
			fmt.Fprintf(w, "move agency\t%s\t%s\t%s\n", m.Code, dash(m.From), m.To)
		}
		for _, m := range p.Gateways {
			fmt.Fprintf(w, "move gateway\t%s\t%s\t%s\n", m.Gateway, m.From, m.To)
		}
		for _, r := range p.PolicyRefs {
			fmt.Fprintf(w, "policy names closed\t%s\t%s\t%s\n", r.Code, r.Where, r.What)
		}
		if v := p.Views; v != nil {
			for _, g := range v.Gateways {
				fmt.Fprintf(w, "view changes\t%s\t+%d -%d flows\t+%d -%d peers\n", g.Gateway, len(g.Gained), len(g.Lost), len(g.PeersGained), len(g.PeersLost))
			}
		}
		fmt.Fprintln(w)
		if p.DryRun {
			fmt.Fprintf(w, "preview only: nothing changed. Run the same command with --yes to %s.\n", p.Kind)
		} else {
			fmt.Fprintf(w, "done at raft index %d; the views of %d gateways were recomputed.\n", p.RaftIndex, len(p.Views.Gateways))
		}
		if len(p.PolicyRefs) > 0 {
			fmt.Fprintln(w, "The current policy names codes that close: they select nothing now. Edit the policy (govnetctl policy plan, then publish).")
		}
		if v := p.Views; v != nil && len(v.Gateways) > 0 {
			fmt.Fprintln(w)
			fmt.Fprint(w, policy.RenderPlan(v))
		}
	})
}

func (a *app) agencyCloseCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "close CODE",
		Short: "Close an agency's code for good (it must have no gateways or active child agencies left)",
		Long: "A closed code stays in the registry and history and is never registered again. Closing is\n" +
			"refused while the agency has pending or enrolled gateways (decommission them, or merge the\n" +
			"agency into another) or active child agencies (move them with reparent, or merge).",
		Example: "  govnetctl agency close 000.00.04.H01",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkCodes(args[0]); err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				ag, err := c.CloseAgency(ctx, args[0])
				if err != nil {
					return err
				}
				return a.print(ag, agencyHeader, func(w io.Writer) { agencyRow(w, *ag) })
			})
		},
	}
}

func (a *app) gatewayDecommissionCmd() *cobra.Command {
	var reason string
	dc := &cobra.Command{
		Use:   "decommission ID [--reason TEXT]",
		Short: "Take a gateway out of service for good (officer): revoke its certificates, drop it from every view",
		Long: "Its valid certificates are revoked with reason cessationOfOperation (they appear in the next\n" +
			"CRL), its streams close, every peer drops it, and it can no longer renew or enroll. It stays\n" +
			"listed with status decommissioned. Under four-eyes approval, have its revocation requested and\n" +
			"approved first (govnetctl request), then decommission it.",
		Example: "  govnetctl gateway decommission h01-gw1 --reason \"agency merged into H29\"",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *api.Client) error {
				res, err := c.DecommissionGateway(ctx, args[0], api.DecommissionRequest{Reason: reason})
				if err != nil {
					return err
				}
				return a.print(res, "GATEWAY\tRAFT INDEX\tREVOKED\tOUT OF EVERY VIEW AFTER", func(w io.Writer) {
					var serials []string
					for _, c := range res.Certificates {
						serials = append(serials, c.Serial)
					}
					enforced := "-"
					if res.Enforced > 0 {
						enforced = res.Enforced.Round(time.Millisecond).String()
					}
					fmt.Fprintf(w, "%s\t%d\t%s\t%s\n", args[0], res.RaftIndex, dash(strings.Join(serials, ",")), enforced)
				})
			})
		},
	}
	dc.Flags().StringVar(&reason, "reason", "", "why, in words, for the audit trail")
	return dc
}

// registry fetches the agencies and the gateways.
func registry(ctx context.Context, c *api.Client) ([]api.Agency, []api.Gateway, error) {
	ags, err := c.Agencies(ctx)
	if err != nil {
		return nil, nil, err
	}
	gws, err := c.Gateways(ctx)
	return ags, gws, err
}
