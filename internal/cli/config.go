package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/kpki/kpki/internal/datadir"
)

// DefaultConfigFile is read when --config is not given and the file exists.
const DefaultConfigFile = datadir.DefaultConfigFile

// envName is the environment variable that stands for a flag.
func envName(flag string) string {
	return "KPKI_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// envAliases are the short names of SPEC §1 for a few flags.
var envAliases = map[string]string{"server": "KPKI_URL"}

// noAlias lists the commands that do not read a flag's alias: `kpki server` joins a
// cluster only when told so by --server, KPKI_SERVER or server: in its config file, never
// because KPKI_URL (the agent's variable) is left in the environment.
var noAlias = map[string]map[string]bool{"kpki server": {"server": true}}

// knownKeys are the long flag names of every kpki command: a config file is shared by
// all of them (the server's file is the clients' too), so a key that some command takes
// is ignored quietly by the others; only a key no command takes is warned about.
func knownKeys(cmd *cobra.Command) map[string]bool {
	keys := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) { keys[f.Name] = true })
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(cmd.Root())
	return keys
}

// configPath returns the config file a command reads and whether it was named
// (--config or KPKI_CONFIG) rather than the default.
func configPath(cmd *cobra.Command) (string, bool) {
	if f := cmd.Flags().Lookup("config"); f != nil {
		if f.Changed {
			return f.Value.String(), true
		}
		if v, ok := os.LookupEnv(envName("config")); ok && v != "" {
			return v, true
		}
	}
	return DefaultConfigFile, false
}

// applySources fills every flag the command line did not set, first from its
// environment variable, then from the config file: flag > env > config file > default.
//
// At debug level it logs where each setting came from, by flag name and source only:
// values are never logged (some are tokens).
func applySources(cmd *cobra.Command) error {
	var fromEnv, fromFile []string
	path, err := applySourcesTo(cmd, &fromEnv, &fromFile)
	if err == nil && debugOn(cmd) {
		log := newLogger(cmd)
		if len(fromEnv) > 0 {
			log.Debug("settings from the environment", "variables", fromEnv)
		}
		if path != "" {
			log.Debug("read the config file", "file", path, "keys", fromFile)
		}
	}
	return err
}

// applySourcesTo is applySources; it returns the config file read ("" when none) and
// appends the variables and the config keys it used to fromEnv and fromFile.
func applySourcesTo(cmd *cobra.Command, fromEnv, fromFile *[]string) (string, error) {
	recordCmdline(cmd)
	flags := cmd.Flags()
	for _, f := range allFlags(flags) {
		if f.Changed || f.Name == "config" {
			continue
		}
		name := envName(f.Name)
		v, ok := os.LookupEnv(name)
		if !ok {
			if alias, has := envAliases[f.Name]; has && !noAlias[cmd.CommandPath()][f.Name] {
				name = alias
				v, ok = os.LookupEnv(alias)
			}
		}
		if ok {
			if err := flags.Set(f.Name, v); err != nil {
				return "", fmt.Errorf("environment variable %s: %w", name, err)
			}
			*fromEnv = append(*fromEnv, name)
		}
	}
	path, explicit := configPath(cmd)
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !explicit {
			return "", nil
		}
		return "", fmt.Errorf("config file %s: %w", path, err)
	}
	values, err := parseConfig(data)
	if err != nil {
		return "", fmt.Errorf("config file %s: %w", path, err)
	}
	known := knownKeys(cmd)
	for _, kv := range values {
		f := flags.Lookup(kv.key)
		if f == nil {
			if known[kv.key] {
				continue
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "kpki: warning: config file %s: key %q is not a flag of any kpki command; ignored\n", path, kv.key)
			continue
		}
		if f.Changed {
			continue
		}
		for _, v := range kv.values {
			if err := flags.Set(kv.key, v); err != nil {
				return "", fmt.Errorf("config file %s: key %q: %w", path, kv.key, err)
			}
		}
		*fromFile = append(*fromFile, kv.key)
	}
	return path, nil
}

type configValue struct {
	key    string
	values []string
}

// parseConfig reads a YAML mapping of flag names to scalars or lists of scalars. Values
// are taken as written (a token 0123 stays "0123"), not as YAML numbers or booleans.
func parseConfig(data []byte) ([]configValue, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: the file must be a mapping of flag names to values", root.Line)
	}
	var out []configValue
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		cv := configValue{key: k.Value}
		switch v.Kind {
		case yaml.ScalarNode:
			if v.Tag != "!!null" {
				cv.values = []string{v.Value}
			}
		case yaml.SequenceNode:
			for _, item := range v.Content {
				if item.Kind != yaml.ScalarNode {
					return nil, fmt.Errorf("line %d: key %q: list items must be plain values", item.Line, k.Value)
				}
				if item.Tag != "!!null" {
					cv.values = append(cv.values, item.Value)
				}
			}
		default:
			return nil, fmt.Errorf("line %d: key %q: want a value or a list of values", v.Line, k.Value)
		}
		out = append(out, cv)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out, nil
}

func allFlags(fs *pflag.FlagSet) []*pflag.Flag {
	var out []*pflag.Flag
	fs.VisitAll(func(f *pflag.Flag) { out = append(out, f) })
	return out
}
