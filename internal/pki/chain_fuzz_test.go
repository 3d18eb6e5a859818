package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

// withTimeout runs fn and fails if it has not returned after a generous bound: the
// chain walks must end whatever the bundle.
func withTimeout(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not return within 20s", what)
	}
}

// issuedBy reports whether c names and is signed by parent.
func issuedBy(c, parent *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, parent.RawSubject) && c.CheckSignatureFrom(parent) == nil
}

// reachable reports whether root can be reached from bundle[0] by issuer steps
// through bundle (a breadth-first search over its distinct certificates).
func reachable(bundle []*x509.Certificate, root *x509.Certificate) bool {
	var distinct []*x509.Certificate
	known := map[string]bool{}
	for _, c := range bundle {
		if !known[string(c.Raw)] {
			known[string(c.Raw)] = true
			distinct = append(distinct, c)
		}
	}
	seen := map[int]bool{0: true}
	queue := []int{0}
	for len(queue) > 0 {
		c := distinct[queue[0]]
		queue = queue[1:]
		if c.Equal(root) {
			return true
		}
		for j, cand := range distinct {
			if !seen[j] && issuedBy(c, cand) {
				seen[j] = true
				queue = append(queue, j)
			}
		}
	}
	return false
}

// checkBundle checks FindRoot, VerifyChain and CAHash on a parsed bundle and the PEM
// it was parsed from (nil: CAHash is not checked): none panics or runs on; a root found is a self-signed certificate of
// the bundle that bundle[0] leads to; CAHash is the hash of the file for a single
// certificate, of the root FindRoot finds for a chain, and an error when there is none.
func checkBundle(t *testing.T, certs []*x509.Certificate, bundlePEM []byte) {
	t.Helper()
	var (
		root    *x509.Certificate
		rootErr error
	)
	withTimeout(t, "FindRoot", func() { root, rootErr = FindRoot(certs) })
	if rootErr == nil {
		if !IsSelfSigned(root) {
			t.Fatalf("FindRoot returned %q, which is not self-signed", root.Subject)
		}
		if !reachable(certs, root) {
			t.Fatalf("FindRoot returned %q, which the first certificate does not chain to", root.Subject)
		}
	}

	// Complete: without a root found, the bundle holds no chain from its first
	// certificate to a self-signed one (unless the search was cut short).
	if rootErr != nil && !strings.Contains(rootErr.Error(), "too complex") {
		for _, c := range certs {
			if IsSelfSigned(c) && reachable(certs, c) {
				t.Fatalf("FindRoot found no root (%v), but the first certificate chains to %q", rootErr, c.Subject)
			}
		}
	}

	withTimeout(t, "VerifyChain", func() {
		for _, now := range []time.Time{certs[0].NotBefore.Add(time.Second), testNow} {
			if vr, err := VerifyChain(certs, now); err == nil {
				if rootErr != nil || !vr.Equal(root) {
					t.Errorf("VerifyChain found root %q, FindRoot %v", vr.Subject, rootErr)
				}
			}
		}
	})

	if bundlePEM == nil {
		return
	}
	var (
		hash    string
		hashErr error
	)
	withTimeout(t, "CAHash", func() { hash, hashErr = CAHash(bundlePEM) })
	switch {
	case len(certs) == 1:
		if want := sha256.Sum256(bundlePEM); hashErr != nil || hash != hex.EncodeToString(want[:]) {
			t.Fatalf("CAHash of a single certificate = %q, %v; want the file's SHA-256", hash, hashErr)
		}
	case rootErr != nil:
		if hashErr == nil {
			t.Fatalf("CAHash = %q for a chain with no root (%v)", hash, rootErr)
		}
	default:
		if want := sha256.Sum256(root.Raw); hashErr != nil || hash != hex.EncodeToString(want[:]) {
			t.Fatalf("CAHash of a chain = %q, %v; want the SHA-256 of the root's DER", hash, hashErr)
		}
	}
	if hashErr == nil && (len(hash) != 64 || strings.ToLower(hash) != hash) {
		t.Fatalf("CAHash = %q: not 64 lowercase hex characters", hash)
	}
}

// fuzzPool is a set of CA certificates in every relation FindRoot must handle; a fuzz
// input picks bundles from it by index.
type fuzzPool struct {
	certs []*x509.Certificate
}

func newFuzzPool(f *testing.F, iss *Issuer) *fuzzPool {
	f.Helper()
	must := func(c *x509.Certificate, err error) *x509.Certificate {
		f.Helper()
		if err != nil {
			f.Fatal(err)
		}
		return c
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			f.Fatal(err)
		}
		return k
	}
	create := func(cn string, issuer *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: cn},
			NotBefore: testNow.Add(-time.Hour), NotAfter: testNow.Add(tenYears),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		if issuer == nil {
			issuer = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, pub, signer)
		if err != nil {
			f.Fatal(err)
		}
		return must(x509.ParseCertificate(der))
	}
	ca := func(c *x509.Certificate, k crypto.Signer) *CA { return &CA{Cert: c, Key: k} }

	kA, kI, kS, kB, kBI := newKey(), newKey(), newKey(), newKey(), newKey()
	rootA := must(iss.SelfSignedCA(kA, "root-a", tenYears))
	interA := must(iss.SignCA(ca(rootA, kA), kI.Public(), "inter-a", tenYears))
	subA := must(iss.SignCA(ca(interA, kI), kS.Public(), "sub-a", tenYears))
	rootB := must(iss.SelfSignedCA(kB, "root-b", tenYears))
	crossB := must(iss.CrossSign(ca(rootA, kA), rootB, tenYears))
	interB := must(iss.SignCA(ca(rootB, kB), kBI.Public(), "inter-b", tenYears))
	// Two CAs signing each other, and no root.
	kC1, kC2 := newKey(), newKey()
	tmplC1 := &x509.Certificate{Subject: pkix.Name{CommonName: "cycle-1"}}
	tmplC2 := &x509.Certificate{Subject: pkix.Name{CommonName: "cycle-2"}}
	c1 := create("cycle-1", tmplC2, kC1.Public(), kC2)
	c2 := create("cycle-2", tmplC1, kC2.Public(), kC1)
	// A root named like root-a with another key, and inter-a's name signed by it.
	kX := newKey()
	fakeA := create("root-a", nil, kX.Public(), kX)
	fakeInterA := create("inter-a", fakeA, kI.Public(), kX)
	// Issuer and subject equal, but signed by another key: looks self-issued, is not.
	selfNamed := create("self-named", &x509.Certificate{Subject: pkix.Name{CommonName: "self-named"}}, kS.Public(), kX)
	// rootA again, as a second copy with another pointer.
	rootACopy := must(x509.ParseCertificate(rootA.Raw))

	p := &fuzzPool{certs: []*x509.Certificate{rootA, interA, subA, rootB, crossB, interB, c1, c2, fakeA, fakeInterA, selfNamed, rootACopy}}
	for _, b := range fuzzFixtureFiles(f, ".crt") {
		p.certs = append(p.certs, must(x509.ParseCertificate(mustDecodePEM(f, b))))
	}
	return p
}

func mustDecodePEM(f *testing.F, b []byte) []byte {
	f.Helper()
	block, _ := pem.Decode(b)
	if block == nil {
		f.Fatal("no PEM block")
	}
	return block.Bytes
}

// FuzzFindRoot checks FindRoot, VerifyChain and CAHash (see checkBundle) on bundles of
// related certificates: roots, intermediates, a cross-signed root, a signing cycle,
// certificates named like others but signed by other keys, copies. Each input byte
// picks a certificate; bundles of up to 200 certificates are tried.
func FuzzFindRoot(f *testing.F) {
	iss, _, _ := newTestIssuer()
	pool := newFuzzPool(f, iss)
	for _, sel := range [][]byte{
		{0}, {1}, {2, 1, 0}, {2, 0, 1}, {5, 3, 4, 0}, {5, 4, 0}, {5, 4, 3}, {6, 7, 6, 7},
		{1, 8}, {9, 8, 0}, {1, 9, 8, 0}, {10}, {10, 8}, {2, 1, 11, 0}, {1, 11},
		{12}, {12, 13, 14, 15, 16}, {2, 6, 7, 1, 4, 3, 0},
	} {
		f.Add(sel)
	}

	f.Fuzz(func(t *testing.T, sel []byte) {
		if len(sel) == 0 || len(sel) > 200 {
			return
		}
		bundle := make([]*x509.Certificate, len(sel))
		for i, s := range sel {
			bundle[i] = pool.certs[int(s)%len(pool.certs)]
		}
		bundlePEM := EncodeCerts(bundle...)
		// Once with the pool's certificates (shared pointers for repeats), once as
		// parsed from the file (one certificate per block).
		checkBundle(t, bundle, nil)
		parsed, err := ParseCerts(bundlePEM)
		if err != nil {
			t.Fatalf("ParseCerts of an encoded bundle: %v", err)
		}
		checkBundle(t, parsed, bundlePEM)
	})
}

// TestFindRootBoundedOnLargeBundles keeps FindRoot (and CAHash, which an agent runs on
// the bundle of a server it does not trust yet) from spending a number of signature
// checks quadratic in the bundle: 400 copies of two CAs that sign each other, and 300
// distinct CAs sharing one name, each signed by the next, used to take tens of seconds.
func TestFindRootBoundedOnLargeBundles(t *testing.T) {
	var keys []*ecdsa.PrivateKey
	for range 301 {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	name := &x509.Certificate{Subject: pkix.Name{CommonName: "same-name"}}
	create := func(cn string, issuer *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
			NotBefore: testNow.Add(-time.Hour), NotAfter: testNow.Add(day), IsCA: true, BasicConstraintsValid: true}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, pub, signer)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a := create("cycle-a", &x509.Certificate{Subject: pkix.Name{CommonName: "cycle-b"}}, keys[0].Public(), keys[1])
	b := create("cycle-b", &x509.Certificate{Subject: pkix.Name{CommonName: "cycle-a"}}, keys[1].Public(), keys[0])
	var copies, sameName []*x509.Certificate
	for range 200 {
		copies = append(copies, a, b)
	}
	for i := range 300 {
		sameName = append(sameName, create("same-name", name, keys[i].Public(), keys[i+1]))
	}
	// Copies of one certificate are one step of the walk (the cycle ends at once, with no
	// root); distinct certificates sharing a name exhaust the bound.
	wants := map[string]string{"copies of a cycle": "no issuer", "one name": "too complex"}
	for name, bundle := range map[string][]*x509.Certificate{"copies of a cycle": copies, "one name": sameName} {
		t.Run(name, func(t *testing.T) {
			bundlePEM := EncodeCerts(bundle...)
			start := time.Now()
			var err error
			withTimeout(t, "CAHash", func() { _, err = CAHash(bundlePEM) })
			if err == nil || !strings.Contains(err.Error(), wants[name]) {
				t.Fatalf("CAHash of %d certificates: error %v, want the bundle refused (%q)", len(bundle), err, wants[name])
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("CAHash of %d certificates took %v", len(bundle), d)
			}
		})
	}
}
