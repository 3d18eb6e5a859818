package api

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

	"github.com/kpki/kpki/internal/trust"
)

// Defaults of a Client.
const (
	DefaultTimeout  = 60 * time.Second
	DefaultMaxReply = 16 << 20
)

// Config is what a Client is made from.
type Config struct {
	// URL is the supervisor, https://host:port.
	URL string
	// Trust is the cluster CA the server is verified against: its anchor is the only
	// root. nil makes a client that verifies nothing and therefore only GETs /cacerts,
	// without credentials: a node's first contact.
	Trust *trust.Trust
	// ServerName is the name the server's certificate must be valid for; "" is the
	// URL's host.
	ServerName string
	// User and Password are sent as basic auth with every request but GET /cacerts.
	User, Password string
	// Transport is cloned (proxy, dialer, timeouts) and its TLS settings replaced. nil:
	// a clone of http.DefaultTransport.
	Transport *http.Transport
	// Timeout bounds each request; 0 is DefaultTimeout.
	Timeout time.Duration
	// MaxReply bounds the size of an answer; 0 is DefaultMaxReply.
	MaxReply int64
}

// Client calls a kpki supervisor.
type Client struct {
	// BaseURL is the supervisor URL without a trailing slash.
	BaseURL string
	cfg     Config
	http    *http.Client
}

// ParseURL checks that s looks like https://host[:port] and returns it without a
// trailing slash.
func ParseURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("server URL %q must look like https://host:port", s)
	}
	return strings.TrimRight(s, "/"), nil
}

// New returns a client for cfg. It contacts nothing.
func New(cfg Config) (*Client, error) {
	base, err := ParseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if cfg.Trust == nil && (cfg.User != "" || cfg.Password != "") {
		return nil, errors.New("no cluster CA to verify the server with: credentials are only sent over verified TLS")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxReply <= 0 {
		cfg.MaxReply = DefaultMaxReply
	}
	var tr *http.Transport
	if cfg.Transport != nil {
		tr = cfg.Transport.Clone()
	} else {
		tr = http.DefaultTransport.(*http.Transport).Clone()
	}
	if cfg.Trust != nil {
		tr.TLSClientConfig = cfg.Trust.TLSConfig(cfg.ServerName)
	} else {
		tr.TLSClientConfig = &tls.Config{
			MinVersion:         tls.VersionTLS12,
			InsecureSkipVerify: true, //nolint:gosec // only GET /cacerts, whose answer is checked against the token (trust.Pin)
		}
	}
	return &Client{
		BaseURL: base,
		cfg:     cfg,
		http: &http.Client{
			Transport: tr,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}, nil
}

// NewClient returns a client for baseURL verifying the server against tr and
// authenticating as user.
func NewClient(baseURL string, tr *trust.Trust, user, password string) (*Client, error) {
	if tr == nil {
		return nil, errors.New("no cluster CA to verify the server with")
	}
	return New(Config{URL: baseURL, Trust: tr, User: user, Password: password})
}

// Trust is the trust the client verifies the server against (nil: none).
func (c *Client) Trust() *trust.Trust { return c.cfg.Trust }

// Close releases the client's idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Request is one call to the supervisor.
type Request struct {
	Method, Path string
	Query        url.Values
	Body         []byte
	ContentType  string
	// Header holds further headers (the node headers of a signing request).
	Header http.Header
}

// Reply is an answer read in full.
type Reply struct {
	Status int
	Body   []byte
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

// StatusError decodes a non-2xx reply: the server's ErrorBody, or the body as text
// when it is not one.
func (r Reply) StatusError() *StatusError {
	se := &StatusError{Code: r.Status}
	if json.Unmarshal(r.Body, &se.Body) != nil {
		se.Body = ErrorBody{Error: strings.TrimSpace(string(r.Body))}
	}
	return se
}

// Send sends r with the client's credentials and reads the answer in full. Any answer
// is a Reply; errors are failures to get one.
func (c *Client) Send(ctx context.Context, r Request) (Reply, error) {
	return c.send(ctx, r, true)
}

func (c *Client) send(ctx context.Context, r Request, auth bool) (Reply, error) {
	if c.cfg.Trust == nil && (auth || r.Method != http.MethodGet || r.Path != PathCACerts) {
		return Reply{}, fmt.Errorf("refusing %s %s: the server at %s is not verified yet", r.Method, r.Path, c.BaseURL)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	var body io.Reader
	if r.Body != nil {
		body = bytes.NewReader(r.Body)
	}
	u := c.BaseURL + r.Path
	if len(r.Query) > 0 {
		u += "?" + r.Query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, u, body)
	if err != nil {
		return Reply{}, err
	}
	for k, v := range r.Header {
		req.Header[k] = v
	}
	if r.ContentType != "" {
		req.Header.Set(HeaderContentType, r.ContentType)
	}
	if auth && (c.cfg.User != "" || c.cfg.Password != "") {
		req.SetBasicAuth(c.cfg.User, c.cfg.Password)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return Reply{}, c.transportError(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, c.cfg.MaxReply+1))
	if err != nil {
		return Reply{}, fmt.Errorf("read the answer of %s to %s %s: %w", c.BaseURL, r.Method, r.Path, err)
	}
	if int64(len(data)) > c.cfg.MaxReply {
		return Reply{}, fmt.Errorf("the server at %s is not a kpki server: its answer to %s %s is larger than %d bytes", c.BaseURL, r.Method, r.Path, c.cfg.MaxReply)
	}
	return Reply{Status: resp.StatusCode, Body: data}, nil
}

// transportError names what went wrong reaching the server; the request URL, which
// the message of a *url.Error repeats, adds nothing to it.
func (c *Client) transportError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var rh tls.RecordHeaderError
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	var cie x509.CertificateInvalidError
	switch {
	case errors.As(err, &rh) || strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return fmt.Errorf("the server at %s is not a kpki server: it does not speak TLS (%w)", c.BaseURL, err)
	case errors.As(err, &uae):
		return fmt.Errorf("the server at %s presented a certificate that the cluster CA did not sign: %w", c.BaseURL, err)
	case errors.As(err, &hne):
		return fmt.Errorf("the server at %s presented a certificate that is not valid for that address: %w; use an address among its SANs (kpki server --tls-san)", c.BaseURL, err)
	case errors.As(err, &cie):
		return fmt.Errorf("the server at %s presented a certificate that does not verify against the cluster CA: %w", c.BaseURL, err)
	}
	return fmt.Errorf("cannot reach the kpki server at %s: %w", c.BaseURL, err)
}

// Do sends in as JSON with method to path and decodes the answer into out; an answer
// that is not 2xx is a *StatusError.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	r := Request{Method: method, Path: path, Query: query, ContentType: ContentTypeJSON}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		r.Body = b
	}
	rep, err := c.Send(ctx, r)
	if err != nil {
		return err
	}
	if rep.Status/100 != 2 {
		return rep.StatusError()
	}
	if out != nil {
		if err := json.Unmarshal(rep.Body, out); err != nil {
			return fmt.Errorf("the server at %s answered something that is not a kpki reply: %w", c.BaseURL, err)
		}
	}
	return nil
}

// CACerts GETs /cacerts, without credentials, and returns the body of a 200 answer.
func (c *Client) CACerts(ctx context.Context) ([]byte, error) {
	rep, err := c.send(ctx, Request{Method: http.MethodGet, Path: PathCACerts}, false)
	if err != nil {
		return nil, err
	}
	if rep.Status != http.StatusOK {
		return nil, &StatusError{Code: rep.Status, Body: ErrorBody{Error: fmt.Sprintf("the server at %s is not a kpki server: GET %s answered %d %s",
			c.BaseURL, PathCACerts, rep.Status, http.StatusText(rep.Status))}}
	}
	return rep.Body, nil
}
