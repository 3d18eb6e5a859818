package cli

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// clearKPKIEnv removes every KPKI_* variable for the duration of the test.
func clearKPKIEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "KPKI_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
}

// newTestCmd is a command with flags of every kind kpki uses.
func newTestCmd() (*cobra.Command, *bytes.Buffer) {
	var dataDir string
	cmd := &cobra.Command{Use: "testcmd", RunE: func(*cobra.Command, []string) error { return nil }}
	dataDirFlag(cmd, &dataDir)
	configFlag(cmd)
	f := cmd.Flags()
	f.StringP("token", "t", "", "")
	f.StringP("server", "s", "", "")
	f.StringSlice("tls-san", nil, "")
	f.StringSlice("node-ip", []string{"192.0.2.1"}, "")
	f.Int("supervisor-port", 9345, "")
	f.Duration("renew-interval", time.Hour, "")
	f.Bool("etcd-unsafe-no-fsync", false, "")
	f.String("metrics-address", "127.0.0.1:9346", "")
	var stderr bytes.Buffer
	cmd.SetErr(&stderr)
	return cmd, &stderr
}

// writeConfig writes a config file and returns its path.
func writeConfig(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// apply parses args, sets env and runs applySources. A non-empty config is written to
// a file passed with --config.
func apply(t *testing.T, args []string, env map[string]string, config string) (*cobra.Command, string, error) {
	t.Helper()
	clearKPKIEnv(t)
	for k, v := range env {
		t.Setenv(k, v)
	}
	cmd, stderr := newTestCmd()
	if config != "" {
		args = append([]string{"--config", writeConfig(t, config)}, args...)
	}
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatalf("ParseFlags(%q): %v", args, err)
	}
	err := applySources(cmd)
	return cmd, stderr.String(), err
}

func getString(t *testing.T, cmd *cobra.Command, name string) string {
	t.Helper()
	v, err := cmd.Flags().GetString(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func getSlice(t *testing.T, cmd *cobra.Command, name string) []string {
	t.Helper()
	v, err := cmd.Flags().GetStringSlice(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestEnvName(t *testing.T) {
	tests := []struct{ flag, want string }{
		{"data-dir", "KPKI_DATA_DIR"},
		{"token", "KPKI_TOKEN"},
		{"server", "KPKI_SERVER"},
		{"tls-san", "KPKI_TLS_SAN"},
		{"etcd-unsafe-no-fsync", "KPKI_ETCD_UNSAFE_NO_FSYNC"},
	}
	for _, tc := range tests {
		if got := envName(tc.flag); got != tc.want {
			t.Errorf("envName(%q) = %q, want %q", tc.flag, got, tc.want)
		}
	}
}

func TestApplySourcesPrecedence(t *testing.T) {
	const cfg = "data-dir: /from/config\ntoken: config-token\nserver: https://config:9345\n"
	tests := []struct {
		name      string
		args      []string
		env       map[string]string
		config    string
		wantDir   string
		wantToken string
		wantURL   string
	}{
		{name: "defaults", wantDir: "/var/lib/rancher/kpki"},
		{name: "config file", config: cfg, wantDir: "/from/config", wantToken: "config-token", wantURL: "https://config:9345"},
		{name: "env over config", config: cfg,
			env:     map[string]string{"KPKI_DATA_DIR": "/from/env", "KPKI_TOKEN": "env-token", "KPKI_URL": "https://env:9345"},
			wantDir: "/from/env", wantToken: "env-token", wantURL: "https://env:9345"},
		{name: "flag over env over config", config: cfg,
			args:    []string{"--data-dir", "/from/flag", "--token", "flag-token", "--server", "https://flag:9345"},
			env:     map[string]string{"KPKI_DATA_DIR": "/from/env", "KPKI_TOKEN": "env-token", "KPKI_URL": "https://env:9345"},
			wantDir: "/from/flag", wantToken: "flag-token", wantURL: "https://flag:9345"},
		{name: "shorthand flags count as flags", config: cfg,
			args:    []string{"-d", "/short", "-t", "short-token", "-s", "https://short:1"},
			env:     map[string]string{"KPKI_DATA_DIR": "/from/env"},
			wantDir: "/short", wantToken: "short-token", wantURL: "https://short:1"},
		{name: "flag over config", config: cfg, args: []string{"--data-dir=/from/flag"},
			wantDir: "/from/flag", wantToken: "config-token", wantURL: "https://config:9345"},
		{name: "env without config", env: map[string]string{"KPKI_DATA_DIR": "/from/env"}, wantDir: "/from/env"},
		{name: "each value from its own source", config: cfg, args: []string{"--token", "flag-token"},
			env:     map[string]string{"KPKI_DATA_DIR": "/from/env"},
			wantDir: "/from/env", wantToken: "flag-token", wantURL: "https://config:9345"},
		{name: "KPKI_SERVER beats KPKI_URL", env: map[string]string{"KPKI_SERVER": "https://server-env:1", "KPKI_URL": "https://url-env:1"},
			wantDir: "/var/lib/rancher/kpki", wantURL: "https://server-env:1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd, stderr, err := apply(t, tc.args, tc.env, tc.config)
			if err != nil {
				t.Fatalf("applySources: %v", err)
			}
			if got := getString(t, cmd, "data-dir"); got != tc.wantDir {
				t.Errorf("data-dir = %q, want %q", got, tc.wantDir)
			}
			if got := getString(t, cmd, "token"); got != tc.wantToken {
				t.Errorf("token = %q, want %q", got, tc.wantToken)
			}
			if got := getString(t, cmd, "server"); got != tc.wantURL {
				t.Errorf("server = %q, want %q", got, tc.wantURL)
			}
			if stderr != "" {
				t.Errorf("unexpected output: %q", stderr)
			}
		})
	}
}

func TestApplySourcesValues(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		env    map[string]string
		config string
		check  func(t *testing.T, cmd *cobra.Command)
	}{
		{name: "YAML list", config: "tls-san:\n  - a.example\n  - 10.0.0.1\n", check: func(t *testing.T, c *cobra.Command) {
			wantSlice(t, c, "tls-san", "a.example", "10.0.0.1")
		}},
		{name: "flow list", config: "tls-san: [a.example, b.example]\n", check: func(t *testing.T, c *cobra.Command) {
			wantSlice(t, c, "tls-san", "a.example", "b.example")
		}},
		{name: "single value for a list flag", config: "tls-san: a.example\n", check: func(t *testing.T, c *cobra.Command) {
			wantSlice(t, c, "tls-san", "a.example")
		}},
		{name: "comma string for a list flag", config: "tls-san: a.example,b.example\n", check: func(t *testing.T, c *cobra.Command) {
			wantSlice(t, c, "tls-san", "a.example", "b.example")
		}},
		{name: "list replaces the flag's default", config: "node-ip: [10.0.0.5, 10.0.0.6]\n", check: func(t *testing.T, c *cobra.Command) {
			wantSlice(t, c, "node-ip", "10.0.0.5", "10.0.0.6")
		}},
		{name: "values taken as written", config: "token: 0123\ntls-san: [1e3, 0x1F, yes]\n", check: func(t *testing.T, c *cobra.Command) {
			if got := getString(t, c, "token"); got != "0123" {
				t.Errorf("token = %q, want 0123", got)
			}
			wantSlice(t, c, "tls-san", "1e3", "0x1F", "yes")
		}},
		{name: "null items skipped", config: "tls-san: [a.example, null, b.example]\n", check: func(t *testing.T, c *cobra.Command) {
			wantSlice(t, c, "tls-san", "a.example", "b.example")
		}},
		{name: "flag list wins over config list", args: []string{"--tls-san", "x", "--tls-san", "y"}, config: "tls-san: [a, b]\n", check: func(t *testing.T, c *cobra.Command) {
			wantSlice(t, c, "tls-san", "x", "y")
		}},
		{name: "env list wins over config list", env: map[string]string{"KPKI_TLS_SAN": "e1,e2"}, config: "tls-san: [a, b]\n", check: func(t *testing.T, c *cobra.Command) {
			wantSlice(t, c, "tls-san", "e1", "e2")
		}},
		{name: "default list kept", check: func(t *testing.T, c *cobra.Command) {
			wantSlice(t, c, "node-ip", "192.0.2.1")
			wantSlice(t, c, "tls-san")
		}},
		{name: "int", config: "supervisor-port: 19345\n", check: func(t *testing.T, c *cobra.Command) {
			if v, _ := c.Flags().GetInt("supervisor-port"); v != 19345 {
				t.Errorf("supervisor-port = %d", v)
			}
		}},
		{name: "int from env", env: map[string]string{"KPKI_SUPERVISOR_PORT": "29345"}, config: "supervisor-port: 19345\n", check: func(t *testing.T, c *cobra.Command) {
			if v, _ := c.Flags().GetInt("supervisor-port"); v != 29345 {
				t.Errorf("supervisor-port = %d", v)
			}
		}},
		{name: "duration", config: "renew-interval: 30m\n", check: func(t *testing.T, c *cobra.Command) {
			if v, _ := c.Flags().GetDuration("renew-interval"); v != 30*time.Minute {
				t.Errorf("renew-interval = %s", v)
			}
		}},
		{name: "bool", config: "etcd-unsafe-no-fsync: true\n", check: func(t *testing.T, c *cobra.Command) {
			if v, _ := c.Flags().GetBool("etcd-unsafe-no-fsync"); !v {
				t.Error("etcd-unsafe-no-fsync = false")
			}
		}},
		{name: "empty string disables", config: "metrics-address: \"\"\n", check: func(t *testing.T, c *cobra.Command) {
			if v := getString(t, c, "metrics-address"); v != "" {
				t.Errorf("metrics-address = %q, want empty", v)
			}
		}},
		{name: "null keeps the default", config: "metrics-address: null\ntoken:\n", check: func(t *testing.T, c *cobra.Command) {
			if v := getString(t, c, "metrics-address"); v != "127.0.0.1:9346" {
				t.Errorf("metrics-address = %q, want the default", v)
			}
			if v := getString(t, c, "token"); v != "" {
				t.Errorf("token = %q", v)
			}
		}},
		{name: "number for a string flag", config: "token: 12345\n", check: func(t *testing.T, c *cobra.Command) {
			if v := getString(t, c, "token"); v != "12345" {
				t.Errorf("token = %q, want 12345", v)
			}
		}},
		{name: "fraction for a string flag", config: "token: 1.5\n", check: func(t *testing.T, c *cobra.Command) {
			if v := getString(t, c, "token"); v != "1.5" {
				t.Errorf("token = %q, want 1.5", v)
			}
		}},
		{name: "secure token with colons", config: "token: \"K10abc::server:secret\"\n", check: func(t *testing.T, c *cobra.Command) {
			if v := getString(t, c, "token"); v != "K10abc::server:secret" {
				t.Errorf("token = %q", v)
			}
		}},
		{name: "empty file", config: "\n", check: func(t *testing.T, c *cobra.Command) {
			if v := getString(t, c, "data-dir"); v != "/var/lib/rancher/kpki" {
				t.Errorf("data-dir = %q", v)
			}
		}},
		{name: "comments only", config: "# nothing here\n", check: func(t *testing.T, c *cobra.Command) {
			if v := getString(t, c, "token"); v != "" {
				t.Errorf("token = %q", v)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd, stderr, err := apply(t, tc.args, tc.env, tc.config)
			if err != nil {
				t.Fatalf("applySources: %v", err)
			}
			tc.check(t, cmd)
			if stderr != "" {
				t.Errorf("unexpected output: %q", stderr)
			}
		})
	}
}

func wantSlice(t *testing.T, cmd *cobra.Command, name string, want ...string) {
	t.Helper()
	if got := getSlice(t, cmd, name); !slices.Equal(got, want) {
		t.Errorf("%s = %q, want %q", name, got, want)
	}
}

func TestApplySourcesUnknownKeysWarn(t *testing.T) {
	cmd, stderr, err := apply(t, nil, nil, "zeta: 1\ntoken: abc\nalpha: [x]\n")
	if err != nil {
		t.Fatalf("unknown keys are an error: %v", err)
	}
	if got := getString(t, cmd, "token"); got != "abc" {
		t.Errorf("known key not applied next to unknown ones: token = %q", got)
	}
	path := cmd.Flags().Lookup("config").Value.String()
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("want one warning per unknown key, got %q", stderr)
	}
	for i, key := range []string{"alpha", "zeta"} {
		l := lines[i]
		for _, want := range []string{"warning", path, `"` + key + `"`, "is not a flag of any kpki command", "ignored"} {
			if !strings.Contains(l, want) {
				t.Errorf("warning %q does not contain %q", l, want)
			}
		}
	}
}

func TestApplySourcesErrors(t *testing.T) {
	tests := []struct {
		name    string
		config  string
		env     map[string]string
		wantErr []string
	}{
		{name: "malformed YAML", config: "token: [unclosed\n", wantErr: []string{"config file"}},
		{name: "bad indentation", config: "token: a\n  data-dir: b\n", wantErr: []string{"config file"}},
		{name: "top-level list", config: "- token\n- data-dir\n", wantErr: []string{"config file"}},
		{name: "bad value for an int flag", config: "supervisor-port: abc\n", wantErr: []string{"config file", `key "supervisor-port"`}},
		{name: "bad value for a duration flag", config: "renew-interval: soon\n", wantErr: []string{"config file", `key "renew-interval"`}},
		{name: "bad env value", env: map[string]string{"KPKI_SUPERVISOR_PORT": "abc"}, wantErr: []string{"environment variable KPKI_SUPERVISOR_PORT"}},
		{name: "bad env value for a bool flag", env: map[string]string{"KPKI_ETCD_UNSAFE_NO_FSYNC": "maybe"}, wantErr: []string{"environment variable KPKI_ETCD_UNSAFE_NO_FSYNC"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd, _, err := apply(t, nil, tc.env, tc.config)
			if err == nil {
				t.Fatal("applySources succeeded")
			}
			want := tc.wantErr
			if tc.config != "" {
				want = append(want, cmd.Flags().Lookup("config").Value.String())
			}
			for _, w := range want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestApplySourcesConfigFileLocation(t *testing.T) {
	existing := writeConfig(t, "token: from-file\n")
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	dir := t.TempDir()
	tests := []struct {
		name      string
		args      []string
		env       map[string]string
		wantErr   string // a path the error must name; "" means no error
		wantToken string
	}{
		{name: "explicit --config", args: []string{"--config", existing}, wantToken: "from-file"},
		{name: "KPKI_CONFIG", env: map[string]string{"KPKI_CONFIG": existing}, wantToken: "from-file"},
		{name: "--config beats KPKI_CONFIG", args: []string{"--config", existing}, env: map[string]string{"KPKI_CONFIG": missing}, wantToken: "from-file"},
		{name: "explicit --config missing", args: []string{"--config", missing}, wantErr: missing},
		{name: "KPKI_CONFIG missing", env: map[string]string{"KPKI_CONFIG": missing}, wantErr: missing},
		{name: "--config is a directory", args: []string{"--config", dir}, wantErr: dir},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd, _, err := apply(t, tc.args, tc.env, "")
			if tc.wantErr != "" {
				if err == nil {
					t.Fatal("applySources succeeded")
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %q does not name %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := getString(t, cmd, "token"); got != tc.wantToken {
				t.Errorf("token = %q, want %q", got, tc.wantToken)
			}
		})
	}
}

func TestApplySourcesMissingDefaultConfig(t *testing.T) {
	if _, err := os.Stat(DefaultConfigFile); !errors.Is(err, fs.ErrNotExist) {
		t.Skipf("%s exists on this machine (%v)", DefaultConfigFile, err)
	}
	for _, env := range []map[string]string{nil, {"KPKI_CONFIG": ""}} {
		cmd, stderr, err := apply(t, nil, env, "")
		if err != nil {
			t.Errorf("env %v: a missing default config file is an error: %v", env, err)
			continue
		}
		if got := getString(t, cmd, "data-dir"); got != "/var/lib/rancher/kpki" {
			t.Errorf("data-dir = %q, want the default", got)
		}
		if stderr != "" {
			t.Errorf("unexpected output %q", stderr)
		}
	}
}

// TestApplySourcesServerCommand reads an RKE2-style config file with the real
// `kpki server` flags.
func TestApplySourcesServerCommand(t *testing.T) {
	clearKPKIEnv(t)
	t.Setenv("KPKI_DATA_DIR", "/env/data")
	cfg := writeConfig(t, `token: my-shared-secret
tls-san:
  - kpki.example.com
  - 10.0.0.100
node-ip: 10.0.0.5
supervisor-port: 19345
cluster-domain: example.local
data-dir: /config/data
write-kubeconfig-mode: "0644"
`)
	var stderr bytes.Buffer
	cmd := newServerCmd()
	cmd.SetErr(&stderr)
	if err := cmd.ParseFlags([]string{"--config", cfg, "--node-name", "Flag-Node"}); err != nil {
		t.Fatal(err)
	}
	if err := applySources(cmd); err != nil {
		t.Fatalf("applySources: %v", err)
	}
	f := cmd.Flags()
	if v, _ := f.GetString("token"); v != "my-shared-secret" {
		t.Errorf("token = %q", v)
	}
	if v, _ := f.GetStringSlice("tls-san"); !slices.Equal(v, []string{"kpki.example.com", "10.0.0.100"}) {
		t.Errorf("tls-san = %q", v)
	}
	if v, _ := f.GetStringSlice("node-ip"); !slices.Equal(v, []string{"10.0.0.5"}) {
		t.Errorf("node-ip = %q", v)
	}
	if v, _ := f.GetInt("supervisor-port"); v != 19345 {
		t.Errorf("supervisor-port = %d", v)
	}
	if v, _ := f.GetString("cluster-domain"); v != "example.local" {
		t.Errorf("cluster-domain = %q", v)
	}
	if v, _ := f.GetString("data-dir"); v != "/env/data" {
		t.Errorf("data-dir = %q, want the env value", v)
	}
	if v, _ := f.GetString("node-name"); v != "Flag-Node" {
		t.Errorf("node-name = %q", v)
	}
	if !strings.Contains(stderr.String(), `"write-kubeconfig-mode" is not a flag of`) {
		t.Errorf("no warning for an RKE2 key kpki lacks: %q", stderr.String())
	}
}
