package agent

import (
	"bytes"
	"context"
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

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/pki"
)

// Paths and headers of the supervisor API the agent uses (SPEC §7).
const (
	PathCACerts    = "/cacerts"
	PathServerCA   = "/v1-kpki/server-ca.crt"
	PathClientCA   = "/v1-kpki/client-ca.crt"
	ContentTypeCSR = "application/pkcs10"
)

// SignPath is the endpoint that signs the leaf named name.
func SignPath(name string) string { return "/v1-kpki/" + name + ".crt" }

const (
	requestTimeout = 30 * time.Second
	maxReply       = 1 << 20
)

// httpClient makes requests to the server.
type httpClient struct {
	base string
	c    *http.Client
}

func (a *Agent) newClient(roots *x509.CertPool) *httpClient {
	tr := a.transport.Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, InsecureSkipVerify: roots == nil}
	return &httpClient{
		base: a.base.String(),
		c: &http.Client{
			Transport: tr,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}
}

func (h *httpClient) close() { h.c.CloseIdleConnections() }

// reply is a response read in full.
type reply struct {
	status int
	body   []byte
}

func (h *httpClient) do(ctx context.Context, method, path string, body []byte, setup func(*http.Request)) (reply, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, h.base+path, rd)
	if err != nil {
		return reply{}, err
	}
	if setup != nil {
		setup(req)
	}
	resp, err := h.c.Do(req)
	if err != nil {
		return reply{}, h.transportError(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReply+1))
	if err != nil {
		return reply{}, fmt.Errorf("read the answer of %s to %s %s: %w", h.base, method, path, err)
	}
	if len(data) > maxReply {
		return reply{}, fmt.Errorf("the server at %s is not a kpki server: its answer to %s %s is larger than %d bytes", h.base, method, path, maxReply)
	}
	return reply{status: resp.StatusCode, body: data}, nil
}

func (h *httpClient) transportError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // the message names the server; the request URL adds nothing
	}
	var rh tls.RecordHeaderError
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	switch {
	case errors.As(err, &rh) || strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return fmt.Errorf("the server at %s is not a kpki server: it does not speak TLS (%v)", h.base, err)
	case errors.As(err, &uae):
		return fmt.Errorf("the server at %s presented a certificate that the cluster CA did not sign: %v", h.base, err)
	case errors.As(err, &hne):
		return fmt.Errorf("the server at %s presented a certificate that is not valid for that address: %v; use an address among its SANs (kpki server --tls-san)", h.base, err)
	}
	return fmt.Errorf("cannot reach the kpki server at %s: %v", h.base, err)
}

// errorBody is the JSON body of a supervisor error.
type errorBody struct {
	Error string `json:"error"`
	ID    string `json:"id"`
}

// statusError turns a non-200 answer into an error naming the server's message and id.
func statusError(base, method, path string, r reply) error {
	var eb errorBody
	msg := ""
	if json.Unmarshal(r.body, &eb) == nil && eb.Error != "" {
		msg = eb.Error
		if eb.ID != "" {
			msg += " (server error id " + eb.ID + ")"
		}
	} else {
		msg = fmt.Sprintf("%d %s", r.status, http.StatusText(r.status))
	}
	switch r.status {
	case http.StatusUnauthorized:
		return fmt.Errorf("the server at %s refused the token: %s", base, msg)
	case http.StatusForbidden:
		return fmt.Errorf("the server at %s refused %s %s: %s", base, method, path, msg)
	}
	return fmt.Errorf("%s %s at %s failed: %s", method, path, base, msg)
}

// fetchCACerts reads /cacerts without verifying the server: the answer is only trusted
// once its hash matches the token's.
func (a *Agent) fetchCACerts(ctx context.Context) ([]byte, error) {
	h := a.newClient(nil)
	defer h.close()
	r, err := h.do(ctx, http.MethodGet, PathCACerts, nil, nil)
	if err != nil {
		return nil, err
	}
	if r.status != http.StatusOK {
		return nil, fmt.Errorf("the server at %s is not a kpki server: GET %s answered %d %s", h.base, PathCACerts, r.status, http.StatusText(r.status))
	}
	if _, err := pki.ParseCerts(r.body); err != nil {
		return nil, fmt.Errorf("the server at %s is not a kpki server: GET %s did not return PEM certificates (%v)", h.base, PathCACerts, err)
	}
	return r.body, nil
}

// getBundle fetches a CA bundle over the verified connection with the token's credentials.
func (a *Agent) getBundle(ctx context.Context, h *httpClient, path string) ([]byte, []*x509.Certificate, error) {
	r, err := h.do(ctx, http.MethodGet, path, nil, func(req *http.Request) {
		req.SetBasicAuth(a.user, a.tok.Password)
	})
	if err != nil {
		return nil, nil, err
	}
	if r.status != http.StatusOK {
		return nil, nil, statusError(h.base, http.MethodGet, path, r)
	}
	list, err := pki.ParseCerts(r.body)
	if err != nil {
		return nil, nil, fmt.Errorf("GET %s at %s did not return PEM certificates: %v", path, h.base, err)
	}
	if !list[0].IsCA {
		return nil, nil, fmt.Errorf("GET %s at %s: the first certificate, %q, is not a CA", path, h.base, list[0].Subject.String())
	}
	return r.body, list, nil
}

// sign posts a CSR for the leaf named name and returns the reply body.
func (a *Agent) sign(ctx context.Context, h *httpClient, name, nodePassword string, csrDER []byte) ([]byte, error) {
	path := SignPath(name)
	r, err := h.do(ctx, http.MethodPost, path, csrDER, func(req *http.Request) {
		req.SetBasicAuth(a.user, a.tok.Password)
		req.Header.Set("Content-Type", ContentTypeCSR)
		req.Header.Set(api.HeaderNodeName, a.nodeName)
		req.Header.Set(api.HeaderNodePassword, nodePassword)
		if ips := a.nodeIPList(); ips != "" {
			req.Header.Set(api.HeaderNodeIP, ips)
		}
	})
	if err != nil {
		return nil, err
	}
	if r.status != http.StatusOK {
		return nil, statusError(h.base, http.MethodPost, path, r)
	}
	return r.body, nil
}

func (a *Agent) nodeIPList() string {
	s := make([]string, len(a.nodeIPs))
	for i, ip := range a.nodeIPs {
		s[i] = ip.String()
	}
	return strings.Join(s, ",")
}
