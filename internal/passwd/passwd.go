// Package passwd is the cred/passwd file of the bootstrap data (RKE2/K3s format,
// password,user,user,role a line): parsing, rendering byte for byte, and the role a
// user:password pair authenticates as.
package passwd

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"

	"github.com/kpki/kpki/internal/supervisor"
)

// The users of cred/passwd: the server token authenticates as "server", the agent
// token as "node".
const (
	ServerUser = "server"
	AgentUser  = "node"
)

// Entry is one line of cred/passwd: password,user,user,role.
type Entry struct {
	Password string
	User     string
	UID      string
	Role     string
}

// File is the parsed cred/passwd file.
type File []Entry

// Parse parses the CSV passwd file. Errors name the line, never a password.
func Parse(data []byte) (File, error) {
	var out File
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		f := strings.Split(line, ",")
		if len(f) < 2 || f[0] == "" || f[1] == "" {
			return nil, fmt.Errorf("line %d: want password,user,user,role", i+1)
		}
		e := Entry{Password: f[0], User: f[1]}
		if len(f) > 2 {
			e.UID = f[2]
		}
		if len(f) > 3 {
			e.Role = f[3]
		}
		out = append(out, e)
	}
	return out, nil
}

// Find returns the entry of user.
func (p File) Find(user string) (Entry, bool) {
	for _, e := range p {
		if e.User == user {
			return e, true
		}
	}
	return Entry{}, false
}

// EntryRole is the role an entry grants: its role field ends in ":server" or ":agent"
// (kpki:server, k3s:agent, ...).
func EntryRole(e Entry) supervisor.Role {
	switch {
	case strings.HasSuffix(e.Role, ":server"):
		return supervisor.RoleServer
	case strings.HasSuffix(e.Role, ":agent"):
		return supervisor.RoleAgent
	}
	return ""
}

// Authenticate returns the role of user:password. The role is the one of the entry
// named user whose password matches: a password is never tried against another user's
// entry, so the agent password cannot authenticate as server. An entry granting the
// server role whose password is also an agent entry's grants nothing more than the
// agent role: whoever holds the agent token could be the caller. One exception keeps
// the K3s habit of giving agents the server token: "node" with the server password is
// an agent. Every entry is compared, in constant time.
func (p File) Authenticate(user, password string) (supervisor.Role, bool) {
	var role supervisor.Role
	matchedServer, serverIsAgent := false, false
	for _, e := range p {
		same := subtle.ConstantTimeCompare([]byte(e.Password), []byte(password)) == 1
		r := EntryRole(e)
		if same && r == supervisor.RoleAgent {
			serverIsAgent = true
		}
		if !same {
			continue
		}
		switch {
		case e.User == user && r != "":
			if r == supervisor.RoleServer {
				matchedServer = true
			} else if role == "" {
				role = r
			}
		case user == AgentUser && e.User == ServerUser && r == supervisor.RoleServer:
			if role == "" {
				role = supervisor.RoleAgent
			}
		}
	}
	switch {
	case matchedServer && serverIsAgent:
		return supervisor.RoleAgent, true
	case matchedServer:
		return supervisor.RoleServer, true
	case role != "":
		return role, true
	}
	return "", false
}

// UsedByOthers reports, in constant time per entry, whether a user other than server
// has password.
func (p File) UsedByOthers(password string) bool {
	used := false
	for _, e := range p {
		if e.User != ServerUser && subtle.ConstantTimeCompare([]byte(e.Password), []byte(password)) == 1 {
			used = true
		}
	}
	return used
}

// WithPassword returns a copy with user's password replaced.
func (p File) WithPassword(user, password string) File {
	out := append(File(nil), p...)
	for i := range out {
		if out[i].User == user {
			out[i].Password = password
		}
	}
	return out
}

// WithUser returns a copy in which user has password and role: its entry is updated,
// or one is added after the others.
func (p File) WithUser(user, role, password string) File {
	out := append(File(nil), p...)
	for i := range out {
		if out[i].User == user {
			out[i].Password, out[i].Role = password, role
			return out
		}
	}
	return append(out, Entry{Password: password, User: user, UID: user, Role: role})
}

// RolePrefix is the prefix of the server entry's role ("kpki" in kpki:server, "k3s" in
// a file K3s wrote), so that an entry added to the file is written in its style.
func (p File) RolePrefix() string {
	if e, ok := p.Find(ServerUser); ok {
		if prefix, _, ok := strings.Cut(e.Role, ":"); ok && prefix != "" {
			return prefix
		}
	}
	return "kpki"
}

// ErrSameAgentPassword refuses a passwd whose agent password is the server password.
var ErrSameAgentPassword = errors.New("the agent password is the server password")

// Validate checks that p holds a server entry with the server role and a node entry
// with the agent role, with different passwords.
func (p File) Validate() error {
	srv, ok := p.Find(ServerUser)
	if !ok || EntryRole(srv) != supervisor.RoleServer {
		return errors.New("no server entry with a server role")
	}
	node, ok := p.Find(AgentUser)
	if !ok || EntryRole(node) != supervisor.RoleAgent {
		return errors.New("no node entry with an agent role")
	}
	if node.Password == srv.Password {
		return ErrSameAgentPassword
	}
	return nil
}

// Bytes renders the file.
func (p File) Bytes() []byte {
	var b strings.Builder
	for _, e := range p {
		fmt.Fprintf(&b, "%s,%s,%s,%s\n", e.Password, e.User, e.UID, e.Role)
	}
	return []byte(b.String())
}
