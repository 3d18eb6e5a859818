package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/kpki/kpki/internal/certcheck"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
)

func newCheckCmd() *cobra.Command {
	var (
		dataDir         string
		services        []string
		output          string
		failOn          string
		renewBeforeDays int
		caWarnDays      int
		all             bool
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "List every certificate of the node with its expiry and status",
		Long: `List every certificate in every certificate file of the selected services (all
services and the CA files when --service is not given), with subject, issuer, expiry,
residual time and status (and usages in -o text, json and yaml): OK, WARNING (a leaf that expires within
--renew-before-days, a CA certificate that expires within --ca-warn-days or
--renew-before-days, whichever is longer), EXPIRED, NOT YET VALID, MISSING for an
expected file that does not exist, or ERROR for a file that cannot be read; the reason
of a MISSING or ERROR row follows the table, and a summary line ends it.

The table lists each distinct CA certificate once (the CA files and the chains bundled in
leaf files) and each leaf file by its leaf; --all lists every certificate of every
file. Names too long for 120 columns are shortened with "…", a kpki CA name keeping its
role and creation time (server-root@1796194155). -o json and -o yaml always hold every
certificate, with a summary object. --fail-on counts the rows listed.`,
		Args:    cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error { return applySources(cmd) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := certcheck.ParseFormat(output)
			if err != nil {
				return err
			}
			threshold, err := certcheck.ParseFailOn(failOn)
			if err != nil {
				return err
			}
			if renewBeforeDays < 0 {
				return fmt.Errorf("--renew-before-days %d must be at least 0", renewBeforeDays)
			}
			if caWarnDays < 0 {
				return fmt.Errorf("--ca-warn-days %d must be at least 0", caWarnDays)
			}
			rows, err := certcheck.Collect(certcheck.Options{
				DataDir:      dataDir,
				Services:     services,
				Now:          clock.Real{}.Now(),
				RenewBefore:  time.Duration(renewBeforeDays) * 24 * time.Hour,
				CAWarnBefore: time.Duration(caWarnDays) * 24 * time.Hour,
			})
			if err != nil {
				return err
			}
			if err := certcheck.Render(cmd.OutOrStdout(), rows, format, all); err != nil {
				return fmt.Errorf("write report: %w", err)
			}
			return certcheck.Check(rows, threshold, all || format == certcheck.FormatJSON || format == certcheck.FormatYAML)
		},
	}
	dataDirFlag(cmd, &dataDir)
	configFlag(cmd)
	f := cmd.Flags()
	f.BoolVar(&all, "all", false, "table and text: list every certificate of every file (by default each CA certificate is listed once and a leaf file by its leaf)")
	f.StringSliceVar(&services, "service", nil, "only these services' certificates (comma-separated or repeated); aliases such as rke2-server are accepted")
	f.StringVarP(&output, "output", "o", string(certcheck.FormatTable), "output format: table, text, json or yaml")
	f.StringVar(&failOn, "fail-on", "", "exit 1 when a certificate reaches this status: warning (WARNING or worse) or expired (EXPIRED, NOT YET VALID, MISSING or ERROR)")
	f.IntVar(&renewBeforeDays, "renew-before-days", certs.DefaultRenewBeforeDays, "report leaf certificates expiring within this many days as WARNING")
	f.IntVar(&caWarnDays, "ca-warn-days", certs.DefaultCAWarnDays, "report CA certificates expiring within this many days as WARNING")
	return cmd
}
