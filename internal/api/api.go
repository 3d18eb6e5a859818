// Package api is the supervisor's wire protocol (SPEC §7): the paths, headers and
// bodies of its endpoints, the error body every failure answers with, and the one
// client every caller uses (agent, joining server, CLI, load tool). The client verifies
// the server against a trust.Trust, the cluster CA a node pinned, and honours its
// context.
package api

import (
	"github.com/kpki/kpki/internal/rollout"
	"github.com/kpki/kpki/internal/rotation"
)

// DefaultSupervisorPort is the port the supervisor listens on unless told otherwise.
const DefaultSupervisorPort = 9345

// Paths of the endpoints.
const (
	// PathCACerts serves the server CA bundle without authentication: what a joining
	// node pins with its token.
	PathCACerts = "/cacerts"
	// PathPing answers "pong" without authentication.
	PathPing = "/ping"
	// PathReadyz answers "ok" without authentication once the datastore and the PKI
	// are ready, and an error body with 503 before.
	PathReadyz = "/readyz"

	PathServerCA        = "/v1-kpki/server-ca.crt"
	PathClientCA        = "/v1-kpki/client-ca.crt"
	PathServerBootstrap = "/v1-kpki/server-bootstrap"
	PathEtcdMembers     = "/v1-kpki/etcd-members"
	PathRotateCA        = "/v1-kpki/cert/cacerts"
	PathTokenRotate     = "/v1-kpki/token"
	// PathNodeStatus takes an agent's NodeStatus, with the node headers of a signing
	// request; PathRolloutStatus answers the RolloutStatus of the cluster.
	PathNodeStatus    = "/v1-kpki/node-status"
	PathRolloutStatus = "/v1-kpki/rollout-status"
)

// QueryRollback, set to "true" on a PUT of PathRotateCA, asks for a rollback: the
// server restores the CA files the last rotate-ca replaced; the request holds no files.
const QueryRollback = "rollback"

// PathPrefix is the prefix of every authenticated endpoint.
const PathPrefix = "/v1-kpki/"

// SignPath is the endpoint that signs the agent leaf named name (client-kubelet, ...).
func SignPath(name string) string { return PathPrefix + name + ".crt" }

// Pattern is the http.ServeMux pattern of method on path: "GET /cacerts".
func Pattern(method, path string) string { return method + " " + path }

// Content types.
const (
	ContentTypeCSR  = "application/pkcs10"
	ContentTypeJSON = "application/json"
	// ContentTypePEM is the type of every answer holding PEM certificates.
	ContentTypePEM = "application/x-pem-file"
	// ContentTypeText is the type of the /ping and /readyz answers.
	ContentTypeText = "text/plain"
)

// Standard headers the supervisor answers with.
const (
	HeaderContentType = "Content-Type"
	// HeaderRetryAfter, in whole seconds, comes with 429 and 503 answers.
	HeaderRetryAfter = "Retry-After"
	// HeaderWWWAuthenticate, with BasicChallenge, comes with 401 answers.
	HeaderWWWAuthenticate = "WWW-Authenticate"
	BasicChallenge        = `Basic realm="kpki"`
)

// Headers a node sends with its signing requests (SPEC §7).
const (
	HeaderNodeName     = "Kpki-Node-Name"
	HeaderNodePassword = "Kpki-Node-Password"
	HeaderNodeIP       = "Kpki-Node-IP"
)

// RotateCARequest carries the staged files, keyed by bootstrap field (ServerCA, ...).
type RotateCARequest struct {
	Files map[string][]byte `json:"files"`
}

// RotateCAResponse is the outcome of a rotate-ca request.
type RotateCAResponse struct {
	rotation.Result
	DryRun bool `json:"dry_run"`
	Saved  bool `json:"saved"`
	// ServerToken and AgentToken are the tokens with the new CA hash, when it changed.
	ServerToken string `json:"server_token,omitempty"`
	AgentToken  string `json:"agent_token,omitempty"`
}

// TokenRotateRequest asks for a new server token; an empty Token means "generate one".
type TokenRotateRequest struct {
	Token string `json:"token,omitempty"`
}

// TokenRotateResponse carries the new server token. Warnings name the files of the
// answering server that could not be written although the rotation was stored.
type TokenRotateResponse struct {
	Token    string   `json:"token"`
	Warnings []string `json:"warnings,omitempty"`
}

// NodeStatus is the body of PUT PathNodeStatus: the CA generation and certificates an
// agent holds. The server sets its role and time; it is stored as sent otherwise.
type NodeStatus = rollout.Report

// RolloutStatus is the answer of GET PathRolloutStatus.
type RolloutStatus = rollout.Status

// ErrorBody is the JSON body of every error answer: the message, the id the server
// logged it with, and, for a request refused by several checks, every failed check.
type ErrorBody struct {
	Error  string   `json:"error"`
	ID     string   `json:"id"`
	Errors []string `json:"errors,omitempty"`
}
