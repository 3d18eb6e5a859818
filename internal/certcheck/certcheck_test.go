package certcheck

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/pki"
)

func TestEvaluateStatus(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name        string
		notBefore   time.Time
		notAfter    time.Time
		renewBefore time.Duration
		want        Status
		residual    int64
		message     string
	}{
		{"well inside validity", now.Add(-day), now.Add(200 * day), renewWindow, StatusOK, int64(200 * day / time.Second), ""},
		{"exactly at the renew window edge", now.Add(-day), now.Add(renewWindow), renewWindow, StatusWarning, int64(renewWindow / time.Second), ""},
		{"one second inside the renew window", now.Add(-day), now.Add(renewWindow - time.Second), renewWindow, StatusWarning, int64((renewWindow - time.Second) / time.Second), ""},
		{"one second before expiry", now.Add(-day), now.Add(time.Second), renewWindow, StatusWarning, 1, ""},
		{"expires exactly now", now.Add(-day), now, renewWindow, StatusExpired, 0, ""},
		{"expired by one second", now.Add(-day), now.Add(-time.Second), renewWindow, StatusExpired, -1, ""},
		{"expired long ago", now.Add(-400 * day), now.Add(-35 * day), renewWindow, StatusExpired, -int64(35 * day / time.Second), ""},
		{"not yet valid by one second", now.Add(time.Second), now.Add(365 * day), renewWindow, StatusNotYetValid, int64(365 * day / time.Second), "not valid before 2026-06-01T12:00:01Z"},
		{"not yet valid beats the renew window", now.Add(time.Hour), now.Add(2 * day), renewWindow, StatusNotYetValid, int64(2 * day / time.Second), "not valid before 2026-06-01T13:00:00Z"},
		{"valid from exactly now", now, now.Add(365 * day), renewWindow, StatusOK, int64(365 * day / time.Second), ""},
		{"no renew window", now.Add(-day), now.Add(time.Second), 0, StatusOK, 1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &x509.Certificate{
				Subject:     pkix.Name{CommonName: "leaf", Organization: []string{"org"}},
				Issuer:      pkix.Name{CommonName: "ca"},
				NotBefore:   tt.notBefore,
				NotAfter:    tt.notAfter,
				ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			}
			// A CA warning window as long as any validity here: it must not touch a leaf.
			r := Evaluate("server/tls/x.crt", c, now, tt.renewBefore, 3650*day)
			if r.Status != tt.want {
				t.Errorf("status = %s, want %s", r.Status, tt.want)
			}
			if r.ResidualSeconds != tt.residual {
				t.Errorf("residual_seconds = %d, want %d", r.ResidualSeconds, tt.residual)
			}
			if r.Message != tt.message {
				t.Errorf("message = %q, want %q", r.Message, tt.message)
			}
			if r.Expires != tt.notAfter.UTC().Format(time.RFC3339) {
				t.Errorf("expires = %q", r.Expires)
			}
			if r.Subject != "CN=leaf,O=org" || r.Issuer != "CN=ca" || r.File != "server/tls/x.crt" {
				t.Errorf("row = %+v", r)
			}
		})
	}
}

// TestEvaluateCAWindow checks that CA certificates are judged by the CA warning window
// and not by the leaves' renewal window.
func TestEvaluateCAWindow(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	const caWarn = 365 * day
	tests := []struct {
		name     string
		ca       bool
		notAfter time.Time
		want     Status
	}{
		{"CA beyond the CA window", true, now.Add(caWarn + time.Second), StatusOK},
		{"CA at the CA window's edge", true, now.Add(caWarn), StatusWarning},
		{"CA expiring in 20 days", true, now.Add(20 * day), StatusWarning},
		{"CA past both windows", true, now.Add(400 * day), StatusOK},
		{"CA expired", true, now, StatusExpired},
		{"leaf inside the CA window, outside the renew window", false, now.Add(200 * day), StatusOK},
		{"leaf inside the renew window", false, now.Add(20 * day), StatusWarning},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &x509.Certificate{Subject: pkix.Name{CommonName: "c"}, NotBefore: now.Add(-day), NotAfter: tt.notAfter,
				BasicConstraintsValid: true, IsCA: tt.ca}
			if got := Evaluate("f", c, now, renewWindow, caWarn).Status; got != tt.want {
				t.Errorf("status %s, want %s", got, tt.want)
			}
		})
	}
	// A CA window shorter than the renewal window: the renewal window counts for CAs
	// too (leaves capped at the CA cannot be renewed once it is that close).
	c := &x509.Certificate{NotBefore: now.Add(-day), NotAfter: now.Add(60 * day), BasicConstraintsValid: true, IsCA: true}
	if got := Evaluate("f", c, now, 90*day, 30*day).Status; got != StatusWarning {
		t.Errorf("CA inside the renewal window, outside a shorter CA window: %s, want WARNING", got)
	}
	if got := Evaluate("f", c, now, 0, 0).Status; got != StatusOK {
		t.Errorf("CA with no window at all: %s, want OK", got)
	}
	// basicConstraints present with CA:FALSE is a leaf.
	c.IsCA = false
	if got := Evaluate("f", c, now, 0, 90*day).Status; got != StatusOK {
		t.Errorf("CA:FALSE certificate judged by the CA window: %s", got)
	}
}

func TestEvaluateExpiresIsUTC(t *testing.T) {
	loc := time.FixedZone("UTC+2", 2*3600)
	notAfter := time.Date(2027, 1, 1, 2, 0, 0, 0, loc)
	r := Evaluate("f", &x509.Certificate{NotBefore: t0, NotAfter: notAfter}, t0, 0, 0)
	if r.Expires != "2027-01-01T00:00:00Z" {
		t.Errorf("expires = %q, want 2027-01-01T00:00:00Z", r.Expires)
	}
}

func TestFormatResidual(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{365*day - time.Second, "364d 23h"},
		{365 * day, "365d 0h"},
		{day, "1d 0h"},
		{day - time.Second, "23h 59m"},
		{5*time.Hour + 12*time.Minute + 59*time.Second, "5h 12m"},
		{4*time.Minute + 30*time.Second + 900*time.Millisecond, "4m 30s"},
		{0, "0m 0s"},
		{500 * time.Millisecond, "0m 0s"},
		{-500 * time.Millisecond, "0m 0s"},
		{-time.Second, "-0m 1s"},
		{-(3*day + 2*time.Hour + 59*time.Minute), "-3d 2h"},
		{-(2*time.Hour + 5*time.Minute), "-2h 5m"},
	}
	for _, tt := range tests {
		if got := FormatResidual(tt.d); got != tt.want {
			t.Errorf("FormatResidual(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestUsages(t *testing.T) {
	f := newFixture(t)
	leafUsages := func(name string) []string {
		return Usages(parseFile(t, f.leafFile(leafNamed(t, name)))[0])
	}
	tests := []struct {
		name string
		got  []string
		want []string
	}{
		{"generated CA", Usages(f.cas[certs.ServerCA].Cert), []string{"CertSign"}},
		{"client leaf", leafUsages("client-admin"), []string{"ClientAuth"}},
		{"serving leaf", leafUsages("serving-kube-apiserver"), []string{"ServerAuth"}},
		{"etcd server+client leaf", leafUsages("etcd/server-client"), []string{"ServerAuth", "ClientAuth"}},
		{"CA without key usage extension", Usages(&x509.Certificate{BasicConstraintsValid: true, IsCA: true}), []string{"CertSign"}},
		{"non-CA without usages", Usages(&x509.Certificate{KeyUsage: x509.KeyUsageDigitalSignature}), []string{}},
		{"other and unknown usages", Usages(&x509.Certificate{
			ExtKeyUsage:        []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning, x509.ExtKeyUsageOCSPSigning},
			UnknownExtKeyUsage: []asn1.ObjectIdentifier{{1, 2, 3, 4}},
		}), []string{"CodeSigning", "OCSPSigning", "1.2.3.4"}},
	}
	for _, tt := range tests {
		if !reflect.DeepEqual(tt.got, tt.want) {
			t.Errorf("%s: usages = %#v, want %#v", tt.name, tt.got, tt.want)
		}
	}
}

func TestCollectServerDataDir(t *testing.T) {
	f := newFixture(t).server()
	rows, err := Collect(Options{DataDir: f.dir, Now: t0.Add(day), RenewBefore: renewWindow})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != serverCertCount() {
		t.Fatalf("got %d rows, want %d", len(rows), serverCertCount())
	}
	// CA files first, in table order, each with its nochain copy.
	wantFirst := []string{"server/tls/server-ca.crt", "server/tls/server-ca.nochain.crt", "server/tls/client-ca.crt", "server/tls/client-ca.nochain.crt", "server/tls/request-header-ca.crt", "server/tls/etcd/server-ca.crt", "server/tls/etcd/peer-ca.crt"}
	for i, w := range wantFirst {
		if rows[i].File != w {
			t.Errorf("row %d file = %s, want %s", i, rows[i].File, w)
		}
		if !reflect.DeepEqual(rows[i].Usages, []string{"CertSign"}) {
			t.Errorf("row %d usages = %v, want CertSign", i, rows[i].Usages)
		}
	}
	// Then every leaf file: the leaf, then its CA bundle, in file order.
	leaves := certs.Select(certs.ServerNode, nil)
	for i, leaf := range leaves {
		lr, cr := rows[len(wantFirst)+2*i], rows[len(wantFirst)+2*i+1]
		file := "server/tls/" + leaf.Name + ".crt"
		if lr.File != file || cr.File != file {
			t.Errorf("leaf %s: files %s, %s", leaf.Name, lr.File, cr.File)
		}
		if !strings.HasPrefix(lr.Subject, "CN="+leaf.CN) {
			t.Errorf("leaf %s: subject %q", leaf.Name, lr.Subject)
		}
		var caCN string
		for _, spec := range certs.CAs {
			if spec.ID == leaf.Signer {
				caCN = "CN=" + spec.CNPrefix
			}
		}
		if !strings.HasPrefix(lr.Issuer, caCN) || !strings.HasPrefix(cr.Subject, caCN) || cr.Subject != cr.Issuer {
			t.Errorf("leaf %s: issuer %q, bundle subject %q issuer %q, want %s…", leaf.Name, lr.Issuer, cr.Subject, cr.Issuer, caCN)
		}
	}
	for _, r := range rows {
		if r.Status != StatusOK {
			t.Errorf("%s %s: status %s, want OK", r.File, r.Subject, r.Status)
		}
	}
}

func TestCollectStatusesOverTime(t *testing.T) {
	f := newFixture(t).server()
	tests := []struct {
		name          string
		now           time.Time
		leaves, cas   Status
		leafResidual  string
		caResidualPfx string
	}{
		{"fresh", t0, StatusOK, StatusOK, "365d 0h", "3650d"},
		{"in the renew window", t0.Add(300 * day), StatusWarning, StatusOK, "65d 0h", "3350d"},
		{"leaves expired", t0.Add(368*day + 2*time.Hour), StatusExpired, StatusOK, "-3d 2h", "3281d 22h"},
		{"everything expired", t0.Add(4000 * day), StatusExpired, StatusExpired, "-3635d 0h", "-350d"},
		{"before issuance", t0.Add(-2 * time.Hour), StatusNotYetValid, StatusNotYetValid, "365d 2h", "3650d"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rows, err := Collect(Options{DataDir: f.dir, Now: tt.now, RenewBefore: renewWindow})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rows {
				isCA := len(r.Usages) == 1 && r.Usages[0] == "CertSign"
				want, res := tt.leaves, tt.leafResidual
				if isCA {
					want = tt.cas
				}
				if r.Status != want {
					t.Errorf("%s %s: status %s, want %s", r.File, r.Subject, r.Status, want)
				}
				if !isCA && r.Residual != res {
					t.Errorf("%s %s: residual %q, want %q", r.File, r.Subject, r.Residual, res)
				}
				if isCA && !strings.HasPrefix(r.Residual, tt.caResidualPfx) {
					t.Errorf("%s %s: residual %q, want %s…", r.File, r.Subject, r.Residual, tt.caResidualPfx)
				}
			}
		})
	}
}

func files(rows []Row) []string {
	var out []string
	for _, r := range rows {
		if len(out) == 0 || out[len(out)-1] != r.File {
			out = append(out, r.File)
		}
	}
	return out
}

func TestCollectServiceSelection(t *testing.T) {
	f := newFixture(t).server().agent()
	tests := []struct {
		services []string
		want     []string
	}{
		{[]string{"admin"}, []string{"server/tls/client-admin.crt"}},
		{[]string{"rke2-server"}, []string{"server/tls/serving-supervisor.crt"}},
		{[]string{"k3s-server", "kpki-server"}, []string{"server/tls/serving-supervisor.crt"}},
		{[]string{"k3s-controller"}, []string{"server/tls/client-kpki-controller.crt", "agent/client-kpki-controller.crt"}},
		{[]string{"rke2-controller", " etcd ", ""}, []string{
			"server/tls/client-kpki-controller.crt", "server/tls/etcd/client.crt", "server/tls/etcd/server-client.crt",
			"server/tls/etcd/peer-server-client.crt", "agent/client-kpki-controller.crt",
		}},
		{[]string{"kubelet"}, []string{"agent/client-kubelet.crt", "agent/serving-kubelet.crt"}},
		{[]string{"scheduler", "kube-proxy"}, []string{
			"server/tls/client-scheduler.crt", "server/tls/kube-scheduler/kube-scheduler.crt", "server/tls/client-kube-proxy.crt",
			"agent/client-kube-proxy.crt",
		}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.services, ","), func(t *testing.T) {
			rows, err := Collect(Options{DataDir: f.dir, Services: tt.services, Now: t0, RenewBefore: renewWindow})
			if err != nil {
				t.Fatal(err)
			}
			if got := files(rows); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("files = %v, want %v", got, tt.want)
			}
			if len(rows) != 2*len(tt.want) {
				t.Errorf("got %d rows, want %d (leaf and CA per file)", len(rows), 2*len(tt.want))
			}
		})
	}
}

func TestCollectUnknownService(t *testing.T) {
	f := newFixture(t).server()
	_, err := Collect(Options{DataDir: f.dir, Services: []string{"admin", "nope"}, Now: t0})
	if err == nil || !strings.Contains(err.Error(), "service nope is not recognized") || !strings.Contains(err.Error(), "kpki-server") {
		t.Fatalf("err = %v, want the not-recognized error with the valid names", err)
	}
}

func TestCollectAgentOnly(t *testing.T) {
	f := newFixture(t).agent()
	rows, err := Collect(Options{DataDir: f.dir, Now: t0, RenewBefore: renewWindow})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"agent/server-ca.crt", "agent/client-ca.crt", "agent/client-kubelet.crt", "agent/serving-kubelet.crt", "agent/client-kube-proxy.crt", "agent/client-kpki-controller.crt"}
	if got := files(rows); !reflect.DeepEqual(got, want) {
		t.Errorf("files = %v, want %v", got, want)
	}
	if rows[2].Subject != "CN=system:node:node1,O=system:nodes" {
		t.Errorf("kubelet subject = %q", rows[2].Subject)
	}
}

// TestCollectMissingFiles checks that every expected file that does not exist is one
// MISSING row, in its place, and fails either --fail-on threshold.
func TestCollectMissingFiles(t *testing.T) {
	f := newFixture(t).server().agent()
	gone := []string{"server/tls/client-admin.crt", "server/tls/server-ca.nochain.crt", "server/tls/etcd/peer-server-client.crt",
		"server/tls/etcd/peer-ca.crt", "agent/client-ca.crt", "agent/serving-kubelet.crt"}
	for _, name := range gone {
		if err := os.Remove(filepath.Join(f.dir, filepath.FromSlash(name))); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := Collect(Options{DataDir: f.dir, Now: t0, RenewBefore: renewWindow})
	if err != nil {
		t.Fatal(err)
	}
	// The server files lose 2 rows per leaf file and 1 per CA file; each becomes one row.
	agentCerts := 2 + 2*len(certs.Select(certs.AgentNode, nil))
	if want := serverCertCount() + agentCerts - 2 - 1 - 2 - 1 - 1 - 2 + len(gone); len(rows) != want {
		t.Errorf("got %d rows, want %d", len(rows), want)
	}
	srcs, err := Sources(f.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := files(rows); !reflect.DeepEqual(got, sourceNames(srcs)) {
		t.Errorf("files = %v, want every expected file in order %v", got, sourceNames(srcs))
	}
	missing := map[string]bool{}
	for _, r := range rows {
		if r.Status == StatusMissing {
			missing[r.File] = true
			if r.Message != "the file does not exist" || r.Subject != "" || r.Expires != "" || r.Usages == nil {
				t.Errorf("missing row %+v", r)
			}
			continue
		}
		if r.Status != StatusOK {
			t.Errorf("%s: status %s", r.File, r.Status)
		}
	}
	for _, name := range gone {
		if !missing[name] {
			t.Errorf("%s not reported MISSING", name)
		}
	}
	if len(missing) != len(gone) {
		t.Errorf("MISSING rows for %v, want %v", missing, gone)
	}
	for _, th := range []FailOn{FailOnWarning, FailOnExpired} {
		var fe *FailedError
		if err := Check(rows, th, true); !errors.As(err, &fe) || fe.Failed != len(gone) {
			t.Errorf("--fail-on %s: %v, want %d failures", th, err, len(gone))
		}
	}
	if err := Check(rows, FailNever, false); err != nil {
		t.Errorf("no threshold: %v", err)
	}

	// With --service only that service's files are expected.
	rows, err = Collect(Options{DataDir: f.dir, Services: []string{"admin", "supervisor"}, Now: t0, RenewBefore: renewWindow})
	if err != nil {
		t.Fatal(err)
	}
	if got := files(rows); !reflect.DeepEqual(got, []string{"server/tls/client-admin.crt", "server/tls/client-supervisor.crt"}) ||
		rows[0].Status != StatusMissing || len(rows) != 3 {
		t.Errorf("--service admin,supervisor: rows %+v, want admin MISSING and the supervisor's two rows", rows)
	}
	// When none of the selected files exists the check says so instead.
	if _, err := Collect(Options{DataDir: f.dir, Services: []string{"admin"}, Now: t0}); !errors.Is(err, ErrNoCertificates) {
		t.Errorf("--service admin with its file gone: %v, want ErrNoCertificates", err)
	}
}

// TestCollectAgentExpectsItsCAFiles checks that an agent data dir expects the agent's
// two CA files, not the server's CA set.
func TestCollectAgentExpectsItsCAFiles(t *testing.T) {
	f := newFixture(t).agent()
	if err := os.Remove(f.l.Agent("server-ca.crt")); err != nil {
		t.Fatal(err)
	}
	rows, err := Collect(Options{DataDir: f.dir, Now: t0, RenewBefore: renewWindow})
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for _, r := range rows {
		if r.Status == StatusMissing {
			missing = append(missing, r.File)
		}
	}
	if !reflect.DeepEqual(missing, []string{"agent/server-ca.crt"}) {
		t.Errorf("MISSING %v, want only agent/server-ca.crt", missing)
	}
}

func sourceNames(srcs []Source) []string {
	var out []string
	for _, s := range srcs {
		out = append(out, s.Name)
	}
	return out
}

// TestCollectCAWindow checks the CA rows of a whole data dir against the CA window:
// the CA files and the CA bundle rows of the leaf files, while the leaves themselves
// stay OK.
func TestCollectCAWindow(t *testing.T) {
	f := newFixture(t).server()
	now := t0.Add(3650*day - 200*day) // the CAs have 200 days left; the leaves are long expired
	rows, err := Collect(Options{DataDir: f.dir, Now: t0.Add(day), RenewBefore: renewWindow, CAWarnBefore: 365 * day})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r.Status != StatusOK {
			t.Errorf("fresh: %s %s: %s", r.File, r.Subject, r.Status)
		}
	}
	rows, err = Collect(Options{DataDir: f.dir, Now: now, RenewBefore: renewWindow, CAWarnBefore: 365 * day})
	if err != nil {
		t.Fatal(err)
	}
	cas := 0
	for _, r := range rows {
		want := StatusExpired
		if r.Usages[0] == "CertSign" {
			want = StatusWarning
			cas++
		}
		if r.Status != want {
			t.Errorf("%s %s: %s, want %s", r.File, r.Subject, r.Status, want)
		}
	}
	if want := 7 + len(certs.Select(certs.ServerNode, nil)); cas != want {
		t.Errorf("%d CA rows, want %d", cas, want)
	}
	rows, err = Collect(Options{DataDir: f.dir, Now: now, RenewBefore: renewWindow, CAWarnBefore: 100 * day})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r.Usages[0] == "CertSign" && r.Status != StatusOK {
			t.Errorf("CA window of 100 days: %s %s: %s, want OK", r.File, r.Subject, r.Status)
		}
	}
}

func TestCollectNoCertificates(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(dir string)
		services []string
		wantMsg  string
	}{
		{"data dir does not exist", func(string) {}, nil, "neither"},
		{"empty data dir", func(dir string) {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
		}, nil, "neither"},
		{"empty tls dir", func(dir string) {
			if err := os.MkdirAll(filepath.Join(dir, "server", "tls"), 0o700); err != nil {
				t.Fatal(err)
			}
		}, nil, "no certificate file found in data dir"},
		{"agent service on a server-only node", func(dir string) {
			f := &fixture{t: t, dir: dir}
			f.write(filepath.Join(dir, "server", "tls", "client-admin.crt"), []byte("x"))
		}, []string{"kubelet"}, "for the selected services"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "dd")
			tt.setup(dir)
			_, err := Collect(Options{DataDir: dir, Services: tt.services, Now: t0})
			if !errors.Is(err, ErrNoCertificates) {
				t.Fatalf("err = %v, want ErrNoCertificates", err)
			}
			if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("err = %q, want it to name %s and say %q", err, dir, tt.wantMsg)
			}
		})
	}
}

func TestCollectCorruptFiles(t *testing.T) {
	f := newFixture(t).server()
	good := f.leafFile(certs.Leaves[0])
	f.write(f.l.TLS("client-admin.crt"), []byte("not a certificate\n"))
	firstEnd := bytes.Index(good, []byte("-----END CERTIFICATE-----\n")) + len("-----END CERTIFICATE-----\n")
	f.write(f.l.TLS("client-supervisor.crt"), good[:firstEnd+(len(good)-firstEnd)/2])
	f.write(f.l.TLS("client-controller.crt"), nil)
	if err := os.Remove(f.l.TLS("client-auth-proxy.crt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(f.l.TLS("client-auth-proxy.crt"), 0o700); err != nil {
		t.Fatal(err)
	}
	rows, err := Collect(Options{DataDir: f.dir, Now: t0, RenewBefore: renewWindow})
	if err != nil {
		t.Fatal(err)
	}
	bad := map[string]string{
		"server/tls/client-admin.crt":      "no PEM data found",
		"server/tls/client-supervisor.crt": "corrupt",
		"server/tls/client-controller.crt": "no PEM data found",
		"server/tls/client-auth-proxy.crt": "is a directory",
	}
	seen := map[string]int{}
	for _, r := range rows {
		msg, isBad := bad[r.File]
		if !isBad {
			if r.Status != StatusOK {
				t.Errorf("%s: status %s", r.File, r.Status)
			}
			continue
		}
		seen[r.File]++
		if r.Status != StatusError || !strings.Contains(r.Message, msg) {
			t.Errorf("%s: status %s message %q, want ERROR with %q", r.File, r.Status, r.Message, msg)
		}
		if r.Usages == nil || r.Subject != "" || r.Expires != "" {
			t.Errorf("%s: error row %+v", r.File, r)
		}
	}
	for file := range bad {
		if seen[file] != 1 {
			t.Errorf("%s: %d rows, want one ERROR row", file, seen[file])
		}
	}
	if len(rows) != serverCertCount()-4 {
		t.Errorf("got %d rows, want %d", len(rows), serverCertCount()-4)
	}
	if err := Check(rows, FailOnExpired, false); err == nil {
		t.Error("corrupt files pass --fail-on expired")
	}
}

func TestFailOn(t *testing.T) {
	all := []Status{StatusOK, StatusWarning, StatusExpired, StatusNotYetValid, StatusMissing, StatusError}
	tests := []struct {
		failOn FailOn
		fails  []Status
	}{
		{FailNever, nil},
		{FailOnWarning, []Status{StatusWarning, StatusExpired, StatusNotYetValid, StatusMissing, StatusError}},
		{FailOnExpired, []Status{StatusExpired, StatusNotYetValid, StatusMissing, StatusError}},
	}
	for _, tt := range tests {
		for _, s := range all {
			want := false
			for _, x := range tt.fails {
				want = want || x == s
			}
			if got := tt.failOn.Fails(s); got != want {
				t.Errorf("--fail-on %q, status %s: fails = %v, want %v", tt.failOn, s, got, want)
			}
			err := Check([]Row{{Status: StatusOK}, {Status: s}, {Status: StatusOK}}, tt.failOn, false)
			if (err != nil) != want {
				t.Errorf("--fail-on %q, status %s: Check = %v", tt.failOn, s, err)
			}
			if err != nil {
				var fe *FailedError
				if !errors.As(err, &fe) || fe.ExitCode() != 1 || fe.Failed != 1 || fe.Total != 3 {
					t.Errorf("Check = %#v", err)
				}
				if err.Error() != "1 of 3 certificates failed the check (--fail-on "+string(tt.failOn)+")" {
					t.Errorf("message = %q", err)
				}
			}
		}
	}
	err := Check([]Row{{Status: StatusExpired}, {Status: StatusWarning}, {Status: StatusError}, {Status: StatusOK}}, FailOnWarning, true)
	if err == nil || err.Error() != "3 of 4 certificates failed the check (--fail-on warning)" {
		t.Errorf("Check = %v", err)
	}
}

func TestParseFailOn(t *testing.T) {
	for in, want := range map[string]FailOn{"": FailNever, "warning": FailOnWarning, "expired": FailOnExpired, "EXPIRED": FailOnExpired} {
		got, err := ParseFailOn(in)
		if err != nil || got != want {
			t.Errorf("ParseFailOn(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseFailOn("error"); err == nil || !strings.Contains(err.Error(), "warning, expired") {
		t.Errorf("ParseFailOn(error) = %v", err)
	}
}

func parseFile(t *testing.T, data []byte) []*x509.Certificate {
	t.Helper()
	cs, err := pki.ParseCerts(data)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}
