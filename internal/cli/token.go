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
	var dataDir, output string
	cmd := &cobra.Command{
		Use:     "show",
		Short:   "Print the server and agent tokens with the current CA hash",
		Args:    cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error { return applySources(cmd) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
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
			rep := tokenShowReport{CAHash: hash, CAFile: caFile, ServerTokenFile: l.TokenFile(), AgentTokenFile: l.AgentTokenFile()}
			for _, f := range []struct {
				label, path, user string
				out               *string
			}{
				{"server", l.TokenFile(), "server", &rep.ServerToken},
				{"agent", l.AgentTokenFile(), "node", &rep.AgentToken},
			} {
				data, err := os.ReadFile(f.path)
				if err != nil {
					return fmt.Errorf("read %s token: %w", f.label, err)
				}
				t, err := token.Parse(strings.TrimSpace(string(data)))
				if err != nil {
					return fmt.Errorf("%s: %w", f.path, err)
				}
				*f.out = token.Format(hash, f.user, t.Password)
			}
			if output != outputText {
				return writeReport(cmd.OutOrStdout(), output, rep)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "server token: %s\nagent token: %s\n", rep.ServerToken, rep.AgentToken)
			return nil
		},
	}
	dataDirFlag(cmd, &dataDir)
	configFlag(cmd)
	outputFlag(cmd, &output)
	return cmd
}

func newTokenRotateCmd() *cobra.Command {
	var dataDir, server, newToken, output string
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
			if err := checkOutput(output); err != nil {
				return err
			}
			u, err := localServerURL(cmd, server)
			if err != nil {
				return err
			}
			newLogger(cmd).Debug("asking the server to rotate the server token", "server", u, "new-token-given", newToken != "")
			c, err := serverClient(dataDir, u)
			if err != nil {
				return err
			}
			var resp api.TokenRotateResponse
			defer c.Close()
			if err := c.Do(cmd.Context(), http.MethodPut, api.PathTokenRotate, nil, api.TokenRotateRequest{Token: newToken}, &resp); err != nil {
				return fmt.Errorf("token rotate: %w", err)
			}
			for _, w := range resp.Warnings {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", w)
			}
			if output != outputText {
				rep := tokenRotateReport{ServerToken: resp.Token, Warnings: resp.Warnings}
				if rep.Warnings == nil {
					rep.Warnings = []string{}
				}
				if t, err := token.Parse(resp.Token); err == nil {
					rep.CAHash = t.CAHash
				}
				return writeReport(cmd.OutOrStdout(), output, rep)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token rotated; restart the other servers with the new token\nserver token: %s\n", resp.Token)
			return nil
		},
	}
	dataDirFlag(cmd, &dataDir)
	configFlag(cmd)
	serverURLFlag(cmd, &server)
	outputFlag(cmd, &output)
	cmd.Flags().StringVar(&newToken, "new-token", "", "the new token (generated when empty)")
	return cmd
}
