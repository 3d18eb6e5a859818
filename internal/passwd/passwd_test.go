package passwd

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpki/kpki/internal/supervisor"
)

const (
	testServerPW = "0123456789abcdef0123456789abcdef"
	testAgentPW  = "fedcba9876543210fedcba9876543210"
)

func kpkiPasswd() File {
	p, err := Parse([]byte(testServerPW + ",server,server,kpki:server\n" + testAgentPW + ",node,node,kpki:agent\n"))
	if err != nil {
		panic(err)
	}
	return p
}

// TestPasswdK3sFixtureRoundTrip parses the passwd of the K3s bootstrap fixture, renders
// it byte for byte, and checks that a kpki change of one entry keeps the K3s role
// strings and the other lines untouched.
func TestPasswdK3sFixtureRoundTrip(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "bootstrap", "testdata", "k3s-bootstrap", "cred", "passwd"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Bytes(); !bytes.Equal(got, raw) {
		t.Fatalf("Bytes() of the parsed K3s passwd differs from the file:\n%q\nwant\n%q", got, raw)
	}
	srv, _ := p.Find("server")
	node, _ := p.Find("node")
	if srv.Role != "k3s:server" || node.Role != "k3s:agent" || srv.UID != "server" || node.UID != "node" {
		t.Fatalf("parsed entries %q %q %q %q", srv.UID, srv.Role, node.UID, node.Role)
	}
	// K3s gives agents the server password by default: validate says so.
	if err := p.Validate(); !errors.Is(err, ErrSameAgentPassword) {
		t.Errorf("validate() = %v, want ErrSameAgentPassword", err)
	}
	if p.RolePrefix() != "k3s" {
		t.Errorf("RolePrefix() = %q, want k3s", p.RolePrefix())
	}
	q := p.WithUser("node", p.RolePrefix()+":agent", testAgentPW)
	lines := strings.Split(strings.TrimSpace(string(q.Bytes())), "\n")
	want := []string{strings.Split(strings.TrimSpace(string(raw)), "\n")[0], testAgentPW + ",node,node,k3s:agent"}
	if len(lines) != 2 || lines[0] != want[0] || lines[1] != want[1] {
		t.Errorf("after WithUser(node) the file is %q, want %q", lines, want)
	}
	if err := q.Validate(); err != nil {
		t.Errorf("validate() after a distinct agent password: %v", err)
	}
	if p2, _ := p.Find("node"); p2.Password == testAgentPW {
		t.Error("WithUser changed the original passwd")
	}
}

func TestPasswdAuthenticate(t *testing.T) {
	same, err := Parse([]byte(testServerPW + ",server,server,kpki:server\n" + testServerPW + ",node,node,kpki:agent\n"))
	if err != nil {
		t.Fatal(err)
	}
	noRole, err := Parse([]byte(testServerPW + ",server,server,\n" + testAgentPW + ",node,node,kpki:agent\n"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		p        File
		user, pw string
		role     supervisor.Role
		ok       bool
	}{
		{"server token", kpkiPasswd(), "server", testServerPW, supervisor.RoleServer, true},
		{"agent token", kpkiPasswd(), "node", testAgentPW, supervisor.RoleAgent, true},
		{"agent password as server", kpkiPasswd(), "server", testAgentPW, "", false},
		{"server password as node is an agent", kpkiPasswd(), "node", testServerPW, supervisor.RoleAgent, true},
		{"unknown user with the server password", kpkiPasswd(), "admin", testServerPW, "", false},
		{"unknown user with the agent password", kpkiPasswd(), "admin", testAgentPW, "", false},
		{"wrong password", kpkiPasswd(), "server", "nope", "", false},
		{"empty", kpkiPasswd(), "", "", "", false},
		{"prefix of the password", kpkiPasswd(), "server", testServerPW[:31], "", false},
		{"K3s roles", mustParse(t, testServerPW+",server,server,k3s:server\n"+testAgentPW+",node,node,k3s:agent\n"), "server", testServerPW, supervisor.RoleServer, true},
		{"server password shared with the agent grants no server role", same, "server", testServerPW, supervisor.RoleAgent, true},
		{"node on a shared password", same, "node", testServerPW, supervisor.RoleAgent, true},
		{"entry without a role", noRole, "server", testServerPW, "", false},
		{"node with the password of an entry without a role", noRole, "node", testServerPW, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			role, ok := tc.p.Authenticate(tc.user, tc.pw)
			if role != tc.role || ok != tc.ok {
				t.Errorf("Authenticate(%q, ...) = %q, %v; want %q, %v", tc.user, role, ok, tc.role, tc.ok)
			}
		})
	}
}

func mustParse(t *testing.T, s string) File {
	t.Helper()
	p, err := Parse([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPasswdHelpers(t *testing.T) {
	p := kpkiPasswd()
	if !p.UsedByOthers(testAgentPW) {
		t.Error("UsedByOthers(agent password) = false")
	}
	if p.UsedByOthers(testServerPW) {
		t.Error("UsedByOthers(server password) = true: the server entry is not another user")
	}
	if p.UsedByOthers("other") {
		t.Error("UsedByOthers(unused) = true")
	}
	if err := p.Validate(); err != nil {
		t.Errorf("validate(kpki passwd) = %v", err)
	}
	for name, bad := range map[string]File{
		"no node":         mustParse(t, testServerPW+",server,server,kpki:server\n"),
		"no server":       mustParse(t, testAgentPW+",node,node,kpki:agent\n"),
		"node not agent":  mustParse(t, testServerPW+",server,server,kpki:server\n"+testAgentPW+",node,node,kpki:server\n"),
		"server no role":  mustParse(t, testServerPW+",server,server,\n"+testAgentPW+",node,node,kpki:agent\n"),
		"shared password": p.WithPassword("node", testServerPW),
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("validate(%s) = nil", name)
		}
	}
	added := mustParse(t, testServerPW+",server,server,kpki:server\n").WithUser("node", "kpki:agent", testAgentPW)
	if got, want := string(added.Bytes()), string(kpkiPasswd().Bytes()); got != want {
		t.Errorf("WithUser adding node: %q, want %q", got, want)
	}
	if (File{}).RolePrefix() != "kpki" {
		t.Error("rolePrefix of an empty passwd is not kpki")
	}
}

func TestParsePasswdErrorsHideSecrets(t *testing.T) {
	_, err := Parse([]byte(testServerPW + ",server,server,kpki:server\n" + testAgentPW + "\n"))
	if err == nil {
		t.Fatal("a line without a user parsed")
	}
	if strings.Contains(err.Error(), testAgentPW) || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("error %q: want the line number and no password", err)
	}
}
