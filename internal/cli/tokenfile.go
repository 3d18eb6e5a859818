package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kpki/kpki/internal/datadir"
)

// maxTokenFile bounds a --token-file: a token is well under 200 bytes.
const maxTokenFile = 64 << 10

// tokenFileFlag registers --token-file (config key token-file, env KPKI_TOKEN_FILE).
func tokenFileFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVar(p, "token-file", "", "file holding the token (surrounding whitespace ignored; env KPKI_TOKEN_FILE); not with --token")
}

// applyTokenFile sets *token from the file named by --token-file, when one is given
// (flag, env or config file). Giving --token as well is an error, as is a path that is
// not a regular file (or a symlink to one) or a file holding no token. The error never
// quotes the file's content.
func applyTokenFile(cmd *cobra.Command, path string, token *string) error {
	return applySecretFile(cmd, "token", path, token)
}

// applySecretFile sets *value from the file named by --<flag>-file, as applyTokenFile
// does for --token.
func applySecretFile(cmd *cobra.Command, flag, path string, value *string) error {
	if path == "" {
		return nil
	}
	fileFlag := flag + "-file"
	if f := cmd.Flags().Lookup(flag); f != nil && f.Changed && *value != "" {
		return fmt.Errorf("--%s and --%s are mutually exclusive (flags, %s/%s or the config file's %s/%s): give only one",
			flag, fileFlag, envName(flag), envName(fileFlag), flag, fileFlag)
	}
	data, err := datadir.ReadRegular(path, maxTokenFile)
	if err != nil {
		return fmt.Errorf("--%s: %w", fileFlag, err)
	}
	if data == nil {
		return fmt.Errorf("--%s %s does not exist", fileFlag, path)
	}
	t := strings.TrimSpace(string(data))
	if t == "" {
		return fmt.Errorf("--%s %s is empty", fileFlag, path)
	}
	if strings.ContainsAny(t, "\r\n") {
		return fmt.Errorf("--%s %s holds more than one line; it must hold the token alone", fileFlag, path)
	}
	*value = t
	return nil
}
