// Package cli builds kpki's command line: one file per command. Commands parse flags,
// environment variables and the config file, call the packages that do the work, and
// print results; they hold no PKI logic of their own.
package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kpki/kpki/internal/datadir"
)

// Version is set at build time.
var Version = "dev"

// Execute runs the command line and returns the process exit code.
func Execute(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cmd, err := root.ExecuteContextC(ctx); err != nil {
		msg := err.Error()
		if cmd != nil {
			local, supervisor := suggestedFlags(cmd)
			msg = addCommandFlags(msg, local, supervisor)
		}
		fmt.Fprintf(stderr, "kpki: %s\n", oneLine(msg))
		if ec, ok := err.(interface{ ExitCode() int }); ok {
			return ec.ExitCode()
		}
		return 1
	}
	return 0
}

func oneLine(s string) string {
	out := []rune{}
	for _, r := range s {
		if r == '\n' {
			out = append(out, ';', ' ')
			continue
		}
		out = append(out, r)
	}
	return string(out)
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "kpki",
		Short:         "kpki manages the PKI of a Kubernetes cluster",
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.Version = version() // --version prints what `kpki version` prints
	root.SetVersionTemplate("kpki {{.Version}}\n")
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().Bool("debug", false, "log at debug level (env KPKI_DEBUG, config key debug: true); tokens, passwords and keys are never logged")
	root.AddCommand(newServerCmd(), newAgentCmd(), newCertificateCmd(), newTokenCmd(), newVersionCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "kpki %s\n", version())
			return nil
		},
	}
}

// newLogger is the logger of a command: text lines on its stderr, at debug level when
// --debug (or KPKI_DEBUG, or debug: in the config file) is set, else at info level.
func newLogger(cmd *cobra.Command) *slog.Logger {
	level := slog.LevelInfo
	if debugOn(cmd) {
		level = slog.LevelDebug
	}
	h := slog.Handler(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
	if local, supervisor := suggestedFlags(cmd); local != "" || supervisor != "" {
		h = commandFlagsHandler{h, local, supervisor}
	}
	return slog.New(h)
}

// debugOn reports whether --debug is set for cmd.
func debugOn(cmd *cobra.Command) bool {
	on, err := cmd.Flags().GetBool("debug")
	return err == nil && on
}

// dataDirFlag registers --data-dir with its default.
func dataDirFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVarP(p, "data-dir", "d", datadir.DefaultRoot, "data directory (env KPKI_DATA_DIR)")
}

// configFlag registers --config.
func configFlag(cmd *cobra.Command) {
	cmd.Flags().String("config", DefaultConfigFile, "YAML config file whose keys are long flag names (env KPKI_CONFIG); the server's file: keys of other kpki commands are ignored")
}

// version is Version, or the VCS revision the binary was built from.
func version() string {
	if Version != "dev" {
		return Version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return Version
	}
	rev, dirty := "", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return Version
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return Version + "+" + rev
}
