package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/rotation"
)

func newRotateCACmd() *cobra.Command {
	var dataDir, path, server, output string
	var force, dryRun, rollback, status bool
	first, last := certs.CAs[0], certs.CAs[len(certs.CAs)-1]
	cmd := &cobra.Command{
		Use:   "rotate-ca --path DIR | --rollback",
		Short: "Load new CA certificates and keys (staged in DIR laid out as a server dir) into the datastore",
		Long: fmt.Sprintf(`Reads DIR/%s, DIR/%s, …, DIR/%s and
DIR/%s (files that are missing keep their current value; each must be a regular
file, or a symlink to one, of at most 1 MiB), sends them to the running kpki server, which
checks them all and, if every check passes, saves them to the datastore. Restart kpki on all
nodes afterwards, servers first, then agents.

The datastore keeps the CA files each rotation replaced. With --rollback (and no --path)
the server restores them, with the same checks: the kept CAs must chain to the current CA
files (true when the rotation being undone was cross-signed by the kept root, or kept the
root), unless --force; the files the rollback replaces are kept in turn, so a second
--rollback rolls forward again.`, rotation.StagedPath(first.CertField), rotation.StagedPath(first.KeyField),
			rotation.StagedPath(last.KeyField), rotation.StagedPath(rotation.ServiceKey)),
		Args:    cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error { return applySources(cmd) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if status {
				return rotateCAStatus(cmd, dataDir, server, path, output)
			}
			if rollback && path != "" {
				return errors.New("--rollback restores the CA files the last rotation replaced and takes no --path")
			}
			if path == "" && !rollback {
				return errors.New("--path is required: the directory holding the staged tls/ files (or --rollback to restore the CA files the last rotation replaced)")
			}
			u, err := localServerURL(cmd, server)
			if err != nil {
				return err
			}
			if rollback {
				newLogger(cmd).Debug("asking the server to roll back the last CA rotation", "server", u, "dry-run", dryRun, "force", force)
				return runRollbackCA(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), dataDir, u, force, dryRun, output)
			}
			newLogger(cmd).Debug("sending the staged CA files to the server", "server", u, "path", path, "dry-run", dryRun, "force", force)
			return runRotateCA(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), dataDir, u, path, force, dryRun, output)
		},
	}
	dataDirFlag(cmd, &dataDir)
	configFlag(cmd)
	serverURLFlag(cmd, &server)
	cmd.Flags().StringVar(&path, "path", "", "staging directory laid out as a server dir (DIR/tls/...)")
	cmd.Flags().BoolVar(&force, "force", false, "skip the chain and service-key continuity checks (disruptive: new root)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "run every check and print what would change; write nothing")
	cmd.Flags().BoolVar(&rollback, "rollback", false, "restore the CA files the last rotate-ca (or rollback) replaced, kept in the datastore")
	cmd.Flags().BoolVar(&status, "status", false, "show which CA generation every server and agent runs and which are still pending; change nothing")
	outputFlag(cmd, &output)
	return cmd
}

// runRotateCA reads the staged files and sends them to the server. ctx is the command's
// (cancelled by SIGINT and SIGTERM, see Execute): the request is made with it.
// With output json or yaml, a rotation that went through (or a dry run that passed)
// prints one rotateCAReport object instead of the text lines; a refusal is reported on
// stderr alike in every format.
func runRotateCA(ctx context.Context, out, errOut io.Writer, dataDir, server, dir string, force, dryRun bool, output string) error {
	if ctx == nil {
		ctx = context.Background()
	}
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("--path: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("--path %s is not a directory", dir)
	}
	staged, err := readStaged(dir)
	if err != nil {
		return err
	}
	if len(staged) == 0 {
		fields := rotation.Fields()
		return fmt.Errorf("no CA files found under %s (expected %s/%s, …, %s/%s)", dir, dir, rotation.StagedPath(fields[0]), dir, rotation.StagedPath(fields[len(fields)-1]))
	}
	var notStaged []string
	for _, f := range rotation.Fields() {
		if _, ok := staged[f]; !ok {
			notStaged = append(notStaged, filepath.Join(dir, rotation.StagedPath(f)))
		}
	}
	if output == outputText {
		for _, f := range notStaged {
			fmt.Fprintf(out, "note: %s not staged; keeping the current one\n", f)
		}
	}
	return sendRotateCA(ctx, out, errOut, dataDir, server, api.RotateCARequest{Files: staged}, notStaged, force, dryRun, false, output)
}

// runRollbackCA asks the server to restore the CA files the last rotation replaced
// and prints the outcome as runRotateCA does.
func runRollbackCA(ctx context.Context, out, errOut io.Writer, dataDir, server string, force, dryRun bool, output string) error {
	if ctx == nil {
		ctx = context.Background()
	}
	return sendRotateCA(ctx, out, errOut, dataDir, server, api.RotateCARequest{}, nil, force, dryRun, true, output)
}

// sendRotateCA sends a rotation (or, with rollback, a rollback) to the server and
// prints its outcome; notStaged are the files the report lists as not staged.
func sendRotateCA(ctx context.Context, out, errOut io.Writer, dataDir, server string, req api.RotateCARequest, notStaged []string, force, dryRun, rollback bool, output string) error {
	c, err := serverClient(dataDir, server)
	if err != nil {
		return err
	}
	q := url.Values{}
	if force {
		q.Set("force", "true")
	}
	if dryRun {
		q.Set("dry-run", "true")
	}
	what, saved := "CA rotation", "certificates saved to datastore"
	if rollback {
		q.Set(api.QueryRollback, "true")
		what, saved = "CA rollback", "kept CA files restored to the datastore"
	}
	var resp api.RotateCAResponse
	defer c.Close()
	err = c.Do(ctx, http.MethodPut, api.PathRotateCA, q, req, &resp)
	if ctx.Err() != nil {
		if rollback {
			return fmt.Errorf("rotate-ca --rollback interrupted before the server answered: a rollback the server already received may still be saved; run rotate-ca --rollback --dry-run to see which way it would go now")
		}
		return fmt.Errorf("rotate-ca interrupted before the server answered: a rotation the server already received may still be saved; run it again with --dry-run to see (\"nothing to rotate\" if it was)")
	}
	var se *api.StatusError
	if errors.As(err, &se) && len(se.Body.Errors) > 0 {
		if len(se.Body.Errors) == 1 {
			return fmt.Errorf("%s refused, nothing changed: %s (server error id %s)", what, se.Body.Errors[0], se.Body.ID)
		}
		printFailedChecks(errOut, se.Body.Errors)
		return fmt.Errorf("%s refused, nothing changed: %d checks failed, listed above (server error id %s)", what, len(se.Body.Errors), se.Body.ID)
	}
	if err != nil {
		return err
	}
	if output != outputText {
		return writeReport(out, output, rotateCAReportOf(resp, notStaged))
	}
	for _, u := range resp.Unchanged {
		fmt.Fprintf(out, "unchanged: %s\n", u)
	}
	verb := "changed"
	if resp.DryRun {
		verb = "would change"
	}
	for _, ch := range resp.Changes {
		switch {
		case ch.New != nil:
			fmt.Fprintf(out, "%s: %s\n", verb, ch.File)
			if ch.Old != nil {
				fmt.Fprintf(out, "  old: subject %q issuer %q sha256 %s expires %s\n", ch.Old.Subject, ch.Old.Issuer, ch.Old.Fingerprint, ch.Old.NotAfter.Format(time.RFC3339))
			}
			fmt.Fprintf(out, "  new: subject %q issuer %q sha256 %s expires %s\n", ch.New.Subject, ch.New.Issuer, ch.New.Fingerprint, ch.New.NotAfter.Format(time.RFC3339))
		default:
			fmt.Fprintf(out, "%s: %s (%d key(s))\n", verb, ch.File, ch.KeyCount)
		}
	}
	if resp.DryRun {
		if resp.TokensChange {
			fmt.Fprintf(out, "tokens would change: CA hash %s -> %s\n", resp.OldCAHash, resp.NewCAHash)
		} else {
			fmt.Fprintln(out, "tokens would not change")
		}
		fmt.Fprintln(out, "dry run: every check passed; nothing was written")
		return nil
	}
	fmt.Fprintln(out, saved+"; restart kpki on all nodes, servers first, then agents")
	fmt.Fprintln(out, "running servers apply it live and agents follow on their next pass, without a restart; kpki certificate rotate-ca --status shows the rollout")
	if resp.TokensChange {
		fmt.Fprintf(out, "the CA hash changed; reconfigure every node that joined with a secure token before restarting it:\nserver token: %s\nagent token: %s\n", resp.ServerToken, resp.AgentToken)
	}
	return nil
}

// rotateCAReportOf is the report of a rotation the server accepted. The tokens are set
// only when the text output prints them: the rotation was saved and changed the CA hash.
func rotateCAReportOf(resp api.RotateCAResponse, notStaged []string) rotateCAReport {
	rep := rotateCAReport{
		DryRun: resp.DryRun, Saved: resp.Saved && !resp.DryRun, Changes: []rotateCAChange{},
		Unchanged: append([]string{}, resp.Unchanged...), NotStaged: append([]string{}, notStaged...),
		TokensChange: resp.TokensChange, OldCAHash: resp.OldCAHash, NewCAHash: resp.NewCAHash,
	}
	for _, ch := range resp.Changes {
		rep.Changes = append(rep.Changes, rotateCAChange{File: ch.File, Old: certInfoOf(ch.Old), New: certInfoOf(ch.New), KeyCount: ch.KeyCount})
	}
	if !resp.DryRun && resp.TokensChange {
		rep.ServerToken, rep.AgentToken = resp.ServerToken, resp.AgentToken
	}
	return rep
}

// readStaged reads the staging dir: only regular files (a symlink to one is followed) of
// at most datadir.MaxStagedFile bytes; a missing file is not staged, anything else that is not a
// readable regular file (a dangling symlink, a FIFO, a device, a larger file) is an error
// naming it.
func readStaged(dir string) (map[string][]byte, error) {
	return rotation.ReadStaged(dir, func(p string) ([]byte, error) {
		p = filepath.FromSlash(p)
		b, err := datadir.ReadRegular(p, datadir.MaxStagedFile)
		if err == nil && b != nil && len(strings.TrimSpace(string(b))) == 0 {
			return nil, fmt.Errorf("%s is empty", p)
		}
		return b, err
	})
}

// printFailedChecks writes one line per failed check. A hint that ends several of
// them (their text after the last "; ") is cut from each and printed once, last.
func printFailedChecks(w io.Writer, errs []string) {
	hintOf := func(e string) string {
		if i := strings.LastIndex(e, "; "); i >= 0 {
			return e[i+2:]
		}
		return ""
	}
	count := map[string]int{}
	for _, e := range errs {
		if h := hintOf(e); h != "" {
			count[h]++
		}
	}
	var hints []string
	listed := map[string]bool{}
	fmt.Fprintf(w, "CA rotation refused: %d checks failed:\n", len(errs))
	for _, e := range errs {
		h := hintOf(e)
		if count[h] > 1 {
			e = strings.TrimSuffix(e, "; "+h)
			if !listed[h] {
				hints = append(hints, h)
				listed[h] = true
			}
		}
		fmt.Fprintf(w, "  - %s\n", e)
	}
	for _, h := range hints {
		fmt.Fprintf(w, "hint: %s\n", h)
	}
}
