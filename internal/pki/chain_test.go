package pki

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// crossSigned is what `certificate cross-sign-ca` produces for one CA.
type crossSigned struct {
	oldRoot, newRoot, newCA *CA
	cross                   *x509.Certificate
	// bundle is new CA + new root (self-signed) + new root (cross-signed) + old root.
	bundle []*x509.Certificate
}

func makeCrossSigned(t *testing.T, iss *Issuer) crossSigned {
	t.Helper()
	oldRoot := newRootCA(t, iss, "kpki-server-ca@1700000000", tenYears)
	newRoot := newRootCA(t, iss, "kpki-server-ca-root@1800000000", tenYears)
	cross, err := iss.CrossSign(oldRoot, newRoot.Cert, tenYears)
	if err != nil {
		t.Fatal(err)
	}
	newCA := newSubCA(t, iss, newRoot, "kpki-server-ca@1800000000", tenYears)
	bundle := []*x509.Certificate{newCA.Cert, newRoot.Cert, cross, oldRoot.Cert}
	newCA.Bundle = bundle
	newCA.BundlePEM = EncodeCerts(bundle...)
	return crossSigned{oldRoot: oldRoot, newRoot: newRoot, newCA: newCA, cross: cross, bundle: bundle}
}

// makeCycle returns two CAs that sign each other, with no self-signed root.
func makeCycle(t *testing.T) (a, b *x509.Certificate) {
	t.Helper()
	ka, kb := mustECKey(t), mustECKey(t)
	ta := &x509.Certificate{Subject: pkix.Name{CommonName: "cycle-a"}, NotBefore: testNow.Add(-time.Hour), NotAfter: testNow.Add(day), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	tb := &x509.Certificate{Subject: pkix.Name{CommonName: "cycle-b"}, NotBefore: testNow.Add(-time.Hour), NotAfter: testNow.Add(day), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	a = createCert(t, ta, tb, ka.Public(), kb)
	b = createCert(t, tb, ta, kb.Public(), ka)
	return a, b
}

func TestIsSelfSigned(t *testing.T) {
	iss, _, _ := newTestIssuer()
	root := newRootCA(t, iss, "root", tenYears)
	inter := newSubCA(t, iss, root, "inter", tenYears)
	leaf, err := iss.SignLeaf(inter, mustECKey(t).Public(), LeafProfile{CommonName: "leaf"}, day)
	if err != nil {
		t.Fatal(err)
	}
	cs := makeCrossSigned(t, iss)
	// Same subject and issuer name, but signed by another key with that name.
	twinKey, otherKey := mustECKey(t), mustECKey(t)
	twinTmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "twin"}, NotBefore: testNow.Add(-time.Hour), NotAfter: testNow.Add(day), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	other := createCert(t, twinTmpl, twinTmpl, otherKey.Public(), otherKey)
	twin := createCert(t, twinTmpl, other, twinKey.Public(), otherKey)

	tests := []struct {
		name string
		c    *x509.Certificate
		want bool
	}{
		{"root", root.Cert, true},
		{"intermediate", inter.Cert, false},
		{"leaf", leaf, false},
		{"new root self-signed", cs.newRoot.Cert, true},
		{"new root cross-signed", cs.cross, false},
		{"same name, other key", twin, false},
		{"same name, own key", other, true},
	}
	for _, tc := range tests {
		if got := IsSelfSigned(tc.c); got != tc.want {
			t.Errorf("%s: IsSelfSigned = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFindRoot(t *testing.T) {
	iss, _, _ := newTestIssuer()
	root := newRootCA(t, iss, "root", tenYears)
	inter := newSubCA(t, iss, root, "inter", tenYears)
	ca := newSubCA(t, iss, inter, "ca", tenYears)
	other := newRootCA(t, iss, "other-root", tenYears)
	cs := makeCrossSigned(t, iss)
	ca1, ca2 := makeCycle(t)

	tests := []struct {
		name    string
		bundle  []*x509.Certificate
		want    *x509.Certificate
		wantErr string
	}{
		{"single self-signed", []*x509.Certificate{root.Cert}, root.Cert, ""},
		{"CA, intermediate, root", []*x509.Certificate{ca.Cert, inter.Cert, root.Cert}, root.Cert, ""},
		{"out of order", []*x509.Certificate{ca.Cert, root.Cert, inter.Cert}, root.Cert, ""},
		{"unrelated root alongside", []*x509.Certificate{ca.Cert, other.Cert, inter.Cert, root.Cert}, root.Cert, ""},
		{"cross-signed bundle", cs.bundle, cs.newRoot.Cert, ""},
		{"cross-signed copy before the self-signed one", []*x509.Certificate{cs.newCA.Cert, cs.cross, cs.newRoot.Cert, cs.oldRoot.Cert}, cs.newRoot.Cert, ""},
		{"cross-signed copy without the new root", []*x509.Certificate{cs.newCA.Cert, cs.cross, cs.oldRoot.Cert}, cs.oldRoot.Cert, ""},
		{"empty", nil, nil, "empty certificate bundle"},
		{"chain missing its root", []*x509.Certificate{ca.Cert, inter.Cert}, nil, `no issuer of "CN=inter"`},
		{"intermediate alone", []*x509.Certificate{inter.Cert}, nil, `no issuer of "CN=inter"`},
		{"wrong root", []*x509.Certificate{inter.Cert, other.Cert}, nil, "self-signed root"},
		{"root first does not count for the CA", []*x509.Certificate{inter.Cert, inter.Cert}, nil, "no issuer"},
		{"signing cycle", []*x509.Certificate{ca1, ca2, ca1}, nil, "no issuer"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FindRoot(tc.bundle)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("FindRoot error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("FindRoot: %v", err)
			}
			if !got.Equal(tc.want) {
				t.Errorf("FindRoot = %q (self-signed %v), want %q", got.Subject, IsSelfSigned(got), tc.want.Subject)
			}
		})
	}
}

func TestCAHash(t *testing.T) {
	iss, _, _ := newTestIssuer()
	root := newRootCA(t, iss, "root", tenYears)
	inter := newSubCA(t, iss, root, "inter", tenYears)
	inter2 := newSubCA(t, iss, root, "inter-2", tenYears)
	ca := newSubCA(t, iss, inter, "ca", tenYears)
	ca2 := newSubCA(t, iss, inter2, "ca-2", tenYears)
	cs := makeCrossSigned(t, iss)

	single := EncodeCert(root.Cert)
	singleCRLF := bytes.ReplaceAll(single, []byte("\n"), []byte("\r\n"))
	tests := []struct {
		name string
		file []byte
		want string
	}{
		{"single cert: hash of the file bytes", single, sha256Hex(single)},
		{"single cert with CRLF: hash of those bytes", singleCRLF, sha256Hex(singleCRLF)},
		{"single intermediate: still the file bytes", EncodeCert(inter.Cert), sha256Hex(EncodeCert(inter.Cert))},
		{"chain: hash of the root DER", ca.BundlePEM, sha256Hex(root.Cert.Raw)},
		{"chain through another intermediate: same root hash", ca2.BundlePEM, sha256Hex(root.Cert.Raw)},
		{"CA + root", inter.BundlePEM, sha256Hex(root.Cert.Raw)},
		{"cross-signed bundle: the new root", cs.newCA.BundlePEM, sha256Hex(cs.newRoot.Cert.Raw)},
	}
	hexRE := regexp.MustCompile(`^[0-9a-f]{64}$`)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CAHash(tc.file)
			if err != nil {
				t.Fatalf("CAHash: %v", err)
			}
			if got != tc.want {
				t.Errorf("CAHash = %s, want %s", got, tc.want)
			}
			if !hexRE.MatchString(got) {
				t.Errorf("CAHash = %q, not 64 lowercase hex", got)
			}
		})
	}

	if h, _ := CAHash(cs.newCA.BundlePEM); h == sha256Hex(cs.oldRoot.Cert.Raw) || h == sha256Hex(cs.cross.Raw) {
		t.Error("cross-signed bundle hashed to the old root or to the cross-signed copy")
	}
	if a, b := sha256Hex(single), sha256Hex(root.Cert.Raw); a == b {
		t.Fatal("test is meaningless: file hash equals DER hash")
	}

	errTests := []struct {
		name string
		file []byte
	}{
		{"chain missing its root", EncodeCerts(ca.Cert, inter.Cert)},
		{"garbage", []byte("garbage")},
		{"empty", nil},
		{"key instead of cert", mustEncodeKey(t, root.Key)},
		{"trailing garbage", append(EncodeCert(root.Cert), "x"...)},
	}
	for _, tc := range errTests {
		if h, err := CAHash(tc.file); err == nil {
			t.Errorf("%s: CAHash = %s, want an error", tc.name, h)
		}
	}
}

// TestCAHashK3sFixture checks the hash against a token made for a K3s-style CA file.
func TestCAHashK3sFixture(t *testing.T) {
	dir := filepath.Join("..", "bootstrap", "testdata", "k3s-bootstrap")
	crt, err := os.ReadFile(filepath.Join(dir, "tls", "server-ca.crt"))
	if err != nil {
		t.Skipf("fixture not available: %v", err)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "token"))
	if err != nil {
		t.Skipf("fixture not available: %v", err)
	}
	m := regexp.MustCompile(`^K10([0-9a-f]{64})::`).FindSubmatch(bytes.TrimSpace(tok))
	if m == nil {
		t.Fatalf("fixture token %q has no CA hash", tok)
	}
	got, err := CAHash(crt)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(m[1]) {
		t.Errorf("CAHash(server-ca.crt) = %s, token pins %s", got, m[1])
	}

	key, err := os.ReadFile(filepath.Join(dir, "tls", "server-ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := LoadCA(crt, key)
	if err != nil {
		t.Fatalf("LoadCA on openssl-made files: %v", err)
	}
	if err := CheckCA(ca, ca.Cert.NotBefore.Add(day)); err != nil {
		t.Errorf("CheckCA on openssl-made files: %v", err)
	}
}

func TestVerifyChain(t *testing.T) {
	iss, fc, _ := newTestIssuer()
	root := newRootCA(t, iss, "root", tenYears)
	inter := newSubCA(t, iss, root, "inter", 30*day)
	ca := newSubCA(t, iss, inter, "ca", tenYears)
	cs := makeCrossSigned(t, iss)
	fc.Set(testNow.Add(24 * time.Hour))
	lateRoot := newRootCA(t, iss, "late-root", tenYears)
	lateCA := newSubCA(t, iss, lateRoot, "late-ca", tenYears)
	fc.Set(testNow)

	tests := []struct {
		name    string
		bundle  []*x509.Certificate
		now     time.Time
		want    *x509.Certificate
		wantErr string
	}{
		{"self-signed", root.Bundle, testNow, root.Cert, ""},
		{"three-level chain", ca.Bundle, testNow, root.Cert, ""},
		{"cross-signed bundle", cs.bundle, testNow, cs.newRoot.Cert, ""},
		{"intermediate expired", ca.Bundle, testNow.Add(31 * day), nil, "expired"},
		{"root not yet valid", lateCA.Bundle, testNow, nil, "not yet valid"},
		{"missing root", []*x509.Certificate{ca.Cert, inter.Cert}, testNow, nil, "no issuer"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := VerifyChain(tc.bundle, tc.now)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("VerifyChain error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("VerifyChain: %v", err)
			}
			if !got.Equal(tc.want) {
				t.Errorf("root %q, want %q", got.Subject, tc.want.Subject)
			}
		})
	}
}

func TestCheckCA(t *testing.T) {
	iss, fc, _ := newTestIssuer()
	root := newRootCA(t, iss, "root", tenYears)
	inter := newSubCA(t, iss, root, "inter", tenYears)
	chained := newSubCA(t, iss, inter, "ca", tenYears)
	cs := makeCrossSigned(t, iss)
	short := newRootCA(t, iss, "short", day)
	other := newRootCA(t, iss, "other", tenYears)

	fc.Set(testNow.Add(-20 * day))
	oldRoot := newRootCA(t, iss, "expired-root", 10*day)
	fc.Set(testNow)
	underExpiredRoot := newSubCA(t, iss, oldRoot, "under-expired-root", tenYears)

	selfSigned := func(tmpl *x509.Certificate) *CA {
		k := mustECKey(t)
		tmpl.NotBefore, tmpl.NotAfter = testNow.Add(-time.Hour), testNow.Add(tenYears)
		c := createCert(t, tmpl, tmpl, k.Public(), k)
		return &CA{Cert: c, Key: k, Bundle: []*x509.Certificate{c}, BundlePEM: EncodeCert(c)}
	}
	notCA := selfSigned(&x509.Certificate{Subject: pkix.Name{CommonName: "not-a-ca"}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign})
	caFalse := selfSigned(&x509.Certificate{Subject: pkix.Name{CommonName: "ca-false"}, BasicConstraintsValid: true, IsCA: false, KeyUsage: x509.KeyUsageCertSign})
	noCertSign := selfSigned(&x509.Certificate{Subject: pkix.Name{CommonName: "no-certsign"}, BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment})
	noKeyUsage := selfSigned(&x509.Certificate{Subject: pkix.Name{CommonName: "no-keyusage"}, BasicConstraintsValid: true, IsCA: true})
	mismatch := &CA{Cert: root.Cert, Key: other.Key, Bundle: root.Bundle, BundlePEM: root.BundlePEM}
	broken := &CA{Cert: chained.Cert, Key: chained.Key, Bundle: []*x509.Certificate{chained.Cert, inter.Cert}}
	wrongRoot := &CA{Cert: inter.Cert, Key: inter.Key, Bundle: []*x509.Certificate{inter.Cert, other.Cert}}

	const (
		errMismatch  = "key does not match the certificate"
		errNotCA     = "is not a CA (basicConstraints CA:TRUE missing)"
		errCertSign  = "may not sign certificates (keyUsage lacks keyCertSign)"
		errExpired   = "expired on"
		errNotYet    = "is not valid before"
		errChain     = "chain does not verify"
		errChainRoot = "chain does not verify: no issuer"
	)
	tests := []struct {
		name    string
		ca      *CA
		now     time.Time
		wantErr string
	}{
		{"self-signed root", root, testNow, ""},
		{"CA, intermediate, root", chained, testNow, ""},
		{"cross-signed bundle", cs.newCA, testNow, ""},
		{"no keyUsage extension", noKeyUsage, testNow, ""},
		{"valid at exactly NotAfter", short, short.Cert.NotAfter, ""},
		{"valid at exactly NotBefore", short, short.Cert.NotBefore, ""},
		{"key mismatch", mismatch, testNow, errMismatch},
		{"no basicConstraints", notCA, testNow, errNotCA},
		{"CA:FALSE", caFalse, testNow, errNotCA},
		{"missing certSign", noCertSign, testNow, errCertSign},
		{"expired", short, testNow.Add(2 * day), errExpired},
		{"expired by one second", short, short.Cert.NotAfter.Add(time.Second), errExpired},
		{"not yet valid", root, testNow.Add(-2 * time.Hour), errNotYet},
		{"chain missing its root", broken, testNow, errChainRoot},
		{"chain to an unrelated root", wrongRoot, testNow, errChainRoot},
		{"root of the chain expired", underExpiredRoot, testNow, errChain},
	}
	distinct := []string{errMismatch, errNotCA, errCertSign, errExpired, errNotYet, errChain}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckCA(tc.ca, tc.now)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckCA: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("CheckCA succeeded, want an error containing %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("CheckCA error %q does not contain %q", err, tc.wantErr)
			}
			for _, d := range distinct {
				if !strings.HasPrefix(tc.wantErr, d) && strings.Contains(err.Error(), d) {
					t.Errorf("CheckCA error %q also matches the %q error", err, d)
				}
			}
			if tc.wantErr != errMismatch && !strings.Contains(err.Error(), tc.ca.Cert.Subject.CommonName) && !strings.HasPrefix(tc.wantErr, errChain) {
				t.Errorf("CheckCA error %q does not name the certificate %q", err, tc.ca.Cert.Subject.CommonName)
			}
		})
	}
}

func TestLoadCA(t *testing.T) {
	iss, _, _ := newTestIssuer()
	root := newRootCA(t, iss, "root", tenYears)
	inter := newSubCA(t, iss, root, "inter", tenYears)
	ca := newSubCA(t, iss, inter, "ca", tenYears)
	keyFile := append(mustEncodeKey(t, ca.Key), mustEncodeKey(t, root.Key)...)

	got, err := LoadCA(ca.BundlePEM, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Cert.Equal(ca.Cert) {
		t.Errorf("Cert = %q, want the first certificate %q", got.Cert.Subject, ca.Cert.Subject)
	}
	if !KeyMatchesCert(got.Key, ca.Cert) {
		t.Error("Key is not the first key of the file")
	}
	if len(got.Bundle) != 3 || !got.Bundle[1].Equal(inter.Cert) || !got.Bundle[2].Equal(root.Cert) {
		t.Errorf("Bundle has %d certificates, want ca, inter, root", len(got.Bundle))
	}
	if !bytes.Equal(got.BundlePEM, ca.BundlePEM) {
		t.Error("BundlePEM is not the file as given")
	}
	if err := CheckCA(got, testNow); err != nil {
		t.Errorf("CheckCA on the loaded CA: %v", err)
	}

	errTests := []struct {
		name     string
		crt, key []byte
		wantErr  string
	}{
		{"corrupt cert", []byte("junk"), keyFile, "certificate"},
		{"corrupt key", ca.BundlePEM, []byte("junk"), "private key"},
		{"swapped", keyFile, ca.BundlePEM, "unexpected PEM block"},
	}
	for _, tc := range errTests {
		if _, err := LoadCA(tc.crt, tc.key); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: LoadCA error = %v, want one containing %q", tc.name, err, tc.wantErr)
		}
	}
}
