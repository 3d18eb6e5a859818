package pki

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"
)

// IsSelfSigned reports whether c is signed by its own key.
func IsSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

// maxRootChecks bounds the signature checks of one FindRoot.
const maxRootChecks = 1000

// FindRoot walks from bundle[0] through the other certificates of bundle to a
// self-signed root, preferring at each step an issuer that is itself self-signed, so
// that a bundle holding a new root next to its cross-signed copy reaches the new root.
// A single self-signed certificate is its own root.
//
// The search gives up after maxRootChecks signature checks (RawIssuer matching the
// candidate's RawSubject), far more than any real chain needs: a bundle of many
// certificates sharing a name would otherwise cost a number of checks quadratic in its
// size, and FindRoot runs on bundles from servers not yet trusted.
func FindRoot(bundle []*x509.Certificate) (*x509.Certificate, error) {
	if len(bundle) == 0 {
		return nil, errors.New("empty certificate bundle")
	}
	path, err := chainPath(bundle[0], bundle[1:])
	if err != nil {
		return nil, err
	}
	cur := path[len(path)-1]
	if !IsSelfSigned(cur) {
		return nil, fmt.Errorf("no issuer of %q in the bundle: the file must hold the CA's chain up to a self-signed root", cur.Subject.String())
	}
	return cur, nil
}

// chainPath is the path FindRoot walks: start, then issuers found among candidates up
// to a self-signed certificate. It searches depth first, trying at each step the
// self-signed issuers before the others (in bundle order), and backtracks from an issuer
// that leads nowhere, so a chain is found whenever one exists in the bundle. Without
// one, it returns the first path it walked, which ends at the certificate whose issuer
// is missing. Each certificate is visited once; the search gives up after maxRootChecks
// signature checks.
func chainPath(start *x509.Certificate, candidates []*x509.Certificate) ([]*x509.Certificate, error) {
	checks := 0
	signedBy := func(c, parent *x509.Certificate) bool {
		if !bytes.Equal(c.RawIssuer, parent.RawSubject) {
			return false
		}
		checks++
		return c.CheckSignatureFrom(parent) == nil
	}
	errTooMany := fmt.Errorf("certificate bundle of %d certificates is too complex to find its root (over %d signature checks)", len(candidates)+1, maxRootChecks)
	seen := map[string]bool{string(start.Raw): true}
	var deadEnd []*x509.Certificate
	var walk func(path []*x509.Certificate) ([]*x509.Certificate, error)
	walk = func(path []*x509.Certificate) ([]*x509.Certificate, error) {
		cur := path[len(path)-1]
		if signedBy(cur, cur) {
			return path, nil
		}
		var roots, others []*x509.Certificate
		for _, cand := range candidates {
			if checks > maxRootChecks {
				return nil, errTooMany
			}
			if seen[string(cand.Raw)] || !signedBy(cur, cand) {
				continue
			}
			seen[string(cand.Raw)] = true
			if signedBy(cand, cand) {
				roots = append(roots, cand)
			} else {
				others = append(others, cand)
			}
		}
		if checks > maxRootChecks {
			return nil, errTooMany
		}
		if len(roots) > 0 {
			return append(path, roots[0]), nil
		}
		if len(others) == 0 && deadEnd == nil {
			deadEnd = slices.Clone(path)
		}
		for _, next := range others {
			found, err := walk(append(path[:len(path):len(path)], next))
			if err != nil || found != nil {
				return found, err
			}
		}
		return nil, nil
	}
	path, err := walk([]*x509.Certificate{start})
	if err != nil || path != nil {
		return path, err
	}
	return deadEnd, nil
}

// ChainExpiry returns the earliest NotAfter of the CA's signing chain — its certificate
// and every certificate of its bundle on the path FindRoot walks up to the root — and
// the certificate that expires then. Nothing signed by the CA can be trusted past that
// instant, so it caps the validity of every leaf the CA signs. Certificates of the
// bundle off that path (the old root and the cross-signed copy kept after a rotation)
// do not count; a bundle too complex to walk counts whole.
func (ca *CA) ChainExpiry() (time.Time, *x509.Certificate) {
	path, err := chainPath(ca.Cert, ca.Bundle)
	if err != nil {
		path = append([]*x509.Certificate{ca.Cert}, ca.Bundle...)
	}
	first := ca.Cert
	for _, c := range path[1:] {
		if c.NotAfter.Before(first.NotAfter) {
			first = c
		}
	}
	return first.NotAfter, first
}

// CAHash is the hash a join token pins: SHA-256 of the raw CA file when it holds one
// certificate; when it holds a chain, SHA-256 of the DER of the root that the first
// certificate chains to. The result is 64 lowercase hex characters.
func CAHash(bundlePEM []byte) (string, error) {
	certs, err := ParseCerts(bundlePEM)
	if err != nil {
		return "", err
	}
	b := bundlePEM
	if len(certs) > 1 {
		root, err := FindRoot(certs)
		if err != nil {
			return "", err
		}
		b = root.Raw
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// VerifyChain checks at time now that bundle[0] chains, through the other certificates
// in bundle, to a self-signed root in bundle, and returns that root.
func VerifyChain(bundle []*x509.Certificate, now time.Time) (*x509.Certificate, error) {
	root, err := FindRoot(bundle)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	inter := x509.NewCertPool()
	for _, c := range bundle {
		if IsSelfSigned(c) {
			roots.AddCert(c)
		} else {
			inter.AddCert(c)
		}
	}
	_, err = bundle[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, err
	}
	return root, nil
}

// CheckCACert reports why c cannot sign certificates at time now, or nil: it must be a
// CA (basicConstraints CA:TRUE), allowed to sign certificates, and currently valid.
func CheckCACert(c *x509.Certificate, now time.Time) error {
	if !c.BasicConstraintsValid || !c.IsCA {
		return fmt.Errorf("certificate %q is not a CA (basicConstraints CA:TRUE missing)", c.Subject.String())
	}
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("certificate %q may not sign certificates (keyUsage lacks keyCertSign)", c.Subject.String())
	}
	if now.After(c.NotAfter) {
		return fmt.Errorf("certificate %q expired on %s", c.Subject.String(), c.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(c.NotBefore) {
		return fmt.Errorf("certificate %q is not valid before %s", c.Subject.String(), c.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// ChainsTo checks at time now that bundle[0] verifies, through the other certificates
// of bundle, to one of trusted (used as the only trust anchors): how a rotated CA is
// checked against the CA it replaces, whatever the order of the bundle.
func ChainsTo(bundle, trusted []*x509.Certificate, now time.Time) error {
	roots := x509.NewCertPool()
	for _, c := range trusted {
		roots.AddCert(c)
	}
	inter := x509.NewCertPool()
	for _, c := range bundle[1:] {
		inter.AddCert(c)
	}
	_, err := bundle[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

// CheckCA validates a CA loaded from files at time now: the key matches the first
// certificate, which is a CA allowed to sign certificates, currently valid, and
// chaining to a self-signed root within the bundle. It is the first of CAProblems.
func CheckCA(ca *CA, now time.Time) error {
	if p := CAProblems(ca, now); len(p) > 0 {
		return p[0].Err
	}
	return nil
}

// LoadCA parses a CA from its certificate file bytes and key file bytes. The key file
// may hold several keys; the first must match the first certificate.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	certs, err := ParseCerts(certPEM)
	if err != nil {
		return nil, err
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: certs[0], Key: key, Bundle: certs, BundlePEM: certPEM}, nil
}
