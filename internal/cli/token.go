package cli

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Show or rotate the cluster's join tokens"}
	cmd.AddCommand(newTokenShowCmd())
	return cmd
}

func newTokenShowCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:     "show",
		Short:   "Print the server and agent tokens with the current CA hash",
		Args:    cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error { return applySources(cmd) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			l := datadir.Layout{Root: dataDir}
			caFile := l.TLS(certs.CA(certs.ServerCA).CertFile)
			ca, err := os.ReadFile(caFile)
			if err != nil {
				return fmt.Errorf("read server CA: %w (is %s a kpki server data dir?)", err, dataDir)
			}
			hash, err := pki.CAHash(ca)
			if err != nil {
				return fmt.Errorf("%s: %w", caFile, err)
			}
			for _, f := range []struct{ label, path, user string }{
				{"server", l.TokenFile(), "server"},
				{"agent", l.AgentTokenFile(), "node"},
			} {
				data, err := os.ReadFile(f.path)
				if err != nil {
					return fmt.Errorf("read %s token: %w", f.label, err)
				}
				t, err := token.Parse(strings.TrimSpace(string(data)))
				if err != nil {
					return fmt.Errorf("%s: %w", f.path, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s token: %s\n", f.label, token.Format(hash, f.user, t.Password))
			}
			return nil
		},
	}
	dataDirFlag(cmd, &dataDir)
	configFlag(cmd)
	return cmd
}
