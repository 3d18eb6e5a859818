package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// runIsolated runs kpki with args, KPKI_* variables cleared but for env, the data dir
// under a new temp dir and an empty config file; it returns the exit code, stderr and
// the data dir.
func runIsolated(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dd := filepath.Join(dir, "data")
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "KPKI_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	t.Setenv("KPKI_DATA_DIR", dd)
	t.Setenv("KPKI_CONFIG", cfg)
	for k, v := range env {
		t.Setenv(k, v)
	}
	var stdout, stderr bytes.Buffer
	code := Execute(args, &stdout, &stderr)
	return code, stderr.String(), dd
}

func TestTokenFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// A token whose CA hash has the wrong length: the agent reports the parse error, which
	// shows the file was read (and trimmed: the hash error, not a whitespace one).
	badHash := write("bad-hash", "  K10abc::node:tokenfile-secret\n\n")
	good := write("good", "\tK10"+strings.Repeat("a", 64)+"::node:tokenfile-secret\n")
	empty := write("empty", " \n\t\n")
	twoLines := write("two-lines", "tokenfile-secret\nsecond-tokenfile-secret\n")
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cfgBoth := write("both.yaml", "token: tokenfile-secret\ntoken-file: "+good+"\n")
	cfgFile := write("file.yaml", "token-file: "+badHash+"\n")
	server := []string{"--server", "https://127.0.0.1:1"}

	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"agent reads and trims the file", nil, append([]string{"agent", "--token-file", badHash}, server...), "--token: invalid token CA hash length"},
		{"KPKI_TOKEN_FILE", map[string]string{"KPKI_TOKEN_FILE": badHash}, append([]string{"agent"}, server...), "--token: invalid token CA hash length"},
		{"config key token-file", map[string]string{"KPKI_CONFIG": cfgFile}, append([]string{"agent"}, server...), "--token: invalid token CA hash length"},
		{"agent: both flags", nil, append([]string{"agent", "--token", "tokenfile-secret", "--token-file", good}, server...), "--token and --token-file are mutually exclusive"},
		{"agent: KPKI_TOKEN and --token-file", map[string]string{"KPKI_TOKEN": "tokenfile-secret"}, append([]string{"agent", "--token-file", good}, server...), "--token and --token-file are mutually exclusive"},
		{"agent: both in the config", map[string]string{"KPKI_CONFIG": cfgBoth}, append([]string{"agent"}, server...), "--token and --token-file are mutually exclusive"},
		{"server: both flags", nil, []string{"server", "--token", "tokenfile-secret", "--token-file", good}, "--token and --token-file are mutually exclusive"},
		{"missing file", nil, []string{"server", "--token-file", filepath.Join(dir, "nope")}, "--token-file " + filepath.Join(dir, "nope") + " does not exist"},
		{"empty file", nil, []string{"server", "--token-file", empty}, "--token-file " + empty + " is empty"},
		{"two lines", nil, []string{"agent", "--token-file", twoLines}, "holds more than one line"},
		{"a directory", nil, []string{"server", "--token-file", dir}, dir + " is a directory, not a regular file"},
		{"a FIFO", nil, []string{"agent", "--token-file", fifo}, fifo + " is a named pipe (FIFO), not a regular file"},
		{"server: both agent token flags", nil, []string{"server", "--agent-token", "tokenfile-secret", "--agent-token-file", good}, "--agent-token and --agent-token-file are mutually exclusive (flags, KPKI_AGENT_TOKEN/KPKI_AGENT_TOKEN_FILE"},
		{"server: empty agent token file", nil, []string{"server", "--agent-token-file", empty}, "--agent-token-file " + empty + " is empty"},
		{"server: agent token file a FIFO", nil, []string{"server", "--agent-token-file", fifo}, "--agent-token-file: " + fifo + " is a named pipe (FIFO)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr, dd := runIsolated(t, tc.env, tc.args...)
			lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			if code != 1 || len(lines) != 1 || !strings.HasPrefix(lines[0], "kpki: ") || !strings.Contains(lines[0], tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 and one line with %q", code, stderr, tc.want)
			}
			if strings.Contains(stderr, "tokenfile-secret") {
				t.Errorf("stderr holds the token: %q", stderr)
			}
			if _, err := os.Stat(dd); err == nil {
				t.Errorf("the refused command created %s", dd)
			}
		})
	}
}
