package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDebugFlag: --debug, KPKI_DEBUG and the config key debug turn on debug lines, which
// name where each setting came from but never a value: the token given by environment
// and config file is nowhere in the output.
func TestDebugFlag(t *testing.T) {
	dir := t.TempDir()
	const secret = "debug-test-secret-password"
	tok := "K10" + strings.Repeat("b", 64) + "::node:" + secret
	cfg := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	withToken := cfg("token.yaml", "token: "+tok+"\nnode-name: a_b\n")
	withDebug := cfg("debug.yaml", "debug: true\ntoken: "+tok+"\nnode-name: a_b\n")
	agent := []string{"agent", "--server", "https://127.0.0.1:1"}
	for _, tc := range []struct {
		name  string
		env   map[string]string
		args  []string
		debug bool
	}{
		{"no debug", map[string]string{"KPKI_CONFIG": withToken}, agent, false},
		{"--debug", map[string]string{"KPKI_CONFIG": withToken, "KPKI_AGENT_TOKEN": secret}, append([]string{"--debug"}, agent...), true},
		{"--debug after the command", map[string]string{"KPKI_CONFIG": withToken}, append(agent, "--debug"), true},
		{"KPKI_DEBUG", map[string]string{"KPKI_CONFIG": withToken, "KPKI_DEBUG": "true"}, agent, true},
		{"config debug: true", map[string]string{"KPKI_CONFIG": withDebug}, agent, true},
		{"token from the environment", map[string]string{"KPKI_CONFIG": cfg("empty.yaml", "node-name: a_b\n"), "KPKI_TOKEN": tok}, append(agent, "--debug"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr, _ := runIsolated(t, tc.env, tc.args...)
			if code != 1 || !strings.Contains(stderr, `node name "a_b"`) {
				t.Fatalf("exit %d, stderr %q: want the node name refused", code, stderr)
			}
			hasDebug := strings.Contains(stderr, "level=DEBUG")
			if hasDebug != tc.debug {
				t.Errorf("debug lines %v, want %v:\n%s", hasDebug, tc.debug, stderr)
			}
			if tc.debug && !strings.Contains(stderr, `msg="read the config file"`) {
				t.Errorf("no debug line for the config file:\n%s", stderr)
			}
			if tc.debug && tc.env["KPKI_TOKEN"] != "" && !strings.Contains(stderr, "KPKI_TOKEN") {
				t.Errorf("the debug lines do not name KPKI_TOKEN:\n%s", stderr)
			}
			if strings.Contains(stderr, secret) {
				t.Errorf("the token password is in the output:\n%s", stderr)
			}
		})
	}
}

// TestDebugClientCommands: token rotate and rotate-ca log the supervisor they talk to at
// debug level, and never the new token.
func TestDebugClientCommands(t *testing.T) {
	const secret = "debug-new-token-secret"
	stage := t.TempDir()
	for _, args := range [][]string{
		{"token", "rotate", "--debug", "--server", "https://127.0.0.1:1", "--new-token", secret},
		{"certificate", "rotate-ca", "--debug", "--server", "https://127.0.0.1:1", "--path", stage},
	} {
		code, stderr, _ := runIsolated(t, nil, args...)
		if code != 1 || !strings.Contains(stderr, "level=DEBUG") || !strings.Contains(stderr, "server=https://127.0.0.1:1") {
			t.Errorf("kpki %v: exit %d, stderr %q; want a debug line naming the server", args, code, stderr)
		}
		if strings.Contains(stderr, secret) {
			t.Errorf("kpki %v logged the new token:\n%s", args, stderr)
		}
	}
}
