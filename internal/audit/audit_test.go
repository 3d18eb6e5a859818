package audit

import (
	"bufio"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/pki"
)

var testNow = time.Date(2026, time.May, 4, 10, 30, 0, 0, time.UTC)

// readEntries decodes every line of the log at path, failing on a line that is not one
// JSON object.
func readEntries(t *testing.T, path string) []Entry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Entry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		dec.DisallowUnknownFields()
		var e Entry
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("line %d %q: %v", len(out)+1, sc.Text(), err)
		}
		if dec.More() {
			t.Fatalf("line %d %q holds more than one JSON value", len(out)+1, sc.Text())
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestWrite(t *testing.T) {
	e1 := Entry{Time: testNow, Action: "issue", Actor: "node-1", RemoteAddr: "10.0.0.5:51234", File: "client-kubelet.crt",
		Subject: "CN=system:node:node-1,O=system:nodes", Serial: "1f", Fingerprint: strings.Repeat("ab", 32), NotAfter: "2027-05-04T10:30:00Z"}
	e2 := Entry{Time: testNow.Add(time.Minute), Action: "token-rotate", Actor: "server", Detail: "server token rotated"}
	e3 := Entry{Time: testNow.Add(2 * time.Minute), Action: "rotate", Actor: "root", File: "etcd/server-client.crt",
		Fingerprint: strings.Repeat("cd", 32), OldFingerprint: strings.Repeat("ef", 32)}
	tests := []struct {
		name     string
		existing string // log content before the writes
		path     func(dir string) string
		entries  []Entry
	}{
		{name: "new file", path: func(d string) string { return filepath.Join(d, "audit.log") }, entries: []Entry{e1}},
		{name: "missing parent directories", path: func(d string) string { return filepath.Join(d, "server", "logs", "audit.log") }, entries: []Entry{e1, e2}},
		{name: "appends to an existing log", existing: `{"time":"2026-01-01T00:00:00Z","action":"issue","actor":"old"}` + "\n",
			path: func(d string) string { return filepath.Join(d, "audit.log") }, entries: []Entry{e2, e3}},
		{name: "minimal entry", path: func(d string) string { return filepath.Join(d, "audit.log") }, entries: []Entry{{Action: "x", Actor: "y"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path(t.TempDir())
			var want []Entry
			if tc.existing != "" {
				if err := os.WriteFile(path, []byte(tc.existing), 0o600); err != nil {
					t.Fatal(err)
				}
				want = append(want, Entry{Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Action: "issue", Actor: "old"})
			}
			l := Open(path)
			if l.Path() != path {
				t.Errorf("Path = %q, want %q", l.Path(), path)
			}
			for _, e := range tc.entries {
				if err := l.Write(e); err != nil {
					t.Fatalf("Write: %v", err)
				}
			}
			want = append(want, tc.entries...)
			got := readEntries(t, path)
			if len(got) != len(want) {
				t.Fatalf("%d entries, want %d", len(got), len(want))
			}
			for i := range want {
				if !got[i].Time.Equal(want[i].Time) {
					t.Errorf("entry %d time %v, want %v", i, got[i].Time, want[i].Time)
				}
				got[i].Time, want[i].Time = time.Time{}, time.Time{}
				if got[i] != want[i] {
					t.Errorf("entry %d = %+v, want %+v", i, got[i], want[i])
				}
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if mode := fi.Mode().Perm(); mode != 0o600 {
				t.Errorf("log mode %o, want 600", mode)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasSuffix(string(data), "\n") {
				t.Error("log does not end with a newline")
			}
		})
	}
}

func TestWriteOmitsEmptyFields(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	if err := Open(path).Write(Entry{Time: testNow, Action: "token-rotate", Actor: "server"}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"time": "2026-05-04T10:30:00Z", "action": "token-rotate", "actor": "server"}
	if fmt.Sprint(m) != fmt.Sprint(want) {
		t.Errorf("entry = %v, want %v", m, want)
	}
}

func TestWriteErrors(t *testing.T) {
	tests := []struct {
		name string
		path func(t *testing.T, dir string) string
	}{
		{name: "parent is a file", path: func(t *testing.T, d string) string {
			f := filepath.Join(d, "file")
			if err := os.WriteFile(f, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(f, "audit.log")
		}},
		{name: "log path is a directory", path: func(t *testing.T, d string) string {
			p := filepath.Join(d, "audit.log")
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
			return p
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Open(tc.path(t, t.TempDir())).Write(Entry{Action: "issue", Actor: "a"})
			if err == nil || !strings.HasPrefix(err.Error(), "audit log: ") {
				t.Errorf("Write = %v, want an \"audit log: \" error", err)
			}
		})
	}
}

func TestWriteNilLog(t *testing.T) {
	var l *Log
	if err := l.Write(Entry{Action: "issue"}); err != nil {
		t.Errorf("nil Log Write = %v, want nil", err)
	}
}

func TestConcurrentWritesKeepWholeLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := Open(path)
	const writers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				errs <- l.Write(Entry{Time: testNow, Action: "issue", Actor: fmt.Sprintf("node-%d", w), Serial: fmt.Sprint(i),
					Detail: strings.Repeat("x", 512)})
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got := readEntries(t, path)
	if len(got) != writers*each {
		t.Fatalf("%d entries, want %d", len(got), writers*each)
	}
	seen := map[string]bool{}
	for _, e := range got {
		seen[e.Actor+"/"+e.Serial] = true
	}
	if len(seen) != writers*each {
		t.Errorf("%d distinct entries, want %d", len(seen), writers*each)
	}
}

// testCerts returns a CA and two leaves it signed.
func testCerts(t *testing.T) (ca, leaf, other *x509.Certificate) {
	t.Helper()
	iss := pki.NewIssuer(clock.NewFake(testNow), nil)
	key, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	ca, err = iss.SelfSignedCA(key, "kpki-server-ca@1", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := &pki.CA{Cert: ca, Key: key, Bundle: []*x509.Certificate{ca}}
	sign := func(cn string) *x509.Certificate {
		k, err := iss.NewECKey()
		if err != nil {
			t.Fatal(err)
		}
		l, err := iss.SignLeaf(c, k.Public(), pki.LeafProfile{CommonName: cn, Organization: []string{"system:nodes"},
			IPs: []net.IP{net.IPv4(10, 0, 0, 5)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, 10*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	return ca, sign("system:node:node-1"), sign("system:node:node-1")
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestFingerprint(t *testing.T) {
	ca, leaf, other := testCerts(t)
	tests := []struct {
		name string
		cert *x509.Certificate
		want string
	}{
		{name: "nil", cert: nil, want: ""},
		{name: "CA", cert: ca, want: sha256Hex(ca.Raw)},
		{name: "leaf", cert: leaf, want: sha256Hex(leaf.Raw)},
		{name: "other leaf, same subject", cert: other, want: sha256Hex(other.Raw)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Fingerprint(tc.cert)
			if got != tc.want {
				t.Errorf("Fingerprint = %q, want %q", got, tc.want)
			}
			if tc.cert != nil && len(got) != 64 {
				t.Errorf("Fingerprint has %d characters, want 64", len(got))
			}
		})
	}
	if Fingerprint(leaf) == Fingerprint(other) {
		t.Error("two different certificates have the same fingerprint")
	}
}

func TestCertEntry(t *testing.T) {
	ca, leaf, other := testCerts(t)
	tests := []struct {
		name    string
		action  string
		actor   string
		file    string
		cert    *x509.Certificate
		old     *x509.Certificate
		wantOld string
	}{
		{name: "issuance", action: "issue", actor: "node-1", file: "client-kubelet.crt", cert: leaf},
		{name: "renewal replacing a certificate", action: "renew", actor: "kpki", file: "client-kubelet.crt", cert: other, old: leaf,
			wantOld: sha256Hex(leaf.Raw)},
		{name: "CA", action: "rotate-ca", actor: "server", file: "server-ca.crt", cert: ca},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := CertEntry(tc.action, tc.actor, tc.file, tc.cert, tc.old)
			want := Entry{
				Action:         tc.action,
				Actor:          tc.actor,
				File:           tc.file,
				Subject:        tc.cert.Subject.String(),
				Serial:         SerialHex(tc.cert),
				Fingerprint:    sha256Hex(tc.cert.Raw),
				OldFingerprint: tc.wantOld,
				NotAfter:       tc.cert.NotAfter.UTC().Format(time.RFC3339),
			}
			if e != want {
				t.Errorf("CertEntry = %+v\nwant %+v", e, want)
			}
			if _, err := time.Parse(time.RFC3339, e.NotAfter); err != nil {
				t.Errorf("NotAfter %q is not RFC 3339: %v", e.NotAfter, err)
			}
			if !strings.HasSuffix(e.NotAfter, "Z") {
				t.Errorf("NotAfter %q is not UTC", e.NotAfter)
			}
		})
	}
}

func TestCertEntryRoundTripHoldsNoKey(t *testing.T) {
	_, leaf, _ := testCerts(t)
	path := filepath.Join(t.TempDir(), "audit.log")
	e := CertEntry("issue", "node-1", "client-kubelet.crt", leaf, nil)
	e.Time = testNow
	if err := Open(path).Write(e); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"PRIVATE KEY", "BEGIN", "password"} {
		if strings.Contains(string(data), bad) {
			t.Errorf("audit line contains %q: %s", bad, data)
		}
	}
	got := readEntries(t, path)
	if len(got) != 1 || got[0].Serial != SerialHex(leaf) || got[0].Subject != "CN=system:node:node-1,O=system:nodes" {
		t.Errorf("read back %+v", got)
	}
}
