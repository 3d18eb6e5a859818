package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// fuzzFixtureDir holds the K3s-made CA files used as seeds.
var fuzzFixtureDir = filepath.Join("..", "bootstrap", "testdata", "k3s-bootstrap", "tls")

func fuzzFixtureFiles(f *testing.F, suffix string) [][]byte {
	f.Helper()
	var out [][]byte
	for _, name := range []string{"server-ca", "client-ca", "request-header-ca", "etcd/server-ca", "etcd/peer-ca"} {
		b, err := os.ReadFile(filepath.Join(fuzzFixtureDir, filepath.FromSlash(name)+suffix))
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// FuzzParseCerts checks the PEM bundle parser on arbitrary files: it never panics;
// every bundle it accepts re-encodes to PEM that parses to the same certificates; and
// FindRoot, VerifyChain and CAHash on that bundle behave (see checkBundle).
func FuzzParseCerts(f *testing.F) {
	fixtures := fuzzFixtureFiles(f, ".crt")
	for _, b := range fixtures {
		f.Add(b)
	}
	f.Add(bytes.Join(fixtures, nil))
	iss, _, _ := newTestIssuer()
	pool := newFuzzPool(f, iss)
	f.Add(EncodeCerts(pool.certs[2], pool.certs[1], pool.certs[0]))
	f.Add(EncodeCerts(pool.certs[5], pool.certs[3], pool.certs[4], pool.certs[0]))
	f.Add(EncodeCerts(pool.certs[6], pool.certs[7], pool.certs[6], pool.certs[7]))
	one := fixtures[0]
	f.Add(append(bytes.Clone(one), "garbage\n"...))
	f.Add(bytes.ReplaceAll(one, []byte("\n"), []byte("\r\n")))
	f.Add(one[:len(one)/2])
	f.Add(append([]byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"), one...))
	f.Add(bytes.Replace(one, []byte("CERTIFICATE"), []byte("X509 CRL"), 2))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: BlockCertificate, Bytes: []byte{0x30, 0x03, 0x02, 0x01, 0x01}}))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: BlockCertificate, Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: pool.certs[0].Raw}))
	f.Add([]byte(""))
	f.Add([]byte("\n\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := ParseCerts(data)
		if err != nil {
			if certs != nil {
				t.Fatal("ParseCerts returned certificates with its error")
			}
			if strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("ParseCerts error %q is not one line", err)
			}
			return
		}
		if len(certs) == 0 {
			t.Fatal("ParseCerts succeeded with no certificate")
		}
		enc := EncodeCerts(certs...)
		again, err := ParseCerts(enc)
		if err != nil {
			t.Fatalf("re-encoded bundle does not parse: %v", err)
		}
		if len(again) != len(certs) {
			t.Fatalf("re-encoded bundle has %d certificates, want %d", len(again), len(certs))
		}
		for i := range certs {
			if !bytes.Equal(again[i].Raw, certs[i].Raw) {
				t.Fatalf("certificate %d changed through re-encoding", i+1)
			}
		}
		if !bytes.Equal(EncodeCerts(again...), enc) {
			t.Fatal("re-encoding is not stable")
		}
		checkBundle(t, certs, data)
	})
}

// keyBlockTypes are the PEM block types whose body is private key material.
var keyBlockTypes = map[string]bool{BlockECPrivateKey: true, BlockRSAPrivateKey: true, BlockPrivateKey: true}

var beginLine = regexp.MustCompile(`-----BEGIN ([^\n]*)`)

// leaksKey reports whether msg holds 12 or more consecutive characters of the base64
// or hex of a private key block of data (other than text that is also on a BEGIN
// line, which an error may quote as a block type).
func leaksKey(msg string, data []byte) bool {
	var secret strings.Builder
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if keyBlockTypes[b.Type] {
			secret.WriteString(base64.StdEncoding.EncodeToString(b.Bytes) + "\n" + hex.EncodeToString(b.Bytes) + "\n")
		}
	}
	var begins strings.Builder
	for _, m := range beginLine.FindAllSubmatch(data, -1) {
		begins.Write(m[1])
		begins.WriteByte('\n')
	}
	s := secret.String()
	for i := 0; i+12 <= len(msg); i++ {
		w := msg[i : i+12]
		if strings.Contains(s, w) && !strings.Contains(begins.String(), w) {
			return true
		}
	}
	return false
}

func sameSigner(a, b crypto.Signer) bool {
	type equaler interface{ Equal(crypto.PrivateKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// FuzzParseKeys checks the key-list parser on arbitrary files: it never panics and its
// errors never quote key material; every key it accepts is one of the supported types
// and re-encodes with EncodeKey to PEM that parses to the same key; ParseKey and
// FirstKeyPEM agree with it on the first key.
func FuzzParseKeys(f *testing.F) {
	fixtures := fuzzFixtureFiles(f, ".key")
	svc, err := os.ReadFile(filepath.Join(fuzzFixtureDir, "service.key"))
	if err != nil {
		f.Fatal(err)
	}
	for _, b := range append(fixtures, svc) {
		f.Add(b)
	}
	f.Add(bytes.Join(append(fixtures, svc), nil))
	f.Add([]byte(opensslECKey))
	f.Add([]byte(opensslPKCS8Key))
	ec := newECKeyPEM(f)
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	edDER, err := x509.MarshalPKCS8PrivateKey(edKey)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(pem.EncodeToMemory(&pem.Block{Type: BlockPrivateKey, Bytes: edDER}))
	f.Add(append(bytes.Clone(ec), svc...))
	f.Add(append(bytes.Clone(ec), "trailing\n"...))
	f.Add(ec[:len(ec)/2])
	f.Add(bytes.ReplaceAll(ec, []byte("EC PRIVATE KEY"), []byte("PRIVATE KEY")))
	f.Add(bytes.ReplaceAll(ec, []byte("EC PRIVATE KEY"), []byte("RSA PRIVATE KEY")))
	f.Add(bytes.ReplaceAll(ec, []byte("EC PRIVATE KEY"), []byte("ENCRYPTED PRIVATE KEY")))
	f.Add(append([]byte("-----BEGIN EC PRIVATE KEY-----\n!!\n-----END EC PRIVATE KEY-----\n"), ec...))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: BlockECPrivateKey, Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00"}, Bytes: []byte{1, 2, 3}}))
	f.Add(fixturesCert(f))
	f.Add([]byte(""))

	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := ParseKeys(data)
		first, firstErr := ParseKey(data)
		firstPEM, pemErr := FirstKeyPEM(data)
		if err != nil {
			if keys != nil || firstErr == nil || pemErr == nil {
				t.Fatalf("ParseKeys failed (%v) but ParseKey (%v) or FirstKeyPEM (%v) did not, or keys came with the error", err, firstErr, pemErr)
			}
			for _, e := range []error{err, firstErr, pemErr} {
				if leaksKey(e.Error(), data) {
					t.Fatalf("error %q quotes key material", e)
				}
				if strings.ContainsAny(e.Error(), "\n\r") {
					t.Fatalf("error %q is not one line", e)
				}
			}
			return
		}
		if len(keys) == 0 || firstErr != nil || pemErr != nil {
			t.Fatalf("ParseKeys gave %d keys, ParseKey %v, FirstKeyPEM %v", len(keys), firstErr, pemErr)
		}
		if !sameSigner(first, keys[0]) {
			t.Fatal("ParseKey is not the first key of ParseKeys")
		}
		fromFirst, err := ParseKeys(firstPEM)
		if err != nil || len(fromFirst) != 1 || !sameSigner(fromFirst[0], keys[0]) {
			t.Fatalf("FirstKeyPEM does not hold exactly the first key: %v", err)
		}
		for i, k := range keys {
			switch k.(type) {
			case *ecdsa.PrivateKey, *rsa.PrivateKey, ed25519.PrivateKey:
			default:
				t.Fatalf("key %d has unsupported type %T", i+1, k)
			}
			enc, err := EncodeKey(k)
			if err != nil {
				t.Fatalf("key %d (%T) does not re-encode: %v", i+1, k, err)
			}
			back, err := ParseKeys(enc)
			if err != nil || len(back) != 1 || !sameSigner(back[0], k) {
				t.Fatalf("key %d (%T) re-encoded does not parse to the same key: %v", i+1, k, err)
			}
			if !PublicKeysEqual(back[0].Public(), k.Public()) {
				t.Fatalf("key %d: public key changed through re-encoding", i+1)
			}
		}
	})
}

func newECKeyPEM(f *testing.F) []byte {
	f.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	b, err := EncodeKey(k)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

func fixturesCert(f *testing.F) []byte {
	f.Helper()
	return fuzzFixtureFiles(f, ".crt")[0]
}
