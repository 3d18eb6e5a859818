package load

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/kpki/kpki/internal/api"
)

// CFSSL is POST /api/v1/cfssl/sign of a `cfssl serve` on this machine: the same P-256
// CSRs signed by a peer, plain HTTP, no authentication and no audit, as the baseline of
// the signing scenarios.
const CFSSL Scenario = "cfssl"

// cfsslSignPath is cfssl's signing endpoint.
const cfsslSignPath = "/api/v1/cfssl/sign"

// checkCFSSL parses the http://host:port URL of a cfssl serve and makes sure its host is
// a loopback IP address.
func checkCFSSL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "http" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return "", fmt.Errorf("--cfssl %q must look like http://127.0.0.1:8888", s)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "80"
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("--cfssl %s: %s is not a loopback IP address; kpki-load only sends load to this machine", s, host)
	}
	if _, err := strconv.Atoi(port); err != nil {
		return "", fmt.Errorf("--cfssl %q must look like http://127.0.0.1:8888", s)
	}
	return "http://" + net.JoinHostPort(ip.String(), port), nil
}

// cfsslClient is a plain-HTTP client of the checked loopback address.
func cfsslClient(cfg Config) *http.Client {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		DisableKeepAlives:   !cfg.KeepAlive,
		MaxIdleConnsPerHost: cfg.Concurrency,
		MaxConnsPerHost:     0,
	}
	return &http.Client{Transport: tr, Timeout: requestTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// cfsslSign sends n's CSR, PEM-encoded, to cfssl's sign endpoint.
func (r *runner) cfsslSign(ctx context.Context, c *http.Client, n node) (answer, error) {
	body, err := json.Marshal(map[string]string{
		"certificate_request": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: n.csr})),
	})
	if err != nil {
		return answer{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.cfssl+cfsslSignPath, bytes.NewReader(body))
	if err != nil {
		return answer{}, err
	}
	req.Header.Set(api.HeaderContentType, api.ContentTypeJSON)
	resp, err := c.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	a := answer{status: resp.StatusCode, proto: resp.Proto}
	if a.body, err = io.ReadAll(io.LimitReader(resp.Body, maxReply)); err != nil {
		return answer{}, err
	}
	// A signed answer is {"success":true,"result":{"certificate":"<PEM>",...}}; anything
	// else is kept as it came, and the caller reports it as a bad reply.
	var out struct {
		Success bool `json:"success"`
		Result  struct {
			Certificate string `json:"certificate"`
		} `json:"result"`
	}
	if a.status == http.StatusOK && json.Unmarshal(a.body, &out) == nil && out.Success {
		a.body = []byte(out.Result.Certificate)
	}
	return a, nil
}
