package certapply

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/metrics"
	"github.com/kpki/kpki/internal/pki"
)

const day = 24 * time.Hour

type fixture struct {
	t       *testing.T
	dir     string
	clock   *clock.Fake
	iss     *pki.Issuer
	stats   *pki.Stats
	ca      *pki.CA
	log     *bytes.Buffer
	audit   *audit.Log
	metrics *metrics.Metrics
	app     *Applier
	leaf    Leaf
	signed  int
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	fc := clock.NewFake(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	stats := &pki.Stats{}
	iss := pki.NewIssuer(fc, stats)
	key, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := iss.SelfSignedCA(key, "test-client-ca", 3650*day)
	if err != nil {
		t.Fatal(err)
	}
	ca := &pki.CA{Cert: caCert, Key: key, Bundle: []*x509.Certificate{caCert}, BundlePEM: pki.EncodeCert(caCert)}
	dir := t.TempDir()
	var buf bytes.Buffer
	f := &fixture{t: t, dir: dir, clock: fc, iss: iss, stats: stats, ca: ca, log: &buf, metrics: metrics.New()}
	f.audit = audit.Open(filepath.Join(dir, "audit.log"))
	t.Cleanup(func() { f.audit.Close() })
	f.app = &Applier{Issuer: iss, Log: slog.New(slog.NewTextHandler(&buf, nil)), Clock: fc, RenewBefore: 90 * day,
		Audit: func(e audit.Entry) {
			if err := f.audit.Write(e); err != nil {
				t.Fatal(err)
			}
		}, Metrics: f.metrics}
	var row certs.Leaf
	for _, l := range certs.Select(certs.ServerNode, nil) {
		if l.Name == "client-admin" {
			row = l
		}
	}
	if row.Name == "" {
		t.Fatal("no client-admin row in the table")
	}
	f.leaf = Leaf{Row: row, Want: row.Profile(certs.Params{NodeName: "n1", ClusterDomain: "cluster.local"}), CA: ca,
		CertFile: filepath.Join(dir, "tls", "client-admin.crt"), KeyFile: filepath.Join(dir, "tls", "client-admin.key"), Actor: "tester"}
	return f
}

// sign signs on the fixture's CA for a year, counting calls.
func (f *fixture) sign(_ context.Context, key crypto.Signer, want pki.LeafProfile) (*x509.Certificate, error) {
	f.signed++
	return f.iss.SignLeaf(f.ca, key.Public(), want, 365*day)
}

func (f *fixture) apply() Outcome {
	f.t.Helper()
	out, err := f.app.Apply(context.Background(), f.leaf, f.sign)
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

func (f *fixture) read(p string) []byte {
	f.t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

func (f *fixture) auditEntries() []audit.Entry {
	f.t.Helper()
	data, err := os.ReadFile(f.audit.Path())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		f.t.Fatal(err)
	}
	var out []audit.Entry
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var e audit.Entry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			f.t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

func (f *fixture) issued() float64 {
	return testutil.ToFloat64(f.metrics.Issued.WithLabelValues(f.leaf.Row.Kind))
}

func TestIssueKeepRenew(t *testing.T) {
	f := newFixture(t)

	// Nothing on disk: a new key and certificate.
	out := f.apply()
	if out.Decision.Action != certs.Issue || len(out.Written) != 2 || out.Cert == nil {
		t.Fatalf("first apply: %v, wrote %v", out.Decision.Action, out.Written)
	}
	for _, p := range []string{f.leaf.CertFile, f.leaf.KeyFile} {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", p, st.Mode(), err)
		}
	}
	if got, want := f.read(f.leaf.CertFile), certs.BuildCertFile(out.Cert, f.ca); !bytes.Equal(got, want) {
		t.Error("the certificate file is not the leaf and its CA bundle")
	}
	keyBefore := f.read(f.leaf.KeyFile)
	if !strings.Contains(f.log.String(), `msg="issued certificate"`) || f.issued() != 1 {
		t.Errorf("issue: metric %v, log:\n%s", f.issued(), f.log)
	}
	entries := f.auditEntries()
	if len(entries) != 1 || entries[0].Action != "issue" || entries[0].Actor != "tester" || entries[0].File != f.leaf.CertFile ||
		entries[0].Serial != audit.SerialHex(out.Cert) || entries[0].OldFingerprint != "" || !entries[0].Time.Equal(f.clock.Now()) {
		t.Fatalf("audit after the issuance: %+v", entries)
	}
	if bytes.Contains(f.read(f.audit.Path()), []byte("PRIVATE KEY")) {
		t.Fatal("the audit log holds a key")
	}

	// Up to date: nothing is signed, written, logged or audited.
	f.log.Reset()
	sigs := f.signed
	certBefore := f.read(f.leaf.CertFile)
	if out := f.apply(); out.Decision.Action != certs.Keep || len(out.Written) != 0 {
		t.Errorf("second apply: %v wrote %v", out.Decision.Action, out.Written)
	}
	if f.signed != sigs || f.log.Len() != 0 || len(f.auditEntries()) != 1 || !bytes.Equal(f.read(f.leaf.CertFile), certBefore) {
		t.Errorf("a keep signed, logged or audited:\n%s", f.log)
	}

	// Inside the renewal window: renewed with the same key.
	f.clock.Advance(300 * day)
	old := out.Cert
	out = f.apply()
	if out.Decision.Action != certs.Renew || len(out.Written) != 1 || !bytes.Equal(f.read(f.leaf.KeyFile), keyBefore) {
		t.Fatalf("renewal: %v wrote %v (key kept: %v)", out.Decision.Action, out.Written, bytes.Equal(f.read(f.leaf.KeyFile), keyBefore))
	}
	entries = f.auditEntries()
	last := entries[len(entries)-1]
	if len(entries) != 2 || last.Action != "renew" || last.OldFingerprint != audit.Fingerprint(old) || last.Fingerprint != audit.Fingerprint(out.Cert) {
		t.Errorf("audit after the renewal: %+v", entries)
	}
	if !strings.Contains(f.log.String(), `msg="renewed certificate"`) || !strings.Contains(f.log.String(), "old-expiry=") || f.issued() != 2 {
		t.Errorf("renewal: metric %v, log:\n%s", f.issued(), f.log)
	}
}

func TestNewKeyForALostKeyIsAnIssue(t *testing.T) {
	f := newFixture(t)
	f.apply()
	if err := os.Remove(f.leaf.KeyFile); err != nil {
		t.Fatal(err)
	}
	f.leaf.MissingReason = "never used: the certificate is there"
	out := f.apply()
	if out.Decision.Action != certs.Issue || len(out.Written) != 2 {
		t.Fatalf("apply without the key: %v wrote %v", out.Decision.Action, out.Written)
	}
	entries := f.auditEntries()
	if last := entries[len(entries)-1]; last.Action != "issue" || last.OldFingerprint == "" {
		t.Errorf("a new key for an existing certificate is audited %+v; want issue with the old fingerprint", last)
	}
	if !strings.Contains(f.log.String(), `msg="renewed certificate with a new key"`) || !strings.Contains(f.log.String(), `reason="key missing"`) {
		t.Errorf("log:\n%s", f.log)
	}
}

func TestMissingReasonNamesWhyTheCertificateIsGone(t *testing.T) {
	f := newFixture(t)
	f.leaf.MissingReason = "removed by `kpki certificate rotate`"
	f.apply()
	if !strings.Contains(f.log.String(), "removed by `kpki certificate rotate`") {
		t.Errorf("log:\n%s", f.log)
	}
}

func TestRebundleSignsNothing(t *testing.T) {
	f := newFixture(t)
	f.apply()
	// The CA file gains a certificate after the CA (a cross-signed chain, say).
	key, err := f.iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	extra, err := f.iss.SelfSignedCA(key, "extra", 3650*day)
	if err != nil {
		t.Fatal(err)
	}
	f.ca.Bundle = append(f.ca.Bundle, extra)
	f.ca.BundlePEM = append(append([]byte{}, f.ca.BundlePEM...), pki.EncodeCert(extra)...)
	sigs, keys := f.stats.Signatures.Load(), f.stats.Keys.Load()
	f.log.Reset()
	out := f.apply()
	if out.Decision.Action != certs.Rebundle || len(out.Written) != 1 {
		t.Fatalf("apply after the bundle changed: %v wrote %v", out.Decision.Action, out.Written)
	}
	if f.stats.Signatures.Load() != sigs || f.stats.Keys.Load() != keys {
		t.Error("a rebundle signed or generated a key")
	}
	list, err := pki.ParseCerts(f.read(f.leaf.CertFile))
	if err != nil || len(list) != 3 || !list[2].Equal(extra) {
		t.Errorf("rebundled file holds %d certificates (%v)", len(list), err)
	}
	if len(f.auditEntries()) != 1 || f.issued() != 1 || !strings.Contains(f.log.String(), "rewrote the CA bundle of certificate") {
		t.Errorf("a rebundle was audited or counted, or not logged:\n%s", f.log)
	}
}

func TestCorruptFilesAndSignerErrors(t *testing.T) {
	f := newFixture(t)
	f.apply()
	if err := os.WriteFile(f.leaf.KeyFile, []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := f.app.Apply(context.Background(), f.leaf, f.sign)
	var fe *FileError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), f.leaf.KeyFile) || !strings.Contains(err.Error(), "--service "+f.leaf.Row.Service) {
		t.Fatalf("corrupt key: %v", err)
	}
	if string(f.read(f.leaf.KeyFile)) != "garbage\n" {
		t.Error("the corrupt key was replaced")
	}

	g := newFixture(t)
	refused := errors.New("the signer refused")
	_, err = g.app.Apply(context.Background(), g.leaf, func(context.Context, crypto.Signer, pki.LeafProfile) (*x509.Certificate, error) {
		return nil, refused
	})
	if !errors.Is(err, refused) || errors.As(err, &fe) {
		t.Fatalf("signer error: %v", err)
	}
	for _, p := range []string{g.leaf.CertFile, g.leaf.KeyFile} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s written although the signer failed (%v)", p, err)
		}
	}
	if len(g.auditEntries()) != 0 || g.issued() != 0 {
		t.Error("a failed signing was audited or counted")
	}
}

func TestShortValidityWarns(t *testing.T) {
	f := newFixture(t)
	_, err := f.app.Apply(context.Background(), f.leaf, func(_ context.Context, key crypto.Signer, want pki.LeafProfile) (*x509.Certificate, error) {
		return f.iss.SignLeaf(f.ca, key.Public(), want, 30*day)
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(f.log.String(), "renew again at its next pass") {
		t.Errorf("no warning about a certificate shorter than the renewal window:\n%s", f.log)
	}
}

func TestNilAuditAndMetrics(t *testing.T) {
	f := newFixture(t)
	f.app.Audit, f.app.Metrics = nil, nil
	if out := f.apply(); out.Decision.Action != certs.Issue {
		t.Fatalf("apply: %v", out.Decision.Action)
	}
	if len(f.auditEntries()) != 0 {
		t.Error("audited without an audit sink")
	}
}
