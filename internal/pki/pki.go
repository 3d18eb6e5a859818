// Package pki is kpki's crypto on bytes and structs: key generation, PEM encoding and
// parsing, certificate signing, CA bundles, chain verification and the CA hash that join
// tokens pin. It reads no files and opens no connections; everything it does is a pure
// function of its inputs plus crypto/rand and the injected clock.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"sync/atomic"
	"time"

	"github.com/kpki/kpki/internal/clock"
)

// Backdate is how far before "now" new certificates become valid, so that nodes with
// slightly skewed clocks accept them.
const Backdate = time.Hour

// Stats counts the expensive operations an Issuer performed. Tests use it to prove that
// a warm start generates no key and signs nothing.
type Stats struct {
	Keys       atomic.Int64
	Signatures atomic.Int64
}

// Issuer generates keys and signs certificates. The zero value is not usable: set Clock.
type Issuer struct {
	Clock clock.Clock
	Stats *Stats // optional

	expiry expiryCache
}

// NewIssuer returns an Issuer using c (the real clock when nil).
func NewIssuer(c clock.Clock, stats *Stats) *Issuer {
	if c == nil {
		c = clock.Real{}
	}
	return &Issuer{Clock: c, Stats: stats}
}

func (i *Issuer) countKey() {
	if i.Stats != nil {
		i.Stats.Keys.Add(1)
	}
}

func (i *Issuer) countSig() {
	if i.Stats != nil {
		i.Stats.Signatures.Add(1)
	}
}

// NewECKey generates an ECDSA P-256 key.
func (i *Issuer) NewECKey() (*ecdsa.PrivateKey, error) {
	i.countKey()
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// NewRSAKey generates an RSA key of the given size.
func (i *Issuer) NewRSAKey(bits int) (*rsa.PrivateKey, error) {
	i.countKey()
	return rsa.GenerateKey(rand.Reader, bits)
}

// CA is a certificate authority as kpki uses it: the signing certificate and key plus the
// whole bundle of its CA file (the signing cert first, then intermediates and root).
type CA struct {
	Cert   *x509.Certificate
	Key    crypto.Signer
	Bundle []*x509.Certificate
	// BundlePEM is the CA file as it is on disk; leaf files carry it after the leaf.
	BundlePEM []byte
}

// LeafProfile is what a leaf certificate must say; the signer decides everything else.
type LeafProfile struct {
	CommonName   string
	Organization []string
	DNSNames     []string
	IPs          []net.IP
	ExtKeyUsage  []x509.ExtKeyUsage
}

// NewSerial returns a random positive 127-bit serial number.
func NewSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 127)
	n, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// SelfSignedCA makes a self-signed CA certificate for key.
func (i *Issuer) SelfSignedCA(key crypto.Signer, commonName string, validity time.Duration) (*x509.Certificate, error) {
	return i.signCA(nil, nil, key.Public(), key, commonName, nil, validity)
}

// SignCA makes a CA certificate for pub signed by parent (an intermediate or cross-signed root).
func (i *Issuer) SignCA(parent *CA, pub crypto.PublicKey, commonName string, validity time.Duration) (*x509.Certificate, error) {
	return i.signCA(parent.Cert, parent.Key, pub, nil, commonName, nil, validity)
}

// CrossSign re-signs an existing CA certificate (same subject, same key) with parent.
func (i *Issuer) CrossSign(parent *CA, cert *x509.Certificate, validity time.Duration) (*x509.Certificate, error) {
	return i.signCA(parent.Cert, parent.Key, cert.PublicKey, nil, "", &cert.Subject, validity)
}

func (i *Issuer) signCA(parent *x509.Certificate, parentKey crypto.Signer, pub crypto.PublicKey, selfKey crypto.Signer, cn string, subject *pkix.Name, validity time.Duration) (*x509.Certificate, error) {
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	now := i.Clock.Now()
	name := pkix.Name{CommonName: cn}
	if subject != nil {
		name = *subject
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               name,
		NotBefore:             now.Add(-Backdate).UTC(),
		NotAfter:              now.Add(validity).UTC(),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	signer := parentKey
	if parent == nil {
		parent, signer = tmpl, selfKey
	}
	return i.sign(tmpl, parent, pub, signer)
}

// SignLeaf issues a leaf certificate for pub under ca, valid for validity from now
// but never past the CA's chain (ChainExpiry): a leaf cannot outlive the certificates
// that vouch for it. It carries basicConstraints CA:FALSE. A CA whose chain has
// expired signs nothing.
func (i *Issuer) SignLeaf(ca *CA, pub crypto.PublicKey, p LeafProfile, validity time.Duration) (*x509.Certificate, error) {
	now := i.Clock.Now()
	notAfter := now.Add(validity)
	capAt, limit := i.expiry.chainExpiry(ca)
	if !now.Before(capAt) {
		return nil, fmt.Errorf("sign certificate %q: CA certificate %q expired on %s; rotate the CA (kpki certificate rotate-ca)",
			p.CommonName, limit.Subject.String(), capAt.UTC().Format(time.RFC3339))
	}
	if capAt.Before(notAfter) {
		notAfter = capAt
	}
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	notBefore := now.Add(-Backdate)
	if notBefore.Before(ca.Cert.NotBefore) {
		notBefore = ca.Cert.NotBefore
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: p.CommonName, Organization: p.Organization},
		NotBefore:             notBefore.UTC(),
		NotAfter:              notAfter.UTC(),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           p.ExtKeyUsage,
		DNSNames:              p.DNSNames,
		IPAddresses:           p.IPs,
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	return i.sign(tmpl, ca.Cert, pub, ca.Key)
}

func (i *Issuer) sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	if key == nil {
		return nil, errors.New("sign certificate: no signing key")
	}
	i.countSig()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	return x509.ParseCertificate(der)
}
