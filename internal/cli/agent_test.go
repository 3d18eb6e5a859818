package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kpki/kpki/internal/testport"
)

func TestAgentCommandInput(t *testing.T) {
	emptyConfig := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(emptyConfig, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"nothing given", []string{"agent"}, nil, "kpki: --server is required"},
		{"server from KPKI_URL", []string{"agent", "--token", "secret"}, map[string]string{"KPKI_URL": "http://127.0.0.1:9345"},
			`kpki: --server "http://127.0.0.1:9345" must look like https://host:port`},
		{"token from KPKI_TOKEN", []string{"agent", "--server", "https://127.0.0.1:9345"}, map[string]string{"KPKI_TOKEN": "K10abc::node:secret"},
			"kpki: --token: invalid token CA hash length"},
		{"bad node name", []string{"agent", "--server", "https://127.0.0.1:9345", "--token", "secret", "--node-name", "a_b"}, nil,
			`node name "a_b" is not a valid DNS name`},
		{"bad renew interval", []string{"agent", "--server", "https://127.0.0.1:9345", "--token", "secret", "--node-name", "n", "--renew-interval", "0s"}, nil,
			"--renew-interval 0s must be positive"},
		{"CA check above the renew interval", []string{"agent", "--server", "https://127.0.0.1:9345", "--token", "secret", "--node-name", "n", "--ca-check-interval", "2h"}, nil,
			"--ca-check-interval 2h0m0s must not be longer than --renew-interval 1h0m0s"},
		{"CA check from KPKI_CA_CHECK_INTERVAL", []string{"agent", "--server", "https://127.0.0.1:9345", "--token", "secret", "--node-name", "n"},
			map[string]string{"KPKI_CA_CHECK_INTERVAL": "-1m"}, "--ca-check-interval -1m0s must not be negative"},
		{"CA check given above a short renew interval", []string{"agent", "--server", "https://127.0.0.1:9345", "--token", "secret", "--node-name", "n",
			"--renew-interval", "30s", "--ca-check-interval", "1m"}, nil, "--ca-check-interval 1m0s must not be longer than --renew-interval 30s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dd := filepath.Join(t.TempDir(), "data")
			t.Setenv("KPKI_DATA_DIR", dd)
			t.Setenv("KPKI_CONFIG", emptyConfig)
			for _, k := range []string{"KPKI_URL", "KPKI_TOKEN", "KPKI_SERVER", "KPKI_NODE_NAME"} {
				t.Setenv(k, "")
				os.Unsetenv(k)
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var stdout, stderr bytes.Buffer
			code := Execute(tc.args, &stdout, &stderr)
			lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
			if code != 1 || len(lines) != 1 || !strings.HasPrefix(lines[0], "kpki: ") || !strings.Contains(lines[0], tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 and one line with %q", code, stderr.String(), tc.want)
			}
			if strings.Contains(stderr.String(), "secret") {
				t.Errorf("stderr holds the token password: %q", stderr.String())
			}
			if _, err := os.Stat(dd); err == nil {
				t.Errorf("the refused agent created %s", dd)
			}
		})
	}
}

// TestAgentCACheckDefaultFitsShortRenewInterval: a --renew-interval below the default CA
// check interval, without --ca-check-interval, is accepted: the passes check the CAs.
func TestAgentCACheckDefaultFitsShortRenewInterval(t *testing.T) {
	emptyConfig := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(emptyConfig, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KPKI_CONFIG", emptyConfig)
	dd := filepath.Join(t.TempDir(), "data")
	url := "https://127.0.0.1:" + strconv.Itoa(testport.Free(t))
	var stdout, stderr bytes.Buffer
	code := Execute([]string{"agent", "--server", url, "--token", "secret", "--node-name", "n", "--data-dir", dd,
		"--renew-interval", "30s", "--retry-deadline", "0", "--once"}, &stdout, &stderr)
	if code != 1 || strings.Contains(stderr.String(), "--ca-check-interval") || !strings.Contains(stderr.String(), url) {
		t.Errorf("exit %d, stderr %q; want exit 1 on the unreachable server", code, stderr.String())
	}
}
