package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kpki/kpki/internal/api"
)

// runRotateCAStatus prints the rollout of the current CA generation: every server and
// agent, the generation it reported, whether that is the datastore's, its earliest
// certificate expiry and when it last reported. Pending nodes are not an error: the
// command exits 0 whenever the server answered.
func runRotateCAStatus(ctx context.Context, out io.Writer, dataDir, server, output string) error {
	if ctx == nil {
		ctx = context.Background()
	}
	c, err := serverClient(dataDir, server)
	if err != nil {
		return err
	}
	defer c.Close()
	var st api.RolloutStatus
	if err := c.Do(ctx, http.MethodGet, api.PathRolloutStatus, nil, nil, &st); err != nil {
		return fmt.Errorf("rollout status: %w", err)
	}
	if output != outputText {
		return writeReport(out, output, st)
	}
	fmt.Fprintf(out, "current CA generation: %s (server CAs: %s)\n", st.Current.Generation, st.Current.ServerGeneration)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tGENERATION\tSTATE\tEARLIEST EXPIRY\tLAST SEEN")
	for _, n := range st.Nodes {
		gen, expiry, seen := "-", "-", "never"
		if n.Generation != "" {
			gen = n.Generation
		}
		if n.EarliestExpiry != nil {
			expiry = n.EarliestExpiry.NotAfter.UTC().Format(time.RFC3339) + " " + n.EarliestExpiry.File
		}
		if n.LastSeen != nil {
			seen = n.LastSeen.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Node, n.Role, gen, n.State, expiry, seen)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, st.Summary())
	return err
}

// rotateCAStatus runs `rotate-ca --status`, which takes no staging dir nor rotation flag.
func rotateCAStatus(cmd *cobra.Command, dataDir, server, path, output string) error {
	for _, f := range []string{"force", "dry-run", "rollback"} {
		if cmd.Flags().Changed(f) {
			return fmt.Errorf("--status changes nothing: it cannot be combined with --%s", f)
		}
	}
	if path != "" {
		return fmt.Errorf("--status changes nothing: it cannot be combined with --path")
	}
	u, err := localServerURL(cmd, server)
	if err != nil {
		return err
	}
	return runRotateCAStatus(cmd.Context(), cmd.OutOrStdout(), dataDir, u, output)
}
