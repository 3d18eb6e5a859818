package certcheck

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/pki"
)

// crossSign replaces every CA of f by a new one whose bundle is the new certificate, the
// new one cross-signed by the old CA, and the old certificate, as after cross-sign-ca
// and rotate-ca, and rewrites the server dir under the new CAs.
func (f *fixture) crossSign() *fixture {
	f.t.Helper()
	for id, old := range f.cas {
		key, err := f.iss.NewECKey()
		if err != nil {
			f.t.Fatal(err)
		}
		cert, err := f.iss.SelfSignedCA(key, fmt.Sprintf("%s-rotated-with-a-long-name@%d", certs.CA(id).CNPrefix, t0.Unix()+1), caValidity)
		if err != nil {
			f.t.Fatal(err)
		}
		cross, err := f.iss.CrossSign(old, cert, caValidity)
		if err != nil {
			f.t.Fatal(err)
		}
		bundle := []*x509.Certificate{cert, cross, old.Cert}
		var pemBytes []byte
		for _, c := range bundle {
			pemBytes = append(pemBytes, pki.EncodeCert(c)...)
		}
		f.cas[id] = &pki.CA{Cert: cert, Key: key, Bundle: bundle, BundlePEM: pemBytes}
	}
	return f.server()
}

// distinct counts the leaf files and the distinct CA certificates (by DER) of a
// server dir, read back from the files.
func distinct(t *testing.T, f *fixture) (leaves, cas int) {
	t.Helper()
	seen := map[string]bool{}
	for _, spec := range certs.CAs {
		names := []string{spec.CertFile}
		if spec.NoChainFile != "" {
			names = append(names, spec.NoChainFile)
		}
		for _, n := range names {
			for _, c := range parseFile(t, readFile(t, f.l.TLS(filepath.FromSlash(n)))) {
				seen[string(c.Raw)] = true
			}
		}
	}
	for _, l := range certs.Select(certs.ServerNode, nil) {
		cs := parseFile(t, readFile(t, f.l.TLS(filepath.FromSlash(l.Name+".crt"))))
		leaves++
		for _, c := range cs[1:] {
			seen[string(c.Raw)] = true
		}
	}
	return leaves, len(seen)
}

func TestRenderTableFolded(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func(*testing.T) *fixture
	}{
		{"fresh server", func(t *testing.T) *fixture { return newFixture(t).server() }},
		{"after a cross-signed rotation", func(t *testing.T) *fixture { return newFixture(t).server().crossSign() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.f(t)
			now := t0.Add(300 * day)
			rows, err := Collect(Options{DataDir: f.dir, Now: now, RenewBefore: renewWindow})
			if err != nil {
				t.Fatal(err)
			}
			leaves, cas := distinct(t, f)
			var buf bytes.Buffer
			if err := Render(&buf, rows, FormatTable, false); err != nil {
				t.Fatal(err)
			}
			out := buf.String()
			assertWidth(t, out)
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			body := lines[1 : len(lines)-1]
			if len(body) != leaves+cas {
				t.Errorf("%d rows, want %d leaves + %d distinct CA certificates:\n%s", len(body), leaves, cas, out)
			}
			caRows, fps := 0, map[string]int{}
			for _, r := range Fold(rows) {
				if r.CA {
					caRows++
					fps[r.SHA256]++
				}
			}
			for fp, n := range fps {
				if n != 1 {
					t.Errorf("CA certificate %s listed %d times", fp, n)
				}
			}
			if caRows != cas {
				t.Errorf("%d CA rows, want %d", caRows, cas)
			}
			for i, line := range body {
				service := strings.Fields(line)[0]
				if (i < cas) != (service == ServiceCA) {
					t.Errorf("row %d %q: CA rows first, then the leaves", i, line)
				}
			}

			// The summary: counts per status and the earliest expiry, from the files.
			counts := map[Status]int{}
			var first *x509.Certificate
			firstFile := ""
			for _, r := range Fold(rows) {
				counts[r.Status]++
			}
			for _, l := range certs.Select(certs.ServerNode, nil) {
				name := "server/tls/" + l.Name + ".crt"
				c := parseFile(t, readFile(t, f.l.TLS(filepath.FromSlash(l.Name+".crt"))))[0]
				if first == nil || c.NotAfter.Before(first.NotAfter) {
					first, firstFile = c, name
				}
			}
			var parts []string
			for _, s := range statusOrder {
				if counts[s] > 0 {
					parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
				}
			}
			want := fmt.Sprintf("summary: %d certificates: %s; earliest expiry %s (%s) %s", leaves+cas, strings.Join(parts, ", "),
				first.NotAfter.UTC().Format("2006-01-02"), FormatResidualShort(first.NotAfter.Sub(now)), firstFile)
			if got := lines[len(lines)-1]; got != want {
				t.Errorf("summary line %q, want %q", got, want)
			}
			if counts[StatusWarning] == 0 || counts[StatusOK] == 0 {
				t.Errorf("fixture should have OK and WARNING rows: %v", counts)
			}

			// --fail-on counts the rows of the table, and names every certificate's
			// count besides when a failing CA is bundled in several files (all CAs are
			// WARNING within a CA window as long as their validity).
			caRowsWarn, err := Collect(Options{DataDir: f.dir, Now: now, RenewBefore: renewWindow, CAWarnBefore: caValidity})
			if err != nil {
				t.Fatal(err)
			}
			buf.Reset()
			if err := Render(&buf, caRowsWarn, FormatTable, false); err != nil {
				t.Fatal(err)
			}
			shown := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
			shown = shown[1 : len(shown)-1]
			shownWarn, allWarn := 0, 0
			for _, line := range shown {
				if strings.HasSuffix(line, string(StatusWarning)) {
					shownWarn++
				}
			}
			for _, r := range caRowsWarn {
				if r.Status == StatusWarning {
					allWarn++
				}
			}
			if allWarn == shownWarn {
				t.Errorf("fixture should bundle a WARNING CA in several files (%d WARNING rows, %d certificates)", shownWarn, allWarn)
			}
			err = Check(caRowsWarn, FailOnWarning, false)
			var fe *FailedError
			wantMsg := fmt.Sprintf("%d of %d certificates failed the check (--fail-on warning); counting each file's copy of a CA certificate, %d of %d (--all lists them)",
				shownWarn, len(shown), allWarn, len(caRowsWarn))
			if !errors.As(err, &fe) || err.Error() != wantMsg {
				t.Errorf("Check = %v, want %q", err, wantMsg)
			}
			err = Check(caRowsWarn, FailOnWarning, true)
			if want := fmt.Sprintf("%d of %d certificates failed the check (--fail-on warning)", allWarn, len(caRowsWarn)); err == nil || err.Error() != want {
				t.Errorf("Check with every row listed = %v, want %q", err, want)
			}

			// --all lists every certificate of every file.
			buf.Reset()
			if err := Render(&buf, rows, FormatTable, true); err != nil {
				t.Fatal(err)
			}
			assertWidth(t, buf.String())
			all := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
			n := 0
			for _, s := range certs.CAs {
				n += len(parseFile(t, readFile(t, f.l.TLS(filepath.FromSlash(s.CertFile)))))
				if s.NoChainFile != "" {
					n += len(parseFile(t, readFile(t, f.l.TLS(s.NoChainFile))))
				}
			}
			for _, l := range certs.Select(certs.ServerNode, nil) {
				n += len(parseFile(t, readFile(t, f.l.TLS(filepath.FromSlash(l.Name+".crt")))))
			}
			if len(all)-2 != n || len(rows) != n {
				t.Errorf("--all: %d rows (%d collected), want every certificate: %d", len(all)-2, len(rows), n)
			}
		})
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
