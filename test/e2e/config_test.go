package e2e

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestServerConfigPrecedence sets the supervisor port in the config file, then also in
// KPKI_SUPERVISOR_PORT, then also with --supervisor-port, and checks which port serves /ping:
// flag > env > config file.
func TestServerConfigPrecedence(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "data")
	ports := newServerPorts(t, loopback)
	fromConfig, fromEnv, fromFlag := freePort(t, loopback), freePort(t, loopback), freePort(t, loopback)
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	writeFile(t, cfg, fmt.Appendf(nil, "supervisor-port: %d\n", fromConfig), 0o644)

	steps := []struct {
		name string
		env  []string
		args []string
		want int
	}{
		{"config file", nil, nil, fromConfig},
		{"env over config file", []string{"KPKI_SUPERVISOR_PORT=" + strconv.Itoa(fromEnv)}, nil, fromEnv},
		{"flag over env and config file", []string{"KPKI_SUPERVISOR_PORT=" + strconv.Itoa(fromEnv)},
			[]string{"--supervisor-port", strconv.Itoa(fromFlag)}, fromFlag},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			p := ports
			p.Supervisor = step.want
			spec := serverSpec{
				dataDir: dd,
				ports:   &p,
				env:     step.env,
				args:    append([]string{"--config", cfg}, step.args...),
				omit:    []string{"--supervisor-port"},
			}
			s := launch(t, spec)
			s.WaitReady(t)
			code, body := s.MustGet(t, "/ping")
			if code != 200 || strings.TrimSpace(string(body)) != "pong" {
				t.Errorf("GET /ping on port %d: %d %q", step.want, code, body)
			}
			for _, other := range []int{fromConfig, fromEnv, fromFlag} {
				if other != step.want && listening(loopback, other) {
					t.Errorf("port %d also listens; only %d should", other, step.want)
				}
			}
			s.Stop(t)
		})
	}
}
