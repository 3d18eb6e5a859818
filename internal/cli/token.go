package cli

import (
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Show or rotate the cluster's join tokens"}
	cmd.AddCommand(newTokenShowCmd(), newTokenRotateCmd())
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

func newTokenRotateCmd() *cobra.Command {
	var dataDir, server, newToken string
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Change the server token: re-encrypt the bootstrap data and rewrite the token files",
		Long: `Asks the running kpki server to change the server token's password (to --new-token, or a
generated one). The bootstrap data is re-encrypted under the new password in one transaction,
cred/passwd and the token files are rewritten, and the new token is printed. Other servers must
be restarted with the new token; agents keep their token. The new password must differ from the
agent password.`,
		Args:    cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error { return applySources(cmd) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			u, err := localServerURL(cmd, server)
			if err != nil {
				return err
			}
			c, err := serverClient(dataDir, u)
			if err != nil {
				return err
			}
			var resp api.TokenRotateResponse
			defer c.Close()
			if err := c.Do(cmd.Context(), http.MethodPut, api.PathTokenRotate, nil, api.TokenRotateRequest{Token: newToken}, &resp); err != nil {
				return fmt.Errorf("token rotate: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token rotated; restart the other servers with the new token\nserver token: %s\n", resp.Token)
			for _, w := range resp.Warnings {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", w)
			}
			return nil
		},
	}
	dataDirFlag(cmd, &dataDir)
	configFlag(cmd)
	serverURLFlag(cmd, &server)
	cmd.Flags().StringVar(&newToken, "new-token", "", "the new token (generated when empty)")
	return cmd
}
