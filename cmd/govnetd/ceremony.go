package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/hsm"
	"github.com/spf13/cobra"
)

// ceremonyCmd is the Cipher Committee's root key ceremony and the root
// operations that need a quorum of custodians.
func ceremonyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ceremony",
		Short: "Root key ceremony and M-of-N root operations (Cipher Committee)",
	}
	cmd.AddCommand(ceremonyInitCmd(), ceremonyResumeCmd(), ceremonySignIntermediateCmd(), ceremonyCRLCmd())
	return cmd
}

// auditToStderr prints root audit events as JSON lines.
func auditToStderr(_ context.Context, e ca.AuditEvent) {
	b, _ := json.Marshal(e)
	fmt.Fprintf(os.Stderr, "audit: %s\n", b)
}

func currentUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}

func ceremonyInitCmd() *cobra.Command {
	var (
		o                   ca.CeremonyOptions
		soPINFile, soPINEnv string
		custodians          []string
	)
	o.HSM.Module = hsm.DefaultModules[0]
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Generate the root key in its own token, split its activation secret among custodians, write a signed transcript",
		Long: `init runs the root key ceremony on a token that the HSM administrator has
initialized beforehand (with SoftHSM2: softhsm2-util --init-token). It
generates a random activation secret, splits it M-of-N among the named
custodians (one share file each, created 0600 and never overwritten, in
OUT/shares), replaces the token's user and SO PINs with values derived
from the secret (the SO PIN given here stops working), generates the root
key in the token (ECDSA P-384, sensitive, never extractable), self-signs
the root certificate and writes OUT/root.pem, OUT/transcript.json and its
detached signature by the root key, OUT/transcript.json.sig. The secret is
never shown or stored. Hand each share file to its custodian and delete it
from this machine.

A token that holds any key or certificate is refused, its PINs unchanged,
and the root certificate is linted before the token is touched. If the
ceremony fails after the token's PINs were replaced, the share files and
OUT/ceremony.pending.json stay: finish it with "govnetd ceremony resume".`,
		Example: `  softhsm2-util --init-token --free --label govnet-root --so-pin "$(cat so.pin)" --pin unused-0000
  govnetd ceremony init --root-token govnet-root --so-pin-file so.pin \
    --custodians an,binh,cuong,dung,em --threshold 3 --out /srv/ceremony`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pin, err := hsm.ReadPIN(soPINFile, soPINEnv)
			if err != nil {
				return fmt.Errorf("SO PIN: %w", err)
			}
			o.SOPIN = pin
			for _, c := range custodians {
				o.Custodians = append(o.Custodians, strings.TrimSpace(c))
			}
			res, err := ca.RunCeremony(o)
			if err != nil {
				return err
			}
			printCeremony(res, o.OutDir)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.HSM.Module, "hsm-module", o.HSM.Module, "PKCS#11 module path (must be on the allowlist)")
	fs.StringVar(&o.HSM.TokenLabel, "root-token", "", "label of the root token (initialized beforehand, empty)")
	fs.StringVar(&soPINFile, "so-pin-file", "", "file holding the root token's SO PIN (replaced by the ceremony)")
	fs.StringVar(&soPINEnv, "so-pin-env", "", "environment variable holding the SO PIN, if no file")
	fs.StringSliceVar(&custodians, "custodians", nil, "custodians' names, comma-separated (N)")
	fs.IntVar(&o.Threshold, "threshold", 0, "shares needed to use the root key (M)")
	fs.StringVar(&o.OutDir, "out", "", "directory for root.pem, the transcript and the share files")
	fs.StringVar(&o.Operator, "operator", currentUser(), "who runs the ceremony (recorded in the transcript)")
	fs.StringVar(&o.CommonName, "cn", "govnet Root CA", "root certificate common name")
	for _, f := range []string{"root-token", "custodians", "threshold", "out"} {
		cmd.MarkFlagRequired(f)
	}
	return cmd
}

func ceremonyResumeCmd() *cobra.Command {
	var (
		o      ca.ResumeOptions
		shares []string
	)
	cmd := &cobra.Command{
		Use:   "resume",
		Short: "Finish a root key ceremony that failed after its token was put under quorum control, with M custodians' shares",
		Long: `resume finishes the ceremony whose journal (ceremony.pending.json) is in
OUT: a ceremony that failed or was interrupted after it replaced the root
token's PINs. With M of its share files it opens the token, keeps the root
key if it was generated (generates it if not) and root.pem if it was
written for that key, and writes the transcript, which records the
resumption, and its signature.`,
		Example: `  govnetd ceremony resume --out /srv/ceremony \
    --shares /srv/ceremony/shares/an.share,/srv/ceremony/shares/cuong.share,/srv/ceremony/shares/em.share`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			files, err := ca.ReadShareFiles(shares...)
			if err != nil {
				return err
			}
			defer clearAll(files)
			o.ShareFiles = files
			res, err := ca.ResumeCeremony(o)
			if err != nil {
				return err
			}
			printCeremony(res, o.Dir)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.Dir, "out", "", "the interrupted ceremony's directory")
	fs.StringVar(&o.Module, "hsm-module", "", "PKCS#11 module path (default: the one the ceremony recorded)")
	fs.StringSliceVar(&shares, "shares", nil, "custodians' share files, comma-separated (at least M)")
	fs.StringVar(&o.Operator, "operator", currentUser(), "who resumes the ceremony (recorded in the transcript)")
	for _, f := range []string{"out", "shares"} {
		cmd.MarkFlagRequired(f)
	}
	return cmd
}

// readShares reads share files for a root operation; a file that cannot
// be read is a refusal, audited like the others.
func readShares(ctx context.Context, o ca.RootOptions, paths []string) ([][]byte, error) {
	files, err := ca.ReadShareFiles(paths...)
	if err != nil {
		o.Audit(ctx, ca.AuditEvent{Time: time.Now().UTC(), Action: ca.ActionRootOpen, Outcome: ca.AuditRefused, Actor: o.Actor, Detail: err.Error()})
	}
	return files, err
}

// clearAll overwrites share files' contents once they are used.
func clearAll(files [][]byte) {
	for _, f := range files {
		clear(f)
	}
}

// printCeremony says what a ceremony made.
func printCeremony(res *ca.CeremonyResult, dir string) {
	tr := res.Transcript
	fmt.Printf("ceremony %s done: root %q\n  SHA-256 %s\n  root key %s (id %s) in token %q\n  %d-of-%d shares:\n",
		tr.CeremonyID, res.Root.Subject.CommonName, ca.Fingerprint(res.Root), tr.RootKey.Label, tr.RootKey.ID, tr.Token.Label, tr.Threshold, tr.Shares)
	for _, c := range tr.Custodians {
		fmt.Printf("    %-12s %s\n", c.Name, res.ShareFiles[c.Name])
	}
	fmt.Printf("  transcript %s/%s, signature %s/%s\n", dir, ca.CeremonyTranscriptFile, dir, ca.CeremonySignatureFile)
}

func ceremonySignIntermediateCmd() *cobra.Command {
	var (
		o                     ca.RootOptions
		shares                []string
		csrPath, out, node    string
		rootToken, rootCRLURL string
	)
	cmd := &cobra.Command{
		Use:   "sign-intermediate",
		Short: "Sign a controller node's intermediate with the root key, opened with M custodians' shares",
		Example: `  govnetd ceremony sign-intermediate --ceremony-dir /srv/ceremony --root-token govnet-root \
    --shares /media/an/an.share,/media/cuong/cuong.share,/media/em/em.share \
    --csr ctl2.csr --node ctl2 --out ctl2-intermediate.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			tr, _, err := ca.LoadCeremony(o.Dir)
			if err != nil {
				return err
			}
			if rootToken != "" && rootToken != tr.Token.Label {
				return fmt.Errorf("--root-token %q: the ceremony in %s used token %q", rootToken, o.Dir, tr.Token.Label)
			}
			csrPEM, err := os.ReadFile(csrPath)
			if err != nil {
				return err
			}
			csr, err := ca.ParseCSR(csrPEM)
			if err != nil {
				return err
			}
			if node == "" {
				node = strings.TrimPrefix(csr.Subject.CommonName, ca.IntermediateCommonName(""))
			}
			o.Audit = auditToStderr
			files, err := readShares(ctx, o, shares)
			if err != nil {
				return err
			}
			defer clearAll(files)
			o.RootCRLURL = rootCRLURL
			root, err := ca.OpenRoot(ctx, o, files)
			if err != nil {
				return err
			}
			defer root.Close()
			inter, err := root.SignIntermediate(ctx, csr, node)
			if err != nil {
				return err
			}
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				return err
			}
			if _, err := f.Write(ca.EncodePEM(inter, root.Certificate())); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			fmt.Printf("signed %q serial %s SHA-256 %s -> %s (intermediate, then root)\n", inter.Subject.CommonName, ca.Serial(inter), ca.Fingerprint(inter), out)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.Dir, "ceremony-dir", ".", "the ceremony's output directory (root.pem, transcript.json, transcript.json.sig)")
	fs.StringVar(&rootToken, "root-token", "", "label of the root token (checked against the transcript)")
	fs.StringVar(&o.Module, "hsm-module", "", "PKCS#11 module path (default: the one the transcript names)")
	fs.StringSliceVar(&shares, "shares", nil, "custodians' share files, comma-separated (at least M)")
	fs.StringVar(&csrPath, "csr", "", "the node's certificate request (PEM or DER) for its intermediate key")
	fs.StringVar(&node, "node", "", "controller node name (default: from the CSR's common name, \"govnet Intermediate CA <node>\")")
	fs.StringVar(&out, "out", "", "file to write the intermediate and root certificates to (PEM; must not exist)")
	fs.StringVar(&rootCRLURL, "root-crl-url", "", "CRL distribution point of the root's CRL, put into the intermediate")
	fs.StringVar(&o.Actor, "actor", currentUser(), "who asks for the signature (audited)")
	for _, f := range []string{"shares", "csr", "out"} {
		cmd.MarkFlagRequired(f)
	}
	return cmd
}

func ceremonyCRLCmd() *cobra.Command {
	var (
		o               ca.RootOptions
		shares, revokes []string
		out             string
	)
	cmd := &cobra.Command{
		Use:   "crl",
		Short: "Revoke controller intermediates and sign the root's CRL, with M custodians' shares",
		Long: `crl opens the root with M shares, adds the intermediates named by --revoke
(serial in hex, optionally :reason, default keyCompromise) to the root's
record in the ceremony directory (root-crl.json), and signs the next root
CRL listing every intermediate revoked so far; without --revoke it re-signs
the CRL, which must happen before its nextUpdate (at most 90 days). Give
the CRL to an officer to publish: govnetctl cert publish-root-crl FILE.`,
		Example: `  govnetd ceremony crl --ceremony-dir /srv/ceremony --shares an.share,cuong.share \
    --revoke 5cfdc3e55583fedb1e12658813d367e4:keyCompromise --out root.crl
  govnetctl cert publish-root-crl root.crl`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var add []ca.RootRevocation
			for _, r := range revokes {
				serial, reason, ok := strings.Cut(r, ":")
				if !ok {
					reason = "keyCompromise"
				}
				add = append(add, ca.RootRevocation{Serial: serial, Reason: reason, At: time.Now().UTC(), Actor: o.Actor})
			}
			o.Audit = auditToStderr
			files, err := readShares(ctx, o, shares)
			if err != nil {
				return err
			}
			defer clearAll(files)
			root, err := ca.OpenRoot(ctx, o, files)
			if err != nil {
				return err
			}
			defer root.Close()
			der, err := root.RevokeAndSignCRL(ctx, add)
			if err != nil {
				return err
			}
			if err := os.WriteFile(out, der, 0o644); err != nil {
				return err
			}
			st, err := ca.LoadRootCRLState(o.Dir)
			if err != nil {
				return err
			}
			fmt.Printf("root CRL number %d, %d intermediates revoked -> %s\npublish it: govnetctl cert publish-root-crl %s\n", st.Number, len(st.Revoked), out, out)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.Dir, "ceremony-dir", ".", "the ceremony's output directory")
	fs.StringVar(&o.Module, "hsm-module", "", "PKCS#11 module path (default: the one the transcript names)")
	fs.StringSliceVar(&shares, "shares", nil, "custodians' share files, comma-separated (at least M)")
	fs.StringArrayVar(&revokes, "revoke", nil, "an intermediate to revoke, SERIAL[:REASON] (repeatable)")
	fs.StringVar(&out, "out", "", "file to write the CRL to (DER)")
	fs.StringVar(&o.Actor, "actor", currentUser(), "who asks for the operation (audited)")
	for _, f := range []string{"shares", "out"} {
		cmd.MarkFlagRequired(f)
	}
	return cmd
}
