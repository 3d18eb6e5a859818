package server

import (
	"context"
	"time"

	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/membership"
	"github.com/kpki/kpki/internal/passwd"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/server/handlers"
	"github.com/kpki/kpki/internal/supervisor"
)

// The server is the handlers' Host: what the /v1-kpki handlers read of its state and
// the files a token rotation rewrites. None of these methods waits for the datastore.
var _ handlers.Host = (*Server)(nil)

// handlers returns the /v1-kpki API of this server.
func (s *Server) handlers() *handlers.API {
	a := &handlers.API{
		Sup: s.sup, Store: s.store, Nodes: s.nodes, Host: s, Own: &s.own,
		Log: s.log, Clock: s.clock, Metrics: s.metrics, Audit: s.writeAudit,
		Issuer: s.issuer, Validity: s.r.validity, ClusterDomain: s.cfg.ClusterDomain,
	}
	if s.embedded != nil {
		// The client is taken per call: a restart of the member replaces it.
		st := s.store
		a.Members = func(ctx context.Context) ([]membership.Member, error) { return membership.List(ctx, st.Client()) }
	}
	return a
}

// CAs returns the loaded CAs.
func (s *Server) CAs() map[certs.CAID]*pki.CA { return s.caSet() }

// Password is the server password.
func (s *Server) Password() string {
	pw, _ := s.secrets()
	return pw
}

// secrets returns the server and agent passwords.
func (s *Server) secrets() (server, agent string) {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	return s.tok.Password, s.agentPassword
}

// Creds is the passwd this server authenticates with.
func (s *Server) Creds() *passwd.File { return s.creds.Load() }

// TokenRotated makes newPassword the server password and pw the passwd.
func (s *Server) TokenRotated(newPassword string, pw passwd.File) {
	s.stateMu.Lock()
	s.tok.Password = newPassword
	s.stateMu.Unlock()
	s.useCreds(pw)
}

// PasswdFile is cred/passwd.
func (s *Server) PasswdFile() string { return s.layout.PasswdFile() }

// TokenFile is the server token file.
func (s *Server) TokenFile() string { return s.layout.TokenFile() }

// WritePasswd writes cred/passwd.
func (s *Server) WritePasswd(content []byte, modTime time.Time) error {
	return datadir.WriteFileWithTime(s.layout.PasswdFile(), content, 0o600, modTime)
}

// WriteTokenFiles rewrites the files derived from the server's state, the token files
// among them.
func (s *Server) WriteTokenFiles() error {
	s.pkiMu.Lock()
	defer s.pkiMu.Unlock()
	return s.writeDerived()
}

// authenticate checks basic credentials, in constant time, against the passwd this
// server holds in memory (see creds); before it has one, nothing authenticates.
func (s *Server) authenticate(user, password string) (supervisor.Role, bool) {
	pw := s.creds.Load()
	if pw == nil {
		return "", false
	}
	return pw.Authenticate(user, password)
}

// useCreds makes pw the passwd this server authenticates with and its node entry the
// agent password of the agent-token file.
func (s *Server) useCreds(pw passwd.File) {
	s.creds.Store(&pw)
	if node, ok := pw.Find(passwd.AgentUser); ok {
		s.stateMu.Lock()
		s.agentPassword = node.Password
		s.stateMu.Unlock()
	}
}

func (s *Server) writeAudit(e audit.Entry) {
	if err := s.audit.Write(e); err != nil {
		s.log.Warn("audit log write failed", "error", err)
	}
}
