package agent

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"

	"github.com/kpki/kpki/internal/pki"
)

// BuildCSR returns the DER PKCS#10 request for key. The subject and SANs are what the
// agent expects; the server decides what the certificate says.
func BuildCSR(key crypto.Signer, p pki.LeafProfile) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: p.CommonName, Organization: p.Organization},
		DNSNames:    p.DNSNames,
		IPAddresses: p.IPs,
	}, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate request for %q: %w", p.CommonName, err)
	}
	return der, nil
}

// CheckReply checks a signing reply (PEM leaf, then its CA bundle): the leaf must be
// for pub and signed by the first certificate of ca, the CA bundle the agent fetched.
// It returns the leaf.
func CheckReply(body []byte, pub crypto.PublicKey, ca *pki.CA) (*x509.Certificate, error) {
	list, err := pki.ParseCerts(body)
	if err != nil {
		return nil, fmt.Errorf("the reply is not a PEM certificate: %w", err)
	}
	leaf := list[0]
	if leaf.IsCA {
		return nil, fmt.Errorf("the reply's first certificate, %q, is a CA, not a leaf", leaf.Subject.String())
	}
	if !pki.PublicKeysEqual(pub, leaf.PublicKey) {
		return nil, errors.New("the signed certificate is not for the key in the request")
	}
	if !bytes.Equal(leaf.RawIssuer, ca.Cert.RawSubject) || leaf.CheckSignatureFrom(ca.Cert) != nil {
		return nil, fmt.Errorf("the signed certificate (issuer %q) is not signed by the cluster CA %q", leaf.Issuer.String(), ca.Cert.Subject.String())
	}
	return leaf, nil
}
