// Command govnetctl is the desk tool of govnet's operators, officers and
// auditors. It talks to the controllers only through the API client.
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"text/tabwriter"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/internal/cli"
	"github.com/govnet/govnet/internal/credfile"
	"github.com/govnet/govnet/internal/yamlfile"
	"github.com/spf13/cobra"
)

// ctlConfig is govnetctl's config file: where the controller is and whose
// credentials to present.
type ctlConfig struct {
	Controller string `yaml:"controller"` // https://host:port
	Root       string `yaml:"root"`       // govnet root certificate
	Cert       string `yaml:"cert"`       // this person's certificate chain
	Key        string `yaml:"key"`        // and key
}

func (c *ctlConfig) load(path string) error {
	if err := yamlfile.Decode(path, c); err != nil {
		return err
	}
	// Relative paths in the file are relative to the file.
	for _, p := range []*string{&c.Root, &c.Cert, &c.Key} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(filepath.Dir(path), *p)
		}
	}
	return nil
}

type app struct {
	cfg        ctlConfig
	renewing   bool // person renew: no warning that the certificate is due
	configPath string
	output     string
	out        io.Writer
}

func defaultConfigPath() string {
	if p := os.Getenv("GOVNETCTL_CONFIG"); p != "" {
		return p
	}
	if dir, err := os.UserConfigDir(); err == nil {
		p := filepath.Join(dir, "govnet", "govnetctl.yaml")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

func main() {
	if err := newRoot(&app{out: os.Stdout}).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "govnetctl:", err)
		os.Exit(1)
	}
}

// newRoot is govnetctl's command tree, writing to a.out.
func newRoot(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:           "govnetctl",
		Short:         "Run the govnet network: agencies, gateways, tokens, policy",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if a.output != "table" && a.output != "json" && (a.output != "csv" || cmd.Annotations[csvOutput] == "") {
				return fmt.Errorf("-o %q: want table or json (csv only for reports)", a.output)
			}
			return cli.LoadConfig(cmd.Flags(), a.configPath, a.cfg.load)
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.configPath, "config", defaultConfigPath(), "config file (default $GOVNETCTL_CONFIG or ~/.config/govnet/govnetctl.yaml)")
	pf.StringVar(&a.cfg.Controller, "controller", "", "controller API, https://host:port")
	pf.StringVar(&a.cfg.Root, "root", "", "govnet root certificate (PEM)")
	pf.StringVar(&a.cfg.Cert, "cert", "", "your certificate chain (PEM)")
	pf.StringVar(&a.cfg.Key, "key", "", "your private key (PEM)")
	pf.StringVarP(&a.output, "output", "o", "table", "output format: table or json (reports: also csv)")
	root.AddCommand(a.agencyCmd(), a.gatewayCmd(), a.policyCmd(), a.clusterCmd())
	root.AddCommand(a.personCmd(), a.requestCmd(), a.auditCmd(), a.certCmd())
	root.AddCommand(a.registryCmd())
	root.AddCommand(a.reportCmd())
	return root
}

func (a *app) client() (*api.Client, error) {
	if a.cfg.Controller == "" || a.cfg.Root == "" || a.cfg.Cert == "" || a.cfg.Key == "" {
		return nil, fmt.Errorf("controller, root, cert and key must be set: write them to a config file (--config) or pass the flags")
	}
	if done, err := credfile.Finish(a.cfg.Cert, a.cfg.Key); err != nil {
		return nil, fmt.Errorf("an interrupted renewal: %w", err)
	} else if done {
		fmt.Fprintf(os.Stderr, "govnetctl: finished an interrupted renewal: %s and %s hold the renewed credentials\n", a.cfg.Cert, a.cfg.Key)
	}
	tlsCfg, err := api.TLSConfig(a.cfg.Root, a.cfg.Cert, a.cfg.Key)
	if err != nil {
		return nil, err
	}
	leaf := tlsCfg.Certificates[0].Leaf
	if leaf != nil && time.Now().After(leaf.NotAfter) {
		return nil, expiredError(a.cfg.Cert, a.cfg.Key, leaf)
	}
	if leaf != nil && !a.renewing {
		life := leaf.NotAfter.Sub(leaf.NotBefore)
		if time.Now().After(leaf.NotBefore.Add(life * 2 / 3)) {
			fmt.Fprintf(os.Stderr, "govnetctl: your certificate %s expires at %s: renew it now with `govnetctl person renew`\n",
				a.cfg.Cert, leaf.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return api.NewClient(a.cfg.Controller, tlsCfg), nil
}

// expiredError says that the certificate in cert (key beside it) expired,
// and what its holder does: the controllers refuse it in the TLS handshake,
// and it cannot renew, so only a new invitation brings the person back.
func expiredError(cert, key string, leaf *x509.Certificate) error {
	name, role := "NAME", "ROLE"
	if id, err := ca.IdentityOf(leaf); err == nil && id.Kind == ca.KindPerson {
		name, role = id.Name, id.Role
	}
	return fmt.Errorf("your certificate %s expired at %s: the controllers refuse it and it cannot renew. "+
		"Ask an officer to invite you again (govnetctl person invite %s --role %s), move %s and %s aside, "+
		"then enroll (govnetctl person enroll %s --token-file FILE)",
		cert, leaf.NotAfter.UTC().Format(time.RFC3339), name, role, cert, key, name)
}

// roots reads the root certificate the config or --root names, for a
// check (what) that needs no controller.
func (a *app) roots(what string) (*x509.CertPool, error) {
	if a.cfg.Root == "" {
		return nil, fmt.Errorf("%s needs the root certificate (--root or the config file)", what)
	}
	return api.LoadRoots(a.cfg.Root)
}

// anonClient is a client without credentials of its own (enrollment).
func (a *app) anonClient() (*api.Client, error) {
	if a.cfg.Controller == "" || a.cfg.Root == "" {
		return nil, fmt.Errorf("controller and root must be set: write them to a config file (--config) or pass the flags")
	}
	tlsCfg, err := api.TLSConfig(a.cfg.Root, "", "")
	if err != nil {
		return nil, err
	}
	return api.NewClient(a.cfg.Controller, tlsCfg), nil
}

// transferTimeout bounds the commands that move the whole state or its
// history (a backup saved, the audit chain exported): hundreds of MB on
// a large network.
const transferTimeout = 10 * time.Minute

// call runs fn with a client and a context bounded at 30 s.
func (a *app) call(cmd *cobra.Command, fn func(context.Context, *api.Client) error) error {
	return a.callFor(cmd, 30*time.Second, fn)
}

// callFor is call with the context bounded at timeout.
func (a *app) callFor(cmd *cobra.Command, timeout time.Duration, fn func(context.Context, *api.Client) error) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
	defer cancel()
	return fn(ctx, c)
}

// print writes v as JSON, or as the table that rows renders under
// header (none when empty). An empty list is [] in JSON, never null,
// whether or not the controller sent one.
func (a *app) print(v any, header string, rows func(w io.Writer)) error {
	if a.output == "json" {
		if rv := reflect.ValueOf(v); rv.Kind() == reflect.Slice && rv.IsNil() {
			v = []struct{}{}
		}
		enc := json.NewEncoder(a.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	if header != "" {
		fmt.Fprintln(tw, header)
	}
	if rows != nil {
		rows(tw)
	}
	return tw.Flush()
}
