package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datastore"
	nodeid "github.com/kpki/kpki/internal/node"
	"github.com/kpki/kpki/internal/nodeauth"
	"github.com/kpki/kpki/internal/rollout"
	"github.com/kpki/kpki/internal/server/record"
	"github.com/kpki/kpki/internal/supervisor"
)

// statusStore is what the status endpoints need of the datastore beyond the record's.
type statusStore interface {
	Put(ctx context.Context, key string, value []byte) error
	GetPrefix(ctx context.Context, prefix string) ([]datastore.KV, int64, error)
}

// handleNodeStatus stores the status report of an agent. The caller authenticates as
// for a signing request (the token, then the node name and node password headers), the
// node must have joined already (its node password is registered), and the report must
// be its own: a node reports only for itself.
func (s *API) handleNodeStatus(w http.ResponseWriter, r *http.Request) {
	node := strings.ToLower(strings.TrimSpace(r.Header.Get(api.HeaderNodeName)))
	nodePW := r.Header.Get(api.HeaderNodePassword)
	if node == "" || nodePW == "" {
		s.Sup.Error(w, r, http.StatusBadRequest, fmt.Errorf("headers %s and %s are required", api.HeaderNodeName, api.HeaderNodePassword))
		return
	}
	if !nodeid.ValidName(node) {
		s.Sup.Error(w, r, http.StatusBadRequest, fmt.Errorf("node name %q is not a valid DNS name", supervisor.Clip(node, supervisor.ClientFieldMax)))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, rollout.MaxBody+1))
	if err != nil {
		s.Sup.Error(w, r, http.StatusBadRequest, fmt.Errorf("read request: %w", err))
		return
	}
	if len(body) > rollout.MaxBody {
		s.Sup.Error(w, r, http.StatusRequestEntityTooLarge, fmt.Errorf("status report larger than %d bytes", rollout.MaxBody))
		return
	}
	var rep api.NodeStatus
	if err := json.Unmarshal(body, &rep); err != nil {
		s.Sup.Error(w, r, http.StatusBadRequest, fmt.Errorf("status report is not valid JSON: %w", err))
		return
	}
	if rep.Role != "" && rep.Role != rollout.RoleAgent {
		s.Sup.Error(w, r, http.StatusBadRequest, fmt.Errorf("role %q: agents report as %q", supervisor.Clip(rep.Role, supervisor.QueryMax), rollout.RoleAgent))
		return
	}
	if err := rep.Check(); err != nil {
		s.Sup.Error(w, r, http.StatusBadRequest, fmt.Errorf("status report refused: %w", err))
		return
	}
	if rep.Node != node {
		s.writeAudit(audit.Entry{Time: s.now().UTC(), Action: "node-status-refused", Actor: node, RemoteAddr: r.RemoteAddr,
			Detail: "a status report for node " + rep.Node + " came from node " + node})
		s.Sup.Error(w, r, http.StatusForbidden, fmt.Errorf("node %s may not report for node %s: a node reports only for itself", node, rep.Node))
		return
	}
	if !s.nodeIdentified(w, r, node, nodePW) {
		return
	}
	rep.Role, rep.ReportedAt = rollout.RoleAgent, s.now().UTC()
	data, err := json.Marshal(rep)
	if err != nil {
		s.Sup.Error(w, r, http.StatusInternalServerError, err)
		return
	}
	if err := s.Store.Put(r.Context(), rollout.Key(node), data); err != nil {
		s.datastoreError(w, r, http.StatusInternalServerError, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// nodeIdentified checks that node has joined and that nodePW is its node password,
// answering the request when not. Unlike a signing request it never registers a node.
func (s *API) nodeIdentified(w http.ResponseWriter, r *http.Request, node, nodePW string) bool {
	_, _, err := s.Store.Get(r.Context(), nodeauth.NodePasswordPrefix+node)
	if errors.Is(err, datastore.ErrNotFound) {
		s.Sup.Error(w, r, http.StatusForbidden, fmt.Errorf("node %s has not joined the cluster: it has no certificate signed yet", node))
		return false
	}
	if err != nil {
		s.datastoreError(w, r, http.StatusInternalServerError, err)
		return false
	}
	ok, err := s.Nodes.CheckNodePassword(r.Context(), node, nodePW)
	if errors.Is(err, nodeauth.ErrServerNodeName) {
		s.Sup.Error(w, r, http.StatusForbidden, fmt.Errorf("node %s %w; servers record their status themselves", node, err))
		return false
	}
	if err != nil {
		s.datastoreError(w, r, http.StatusInternalServerError, err)
		return false
	}
	if !ok {
		s.writeAudit(audit.Entry{Time: s.now().UTC(), Action: "node-password-mismatch", Actor: node, RemoteAddr: r.RemoteAddr,
			Detail: "a status report claimed a node name registered with another node password"})
		s.Sup.Error(w, r, http.StatusForbidden, fmt.Errorf("node %s is registered with another node password", node))
		return false
	}
	return true
}

// handleRolloutStatus answers the status of every registered server and agent against
// the CA generation of the bootstrap record.
func (s *API) handleRolloutStatus(w http.ResponseWriter, r *http.Request) {
	st, err := s.rolloutStatus(r.Context())
	if err != nil {
		s.datastoreError(w, r, http.StatusInternalServerError, err)
		return
	}
	supervisor.JSON(w, st)
}

func (s *API) rolloutStatus(ctx context.Context) (api.RolloutStatus, error) {
	rec, _, err := record.Current(ctx, s.Store, s.Host.Password())
	if err != nil {
		return api.RolloutStatus{}, err
	}
	cur, err := currentOf(rec)
	if err != nil {
		return api.RolloutStatus{}, err
	}
	kvs, _, err := s.Store.GetPrefix(ctx, rollout.KeyPrefix)
	if err != nil {
		return api.RolloutStatus{}, err
	}
	var reports []rollout.Report
	for _, kv := range kvs {
		rep, err := rollout.Parse(kv.Key, kv.Value)
		if err != nil {
			s.Log.Warn("skipping a malformed status record", "key", kv.Key, "error", err)
			continue
		}
		reports = append(reports, rep)
	}
	servers, err := s.names(ctx, nodeauth.ServersPrefix, nil)
	if err != nil {
		return api.RolloutStatus{}, err
	}
	isServer := map[string]bool{}
	for _, n := range servers {
		isServer[n] = true
	}
	agents, err := s.names(ctx, nodeauth.NodePasswordPrefix, isServer)
	if err != nil {
		return api.RolloutStatus{}, err
	}
	return rollout.Aggregate(cur, reports, servers, agents), nil
}

// names lists the node names under prefix but those in skip.
func (s *API) names(ctx context.Context, prefix string, skip map[string]bool) ([]string, error) {
	keys, err := s.Store.Keys(ctx, prefix)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, k := range keys {
		if n := strings.TrimPrefix(k, prefix); n != "" && !skip[n] {
			out = append(out, n)
		}
	}
	return out, nil
}

// currentOf is the CA generation of the record's CA certificate files.
func currentOf(rec *bootstrap.Record) (rollout.Current, error) {
	files := map[certs.CAID][]byte{}
	for _, c := range certs.CAs {
		f, ok := rec.Get(c.CertField)
		if !ok {
			return rollout.Current{}, fmt.Errorf("the bootstrap record holds no %s", c.CertField)
		}
		files[c.ID] = f.Content
	}
	return rollout.CurrentOf(files)
}
