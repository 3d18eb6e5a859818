package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kpki/kpki/internal/cagen"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
)

// applyScriptSources is applySources for the commands that stand for the K3s helper
// scripts: those honour the scripts' DATA_DIR variable, which ranks with KPKI_DATA_DIR
// (below it when both are set): flag > KPKI_DATA_DIR > DATA_DIR > config file > default.
func applyScriptSources(cmd *cobra.Command) error {
	f := cmd.Flags().Lookup("data-dir")
	if f != nil && !f.Changed {
		if _, ok := os.LookupEnv(envName("data-dir")); !ok {
			if v, ok := os.LookupEnv("DATA_DIR"); ok && v != "" {
				if err := cmd.Flags().Set("data-dir", v); err != nil {
					return fmt.Errorf("environment variable DATA_DIR: %w", err)
				}
			}
		}
	}
	return applySources(cmd)
}

// nextStepFlags are the flags a printed kpki command needs to act on the same data dir
// and config file as cmd: --data-dir when it is not the default, --config when one was
// named (flag or KPKI_CONFIG).
func nextStepFlags(cmd *cobra.Command, dataDir string) string {
	var out string
	if f := cmd.Flags().Lookup("data-dir"); f != nil && filepath.Clean(dataDir) != filepath.Clean(f.DefValue) {
		out += " --data-dir=" + shellQuote(absOrSelf(dataDir))
	}
	if p, explicit := configPath(cmd); explicit {
		out += " --config=" + shellQuote(absOrSelf(p))
	}
	return out
}

// withNextStepFlags runs fn with a buffer for its messages and copies them to out,
// adding flags to the suggested `kpki certificate rotate-ca` lines.
func withNextStepFlags(out io.Writer, flags string, fn func(io.Writer) error) error {
	var buf bytes.Buffer
	err := fn(&buf)
	const prefix = "    kpki certificate rotate-ca "
	for _, line := range strings.SplitAfter(buf.String(), "\n") {
		if strings.HasPrefix(line, prefix) && flags != "" {
			line = strings.TrimSuffix(line, "\n") + flags + "\n"
		}
		if _, werr := io.WriteString(out, line); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

// customCAInputDir is where generate-ca takes root-ca.* and intermediate-ca.* from:
// <dataDir>/server/tls when it holds any of them, else the tls dir of K3s's
// generate-custom-ca-certs.sh with PRODUCT=kpki ($DATA_DIR, default the RKE2 data dir)
// when that holds root-ca.pem — the place the RKE2 page has them copied to — else
// <dataDir>/server/tls (new ones are created there).
func customCAInputDir(dataDir string) string {
	own := datadir.Layout{Root: dataDir}.TLS()
	script := datadir.DefaultRoot
	if v := os.Getenv("DATA_DIR"); v != "" {
		script = v
	}
	scriptTLS := datadir.Layout{Root: script}.TLS()
	if filepath.Clean(scriptTLS) == filepath.Clean(own) {
		return own
	}
	for _, f := range []string{cagen.RootCertFile, cagen.RootKeyFile, cagen.IntermediateCertFile, cagen.IntermediateKeyFile} {
		if datadir.Exists(filepath.Join(own, f)) {
			return own
		}
	}
	if datadir.Exists(filepath.Join(scriptTLS, cagen.RootCertFile)) {
		return scriptTLS
	}
	return own
}

func newGenerateCACmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "generate-ca",
		Short: "Create custom cluster CAs signed by a root and intermediate CA (K3s generate-custom-ca-certs.sh)",
		Long: `Create the cluster CAs in <data-dir>/server/tls, as K3s's generate-custom-ca-certs.sh does,
without openssl. The data dir is --data-dir, else KPKI_DATA_DIR, else DATA_DIR (as the script),
else the config file's data-dir, else ` + datadir.DefaultRoot + `. When <data-dir>/server/tls holds no
root-ca.* or intermediate-ca.* but the script's directory ($DATA_DIR, else
` + datadir.DefaultRoot + `, /server/tls) holds root-ca.pem, they are taken from there; the command
prints which directory it used.

Place root-ca.pem and root-ca.key there to use an existing root; root-ca.pem,
intermediate-ca.pem and intermediate-ca.key to use an existing root and intermediate. Missing
ones are created: root RSA-4096 (20 years), intermediate RSA-4096 (10 years). The five CAs are
P-256 (10 years) signed by the intermediate; each <ca>.crt holds the CA, the intermediate and
the root. service.key gets a new RSA-2048 key followed by the keys already in it.

Unlike the script, nothing is written when the directory already holds CA files, or when a
provided root or intermediate is unusable. To renew CAs of a running cluster under the same
root, run this into another data dir holding copies of root-ca.*, intermediate-ca.* and
service.key, then load it with 'kpki certificate rotate-ca --path=<that dir>/server'.`,
		Args:    cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error { return applyScriptSources(cmd) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			l := datadir.Layout{Root: dataDir}
			in := customCAInputDir(dataDir)
			fmt.Fprintf(out, "Writing the cluster CAs to %s\n", absOrSelf(l.TLS()))
			if in != l.TLS() {
				fmt.Fprintf(out, "Taking the provided root and intermediate CA from %s (where generate-custom-ca-certs.sh looks), as %s holds none\n", absOrSelf(in), absOrSelf(l.TLS()))
			}
			if _, err := cagen.GenerateCAFrom(in, l.TLS(), clock.Real{}, out); err != nil {
				return err
			}
			if def := cmd.Flags().Lookup("data-dir").DefValue; filepath.Clean(dataDir) != filepath.Clean(def) {
				fmt.Fprintln(out)
				fmt.Fprintln(out, "To update certificates on an existing cluster, you may now run:")
				fmt.Fprintf(out, "    kpki certificate rotate-ca --path=%s%s\n", absOrSelf(l.Server()), nextStepConfigFlag(cmd))
			}
			return nil
		},
	}
	dataDirFlag(cmd, &dataDir)
	configFlag(cmd)
	return cmd
}

func newCrossSignCACmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "cross-sign-ca",
		Short: "Stage new self-signed CAs cross-signed by the current ones (K3s rotate-default-ca-certs.sh)",
		Long: `Stage, in <data-dir>/server/rotate-ca/tls, new CAs for a cluster that uses kpki's self-signed
CAs, as K3s's rotate-default-ca-certs.sh does, without openssl. The data dir is --data-dir,
else KPKI_DATA_DIR, else DATA_DIR (as the script).

For each CA, a new root is made, self-signed and cross-signed by the current root, and a new CA
under it: <ca>.crt = new CA + new root + cross-signed new root + current root, <ca>.key = new CA
key + new root key. service.key gets a new key followed by the current ones. An earlier
rotate-ca directory is replaced. Prints the new join tokens and the rotate-ca command to run.`,
		Args:    cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error { return applyScriptSources(cmd) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withNextStepFlags(cmd.OutOrStdout(), nextStepFlags(cmd, dataDir), func(w io.Writer) error {
				_, err := cagen.CrossSignCA(dataDir, clock.Real{}, w)
				return err
			})
		},
	}
	dataDirFlag(cmd, &dataDir)
	configFlag(cmd)
	return cmd
}

func newGenerateServiceKeyCmd() *cobra.Command {
	var dataDir, path string
	cmd := &cobra.Command{
		Use:   "generate-service-key",
		Short: "Stage a new service-account key followed by the current ones",
		Long: `Write <path>/tls/service.key: a new RSA-2048 service-account key followed by the current keys
of <data-dir>/server/tls/service.key, so that existing service-account tokens stay valid. Load it
with 'kpki certificate rotate-ca --path=<path>'.`,
		Args:    cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error { return applySources(cmd) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			if path == "" {
				return errors.New("--path is required: the staging directory to write tls/service.key into")
			}
			return withNextStepFlags(cmd.OutOrStdout(), nextStepFlags(cmd, dataDir), func(w io.Writer) error {
				_, err := cagen.GenerateServiceKey(dataDir, path, clock.Real{}, w)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&path, "path", "", "staging directory (the new key goes to <path>/tls/service.key)")
	dataDirFlag(cmd, &dataDir)
	configFlag(cmd)
	return cmd
}

// nextStepConfigFlag is " --config=<file>" when cmd was given a config file: the
// rotate-ca that generate-ca suggests acts on the cluster's data dir, not the one
// generated into, so only the config file carries over.
func nextStepConfigFlag(cmd *cobra.Command) string {
	if p, explicit := configPath(cmd); explicit {
		return " --config=" + shellQuote(absOrSelf(p))
	}
	return ""
}

func absOrSelf(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
