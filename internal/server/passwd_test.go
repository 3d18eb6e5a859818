package server

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/passwd"
	"github.com/kpki/kpki/internal/supervisor"
)

func TestConfigRefusesAgentTokenEqualToToken(t *testing.T) {
	hash := strings.Repeat("ab", 32)
	for name, c := range map[string][2]string{
		"same bare":            {"shared-secret", "shared-secret"},
		"same in secure forms": {"K10" + hash + "::server:shared-secret", "K10" + hash + "::node:shared-secret"},
	} {
		cfg := testConfig(t, t.TempDir())
		cfg.Token, cfg.AgentToken = c[0], c[1]
		_, err := New(cfg, Options{Log: quietLog()})
		if err == nil || !strings.Contains(err.Error(), "--agent-token must differ from --token") {
			t.Errorf("%s: New = %v, want the refusal", name, err)
		}
		if err != nil && strings.Contains(err.Error(), "shared-secret") {
			t.Errorf("%s: the error shows the password", name)
		}
	}
	cfg := testConfig(t, t.TempDir())
	cfg.Token, cfg.AgentToken = "server-secret", "K10"+hash+"::node:agent-secret"
	if _, err := New(cfg, Options{Log: quietLog()}); err != nil {
		t.Errorf("distinct tokens: %v", err)
	}
	if got := cfg.agentTokenPassword(); got != "agent-secret" {
		t.Errorf("agentTokenPassword() = %q", got)
	}
}

// TestServerAuthenticatesFromMemory starts a server: the agent password it generated is
// distinct and never authenticates as server; what the supervisor checks is the passwd
// taken from the bootstrap record, which a changed file on disk does not replace.
func TestServerAuthenticatesFromMemory(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, testConfig(t, dir), clock.NewFake(time.Now()), nil)
	defer s.Stop()
	data, err := os.ReadFile(s.layout.PasswdFile())
	if err != nil {
		t.Fatal(err)
	}
	pw, err := passwd.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := pw.Find("server")
	node, _ := pw.Find("node")
	if err := pw.Validate(); err != nil || srv.Password != s.tok.Password || node.Password != s.agentPassword {
		t.Fatalf("passwd after the first start: %v", err)
	}
	check := func(when string) {
		t.Helper()
		for _, c := range []struct {
			user, pw string
			role     supervisor.Role
			ok       bool
		}{
			{"server", srv.Password, supervisor.RoleServer, true},
			{"node", node.Password, supervisor.RoleAgent, true},
			{"server", node.Password, "", false},
			{"node", srv.Password, supervisor.RoleAgent, true},
		} {
			if role, ok := s.authenticate(c.user, c.pw); role != c.role || ok != c.ok {
				t.Errorf("%s: authenticate(%s, ...) = %q %v, want %q %v", when, c.user, role, ok, c.role, c.ok)
			}
		}
	}
	check("after start")
	// A passwd file put on disk behind the server's back changes nothing.
	forged := []byte(node.Password + ",server,server,kpki:server\n")
	if err := os.WriteFile(s.layout.PasswdFile(), forged, 0o600); err != nil {
		t.Fatal(err)
	}
	check("after cred/passwd was replaced on disk")
}
