package cli

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// subcommand returns the command at path of a full kpki command tree, with its flags
// parsed from args and its sources applied; stderr collects the warnings.
func subcommand(t *testing.T, path []string, args ...string) (*cobra.Command, *bytes.Buffer) {
	t.Helper()
	var stderr bytes.Buffer
	root := newRoot(io.Discard, &stderr)
	cmd, _, err := root.Find(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	if err := applySources(cmd); err != nil {
		t.Fatalf("applySources: %v", err)
	}
	return cmd, &stderr
}

func clearEnv(t *testing.T) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "KPKI_") || k == "DATA_DIR" {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
}

var clientCommands = [][]string{
	{"certificate", "check"}, {"certificate", "rotate"}, {"certificate", "rotate-ca"},
	{"certificate", "cross-sign-ca"}, {"certificate", "generate-ca"}, {"certificate", "generate-service-key"},
	{"token", "show"}, {"token", "rotate"},
}

func TestDefaultsFollowRKE2(t *testing.T) {
	clearEnv(t)
	t.Setenv("KPKI_CONFIG", filepath.Join(t.TempDir(), "absent.yaml"))
	os.Unsetenv("KPKI_CONFIG")
	for _, p := range append([][]string{{"server"}, {"agent"}}, clientCommands...) {
		root := newRoot(io.Discard, io.Discard)
		cmd, _, err := root.Find(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := cmd.Flags().Lookup("data-dir").DefValue; got != "/var/lib/rancher/kpki" {
			t.Errorf("%v: --data-dir default %q", p, got)
		}
		if got := cmd.Flags().Lookup("config").DefValue; got != "/etc/rancher/kpki/config.yaml" {
			t.Errorf("%v: --config default %q", p, got)
		}
	}
	if DefaultServerURL != "https://127.0.0.1:9345" {
		t.Errorf("DefaultServerURL = %q", DefaultServerURL)
	}
}

const sharedConfig = `token: K10abc::server:secret
tls-san:
  - kpki.example.com
node-name: server-1
supervisor-port: 19345
data-dir: /srv/kpki
write-kubeconfig: /root/.kube/config
etcd-client-port: 12379
cluster-domain: example.local
metrics-address: 127.0.0.1:19346
`

func writeCfg(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSharedServerConfigNoWarnings(t *testing.T) {
	clearEnv(t)
	cfg := writeCfg(t, sharedConfig)
	for _, p := range clientCommands {
		cmd, stderr := subcommand(t, p, "--config", cfg)
		if stderr.Len() != 0 {
			t.Errorf("%v: warnings for server keys: %q", p, stderr.String())
		}
		if got, _ := cmd.Flags().GetString("data-dir"); got != "/srv/kpki" {
			t.Errorf("%v: data-dir = %q, want the config file's", p, got)
		}
	}
	unknown := writeCfg(t, sharedConfig+"no-such-key: 1\n")
	for _, p := range [][]string{{"certificate", "check"}, {"server"}} {
		_, stderr := subcommand(t, p, "--config", unknown)
		if n := strings.Count(stderr.String(), "warning"); n != 1 || !strings.Contains(stderr.String(), `"no-such-key" is not a flag of any kpki command`) {
			t.Errorf("%v: want one warning for no-such-key, got %q", p, stderr.String())
		}
	}
}

func TestClientFindsConfiguredSupervisor(t *testing.T) {
	clearEnv(t)
	tests := []struct {
		name, config string
		args         []string
		env          map[string]string
		want         string
	}{
		{"default", "", nil, nil, "https://127.0.0.1:9345"},
		{"port only", sharedConfig, nil, nil, "https://127.0.0.1:19345"},
		{"bind address", sharedConfig + "bind-address: 127.0.0.7\nadvertise-address: 10.9.9.9\n", nil, nil, "https://127.0.0.7:19345"},
		{"advertise address", sharedConfig + "advertise-address: 127.0.0.8\n", nil, nil, "https://127.0.0.8:19345"},
		{"bind all", sharedConfig + "bind-address: 0.0.0.0\n", nil, nil, "https://127.0.0.1:19345"},
		{"bind all v6", sharedConfig + "bind-address: '::'\n", nil, nil, "https://[::1]:19345"},
		{"--server wins", sharedConfig, []string{"--server", "https://127.0.0.9:1"}, nil, "https://127.0.0.9:1"},
		{"KPKI_URL wins", sharedConfig, nil, map[string]string{"KPKI_URL": "https://127.0.0.10:2"}, "https://127.0.0.10:2"},
		{"env port", "", nil, map[string]string{"KPKI_SUPERVISOR_PORT": "29345"}, "https://127.0.0.1:29345"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			for _, p := range [][]string{{"certificate", "rotate-ca"}, {"token", "rotate"}} {
				args := tc.args
				if tc.config != "" {
					args = append([]string{"--config", writeCfg(t, tc.config)}, args...)
				} else {
					args = append([]string{"--config", filepath.Join(t.TempDir(), "empty.yaml")}, args...)
					if err := os.WriteFile(args[1], nil, 0o600); err != nil {
						t.Fatal(err)
					}
				}
				cmd, _ := subcommand(t, p, args...)
				server, _ := cmd.Flags().GetString("server")
				got, err := localServerURL(cmd, server)
				if err != nil {
					t.Fatal(err)
				}
				if got != tc.want {
					t.Errorf("%v: server = %q, want %q", p, got, tc.want)
				}
			}
		})
	}
	cmd, _ := subcommand(t, []string{"certificate", "rotate-ca"}, "--config", writeCfg(t, "supervisor-port: 70000\n"))
	if _, err := localServerURL(cmd, ""); err == nil || !strings.Contains(err.Error(), "supervisor-port 70000") {
		t.Errorf("out-of-range port: err = %v", err)
	}
}

func TestServerIgnoresKPKIURL(t *testing.T) {
	clearEnv(t)
	t.Setenv("KPKI_URL", "https://127.0.0.1:9345")
	empty := writeCfg(t, "")
	cmd, _ := subcommand(t, []string{"server"}, "--config", empty)
	if got, _ := cmd.Flags().GetString("server"); got != "" {
		t.Errorf("kpki server took KPKI_URL: server = %q", got)
	}
	cmd, _ = subcommand(t, []string{"server"}, "--config", writeCfg(t, "server: https://127.0.0.2:9345\n"))
	if got, _ := cmd.Flags().GetString("server"); got != "https://127.0.0.2:9345" {
		t.Errorf("server: from the config file = %q", got)
	}
	t.Setenv("KPKI_SERVER", "https://127.0.0.3:9345")
	cmd, _ = subcommand(t, []string{"server"}, "--config", empty)
	if got, _ := cmd.Flags().GetString("server"); got != "https://127.0.0.3:9345" {
		t.Errorf("KPKI_SERVER = %q", got)
	}
	os.Unsetenv("KPKI_SERVER")
	cmd, _ = subcommand(t, []string{"agent"}, "--config", empty)
	if got, _ := cmd.Flags().GetStringSlice("server"); len(got) != 1 || got[0] != "https://127.0.0.1:9345" {
		t.Errorf("the agent no longer reads KPKI_URL: %q", got)
	}
}

func TestNextStepFlags(t *testing.T) {
	clearEnv(t)
	cfg := writeCfg(t, "")
	dd := t.TempDir()
	cmd, _ := subcommand(t, []string{"certificate", "cross-sign-ca"}, "--config", cfg, "--data-dir", dd)
	got := nextStepFlags(cmd, dd)
	if want := " --data-dir=" + dd + " --config=" + cfg; got != want {
		t.Errorf("nextStepFlags = %q, want %q", got, want)
	}
	cmd, _ = subcommand(t, []string{"certificate", "cross-sign-ca"})
	if got := nextStepFlags(cmd, "/var/lib/rancher/kpki"); got != "" {
		t.Errorf("defaults: nextStepFlags = %q, want none", got)
	}
	var out bytes.Buffer
	err := withNextStepFlags(&out, " --data-dir=/d", func(w io.Writer) error {
		_, err := io.WriteString(w, "To update certificates, you may now run:\n    kpki certificate rotate-ca --path=/d/server/rotate-ca\nend\n")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "To update certificates, you may now run:\n    kpki certificate rotate-ca --path=/d/server/rotate-ca --data-dir=/d\nend\n"; out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
}

func TestCustomCAInputDir(t *testing.T) {
	clearEnv(t)
	own, script := t.TempDir(), t.TempDir()
	t.Setenv("DATA_DIR", script)
	ownTLS, scriptTLS := filepath.Join(own, "server", "tls"), filepath.Join(script, "server", "tls")
	if got := customCAInputDir(own); got != ownTLS {
		t.Errorf("nothing provided: %q, want %q", got, ownTLS)
	}
	if err := os.MkdirAll(scriptTLS, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(scriptTLS, "root-ca.pem"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := customCAInputDir(own); got != scriptTLS {
		t.Errorf("root only in the script's dir: %q, want %q", got, scriptTLS)
	}
	if got := customCAInputDir(script); got != scriptTLS {
		t.Errorf("same dir: %q, want %q", got, scriptTLS)
	}
	if err := os.MkdirAll(ownTLS, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ownTLS, "intermediate-ca.key"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := customCAInputDir(own); got != ownTLS {
		t.Errorf("files in the data dir win: %q, want %q", got, ownTLS)
	}
}
