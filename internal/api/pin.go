package api

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

// FetchPinnedCA downloads the cluster CA bundle from baseURL/cacerts without verifying
// the server (nothing secret is sent), and checks it against the token's CA hash. A
// short token pins nothing: the bundle is returned with pinned == false.
func FetchPinnedCA(baseURL string, t token.Token) (bundle []byte, pinned bool, err error) {
	c := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			InsecureSkipVerify: true, //nolint:gosec // the bundle is checked against the token's hash below
		}},
	}
	u := strings.TrimRight(baseURL, "/") + "/cacerts"
	resp, err := c.Get(u)
	if err != nil {
		return nil, false, fmt.Errorf("cannot reach the kpki server at %s: %w", baseURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, false, fmt.Errorf("%s answered %s: not a kpki server?", u, resp.Status)
	}
	hash, err := pki.CAHash(body)
	if err != nil {
		return nil, false, fmt.Errorf("%s did not answer with CA certificates (%v): not a kpki server?", u, err)
	}
	if t.CAHash == "" {
		return body, false, nil
	}
	if err := t.CheckCAHash(hash); err != nil {
		return nil, false, err
	}
	return body, true, nil
}
