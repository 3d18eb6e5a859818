package cli

import (
	"context"
	"log/slog"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// cmdlineAnnotation records, on a command, the flags given on its command line (as
// opposed to the environment or the config file), comma-separated.
const cmdlineAnnotation = "kpki-cmdline-flags"

// recordCmdline notes which flags of cmd the command line set; applySources calls it
// before it fills the others.
func recordCmdline(cmd *cobra.Command) {
	var names []string
	cmd.Flags().Visit(func(f *pflag.Flag) { names = append(names, f.Name) })
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations[cmdlineAnnotation] = strings.Join(names, ",")
}

func onCmdline(cmd *cobra.Command, name string) bool {
	for _, n := range strings.Split(cmd.Annotations[cmdlineAnnotation], ",") {
		if n == name {
			return true
		}
	}
	return false
}

// shellQuote quotes s for a POSIX shell when it holds anything but plain path characters.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_/.:=,+-@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// suggestedFlags are the flags that a kpki command printed in a message of cmd needs to
// act on the same node as cmd: local (--data-dir when not the default, --config when one
// was named) for every command, and supervisor (--server) for those that talk to the
// running server, rotate-ca and token rotate, when cmd was told on its command line where
// the supervisor is (the environment and the config file reach the printed command too).
func suggestedFlags(cmd *cobra.Command) (local, supervisor string) {
	switch cmd.Name() {
	case "generate-ca":
		// Its data dir is where the CAs are generated, not the cluster's.
		return nextStepConfigFlag(cmd), ""
	case "agent":
		return nextStepFlags(cmd, flagString(cmd, "data-dir")), ""
	case "server":
		local = nextStepFlags(cmd, flagString(cmd, "data-dir"))
		if onCmdline(cmd, "supervisor-port") || onCmdline(cmd, "bind-address") || onCmdline(cmd, "advertise-address") {
			if u, err := supervisorURL(cmd); err == nil {
				supervisor = " --server=" + shellQuote(u)
			}
		}
		return local, supervisor
	}
	local = nextStepFlags(cmd, flagString(cmd, "data-dir"))
	if onCmdline(cmd, "server") {
		supervisor = " --server=" + shellQuote(flagString(cmd, "server"))
	}
	return local, supervisor
}

func flagString(cmd *cobra.Command, name string) string {
	if f := cmd.Flags().Lookup(name); f != nil {
		return f.Value.String()
	}
	return ""
}

// supervisorURL is where the local server's supervisor is reached, from the server's
// own flags, as localServerURL finds it from a client command's.
func supervisorURL(cmd *cobra.Command) (string, error) {
	port, err := cmd.Flags().GetInt("supervisor-port")
	if err != nil {
		return "", err
	}
	return localSupervisorURL(flagString(cmd, "bind-address"), flagString(cmd, "advertise-address"), port), nil
}

// quotedCommand is a kpki command quoted in a message, between backticks or in
// parentheses: "`kpki certificate rotate --service admin`", "(kpki certificate rotate-ca)".
var quotedCommand = regexp.MustCompile("(`|\\()(kpki (?:certificate|token) [a-z-]+)([^`()]*)(`|\\))")

// addCommandFlags appends local to every kpki command quoted in msg, and supervisor to
// those that talk to the running server (rotate-ca, token rotate), so that each runs as
// printed. A command meant for another node ("kpki token show on a server") or that
// already names a data dir is left as it is.
func addCommandFlags(msg, local, supervisor string) string {
	if local == "" && supervisor == "" {
		return msg
	}
	return quotedCommand.ReplaceAllStringFunc(msg, func(m string) string {
		sub := quotedCommand.FindStringSubmatch(m)
		open, name, args, end := sub[1], sub[2], sub[3], sub[4]
		if (open == "`") != (end == "`") || strings.Contains(args, " on a ") || strings.Contains(args, "--data-dir") {
			return m
		}
		add := local
		if name == "kpki certificate rotate-ca" || name == "kpki token rotate" {
			add += supervisor
		}
		return open + name + strings.TrimRight(args, " ") + add + end
	})
}

// commandFlagsHandler rewrites the message of every record with addCommandFlags.
type commandFlagsHandler struct {
	slog.Handler
	local, supervisor string
}

func (h commandFlagsHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, addCommandFlags(r.Message, h.local, h.supervisor), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(a)
		return true
	})
	return h.Handler.Handle(ctx, out)
}

func (h commandFlagsHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return commandFlagsHandler{h.Handler.WithAttrs(as), h.local, h.supervisor}
}

func (h commandFlagsHandler) WithGroup(name string) slog.Handler {
	return commandFlagsHandler{h.Handler.WithGroup(name), h.local, h.supervisor}
}
