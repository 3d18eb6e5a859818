package cagen

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
)

var fixture struct {
	once sync.Once
	root string // the temporary directory holding dir
	dir  string // a tls dir written by GenerateCA from nothing
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fixture.root != "" {
		os.RemoveAll(fixture.root)
	}
	os.Exit(code)
}

// generated returns the tls dir of a GenerateCA run from an empty directory, made once
// and shared, to be read only: its root and intermediate are the "provided" ones of
// the other tests.
func generated(t *testing.T) string {
	t.Helper()
	fixture.once.Do(func() {
		dir, err := os.MkdirTemp("", "cagen-fixture-")
		if err != nil {
			fixture.err = err
			return
		}
		fixture.root = dir
		fixture.dir = filepath.Join(dir, "server", "tls")
		_, fixture.err = GenerateCA(fixture.dir, clock.Real{}, io.Discard)
	})
	if fixture.err != nil {
		t.Fatalf("fixture: %v", fixture.err)
	}
	return fixture.dir
}

// checkCustomCAs checks every cluster CA of tlsDir with openssl and pki: the chain
// CA → intermediate → root of rootFile verifies, the key matches, CA:TRUE, the .crt is
// CA + intermediate-ca.pem + root, and the server-ca hash is the root's.
func checkCustomCAs(t *testing.T, tlsDir, rootFile, interFile string) {
	t.Helper()
	root := parseCertsFile(t, rootFile)[0]
	inter := parseCertsFile(t, interFile)
	now := time.Now()
	for _, c := range certs.CAs {
		crt, key := filepath.Join(tlsDir, c.CertFile), filepath.Join(tlsDir, c.KeyFile)
		bundle := parseCertsFile(t, crt)
		want := append(append([]*x509.Certificate{bundle[0]}, inter...), root)
		if len(bundle) != len(want) {
			t.Fatalf("%s holds %d certificates, want CA + %d intermediate + root", crt, len(bundle), len(inter))
		}
		for i := range want {
			if !bundle[i].Equal(want[i]) {
				t.Errorf("%s: certificate %d is %q, want %q", crt, i+1, bundle[i].Subject, want[i].Subject)
			}
		}
		opensslVerify(t, rootFile, interFile, bundle[0])
		opensslKeyMatches(t, key, crt)
		opensslIsCA(t, crt)
		if types := pemTypes(readFile(t, key)); len(types) != 1 || types[0] != pki.BlockECPrivateKey {
			t.Errorf("%s: blocks %q, want one EC PRIVATE KEY", key, types)
		}
		k := parseKeysFile(t, key)[0].(*ecdsa.PrivateKey)
		if k.Curve != elliptic.P256() {
			t.Errorf("%s: curve %s, want P-256", key, k.Curve.Params().Name)
		}
		if got := bundle[0].Subject.CommonName; !strings.HasPrefix(got, c.CNPrefix+"@") {
			t.Errorf("%s: CN %q, want %s@<unix seconds>", crt, got, c.CNPrefix)
		}
		ca, err := pki.LoadCA(readFile(t, crt), readFile(t, key))
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.CheckCA(ca, now); err != nil {
			t.Errorf("%s: a server would refuse it: %v", crt, err)
		}
	}
	hash, err := pki.CAHash(readFile(t, filepath.Join(tlsDir, "server-ca.crt")))
	if err != nil {
		t.Fatal(err)
	}
	if want := sha256Hex(root.Raw); hash != want {
		t.Errorf("CAHash(server-ca.crt) = %s, want sha256(root DER) %s", hash, want)
	}
}

func TestGenerateCAEmptyDir(t *testing.T) {
	t.Parallel()
	requireOpenSSL(t)
	dd := filepath.Join(t.TempDir(), "data")
	tlsDir := datadir.Layout{Root: dd}.TLS()
	var out bytes.Buffer
	start := time.Now()
	res, err := GenerateCA(tlsDir, clock.Real{}, &out)
	if err != nil {
		t.Fatalf("GenerateCA: %v", err)
	}
	if !res.RootGenerated || !res.IntermediateGenerated {
		t.Errorf("RootGenerated=%v IntermediateGenerated=%v, want both", res.RootGenerated, res.IntermediateGenerated)
	}
	rootFile, interFile := filepath.Join(tlsDir, RootCertFile), filepath.Join(tlsDir, IntermediateCertFile)
	checkCustomCAs(t, tlsDir, rootFile, interFile)
	checkModes(t, dd)

	root := parseCertsFile(t, rootFile)
	inter := parseCertsFile(t, interFile)
	if len(root) != 1 || len(inter) != 1 {
		t.Fatalf("root-ca.pem holds %d, intermediate-ca.pem %d certificates; want 1 each", len(root), len(inter))
	}
	if !pki.IsSelfSigned(root[0]) || !strings.HasPrefix(root[0].Subject.CommonName, "kpki-root-ca@") {
		t.Errorf("root %q is not a self-signed kpki-root-ca@<time>", root[0].Subject)
	}
	if !strings.HasPrefix(inter[0].Subject.CommonName, "kpki-intermediate-ca@") {
		t.Errorf("intermediate CN %q", inter[0].Subject.CommonName)
	}
	opensslVerify(t, rootFile, "", inter[0])
	for _, f := range []string{RootKeyFile, IntermediateKeyFile} {
		k, ok := parseKeysFile(t, filepath.Join(tlsDir, f))[0].(*rsa.PrivateKey)
		if !ok || k.N.BitLen() != 4096 {
			t.Errorf("%s is not an RSA-4096 key", f)
		}
		if types := pemTypes(readFile(t, filepath.Join(tlsDir, f))); len(types) != 1 || types[0] != pki.BlockRSAPrivateKey {
			t.Errorf("%s: blocks %q, want one RSA PRIVATE KEY", f, types)
		}
	}
	opensslKeyMatches(t, filepath.Join(tlsDir, RootKeyFile), rootFile)
	opensslKeyMatches(t, filepath.Join(tlsDir, IntermediateKeyFile), interFile)

	days := func(c *x509.Certificate) int { return int(c.NotAfter.Sub(start).Hours()/24 + 0.5) }
	if d := days(root[0]); d != 7300 {
		t.Errorf("root valid for %d days, want 7300", d)
	}
	if d := days(inter[0]); d != 3650 {
		t.Errorf("intermediate valid for %d days, want 3650", d)
	}
	if d := days(parseCertsFile(t, filepath.Join(tlsDir, "etcd/peer-ca.crt"))[0]); d != 3650 {
		t.Errorf("etcd peer CA valid for %d days, want 3650", d)
	}
	checkServiceKey(t, filepath.Join(tlsDir, "service.key"), nil)

	if res.CAHash != sha256Hex(root[0].Raw) {
		t.Errorf("result CAHash %s, want sha256(root DER)", res.CAHash)
	}
	wantOff := []string{RootKeyFile, RootCertFile, IntermediateKeyFile, IntermediateCertFile}
	if len(res.OffCluster) != len(wantOff) {
		t.Errorf("OffCluster = %q, want %q", res.OffCluster, wantOff)
	}
	for i, f := range wantOff {
		if i < len(res.OffCluster) && res.OffCluster[i] != filepath.Join(tlsDir, f) {
			t.Errorf("OffCluster[%d] = %s, want %s", i, res.OffCluster[i], f)
		}
		if !strings.Contains(out.String(), "\t"+filepath.Join(tlsDir, f)+"\n") {
			t.Errorf("output does not list %s to move off the cluster:\n%s", f, out.String())
		}
	}
	if strings.Contains(out.String(), "PRIVATE KEY") {
		t.Error("output contains key material")
	}
	if len(res.Files) != 15 {
		t.Errorf("wrote %d files, want 15: %q", len(res.Files), res.Files)
	}
}

func TestGenerateCAProvidedRoot(t *testing.T) {
	t.Parallel()
	requireOpenSSL(t)
	from := generated(t)
	tlsDir := filepath.Join(t.TempDir(), "server", "tls")
	for _, f := range []string{RootCertFile, RootKeyFile} {
		copyFile(t, filepath.Join(from, f), filepath.Join(tlsDir, f))
	}
	var out bytes.Buffer
	res, err := GenerateCA(tlsDir, clock.Real{}, &out)
	if err != nil {
		t.Fatalf("GenerateCA: %v", err)
	}
	if res.RootGenerated || !res.IntermediateGenerated {
		t.Errorf("RootGenerated=%v IntermediateGenerated=%v, want a new intermediate only", res.RootGenerated, res.IntermediateGenerated)
	}
	for _, f := range []string{RootCertFile, RootKeyFile} {
		if !bytes.Equal(readFile(t, filepath.Join(tlsDir, f)), readFile(t, filepath.Join(from, f))) {
			t.Errorf("%s was changed", f)
		}
	}
	if bytes.Equal(readFile(t, filepath.Join(tlsDir, IntermediateCertFile)), readFile(t, filepath.Join(from, IntermediateCertFile))) {
		t.Error("no new intermediate was made")
	}
	checkCustomCAs(t, tlsDir, filepath.Join(from, RootCertFile), filepath.Join(tlsDir, IntermediateCertFile))
	if !strings.Contains(out.String(), "Using existing root certificate") {
		t.Errorf("output does not say the root is reused:\n%s", out.String())
	}
}

func TestGenerateCAProvidedRootAndIntermediate(t *testing.T) {
	t.Parallel()
	requireOpenSSL(t)
	from := generated(t)
	tlsDir := filepath.Join(t.TempDir(), "server", "tls")
	// As on the seed page: root-ca.pem, intermediate-ca.pem and its key; no root key.
	for _, f := range []string{RootCertFile, IntermediateCertFile, IntermediateKeyFile} {
		copyFile(t, filepath.Join(from, f), filepath.Join(tlsDir, f))
	}
	res, err := GenerateCA(tlsDir, clock.Real{}, io.Discard)
	if err != nil {
		t.Fatalf("GenerateCA: %v", err)
	}
	if res.RootGenerated || res.IntermediateGenerated {
		t.Errorf("RootGenerated=%v IntermediateGenerated=%v, want both reused", res.RootGenerated, res.IntermediateGenerated)
	}
	if datadir.Exists(filepath.Join(tlsDir, RootKeyFile)) {
		t.Error("a root key was written")
	}
	for _, f := range []string{RootCertFile, IntermediateCertFile, IntermediateKeyFile} {
		if !bytes.Equal(readFile(t, filepath.Join(tlsDir, f)), readFile(t, filepath.Join(from, f))) {
			t.Errorf("%s was changed", f)
		}
	}
	checkCustomCAs(t, tlsDir, filepath.Join(from, RootCertFile), filepath.Join(from, IntermediateCertFile))
	if len(res.OffCluster) != 3 {
		t.Errorf("OffCluster = %q, want root-ca.pem and the intermediate's two files", res.OffCluster)
	}
}

// TestGenerateCARotation follows the seed page's "Rotating Custom CA Certificates":
// copy root-ca.*, intermediate-ca.* and service.key into another DATA_DIR and run
// again; the new CAs chain to the same root, so the join-token hash is unchanged.
func TestGenerateCARotation(t *testing.T) {
	t.Parallel()
	requireOpenSSL(t)
	live := generated(t)
	stage := filepath.Join(t.TempDir(), "opt", "kpki")
	stageTLS := datadir.Layout{Root: stage}.TLS()
	for _, f := range []string{RootCertFile, RootKeyFile, IntermediateCertFile, IntermediateKeyFile, certs.ServiceKeyFile} {
		copyFile(t, filepath.Join(live, f), filepath.Join(stageTLS, f))
	}
	var out bytes.Buffer
	res, err := GenerateCA(stageTLS, clock.Real{}, &out)
	if err != nil {
		t.Fatalf("GenerateCA: %v", err)
	}
	checkCustomCAs(t, stageTLS, filepath.Join(live, RootCertFile), filepath.Join(live, IntermediateCertFile))
	for _, c := range certs.CAs {
		if bytes.Equal(readFile(t, filepath.Join(stageTLS, c.CertFile)), readFile(t, filepath.Join(live, c.CertFile))) {
			t.Errorf("%s was not renewed", c.CertFile)
		}
	}
	oldHash, err := pki.CAHash(readFile(t, filepath.Join(live, "server-ca.crt")))
	if err != nil {
		t.Fatal(err)
	}
	newHash, err := pki.CAHash(readFile(t, filepath.Join(stageTLS, "server-ca.crt")))
	if err != nil {
		t.Fatal(err)
	}
	if newHash != oldHash || res.CAHash != oldHash {
		t.Errorf("CA hash changed from %s to %s (result %s)", oldHash, newHash, res.CAHash)
	}
	checkServiceKey(t, filepath.Join(stageTLS, certs.ServiceKeyFile), parseKeysFile(t, filepath.Join(live, certs.ServiceKeyFile)))
	if !strings.Contains(out.String(), "Generating additional Kubernetes service account issuer RSA key") {
		t.Errorf("output does not say the old service key is kept:\n%s", out.String())
	}
}

// selfSignedCert makes a self-signed certificate; isCA false gives a leaf.
func selfSignedCert(t *testing.T, isCA bool) ([]byte, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(7),
		Subject:               pkix.Name{CommonName: "not-a-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  isCA,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	k, err := pki.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pki.EncodeCert(c), k
}

// otherRootAndIntermediate writes, in a new directory, root-ca.pem/.key and
// intermediate-ca.pem/.key of a P-256 root and intermediate made with pki.
func otherRootAndIntermediate(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	iss := pki.NewIssuer(clock.Real{}, nil)
	rootKey, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	root, err := iss.SelfSignedCA(rootKey, "other-root", RootValidity)
	if err != nil {
		t.Fatal(err)
	}
	interKey, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	inter, err := iss.SignCA(&pki.CA{Cert: root, Key: rootKey}, interKey.Public(), "other-intermediate", IntermediateValidity)
	if err != nil {
		t.Fatal(err)
	}
	for name, k := range map[string]*ecdsa.PrivateKey{RootKeyFile: rootKey, IntermediateKeyFile: interKey} {
		p, err := pki.EncodeKey(k)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name), p)
	}
	writeFile(t, filepath.Join(dir, RootCertFile), pki.EncodeCert(root))
	writeFile(t, filepath.Join(dir, IntermediateCertFile), pki.EncodeCert(inter))
	return dir
}

func TestGenerateCARefuses(t *testing.T) {
	t.Parallel()
	a := generated(t)
	// b: another root and intermediate, to mix with a's.
	b := otherRootAndIntermediate(t)
	leafCert, leafKey := selfSignedCert(t, false)
	from := func(dir, name string) []byte { return readFile(t, filepath.Join(dir, name)) }

	tests := []struct {
		name    string
		files   map[string][]byte
		clock   clock.Clock
		wantErr []string
	}{
		{
			name:    "existing CA files",
			files:   map[string][]byte{"server-ca.crt": from(a, "server-ca.crt"), "etcd/peer-ca.key": from(a, "etcd/peer-ca.key")},
			wantErr: []string{"refusing to overwrite existing CA files", "server-ca.crt", "etcd/peer-ca.key"},
		},
		{
			name:    "root key does not match",
			files:   map[string][]byte{RootCertFile: from(a, RootCertFile), RootKeyFile: from(b, RootKeyFile)},
			wantErr: []string{"root-ca.key does not match the certificate in", RootCertFile},
		},
		{
			name:    "root is not a CA",
			files:   map[string][]byte{RootCertFile: leafCert, RootKeyFile: leafKey},
			wantErr: []string{RootCertFile, "is not a CA"},
		},
		{
			name:    "root is not self-signed",
			files:   map[string][]byte{RootCertFile: from(a, IntermediateCertFile), RootKeyFile: from(a, IntermediateKeyFile)},
			wantErr: []string{RootCertFile, "is not self-signed"},
		},
		{
			name:    "root file holds a chain",
			files:   map[string][]byte{RootCertFile: from(a, "server-ca.crt")},
			wantErr: []string{RootCertFile, "holds 3 certificates"},
		},
		{
			name:    "root expired",
			files:   map[string][]byte{RootCertFile: from(a, RootCertFile), RootKeyFile: from(a, RootKeyFile)},
			clock:   clock.NewFake(time.Now().Add(21 * 365 * 24 * time.Hour)),
			wantErr: []string{RootCertFile, "expired"},
		},
		{
			name: "intermediate not signed by the root",
			files: map[string][]byte{
				RootCertFile: from(a, RootCertFile), IntermediateCertFile: from(b, IntermediateCertFile), IntermediateKeyFile: from(b, IntermediateKeyFile),
			},
			wantErr: []string{IntermediateCertFile, "is not signed by the root CA"},
		},
		{
			name: "intermediate key does not match",
			files: map[string][]byte{
				RootCertFile: from(a, RootCertFile), IntermediateCertFile: from(a, IntermediateCertFile), IntermediateKeyFile: from(b, IntermediateKeyFile),
			},
			wantErr: []string{"intermediate-ca.key does not match the certificate in", IntermediateCertFile},
		},
		{
			name: "intermediate is not a CA",
			files: map[string][]byte{
				RootCertFile: from(a, RootCertFile), IntermediateCertFile: leafCert, IntermediateKeyFile: leafKey,
			},
			wantErr: []string{IntermediateCertFile, "is not a CA"},
		},
		{
			name:    "intermediate without its key",
			files:   map[string][]byte{RootCertFile: from(a, RootCertFile), IntermediateCertFile: from(a, IntermediateCertFile)},
			wantErr: []string{IntermediateCertFile, "exists without its key"},
		},
		{
			name:    "intermediate key without its certificate",
			files:   map[string][]byte{RootCertFile: from(a, RootCertFile), RootKeyFile: from(a, RootKeyFile), IntermediateKeyFile: from(a, IntermediateKeyFile)},
			wantErr: []string{IntermediateKeyFile, "exists without its certificate"},
		},
		{
			name:    "root certificate without key and no intermediate",
			files:   map[string][]byte{RootCertFile: from(a, RootCertFile)},
			wantErr: []string{"cannot create an intermediate CA without the root key"},
		},
		{
			name:    "root key without its certificate",
			files:   map[string][]byte{RootKeyFile: from(a, RootKeyFile)},
			wantErr: []string{RootKeyFile, "exists without its certificate"},
		},
		{
			name:    "intermediate without the root",
			files:   map[string][]byte{IntermediateCertFile: from(a, IntermediateCertFile), IntermediateKeyFile: from(a, IntermediateKeyFile)},
			wantErr: []string{"without the root certificate"},
		},
		{
			name:    "corrupt root certificate",
			files:   map[string][]byte{RootCertFile: from(a, RootCertFile)[:200], RootKeyFile: from(a, RootKeyFile)},
			wantErr: []string{RootCertFile},
		},
		{
			name:    "corrupt service.key",
			files:   map[string][]byte{certs.ServiceKeyFile: []byte("not a key\n")},
			wantErr: []string{certs.ServiceKeyFile, "no PEM data"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tlsDir := filepath.Join(t.TempDir(), "server", "tls")
			for name, data := range tc.files {
				writeFile(t, filepath.Join(tlsDir, name), data)
			}
			before := snapshot(t, filepath.Dir(filepath.Dir(tlsDir)))
			clk := tc.clock
			if clk == nil {
				clk = clock.Real{}
			}
			var out bytes.Buffer
			_, err := GenerateCA(tlsDir, clk, &out)
			if err == nil {
				t.Fatalf("GenerateCA succeeded, want an error\n%s", out.String())
			}
			for _, s := range tc.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") || strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one clean line: %q", err)
			}
			sameSnapshot(t, before, snapshot(t, filepath.Dir(filepath.Dir(tlsDir))))
		})
	}
}

// TestGenerateCAIntermediateChain accepts an intermediate-ca.pem that holds the
// signing intermediate followed by a further intermediate, and one that ends with the
// root: the bundles get each certificate once, in order.
func TestGenerateCAIntermediateChain(t *testing.T) {
	t.Parallel()
	requireOpenSSL(t)
	a := generated(t)
	root := parseCertsFile(t, filepath.Join(a, RootCertFile))[0]
	rootKey := parseKeysFile(t, filepath.Join(a, RootKeyFile))[0]
	iss := pki.NewIssuer(clock.Real{}, nil)
	upperKey, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	upper, err := iss.SignCA(&pki.CA{Cert: root, Key: rootKey}, upperKey.Public(), "upper-intermediate", 3000*day)
	if err != nil {
		t.Fatal(err)
	}
	lowerKey, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	lower, err := iss.SignCA(&pki.CA{Cert: upper, Key: upperKey}, lowerKey.Public(), "lower-intermediate", 2000*day)
	if err != nil {
		t.Fatal(err)
	}
	lowerKeyPEM, err := pki.EncodeKey(lowerKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, withRoot := range []bool{false, true} {
		t.Run(fmt.Sprintf("file ends with root %v", withRoot), func(t *testing.T) {
			tlsDir := filepath.Join(t.TempDir(), "server", "tls")
			chain := []*x509.Certificate{lower, upper}
			if withRoot {
				chain = append(chain, root)
			}
			writeFile(t, filepath.Join(tlsDir, RootCertFile), pki.EncodeCert(root))
			writeFile(t, filepath.Join(tlsDir, IntermediateCertFile), pki.EncodeCerts(chain...))
			writeFile(t, filepath.Join(tlsDir, IntermediateKeyFile), lowerKeyPEM)
			var out bytes.Buffer
			if _, err := GenerateCA(tlsDir, clock.Real{}, &out); err != nil {
				t.Fatalf("GenerateCA: %v", err)
			}
			checkCustomCAs(t, tlsDir, filepath.Join(a, RootCertFile), pemFile(t, lower, upper))
			// The intermediate expires in 2000 days: the cluster CAs do not outlive it.
			ca := parseCertsFile(t, filepath.Join(tlsDir, "server-ca.crt"))[0]
			if ca.NotAfter.After(lower.NotAfter) {
				t.Errorf("server CA expires %s, after its intermediate (%s)", ca.NotAfter, lower.NotAfter)
			}
			if !strings.Contains(out.String(), "valid until then only") {
				t.Errorf("output does not mention the shortened validity:\n%s", out.String())
			}
		})
	}
}
