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
	"strconv"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

// ErrNotCA reports a /cacerts body that is not a PEM bundle whose first certificate is
// a CA: the answer of something that is not a kpki server.
var ErrNotCA = errors.New("not a CA certificate bundle")

// ErrNoChain reports a body whose first certificate does not verify up to the anchor.
var ErrNoChain = errors.New("the served CA does not chain to the trusted CA")

// ErrUntrustedChange reports a later body that neither chains to a trusted root nor
// holds the certificate the token names.
var ErrUntrustedChange = errors.New("the cluster CA changed to one this node does not trust")

// ErrBadStore reports stored trust that cannot be used: not the form Store writes, a
// pair whose certificates do not match, or no root the token's CA hash names.
var ErrBadStore = errors.New("the stored trust cannot be used")

// MaxRoots bounds the roots one trust holds: a cross-signed rotation beyond it is still
// followed through the roots already trusted, but adds none.
const MaxRoots = 32

// Trust is what a node trusts of the cluster's server CA.
type Trust struct {
	// Anchor is the root Chain reaches: the certificate the token's CA hash names, or,
	// with a short token, the root that the served CA reached on first use, or a root
	// trusted since through a cross-signed rotation. It is one of Roots.
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
	// Roots are every root the node trusts, the only ones a connection to the cluster
	// is verified against: Roots[0] is the one first pinned (or the one the token names
	// of those kept on disk), each later one was added by a cross-signed rotation.
	// Earlier roots stay trusted, so that a rollback to one of them is followed.
	Roots []*x509.Certificate
	// links[i] is the certificate that vouched for Roots[i+1]: the same subject and key,
	// signed by an earlier root.
	links []*x509.Certificate
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
	chain, err := verify(list, []*x509.Certificate{anchor}, now)
	if err != nil {
		return nil, err
	}
	return newTrust(chain, list, tok.Secure(), []*x509.Certificate{anchor}, nil), nil
}

// Local is the trust of a CA bundle read from a server's own data dir: the anchor is
// the root its first certificate reaches, as on a first use without a pin. Every other
// self-signed CA of the bundle (the old root a cross-signed rotation keeps) is a root
// too: the file is the server's own, and while it applies a rotation or its rollback
// live, its supervisor may still serve, for a moment, a chain to the root of before.
func Local(bundle []byte, now time.Time) (*Trust, error) {
	t, err := Pin(bundle, token.Token{}, now)
	if err != nil {
		return nil, err
	}
	list, err := parse(bundle)
	if err != nil {
		return nil, err
	}
	for _, c := range list {
		if len(t.Roots) < MaxRoots && isCA(c) && c.CheckSignatureFrom(c) == nil && !containsCert(t.Roots, c) {
			t.Roots = append(t.Roots, c)
		}
	}
	return t, nil
}

// Follow decides whether a later /cacerts body, fetched over TLS verified against t,
// may replace t. It is accepted when its first certificate verifies at now up to one of
// t's roots (the same CA, a new CA under the same root, a cross-signed rotation, or a
// rollback to an earlier root), or when the token's CA hash names a certificate of the
// new body that the first one verifies up to (the operator gave the node a new token).
// Anything else is ErrUntrustedChange, and the caller keeps what it has. An accepted
// body then moves the trust along a cross-signed rotation (see advance).
func (t *Trust) Follow(body []byte, tok token.Token, now time.Time) (*Trust, error) {
	list, err := parse(body)
	if err != nil {
		return nil, err
	}
	chain, err := verify(list, t.Roots, now)
	if err == nil {
		return newTrust(chain, list, t.Pinned, t.Roots, t.links).advance(now), nil
	}
	if tok.Secure() {
		if nt, perr := Pin(body, tok, now); perr == nil {
			return nt.advance(now), nil
		}
	}
	return nil, fmt.Errorf("%w (%w); keeping the current files: give the node the cluster's current token "+
		"(kpki token show on a server) and restart it", ErrUntrustedChange, err)
}

// Resume is the first contact of a node that kept its trust on disk (stored, from Load;
// nil when it has none or cannot use it): a body that chains to a stored root is
// followed as Follow does, so that a node restarted after a cross-signed rotation with
// the token it joined with resumes. Otherwise the token pins the body (Pin), and the
// trust moves along a cross-signed rotation the body shows.
func Resume(body []byte, tok token.Token, stored *Trust, now time.Time) (*Trust, error) {
	if stored != nil {
		if tr, err := stored.Follow(body, token.Token{}, now); err == nil {
			return tr, nil
		}
	}
	tr, err := Pin(body, tok, now)
	if err != nil {
		return nil, err
	}
	return tr.advance(now), nil
}

// advance moves t along a cross-signed rotation: when the certificate below the anchor
// in the chain has a self-signed twin in the body (the same subject and key: the new
// root, which the anchor cross-signed), the twin is added to the roots, the chain is
// taken again up to it, and the step repeats. The new root is trusted only because a
// chain verified to a root already trusted vouches for it.
func (t *Trust) advance(now time.Time) *Trust {
	for range len(t.Served) {
		if len(t.Roots) >= MaxRoots || len(t.Chain) < 2 {
			break
		}
		link := t.Chain[len(t.Chain)-2]
		root := twin(t.Served, link)
		if root == nil || t.trusts(root) {
			break
		}
		chain, err := verify(t.Served, []*x509.Certificate{root}, now)
		if err != nil {
			break
		}
		roots := append(append([]*x509.Certificate{}, t.Roots...), root)
		links := append(append([]*x509.Certificate{}, t.links...), link)
		t = newTrust(chain, t.Served, t.Pinned, roots, links)
	}
	return t
}

// twin is the self-signed CA of list with the subject and key of c, c excepted.
func twin(list []*x509.Certificate, c *x509.Certificate) *x509.Certificate {
	for _, r := range list {
		if isTwin(c, r) {
			return r
		}
	}
	return nil
}

// isTwin reports whether root is a self-signed CA with the subject and key of link,
// and not link itself.
func isTwin(link, root *x509.Certificate) bool {
	return !link.Equal(root) && isCA(root) && isCA(link) &&
		bytes.Equal(link.RawSubject, root.RawSubject) &&
		bytes.Equal(link.RawSubjectPublicKeyInfo, root.RawSubjectPublicKeyInfo) &&
		bytes.Equal(root.RawIssuer, root.RawSubject) && root.CheckSignatureFrom(root) == nil
}

func (t *Trust) trusts(c *x509.Certificate) bool {
	for _, r := range t.Roots {
		if r.Equal(c) {
			return true
		}
	}
	return false
}

// Store is what a node keeps on disk of t: the first root, then for every later root
// the certificate that vouched for it and the root, as PEM.
func (t *Trust) Store() []byte {
	list := []*x509.Certificate{t.Roots[0]}
	for i, r := range t.Roots[1:] {
		list = append(list, t.links[i], r)
	}
	return pki.EncodeCerts(list...)
}

// Load reads what Store wrote, for a node whose (secure) token names one of its roots:
// the trust holds that root and every later root vouched for, through its pair, by one
// already held; roots that only earlier ones vouched for are left out, since the token
// does not reach them. Its Anchor is the last root held and its Chain that root alone,
// until Resume takes a body. Anything else is ErrBadStore.
func Load(data []byte, tok token.Token) (*Trust, error) {
	if !tok.Secure() {
		return nil, fmt.Errorf("%w: a short token names no root", ErrBadStore)
	}
	list, err := pki.ParseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadStore, err)
	}
	if len(list)%2 != 1 || len(list) > 2*MaxRoots-1 {
		return nil, fmt.Errorf("%w: %d certificates, want a root and up to %d pairs of a cross-signed certificate and its root", ErrBadStore, len(list), MaxRoots-1)
	}
	base := -1
	for i := 0; i < len(list); i += 2 {
		if tokenNames(tok, list[i]) {
			base = i
			break
		}
	}
	if base < 0 {
		return nil, fmt.Errorf("%w: the token's CA hash %s names none of its roots", ErrBadStore, tok.CAHash)
	}
	if !isCA(list[base]) {
		return nil, fmt.Errorf("%w: %q is not a CA", ErrBadStore, list[base].Subject.String())
	}
	t := &Trust{Roots: []*x509.Certificate{list[base]}, Pinned: true}
	for i := base + 2; i < len(list); i += 2 {
		link, root := list[i-1], list[i]
		if !isTwin(link, root) {
			return nil, fmt.Errorf("%w: %q is not a self-signed CA with the subject and key of the certificate before it", ErrBadStore, root.Subject.String())
		}
		if t.vouched(link) && !t.trusts(root) {
			t.Roots = append(t.Roots, root)
			t.links = append(t.links, link)
		}
	}
	t.Anchor = t.Roots[len(t.Roots)-1]
	t.Chain = []*x509.Certificate{t.Anchor}
	t.PEM = pki.EncodeCerts(t.Anchor)
	return t, nil
}

// vouched reports whether one of t's roots signed link.
func (t *Trust) vouched(link *x509.Certificate) bool {
	for _, r := range t.Roots {
		if bytes.Equal(link.RawIssuer, r.RawSubject) && link.CheckSignatureFrom(r) == nil {
			return true
		}
	}
	return false
}

// tokenNames reports whether tok's CA hash names c: the SHA-256 of its DER, or of its PEM
// encoding (the legacy hash of a one-certificate CA file).
func tokenNames(tok token.Token, c *x509.Certificate) bool {
	return Hash(c.Raw) == tok.CAHash || Hash(pki.EncodeCert(c)) == tok.CAHash
}

// TrustedPEM is what the node writes as its copy of the server CA: the chain, then the
// other trusted roots the served body still holds (after a cross-signed rotation, the
// old root), so that clients reading the file accept a server not yet re-issued under
// the new CA, as the servers' own bundle does.
func (t *Trust) TrustedPEM() []byte {
	out := append([]*x509.Certificate{}, t.Chain...)
	for _, r := range t.Roots {
		if containsCert(t.Served, r) && !containsCert(out, r) {
			out = append(out, r)
		}
	}
	return pki.EncodeCerts(out...)
}

func containsCert(list []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range list {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

// Changed reports whether other keeps another chain, anchor or set of roots than t.
func (t *Trust) Changed(other *Trust) bool {
	return !SameCerts(t.Chain, other.Chain) || !t.Anchor.Equal(other.Anchor) || !SameCerts(t.Roots, other.Roots)
}

// Pool is a certificate pool holding only the roots.
func (t *Trust) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range t.Roots {
		p.AddCert(r)
	}
	return p
}

// TLSConfig verifies a server against the roots alone. serverName "" lets the HTTP
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

func newTrust(chain, served []*x509.Certificate, pinned bool, roots, links []*x509.Certificate) *Trust {
	return &Trust{Anchor: chain[len(chain)-1], Chain: chain, PEM: pki.EncodeCerts(chain...), Pinned: pinned, Served: served,
		Roots: roots, links: links}
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

// verify checks at now that list[0] chains to one of roots (the only trust anchors)
// through the other certificates of list, every one a CA, and returns the shortest such
// chain.
func verify(list, roots []*x509.Certificate, now time.Time) ([]*x509.Certificate, error) {
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range list[1:] {
		if !containsCert(roots, c) {
			inter.AddCert(c)
		}
	}
	chains, err := list[0].Verify(x509.VerifyOptions{
		Roots: pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %q does not verify up to %s at %s: %v", ErrNoChain,
			list[0].Subject.String(), subjects(roots), now.UTC().Format(time.RFC3339), err)
	}
	var best []*x509.Certificate
	for _, ch := range chains {
		if !allCAs(ch) || !containsCert(roots, ch[len(ch)-1]) {
			continue
		}
		if best == nil || len(ch) < len(best) {
			best = ch
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%w: no chain from %q up to %s is made of CA certificates only", ErrNoChain,
			list[0].Subject.String(), subjects(roots))
	}
	return best, nil
}

// subjects names roots for an error: %q of the one, or of each.
func subjects(roots []*x509.Certificate) string {
	s := make([]string, len(roots))
	for i, r := range roots {
		s[i] = strconv.Quote(r.Subject.String())
	}
	return strings.Join(s, " or ")
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
