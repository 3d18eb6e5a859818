package agent

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/trust"
)

const (
	requestTimeout = 30 * time.Second
	maxReply       = 1 << 20
)

// client returns a client of the server verified against tr alone, with the token's
// credentials.
func (a *Agent) client(tr *trust.Trust) (*api.Client, error) {
	return api.New(api.Config{
		URL: a.base.String(), Trust: tr, User: a.user, Password: a.tok.Password,
		Transport: a.transport, Timeout: requestTimeout, MaxReply: maxReply,
	})
}

// fetchTrust decides the trust of this pass. The first pass of the process pins the CA
// served at /cacerts with the token (fetched unverified: nothing secret is sent). Later
// passes fetch /cacerts over TLS verified against the trust of the last pass, and
// accept a changed CA only when it chains to the same anchor or the token names it.
func (a *Agent) fetchTrust(ctx context.Context) (*trust.Trust, error) {
	if a.trust == nil {
		tr, err := api.FetchPinnedCA(ctx, a.base.String(), a.tok, api.FetchOptions{Transport: a.transport, Clock: a.clock})
		if err != nil {
			return nil, err
		}
		if !tr.Pinned && !a.warnedShort {
			a.warnedShort = true
			hash, _ := pki.CAHash(tr.PEM)
			a.log.Warn("the token does not pin the cluster CA (short token): trusting the CA the server presents; use the full token K10<hash>::<user>:<password> to pin it",
				"server", a.base.String(), "ca-hash", hash)
		}
		return tr, nil
	}
	c, err := a.client(a.trust)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	tr, err := c.FollowCA(ctx, a.tok, a.clock)
	var uae x509.UnknownAuthorityError
	if errors.As(err, &uae) {
		return nil, fmt.Errorf("%w; this agent trusts only %q: if the cluster CA was replaced, give the agent the cluster's current token (kpki token show on a server) and restart it; its files are kept",
			err, a.trust.Anchor.Subject.String())
	}
	return tr, err
}

// acceptTrust makes tr the trust of the next passes, logging a change of CA.
func (a *Agent) acceptTrust(tr *trust.Trust) {
	if a.trust != nil && a.trust.Changed(tr) {
		oldHash, _ := pki.CAHash(pki.EncodeCerts(a.trust.Served...))
		newHash, _ := pki.CAHash(pki.EncodeCerts(tr.Served...))
		attrs := []any{"old-ca", a.trust.Chain[0].Subject.String(), "new-ca", tr.Chain[0].Subject.String(),
			"anchor", tr.Anchor.Subject.String(), "old-hash", oldHash, "new-hash", newHash}
		if a.tok.Secure() && newHash != a.tok.CAHash && tr.Anchor.Equal(a.trust.Anchor) {
			a.log.Warn("the cluster CA changed and chains to the CA this agent trusts; accepting it. The token does not name the new CA: give the agent the new token (kpki token show on a server) before it restarts", attrs...)
		} else {
			a.log.Info("the cluster CA changed and chains to the CA this agent trusts; accepting it", attrs...)
		}
	}
	a.trust = tr
}

// getBundle fetches a CA bundle over the verified connection with the token's credentials.
func (a *Agent) getBundle(ctx context.Context, c *api.Client, path string) ([]byte, []*x509.Certificate, error) {
	r, err := c.Send(ctx, api.Request{Method: http.MethodGet, Path: path})
	if err != nil {
		return nil, nil, err
	}
	if r.Status != http.StatusOK {
		return nil, nil, statusError(c.BaseURL, http.MethodGet, path, r)
	}
	list, err := pki.ParseCerts(r.Body)
	if err != nil {
		return nil, nil, fmt.Errorf("GET %s at %s did not return PEM certificates: %v", path, c.BaseURL, err)
	}
	if !list[0].IsCA {
		return nil, nil, fmt.Errorf("GET %s at %s: the first certificate, %q, is not a CA", path, c.BaseURL, list[0].Subject.String())
	}
	return r.Body, list, nil
}

// sign posts a CSR for the leaf named name and returns the reply body.
func (a *Agent) sign(ctx context.Context, c *api.Client, name, nodePassword string, csrDER []byte) ([]byte, error) {
	path := api.SignPath(name)
	h := http.Header{}
	h.Set(api.HeaderNodeName, a.nodeName)
	h.Set(api.HeaderNodePassword, nodePassword)
	if ips := a.nodeIPList(); ips != "" {
		h.Set(api.HeaderNodeIP, ips)
	}
	r, err := c.Send(ctx, api.Request{Method: http.MethodPost, Path: path, Body: csrDER, ContentType: api.ContentTypeCSR, Header: h})
	if err != nil {
		return nil, err
	}
	if r.Status != http.StatusOK {
		return nil, statusError(c.BaseURL, http.MethodPost, path, r)
	}
	return r.Body, nil
}

// statusError turns a non-200 answer into an error naming the server's message and id.
func statusError(base, method, path string, r api.Reply) error {
	var eb api.ErrorBody
	var msg string
	if json.Unmarshal(r.Body, &eb) == nil && eb.Error != "" {
		msg = (&api.StatusError{Code: r.Status, Body: eb}).Error()
	} else {
		msg = fmt.Sprintf("%d %s", r.Status, http.StatusText(r.Status))
	}
	switch r.Status {
	case http.StatusUnauthorized:
		return &StatusError{Code: r.Status, Message: fmt.Sprintf("the server at %s refused the token: %s", base, msg)}
	case http.StatusForbidden:
		return &StatusError{Code: r.Status, Message: fmt.Sprintf("the server at %s refused %s %s: %s", base, method, path, msg)}
	}
	return &StatusError{Code: r.Status, Message: fmt.Sprintf("%s %s at %s failed: %s", method, path, base, msg)}
}

func (a *Agent) nodeIPList() string {
	s := make([]string, len(a.nodeIPs))
	for i, ip := range a.nodeIPs {
		s[i] = ip.String()
	}
	return strings.Join(s, ",")
}
