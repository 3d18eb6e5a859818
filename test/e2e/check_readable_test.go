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
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// checkReport is the documented -o json schema of `kpki certificate check`.
type checkReport struct {
	Certificates []struct {
		File            string   `json:"filename"`
		Service         string   `json:"service"`
		Index           *int     `json:"index"`
		CA              *bool    `json:"ca"`
		SHA256          *string  `json:"sha256"`
		Subject         *string  `json:"subject"`
		Issuer          *string  `json:"issuer"`
		Usages          []string `json:"usages"`
		Expires         string   `json:"expires"`
		ResidualSeconds *int64   `json:"residual_seconds"`
		Residual        *string  `json:"residual"`
		Status          string   `json:"status"`
	} `json:"certificates"`
	Summary *struct {
		Total          *int           `json:"total"`
		Counts         map[string]int `json:"counts"`
		EarliestExpiry *struct {
			File            string `json:"filename"`
			Subject         string `json:"subject"`
			Expires         string `json:"expires"`
			ResidualSeconds int64  `json:"residual_seconds"`
		} `json:"earliest_expiry"`
	} `json:"summary"`
}

// expectedFold reads the server's files: the number of leaf files, the number of distinct
// CA certificates (CA files and the chains bundled in leaf files), and the leaf certificate
// that expires first.
func expectedFold(t *testing.T, s *kpkiServer) (leaves, cas int, firstFile string, first *x509.Certificate) {
	t.Helper()
	seen := map[string]bool{}
	for _, name := range caFiles {
		names := []string{name + ".crt"}
		if name == "server-ca" || name == "client-ca" {
			names = append(names, name+".nochain.crt")
		}
		for _, n := range names {
			for _, c := range readCerts(t, filepath.Join(s.TLSDir(), n)) {
				seen[string(c.Raw)] = true
			}
		}
	}
	for _, l := range serverLeaves(s.IP) {
		cs := readCerts(t, filepath.Join(s.TLSDir(), l.file+".crt"))
		leaves++
		for _, c := range cs[1:] {
			if c.IsCA {
				seen[string(c.Raw)] = true
			}
		}
		if first == nil || cs[0].NotAfter.Before(first.NotAfter) {
			first, firstFile = cs[0], "server/tls/"+l.file+".crt"
		}
	}
	return leaves, len(seen), firstFile, first
}

func assertReadableCheck(t *testing.T, s *kpkiServer) {
	t.Helper()
	leaves, cas, firstFile, first := expectedFold(t, s)
	r := kpkiOK(t, "certificate", "check", "--data-dir", s.DataDir)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	for _, l := range lines {
		if n := utf8.RuneCountInString(l); n > 120 {
			t.Errorf("line of %d characters (> 120): %q", n, l)
		}
	}
	if got := len(lines) - 2; got != leaves+cas {
		t.Errorf("%d rows, want %d leaf files + %d distinct CA certificates:\n%s", got, leaves, cas, r.stdout)
	}
	last := lines[len(lines)-1]
	wantTail := fmt.Sprintf("earliest expiry %s (", first.NotAfter.UTC().Format("2006-01-02"))
	if !strings.HasPrefix(last, fmt.Sprintf("summary: %d certificates: %d OK; ", leaves+cas, leaves+cas)) ||
		!strings.Contains(last, wantTail) || !strings.HasSuffix(last, ") "+firstFile) {
		t.Errorf("summary line %q, want %d OK and earliest expiry %s %s", last, leaves+cas, first.NotAfter, firstFile)
	}

	all := kpkiOK(t, "certificate", "check", "--all", "--data-dir", s.DataDir)
	r = kpkiOK(t, "certificate", "check", "-o", "json", "--data-dir", s.DataDir)
	var rep checkReport
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("check -o json does not follow the documented schema: %v\n%s", err, r.stdout)
	}
	if got, want := len(rep.Certificates), len(strings.Split(strings.TrimSuffix(all.stdout, "\n"), "\n"))-2; got != want {
		t.Errorf("json holds %d certificates, --all lists %d", got, want)
	}
	for _, c := range rep.Certificates {
		if c.Index == nil || c.CA == nil || c.SHA256 == nil || *c.SHA256 == "" || c.Subject == nil || c.Issuer == nil ||
			c.ResidualSeconds == nil || c.Residual == nil || c.Usages == nil || c.Status != "OK" || c.Service == "" {
			t.Errorf("certificate object lacks a documented field or is not OK: %+v", c)
		}
		if _, err := time.Parse(time.RFC3339, c.Expires); err != nil {
			t.Errorf("expires %q: %v", c.Expires, err)
		}
	}
	sum := rep.Summary
	if sum == nil || sum.Total == nil || *sum.Total != leaves+cas || len(sum.Counts) != 1 || sum.Counts["OK"] != leaves+cas ||
		sum.EarliestExpiry == nil || sum.EarliestExpiry.File != firstFile || sum.EarliestExpiry.Expires != first.NotAfter.UTC().Format(time.RFC3339) {
		t.Errorf("summary = %+v, want total %d, all OK, earliest %s", sum, leaves+cas, firstFile)
	}
}

func TestCheckReadable(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "data")
	s := startServer(t, dd)
	s.WaitReady(t)
	t.Run("fresh server", func(t *testing.T) { assertReadableCheck(t, s) })

	t.Run("rotate --dry-run while the server runs", func(t *testing.T) {
		before := hashTree(t, dd)
		r := kpkiOK(t, "certificate", "rotate", "--dry-run", "--data-dir", dd)
		if !strings.Contains(r.stdout, "dry run: nothing was changed") {
			t.Errorf("dry run output:\n%s", r)
		}
		assertTreeUnchanged(t, "rotate --dry-run while the server runs", before, hashTree(t, dd))
		r = runKpki(t, nil, "certificate", "rotate", "--data-dir", dd)
		assertRefused(t, r, anyOf("running", "lock"))
		assertTreeUnchanged(t, "rotate while the server runs", before, hashTree(t, dd))
	})

	t.Run("refused rotate-ca lists each failed check", func(t *testing.T) {
		files := map[string][]byte{}
		for _, name := range []string{"server-ca", "client-ca"} {
			cert, key := unrelatedCAPEM(t, "unrelated-"+name)
			files["tls/"+name+".crt"], files["tls/"+name+".key"] = cert, key
		}
		stage := writeStaged(t, files)
		r := rotateCA(t, s, stage)
		assertRefused(t, r, anyOf("server-ca.crt"), anyOf("client-ca.crt"))
		lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
		var checks, hints []string
		for _, l := range lines {
			if strings.HasPrefix(l, "  - ") {
				checks = append(checks, l)
			}
			if strings.HasPrefix(l, "hint: ") {
				hints = append(hints, l)
			}
		}
		if len(checks) != 2 || !strings.Contains(checks[0], "server-ca.crt") || !strings.Contains(checks[1], "client-ca.crt") {
			t.Errorf("want one line per failed check (server-ca.crt, client-ca.crt):\n%s", r.stderr)
		}
		if len(hints) != 1 || strings.Count(r.stderr, strings.TrimPrefix(hints[0], "hint: ")) != 1 {
			t.Errorf("want the shared hint once:\n%s", r.stderr)
		}
		for _, l := range lines {
			if len(l) > 300 {
				t.Errorf("line of %d characters:\n%s", len(l), l)
			}
		}
	})

	kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", dd)
	rotateOK := rotateCA(t, s, filepath.Join(dd, "server", "rotate-ca"))
	if rotateOK.code != 0 {
		t.Fatalf("rotate-ca:\n%s", rotateOK)
	}
	s.Stop(t)
	s = startServerOn(t, s.Ports, dd)
	s.WaitReady(t)
	t.Run("after cross-sign-ca, rotate-ca and a restart", func(t *testing.T) { assertReadableCheck(t, s) })

	kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", dd)
	assertRotateCASaved(t, rotateCA(t, s, filepath.Join(dd, "server", "rotate-ca")))
	s.Stop(t)
	s = startServerOn(t, s.Ports, dd)
	s.WaitReady(t)
	t.Run("after two rotations", func(t *testing.T) {
		assertReadableCheck(t, s)
		assertRowsApart(t, s)
		assertFailOnCountsRows(t, s)
	})
	s.Stop(t)
}

// tableRows returns the cells of the rows of a check table (between the header and the
// blank line or summary that follows them).
func tableRows(t *testing.T, out string) [][]string {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	var rows [][]string
	for _, l := range lines[1:] {
		if l == "" || strings.HasPrefix(l, "summary: ") {
			break
		}
		rows = append(rows, regexp.MustCompile(`\s{2,}`).Split(l, -1))
	}
	return rows
}

// assertRowsApart checks that an operator can tell every row of the table apart after
// rotations: no two rows alike, and each CA row's subject and issuer keep the role and
// the creation time of the name (what sets a root, its intermediate and the generations of
// a CA apart), as the json report holds them in full.
func assertRowsApart(t *testing.T, s *kpkiServer) {
	t.Helper()
	r := kpkiOK(t, "certificate", "check", "--data-dir", s.DataDir)
	rows := tableRows(t, r.stdout)
	seen := map[string]bool{}
	caRows := 0
	for _, c := range rows {
		key := strings.Join(c, "|")
		if seen[key] {
			t.Errorf("two rows read alike: %q\n%s", c, r.stdout)
		}
		seen[key] = true
		if c[0] == "ca" {
			caRows++
		}
	}
	var rep checkReport
	if err := json.Unmarshal([]byte(kpkiOK(t, "certificate", "check", "-o", "json", "--data-dir", s.DataDir).stdout), &rep); err != nil {
		t.Fatal(err)
	}
	// The distinct CA certificates, in the table's order, with their names.
	var cas [][2]string
	fps := map[string]bool{}
	for _, c := range rep.Certificates {
		if *c.CA && !fps[*c.SHA256] {
			fps[*c.SHA256] = true
			cas = append(cas, [2]string{strings.TrimPrefix(*c.Subject, "CN="), strings.TrimPrefix(*c.Issuer, "CN=")})
		}
	}
	if caRows != len(cas) || caRows < 4*5 {
		t.Fatalf("%d CA rows, %d distinct CA certificates in the json report (want 4 per CA after two rotations)", caRows, len(cas))
	}
	roleAndTime := regexp.MustCompile(`-[a-z]+@[0-9]+$`)
	for i, names := range cas {
		for j, cn := range names {
			cellText := rows[i][2+j]
			want := roleAndTime.FindString(cn)
			if want == "" || !strings.HasSuffix(cellText, want) {
				t.Errorf("row %d %q: %q does not end with the role and time %q of %s", i, rows[i], cellText, want, cn)
			}
		}
	}
}

// assertFailOnCountsRows checks that --fail-on counts the rows of the table, and says
// how many certificates that is when CA certificates bundled in many files fail: with a
// CA window longer than any CA's life every CA row is WARNING.
func assertFailOnCountsRows(t *testing.T, s *kpkiServer) {
	t.Helper()
	r := runKpki(t, nil, "certificate", "check", "--data-dir", s.DataDir, "--ca-warn-days", "100000", "--fail-on", "warning")
	rows := tableRows(t, r.stdout)
	warn := 0
	for _, c := range rows {
		if c[len(c)-1] == "WARNING" {
			warn++
		}
	}
	all := runKpki(t, nil, "certificate", "check", "--data-dir", s.DataDir, "--ca-warn-days", "100000", "--fail-on", "warning", "-o", "json")
	var rep checkReport
	if err := json.Unmarshal([]byte(all.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	allWarn := 0
	for _, c := range rep.Certificates {
		if c.Status == "WARNING" {
			allWarn++
		}
	}
	want := fmt.Sprintf("kpki: %d of %d certificates failed the check (--fail-on warning); counting each file's copy of a CA certificate, %d of %d (--all lists them)\n",
		warn, len(rows), allWarn, len(rep.Certificates))
	if r.code != 1 || r.stderr != want || warn == 0 || warn == allWarn {
		t.Errorf("table --fail-on: exit %d, stderr %q, want %q", r.code, r.stderr, want)
	}
	if want := fmt.Sprintf("kpki: %d of %d certificates failed the check (--fail-on warning)\n", allWarn, len(rep.Certificates)); all.code != 1 || all.stderr != want {
		t.Errorf("json --fail-on: exit %d, stderr %q, want %q", all.code, all.stderr, want)
	}
}

// unrelatedCAPEM returns a new self-signed CA certificate named cn and its key, PEM.
func unrelatedCAPEM(t *testing.T, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(3650 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}
