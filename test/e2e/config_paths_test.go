package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigPathsSharedConfig runs a server from an RKE2-style config file and then the
// client commands with only --config: they read the data dir and the (non-default)
// supervisor port from it, print no warnings for the server's keys, and work.
func TestConfigPathsSharedConfig(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "data")
	kubeconfig := filepath.Join(t.TempDir(), "admin.kubeconfig")
	ports := newServerPorts(t, loopback)
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	writeFile(t, cfg, fmt.Appendf(nil, `# shared by kpki server and the client commands
token: shared-config-secret
tls-san:
  - kpki.example.com
  - 10.0.0.10
node-name: config-node
data-dir: %s
supervisor-port: %d
bind-address: %s
advertise-address: %s
write-kubeconfig: %s
cluster-domain: cluster.local
`, dd, ports.Supervisor, loopback, loopback, kubeconfig), 0o600)
	s := launch(t, serverSpec{
		dataDir: dd,
		ports:   &ports,
		args:    []string{"--config", cfg},
		omit:    []string{"--data-dir", "--supervisor-port", "--bind-address", "--advertise-address", "--node-name"},
	})
	s.WaitReady(t)
	if _, err := os.Stat(kubeconfig); err != nil {
		t.Fatalf("the server did not take write-kubeconfig from the config file: %v", err)
	}

	noWarnings := func(r cmdResult) {
		t.Helper()
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("want exit code 0 and nothing on stderr:\n%s", r)
		}
	}
	r := runKpki(t, nil, "certificate", "check", "--config", cfg)
	noWarnings(r)
	// The default data dir holds no server here: rows come from the configured one.
	if !strings.Contains(r.stdout, "serving-supervisor.crt") {
		t.Errorf("check did not report the configured data dir's certificates:\n%s", r)
	}

	r = runKpki(t, nil, "token", "show", "--config", cfg)
	noWarnings(r)
	if !strings.Contains(r.stdout, "::server:shared-config-secret\n") {
		t.Errorf("token show did not read the configured data dir:\n%s", r)
	}

	r = runKpki(t, nil, "certificate", "cross-sign-ca", "--config", cfg)
	noWarnings(r)
	stage := filepath.Join(dd, "server", "rotate-ca")
	want := "kpki certificate rotate-ca --path=" + stage + " --data-dir=" + dd + " --config=" + cfg
	if !strings.Contains(r.stdout, want+"\n") {
		t.Errorf("cross-sign-ca does not print %q:\n%s", want, r)
	}

	before, err := os.ReadFile(filepath.Join(s.TLSDir(), "server-ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	r = runKpki(t, nil, "certificate", "rotate-ca", "--config", cfg, "--path", stage)
	noWarnings(r)
	assertRotateCASaved(t, r)
	s = restartServer(t, s)
	after, err := os.ReadFile(filepath.Join(s.TLSDir(), "server-ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(before, after) {
		t.Errorf("server-ca.crt unchanged after rotate-ca through the configured port and a restart")
	}

	bogus := filepath.Join(t.TempDir(), "bogus.yaml")
	writeFile(t, bogus, fmt.Appendf(nil, "data-dir: %s\nno-such-key: 1\n", dd), 0o600)
	r = runKpki(t, nil, "token", "show", "--config", bogus)
	if r.code != 0 || strings.Count(r.stderr, "warning") != 1 || !strings.Contains(r.stderr, `"no-such-key"`) {
		t.Errorf("want one warning for a key no kpki command takes:\n%s", r)
	}
}

// TestConfigPathsServerIgnoresKPKIURL starts a second server with KPKI_URL pointing at a
// running one: it creates its own cluster (its own server CA) instead of joining.
func TestConfigPathsServerIgnoresKPKIURL(t *testing.T) {
	t.Parallel()
	first := startServer(t, filepath.Join(t.TempDir(), "first"))
	first.WaitReady(t)
	second := launch(t, serverSpec{
		dataDir: filepath.Join(t.TempDir(), "second"),
		env:     []string{"KPKI_URL=" + first.SupervisorURL()},
	})
	second.WaitReady(t)
	a := readFileString(t, filepath.Join(first.TLSDir(), "server-ca.crt"))
	b := readFileString(t, filepath.Join(second.TLSDir(), "server-ca.crt"))
	if a == b || strings.Contains(second.Stderr(), first.SupervisorURL()) {
		t.Errorf("kpki server with KPKI_URL set joined the cluster at %s", first.SupervisorURL())
	}
}

func readFileString(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
