package rotation

import (
	"bytes"
	"time"

	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/pki"
)

// Continuity is how a CA set that replaces another relates to it: what a running node
// that takes it live breaks for its clients. It is decided from the two records alone
// (Classify), whichever way the new one came: rotate-ca, with or without --force, or a
// record restored over a newer one.
type Continuity struct {
	// Changed lists the CAs whose certificate or key file differs, in certs.CAs order.
	Changed []certs.CAID
	// Broken lists the changed CAs that are a new root: the new bundle does not chain
	// to the old one, nor the old to the new (what only --force lets through).
	// Certificates signed under the old CA are not trusted by the new bundle, nor the
	// reverse.
	Broken []certs.CAID
	// ServiceKey: the service-account keys changed; ServiceKeyBroken: the new file no
	// longer holds the current signing key (tokens signed with it are refused).
	ServiceKey, ServiceKeyBroken bool
	// TokensChange: the token CA hash (SPEC §9) changes, and with it every join token.
	TokensChange         bool
	OldCAHash, NewCAHash string
}

// Disruptive reports whether taking the new set breaks clients: a new root, or
// service-account keys that drop the current signing key.
func (c Continuity) Disruptive() bool { return len(c.Broken) > 0 || c.ServiceKeyBroken }

// CAsChanged reports whether any CA changed.
func (c Continuity) CAsChanged() bool { return len(c.Changed) > 0 }

// Classify compares the CA set of next with that of current at time now. A changed CA
// keeps continuity when its new bundle chains to the old one (a cross-signed root, or a
// new CA under the same root) or, for a set put back, when the old bundle chains to the
// new one (the new bundle still holds the old root).
func Classify(current, next *bootstrap.Record, now time.Time) Continuity {
	var c Continuity
	content := func(r *bootstrap.Record, field string) []byte {
		f, _ := r.Get(field)
		return f.Content
	}
	for _, spec := range certs.CAs {
		oldCert, newCert := content(current, spec.CertField), content(next, spec.CertField)
		if bytes.Equal(oldCert, newCert) && bytes.Equal(content(current, spec.KeyField), content(next, spec.KeyField)) {
			continue
		}
		c.Changed = append(c.Changed, spec.ID)
		if !bundlesContinue(oldCert, newCert, now) {
			c.Broken = append(c.Broken, spec.ID)
		}
	}
	oldSvc, newSvc := content(current, ServiceKey), content(next, ServiceKey)
	if !bytes.Equal(oldSvc, newSvc) {
		c.ServiceKey = true
		c.ServiceKeyBroken = !keepsSigningKey(oldSvc, newSvc)
	}
	c.OldCAHash, _ = pki.CAHash(content(current, tokenCA))
	c.NewCAHash, _ = pki.CAHash(content(next, tokenCA))
	c.TokensChange = c.OldCAHash != c.NewCAHash
	return c
}

// bundlesContinue reports whether one of two CA files chains to the other at now; a
// file that cannot be parsed (or is missing) continues nothing.
func bundlesContinue(oldPEM, newPEM []byte, now time.Time) bool {
	oldB, err1 := pki.ParseCerts(oldPEM)
	newB, err2 := pki.ParseCerts(newPEM)
	if err1 != nil || err2 != nil {
		return false
	}
	return pki.ChainsTo(newB, oldB, now) == nil || pki.ChainsTo(oldB, newB, now) == nil
}

// keepsSigningKey reports whether the new service-account key file still holds the
// first key of the old one (a missing or unreadable old file has none to keep).
func keepsSigningKey(oldPEM, newPEM []byte) bool {
	old, err := pki.ParseKeys(oldPEM)
	if err != nil {
		return true
	}
	keys, err := pki.ParseKeys(newPEM)
	return err == nil && holdsKey(keys, old[0].Public())
}
