package cli

import "github.com/spf13/cobra"

func newCertificateCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "certificate", Aliases: []string{"cert"}, Short: "Check and rotate certificates and CAs"}
	cmd.AddCommand(
		newCheckCmd(),
		newRotateCmd(),
		newRotateCACmd(),
		newGenerateCACmd(),
		newCrossSignCACmd(),
		newGenerateServiceKeyCmd(),
	)
	return cmd
}
