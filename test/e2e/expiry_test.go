package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// shortCA is a CA made by the test: its certificate and key.
type shortCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// makeCA signs a CA certificate valid until notAfter for a new P-256 key, by parent
// (self-signed when parent is nil).
func makeCA(t *testing.T, cn string, notAfter time.Time, parent *shortCA) *shortCA {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial.Add(serial, big.NewInt(1)), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true, IsCA: true,
	}
	signer, signerKey := tmpl, k
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &k.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &shortCA{cert: c, key: k}
}

// writeShortCustomCA writes, in <dd>/server/tls, a custom CA set whose chains all end
// about 20 days from now: server-ca, client-ca and request-header-ca are ten-year
// intermediates under one 20-day root (the root caps them), the etcd CAs are 20-day
// self-signed CAs.
func writeShortCustomCA(t *testing.T, dd string) {
	t.Helper()
	tlsDir := filepath.Join(dd, "server", "tls")
	end := time.Now().Add(20 * 24 * time.Hour).Truncate(time.Second)
	root := makeCA(t, "e2e-short-root", end, nil)
	for _, name := range caFiles {
		var ca *shortCA
		chain := []*x509.Certificate{}
		if strings.HasPrefix(name, "etcd/") {
			ca = makeCA(t, "e2e-"+strings.ReplaceAll(name, "/", "-"), end, nil)
			chain = append(chain, ca.cert)
		} else {
			ca = makeCA(t, "e2e-"+name, time.Now().Add(3650*24*time.Hour), root)
			chain = append(chain, ca.cert, root.cert)
		}
		keyDER, err := x509.MarshalECPrivateKey(ca.key)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(tlsDir, name)), 0o700); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(tlsDir, name+".crt"), certsPEM(chain...), 0o644)
		writeFile(t, filepath.Join(tlsDir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	}
}

// opensslEndDate reads a certificate file's first NotAfter with `openssl x509 -enddate`.
func opensslEndDate(t *testing.T, file string) time.Time {
	t.Helper()
	out := strings.TrimSpace(string(run(t, t.TempDir(), nil, "openssl", "x509", "-noout", "-enddate", "-in", file)))
	v, ok := strings.CutPrefix(out, "notAfter=")
	if !ok {
		t.Fatalf("openssl x509 -enddate %s: %q", file, out)
	}
	at, err := time.Parse("Jan _2 15:04:05 2006 MST", v)
	if err != nil {
		t.Fatalf("openssl x509 -enddate %s: %q: %v", file, out, err)
	}
	return at
}

// assertCapped checks a leaf file: its leaf (read by openssl) expires exactly when the
// first certificate of the rest of its chain does — not later, and not earlier — and is
// CA:FALSE.
func assertCapped(t *testing.T, file string) {
	t.Helper()
	certs := readCerts(t, file)
	if len(certs) < 2 {
		t.Fatalf("%s holds %d certificates, want the leaf and its CA bundle", file, len(certs))
	}
	chainEnd := certs[1].NotAfter
	for _, c := range certs[2:] {
		if c.NotAfter.Before(chainEnd) {
			chainEnd = c.NotAfter
		}
	}
	got := opensslEndDate(t, file)
	if got.After(chainEnd) {
		t.Errorf("%s: leaf expires %s, after its CA chain (%s)", file, got, chainEnd)
	} else if !got.Equal(chainEnd) {
		t.Errorf("%s: leaf expires %s, want exactly its chain's end %s (cert validity 365 days)", file, got, chainEnd)
	}
	bc := string(run(t, t.TempDir(), nil, "openssl", "x509", "-noout", "-ext", "basicConstraints", "-in", file))
	if !strings.Contains(bc, "CA:FALSE") {
		t.Errorf("%s: basicConstraints %q, want CA:FALSE", file, bc)
	}
}

type checkRow struct {
	File    string   `json:"filename"`
	Subject string   `json:"subject"`
	Usages  []string `json:"usages"`
	Status  string   `json:"status"`
	Message string   `json:"message"`
}

// certCheck runs `kpki certificate check -o json` with args and parses the report.
func certCheck(t *testing.T, dd string, args ...string) (cmdResult, []checkRow) {
	t.Helper()
	r := runKpki(t, nil, append([]string{"certificate", "check", "--data-dir", dd, "-o", "json"}, args...)...)
	var rep struct {
		Certificates []checkRow `json:"certificates"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("check report is not JSON: %v\n%s", err, r)
	}
	return r, rep.Certificates
}

// waitCAWarnings waits until the server has logged n CA warnings in all and checks that
// each CA file is named.
func waitCAWarnings(t *testing.T, s *kpkiServer, n int) {
	t.Helper()
	const msg = "CA certificate expires within the CA warning window"
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(s.Stderr(), msg) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d CA warnings in the server log, want %d:\n%s", strings.Count(s.Stderr(), msg), n, s.tail(60))
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, name := range caFiles {
		file := filepath.Join(s.TLSDir(), name+".crt")
		found := false
		for _, line := range strings.Split(s.Stderr(), "\n") {
			if strings.Contains(line, msg) && strings.Contains(line, "file="+file+" ") &&
				strings.Contains(line, "days-left=19") && strings.Contains(line, "expires=") && strings.Contains(line, "subject=") {
				found = true
			}
		}
		if !found {
			t.Errorf("no warning naming %s with its subject, expiry and days left:\n%s", file, s.tail(60))
		}
	}
}

// TestExpiryShortCA starts a server on a custom CA set whose chains end in 20 days, with
// the default 365-day leaves: every leaf (server and agent) expires with its CA chain,
// the server warns about each CA, `certificate check` reports the CAs as WARNING and
// --fail-on warning fails, a restart issues nothing, and a removed or corrupt leaf file
// is reported and fails --fail-on expired.
func TestExpiryShortCA(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	dd := filepath.Join(t.TempDir(), "data")
	writeShortCustomCA(t, dd)
	const pw = "expiry-e2e-secret"
	s := startServer(t, dd, "--token", pw)
	s.WaitReady(t)
	tlsDir := s.TLSDir()

	for _, l := range serverLeaves(s.IP) {
		assertCapped(t, filepath.Join(tlsDir, l.file+".crt"))
	}
	waitCAWarnings(t, s, len(caFiles))

	// An agent's leaves, signed by the supervisor from CSRs, are capped alike, and a
	// second pass has nothing signed although they are inside the agent's renewal window.
	add := filepath.Join(t.TempDir(), "agent")
	tok := agentToken(t, s)
	agentOK(t, agentArgs(s, tok, add)...)
	for _, f := range []string{"client-kubelet", "serving-kubelet", "client-kube-proxy", "client-kpki-controller"} {
		assertCapped(t, filepath.Join(add, "agent", f+".crt"))
	}
	issued := issuedCount(s)
	agentOK(t, agentArgs(s, tok, add)...)
	if n := issuedCount(s) - issued; n != 0 {
		t.Errorf("a second agent pass had %d certificates signed, want 0", n)
	}

	// certificate check: every row of a CA certificate expiring within the CA window
	// (365 days) is WARNING, the leaves are WARNING by the renewal window (90 days); the
	// ten-year intermediates, whose own expiry is far, stay OK. --fail-on warning fails,
	// --fail-on expired does not.
	r, rows := certCheck(t, dd)
	if r.code != 0 {
		t.Fatalf("check without --fail-on:\n%s", r)
	}
	intermediates := []string{"CN=e2e-server-ca", "CN=e2e-client-ca", "CN=e2e-request-header-ca"}
	shortCARows, ok := 0, 0
	for _, row := range rows {
		want := "WARNING"
		if slices.Contains(intermediates, row.Subject) {
			want = "OK"
			ok++
		} else if slices.Contains(row.Usages, "CertSign") {
			shortCARows++
		}
		if row.Status != want {
			t.Errorf("%s %s: %s, want %s", row.File, row.Subject, row.Status, want)
		}
	}
	// The root (after each of the three intermediates) and the two etcd CAs in the CA
	// files (the nochain copies hold no root), and one in the bundle of each leaf file.
	if want := 3 + 2 + len(serverLeaves(s.IP)); shortCARows != want {
		t.Errorf("%d rows of a CA expiring in 20 days, want %d", shortCARows, want)
	}
	r, _ = certCheck(t, dd, "--fail-on", "warning")
	if want := fmt.Sprintf("%d of %d certificates failed the check (--fail-on warning)", len(rows)-ok, len(rows)); r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("--fail-on warning: want exit 1 and %q:\n%s", want, r)
	}
	if r, _ = certCheck(t, dd, "--fail-on", "expired"); r.code != 0 {
		t.Errorf("--fail-on expired with nothing expired or missing:\n%s", r)
	}
	// Windows shorter than what is left: the CA rows are OK again.
	r, _ = certCheck(t, dd, "--fail-on", "warning", "--ca-warn-days", "10", "--renew-before-days", "10")
	if r.code != 0 {
		t.Errorf("--ca-warn-days 10 --renew-before-days 10 with 19 days left:\n%s", r)
	}

	// A restart signs nothing: no new audit entry, no file changed, and it warns again.
	s.Stop(t)
	audit := auditEntries(t, dd)
	before := hashTree(t, dd)
	s2 := startServerOn(t, s.Ports, dd, "--token", pw)
	s2.WaitReady(t)
	waitCAWarnings(t, s2, len(caFiles))
	s2.Stop(t)
	if after := auditEntries(t, dd); len(after) != len(audit) {
		t.Errorf("the restart wrote %d audit entries, want none: %v", len(after)-len(audit), after[len(audit):])
	}
	assertTreeUnchanged(t, "restart under a CA close to expiry", before, hashTree(t, dd))
	if strings.Contains(s2.Stderr(), "renewed certificate") || strings.Contains(s2.Stderr(), "issued certificate") {
		t.Errorf("the restart renewed or issued certificates:\n%s", s2.tail(60))
	}

	// A removed leaf file is MISSING and fails --fail-on expired.
	if err := os.Remove(filepath.Join(tlsDir, "client-admin.crt")); err != nil {
		t.Fatal(err)
	}
	r, rows = certCheck(t, dd, "--fail-on", "expired")
	if r.code != 1 || !strings.Contains(r.stderr, "1 of ") {
		t.Errorf("--fail-on expired with a missing file: want exit 1 and one failure:\n%s", r)
	}
	assertRow(t, rows, "server/tls/client-admin.crt", "MISSING", "does not exist")
	table := runKpki(t, nil, "certificate", "check", "--data-dir", dd)
	if !strings.Contains(table.stdout, "server/tls/client-admin.crt: MISSING: the file does not exist") {
		t.Errorf("table lacks the MISSING reason:\n%s", table)
	}

	// A corrupt certificate file is ERROR with the parse error.
	writeFile(t, filepath.Join(tlsDir, "client-controller.crt"), []byte("-----BEGIN CERTIFICATE-----\nnot base64\n"), 0o600)
	r, rows = certCheck(t, dd, "--fail-on", "expired")
	if r.code != 1 || !strings.Contains(r.stderr, "2 of ") {
		t.Errorf("--fail-on expired with a missing and a corrupt file: want exit 1 and two failures:\n%s", r)
	}
	assertRow(t, rows, "server/tls/client-admin.crt", "MISSING", "does not exist")
	assertRow(t, rows, "server/tls/client-controller.crt", "ERROR", "PEM")
}

// assertRow checks that file has exactly one row, of status with a message containing msg.
func assertRow(t *testing.T, rows []checkRow, file, status, msg string) {
	t.Helper()
	var got []checkRow
	for _, r := range rows {
		if r.File == file {
			got = append(got, r)
		}
	}
	if len(got) != 1 || got[0].Status != status || !strings.Contains(got[0].Message, msg) {
		t.Errorf("rows of %s: %+v, want one %s row saying %q", file, got, status, msg)
	}
}
