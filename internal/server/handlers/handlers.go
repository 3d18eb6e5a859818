// Package handlers is the server's /v1-kpki API: CA bundles, node certificate signing
// with node-password binding and claim checks, the bootstrap data for a joining server,
// the etcd member list, rotate-ca and token rotate. It holds no state of its own but
// whether a token rotation is under way: the datastore, node identity and the running
// server's state come in through interfaces, so that each handler runs in tests
// against an in-memory datastore. No handler holds a lock while it waits for the
// datastore.
package handlers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/membership"
	"github.com/kpki/kpki/internal/metrics"
	"github.com/kpki/kpki/internal/nodeclaim"
	"github.com/kpki/kpki/internal/passwd"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/server/record"
	"github.com/kpki/kpki/internal/supervisor"
)

// Nodes is node identity in the datastore (nodeauth.Registry).
type Nodes interface {
	ClusterServers(ctx context.Context) ([]nodeclaim.Server, error)
	CheckNodePassword(ctx context.Context, node, pw string) (bool, error)
	RecordIPClaims(ctx context.Context, node string, ips []net.IP, remote string) error
}

// Host is what the handlers need of the running server. Every method returns at once:
// none waits for the datastore.
type Host interface {
	// CAs are the CAs the server loaded; the map is not changed after it is returned.
	CAs() map[certs.CAID]*pki.CA
	// Password is the server password the bootstrap record is encrypted with.
	Password() string
	// Creds is the passwd the server authenticates with (nil before it has one).
	Creds() *passwd.File
	// TokenRotated switches the server to the new password and passwd: the record has
	// moved to the new password's key.
	TokenRotated(newPassword string, creds passwd.File)

	// The token files and cred/passwd of this server's data dir.
	PasswdFile() string
	TokenFile() string
	PendingTokenFile() string
	WritePendingToken(pw string) error
	DropPendingToken()
	WritePasswd(content []byte, modTime time.Time) error
	// WriteTokenFiles rewrites the token files (and everything else derived) from the
	// server's current state.
	WriteTokenFiles() error
	// RecordChanged tells the server that this server changed the bootstrap record: it
	// converges to the record in the datastore, in the background, as it does when
	// another server changes it.
	RecordChanged()
}

// API serves the /v1-kpki endpoints.
type API struct {
	Sup     *supervisor.Supervisor
	Store   Store
	Nodes   Nodes
	Host    Host
	Own     *record.Own
	Log     *slog.Logger
	Clock   clock.Clock
	Metrics *metrics.Metrics
	Audit   func(audit.Entry)
	Issuer  *pki.Issuer
	// Validity is how long a signed node certificate is valid.
	Validity      time.Duration
	ClusterDomain string
	// Members lists the embedded etcd cluster; nil with an external datastore.
	Members func(ctx context.Context) ([]membership.Member, error)

	tokenRotating atomic.Bool
}

// Store is what the handlers need of the datastore.
type Store interface {
	record.Store
	statusStore
}

// Register adds every /v1-kpki endpoint to the supervisor, behind its role checks.
func (a *API) Register() {
	both := []supervisor.Role{supervisor.RoleServer, supervisor.RoleAgent}
	for _, l := range certs.Select(certs.AgentNode, nil) {
		leaf := l
		a.Sup.Handle("POST "+api.SignPath(leaf.Name), a.Sup.Require(func(w http.ResponseWriter, r *http.Request) {
			a.handleSign(w, r, leaf)
		}, both...))
	}
	a.Sup.Handle("GET "+api.PathServerCA, a.Sup.Require(a.caHandler(certs.ServerCA), both...))
	a.Sup.Handle("GET "+api.PathClientCA, a.Sup.Require(a.caHandler(certs.ClientCA), both...))
	a.Sup.Handle("GET "+api.PathServerBootstrap, a.Sup.Require(a.handleServerBootstrap, supervisor.RoleServer))
	a.Sup.Handle("GET "+api.PathEtcdMembers, a.Sup.Require(a.handleEtcdMembers, supervisor.RoleServer))
	a.Sup.Handle("PUT "+api.PathRotateCA, a.Sup.Require(a.handleRotateCA, supervisor.RoleServer))
	a.Sup.Handle("PUT "+api.PathTokenRotate, a.Sup.Require(a.handleTokenRotate, supervisor.RoleServer))
	a.Sup.Handle("PUT "+api.PathNodeStatus, a.Sup.Require(a.handleNodeStatus, both...))
	a.Sup.Handle("GET "+api.PathRolloutStatus, a.Sup.Require(a.handleRolloutStatus, supervisor.RoleServer))
}

func (a *API) writeAudit(e audit.Entry) {
	if a.Audit != nil {
		a.Audit(e)
	}
}

func (a *API) now() time.Time { return a.Clock.Now() }

func decodeBody(r *http.Request, limit int64, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return fmt.Errorf("read request: %w", err)
	}
	if int64(len(body)) > limit {
		return fmt.Errorf("request body larger than %d bytes", limit)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("request body is not valid JSON: %w", err)
	}
	return nil
}
