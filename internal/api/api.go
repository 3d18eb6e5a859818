// Package api holds the request and response bodies of the supervisor's /v1-kpki
// endpoints and the client the CLI uses to call them over TLS verified against the
// cluster's server CA.
package api

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/rotation"
)

// Paths of the endpoints.
const (
	PathRotateCA    = "/v1-kpki/cert/cacerts"
	PathTokenRotate = "/v1-kpki/token"
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

// ErrorBody is the JSON body of every error answer.
type ErrorBody struct {
	Error  string   `json:"error"`
	ID     string   `json:"id"`
	Errors []string `json:"errors,omitempty"`
}

// Client calls a kpki supervisor.
type Client struct {
	BaseURL  string
	User     string
	Password string
	HTTP     *http.Client
}

// NewClient returns a client for baseURL trusting the CA bundle caPEM.
func NewClient(baseURL string, caPEM []byte, user, password string) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("server URL %q must look like https://host:port", baseURL)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no CA certificate to verify the server with")
	}
	return &Client{
		BaseURL:  strings.TrimRight(baseURL, "/"),
		User:     user,
		Password: password,
		HTTP: &http.Client{
			Timeout:   60 * time.Second,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
		},
	}, nil
}

// StatusError is a non-2xx answer.
type StatusError struct {
	Code int
	Body ErrorBody
}

func (e *StatusError) Error() string {
	msg := e.Body.Error
	if msg == "" {
		msg = http.StatusText(e.Code)
	}
	if e.Body.ID != "" {
		return fmt.Sprintf("%s (server error id %s)", msg, e.Body.ID)
	}
	return msg
}

// Do sends in as JSON with method to path and decodes the answer into out.
func (c *Client) Do(method, path string, query url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	u := c.BaseURL + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(c.User, c.Password)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the kpki server at %s: %w", c.BaseURL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read answer of %s: %w", c.BaseURL, err)
	}
	if resp.StatusCode/100 != 2 {
		se := &StatusError{Code: resp.StatusCode}
		if json.Unmarshal(data, &se.Body) != nil {
			se.Body.Error = strings.TrimSpace(string(data))
		}
		return se
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("the server at %s answered something that is not a kpki reply: %w", c.BaseURL, err)
		}
	}
	return nil
}
