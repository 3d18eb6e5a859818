package certs

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"sort"
	"time"

	"github.com/kpki/kpki/internal/pki"
)

// Action is what the planner decided for one leaf.
type Action int

// Actions, from cheapest to most expensive.
const (
	// Keep: the files are right; touch nothing.
	Keep Action = iota
	// Rebundle: the leaf is right but the CA bundle after it in the .crt file is not
	// (the CA file gained or lost chain certificates); rewrite the file, sign nothing.
	Rebundle
	// Renew: sign a new certificate for the existing key.
	Renew
	// Issue: generate a new key and sign a certificate for it.
	Issue
)

func (a Action) String() string {
	return [...]string{"keep", "rebundle", "renew", "issue"}[a]
}

// Existing is what is on disk for a leaf; nil slices mean the file is missing.
type Existing struct {
	CertPEM []byte
	KeyPEM  []byte
}

// Decision is the planner's verdict for one leaf.
type Decision struct {
	Action Action
	Reason string
	// Cert is the current leaf certificate, when one parsed.
	Cert *x509.Certificate
	// Key is the existing key to keep (Renew, Rebundle, Keep); nil for Issue.
	Key crypto.Signer
}

// Applied names what carrying out an Issue or Renew decision did, in the same words for
// every node: the audit action ("issue" for a new key, "renew" for a kept one) and the log
// message.
func (d Decision) Applied() (auditAction, logMessage string) {
	switch {
	case d.Action == Issue && d.Cert == nil:
		return "issue", "issued certificate"
	case d.Action == Issue:
		return "issue", "renewed certificate with a new key"
	default:
		return "renew", "renewed certificate"
	}
}

// CorruptError reports a cert or key file that exists but cannot be used.
type CorruptError struct {
	What string // "certificate" or "key"
	Err  error
}

func (e *CorruptError) Error() string { return fmt.Sprintf("corrupt %s: %v", e.What, e.Err) }
func (e *CorruptError) Unwrap() error { return e.Err }

// Policy holds the renewal window.
type Policy struct {
	Now         time.Time
	RenewBefore time.Duration
}

// DefaultRenewBeforeDays is the default renewal window, in days, of the server and
// the agent (--renew-before-days) and the leaf warning window of `certificate check`.
const DefaultRenewBeforeDays = 90

// DefaultCAWarnDays is the default CA warning window, in days, of the server
// (--ca-warn-days) and of `certificate check`: a CA whose signing chain expires within
// it is logged, flagged in metrics and reported as WARNING.
const DefaultCAWarnDays = 365

// InWindow reports whether a certificate expiring at notAfter is due for renewal: it
// expires within RenewBefore of Now (the window's edge included).
func (p Policy) InWindow(notAfter time.Time) bool {
	return !p.Now.Add(p.RenewBefore).Before(notAfter)
}

// Plan decides what to do with one leaf given what must be (want), what exists (ex)
// and its signing CA. Corrupt files are reported as *CorruptError, never silently replaced.
//
// Every leaf is capped at its CA's chain expiry (pki.CA.ChainExpiry), so renewal cannot
// move a leaf past it. A leaf that is due only because it is within its renewal window,
// and already expires with its CA's chain, is kept (Keep, with the reason): a new
// certificate would expire at the same instant, and renewing it on every pass would be
// a re-issue loop. The CA warning (--ca-warn-days) is what covers it; rotating the CA
// lets it be renewed again. Once the chain itself has expired nothing is renewed (no
// certificate can be signed under it), whatever the reason.
func Plan(want pki.LeafProfile, ex Existing, ca *pki.CA, pol Policy) (Decision, error) {
	var key crypto.Signer
	if ex.KeyPEM != nil {
		k, err := pki.ParseKey(ex.KeyPEM)
		if err != nil {
			return Decision{}, &CorruptError{What: "key", Err: err}
		}
		key = k
	}
	if ex.CertPEM == nil {
		if key == nil {
			return Decision{Action: Issue, Reason: "certificate and key missing"}, nil
		}
		return Decision{Action: Renew, Reason: "certificate missing", Key: key}, nil
	}
	certs, err := pki.ParseCerts(ex.CertPEM)
	if err != nil {
		return Decision{}, &CorruptError{What: "certificate", Err: err}
	}
	leaf := certs[0]
	if key == nil {
		return Decision{Action: Issue, Reason: "key missing", Cert: leaf}, nil
	}
	chainEnd, limit := ca.ChainExpiry()
	renew := func(reason string) (Decision, error) {
		if !pol.Now.Before(chainEnd) {
			return Decision{Action: Keep, Cert: leaf, Key: key, Reason: fmt.Sprintf("%s; not renewed: CA certificate %q expired on %s, nothing can be signed until the CA is rotated",
				reason, limit.Subject.String(), chainEnd.UTC().Format(time.RFC3339))}, nil
		}
		return Decision{Action: Renew, Reason: reason, Cert: leaf, Key: key}, nil
	}
	capped := ""
	switch {
	case !pki.KeyMatchesCert(key, leaf):
		return renew("certificate does not match its key")
	case !pol.Now.Before(leaf.NotAfter):
		return renew(fmt.Sprintf("expired on %s", leaf.NotAfter.UTC().Format(time.RFC3339)))
	case leaf.NotAfter.After(chainEnd):
		return renew(fmt.Sprintf("expires on %s, after its CA chain (%s)", leaf.NotAfter.UTC().Format(time.RFC3339), chainEnd.UTC().Format(time.RFC3339)))
	case pol.InWindow(leaf.NotAfter) && leaf.NotAfter.Before(chainEnd):
		return renew(fmt.Sprintf("expires on %s, within the renewal window", leaf.NotAfter.UTC().Format(time.RFC3339)))
	case pol.InWindow(leaf.NotAfter):
		// Due, but capped: decided below, after the checks that a renewal would fix.
		capped = fmt.Sprintf("expires on %s, within the renewal window, but not renewed: it expires with CA certificate %q and a new certificate could not last longer; rotate the CA",
			leaf.NotAfter.UTC().Format(time.RFC3339), limit.Subject.String())
	}
	if reason := drift(leaf, want, ca, pol.Now); reason != "" {
		return renew(reason)
	}
	if !bytes.Equal(ex.CertPEM, BuildCertFile(leaf, ca)) {
		return Decision{Action: Rebundle, Reason: "CA bundle changed", Cert: leaf, Key: key}, nil
	}
	return Decision{Action: Keep, Reason: capped, Cert: leaf, Key: key}, nil
}

// drift says why leaf no longer is what want and ca ask for at now — not valid yet,
// signed by another CA, another subject, other usages, missing SANs — or "" when it is.
func drift(leaf *x509.Certificate, want pki.LeafProfile, ca *pki.CA, now time.Time) string {
	switch {
	case now.Before(leaf.NotBefore):
		return fmt.Sprintf("not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	case !bytes.Equal(leaf.RawIssuer, ca.Cert.RawSubject) || leaf.CheckSignatureFrom(ca.Cert) != nil:
		return "not signed by the current CA"
	case leaf.Subject.CommonName != want.CommonName || !sameSet(leaf.Subject.Organization, want.Organization):
		return "subject differs from the profile"
	case !sameUsages(leaf.ExtKeyUsage, want.ExtKeyUsage):
		return "extended key usage differs from the profile"
	}
	if missing := MissingSANs(leaf, want); len(missing) > 0 {
		return fmt.Sprintf("missing SANs %v", missing)
	}
	return ""
}

// BuildCertFile returns the bytes of a leaf .crt file: the leaf, then its CA's bundle.
func BuildCertFile(leaf *x509.Certificate, ca *pki.CA) []byte {
	bundle := ca.BundlePEM
	out := pki.AppendCertPEM(make([]byte, 0, pki.CertPEMLen(leaf)+len(bundle)+1), leaf)
	out = append(out, bundle...)
	if len(bundle) > 0 && bundle[len(bundle)-1] != '\n' {
		out = append(out, '\n')
	}
	return out
}

// MissingSANs lists the names want requires that cert lacks.
func MissingSANs(cert *x509.Certificate, want pki.LeafProfile) []string {
	var missing []string
	for _, d := range want.DNSNames {
		if !slices.ContainsFunc(cert.DNSNames, func(x string) bool { return equalFold(x, d) }) {
			missing = append(missing, d)
		}
	}
	for _, ip := range want.IPs {
		if !slices.ContainsFunc(cert.IPAddresses, func(x net.IP) bool { return x.Equal(ip) }) {
			missing = append(missing, ip.String())
		}
	}
	return missing
}

func equalFold(a, b string) bool { return bytes.EqualFold([]byte(a), []byte(b)) }

func sameSet(a, b []string) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	sort.Strings(x)
	sort.Strings(y)
	return slices.Equal(x, y)
}

func sameUsages(a, b []x509.ExtKeyUsage) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(x, y)
}
