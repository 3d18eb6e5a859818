package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/token"
	"github.com/kpki/kpki/internal/trust"
)

// FetchOptions tune how the cluster CA is fetched.
type FetchOptions struct {
	// Transport is cloned for the connection; nil: http.DefaultTransport.
	Transport *http.Transport
	// Clock is the time chains are verified at; nil: the wall clock.
	Clock clock.Clock
}

func (o FetchOptions) now() clock.Clock {
	if o.Clock == nil {
		return clock.Real{}
	}
	return o.Clock
}

// FetchPinnedCA is a node's first contact with the supervisor at baseURL (SPEC §9): it
// GETs /cacerts without verifying the server, sending nothing secret, and returns the
// trust the token names in the answer (trust.Pin). Everything the node sends afterwards
// goes over TLS verified against that trust alone (New with Config.Trust).
func FetchPinnedCA(ctx context.Context, baseURL string, tok token.Token, o FetchOptions) (*trust.Trust, error) {
	return firstContact(ctx, baseURL, o, func(body []byte) (*trust.Trust, error) {
		return trust.Pin(body, tok, o.now().Now())
	})
}

// ResumeCA is the first contact of an agent that may have kept its trust (stored, from
// trust.Load; nil when it has none): as FetchPinnedCA, the answer decided by
// trust.Resume, so that a body chaining to a stored root is followed and a cross-signed
// rotation moves the trust to the new root.
func ResumeCA(ctx context.Context, baseURL string, tok token.Token, stored *trust.Trust, o FetchOptions) (*trust.Trust, error) {
	return firstContact(ctx, baseURL, o, func(body []byte) (*trust.Trust, error) {
		return trust.Resume(body, tok, stored, o.now().Now())
	})
}

// firstContact GETs /cacerts without verifying the server and decides the trust of the
// answer with decide.
func firstContact(ctx context.Context, baseURL string, o FetchOptions, decide func(body []byte) (*trust.Trust, error)) (*trust.Trust, error) {
	c, err := New(Config{URL: baseURL, Transport: o.Transport, MaxReply: 1 << 20})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	body, err := c.CACerts(ctx)
	if err != nil {
		return nil, err
	}
	tr, err := decide(body)
	if err != nil {
		return nil, c.trustError(err)
	}
	return tr, nil
}

// FollowCA is a later fetch of /cacerts over TLS verified against the client's trust:
// it returns the trust to use from now on (trust.Follow), which is the client's own
// when the CA did not change.
func (c *Client) FollowCA(ctx context.Context, tok token.Token, clk clock.Clock) (*trust.Trust, error) {
	if c.cfg.Trust == nil {
		return nil, errors.New("FollowCA needs a client that verifies the server")
	}
	body, err := c.CACerts(ctx)
	if err != nil {
		return nil, err
	}
	if clk == nil {
		clk = clock.Real{}
	}
	tr, err := c.cfg.Trust.Follow(body, tok, clk.Now())
	if err != nil {
		return nil, c.trustError(err)
	}
	return tr, nil
}

func (c *Client) trustError(err error) error {
	switch {
	case errors.Is(err, token.ErrCAHashMismatch):
		return err
	case errors.Is(err, trust.ErrNotCA):
		return fmt.Errorf("the server at %s is not a kpki server: GET %s did not return PEM certificates of a CA (%w)", c.BaseURL, PathCACerts, err)
	}
	return fmt.Errorf("the CA bundle served by %s at %s: %w", c.BaseURL, PathCACerts, err)
}
