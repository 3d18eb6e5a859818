package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/clock"
)

// testNow is the fake clock's start; whole seconds, as certificates store them.
var testNow = time.Date(2026, time.May, 4, 10, 30, 0, 0, time.UTC)

const (
	day      = 24 * time.Hour
	tenYears = 3650 * day
)

func newTestIssuer() (*Issuer, *clock.Fake, *Stats) {
	fc := clock.NewFake(testNow)
	st := &Stats{}
	return NewIssuer(fc, st), fc, st
}

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
	rsaErr  error
)

// testRSAKey returns one RSA-2048 key shared by the tests of this package.
func testRSAKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	rsaOnce.Do(func() { rsaKey, rsaErr = rsa.GenerateKey(rand.Reader, 2048) })
	if rsaErr != nil {
		t.Fatal(rsaErr)
	}
	return rsaKey
}

// newRootCA makes a self-signed EC CA at the issuer's current time.
func newRootCA(t *testing.T, iss *Issuer, cn string, validity time.Duration) *CA {
	t.Helper()
	key, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := iss.SelfSignedCA(key, cn, validity)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: cert, Key: key, Bundle: []*x509.Certificate{cert}, BundlePEM: EncodeCert(cert)}
}

// newSubCA makes an EC CA signed by parent; its bundle is itself followed by parent's.
func newSubCA(t *testing.T, iss *Issuer, parent *CA, cn string, validity time.Duration) *CA {
	t.Helper()
	key, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := iss.SignCA(parent, key.Public(), cn, validity)
	if err != nil {
		t.Fatal(err)
	}
	bundle := append([]*x509.Certificate{cert}, parent.Bundle...)
	return &CA{Cert: cert, Key: key, Bundle: bundle, BundlePEM: EncodeCerts(bundle...)}
}

// createCert signs tmpl directly, for certificates kpki itself would never make.
func createCert(t *testing.T, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = big.NewInt(42)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustECKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestNewIssuer(t *testing.T) {
	iss := NewIssuer(nil, nil)
	if _, ok := iss.Clock.(clock.Real); !ok {
		t.Errorf("NewIssuer(nil, nil).Clock is %T, want clock.Real", iss.Clock)
	}
	if iss.Stats != nil {
		t.Errorf("Stats = %v, want nil", iss.Stats)
	}
	fc := clock.NewFake(testNow)
	st := &Stats{}
	iss = NewIssuer(fc, st)
	if iss.Clock != clock.Clock(fc) || iss.Stats != st {
		t.Error("NewIssuer did not keep the given clock and stats")
	}
	// A nil Stats is allowed: nothing is counted and nothing panics.
	if _, err := NewIssuer(fc, nil).NewECKey(); err != nil {
		t.Fatal(err)
	}
}

func TestNewECKey(t *testing.T) {
	iss, _, st := newTestIssuer()
	a, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	if a.Curve != elliptic.P256() {
		t.Errorf("curve %s, want P-256", a.Curve.Params().Name)
	}
	if a.Equal(b) {
		t.Error("two generated keys are equal")
	}
	if got := st.Keys.Load(); got != 2 {
		t.Errorf("Stats.Keys = %d, want 2", got)
	}
	if got := st.Signatures.Load(); got != 0 {
		t.Errorf("Stats.Signatures = %d, want 0", got)
	}
}

func TestNewRSAKey(t *testing.T) {
	iss, _, st := newTestIssuer()
	k, err := iss.NewRSAKey(2048)
	if err != nil {
		t.Fatal(err)
	}
	if got := k.N.BitLen(); got != 2048 {
		t.Errorf("modulus has %d bits, want 2048", got)
	}
	if got := st.Keys.Load(); got != 1 {
		t.Errorf("Stats.Keys = %d, want 1", got)
	}
	if _, err := iss.NewRSAKey(512); err == nil {
		t.Error("NewRSAKey(512) succeeded; want an error for an insecure size")
	}
}

func TestNewSerial(t *testing.T) {
	limit := new(big.Int).Lsh(big.NewInt(1), 127)
	seen := map[string]bool{}
	for range 200 {
		n, err := NewSerial()
		if err != nil {
			t.Fatal(err)
		}
		if n.Sign() <= 0 {
			t.Fatalf("serial %s is not positive", n)
		}
		if n.Cmp(limit) > 0 {
			t.Fatalf("serial %s exceeds 2^127", n)
		}
		if seen[n.String()] {
			t.Fatalf("serial %s repeated", n)
		}
		seen[n.String()] = true
	}
}

func TestSelfSignedCA(t *testing.T) {
	tests := []struct {
		name     string
		key      func(t *testing.T) crypto.Signer
		cn       string
		validity time.Duration
		advance  time.Duration
	}{
		{"EC ten years", func(t *testing.T) crypto.Signer { return mustECKey(t) }, "kpki-server-ca@1764250000", tenYears, 0},
		{"EC one day, clock moved", func(t *testing.T) crypto.Signer { return mustECKey(t) }, "kpki-client-ca@1764250001", day, 72 * time.Hour},
		{"RSA", func(t *testing.T) crypto.Signer { return testRSAKey(t) }, "root", 20 * 365 * day, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			iss, fc, st := newTestIssuer()
			fc.Advance(tc.advance)
			now := testNow.Add(tc.advance)
			key := tc.key(t)
			c, err := iss.SelfSignedCA(key, tc.cn, tc.validity)
			if err != nil {
				t.Fatal(err)
			}
			if c.Subject.CommonName != tc.cn || c.Issuer.CommonName != tc.cn {
				t.Errorf("subject %q issuer %q, want CN %q", c.Subject, c.Issuer, tc.cn)
			}
			if len(c.Subject.Organization) != 0 {
				t.Errorf("organization %q, want none", c.Subject.Organization)
			}
			if !c.BasicConstraintsValid || !c.IsCA {
				t.Errorf("BasicConstraintsValid=%v IsCA=%v, want CA:true", c.BasicConstraintsValid, c.IsCA)
			}
			wantKU := x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
			if c.KeyUsage&wantKU != wantKU {
				t.Errorf("KeyUsage %b lacks certSign+digitalSignature+keyEncipherment", c.KeyUsage)
			}
			if want := now.Add(-time.Hour); !c.NotBefore.Equal(want) {
				t.Errorf("NotBefore %s, want now-1h = %s", c.NotBefore, want)
			}
			if want := now.Add(tc.validity); !c.NotAfter.Equal(want) {
				t.Errorf("NotAfter %s, want %s", c.NotAfter, want)
			}
			if c.SerialNumber.Sign() <= 0 {
				t.Errorf("serial %s is not positive", c.SerialNumber)
			}
			if !IsSelfSigned(c) {
				t.Error("certificate is not self-signed")
			}
			if !KeyMatchesCert(key, c) {
				t.Error("certificate is not for the given key")
			}
			if got := st.Signatures.Load(); got != 1 {
				t.Errorf("Stats.Signatures = %d, want 1", got)
			}
			if got := st.Keys.Load(); got != 0 {
				t.Errorf("Stats.Keys = %d, want 0 (the key came from outside)", got)
			}
			again, err := iss.SelfSignedCA(key, tc.cn, tc.validity)
			if err != nil {
				t.Fatal(err)
			}
			if again.SerialNumber.Cmp(c.SerialNumber) == 0 {
				t.Error("two CAs got the same serial")
			}
		})
	}
}

func TestSignCA(t *testing.T) {
	iss, _, st := newTestIssuer()
	root := newRootCA(t, iss, "root", tenYears)
	inter := newSubCA(t, iss, root, "intermediate", 5*365*day)
	c := inter.Cert
	if c.Subject.CommonName != "intermediate" || c.Issuer.CommonName != "root" {
		t.Errorf("subject %q issuer %q", c.Subject, c.Issuer)
	}
	if !c.IsCA || !c.BasicConstraintsValid || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Error("intermediate is not a signing CA")
	}
	if err := c.CheckSignatureFrom(root.Cert); err != nil {
		t.Errorf("intermediate not signed by root: %v", err)
	}
	if IsSelfSigned(c) {
		t.Error("intermediate reported self-signed")
	}
	if !c.NotBefore.Equal(testNow.Add(-time.Hour)) || !c.NotAfter.Equal(testNow.Add(5*365*day)) {
		t.Errorf("validity %s..%s", c.NotBefore, c.NotAfter)
	}
	if got := st.Signatures.Load(); got != 2 {
		t.Errorf("Stats.Signatures = %d, want 2", got)
	}
	if _, err := iss.SignCA(&CA{Cert: root.Cert}, mustECKey(t).Public(), "x", day); err == nil || !strings.Contains(err.Error(), "no signing key") {
		t.Errorf("SignCA with no parent key: err = %v, want \"no signing key\"", err)
	}
	if got := st.Signatures.Load(); got != 2 {
		t.Errorf("a failed signature was counted: Stats.Signatures = %d", got)
	}
}

func TestSignLeaf(t *testing.T) {
	iss, fc, _ := newTestIssuer()

	// A CA made two days ago by kpki.
	fc.Set(testNow.Add(-48 * time.Hour))
	oldCA := newRootCA(t, iss, "old-ca", tenYears)
	fc.Set(testNow)
	// A CA made just now by kpki (NotBefore = now - 1h).
	freshCA := newRootCA(t, iss, "fresh-ca", tenYears)
	// A custom CA made ten minutes ago by a tool that does not backdate.
	customKey := mustECKey(t)
	customTmpl := &x509.Certificate{
		Subject: pkix.Name{CommonName: "custom-ca"}, NotBefore: testNow.Add(-10 * time.Minute), NotAfter: testNow.Add(tenYears),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	customCert := createCert(t, customTmpl, customTmpl, customKey.Public(), customKey)
	customCA := &CA{Cert: customCert, Key: customKey, Bundle: []*x509.Certificate{customCert}, BundlePEM: EncodeCert(customCert)}
	// An intermediate under the old CA.
	interCA := newSubCA(t, iss, oldCA, "inter-ca", tenYears)

	serverProfile := LeafProfile{
		CommonName:  "kube-apiserver",
		DNSNames:    []string{"kubernetes", "localhost"},
		IPs:         []net.IP{net.ParseIP("127.0.0.1").To4(), net.ParseIP("::1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	clientProfile := LeafProfile{
		CommonName:   "system:admin",
		Organization: []string{"system:masters"},
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	bothProfile := LeafProfile{
		CommonName:  "etcd-peer",
		DNSNames:    []string{"node-1"},
		IPs:         []net.IP{net.ParseIP("10.0.0.5").To4()},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	tests := []struct {
		name          string
		ca            *CA
		pub           crypto.PublicKey
		profile       LeafProfile
		validity      time.Duration
		wantNotBefore time.Time
		wrongUsage    x509.ExtKeyUsage
	}{
		{"server leaf, CA older than an hour", oldCA, mustECKey(t).Public(), serverProfile, 365 * day, testNow.Add(-time.Hour), x509.ExtKeyUsageClientAuth},
		{"client leaf, CA made now", freshCA, mustECKey(t).Public(), clientProfile, 365 * day, testNow.Add(-time.Hour), x509.ExtKeyUsageServerAuth},
		{"CA made ten minutes ago without backdating", customCA, mustECKey(t).Public(), clientProfile, 30 * day, testNow.Add(-10 * time.Minute), x509.ExtKeyUsageServerAuth},
		{"server+client leaf under an intermediate", interCA, mustECKey(t).Public(), bothProfile, 365 * day, testNow.Add(-time.Hour), x509.ExtKeyUsageCodeSigning},
		{"RSA public key", freshCA, testRSAKey(t).Public(), serverProfile, 365 * day, testNow.Add(-time.Hour), x509.ExtKeyUsageClientAuth},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := &Stats{}
			iss := NewIssuer(fc, st)
			c, err := iss.SignLeaf(tc.ca, tc.pub, tc.profile, tc.validity)
			if err != nil {
				t.Fatal(err)
			}
			if c.Subject.CommonName != tc.profile.CommonName || !slices.Equal(c.Subject.Organization, tc.profile.Organization) {
				t.Errorf("subject %q, want CN %q O %q", c.Subject, tc.profile.CommonName, tc.profile.Organization)
			}
			if !slices.Equal(c.DNSNames, tc.profile.DNSNames) {
				t.Errorf("DNS SANs %q, want %q", c.DNSNames, tc.profile.DNSNames)
			}
			if !slices.EqualFunc(c.IPAddresses, tc.profile.IPs, net.IP.Equal) {
				t.Errorf("IP SANs %v, want %v", c.IPAddresses, tc.profile.IPs)
			}
			if !slices.Equal(c.ExtKeyUsage, tc.profile.ExtKeyUsage) {
				t.Errorf("EKU %v, want %v", c.ExtKeyUsage, tc.profile.ExtKeyUsage)
			}
			if want := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment; c.KeyUsage != want {
				t.Errorf("KeyUsage %b, want digitalSignature+keyEncipherment (%b)", c.KeyUsage, want)
			}
			if !c.BasicConstraintsValid || c.IsCA || c.MaxPathLen > 0 {
				t.Errorf("basicConstraints valid=%v CA=%v maxPathLen=%d, want a CA:FALSE extension", c.BasicConstraintsValid, c.IsCA, c.MaxPathLen)
			}
			if !c.NotBefore.Equal(tc.wantNotBefore) {
				t.Errorf("NotBefore %s, want %s", c.NotBefore, tc.wantNotBefore)
			}
			if want := testNow.Add(tc.validity); !c.NotAfter.Equal(want) {
				t.Errorf("NotAfter %s, want %s", c.NotAfter, want)
			}
			if c.SerialNumber.Sign() <= 0 {
				t.Errorf("serial %s not positive", c.SerialNumber)
			}
			if !PublicKeysEqual(c.PublicKey, tc.pub) {
				t.Error("leaf is not for the given public key")
			}
			if got := st.Signatures.Load(); got != 1 {
				t.Errorf("Stats.Signatures = %d, want 1", got)
			}
			if got := st.Keys.Load(); got != 0 {
				t.Errorf("Stats.Keys = %d, want 0", got)
			}

			roots, inter := x509.NewCertPool(), x509.NewCertPool()
			for _, b := range tc.ca.Bundle {
				if IsSelfSigned(b) {
					roots.AddCert(b)
				} else {
					inter.AddCert(b)
				}
			}
			opts := x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: testNow, KeyUsages: tc.profile.ExtKeyUsage}
			chains, err := c.Verify(opts)
			if err != nil {
				t.Fatalf("leaf does not chain to its CA: %v", err)
			}
			if got, want := len(chains[0]), len(tc.ca.Bundle)+1; got != want {
				t.Errorf("chain length %d, want %d", got, want)
			}
			opts.KeyUsages = []x509.ExtKeyUsage{tc.wrongUsage}
			if _, err := c.Verify(opts); err == nil {
				t.Errorf("leaf verifies for usage %v it was not given", tc.wrongUsage)
			}

			again, err := iss.SignLeaf(tc.ca, tc.pub, tc.profile, tc.validity)
			if err != nil {
				t.Fatal(err)
			}
			if again.SerialNumber.Cmp(c.SerialNumber) == 0 {
				t.Error("two leaves got the same serial")
			}
		})
	}

	t.Run("no CA key", func(t *testing.T) {
		st := &Stats{}
		_, err := NewIssuer(fc, st).SignLeaf(&CA{Cert: oldCA.Cert}, mustECKey(t).Public(), clientProfile, day)
		if err == nil || !strings.Contains(err.Error(), "no signing key") {
			t.Fatalf("err = %v, want \"no signing key\"", err)
		}
		if st.Signatures.Load() != 0 {
			t.Error("failed signature counted")
		}
	})
}

// TestSignLeafCappedAtChain checks that no leaf outlives any certificate of its CA's
// signing chain, and that a CA whose chain has expired signs nothing.
func TestSignLeafCappedAtChain(t *testing.T) {
	iss, _, _ := newTestIssuer()
	profile := LeafProfile{CommonName: "kube-apiserver", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}

	shortRoot := newRootCA(t, iss, "short-root", 20*day)
	longRoot := newRootCA(t, iss, "long-root", tenYears)
	// A ten-year intermediate under a root that expires in 20 days: the root caps.
	longUnderShort := newSubCA(t, iss, shortRoot, "long-under-short", tenYears)
	// A 30-day intermediate under a ten-year root: the intermediate caps.
	shortUnderLong := newSubCA(t, iss, longRoot, "short-under-long", 30*day)
	// Two levels, the middle one shortest.
	mid := newSubCA(t, iss, longRoot, "mid", 15*day)
	deep := newSubCA(t, iss, mid, "deep", tenYears)
	// The bundle cross-sign-ca writes: new CA, new root, new root cross-signed by the
	// old root, old root. The old root (expiring in 20 days) and the cross-signed copy
	// are off the signing path and do not cap.
	newRoot := newRootCA(t, iss, "new-root", tenYears)
	cross, err := iss.CrossSign(shortRoot, newRoot.Cert, 5*day)
	if err != nil {
		t.Fatal(err)
	}
	rotated := newSubCA(t, iss, newRoot, "rotated-ca", 5*365*day)
	rotated.Bundle = []*x509.Certificate{rotated.Cert, newRoot.Cert, cross, shortRoot.Cert}
	// The same bundle in another order still finds the self-signed new root.
	reordered := &CA{Cert: rotated.Cert, Key: rotated.Key, Bundle: []*x509.Certificate{rotated.Cert, shortRoot.Cert, cross, newRoot.Cert}}
	// A CA file without its root: the certificates it has still cap.
	noRoot := &CA{Cert: longUnderShort.Cert, Key: longUnderShort.Key, Bundle: []*x509.Certificate{longUnderShort.Cert}}
	// A CA without a bundle at all (only Cert set).
	bare := &CA{Cert: shortRoot.Cert, Key: shortRoot.Key}

	tests := []struct {
		name      string
		ca        *CA
		validity  time.Duration
		notAfter  time.Time
		limitedBy *x509.Certificate
	}{
		{"self-signed CA expiring in 20 days", shortRoot, 365 * day, shortRoot.Cert.NotAfter, shortRoot.Cert},
		{"validity shorter than the CA: not capped", shortRoot, 10 * day, testNow.Add(10 * day), shortRoot.Cert},
		{"validity ending exactly at the CA's expiry", shortRoot, 20 * day, shortRoot.Cert.NotAfter, shortRoot.Cert},
		{"long intermediate under a short root", longUnderShort, 365 * day, shortRoot.Cert.NotAfter, shortRoot.Cert},
		{"short intermediate under a long root", shortUnderLong, 365 * day, shortUnderLong.Cert.NotAfter, shortUnderLong.Cert},
		{"short middle of three", deep, 365 * day, mid.Cert.NotAfter, mid.Cert},
		{"rotated bundle: old root and cross-signed copy ignored", rotated, 365 * day, testNow.Add(365 * day), rotated.Cert},
		{"rotated bundle in another order", reordered, 10 * 365 * day, rotated.Cert.NotAfter, rotated.Cert},
		{"bundle without its root", noRoot, 365 * day, testNow.Add(365 * day), longUnderShort.Cert},
		{"no bundle", bare, 365 * day, shortRoot.Cert.NotAfter, shortRoot.Cert},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			capAt, limit := tc.ca.ChainExpiry()
			c, err := iss.SignLeaf(tc.ca, mustECKey(t).Public(), profile, tc.validity)
			if err != nil {
				t.Fatal(err)
			}
			if !c.NotAfter.Equal(tc.notAfter) {
				t.Errorf("NotAfter %s, want %s", c.NotAfter, tc.notAfter)
			}
			if c.NotAfter.After(capAt) {
				t.Errorf("NotAfter %s after the chain's expiry %s", c.NotAfter, capAt)
			}
			if tc.validity >= 365*day && !limit.Equal(tc.limitedBy) {
				t.Errorf("ChainExpiry names %q, want %q", limit.Subject, tc.limitedBy.Subject)
			}
			if !c.BasicConstraintsValid || c.IsCA {
				t.Errorf("basicConstraints valid=%v CA=%v, want CA:FALSE", c.BasicConstraintsValid, c.IsCA)
			}
		})
	}

	t.Run("expired chain signs nothing", func(t *testing.T) {
		st := &Stats{}
		late := NewIssuer(clock.NewFake(shortRoot.Cert.NotAfter), st)
		for _, ca := range []*CA{shortRoot, longUnderShort} {
			c, err := late.SignLeaf(ca, mustECKey(t).Public(), profile, 365*day)
			if err == nil || !strings.Contains(err.Error(), `CA certificate "CN=short-root" expired on `+shortRoot.Cert.NotAfter.Format(time.RFC3339)) {
				t.Errorf("%s: SignLeaf = %v, %v; want the expired-CA error", ca.Cert.Subject, c, err)
			}
		}
		if st.Signatures.Load() != 0 {
			t.Errorf("%d signatures made under an expired chain", st.Signatures.Load())
		}
		// One second earlier it still signs, for that one second.
		early := NewIssuer(clock.NewFake(shortRoot.Cert.NotAfter.Add(-time.Second)), nil)
		c, err := early.SignLeaf(longUnderShort, mustECKey(t).Public(), profile, 365*day)
		if err != nil || !c.NotAfter.Equal(shortRoot.Cert.NotAfter) {
			t.Errorf("one second before expiry: %v, %v", c, err)
		}
	})
}

func TestCrossSign(t *testing.T) {
	iss, fc, st := newTestIssuer()
	fc.Set(testNow.Add(-365 * day))
	oldRoot := newRootCA(t, iss, "old-root", tenYears)
	fc.Set(testNow)
	newRoot := newRootCA(t, iss, "new-root", tenYears)
	sigs := st.Signatures.Load()

	cross, err := iss.CrossSign(oldRoot, newRoot.Cert, 5*365*day)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Signatures.Load() - sigs; got != 1 {
		t.Errorf("CrossSign made %d signatures, want 1", got)
	}
	if string(cross.RawSubject) != string(newRoot.Cert.RawSubject) {
		t.Errorf("subject %q, want the new root's %q", cross.Subject, newRoot.Cert.Subject)
	}
	if string(cross.RawIssuer) != string(oldRoot.Cert.RawSubject) {
		t.Errorf("issuer %q, want the old root %q", cross.Issuer, oldRoot.Cert.Subject)
	}
	if !PublicKeysEqual(cross.PublicKey, newRoot.Cert.PublicKey) {
		t.Error("cross-signed certificate does not carry the new root's key")
	}
	if err := cross.CheckSignatureFrom(oldRoot.Cert); err != nil {
		t.Errorf("not signed by the old root: %v", err)
	}
	if IsSelfSigned(cross) {
		t.Error("cross-signed certificate reported self-signed")
	}
	if !cross.IsCA || cross.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Error("cross-signed certificate cannot sign")
	}
	if !cross.NotBefore.Equal(testNow.Add(-time.Hour)) || !cross.NotAfter.Equal(testNow.Add(5*365*day)) {
		t.Errorf("validity %s..%s", cross.NotBefore, cross.NotAfter)
	}

	// A CA under the new root verifies both against the new root and, through the
	// cross-signed copy, against the old root.
	ca := newSubCA(t, iss, newRoot, "new-ca", tenYears)
	for _, tc := range []struct {
		name  string
		root  *x509.Certificate
		inter []*x509.Certificate
	}{
		{"new root", newRoot.Cert, nil},
		{"old root via cross-signed", oldRoot.Cert, []*x509.Certificate{cross}},
	} {
		roots, inter := x509.NewCertPool(), x509.NewCertPool()
		roots.AddCert(tc.root)
		for _, c := range tc.inter {
			inter.AddCert(c)
		}
		chains, err := ca.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: testNow, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if last := chains[0][len(chains[0])-1]; !last.Equal(tc.root) {
			t.Errorf("%s: chain ends at %q", tc.name, last.Subject)
		}
	}
}

func TestStats(t *testing.T) {
	profile := LeafProfile{CommonName: "x", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	tests := []struct {
		name      string
		run       func(t *testing.T, iss *Issuer)
		keys, sig int64
	}{
		{"nothing", func(*testing.T, *Issuer) {}, 0, 0},
		{"root CA", func(t *testing.T, iss *Issuer) { newRootCA(t, iss, "r", day) }, 1, 1},
		{"root + intermediate", func(t *testing.T, iss *Issuer) { newSubCA(t, iss, newRootCA(t, iss, "r", day), "i", day) }, 2, 2},
		{"root + 3 leaves for one key", func(t *testing.T, iss *Issuer) {
			ca := newRootCA(t, iss, "r", day)
			k, err := iss.NewECKey()
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				if _, err := iss.SignLeaf(ca, k.Public(), profile, day); err != nil {
					t.Fatal(err)
				}
			}
		}, 2, 4},
		{"cross-sign", func(t *testing.T, iss *Issuer) {
			a, b := newRootCA(t, iss, "a", day), newRootCA(t, iss, "b", day)
			if _, err := iss.CrossSign(a, b.Cert, day); err != nil {
				t.Fatal(err)
			}
		}, 2, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			iss, _, st := newTestIssuer()
			tc.run(t, iss)
			if k, s := st.Keys.Load(), st.Signatures.Load(); k != tc.keys || s != tc.sig {
				t.Errorf("Stats = %d keys, %d signatures; want %d, %d", k, s, tc.keys, tc.sig)
			}
		})
	}
}
