package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/datastore"
	"github.com/kpki/kpki/internal/passwd"
	"github.com/kpki/kpki/internal/server/record"
	"github.com/kpki/kpki/internal/supervisor"
	"github.com/kpki/kpki/internal/token"
)

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
		if node, _ := pw.Find(passwd.AgentUser); !newAgent {
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
		newRev, err := record.Update(ctx, s.store, s.tok.Password, rev, rec)
		if errors.Is(err, datastore.ErrConflict) {
			// Another server changed the record meanwhile (maybe settling the same passwd):
			// look again.
			continue
		}
		if err != nil {
			return fmt.Errorf("store the repaired passwd in the datastore: %w", err)
		}
		s.own.Set(newRev)
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
		s.log.Warn(msg, "passwd", s.layout.PasswdFile(), "agent-token", s.layout.AgentTokenFile(), "bootstrap-key", bootstrap.KeyName(s.tok.Password))
		s.writeAudit(audit.Entry{Time: now.UTC(), Action: "passwd-repair", Actor: "kpki", Detail: why})
		return nil
	}
	return errors.New("the bootstrap data kept changing while this server repaired its passwd; restart to try again")
}

// passwdToSettle returns the passwd this server must use with rec and, when it differs
// from the record's, why, and whether it holds a new agent password; why is empty when
// the record's passwd can be used as is.
func (s *Server) passwdToSettle(rec *bootstrap.Record) (pw passwd.File, why string, newAgent bool, err error) {
	if pf, ok := rec.Get(bootstrap.PasswdField); ok {
		if pw, err = passwd.Parse(pf.Content); err != nil {
			return nil, "", false, fmt.Errorf("passwd in the bootstrap data: %w", err)
		}
	} else {
		why = "the bootstrap data held no passwd"
		data, err := datadir.ReadOptional(s.layout.PasswdFile())
		if err != nil {
			return nil, "", false, err
		}
		if data != nil {
			if pw, err = passwd.Parse(data); err != nil {
				return nil, "", false, fmt.Errorf("%s: %w", s.layout.PasswdFile(), err)
			}
		}
	}
	prefix := pw.RolePrefix()
	if srv, ok := pw.Find(passwd.ServerUser); !ok || srv.Password != s.tok.Password || passwd.EntryRole(srv) != supervisor.RoleServer {
		if why == "" {
			why = "the passwd in the bootstrap data had no server entry for this token"
		}
		pw = pw.WithUser(passwd.ServerUser, prefix+":server", s.tok.Password)
	}
	if node, ok := pw.Find(passwd.AgentUser); !ok || node.Password == s.tok.Password || passwd.EntryRole(node) != supervisor.RoleAgent {
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
		pw, newAgent = pw.WithUser(passwd.AgentUser, prefix+":agent", agent), true
	}
	if err := pw.Validate(); err != nil {
		return nil, "", false, fmt.Errorf("passwd: %w", err)
	}
	return pw, why, newAgent, nil
}
