package e2e

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
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const genCustomCA = "testdata/gen-custom-ca.sh"

// customCAFiles are the files a custom CA set provides (SPEC §3, seed page list).
var customCAFiles = []string{
	"server-ca.crt", "server-ca.key", "client-ca.crt", "client-ca.key",
	"request-header-ca.crt", "request-header-ca.key", "etcd/peer-ca.crt", "etcd/peer-ca.key",
	"etcd/server-ca.crt", "etcd/server-ca.key", "service.key",
}

// runGenCustomCA runs testdata/gen-custom-ca.sh with DATA_DIR=dataDir.
func runGenCustomCA(t *testing.T, dataDir string) {
	t.Helper()
	script, err := filepath.Abs(genCustomCA)
	if err != nil {
		t.Fatal(err)
	}
	run(t, t.TempDir(), []string{"DATA_DIR=" + dataDir}, "bash", script)
}

func readAll(t *testing.T, dir string, files []string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, f := range files {
		out[f] = readFile(t, filepath.Join(dir, f))
	}
	return out
}

// TestServerCustomCA starts first servers on CA files made by gen-custom-ca.sh (the K3s
// custom-CA procedure of the seed page) and checks that kpki uses them untouched, and that it
// refuses broken custom CA sets without writing anything.
func TestServerCustomCA(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "bash")

	t.Run("generated root and intermediate", func(t *testing.T) {
		t.Parallel()
		dd := filepath.Join(t.TempDir(), "data")
		runGenCustomCA(t, dd)
		checkCustomCAStart(t, dd)
	})

	t.Run("existing root", func(t *testing.T) {
		t.Parallel()
		scratch := t.TempDir()
		runGenCustomCA(t, scratch)
		from := filepath.Join(scratch, "server", "tls")
		dd := filepath.Join(t.TempDir(), "data")
		tlsDir := filepath.Join(dd, "server", "tls")
		for _, f := range []string{"root-ca.pem", "root-ca.key"} {
			writeFile(t, filepath.Join(tlsDir, f), readFile(t, filepath.Join(from, f)), 0o600)
		}
		runGenCustomCA(t, dd)
		if !bytes.Equal(readFile(t, filepath.Join(tlsDir, "root-ca.pem")), readFile(t, filepath.Join(from, "root-ca.pem"))) {
			t.Fatalf("gen-custom-ca.sh replaced the existing root-ca.pem")
		}
		if bytes.Equal(readFile(t, filepath.Join(tlsDir, "intermediate-ca.pem")), readFile(t, filepath.Join(from, "intermediate-ca.pem"))) {
			t.Fatalf("gen-custom-ca.sh did not make a new intermediate")
		}
		checkCustomCAStart(t, dd)
	})

	t.Run("existing root and intermediate", func(t *testing.T) {
		t.Parallel()
		scratch := t.TempDir()
		runGenCustomCA(t, scratch)
		from := filepath.Join(scratch, "server", "tls")
		dd := filepath.Join(t.TempDir(), "data")
		tlsDir := filepath.Join(dd, "server", "tls")
		for _, f := range []string{"root-ca.pem", "intermediate-ca.pem", "intermediate-ca.key"} {
			writeFile(t, filepath.Join(tlsDir, f), readFile(t, filepath.Join(from, f)), 0o600)
		}
		runGenCustomCA(t, dd)
		for _, f := range []string{"root-ca.pem", "intermediate-ca.pem"} {
			if !bytes.Equal(readFile(t, filepath.Join(tlsDir, f)), readFile(t, filepath.Join(from, f))) {
				t.Fatalf("gen-custom-ca.sh replaced the existing %s", f)
			}
		}
		if _, err := os.Stat(filepath.Join(tlsDir, "root-ca.key")); err == nil {
			t.Fatalf("gen-custom-ca.sh made a root key although a root and intermediate were given")
		}
		checkCustomCAStart(t, dd)
	})

	t.Run("refusals", func(t *testing.T) {
		t.Parallel()
		base := t.TempDir()
		runGenCustomCA(t, base)
		baseTLS := filepath.Join(base, "server", "tls")
		root := readCerts(t, filepath.Join(baseTLS, "root-ca.pem"))[0]
		inter := readCerts(t, filepath.Join(baseTLS, "intermediate-ca.pem"))[0]
		interKey := readKeys(t, filepath.Join(baseTLS, "intermediate-ca.key"))[0].signer

		cases := []struct {
			name   string
			mutate func(t *testing.T, tlsDir string)
			wants  []string
			any    []string // at least one of these
		}{
			{
				name: "partial set",
				mutate: func(t *testing.T, tlsDir string) {
					for _, f := range []string{"etcd/peer-ca.key", "client-ca.crt"} {
						if err := os.Remove(filepath.Join(tlsDir, f)); err != nil {
							t.Fatal(err)
						}
					}
				},
				wants: []string{"etcd/peer-ca.key", "client-ca.crt"},
			},
			{
				name: "key does not match certificate",
				mutate: func(t *testing.T, tlsDir string) {
					writeFile(t, filepath.Join(tlsDir, "etcd", "peer-ca.key"), newECKeyPEM(t), 0o600)
				},
				any: []string{"etcd/peer-ca.key", "etcd/peer-ca.crt"},
			},
			{
				name: "expired CA",
				mutate: func(t *testing.T, tlsDir string) {
					now := time.Now()
					crt, key := issueUnder(t, inter, interKey, x509.Certificate{
						Subject:               pkix.Name{CommonName: "kpki-client-ca-expired"},
						NotBefore:             now.AddDate(-2, 0, 0),
						NotAfter:              now.AddDate(0, 0, -1),
						IsCA:                  true,
						BasicConstraintsValid: true,
						KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
					})
					writeFile(t, filepath.Join(tlsDir, "client-ca.crt"), append(crt, certsPEM(inter, root)...), 0o600)
					writeFile(t, filepath.Join(tlsDir, "client-ca.key"), key, 0o600)
				},
				wants: []string{"client-ca.crt"},
			},
			{
				name: "not a CA certificate",
				mutate: func(t *testing.T, tlsDir string) {
					now := time.Now()
					crt, key := issueUnder(t, inter, interKey, x509.Certificate{
						Subject:               pkix.Name{CommonName: "not-a-ca"},
						NotBefore:             now.Add(-time.Hour),
						NotAfter:              now.AddDate(1, 0, 0),
						IsCA:                  false,
						BasicConstraintsValid: true,
						KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
						ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
					})
					writeFile(t, filepath.Join(tlsDir, "request-header-ca.crt"), append(crt, certsPEM(inter, root)...), 0o600)
					writeFile(t, filepath.Join(tlsDir, "request-header-ca.key"), key, 0o600)
				},
				wants: []string{"request-header-ca.crt"},
			},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				dd := filepath.Join(t.TempDir(), "data")
				tlsDir := filepath.Join(dd, "server", "tls")
				copyTree(t, baseTLS, tlsDir)
				tc.mutate(t, tlsDir)
				before := hashTree(t, dd)
				s := startServer(t, dd, "--token", "custom-ca-refusal")
				code, stderr := s.Wait(t, failTimeout)
				line := assertFailure(t, code, stderr, tc.wants...)
				if len(tc.any) > 0 {
					found := false
					for _, w := range tc.any {
						found = found || strings.Contains(line, w)
					}
					if !found {
						t.Errorf("error line %q names none of %q", line, tc.any)
					}
				}
				assertTreeUnchanged(t, "refused custom CA start", before, hashTree(t, dd))
			})
		}
	})
}

// checkCustomCAStart starts a first server on a data dir whose server/tls holds a custom CA
// set and checks that the CA files are used as they are.
func checkCustomCAStart(t *testing.T, dd string) {
	t.Helper()
	tlsDir := filepath.Join(dd, "server", "tls")
	before := readAll(t, tlsDir, customCAFiles)
	root := readCerts(t, filepath.Join(tlsDir, "root-ca.pem"))[0]
	// As after the seed page's `mkdir -p`: directories open to other users.
	for _, d := range []string{filepath.Join(dd, "server"), tlsDir, filepath.Join(tlsDir, "etcd")} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const pw = "custom-ca-e2e-secret"
	s := startServer(t, dd, "--token", pw)
	s.WaitReady(t)
	for _, d := range []string{filepath.Join(dd, "server"), tlsDir, filepath.Join(tlsDir, "etcd")} {
		st, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, want 0700 once the server holds keys in it", d, st.Mode().Perm())
		}
	}

	after := readAll(t, tlsDir, customCAFiles)
	for _, f := range customCAFiles {
		if !bytes.Equal(before[f], after[f]) {
			t.Errorf("custom CA file %s was changed by the server", f)
		}
	}
	token := strings.TrimSpace(string(readFile(t, filepath.Join(dd, "server", "token"))))
	sum := sha256.Sum256(root.Raw)
	if want := "K10" + hex.EncodeToString(sum[:]) + "::server:" + pw; token != want {
		t.Errorf("token %q, want K10<sha256 of the root's DER %x>::server:<password>", redact(token), sum)
	}
	for _, l := range serverLeaves(s.IP) {
		crt := filepath.Join(tlsDir, l.file+".crt")
		certs := readCerts(t, crt)
		if !certs[len(certs)-1].Equal(root) {
			t.Errorf("%s does not end with the custom root", crt)
		}
		checkLeaf(t, tlsDir, l)
	}
	for _, ca := range []string{"server-ca", "client-ca"} {
		nochain := readCerts(t, filepath.Join(tlsDir, ca+".nochain.crt"))
		if len(nochain) != 1 || !nochain[0].Equal(readCerts(t, filepath.Join(tlsDir, ca+".crt"))[0]) {
			t.Errorf("%s.nochain.crt is not the first certificate of %s.crt", ca, ca)
		}
	}
	if code, body := s.MustGet(t, "/cacerts"); code != 200 || !bytes.Equal(body, before["server-ca.crt"]) {
		t.Errorf("GET /cacerts: %d, body is not server-ca.crt", code)
	}
	served := s.ServedChain(t, "")
	if want := readCerts(t, filepath.Join(tlsDir, "serving-supervisor.crt"))[0]; !served[0].Equal(want) {
		t.Errorf("the supervisor does not serve serving-supervisor.crt")
	}
	s.Stop(t)
}

func newECKeyPEM(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

// issueUnder signs tmpl (with a new P-256 key) by parent and returns the certificate and key PEM.
func issueUnder(t *testing.T, parent *x509.Certificate, parentKey crypto.Signer, tmpl x509.Certificate) ([]byte, []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial.Add(serial, big.NewInt(1))
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, parent, &k.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}
