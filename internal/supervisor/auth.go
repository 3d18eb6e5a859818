package supervisor

import (
	"context"
	"errors"
	"net/http"
)

// Role is what an authenticated caller may do.
type Role string

// Roles, from cred/passwd.
const (
	RoleServer Role = "server"
	RoleAgent  Role = "agent"
)

// Authenticator checks HTTP basic credentials and returns the caller's role.
type Authenticator func(user, password string) (Role, bool)

type ctxKey struct{}

// Caller is the authenticated user of a request.
type Caller struct {
	User string
	Role Role
}

// CallerFrom returns the authenticated caller of a request handled behind Require.
func CallerFrom(ctx context.Context) Caller {
	c, _ := ctx.Value(ctxKey{}).(Caller)
	return c
}

// Require wraps h so that it runs only for callers holding one of roles.
func (s *Supervisor) Require(h http.HandlerFunc, roles ...Role) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pw, ok := r.BasicAuth()
		if !ok || s.cfg.Authenticate == nil {
			w.Header().Set("WWW-Authenticate", `Basic realm="kpki"`)
			s.Error(w, r, http.StatusUnauthorized, errors.New("authentication required"))
			return
		}
		role, ok := s.cfg.Authenticate(user, pw)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Basic realm="kpki"`)
			s.Error(w, r, http.StatusUnauthorized, errors.New("invalid credentials"))
			return
		}
		for _, want := range roles {
			if role == want {
				h(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, Caller{User: user, Role: role})))
				return
			}
		}
		s.Error(w, r, http.StatusForbidden, errors.New("this endpoint needs the server token"))
	})
}
