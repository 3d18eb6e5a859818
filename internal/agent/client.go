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
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
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

// fetchTrust decides the trust of this pass. The first pass of the process fetches
// /cacerts unverified (nothing secret is sent) and resumes the trust kept on disk when
// the token names one of its roots, else pins the CA with the token. Later passes fetch
// /cacerts over TLS verified against the roots of the last pass, and accept a changed
// CA only when it chains to one of them or the token names it. A CA this agent does not
// trust is an error wrapping ErrCAUntrusted.
func (a *Agent) fetchTrust(ctx context.Context) (*trust.Trust, error) {
	if a.trust == nil {
		tr, err := api.ResumeCA(ctx, a.base.String(), a.tok, a.storedTrust(), api.FetchOptions{Transport: a.transport, Clock: a.clock})
		if err != nil {
			if errors.Is(err, token.ErrCAHashMismatch) {
				err = untrusted(err)
			}
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
	switch {
	case errors.As(err, &uae):
		return nil, untrusted(fmt.Errorf("%w; this agent trusts only %s: if the cluster CA was replaced, give the agent the cluster's current token (kpki token show on a server) and restart it; its files are kept",
			err, rootNames(a.trust.Roots)))
	case errors.Is(err, trust.ErrUntrustedChange):
		return nil, untrusted(err)
	}
	return tr, err
}

// ErrCAUntrusted marks a pass that stopped because the server presents a CA that chains
// to no root this agent trusts and that its token does not name: a CA replaced without a
// cross-signed root (rotate-ca --force), or a server that is not the cluster's.
var ErrCAUntrusted = errors.New("the server's CA is not trusted by this agent")

type untrustedError struct{ err error }

func untrusted(err error) error { return &untrustedError{err} }

func (e *untrustedError) Error() string        { return e.err.Error() }
func (e *untrustedError) Unwrap() error        { return e.err }
func (e *untrustedError) Is(target error) bool { return target == ErrCAUntrusted }

// storedTrust is the trust kept on disk, when the token names one of its roots; nil
// when there is none or it cannot be used (logged), and with a short token, which names
// no root.
func (a *Agent) storedTrust() *trust.Trust {
	if !a.tok.Secure() {
		return nil
	}
	path := a.layout.Agent(TrustFile)
	data, err := datadir.ReadOptional(path)
	if err != nil || data == nil {
		if err != nil {
			a.log.Warn("cannot read the stored trust; pinning the CA with the token", "file", path, "error", err)
		}
		return nil
	}
	st, err := trust.Load(data, a.tok)
	if err != nil {
		a.log.Warn("not using the stored trust; pinning the CA with the token", "file", path, "error", err)
		return nil
	}
	return st
}

// writeTrust keeps the roots this agent trusts on disk (trust.Store), for the next
// start of the agent.
func (a *Agent) writeTrust(res *Result) error {
	path := a.layout.Agent(TrustFile)
	changed, err := datadir.WriteIfChanged(path, a.trust.Store(), fileMode)
	if err != nil {
		return err
	}
	if changed {
		res.Written = append(res.Written, path)
		a.log.Info("stored the trusted roots", "file", path, "roots", rootNames(a.trust.Roots))
	}
	return nil
}

// rootNames names roots for the log: their subjects and hashes.
func rootNames(roots []*x509.Certificate) string {
	s := make([]string, len(roots))
	for i, r := range roots {
		s[i] = fmt.Sprintf("%q (%s)", r.Subject.String(), trust.Hash(r.Raw))
	}
	return strings.Join(s, ", ")
}

// acceptTrust makes tr the trust of the next passes, logging a change of CA and a root
// added by a cross-signed rotation.
func (a *Agent) acceptTrust(tr *trust.Trust) {
	if a.trust != nil && a.trust.Changed(tr) {
		oldHash, _ := pki.CAHash(pki.EncodeCerts(a.trust.Served...))
		newHash, _ := pki.CAHash(pki.EncodeCerts(tr.Served...))
		attrs := []any{"old-ca", a.trust.Chain[0].Subject.String(), "new-ca", tr.Chain[0].Subject.String(),
			"anchor", tr.Anchor.Subject.String(), "old-hash", oldHash, "new-hash", newHash}
		a.log.Info("the cluster CA changed and chains to a root this agent trusts; accepting it", attrs...)
	}
	if a.trust != nil && len(tr.Roots) > len(a.trust.Roots) {
		a.log.Info("a cross-signed rotation: now also trusting the new root, vouched for by a root this agent trusted; the token it joined with keeps working",
			"new-roots", rootNames(tr.Roots[len(a.trust.Roots):]), "roots", len(tr.Roots))
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
