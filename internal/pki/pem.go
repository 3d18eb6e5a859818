package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
)

// PEM block types kpki writes.
const (
	BlockCertificate   = "CERTIFICATE"
	BlockECPrivateKey  = "EC PRIVATE KEY"
	BlockRSAPrivateKey = "RSA PRIVATE KEY"
	BlockPrivateKey    = "PRIVATE KEY"
)

// ErrNoPEM is returned when data holds no PEM block of the wanted kind.
var ErrNoPEM = errors.New("no PEM data found")

// EncodeCert returns cert as a PEM block.
func EncodeCert(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: BlockCertificate, Bytes: cert.Raw})
}

// AppendCertPEM appends cert as a PEM block, the bytes EncodeCert returns, to dst.
func AppendCertPEM(dst []byte, cert *x509.Certificate) []byte {
	dst = append(dst, "-----BEGIN "+BlockCertificate+"-----\n"...)
	// 48 bytes are one line of 64 base64 characters, as encoding/pem breaks them.
	for raw := cert.Raw; len(raw) > 0; {
		n := min(len(raw), 48)
		dst = append(base64.StdEncoding.AppendEncode(dst, raw[:n]), '\n')
		raw = raw[n:]
	}
	return append(dst, "-----END "+BlockCertificate+"-----\n"...)
}

// CertPEMLen is the length of cert as a PEM block.
func CertPEMLen(cert *x509.Certificate) int {
	n := base64.StdEncoding.EncodedLen(len(cert.Raw))
	return len("-----BEGIN "+BlockCertificate+"-----\n") + n + (n+63)/64 + len("-----END "+BlockCertificate+"-----\n")
}

// EncodeCerts returns certs as consecutive PEM blocks.
func EncodeCerts(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		b.Write(EncodeCert(c))
	}
	return b.Bytes()
}

// ParseCerts parses every CERTIFICATE block in data. Any other block type, trailing
// garbage or an undecodable certificate is an error, as is data with no certificate.
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		before := rest
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if skippedBlock(before, rest) {
			return nil, fmt.Errorf("certificate %d: malformed PEM block (truncated or corrupt PEM)", len(certs)+1)
		}
		if block.Type != BlockCertificate {
			return nil, fmt.Errorf("unexpected PEM block %q, want CERTIFICATE", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("certificate: %w", ErrNoPEM)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("trailing data after the last certificate (truncated or corrupt PEM)")
	}
	return certs, nil
}

// skippedBlock reports whether pem.Decode, going from before to rest, passed over a
// malformed block (it silently resumes after an undecodable BEGIN line) on its way to
// the block it returned.
func skippedBlock(before, rest []byte) bool {
	consumed := before[:len(before)-len(rest)]
	return bytes.Count(consumed, []byte("-----BEGIN ")) > 1
}

// EncodeKey returns key as PEM: EC keys as "EC PRIVATE KEY" (SEC 1), RSA keys as
// "RSA PRIVATE KEY" (PKCS#1), anything else as PKCS#8.
func EncodeKey(key crypto.Signer) ([]byte, error) {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("encode EC key: %w", err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: BlockECPrivateKey, Bytes: der}), nil
	case *rsa.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: BlockRSAPrivateKey, Bytes: x509.MarshalPKCS1PrivateKey(k)}), nil
	default:
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("encode key: %w", err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: BlockPrivateKey, Bytes: der}), nil
	}
}

// ParseKeys parses every private key block in data (EC, RSA PKCS#1, PKCS#8), in order.
// "EC PARAMETERS" blocks, as openssl writes them, are skipped. The error never
// contains key material.
func ParseKeys(data []byte) ([]crypto.Signer, error) {
	var keys []crypto.Signer
	rest := data
	for {
		var block *pem.Block
		before := rest
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if skippedBlock(before, rest) {
			return nil, fmt.Errorf("private key %d: malformed PEM block (truncated or corrupt PEM)", len(keys)+1)
		}
		var (
			k   any
			err error
		)
		switch block.Type {
		case "EC PARAMETERS":
			continue
		case BlockECPrivateKey:
			k, err = x509.ParseECPrivateKey(block.Bytes)
		case BlockRSAPrivateKey:
			k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case BlockPrivateKey:
			k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		default:
			return nil, fmt.Errorf("unexpected PEM block %q, want a private key", block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("private key %d is not a valid %s block", len(keys)+1, block.Type)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("private key %d: unsupported key type %T", len(keys)+1, k)
		}
		switch s.(type) {
		case *ecdsa.PrivateKey, *rsa.PrivateKey, ed25519.PrivateKey:
		default:
			return nil, fmt.Errorf("private key %d: unsupported key type %T", len(keys)+1, k)
		}
		keys = append(keys, s)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("private key: %w", ErrNoPEM)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("trailing data after the last private key (truncated or corrupt PEM)")
	}
	return keys, nil
}

// ParseKey parses the first private key in data.
func ParseKey(data []byte) (crypto.Signer, error) {
	keys, err := ParseKeys(data)
	if err != nil {
		return nil, err
	}
	return keys[0], nil
}

// PublicKeysEqual reports whether a and b are the same public key.
func PublicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// KeyMatchesCert reports whether key is the private half of cert's public key.
func KeyMatchesCert(key crypto.Signer, cert *x509.Certificate) bool {
	return PublicKeysEqual(key.Public(), cert.PublicKey)
}

// FirstKeyPEM returns the first private key block of data, re-encoded as PEM, so that
// a file holding several keys can be reduced to the one that signs.
func FirstKeyPEM(data []byte) ([]byte, error) {
	if _, err := ParseKeys(data); err != nil {
		return nil, err
	}
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("private key: %w", ErrNoPEM)
		}
		if block.Type != "EC PARAMETERS" {
			return pem.EncodeToMemory(block), nil
		}
	}
}
