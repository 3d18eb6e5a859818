package certcheck

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"sigs.k8s.io/yaml"
)

// sampleRows is a report with one row of every status, collected from a real data dir
// plus a corrupt file and a missing one.
func sampleRows(t *testing.T) []Row {
	t.Helper()
	f := newFixture(t).server()
	f.write(f.l.TLS("client-admin.crt"), []byte("garbage"))
	if err := os.Remove(f.l.TLS("etcd", "client.crt")); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(300 * day)
	rows, err := Collect(Options{DataDir: f.dir, Services: []string{"admin", "supervisor", "etcd"}, Now: now, RenewBefore: renewWindow})
	if err != nil {
		t.Fatal(err)
	}
	// Re-evaluate two leaves at other instants to get EXPIRED and NOT YET VALID rows.
	cs := parseFile(t, f.leafFile(leafNamed(t, "client-kube-proxy")))
	expired := Evaluate("server/tls/client-kube-proxy.crt", cs[0], t0.Add(368*day+2*time.Hour), renewWindow, 0)
	notYet := Evaluate("server/tls/client-kube-proxy.crt", cs[1], t0.Add(-2*time.Hour), renewWindow, 0)
	expired.Service, notYet.Service, notYet.Index = "kube-proxy", "kube-proxy", 1
	rows = append(rows, expired, notYet)
	seen := map[Status]bool{}
	for _, r := range rows {
		seen[r.Status] = true
	}
	for _, s := range []Status{StatusOK, StatusWarning, StatusExpired, StatusNotYetValid, StatusMissing, StatusError} {
		if !seen[s] {
			t.Fatalf("sample has no %s row", s)
		}
	}
	return rows
}

func TestRenderJSON(t *testing.T) {
	rows := sampleRows(t)
	var buf bytes.Buffer
	if err := Render(&buf, rows, FormatJSON, false); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatalf("unmarshal: %v\n%s", err, buf.String())
	}
	if !reflect.DeepEqual(back.Certificates, rows) {
		t.Errorf("round trip differs:\n got %+v\nwant %+v", back.Certificates, rows)
	}
	if !reflect.DeepEqual(back.Summary, Summarize(rows)) {
		t.Errorf("summary = %+v, want %+v", back.Summary, Summarize(rows))
	}
	var doc struct {
		Certificates []map[string]any `json:"certificates"`
		Summary      map[string]any   `json:"summary"`
	}
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	objs := doc.Certificates
	if _, ok := doc.Summary["counts"].(map[string]any); !ok || doc.Summary["total"] == nil || doc.Summary["earliest_expiry"] == nil {
		t.Errorf("summary object = %v", doc.Summary)
	}
	for i, o := range objs {
		var keys []string
		for k := range o {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		want := []string{"ca", "expires", "filename", "index", "issuer", "residual", "residual_seconds", "service", "sha256", "status", "subject", "usages"}
		if rows[i].Message != "" {
			want = []string{"ca", "expires", "filename", "index", "issuer", "message", "residual", "residual_seconds", "service", "sha256", "status", "subject", "usages"}
		}
		if !reflect.DeepEqual(keys, want) {
			t.Errorf("object %d keys = %v, want %v", i, keys, want)
		}
		if _, ok := o["usages"].([]any); !ok {
			t.Errorf("object %d usages = %#v, want an array", i, o["usages"])
		}
	}
	if objs[0]["filename"] != "server/tls/client-admin.crt" || objs[0]["status"] != "ERROR" {
		t.Errorf("first object = %v", objs[0])
	}
	if objs[1]["usages"].([]any)[0] != "ClientAuth" || objs[1]["status"] != "WARNING" || objs[1]["residual"] != "65d 0h" || objs[1]["residual_seconds"] != float64(65*24*3600) {
		t.Errorf("second object = %v", objs[1])
	}

	buf.Reset()
	if err := Render(&buf, nil, FormatJSON, false); err != nil {
		t.Fatal(err)
	}
	var empty map[string]any
	if err := json.Unmarshal(buf.Bytes(), &empty); err != nil || fmt.Sprint(empty["certificates"]) != "[]" {
		t.Errorf("empty report = %q, want an empty certificates array", buf.String())
	}
}

func TestRenderYAML(t *testing.T) {
	rows := sampleRows(t)
	var buf bytes.Buffer
	if err := Render(&buf, rows, FormatYAML, false); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := yaml.UnmarshalStrict(buf.Bytes(), &back); err != nil {
		t.Fatalf("unmarshal: %v\n%s", err, buf.String())
	}
	if !reflect.DeepEqual(back.Certificates, rows) || !reflect.DeepEqual(back.Summary, Summarize(rows)) {
		t.Errorf("round trip differs:\n got %+v\nwant %+v", back, rows)
	}
	for _, key := range []string{"certificates:\n- ca: false\n", "  filename: server/tls/client-supervisor.crt", "  residual_seconds:", "  status: NOT YET VALID", "  usages:\n  - ClientAuth", "summary:\n  counts:\n", "  earliest_expiry:\n"} {
		if !strings.Contains(buf.String(), key) {
			t.Errorf("YAML lacks %q:\n%s", key, buf.String())
		}
	}
}

var columnSep = regexp.MustCompile(`\s{2,}`)

func TestRenderTable(t *testing.T) {
	rows := sampleRows(t)
	var buf bytes.Buffer
	if err := Render(&buf, rows, FormatTable, true); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if got := columnSep.Split(lines[0], -1); !reflect.DeepEqual(got, TableHeader) {
		t.Fatalf("header = %q", got)
	}
	statusCol := utf8.RuneCountInString(lines[0][:strings.Index(lines[0], "STATUS")])
	for i, r := range rows {
		line := lines[1+i]
		cols := columnSep.Split(line, -1)
		if len(cols) != len(TableHeader) {
			t.Errorf("line %q has %d columns, want %d", line, len(cols), len(TableHeader))
			continue
		}
		if cols[0] != r.Service || !fileShownAs(cols[1], strings.TrimPrefix(r.File, "server/tls/")) || cols[6] != string(r.Status) || string([]rune(line)[statusCol:]) != string(r.Status) {
			t.Errorf("line %q does not show row %+v aligned", line, r)
		}
		if !isProblem(r) && (!nameShownAs(cols[2], commonName(r.Subject)) || !nameShownAs(cols[3], commonName(r.Issuer)) || cols[4] != r.Expires[:10] || cols[5] != FormatResidualShort(time.Duration(r.ResidualSeconds)*time.Second)) {
			t.Errorf("line %q does not show row %+v", line, r)
		}
		if isProblem(r) && !reflect.DeepEqual(cols[2:6], []string{"-", "-", "-", "-"}) {
			t.Errorf("error line %q", line)
		}
		if strings.HasSuffix(line, " ") {
			t.Errorf("line %q has trailing spaces", line)
		}
	}
	// After the rows: a blank line, one note per row with a message, the summary.
	rest := lines[1+len(rows):]
	var notes []string
	for _, r := range rows {
		if r.Message != "" {
			notes = append(notes, r.File+": "+string(r.Status)+": "+r.Message)
		}
	}
	want := append(append([]string{""}, notes...), Summarize(rows).Line())
	if !reflect.DeepEqual(rest, want) {
		t.Errorf("after the rows = %q, want %q", rest, want)
	}
	assertWidth(t, buf.String())
}

// nameShownAs reports whether a subject or issuer cell c shows the common name cn: cn
// itself, or, for a kpki CA name <name>@<unix time>, a cell that keeps the time and the
// last word of the name (its role) whole, after the start of the name with or without
// its "kpki-" prefix; any other name with its middle replaced by "…".
func nameShownAs(c, cn string) bool {
	if c == cn {
		return true
	}
	at := strings.LastIndex(cn, "@")
	if at < 0 || strings.Trim(cn[at+1:], "0123456789") != "" {
		return elidedFrom(c, cn)
	}
	name := cn[:at]
	role := name[strings.LastIndex(name, "-"):]
	bare := strings.TrimPrefix(name, "kpki-")
	if c == bare+cn[at:] {
		return true
	}
	head, tail, ok := strings.Cut(c, "…")
	return ok && tail == role+cn[at:] && head != "" && (strings.HasPrefix(name, head) || strings.HasPrefix(bare, head))
}

// fileShownAs reports whether a file cell c shows the file name f: whole, with its middle
// cut, or, when the base name repeats the directory, as "…/<base>".
func fileShownAs(c, f string) bool {
	if dir, base, ok := strings.Cut(f, "/"); ok && strings.HasPrefix(base, dir) && (c == "…/"+base || elidedFrom(c, base)) {
		return true
	}
	return elidedFrom(c, f)
}

// elidedFrom reports whether c is s or s with its middle replaced by "…".
func elidedFrom(c, s string) bool {
	if c == s {
		return true
	}
	head, tail, ok := strings.Cut(c, "…")
	return ok && strings.HasPrefix(s, head) && strings.HasSuffix(s, tail) && len(head)+len(tail) < len(s) && len(head)+len(tail) > 0
}

func assertWidth(t *testing.T, out string) {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if n := utf8.RuneCountInString(l); n > TableWidth {
			t.Errorf("line of %d characters (> %d): %q", n, TableWidth, l)
		}
	}
}

func TestRenderTableWithoutNotes(t *testing.T) {
	rows := []Row{{File: "agent/client-ca.crt", Service: "ca", CA: true, SHA256: "ab", Subject: "CN=ca", Issuer: "CN=ca", Usages: []string{"CertSign"}, Expires: "2036-01-01T00:00:00Z", ResidualSeconds: 3650 * 86400, Residual: "3650d 0h", Status: StatusOK}}
	var buf bytes.Buffer
	if err := Render(&buf, rows, FormatTable, false); err != nil {
		t.Fatal(err)
	}
	want := "SERVICE  FILENAME             SUBJECT  ISSUER  EXPIRES     LEFT   STATUS\n" +
		"ca       agent/client-ca.crt  ca       ca      2036-01-01  3650d  OK\n" +
		"summary: 1 certificate: 1 OK; earliest expiry 2036-01-01 (3650d) agent/client-ca.crt\n"
	if buf.String() != want {
		t.Errorf("table =\n%s\nwant\n%s", buf.String(), want)
	}
}

func TestShortName(t *testing.T) {
	for _, tc := range []struct {
		cn   string
		n    int
		want string
	}{
		{"kpki-server-ca@1796194155", 25, "kpki-server-ca@1796194155"},
		{"kpki-server-ca@1796194155", 24, "server-ca@1796194155"},
		{"kpki-request-header-root@1796194155", 30, "request-header-root@1796194155"},
		{"kpki-request-header-root@1796194155", 23, "reques…-root@1796194155"},
		{"kpki-etcd-server-root@1796194155", 23, "etcd-s…-root@1796194155"},
		{"kpki-etcd-peer-root@1796194155", 23, "etcd-p…-root@1796194155"},
		{"kpki-request-header-ca@1796194155", 23, "request-…-ca@1796194155"},
		{"rke2-server-ca@1700000000", 20, "rke2-…-ca@1700000000"},
		{"system:kube-controller-manager", 23, "system:kube…ler-manager"},
		{"kpki-server-ca@1796194155", 8, "kpk…4155"},
	} {
		got := shortName(tc.cn, tc.n)
		if got != tc.want || runeLen(got) > tc.n {
			t.Errorf("shortName(%q, %d) = %q, want %q", tc.cn, tc.n, got, tc.want)
		}
		if !nameShownAs(got, tc.cn) && tc.n > 16 {
			t.Errorf("shortName(%q, %d) = %q is not a documented shortening", tc.cn, tc.n, got)
		}
	}
	for _, tc := range []struct {
		f    string
		n    int
		want string
	}{
		{"kube-scheduler/kube-scheduler.crt", 23, "…/kube-scheduler.crt"},
		{"kube-controller-manager/kube-controller-manager.crt", 23, "kube-contro…manager.crt"},
		{"etcd/peer-server-client.crt", 23, "etcd/peer-s…-client.crt"},
		{"serving-kube-apiserver.crt", 23, "serving-kub…iserver.crt"},
		{"etcd/server-client.crt", 23, "etcd/server-client.crt"},
	} {
		if got := shortFile(tc.f, tc.n); got != tc.want || !fileShownAs(got, tc.f) {
			t.Errorf("shortFile(%q, %d) = %q, want %q", tc.f, tc.n, got, tc.want)
		}
	}
}

func TestRenderText(t *testing.T) {
	rows := sampleRows(t)
	var buf bytes.Buffer
	if err := Render(&buf, rows, FormatText, true); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if last := lines[len(lines)-1]; last != Summarize(rows).Line() {
		t.Errorf("last line %q, want the summary", last)
	}
	lines = lines[:len(lines)-1]
	if len(lines) != len(rows) {
		t.Fatalf("%d lines for %d rows:\n%s", len(lines), len(rows), buf.String())
	}
	for i, r := range rows {
		line := lines[i]
		if !strings.HasPrefix(line, r.File+": "+string(r.Status)+"; ") {
			t.Errorf("line %q does not start with the file and status", line)
		}
		switch r.Status {
		case StatusError, StatusMissing:
			if line != r.File+": "+string(r.Status)+"; "+r.Message {
				t.Errorf("%s line %q", r.Status, line)
			}
		case StatusExpired:
			if !strings.Contains(line, "; expired "+r.Expires+" ("+strings.TrimPrefix(r.Residual, "-")+" ago)") {
				t.Errorf("expired line %q", line)
			}
		default:
			want := "; subject " + r.Subject + "; issuer " + r.Issuer + "; usages " + strings.Join(r.Usages, ",") + "; expires " + r.Expires + " (in " + r.Residual + ")"
			if !strings.Contains(line, want) {
				t.Errorf("line %q lacks %q", line, want)
			}
		}
		if r.Status == StatusNotYetValid && !strings.HasSuffix(line, "; "+r.Message) {
			t.Errorf("not-yet-valid line %q lacks %q", line, r.Message)
		}
	}
	for _, want := range []string{
		"server/tls/client-kube-proxy.crt: EXPIRED; subject CN=system:kube-proxy; issuer CN=kpki-client-ca@1767225600; usages ClientAuth; expired 2027-01-01T00:00:00Z (3d 2h ago)",
		"server/tls/client-kube-proxy.crt: NOT YET VALID; subject CN=kpki-client-ca@1767225600; issuer CN=kpki-client-ca@1767225600; usages CertSign; expires 2035-12-30T00:00:00Z (in 3650d 2h); not valid before 2025-12-31T23:00:00Z",
	} {
		if !strings.Contains(buf.String(), want+"\n") {
			t.Errorf("text lacks %q:\n%s", want, buf.String())
		}
	}
}

func TestParseFormat(t *testing.T) {
	for _, f := range []string{"table", "text", "json", "yaml"} {
		if got, err := ParseFormat(f); err != nil || string(got) != f {
			t.Errorf("ParseFormat(%q) = %q, %v", f, got, err)
		}
	}
	for _, bad := range []string{"", "wide", "JSON"} {
		_, err := ParseFormat(bad)
		if err == nil || !strings.Contains(err.Error(), "valid formats: table, text, json, yaml") {
			t.Errorf("ParseFormat(%q) = %v", bad, err)
		}
	}
	if err := Render(&bytes.Buffer{}, nil, Format("wide"), false); err == nil {
		t.Error("Render accepted format wide")
	}
}
