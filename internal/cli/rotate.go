package cli

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/certrotate"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datadir"
)

func newRotateCmd() *cobra.Command {
	var dataDir string
	var services []string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Rotate leaf certificates (kpki must be stopped): they are issued with new keys at the next start",
		Long: "Valid services: " + fmt.Sprint(certs.Services()) + `
The aliases rke2-server, k3s-server (kpki-server) and rke2-controller, k3s-controller
(kpki-controller) are accepted.`,
		Args:    cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error { return applySources(cmd) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			resolved, err := certs.ResolveServices(services)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			// A dry run changes nothing, so it runs while kpki does; the real rotation
			// needs kpki stopped.
			release, err := certrotate.Lock(dataDir)
			switch {
			case err == nil:
				defer release()
			case dryRun && errors.Is(err, certrotate.ErrRunning):
				fmt.Fprintf(out, "note: %v; stop it before running the rotation without --dry-run\n", err)
			default:
				return err
			}
			now := time.Now()
			plan, err := certrotate.Build(certrotate.Options{DataDir: dataDir, Services: resolved, Now: now})
			if err != nil {
				return err
			}
			plan.Print(out, dryRun)
			if dryRun {
				fmt.Fprintln(out, "dry run: nothing was changed")
				return nil
			}
			log := audit.Open(datadir.Layout{Root: dataDir}.AuditLog())
			err = plan.Execute(log, "certificate-rotate", now)
			if cerr := log.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			dirs := ""
			for i, b := range plan.Backups {
				if i > 0 {
					dirs += ", "
				}
				dirs += b.Dir
			}
			fmt.Fprintf(out, "certificates backed up to %s; restart kpki to rotate them\n", dirs)
			return nil
		},
	}
	dataDirFlag(cmd, &dataDir)
	configFlag(cmd)
	cmd.Flags().StringSliceVar(&services, "service", nil, "services to rotate (comma-separated or repeated); all when empty")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be backed up and deleted; change nothing")
	return cmd
}
