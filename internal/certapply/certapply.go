// Package certapply carries out the planner's decision for one leaf, the same way on
// every node: read the pair, plan (package certs), write it (package datadir, atomic,
// journalled with a new key), log, audit and count. The server and the agent differ
// only in who signs: the server with its CA, the agent by having the supervisor sign a
// CSR; that is the Signer they pass.
package certapply

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/metrics"
	"github.com/kpki/kpki/internal/pki"
)

// Signer returns a certificate for key with the profile want, signed by the leaf's CA.
type Signer func(ctx context.Context, key crypto.Signer, want pki.LeafProfile) (*x509.Certificate, error)

// Applier applies decisions. Audit and Metrics may be nil: a node without an audit log
// or metrics writes none.
type Applier struct {
	Issuer *pki.Issuer // generates the key of an Issue decision
	Log    *slog.Logger
	Clock  clock.Clock
	// RenewBefore is the renewal window of the planner's policy.
	RenewBefore time.Duration
	Audit       func(audit.Entry)
	Metrics     *metrics.Metrics
}

// Leaf is one leaf to bring up to date.
type Leaf struct {
	Row  certs.Leaf
	Want pki.LeafProfile
	CA   *pki.CA
	// CertFile and KeyFile are the pair's paths.
	CertFile, KeyFile string
	// Actor is who the audit log names ("start-up", "renewer", the node name, ...).
	Actor string
	// MissingReason, when set, replaces the planner's reason in the log for a
	// certificate that is missing (why it is: `certificate rotate` removed it).
	MissingReason string
}

// Outcome is what Apply did.
type Outcome struct {
	Decision certs.Decision
	// Cert is the new certificate of a Renew or Issue.
	Cert *x509.Certificate
	// Written are the files written: the certificate, and the key of an Issue.
	Written []string
}

// FileError is a problem with the files of the leaf (unreadable, corrupt, not
// writable), as opposed to one of the Signer.
type FileError struct{ Err error }

func (e *FileError) Error() string { return e.Err.Error() }
func (e *FileError) Unwrap() error { return e.Err }

// Plan reads the pair of l and returns the planner's decision with the pair's bytes.
// A corrupt file is a FileError naming it and saying how to have it issued again.
func (a *Applier) Plan(l Leaf) (certs.Decision, certs.Existing, error) {
	certPEM, err := datadir.ReadOptional(l.CertFile)
	if err != nil {
		return certs.Decision{}, certs.Existing{}, &FileError{err}
	}
	keyPEM, err := datadir.ReadOptional(l.KeyFile)
	if err != nil {
		return certs.Decision{}, certs.Existing{}, &FileError{err}
	}
	ex := certs.Existing{CertPEM: certPEM, KeyPEM: keyPEM}
	d, err := certs.Plan(l.Want, ex, l.CA, a.policy())
	if err != nil {
		file := l.CertFile
		var ce *certs.CorruptError
		if errors.As(err, &ce) && ce.What == "key" {
			file = l.KeyFile
		}
		return certs.Decision{}, ex, &FileError{fmt.Errorf("%s: %w; remove the certificate and key, or run `kpki certificate rotate --service %s`, to have them issued again", file, err, l.Row.Service)}
	}
	return d, ex, nil
}

func (a *Applier) policy() certs.Policy {
	return certs.Policy{Now: a.Clock.Now(), RenewBefore: a.RenewBefore}
}

// Apply plans l and carries the decision out: Keep touches nothing, Rebundle rewrites
// the certificate file with the CA's current bundle, Renew has sign sign the existing
// key, Issue a new one. A renewal or issuance is written, logged with the words of
// certs.Decision.Applied, audited under its action and counted in
// kpki_certificates_issued_total by the row's kind.
func (a *Applier) Apply(ctx context.Context, l Leaf, sign Signer) (Outcome, error) {
	d, ex, err := a.Plan(l)
	if err != nil {
		return Outcome{}, err
	}
	out := Outcome{Decision: d}
	switch d.Action {
	case certs.Keep:
		if d.Cert != nil {
			a.Log.Debug("certificate is current", "file", l.CertFile, "expires", d.Cert.NotAfter.UTC(), "renew-from", d.Cert.NotAfter.Add(-a.RenewBefore).UTC())
		}
		return out, nil
	case certs.Rebundle:
		if err := datadir.WriteFile(l.CertFile, certs.BuildCertFile(d.Cert, l.CA), 0o600); err != nil {
			return out, &FileError{err}
		}
		out.Written = []string{l.CertFile}
		a.Log.Info("rewrote the CA bundle of certificate", "file", l.CertFile, "reason", d.Reason)
		return out, nil
	}
	key := d.Key
	var keyOut []byte
	if d.Action == certs.Issue {
		k, err := a.Issuer.NewECKey()
		if err != nil {
			return out, err
		}
		key = k
		if keyOut, err = pki.EncodeKey(k); err != nil {
			return out, err
		}
	}
	a.Log.Debug("signing a certificate", "file", l.CertFile, "reason", d.Reason, "new-key", d.Action == certs.Issue)
	cert, err := sign(ctx, key, l.Want)
	if err != nil {
		return out, err
	}
	file := certs.BuildCertFile(cert, l.CA)
	if err := datadir.WritePair(l.CertFile, file, l.KeyFile, keyOut); err != nil {
		return out, &FileError{err}
	}
	out.Cert = cert
	out.Written = []string{l.CertFile}
	if keyOut != nil {
		out.Written = append(out.Written, l.KeyFile)
	}

	action, message := d.Applied()
	if a.Metrics != nil {
		a.Metrics.Issued.WithLabelValues(l.Row.Kind).Inc()
	}
	if a.Audit != nil {
		e := audit.CertEntry(action, l.Actor, l.CertFile, cert, d.Cert)
		e.Time = a.Clock.Now().UTC()
		a.Audit(e)
	}
	reason := d.Reason
	if d.Cert == nil && l.MissingReason != "" {
		reason = l.MissingReason
	}
	attrs := []any{"file", l.CertFile, "reason", reason, "new-expiry", cert.NotAfter.UTC()}
	if d.Cert != nil {
		attrs = append(attrs, "old-expiry", d.Cert.NotAfter.UTC())
	}
	a.Log.Info(message, attrs...)

	if keyOut == nil {
		keyOut = ex.KeyPEM
	}
	if again, err := certs.Plan(l.Want, certs.Existing{CertPEM: file, KeyPEM: keyOut}, l.CA, a.policy()); err == nil && again.Action != certs.Keep {
		a.Log.Warn("the new certificate is due already: this node will renew again at its next pass (is the signer's --cert-validity-days shorter than this node's --renew-before-days?)",
			"file", l.CertFile, "reason", again.Reason)
	}
	return out, nil
}
