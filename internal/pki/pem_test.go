package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
)

// opensslECKey is the output of `openssl ecparam -name prime256v1 -genkey`: an
// "EC PARAMETERS" block followed by the SEC 1 key.
const opensslECKey = `-----BEGIN EC PARAMETERS-----
BggqhkjOPQMBBw==
-----END EC PARAMETERS-----
-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIOBRwFlA2DheU/EWjzJN0b9NQCR9JNw5U5N1V10xfxK0oAoGCCqGSM49
AwEHoUQDQgAES3eMrl5BIhEh6NT+o1uRSbsVsrqyAdjfnpa37OKyujfSkrPcD9eS
tIi5svqS4MW+mwt706DNSy66TKneJNzdWw==
-----END EC PRIVATE KEY-----
`

// opensslECKeyD is the private scalar of opensslECKey, as `openssl ec -text` prints it.
const opensslECKeyD = "e051c05940d8385e53f1168f324dd1bf4d40247d24dc39539375575d317f12b4"

// opensslPKCS8Key is the output of `openssl genpkey -algorithm EC -pkeyopt
// ec_paramgen_curve:P-256` (PKCS#8).
const opensslPKCS8Key = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgFKGFYG3OQF7l/xOg
D8t7RFx6Jt3eEXa90oLg/7v3w2mhRANCAASmnqlhYmmBccfIu1WpYNX+cQiz+ITX
RiFV4t87ISwGfKreZJASq7eKLkuIMluBpgYJPFGuw5xTjrDrqmonrgaJ
-----END PRIVATE KEY-----
`

func mustEncodeKey(t *testing.T, k crypto.Signer) []byte {
	t.Helper()
	b, err := EncodeKey(k)
	if err != nil {
		t.Fatalf("EncodeKey(%T): %v", k, err)
	}
	return b
}

func mustPKCS8(t *testing.T, k any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func pemTypes(t *testing.T, data []byte) []string {
	t.Helper()
	var types []string
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		types = append(types, b.Type)
	}
	return types
}

func sameKey(a, b crypto.Signer) bool {
	type equaler interface{ Equal(crypto.PrivateKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// secretFragments returns strings that must never show up in an error about data:
// every base64 line of every PEM block body, and the hex of each block's bytes.
func secretFragments(data []byte) []string {
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if len(line) >= 16 && !strings.HasPrefix(line, "-----") {
			out = append(out, line)
		}
	}
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if len(b.Bytes) >= 8 {
			out = append(out, hex.EncodeToString(b.Bytes[len(b.Bytes)-8:]), base64.StdEncoding.EncodeToString(b.Bytes)[:16])
		}
	}
	return out
}

func TestEncodeKeyRoundTrip(t *testing.T) {
	iss, _, _ := newTestIssuer()
	ec, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		key       crypto.Signer
		blockType string
	}{
		{"ec p256", ec, "EC PRIVATE KEY"},
		{"ec p384", p384, "EC PRIVATE KEY"},
		{"rsa", testRSAKey(t), "RSA PRIVATE KEY"},
		{"ed25519", ed, "PRIVATE KEY"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := mustEncodeKey(t, tc.key)
			if got := pemTypes(t, out); len(got) != 1 || got[0] != tc.blockType {
				t.Fatalf("EncodeKey wrote blocks %q, want one %q", got, tc.blockType)
			}
			keys, err := ParseKeys(out)
			if err != nil {
				t.Fatalf("ParseKeys: %v", err)
			}
			if len(keys) != 1 || !sameKey(tc.key, keys[0]) {
				t.Fatalf("ParseKeys(EncodeKey(k)) = %d keys, not the original", len(keys))
			}
			again := mustEncodeKey(t, keys[0])
			if !bytes.Equal(out, again) {
				t.Errorf("re-encoding the parsed key changed the PEM")
			}
		})
	}
}

func TestEncodeKeyFormats(t *testing.T) {
	iss, _, _ := newTestIssuer()
	ec, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	rsaKey := testRSAKey(t)
	b, _ := pem.Decode(mustEncodeKey(t, ec))
	if _, err := x509.ParseECPrivateKey(b.Bytes); err != nil {
		t.Errorf("EC key body is not SEC 1: %v", err)
	}
	b, _ = pem.Decode(mustEncodeKey(t, rsaKey))
	if _, err := x509.ParsePKCS1PrivateKey(b.Bytes); err != nil {
		t.Errorf("RSA key body is not PKCS#1: %v", err)
	}
}

func TestParseKeysPKCS8(t *testing.T) {
	iss, _, _ := newTestIssuer()
	ec, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		key  crypto.Signer
	}{
		{"ec", ec},
		{"rsa", testRSAKey(t)},
		{"ed25519", ed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keys, err := ParseKeys(mustPKCS8(t, tc.key))
			if err != nil {
				t.Fatalf("ParseKeys: %v", err)
			}
			if len(keys) != 1 || !sameKey(tc.key, keys[0]) {
				t.Fatalf("got %d keys, not the original", len(keys))
			}
		})
	}
}

func TestParseKeysOpenSSL(t *testing.T) {
	tests := []struct {
		name  string
		data  string
		wantD string
	}{
		{"ecparam -genkey (EC PARAMETERS + EC PRIVATE KEY)", opensslECKey, opensslECKeyD},
		{"genpkey (PKCS#8)", opensslPKCS8Key, ""},
		{"CRLF line endings", strings.ReplaceAll(opensslECKey, "\n", "\r\n"), opensslECKeyD},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keys, err := ParseKeys([]byte(tc.data))
			if err != nil {
				t.Fatalf("ParseKeys: %v", err)
			}
			if len(keys) != 1 {
				t.Fatalf("got %d keys, want 1", len(keys))
			}
			k, ok := keys[0].(*ecdsa.PrivateKey)
			if !ok {
				t.Fatalf("key is %T, want *ecdsa.PrivateKey", keys[0])
			}
			if k.Curve != elliptic.P256() {
				t.Errorf("curve %s, want P-256", k.Curve.Params().Name)
			}
			if tc.wantD != "" {
				raw, err := k.Bytes()
				if err != nil {
					t.Fatal(err)
				}
				if got := hex.EncodeToString(raw); got != tc.wantD {
					t.Errorf("private scalar %s, want %s", got, tc.wantD)
				}
			}
			out := mustEncodeKey(t, k)
			if got := pemTypes(t, out); len(got) != 1 || got[0] != "EC PRIVATE KEY" {
				t.Errorf("re-encoded as %q, want EC PRIVATE KEY", got)
			}
		})
	}
}

func TestParseKeysSeveralInOrder(t *testing.T) {
	iss, _, _ := newTestIssuer()
	ec, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey := testRSAKey(t)
	openssl, err := ParseKey([]byte(opensslECKey))
	if err != nil {
		t.Fatal(err)
	}
	var file bytes.Buffer
	file.Write(mustEncodeKey(t, rsaKey))
	file.WriteString(opensslECKey)
	file.Write(mustEncodeKey(t, ec))
	file.WriteString("\n\n")
	file.Write(mustPKCS8(t, ed))

	keys, err := ParseKeys(file.Bytes())
	if err != nil {
		t.Fatalf("ParseKeys: %v", err)
	}
	want := []crypto.Signer{rsaKey, openssl, ec, ed}
	if len(keys) != len(want) {
		t.Fatalf("got %d keys, want %d", len(keys), len(want))
	}
	for i := range want {
		if !sameKey(want[i], keys[i]) {
			t.Errorf("key %d is a %T that differs from the %T written there", i, keys[i], want[i])
		}
	}
	first, err := ParseKey(file.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if !sameKey(first, rsaKey) {
		t.Errorf("ParseKey returned a %T, want the first (RSA) key", first)
	}
}

func TestParseKeysErrors(t *testing.T) {
	iss, _, _ := newTestIssuer()
	ec, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	ecPEM := mustEncodeKey(t, ec)
	rsaPEM := mustEncodeKey(t, testRSAKey(t))
	xk, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := newRootCA(t, iss, "some-ca", tenYears)

	// A block with valid base64 whose DER is not a key.
	b, _ := pem.Decode(ecPEM)
	flipped := append([]byte(nil), b.Bytes...)
	flipped[0] ^= 0xff
	badDER := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: flipped})
	// A block whose body is not base64 at all.
	badB64 := []byte("-----BEGIN EC PRIVATE KEY-----\n" + strings.Repeat("@", 64) + "\n-----END EC PRIVATE KEY-----\n")

	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name    string
		data    []byte
		wantErr string
		noPEM   bool
	}{
		{"nil", nil, "no PEM data", true},
		{"empty", []byte{}, "no PEM data", true},
		{"whitespace", []byte("\n \n"), "no PEM data", true},
		{"garbage", []byte("this is not a key"), "no PEM data", true},
		{"DER without armor", b.Bytes, "no PEM data", true},
		{"only EC PARAMETERS", []byte("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"), "no PEM data", true},
		{"certificate block", ca.BundlePEM, `unexpected PEM block "CERTIFICATE"`, false},
		{"key then certificate", cat(ecPEM, ca.BundlePEM), `unexpected PEM block "CERTIFICATE"`, false},
		{"truncated in the body", ecPEM[:len(ecPEM)/2], "no PEM data", true},
		{"truncated END line", ecPEM[:len(ecPEM)-8], "no PEM data", true},
		{"second key truncated", cat(ecPEM, rsaPEM[:len(rsaPEM)/2]), "trailing data", false},
		{"trailing garbage", cat(ecPEM, []byte("garbage\n")), "trailing data", false},
		{"corrupt DER", badDER, "private key 1 is not a valid EC PRIVATE KEY block", false},
		{"corrupt DER after a good key", cat(rsaPEM, badDER), "private key 2 is not a valid EC PRIVATE KEY block", false},
		{"corrupt RSA DER", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: flipped}), "private key 1 is not a valid RSA PRIVATE KEY block", false},
		{"corrupt PKCS#8 DER", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: flipped}), "private key 1 is not a valid PRIVATE KEY block", false},
		{"undecodable block before a good key", cat(badB64, ecPEM), "private key 1: malformed PEM block", false},
		{"undecodable block between good keys", cat(rsaPEM, badB64, ecPEM), "private key 2: malformed PEM block", false},
		{"X25519 key (not a signer)", mustPKCS8(t, xk), "unsupported key type", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keys, err := ParseKeys(tc.data)
			if err == nil {
				t.Fatalf("ParseKeys succeeded with %d keys, want an error", len(keys))
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
			if got := errors.Is(err, ErrNoPEM); got != tc.noPEM {
				t.Errorf("errors.Is(err, ErrNoPEM) = %v, want %v", got, tc.noPEM)
			}
			for _, s := range secretFragments(tc.data) {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q contains key material %q", err, s)
				}
			}
			if _, err := ParseKey(tc.data); err == nil {
				t.Error("ParseKey succeeded where ParseKeys failed")
			}
			if _, err := FirstKeyPEM(tc.data); err == nil {
				t.Error("FirstKeyPEM succeeded where ParseKeys failed")
			}
		})
	}
}

func TestParseCerts(t *testing.T) {
	iss, _, _ := newTestIssuer()
	root := newRootCA(t, iss, "root", tenYears)
	inter := newSubCA(t, iss, root, "intermediate", tenYears)
	one := EncodeCert(root.Cert)
	two := EncodeCerts(inter.Cert, root.Cert)
	tests := []struct {
		name string
		data []byte
		want []*x509.Certificate
	}{
		{"one", one, []*x509.Certificate{root.Cert}},
		{"chain", two, []*x509.Certificate{inter.Cert, root.Cert}},
		{"trailing newlines", append(append([]byte(nil), two...), "\n\n"...), []*x509.Certificate{inter.Cert, root.Cert}},
		{"CRLF", bytes.ReplaceAll(two, []byte("\n"), []byte("\r\n")), []*x509.Certificate{inter.Cert, root.Cert}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCerts(tc.data)
			if err != nil {
				t.Fatalf("ParseCerts: %v", err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d certificates, want %d", len(got), len(tc.want))
			}
			for i := range got {
				if !got[i].Equal(tc.want[i]) {
					t.Errorf("certificate %d is %q, want %q", i, got[i].Subject.CommonName, tc.want[i].Subject.CommonName)
				}
			}
		})
	}
}

func TestParseCertsErrors(t *testing.T) {
	iss, _, _ := newTestIssuer()
	root := newRootCA(t, iss, "root", tenYears)
	one := EncodeCert(root.Cert)
	keyPEM := mustEncodeKey(t, root.Key)
	badDER := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Cert.Raw[:len(root.Cert.Raw)-10]})
	badB64 := []byte("-----BEGIN CERTIFICATE-----\n" + strings.Repeat("%", 64) + "\n-----END CERTIFICATE-----\n")
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name    string
		data    []byte
		wantErr string
		noPEM   bool
	}{
		{"nil", nil, "no PEM data", true},
		{"garbage", []byte("not a certificate at all"), "no PEM data", true},
		{"DER without armor", root.Cert.Raw, "no PEM data", true},
		{"key block only", keyPEM, `unexpected PEM block "EC PRIVATE KEY"`, false},
		{"cert then key block", cat(one, keyPEM), `unexpected PEM block "EC PRIVATE KEY"`, false},
		{"trailing garbage", cat(one, []byte("junk")), "trailing data after the last certificate", false},
		{"second cert truncated", cat(one, one[:len(one)/2]), "trailing data after the last certificate", false},
		{"truncated", one[:len(one)-20], "no PEM data", true},
		{"bad DER", badDER, "certificate 1:", false},
		{"bad DER second", cat(one, badDER), "certificate 2:", false},
		{"undecodable block before a good one", cat(badB64, one), "certificate 1: malformed PEM block", false},
		{"undecodable block between good ones", cat(one, badB64, one), "certificate 2: malformed PEM block", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			certs, err := ParseCerts(tc.data)
			if err == nil {
				t.Fatalf("ParseCerts succeeded with %d certificates, want an error", len(certs))
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
			if got := errors.Is(err, ErrNoPEM); got != tc.noPEM {
				t.Errorf("errors.Is(err, ErrNoPEM) = %v, want %v", got, tc.noPEM)
			}
			if strings.Contains(tc.name, "key") {
				for _, s := range secretFragments(keyPEM) {
					if strings.Contains(err.Error(), s) {
						t.Errorf("error %q contains key material", err)
					}
				}
			}
		})
	}
}

func TestEncodeCerts(t *testing.T) {
	iss, _, _ := newTestIssuer()
	root := newRootCA(t, iss, "root", tenYears)
	inter := newSubCA(t, iss, root, "intermediate", tenYears)
	if got := EncodeCerts(); len(got) != 0 {
		t.Errorf("EncodeCerts() = %q, want empty", got)
	}
	want := append(EncodeCert(inter.Cert), EncodeCert(root.Cert)...)
	got := EncodeCerts(inter.Cert, root.Cert)
	if !bytes.Equal(got, want) {
		t.Fatalf("EncodeCerts is not the concatenation of EncodeCert")
	}
	if types := pemTypes(t, got); len(types) != 2 || types[0] != "CERTIFICATE" || types[1] != "CERTIFICATE" {
		t.Errorf("block types %q", types)
	}
	b, _ := pem.Decode(got)
	if !bytes.Equal(b.Bytes, inter.Cert.Raw) {
		t.Error("first block is not the DER of the first certificate")
	}
}

func TestPublicKeysEqualAndKeyMatchesCert(t *testing.T) {
	iss, _, _ := newTestIssuer()
	a := newRootCA(t, iss, "a", tenYears)
	b := newRootCA(t, iss, "b", tenYears)
	rsaKey := testRSAKey(t)
	tests := []struct {
		name string
		x, y crypto.PublicKey
		want bool
	}{
		{"same EC key", a.Key.Public(), a.Cert.PublicKey, true},
		{"different EC keys", a.Key.Public(), b.Cert.PublicKey, false},
		{"same RSA key", rsaKey.Public(), &rsaKey.PublicKey, true},
		{"RSA vs EC", rsaKey.Public(), a.Cert.PublicKey, false},
		{"nil", nil, a.Cert.PublicKey, false},
		{"not a key", "x", "x", false},
	}
	for _, tc := range tests {
		if got := PublicKeysEqual(tc.x, tc.y); got != tc.want {
			t.Errorf("%s: PublicKeysEqual = %v, want %v", tc.name, got, tc.want)
		}
	}
	if !KeyMatchesCert(a.Key, a.Cert) {
		t.Error("KeyMatchesCert(a.Key, a.Cert) = false")
	}
	if KeyMatchesCert(b.Key, a.Cert) {
		t.Error("KeyMatchesCert(b.Key, a.Cert) = true")
	}
	if KeyMatchesCert(rsaKey, a.Cert) {
		t.Error("KeyMatchesCert(rsa, a.Cert) = true")
	}
}

func TestFirstKeyPEM(t *testing.T) {
	iss, _, _ := newTestIssuer()
	ec, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	rsaKey := testRSAKey(t)
	ecPEM := mustEncodeKey(t, ec)
	rsaPEM := mustEncodeKey(t, rsaKey)
	openssl, err := ParseKey([]byte(opensslECKey))
	if err != nil {
		t.Fatal(err)
	}
	pkcs8 := mustPKCS8(t, ec)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name     string
		data     []byte
		wantPEM  []byte // exact output, when known
		wantKey  crypto.Signer
		wantType string
	}{
		{"single RSA", rsaPEM, rsaPEM, rsaKey, "RSA PRIVATE KEY"},
		{"RSA then EC", cat(rsaPEM, ecPEM), rsaPEM, rsaKey, "RSA PRIVATE KEY"},
		{"EC then RSA", cat(ecPEM, rsaPEM), ecPEM, ec, "EC PRIVATE KEY"},
		{"openssl EC PARAMETERS first", cat([]byte(opensslECKey), rsaPEM), nil, openssl, "EC PRIVATE KEY"},
		{"PKCS#8 first", cat(pkcs8, rsaPEM), pkcs8, ec, "PRIVATE KEY"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FirstKeyPEM(tc.data)
			if err != nil {
				t.Fatalf("FirstKeyPEM: %v", err)
			}
			if types := pemTypes(t, got); len(types) != 1 || types[0] != tc.wantType {
				t.Fatalf("FirstKeyPEM wrote blocks %q, want one %q", types, tc.wantType)
			}
			if tc.wantPEM != nil && !bytes.Equal(got, tc.wantPEM) {
				t.Errorf("FirstKeyPEM = %q, want %q", got, tc.wantPEM)
			}
			k, err := ParseKey(got)
			if err != nil {
				t.Fatal(err)
			}
			if !sameKey(k, tc.wantKey) {
				t.Errorf("FirstKeyPEM returned a %T that is not the first key", k)
			}
		})
	}
}

// TestAppendCertPEMMatchesEncodeCert checks AppendCertPEM and CertPEMLen against
// encoding/pem for DER lengths around every line boundary.
func TestAppendCertPEMMatchesEncodeCert(t *testing.T) {
	for n := 1; n < 400; n++ {
		raw := make([]byte, n)
		for i := range raw {
			raw[i] = byte(i*7 + n)
		}
		c := &x509.Certificate{Raw: raw}
		want := EncodeCert(c)
		got := AppendCertPEM([]byte("x"), c)
		if !bytes.Equal(got, append([]byte("x"), want...)) {
			t.Fatalf("%d bytes of DER:\n got %q\nwant %q", n, got[1:], want)
		}
		if CertPEMLen(c) != len(want) {
			t.Fatalf("%d bytes of DER: CertPEMLen %d, want %d", n, CertPEMLen(c), len(want))
		}
	}
}
