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
	"sigs.k8s.io/yaml"
)

// DefaultConfigFile is read when --config is not given and the file exists.
const DefaultConfigFile = "/etc/kpki/config.yaml"

// envName is the environment variable that stands for a flag.
func envName(flag string) string {
	return "KPKI_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// envAliases are the short names of SPEC §1 for a few flags.
var envAliases = map[string]string{"server": "KPKI_URL"}

// applySources fills every flag the command line did not set, first from its
// environment variable, then from the config file: flag > env > config file > default.
func applySources(cmd *cobra.Command) error {
	flags := cmd.Flags()
	for _, f := range allFlags(flags) {
		if f.Changed || f.Name == "config" {
			continue
		}
		name := envName(f.Name)
		v, ok := os.LookupEnv(name)
		if !ok {
			if alias, has := envAliases[f.Name]; has {
				name = alias
				v, ok = os.LookupEnv(alias)
			}
		}
		if ok {
			if err := flags.Set(f.Name, v); err != nil {
				return fmt.Errorf("environment variable %s: %w", name, err)
			}
		}
	}
	path, explicit := DefaultConfigFile, false
	if f := flags.Lookup("config"); f != nil {
		if f.Changed {
			path, explicit = f.Value.String(), true
		} else if v, ok := os.LookupEnv(envName("config")); ok && v != "" {
			path, explicit = v, true
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !explicit {
			return nil
		}
		return fmt.Errorf("config file %s: %w", path, err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(data, &values); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f := flags.Lookup(k)
		if f == nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "kpki: warning: config file %s: key %q is not a flag of `%s`; ignored\n", path, k, cmd.CommandPath())
			continue
		}
		if f.Changed {
			continue
		}
		items := []any{values[k]}
		if list, ok := values[k].([]any); ok {
			items = list
		}
		for _, it := range items {
			if it == nil {
				continue
			}
			if err := flags.Set(k, scalar(it)); err != nil {
				return fmt.Errorf("config file %s: key %q: %w", path, k, err)
			}
		}
	}
	return nil
}

func scalar(v any) string {
	switch x := v.(type) {
	case float64:
		if x == float64(int64(x)) {
			return fmt.Sprintf("%d", int64(x))
		}
		return fmt.Sprint(x)
	case string:
		return x
	case map[string]any:
		return fmt.Sprint(x)
	default:
		return fmt.Sprint(x)
	}
}

func allFlags(fs *pflag.FlagSet) []*pflag.Flag {
	var out []*pflag.Flag
	fs.VisitAll(func(f *pflag.Flag) { out = append(out, f) })
	return out
}
