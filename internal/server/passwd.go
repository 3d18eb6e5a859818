package server

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"

	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/datastore"
	"github.com/kpki/kpki/internal/supervisor"
	"github.com/kpki/kpki/internal/token"
)

// The users of cred/passwd: the server token authenticates as "server", the agent
// token as "node".
const (
	serverUser = "server"
	agentUser  = "node"
)

// PasswdEntry is one line of cred/passwd: password,user,user,role.
type PasswdEntry struct {
	Password string
	User     string
	UID      string
	Role     string
}

// Passwd is the parsed cred/passwd file.
type Passwd []PasswdEntry

// ParsePasswd parses the CSV passwd file. Errors name the line, never a password.
func ParsePasswd(data []byte) (Passwd, error) {
	var out Passwd
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		f := strings.Split(line, ",")
		if len(f) < 2 || f[0] == "" || f[1] == "" {
			return nil, fmt.Errorf("line %d: want password,user,user,role", i+1)
		}
		e := PasswdEntry{Password: f[0], User: f[1]}
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
func (p Passwd) Find(user string) (PasswdEntry, bool) {
	for _, e := range p {
		if e.User == user {
			return e, true
		}
	}
	return PasswdEntry{}, false
}

// Check reports in constant time (per entry) whether user has password.
func (p Passwd) Check(user, password string) bool {
	ok := false
	for _, e := range p {
		if e.User == user && subtle.ConstantTimeCompare([]byte(e.Password), []byte(password)) == 1 {
			ok = true
		}
	}
	return ok
}

// entryRole is the role an entry grants: its role field ends in ":server" or ":agent"
// (kpki:server, k3s:agent, ...).
func entryRole(e PasswdEntry) supervisor.Role {
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
func (p Passwd) Authenticate(user, password string) (supervisor.Role, bool) {
	var role supervisor.Role
	matchedServer, serverIsAgent := false, false
	for _, e := range p {
		same := subtle.ConstantTimeCompare([]byte(e.Password), []byte(password)) == 1
		r := entryRole(e)
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
		case user == agentUser && e.User == serverUser && r == supervisor.RoleServer:
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

// usedByOthers reports, in constant time per entry, whether a user other than server
// has password.
func (p Passwd) usedByOthers(password string) bool {
	used := false
	for _, e := range p {
		if e.User != serverUser && subtle.ConstantTimeCompare([]byte(e.Password), []byte(password)) == 1 {
			used = true
		}
	}
	return used
}

// WithPassword returns a copy with user's password replaced.
func (p Passwd) WithPassword(user, password string) Passwd {
	out := append(Passwd(nil), p...)
	for i := range out {
		if out[i].User == user {
			out[i].Password = password
		}
	}
	return out
}

// WithUser returns a copy in which user has password and role: its entry is updated,
// or one is added after the others.
func (p Passwd) WithUser(user, role, password string) Passwd {
	out := append(Passwd(nil), p...)
	for i := range out {
		if out[i].User == user {
			out[i].Password, out[i].Role = password, role
			return out
		}
	}
	return append(out, PasswdEntry{Password: password, User: user, UID: user, Role: role})
}

// rolePrefix is the prefix of the server entry's role ("kpki" in kpki:server, "k3s" in
// a file K3s wrote), so that an entry added to the file is written in its style.
func (p Passwd) rolePrefix() string {
	if e, ok := p.Find(serverUser); ok {
		if prefix, _, ok := strings.Cut(e.Role, ":"); ok && prefix != "" {
			return prefix
		}
	}
	return "kpki"
}

// errSameAgentPassword refuses a passwd whose agent password is the server password.
var errSameAgentPassword = errors.New("the agent password is the server password")

// validate checks that p holds a server entry with the server role and a node entry
// with the agent role, with different passwords.
func (p Passwd) validate() error {
	srv, ok := p.Find(serverUser)
	if !ok || entryRole(srv) != supervisor.RoleServer {
		return errors.New("no server entry with a server role")
	}
	node, ok := p.Find(agentUser)
	if !ok || entryRole(node) != supervisor.RoleAgent {
		return errors.New("no node entry with an agent role")
	}
	if node.Password == srv.Password {
		return errSameAgentPassword
	}
	return nil
}

// Bytes renders the file.
func (p Passwd) Bytes() []byte {
	var b strings.Builder
	for _, e := range p {
		fmt.Fprintf(&b, "%s,%s,%s,%s\n", e.Password, e.User, e.UID, e.Role)
	}
	return []byte(b.String())
}

// errAgentTokenIsServerToken refuses an --agent-token that holds the server password.
var errAgentTokenIsServerToken = errors.New("--agent-token must not hold the server token's password: the agent password must never authenticate as server")

// newAgentPassword is the agent password of a passwd that has no distinct one yet:
// --agent-token's, or a random one.
func (s *Server) newAgentPassword() (string, error) {
	if given := s.cfg.agentTokenPassword(); given != "" {
		if given == s.tok.Password {
			return "", errAgentTokenIsServerToken
		}
		return given, nil
	}
	return token.GeneratePassword()
}

// settleAttempts bounds the compare-and-swap retries of settlePasswd.
const settleAttempts = 5

// settlePasswd runs once the datastore is open and the disk matches the bootstrap
// record: the record's passwd becomes the one this server authenticates with. A passwd
// that cannot serve as is gets repaired through the record with a compare-and-swap, so
// that every server takes the same file:
//   - an agent password equal to the server password (what kpki wrote before agent
//     passwords were distinct, and the K3s default) is replaced by a distinct one;
//     agents holding the server token, or the old agent token, keep working, because
//     "node" with the server password is still an agent;
//   - a record without PasswdFile gets this server's cred/passwd.
//
// An --agent-token that is not the cluster's agent password is refused: changing the
// agent password of a running cluster from one server's flags would cut off agents.
func (s *Server) settlePasswd(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if given := s.cfg.agentTokenPassword(); given != "" && given == s.tok.Password {
		return errAgentTokenIsServerToken
	}
	for range settleAttempts {
		rec, rev, err := s.currentRecord(ctx)
		if err != nil {
			return err
		}
		pw, why, newAgent, err := s.passwdToSettle(rec)
		if err != nil {
			return err
		}
		if node, _ := pw.Find(agentUser); !newAgent {
			if given := s.cfg.agentTokenPassword(); given != "" && given != node.Password {
				return fmt.Errorf("--agent-token is not the cluster's agent token (the bootstrap data holds another agent password); start without --agent-token and give agents the token in %s", s.layout.AgentTokenFile())
			}
		}
		if why == "" {
			before := s.agentPassword
			s.useCreds(pw)
			if s.agentPassword != before {
				return s.writeDerived()
			}
			return nil
		}
		now := s.clock.Now()
		content := pw.Bytes()
		rec.Set(bootstrap.PasswdField, bootstrap.File{Timestamp: now.UTC(), Content: content})
		newRev, err := s.storeRecord(ctx, s.bootstrapKey, rev, rec)
		if errors.Is(err, datastore.ErrConflict) {
			// Another server changed the record meanwhile (maybe settling the same passwd):
			// look again.
			continue
		}
		if err != nil {
			return fmt.Errorf("store the repaired passwd in the datastore: %w", err)
		}
		s.bootstrapRev.Store(newRev)
		s.useCreds(pw)
		if err := datadir.WriteFileWithTime(s.layout.PasswdFile(), content, 0o600, now); err != nil {
			return fmt.Errorf("the repaired passwd is stored in the datastore, but %w; it is written from there at the next start", err)
		}
		if err := s.writeDerived(); err != nil {
			return err
		}
		msg := why + "; stored the repaired passwd in the bootstrap data and cred/passwd"
		if newAgent {
			msg += "; new agents get the distinct agent password of the agent token file, agents holding the server token or the old agent token keep working"
		}
		s.log.Warn(msg, "passwd", s.layout.PasswdFile(), "agent-token", s.layout.AgentTokenFile(), "bootstrap-key", s.bootstrapKey)
		s.writeAudit(audit.Entry{Time: now.UTC(), Action: "passwd-repair", Actor: "kpki", Detail: why})
		return nil
	}
	return errors.New("the bootstrap data kept changing while this server repaired its passwd; restart to try again")
}

// passwdToSettle returns the passwd this server must use with rec and, when it differs
// from the record's, why, and whether it holds a new agent password; why is empty when
// the record's passwd can be used as is.
func (s *Server) passwdToSettle(rec *bootstrap.Record) (pw Passwd, why string, newAgent bool, err error) {
	if pf, ok := rec.Get(bootstrap.PasswdField); ok {
		if pw, err = ParsePasswd(pf.Content); err != nil {
			return nil, "", false, fmt.Errorf("passwd in the bootstrap data: %w", err)
		}
	} else {
		why = "the bootstrap data held no passwd"
		data, err := datadir.ReadOptional(s.layout.PasswdFile())
		if err != nil {
			return nil, "", false, err
		}
		if data != nil {
			if pw, err = ParsePasswd(data); err != nil {
				return nil, "", false, fmt.Errorf("%s: %w", s.layout.PasswdFile(), err)
			}
		}
	}
	prefix := pw.rolePrefix()
	if srv, ok := pw.Find(serverUser); !ok || srv.Password != s.tok.Password || entryRole(srv) != supervisor.RoleServer {
		if why == "" {
			why = "the passwd in the bootstrap data had no server entry for this token"
		}
		pw = pw.WithUser(serverUser, prefix+":server", s.tok.Password)
	}
	if node, ok := pw.Find(agentUser); !ok || node.Password == s.tok.Password || entryRole(node) != supervisor.RoleAgent {
		agent, err := s.newAgentPassword()
		if err != nil {
			return nil, "", false, err
		}
		switch {
		case why != "":
		case ok && node.Password == s.tok.Password:
			why = "the agent password was the server password"
		default:
			why = "the passwd in the bootstrap data had no agent entry"
		}
		pw, newAgent = pw.WithUser(agentUser, prefix+":agent", agent), true
	}
	if err := pw.validate(); err != nil {
		return nil, "", false, fmt.Errorf("passwd: %w", err)
	}
	return pw, why, newAgent, nil
}
