package cli

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"fmt"
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

// certCheckDataDir writes a complete server data dir (every CA file and every server
// leaf) whose certificates, at the real current time, are all OK except
// client-supervisor, WARNING (65 days left), and, when expired is set, client-kube-proxy,
// EXPIRED (35 days ago). The CAs were made 400 days ago for ten years. Days-wide margins
// keep the statuses stable whatever the wall clock does during the test.
func certCheckDataDir(t *testing.T, expired bool) string {
	t.Helper()
	dir := t.TempDir()
	l := datadir.Layout{Root: dir}
	now := time.Now()
	day := 24 * time.Hour
	iss := pki.NewIssuer(clock.NewFake(now.Add(-400*day)), nil)
	write := func(name string, data []byte) {
		t.Helper()
		p := l.TLS(filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cas := map[certs.CAID]*pki.CA{}
	for _, spec := range certs.CAs {
		key, err := iss.NewECKey()
		if err != nil {
			t.Fatal(err)
		}
		caCert, err := iss.SelfSignedCA(key, spec.CNPrefix+"@1", 3650*day)
		if err != nil {
			t.Fatal(err)
		}
		ca := &pki.CA{Cert: caCert, Key: key, Bundle: []*x509.Certificate{caCert}, BundlePEM: pki.EncodeCert(caCert)}
		cas[spec.ID] = ca
		write(spec.CertFile, ca.BundlePEM)
		if spec.NoChainFile != "" {
			write(spec.NoChainFile, ca.BundlePEM)
		}
	}
	for _, lf := range certs.Select(certs.ServerNode, nil) {
		issued := 10
		switch {
		case lf.Name == "client-supervisor":
			issued = 300
		case lf.Name == "client-kube-proxy" && expired:
			issued = 400
		}
		iss.Clock = clock.NewFake(now.Add(-time.Duration(issued) * day))
		k, err := iss.NewECKey()
		if err != nil {
			t.Fatal(err)
		}
		ca := cas[lf.Signer]
		c, err := iss.SignLeaf(ca, k.Public(), pki.LeafProfile{CommonName: lf.Name, ExtKeyUsage: lf.Usage}, 365*day)
		if err != nil {
			t.Fatal(err)
		}
		write(lf.Name+".crt", certs.BuildCertFile(c, ca))
	}
	return dir
}

// certCheckRows is the number of certificates certCheckDataDir writes: one per CA file,
// two (leaf and CA) per leaf file.
var certCheckRows = len(certs.NodeCAFiles(certs.ServerNode)) + 2*len(certs.Select(certs.ServerNode, nil))

// rowsOf returns the rows of file.
func rowsOf(rows []certCheckRow, file string) []certCheckRow {
	var out []certCheckRow
	for _, r := range rows {
		if r.Filename == file {
			out = append(out, r)
		}
	}
	return out
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
	if err := unmarshalCheck(out, &rows); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(rows) != certCheckRows {
		t.Fatalf("got %d rows, want %d:\n%s", len(rows), certCheckRows, out)
	}
	if rows[0].Filename != "server/tls/server-ca.crt" {
		t.Errorf("first row %+v, want server-ca.crt", rows[0])
	}
	want := []struct{ file, subject, status string }{
		{"server/tls/client-ca.crt", "CN=kpki-client-ca@1", "OK"},
		{"server/tls/client-admin.crt", "CN=client-admin", "OK"},
		{"server/tls/client-admin.crt", "CN=kpki-client-ca@1", "OK"},
		{"server/tls/client-supervisor.crt", "CN=client-supervisor", "WARNING"},
		{"server/tls/client-supervisor.crt", "CN=kpki-client-ca@1", "OK"},
	}
	var got []certCheckRow
	for _, f := range []string{"server/tls/client-ca.crt", "server/tls/client-admin.crt", "server/tls/client-supervisor.crt"} {
		got = append(got, rowsOf(rows, f)...)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d rows of the three files, want %d:\n%s", len(got), len(want), out)
	}
	for i, w := range want {
		r := got[i]
		if r.Filename != w.file || r.Subject != w.subject || r.Status != w.status || r.Issuer != "CN=kpki-client-ca@1" {
			t.Errorf("row %d = %+v, want %+v", i, r, w)
		}
	}
	for _, r := range rows {
		if r.Status != "OK" && r.Filename != "server/tls/client-supervisor.crt" {
			t.Errorf("%s %s: %s, want OK", r.Filename, r.Subject, r.Status)
		}
	}
	if got[3].Residual[:3] != "64d" && got[3].Residual[:3] != "65d" {
		t.Errorf("supervisor residual = %q", got[3].Residual)
	}
	if len(got[0].Usages) != 1 || got[0].Usages[0] != "CertSign" || got[1].Usages[0] != "ClientAuth" {
		t.Errorf("usages = %v, %v", got[0].Usages, got[1].Usages)
	}
}

func TestCheckFailOn(t *testing.T) {
	warnOnly := certCheckDataDir(t, false)
	withExpired := certCheckDataDir(t, true)
	withMissing := certCheckDataDir(t, false)
	if err := os.Remove(datadir.Layout{Root: withMissing}.TLS("client-admin.crt")); err != nil {
		t.Fatal(err)
	}
	n := certCheckRows
	failed := func(k, total int, th string) string {
		return fmt.Sprintf("kpki: %d of %d certificates failed the check (--fail-on %s)\n", k, total, th)
	}
	// CA rows: one per CA file and one in each leaf file's bundle.
	caRows := len(certs.NodeCAFiles(certs.ServerNode)) + len(certs.Select(certs.ServerNode, nil))
	tests := []struct {
		name    string
		dir     string
		args    []string
		env     []string
		code    int
		wantErr string
	}{
		{"no threshold, warnings", warnOnly, nil, nil, 0, ""},
		{"no threshold, expired", withExpired, nil, nil, 0, ""},
		{"no threshold, missing", withMissing, nil, nil, 0, ""},
		{"warning threshold, warnings", warnOnly, []string{"--fail-on", "warning"}, nil, 1, failed(1, n, "warning")},
		{"warning threshold, expired", withExpired, []string{"--fail-on", "warning"}, nil, 1, failed(2, n, "warning")},
		{"warning threshold, missing", withMissing, []string{"--fail-on", "warning"}, nil, 1, failed(2, n-1, "warning")},
		{"expired threshold, warnings", warnOnly, []string{"--fail-on", "expired"}, nil, 0, ""},
		{"expired threshold, expired", withExpired, []string{"--fail-on=expired"}, nil, 1, failed(1, n, "expired")},
		{"expired threshold, missing", withMissing, []string{"--fail-on", "expired"}, nil, 1, failed(1, n-1, "expired")},
		{"smaller renew window clears the warning", warnOnly, []string{"--fail-on", "warning", "--renew-before-days", "30"}, nil, 0, ""},
		{"selected services only", withExpired, []string{"--fail-on", "warning", "--service", "admin"}, nil, 0, ""},
		{"CA window reaching the CAs", warnOnly, []string{"--fail-on", "warning", "--ca-warn-days", "3300"}, nil, 1, failed(1+caRows, n, "warning")},
		{"CA window from the environment", warnOnly, []string{"--fail-on", "warning"}, []string{"KPKI_CA_WARN_DAYS=3300"}, 1, failed(1+caRows, n, "warning")},
		{"CA window short of the CAs", warnOnly, []string{"--fail-on", "warning", "--ca-warn-days", "3200"}, nil, 1, failed(1, n, "warning")},
		{"CA warnings do not fail --fail-on expired", warnOnly, []string{"--fail-on", "expired", "--ca-warn-days", "3300"}, nil, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, kv := range tt.env {
				k, v, _ := strings.Cut(kv, "=")
				t.Setenv(k, v)
			}
			code, out, errOut := runCertCheck(t, append([]string{"--data-dir", tt.dir, "-o", "json"}, tt.args...)...)
			if code != tt.code || errOut != tt.wantErr {
				t.Errorf("exit %d, stderr %q; want %d, %q", code, errOut, tt.code, tt.wantErr)
			}
			var rows []certCheckRow
			if err := unmarshalCheck(out, &rows); err != nil || len(rows) == 0 {
				t.Errorf("report not printed in full (%v):\n%s", err, out)
			}
		})
	}
}

func TestCheckServiceFlag(t *testing.T) {
	dir := certCheckDataDir(t, true)
	files := func(out string) []string {
		var rows []certCheckRow
		if err := unmarshalCheck(out, &rows); err != nil {
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
	want := "server/tls/client-admin.crt server/tls/client-supervisor.crt server/tls/client-kube-proxy.crt server/tls/serving-supervisor.crt"
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
	code, out, _ := runCertCheck(t, "--data-dir", dir, "--all")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 1+certCheckRows+1 || !strings.HasPrefix(lines[0], "SERVICE ") || !strings.HasSuffix(lines[0], "LEFT   STATUS") ||
		!strings.HasPrefix(lines[len(lines)-1], "summary: ") {
		t.Errorf("default table: exit %d, %d lines for %d certificates\n%s", code, len(lines), certCheckRows, out)
	}
	code, out, _ = runCertCheck(t, "--data-dir", dir, "-o", "text", "--all")
	lines = strings.Split(strings.TrimSpace(out), "\n")
	lines = lines[:len(lines)-1]
	hasLine := func(prefix string) bool {
		for _, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return true
			}
		}
		return false
	}
	if code != 0 || len(lines) != certCheckRows || !strings.HasPrefix(lines[0], "server/tls/server-ca.crt: OK; subject CN=kpki-server-ca@1;") ||
		!hasLine("server/tls/client-ca.crt: OK; subject CN=kpki-client-ca@1;") || !hasLine("server/tls/client-kube-proxy.crt: EXPIRED; ") {
		t.Errorf("text: exit %d\n%s", code, out)
	}
	code, out, _ = runCertCheck(t, "--data-dir", dir, "--output", "yaml")
	if code != 0 || !strings.HasPrefix(out, "certificates:\n- ca: true\n") || !strings.Contains(out, "  status: EXPIRED\n") {
		t.Errorf("yaml: exit %d\n%s", code, out)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", "wide"}, `kpki: unknown output format "wide"; valid formats: table, text, json, yaml` + "\n"},
		{[]string{"--fail-on", "sometimes"}, `kpki: unknown --fail-on value "sometimes"; valid values: warning, expired` + "\n"},
		{[]string{"--renew-before-days", "-1"}, "kpki: --renew-before-days -1 must be at least 0\n"},
		{[]string{"--ca-warn-days", "-1"}, "kpki: --ca-warn-days -1 must be at least 0\n"},
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
	if want := fmt.Sprintf("kpki: 1 of %d certificates failed the check (--fail-on expired)\n", certCheckRows-1); code != 1 || errOut != want {
		t.Errorf("exit %d, stderr %q, want %q", code, errOut, want)
	}
	var rows []map[string]any
	if err := unmarshalCheck(out, &rows); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	n := 0
	for _, r := range rows {
		if r["filename"] == "server/tls/client-admin.crt" {
			n++
			if r["status"] != "ERROR" || r["message"] == "" || r["message"] == nil {
				t.Errorf("corrupt file row %v", r)
			}
		}
	}
	if len(rows) != certCheckRows-1 || n != 1 {
		t.Errorf("%d rows, %d for the corrupt file: %v", len(rows), n, rows)
	}
}

// TestCheckMissingFile checks the table and YAML forms of a MISSING row.
func TestCheckMissingFile(t *testing.T) {
	dir := certCheckDataDir(t, false)
	if err := os.Remove(datadir.Layout{Root: dir}.TLS("etcd", "peer-ca.crt")); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCertCheck(t, "--data-dir", dir, "--fail-on", "expired")
	tableRows := strings.Index(out, "\n\n")
	tableRows = strings.Count(out[:max(tableRows, 0)], "\n") // the rows after the header line
	if want := fmt.Sprintf("kpki: 1 of %d certificates failed the check (--fail-on expired)\n", tableRows); code != 1 || errOut != want || tableRows >= certCheckRows {
		t.Errorf("exit %d, stderr %q, want %q (the %d rows of the table, not the %d certificates)", code, errOut, want, tableRows, certCheckRows)
	}
	_, _, errAll := runCertCheck(t, "--data-dir", dir, "--fail-on", "expired", "--all")
	if want := fmt.Sprintf("kpki: 1 of %d certificates failed the check (--fail-on expired)\n", certCheckRows); errAll != want {
		t.Errorf("--all: stderr %q, want %q", errAll, want)
	}
	var row string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "ca ") && strings.Contains(l, " etcd/peer-ca.crt ") {
			row = l
		}
	}
	if f := strings.Fields(row); len(f) != 7 || f[2] != "-" || f[5] != "-" || f[6] != "MISSING" {
		t.Errorf("table row %q, want dashes and MISSING:\n%s", row, out)
	}
	if !strings.Contains(out, "\n\nserver/tls/etcd/peer-ca.crt: MISSING: the file does not exist\nsummary: ") {
		t.Errorf("table does not end with the reason:\n%s", out)
	}
	_, out, _ = runCertCheck(t, "--data-dir", dir, "-o", "yaml")
	if !strings.Contains(out, "  filename: server/tls/etcd/peer-ca.crt\n  index: 0\n  issuer: \"\"\n  message: the file does not exist\n") || !strings.Contains(out, "  status: MISSING\n") {
		t.Errorf("yaml lacks the MISSING row:\n%s", out)
	}
}

// unmarshalCheck decodes the certificates of a `check -o json` report into rows.
func unmarshalCheck(out string, rows any) error {
	var rep struct {
		Certificates json.RawMessage `json:"certificates"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		return err
	}
	return json.Unmarshal(rep.Certificates, rows)
}
