package supervisor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"

	"github.com/kpki/kpki/internal/api"
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

// Require wraps h so that it runs only for callers holding one of roles. Failed
// authentications are slowed down per remote address (see authLimiter): an address
// that failed too often is answered 429 with Retry-After until it may try again.
func (s *Supervisor) Require(h http.HandlerFunc, roles ...Role) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pw, ok := r.BasicAuth()
		if !ok || s.cfg.Authenticate == nil {
			w.Header().Set(api.HeaderWWWAuthenticate, api.BasicChallenge)
			s.Error(w, r, http.StatusUnauthorized, errors.New("authentication required"))
			return
		}
		key := clientKey(r.RemoteAddr)
		if wait := s.authL.wait(key); wait > 0 {
			secs := int(math.Ceil(wait.Seconds()))
			w.Header().Set(api.HeaderRetryAfter, strconv.Itoa(secs))
			s.Error(w, r, http.StatusTooManyRequests,
				fmt.Errorf("too many failed authentications from %s; try again in %d s", key, secs))
			return
		}
		role, ok := s.cfg.Authenticate(user, pw)
		if !ok {
			s.authL.failed(key)
			w.Header().Set(api.HeaderWWWAuthenticate, api.BasicChallenge)
			s.Error(w, r, http.StatusUnauthorized, errors.New("invalid credentials"))
			return
		}
		s.authL.succeeded(key)
		for _, want := range roles {
			if role == want {
				h(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, Caller{User: user, Role: role})))
				return
			}
		}
		s.Error(w, r, http.StatusForbidden, errors.New("this endpoint needs the server token"))
	})
}
