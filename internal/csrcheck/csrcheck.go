// Package csrcheck decides whether the supervisor signs for the public key of a PKCS#10
// certificate request: the key type and size are bounded, the request's signature uses
// a hash that is not broken, and the signature verifies. The cheap checks run first, so
// that a request with a huge RSA modulus costs nothing before it is refused.
package csrcheck

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
)

// RSA modulus bounds, in bits.
const (
	MinRSABits = 2048
	MaxRSABits = 8192
)

// Allowed is the accepted key types, for messages.
const Allowed = "ECDSA P-256/P-384/P-521, Ed25519 or RSA 2048-8192 bits"

// signatureAlgorithms are the CSR signature algorithms accepted: SHA-2 and Ed25519.
var signatureAlgorithms = map[x509.SignatureAlgorithm]bool{
	x509.SHA256WithRSA: true, x509.SHA384WithRSA: true, x509.SHA512WithRSA: true,
	x509.SHA256WithRSAPSS: true, x509.SHA384WithRSAPSS: true, x509.SHA512WithRSAPSS: true,
	x509.ECDSAWithSHA256: true, x509.ECDSAWithSHA384: true, x509.ECDSAWithSHA512: true,
	x509.PureEd25519: true,
}

// Error is a refused request; its message is the reason.
type Error struct{ msg string }

func (e *Error) Error() string { return e.msg }

func refuse(format string, a ...any) error { return &Error{msg: fmt.Sprintf(format, a...)} }

// Check parses the DER certificate request der and returns it when its key and
// signature are acceptable, or an *Error saying why not.
func Check(der []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, refuse("body is not a DER PKCS#10 certificate request: %v", err)
	}
	if err := checkKey(csr); err != nil {
		return nil, err
	}
	if !signatureAlgorithms[csr.SignatureAlgorithm] {
		return nil, refuse("CSR signature algorithm %s is not accepted: sign it with SHA-256 or stronger (or Ed25519)", csr.SignatureAlgorithm)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, refuse("CSR signature does not verify: %v", err)
	}
	return csr, nil
}

func checkKey(csr *x509.CertificateRequest) error {
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return refuse("ECDSA curve %s is not accepted: use %s", k.Curve.Params().Name, Allowed)
	case ed25519.PublicKey:
		return nil
	case *rsa.PublicKey:
		// BitLen reads the length only: nothing here costs more for a larger modulus.
		switch bits := k.N.BitLen(); {
		case bits < MinRSABits:
			return refuse("RSA key of %d bits is too small: use %s", bits, Allowed)
		case bits > MaxRSABits:
			return refuse("RSA key of %d bits is too large: use %s", bits, Allowed)
		}
		if k.E < 3 || k.E%2 == 0 {
			return refuse("RSA public exponent %d is not accepted: it must be odd and at least 3", k.E)
		}
		return nil
	}
	return refuse("key type %s is not accepted: use %s", KeyTypeName(csr), Allowed)
}

// KeyTypeName names the key type of a parsed request: "RSA", "DSA", "ECDSA",
// "Ed25519", or for a key Go does not parse, "unknown (x509.PublicKeyAlgorithm 0, OID
// <oid>)".
func KeyTypeName(csr *x509.CertificateRequest) string {
	if csr.PublicKeyAlgorithm != x509.UnknownPublicKeyAlgorithm {
		return csr.PublicKeyAlgorithm.String()
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	name := fmt.Sprintf("unknown (x509.PublicKeyAlgorithm %d", int(csr.PublicKeyAlgorithm))
	if rest, err := asn1.Unmarshal(csr.RawSubjectPublicKeyInfo, &spki); err == nil && len(rest) == 0 {
		name += ", OID " + spki.Algorithm.Algorithm.String()
	}
	return name + ")"
}
