package supervisor

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

const (
	serverPassword = "0123456789abcdef0123456789abcdef"
	agentPassword  = "fedcba9876543210fedcba9876543210"
)

// testAuth accepts server:<serverPassword> and node:<agentPassword>.
func testAuth(user, password string) (Role, bool) {
	switch {
	case user == "server" && password == serverPassword:
		return RoleServer, true
	case user == "node" && password == agentPassword:
		return RoleAgent, true
	}
	return "", false
}

func TestRequire(t *testing.T) {
	tests := []struct {
		name       string
		auth       Authenticator
		roles      []Role
		setup      func(*http.Request)
		code       int
		wantCaller Caller
		errorMsg   string
	}{
		{name: "no credentials", auth: testAuth, roles: []Role{RoleServer},
			code: http.StatusUnauthorized, errorMsg: "authentication required"},
		{name: "bearer instead of basic", auth: testAuth, roles: []Role{RoleServer},
			setup: func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+serverPassword) },
			code:  http.StatusUnauthorized, errorMsg: "authentication required"},
		{name: "wrong password", auth: testAuth, roles: []Role{RoleServer},
			setup: func(r *http.Request) { r.SetBasicAuth("server", agentPassword) },
			code:  http.StatusUnauthorized, errorMsg: "invalid credentials"},
		{name: "unknown user", auth: testAuth, roles: []Role{RoleServer, RoleAgent},
			setup: func(r *http.Request) { r.SetBasicAuth("admin", serverPassword) },
			code:  http.StatusUnauthorized, errorMsg: "invalid credentials"},
		{name: "empty credentials", auth: testAuth, roles: []Role{RoleAgent},
			setup: func(r *http.Request) { r.SetBasicAuth("", "") },
			code:  http.StatusUnauthorized, errorMsg: "invalid credentials"},
		{name: "no authenticator configured", auth: nil, roles: []Role{RoleServer},
			setup: func(r *http.Request) { r.SetBasicAuth("server", serverPassword) },
			code:  http.StatusUnauthorized, errorMsg: "authentication required"},
		{name: "agent on a server endpoint", auth: testAuth, roles: []Role{RoleServer},
			setup: func(r *http.Request) { r.SetBasicAuth("node", agentPassword) },
			code:  http.StatusForbidden, errorMsg: "this endpoint needs the server token"},
		{name: "endpoint allowing no role", auth: testAuth, roles: nil,
			setup: func(r *http.Request) { r.SetBasicAuth("server", serverPassword) },
			code:  http.StatusForbidden, errorMsg: "this endpoint needs the server token"},
		{name: "server on a server endpoint", auth: testAuth, roles: []Role{RoleServer},
			setup:      func(r *http.Request) { r.SetBasicAuth("server", serverPassword) },
			code:       http.StatusOK,
			wantCaller: Caller{User: "server", Role: RoleServer}},
		{name: "agent on an agent-or-server endpoint", auth: testAuth, roles: []Role{RoleAgent, RoleServer},
			setup:      func(r *http.Request) { r.SetBasicAuth("node", agentPassword) },
			code:       http.StatusOK,
			wantCaller: Caller{User: "node", Role: RoleAgent}},
		{name: "server on an agent-or-server endpoint", auth: testAuth, roles: []Role{RoleAgent, RoleServer},
			setup:      func(r *http.Request) { r.SetBasicAuth("server", serverPassword) },
			code:       http.StatusOK,
			wantCaller: Caller{User: "server", Role: RoleServer}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			called := make(chan Caller, 1)
			ts := startServer(t, Config{Authenticate: tc.auth}, func(s *Supervisor) {
				s.Handle("GET /v1-kpki/protected", s.Require(func(w http.ResponseWriter, r *http.Request) {
					called <- CallerFrom(r.Context())
					JSON(w, CallerFrom(r.Context()))
				}, tc.roles...))
			})
			code, hdr, body := ts.do(t, http.MethodGet, "/v1-kpki/protected", tc.setup)
			if code != tc.code {
				t.Fatalf("status = %d, want %d (body %s)", code, tc.code, body)
			}
			if tc.code != http.StatusOK {
				select {
				case c := <-called:
					t.Errorf("handler ran for %+v", c)
				default:
				}
				checkJSONError(t, ts, hdr, body, tc.code, tc.errorMsg)
				wantChallenge := tc.code == http.StatusUnauthorized
				if got := hdr.Get("WWW-Authenticate"); (got == `Basic realm="kpki"`) != wantChallenge {
					t.Errorf("WWW-Authenticate = %q, want challenge %v", got, wantChallenge)
				}
				for _, pw := range []string{serverPassword, agentPassword} {
					if strings.Contains(ts.log.String(), pw) || strings.Contains(string(body), pw) {
						t.Error("a password appears in the log or the answer")
					}
				}
				return
			}
			select {
			case c := <-called:
				if c != tc.wantCaller {
					t.Errorf("CallerFrom = %+v, want %+v", c, tc.wantCaller)
				}
			default:
				t.Fatal("handler did not run")
			}
			var got Caller
			if err := json.Unmarshal(body, &got); err != nil || got != tc.wantCaller {
				t.Errorf("answer %s (%v), want %+v", body, err, tc.wantCaller)
			}
		})
	}
}

// otherKey is a context key of another package.
type otherKey struct{}

func TestCallerFromWithoutRequire(t *testing.T) {
	tests := []struct {
		name string
		ctx  context.Context
	}{
		{name: "background", ctx: context.Background()},
		{name: "a Caller under another key", ctx: context.WithValue(context.Background(), otherKey{}, Caller{User: "x", Role: RoleServer})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if c := CallerFrom(tc.ctx); c != (Caller{}) {
				t.Errorf("CallerFrom = %+v, want the zero Caller", c)
			}
		})
	}
}
