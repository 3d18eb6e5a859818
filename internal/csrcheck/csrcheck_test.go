package csrcheck

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	oidRSA    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidX25519 = asn1.ObjectIdentifier{1, 3, 101, 110}
	// sha256WithRSAEncryption
	oidSHA256RSA = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
)

type subjectPublicKeyInfo struct {
	Algorithm pkix.AlgorithmIdentifier
	PublicKey asn1.BitString
}

// rawCSR assembles a PKCS#10 request around any subject public key info, with an
// arbitrary (not verifying) signature: it is how a hostile client sends a key it never
// had to sign with.
func rawCSR(t testing.TB, spki subjectPublicKeyInfo, sigAlg asn1.ObjectIdentifier, sig []byte) []byte {
	t.Helper()
	info, err := asn1.Marshal(struct {
		Version    int
		Subject    asn1.RawValue
		PublicKey  subjectPublicKeyInfo
		Attributes asn1.RawValue
	}{
		Subject:    asn1.RawValue{FullBytes: []byte{0x30, 0x00}},
		PublicKey:  spki,
		Attributes: asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: []byte{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	der, err := asn1.Marshal(struct {
		Info      asn1.RawValue
		Algorithm pkix.AlgorithmIdentifier
		Signature asn1.BitString
	}{asn1.RawValue{FullBytes: info}, pkix.AlgorithmIdentifier{Algorithm: sigAlg, Parameters: asn1.NullRawValue},
		asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// fakeRSACSR is a request for an RSA public key of the given modulus size that nobody
// holds the private key of: building it costs nothing, whatever the size.
func fakeRSACSR(t testing.TB, bits int) []byte {
	t.Helper()
	n := new(big.Int).Lsh(big.NewInt(1), uint(bits-1))
	n.Or(n, big.NewInt(0x10001))
	key, err := asn1.Marshal(struct {
		N *big.Int
		E int
	}{n, 65537})
	if err != nil {
		t.Fatal(err)
	}
	spki := subjectPublicKeyInfo{pkix.AlgorithmIdentifier{Algorithm: oidRSA, Parameters: asn1.NullRawValue},
		asn1.BitString{Bytes: key, BitLength: 8 * len(key)}}
	return rawCSR(t, spki, oidSHA256RSA, make([]byte, bits/8))
}

func csrFor(t testing.TB, key crypto.Signer, alg x509.SignatureAlgorithm) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "x"}, SignatureAlgorithm: alg}, key)
	if err != nil {
		t.Fatalf("create CSR: %v", err)
	}
	return der
}

var (
	rsaOnce sync.Once
	rsa2048 *rsa.PrivateKey
	rsa1024 *rsa.PrivateKey
)

func rsaKeys(t testing.TB) (*rsa.PrivateKey, *rsa.PrivateKey) {
	t.Helper()
	rsaOnce.Do(func() {
		var err error
		if rsa2048, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		// rsa.GenerateKey refuses sizes below 1024 bits only with a GODEBUG; 1024 works.
		if rsa1024, err = rsa.GenerateKey(rand.Reader, 1024); err != nil {
			panic(err)
		}
	})
	return rsa2048, rsa1024
}

func ecKey(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCheckAccepts(t *testing.T) {
	r2048, _ := rsaKeys(t)
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"P-256":           csrFor(t, ecKey(t, elliptic.P256()), 0),
		"P-384":           csrFor(t, ecKey(t, elliptic.P384()), 0),
		"P-521":           csrFor(t, ecKey(t, elliptic.P521()), 0),
		"Ed25519":         csrFor(t, ed, 0),
		"RSA 2048":        csrFor(t, r2048, 0),
		"RSA 2048 PSS":    csrFor(t, r2048, x509.SHA384WithRSAPSS),
		"P-256 SHA-512":   csrFor(t, ecKey(t, elliptic.P256()), x509.ECDSAWithSHA512),
		"RSA 2048 SHA384": csrFor(t, r2048, x509.SHA384WithRSA),
	}
	for name, der := range cases {
		csr, err := Check(der)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if csr == nil || csr.PublicKey == nil {
			t.Errorf("%s: no request returned", name)
		}
	}
}

func TestCheckRefuses(t *testing.T) {
	r2048, r1024 := rsaKeys(t)
	p224 := csrFor(t, ecKey(t, elliptic.P224()), 0)
	badSig := csrFor(t, ecKey(t, elliptic.P256()), 0)
	badSig[len(badSig)-1] ^= 1
	x25519 := rawCSR(t, subjectPublicKeyInfo{pkix.AlgorithmIdentifier{Algorithm: oidX25519},
		asn1.BitString{Bytes: make([]byte, 32), BitLength: 256}}, oidSHA256RSA, []byte{1, 2, 3})
	cases := []struct {
		name, want string
		der        []byte
	}{
		{"RSA 1024", "RSA key of 1024 bits is too small", csrFor(t, r1024, 0)},
		{"RSA 2047 (crafted)", "RSA key of 2047 bits is too small", fakeRSACSR(t, 2047)},
		{"RSA 8200 (crafted)", "RSA key of 8200 bits is too large", fakeRSACSR(t, 8200)},
		{"RSA 16384 (crafted)", "RSA key of 16384 bits is too large", fakeRSACSR(t, 16384)},
		{"RSA 250000 (crafted)", "RSA key of 250000 bits is too large", fakeRSACSR(t, 250000)},
		{"P-224", "ECDSA curve P-224 is not accepted", p224},
		{"DSA", "key type DSA is not accepted", testdata(t, "dsa-2048.der")},
		{"X25519", "key type unknown (x509.PublicKeyAlgorithm 0, OID 1.3.101.110) is not accepted", x25519},
		{"RSA SHA-1", "signature algorithm SHA1-RSA is not accepted", testdata(t, "rsa-2048-sha1.der")},
		{"RSA MD5", "signature algorithm MD5-RSA is not accepted", testdata(t, "rsa-2048-md5.der")},
		{"ECDSA SHA-1", "signature algorithm ECDSA-SHA1 is not accepted", testdata(t, "p256-sha1.der")},
		{"bad signature", "CSR signature does not verify", badSig},
		{"garbage", "not a DER PKCS#10 certificate request", []byte("not a request")},
		{"empty", "not a DER PKCS#10 certificate request", nil},
		{"truncated", "not a DER PKCS#10 certificate request", csrFor(t, r2048, 0)[:100]},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			csr, err := Check(c.der)
			if err == nil {
				t.Fatalf("accepted")
			}
			if csr != nil {
				t.Errorf("a request was returned with the error")
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Errorf("error %T, want *Error", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q, want it to contain %q", err, c.want)
			}
		})
	}
}

// TestHugeRSARefusedBeforeVerifying shows the order of the checks: the crafted requests'
// signatures are zeros, so reaching CheckSignature would have reported a signature error
// (and, for a large modulus, taken seconds); the size is what refused them. The same
// request with an acceptable size does get to the signature check.
func TestHugeRSARefusedBeforeVerifying(t *testing.T) {
	for _, bits := range []int{16384, 250000} {
		_, err := Check(fakeRSACSR(t, bits))
		if err == nil || strings.Contains(err.Error(), "signature") {
			t.Errorf("%d bits: %v, want the size refusal before any signature check", bits, err)
		}
	}
	_, err := Check(fakeRSACSR(t, 4096))
	if err == nil || !strings.Contains(err.Error(), "signature does not verify") {
		t.Errorf("4096 bits with a zero signature: %v, want a signature error", err)
	}
}

func BenchmarkCheckHugeRSA(b *testing.B) {
	der := fakeRSACSR(b, 250000)
	for b.Loop() {
		if _, err := Check(der); err == nil {
			b.Fatal("accepted")
		}
	}
}
