package datadir

import (
	"crypto/x509"

	"github.com/kpki/kpki/internal/pki"
)

// FirstCert is the first certificate of the PEM file at path; nil when the file is
// missing, unreadable or holds no certificate.
func FirstCert(path string) *x509.Certificate {
	data, err := ReadOptional(path)
	if err != nil || data == nil {
		return nil
	}
	list, err := pki.ParseCerts(data)
	if err != nil {
		return nil
	}
	return list[0]
}
