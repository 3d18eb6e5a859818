// Package trust decides what a node trusts of the cluster's server CA (SPEC §9). On
// first contact the join token's CA hash names one certificate of the /cacerts body, the
// anchor; the node keeps the verified chain from the served CA (the body's first
// certificate) up to that anchor, and nothing else of the body. Later bodies are
// accepted only when their first certificate chains to the same anchor (a cross-signed
// rotation) or when the token names a certificate of the new body. It is pure: bytes,
// a token and a time in, a Trust or an error out; fetching is the api package's.
package trust

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

// ErrNotCA reports a /cacerts body that is not a PEM bundle whose first certificate is
// a CA: the answer of something that is not a kpki server.
var ErrNotCA = errors.New("not a CA certificate bundle")

// ErrNoChain reports a body whose first certificate does not verify up to the anchor.
var ErrNoChain = errors.New("the served CA does not chain to the trusted CA")

// ErrUntrustedChange reports a later body that neither chains to the current anchor nor
// holds the certificate the token names.
var ErrUntrustedChange = errors.New("the cluster CA changed to one this node does not trust")

// Trust is what a node trusts of the cluster's server CA.
type Trust struct {
	// Anchor is the only root a connection to the cluster is verified against: the
	// certificate the token's CA hash names, or, with a short token, the root that the
	// served CA reached on first use.
	Anchor *x509.Certificate
	// Chain runs from the served CA (Chain[0]) to Anchor (last), verified: all the node
	// keeps, writes (agent/server-ca.crt) and appends to its leaves.
	Chain []*x509.Certificate
	// PEM is Chain encoded.
	PEM []byte
	// Pinned reports that the token's CA hash named Anchor; false: trusted on first use.
	Pinned bool
	// Served are every certificate of the body the trust was taken from.
	Served []*x509.Certificate
}

// Hash is the SHA-256 of der as 64 lowercase hex characters.
func Hash(der []byte) string {
	s := sha256.Sum256(der)
	return hex.EncodeToString(s[:])
}

// Pin takes the first-contact trust from a /cacerts body fetched without verifying the
// server. With a secure token the anchor is the certificate of body its CA hash names:
// the one certificate when the hash is that of the raw body holding exactly one
// certificate (the legacy form), else the certificate whose DER hashes to it (the root,
// K3s's form, or the first certificate, what rotate-default-ca-certs.sh prints). No
// match is token.ErrCAHashMismatch naming the body's hash as pki.CAHash computes it.
// With a short token the anchor is the root the body's first certificate reaches
// (trust on first use). Then body[0] must verify at now up to the anchor through the
// other certificates of body.
func Pin(body []byte, tok token.Token, now time.Time) (*Trust, error) {
	list, err := parse(body)
	if err != nil {
		return nil, err
	}
	anchor, err := anchorOf(body, list, tok)
	if err != nil {
		return nil, err
	}
	chain, err := verify(list, anchor, now)
	if err != nil {
		return nil, err
	}
	return newTrust(chain, list, tok.Secure()), nil
}

// Local is the trust of a CA bundle read from a server's own data dir: the anchor is
// the root its first certificate reaches, as on a first use without a pin.
func Local(bundle []byte, now time.Time) (*Trust, error) {
	return Pin(bundle, token.Token{}, now)
}

// Follow decides whether a later /cacerts body, fetched over TLS verified against t,
// may replace t. It is accepted when its first certificate verifies at now up to t's
// anchor (the same CA, a new CA under the same root, or a cross-signed rotation; the
// anchor stays), or when the token's CA hash names a certificate of the new body that
// the first one verifies up to (the operator gave the node a new token). Anything else
// is ErrUntrustedChange, and the caller keeps what it has.
func (t *Trust) Follow(body []byte, tok token.Token, now time.Time) (*Trust, error) {
	list, err := parse(body)
	if err != nil {
		return nil, err
	}
	chain, err := verify(list, t.Anchor, now)
	if err == nil {
		return newTrust(chain, list, t.Pinned), nil
	}
	if tok.Secure() {
		if nt, perr := Pin(body, tok, now); perr == nil {
			return nt, nil
		}
	}
	return nil, fmt.Errorf("%w (%w); keeping the current files: give the node the cluster's current token "+
		"(kpki token show on a server) and restart it", ErrUntrustedChange, err)
}

// Changed reports whether other keeps another chain or anchor than t.
func (t *Trust) Changed(other *Trust) bool {
	return !SameCerts(t.Chain, other.Chain) || !t.Anchor.Equal(other.Anchor)
}

// Pool is a certificate pool holding only the anchor.
func (t *Trust) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(t.Anchor)
	return p
}

// TLSConfig verifies a server against the anchor alone. serverName "" lets the HTTP
// client use the host of the URL.
func (t *Trust) TLSConfig(serverName string) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: t.Pool(), ServerName: serverName}
}

// CA is the chain as the pki package's CA without a key: what leaves are checked
// against and bundled with.
func (t *Trust) CA() *pki.CA {
	return &pki.CA{Cert: t.Chain[0], Bundle: t.Chain, BundlePEM: t.PEM}
}

// SameCerts reports whether a and b hold the same certificates in the same order.
func SameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i].Raw, b[i].Raw) {
			return false
		}
	}
	return true
}

func newTrust(chain, served []*x509.Certificate, pinned bool) *Trust {
	return &Trust{Anchor: chain[len(chain)-1], Chain: chain, PEM: pki.EncodeCerts(chain...), Pinned: pinned, Served: served}
}

func parse(body []byte) ([]*x509.Certificate, error) {
	list, err := pki.ParseCerts(body)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotCA, err)
	}
	if !isCA(list[0]) {
		return nil, fmt.Errorf("%w: its first certificate, %q, is not a CA", ErrNotCA, list[0].Subject.String())
	}
	return list, nil
}

// anchorOf returns the certificate of list that tok's CA hash names.
func anchorOf(body []byte, list []*x509.Certificate, tok token.Token) (*x509.Certificate, error) {
	if !tok.Secure() {
		root, err := pki.FindRoot(list)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrNotCA, err)
		}
		return root, nil
	}
	if len(list) == 1 && Hash(body) == tok.CAHash {
		return list[0], nil
	}
	for _, c := range list {
		if Hash(c.Raw) == tok.CAHash {
			return c, nil
		}
	}
	served, err := pki.CAHash(body)
	if err != nil {
		served = Hash(list[0].Raw)
	}
	if err := tok.CheckCAHash(served); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%w: %s names no certificate of the served bundle", token.ErrCAHashMismatch, tok.CAHash)
}

// verify checks at now that list[0] chains to anchor (the only root) through the other
// certificates of list, every one a CA, and returns the shortest such chain.
func verify(list []*x509.Certificate, anchor *x509.Certificate, now time.Time) ([]*x509.Certificate, error) {
	roots := x509.NewCertPool()
	roots.AddCert(anchor)
	inter := x509.NewCertPool()
	for _, c := range list[1:] {
		if !c.Equal(anchor) {
			inter.AddCert(c)
		}
	}
	chains, err := list[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %q does not verify up to %q at %s: %v", ErrNoChain,
			list[0].Subject.String(), anchor.Subject.String(), now.UTC().Format(time.RFC3339), err)
	}
	var best []*x509.Certificate
	for _, ch := range chains {
		if !allCAs(ch) || !ch[len(ch)-1].Equal(anchor) {
			continue
		}
		if best == nil || len(ch) < len(best) {
			best = ch
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%w: no chain from %q up to %q is made of CA certificates only", ErrNoChain,
			list[0].Subject.String(), anchor.Subject.String())
	}
	return best, nil
}

func isCA(c *x509.Certificate) bool { return c.BasicConstraintsValid && c.IsCA }

func allCAs(chain []*x509.Certificate) bool {
	for _, c := range chain {
		if !isCA(c) {
			return false
		}
	}
	return true
}
