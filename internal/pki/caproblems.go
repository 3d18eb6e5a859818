package pki

import (
	"errors"
	"fmt"
	"time"
)

// CAProblem is one reason a CA cannot be used. Key tells whether it concerns the key
// file (the key does not match the certificate) rather than the certificate file.
type CAProblem struct {
	Key bool
	Err error
}

// CAProblems lists every reason ca cannot be used as a CA at time now: the key does not
// match the first certificate; the first certificate is not a CA allowed to sign
// certificates, or not currently valid; the bundle does not verify from the first
// certificate to a self-signed root within it (checked only when the first certificate
// itself is usable). The server refuses to start on a CA with any of them (CheckCA is the
// first), and rotate-ca reports them all.
func CAProblems(ca *CA, now time.Time) []CAProblem {
	var out []CAProblem
	if !KeyMatchesCert(ca.Key, ca.Cert) {
		out = append(out, CAProblem{Key: true, Err: errors.New("key does not match the certificate")})
	}
	if err := CheckCACert(ca.Cert, now); err != nil {
		// The chain is checked from this certificate: an expired one, or one that may not
		// sign, fails it too, with a less telling message.
		return append(out, CAProblem{Err: err})
	}
	if _, err := VerifyChain(ca.Bundle, now); err != nil {
		out = append(out, CAProblem{Err: fmt.Errorf("chain does not verify: %w", err)})
	}
	return out
}
