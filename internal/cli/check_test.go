package cli

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
)

// certCheckDataDir writes a small server data dir whose certificates, at the real current
// time, are: client-ca OK, client-admin OK, client-supervisor WARNING (65 days left),
// and, when expired is set, client-kube-proxy EXPIRED (35 days ago). Days-wide margins
// keep the statuses stable whatever the wall clock does during the test.
func certCheckDataDir(t *testing.T, expired bool) string {
	t.Helper()
	dir := t.TempDir()
	l := datadir.Layout{Root: dir}
	now := time.Now()
	day := 24 * time.Hour
	iss := pki.NewIssuer(clock.NewFake(now.Add(-400*day)), nil)
	key, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := iss.SelfSignedCA(key, "kpki-client-ca@1", 3650*day)
	if err != nil {
		t.Fatal(err)
	}
	ca := &pki.CA{Cert: caCert, Key: key, Bundle: []*x509.Certificate{caCert}, BundlePEM: pki.EncodeCert(caCert)}
	write := func(name string, data []byte) {
		t.Helper()
		p := l.TLS(name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	leaf := func(name string, issuedDaysAgo int) {
		t.Helper()
		iss.Clock = clock.NewFake(now.Add(-time.Duration(issuedDaysAgo) * day))
		k, err := iss.NewECKey()
		if err != nil {
			t.Fatal(err)
		}
		c, err := iss.SignLeaf(ca, k.Public(), pki.LeafProfile{CommonName: name, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, 365*day)
		if err != nil {
			t.Fatal(err)
		}
		write(name+".crt", certs.BuildCertFile(c, ca))
	}
	write(certs.CA(certs.ClientCA).CertFile, ca.BundlePEM)
	leaf("client-admin", 10)
	leaf("client-supervisor", 300)
	if expired {
		leaf("client-kube-proxy", 400)
	}
	return dir
}

type certCheckRow struct {
	Filename        string   `json:"filename"`
	Subject         string   `json:"subject"`
	Issuer          string   `json:"issuer"`
	Usages          []string `json:"usages"`
	Expires         string   `json:"expires"`
	ResidualSeconds int64    `json:"residual_seconds"`
	Residual        string   `json:"residual"`
	Status          string   `json:"status"`
}

func runCertCheck(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Execute(append([]string{"certificate", "check"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestCheckJSON(t *testing.T) {
	dir := certCheckDataDir(t, false)
	code, out, errOut := runCertCheck(t, "--data-dir", dir, "-o", "json")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	var rows []certCheckRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := []struct{ file, subject, status string }{
		{"server/tls/client-ca.crt", "CN=kpki-client-ca@1", "OK"},
		{"server/tls/client-admin.crt", "CN=client-admin", "OK"},
		{"server/tls/client-admin.crt", "CN=kpki-client-ca@1", "OK"},
		{"server/tls/client-supervisor.crt", "CN=client-supervisor", "WARNING"},
		{"server/tls/client-supervisor.crt", "CN=kpki-client-ca@1", "OK"},
	}
	if len(rows) != len(want) {
		t.Fatalf("got %d rows, want %d:\n%s", len(rows), len(want), out)
	}
	for i, w := range want {
		r := rows[i]
		if r.Filename != w.file || r.Subject != w.subject || r.Status != w.status || r.Issuer != "CN=kpki-client-ca@1" {
			t.Errorf("row %d = %+v, want %+v", i, r, w)
		}
	}
	if rows[3].Residual[:3] != "64d" && rows[3].Residual[:3] != "65d" {
		t.Errorf("supervisor residual = %q", rows[3].Residual)
	}
	if len(rows[0].Usages) != 1 || rows[0].Usages[0] != "CertSign" || rows[1].Usages[0] != "ClientAuth" {
		t.Errorf("usages = %v, %v", rows[0].Usages, rows[1].Usages)
	}
}

func TestCheckFailOn(t *testing.T) {
	warnOnly := certCheckDataDir(t, false)
	withExpired := certCheckDataDir(t, true)
	tests := []struct {
		name    string
		dir     string
		args    []string
		code    int
		wantErr string
	}{
		{"no threshold, warnings", warnOnly, nil, 0, ""},
		{"no threshold, expired", withExpired, nil, 0, ""},
		{"warning threshold, warnings", warnOnly, []string{"--fail-on", "warning"}, 1, "kpki: 1 of 5 certificates failed the check (--fail-on warning)\n"},
		{"warning threshold, expired", withExpired, []string{"--fail-on", "warning"}, 1, "kpki: 2 of 7 certificates failed the check (--fail-on warning)\n"},
		{"expired threshold, warnings", warnOnly, []string{"--fail-on", "expired"}, 0, ""},
		{"expired threshold, expired", withExpired, []string{"--fail-on=expired"}, 1, "kpki: 1 of 7 certificates failed the check (--fail-on expired)\n"},
		{"smaller renew window clears the warning", warnOnly, []string{"--fail-on", "warning", "--renew-before-days", "30"}, 0, ""},
		{"selected services only", withExpired, []string{"--fail-on", "warning", "--service", "admin"}, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCertCheck(t, append([]string{"--data-dir", tt.dir, "-o", "json"}, tt.args...)...)
			if code != tt.code || errOut != tt.wantErr {
				t.Errorf("exit %d, stderr %q; want %d, %q", code, errOut, tt.code, tt.wantErr)
			}
			var rows []certCheckRow
			if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) == 0 {
				t.Errorf("report not printed in full (%v):\n%s", err, out)
			}
		})
	}
}

func TestCheckServiceFlag(t *testing.T) {
	dir := certCheckDataDir(t, true)
	files := func(out string) []string {
		var rows []certCheckRow
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		var fs []string
		for _, r := range rows {
			if len(fs) == 0 || fs[len(fs)-1] != r.Filename {
				fs = append(fs, r.Filename)
			}
		}
		return fs
	}
	code, out, errOut := runCertCheck(t, "--data-dir", dir, "-o", "json", "--service", "kube-proxy,admin", "--service", "supervisor", "--service", "rke2-server")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	want := "server/tls/client-admin.crt server/tls/client-supervisor.crt server/tls/client-kube-proxy.crt"
	if got := strings.Join(files(out), " "); got != want {
		t.Errorf("files = %s, want %s", got, want)
	}

	code, out, errOut = runCertCheck(t, "--data-dir", dir, "--service", "admin,nope")
	if code != 1 || out != "" || !strings.HasPrefix(errOut, "kpki: service nope is not recognized; valid services: ") {
		t.Errorf("unknown service: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	code, out, errOut = runCertCheck(t, "--data-dir", dir, "--service", "kubelet")
	if code != 1 || out != "" || !strings.Contains(errOut, "no certificate file found for the selected services in data dir "+dir) {
		t.Errorf("agent service on a server: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestCheckFormatsAndErrors(t *testing.T) {
	dir := certCheckDataDir(t, true)
	code, out, _ := runCertCheck(t, "--data-dir", dir)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 8 || !strings.HasPrefix(lines[0], "FILENAME") || !strings.HasSuffix(lines[0], "RESIDUAL TIME  STATUS") {
		t.Errorf("default table: exit %d\n%s", code, out)
	}
	code, out, _ = runCertCheck(t, "--data-dir", dir, "-o", "text")
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 7 || !strings.HasPrefix(lines[0], "server/tls/client-ca.crt: OK; subject CN=kpki-client-ca@1;") ||
		!strings.HasPrefix(lines[5], "server/tls/client-kube-proxy.crt: EXPIRED; ") {
		t.Errorf("text: exit %d\n%s", code, out)
	}
	code, out, _ = runCertCheck(t, "--data-dir", dir, "--output", "yaml")
	if code != 0 || !strings.HasPrefix(out, "- expires: ") || !strings.Contains(out, "  status: EXPIRED\n") {
		t.Errorf("yaml: exit %d\n%s", code, out)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", "wide"}, `kpki: unknown output format "wide"; valid formats: table, text, json, yaml` + "\n"},
		{[]string{"--fail-on", "sometimes"}, `kpki: unknown --fail-on value "sometimes"; valid values: warning, expired` + "\n"},
		{[]string{"--renew-before-days", "-1"}, "kpki: --renew-before-days -1 must be at least 0\n"},
	} {
		code, out, errOut := runCertCheck(t, append([]string{"--data-dir", dir}, tt.args...)...)
		if code != 1 || out != "" || errOut != tt.want {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %q", tt.args, code, out, errOut, tt.want)
		}
	}

	missing := filepath.Join(t.TempDir(), "nothing-here")
	code, out, errOut := runCertCheck(t, "--data-dir", missing)
	if code != 1 || out != "" || !strings.Contains(errOut, "no certificate file found in data dir "+missing) {
		t.Errorf("missing data dir: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestCheckCorruptFile(t *testing.T) {
	dir := certCheckDataDir(t, false)
	if err := os.WriteFile(datadir.Layout{Root: dir}.TLS("client-admin.crt"), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCertCheck(t, "--data-dir", dir, "-o", "json", "--fail-on", "expired")
	if code != 1 || errOut != "kpki: 1 of 4 certificates failed the check (--fail-on expired)\n" {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(rows) != 4 || rows[1]["filename"] != "server/tls/client-admin.crt" || rows[1]["status"] != "ERROR" || rows[1]["message"] == "" {
		t.Errorf("rows = %v", rows)
	}
}
