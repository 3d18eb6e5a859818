package cli

import (
	"errors"
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
	if path == "" {
		return nil
	}
	if f := cmd.Flags().Lookup("token"); f != nil && f.Changed && *token != "" {
		return errors.New("--token and --token-file are mutually exclusive (flags, KPKI_TOKEN/KPKI_TOKEN_FILE or the config file's token/token-file): give only one")
	}
	data, err := datadir.ReadRegular(path, maxTokenFile)
	if err != nil {
		return fmt.Errorf("--token-file: %w", err)
	}
	if data == nil {
		return fmt.Errorf("--token-file %s does not exist", path)
	}
	t := strings.TrimSpace(string(data))
	if t == "" {
		return fmt.Errorf("--token-file %s is empty", path)
	}
	if strings.ContainsAny(t, "\r\n") {
		return fmt.Errorf("--token-file %s holds more than one line; it must hold the token alone", path)
	}
	*token = t
	return nil
}
