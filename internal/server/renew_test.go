package server

import (
	"bytes"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/pki"
)

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestShortCA runs a server whose generated CAs are valid 20 days, with 365-day leaves,
// a 90-day renewal window and the default 365-day CA warning window, on a fake clock:
// every leaf expires with its CA, each CA is warned about at start and once per renewal
// pass, kpki_ca_expiring is 1 for each, and hourly renewal passes sign nothing — not
// inside the renewal window, and not after the CAs have expired.
func TestShortCA(t *testing.T) {
	dir := t.TempDir()
	fc := clock.NewFake(time.Now().Truncate(time.Second))
	cfg := testConfig(t, dir)
	cfg.CAValidityDays = 20
	cfg.RenewInterval = 10000 * time.Hour // the test runs the passes itself
	var logs syncBuffer
	stats := &pki.Stats{}
	s, err := New(cfg, Options{Log: slog.New(slog.NewTextHandler(&logs, nil)), Clock: fc, Stats: stats})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()

	tls := filepath.Join(dir, "server", "tls")
	caEnd := map[certs.CAID]time.Time{}
	for _, c := range certs.CAs {
		caEnd[c.ID] = readFirstCert(t, filepath.Join(tls, filepath.FromSlash(c.CertFile))).NotAfter
		if want := fc.Now().Add(20 * 24 * time.Hour); !caEnd[c.ID].Equal(want) {
			t.Fatalf("%s expires %s, want %s", c.ID, caEnd[c.ID], want)
		}
	}
	for _, l := range certs.Select(certs.ServerNode, nil) {
		c := readFirstCert(t, filepath.Join(tls, filepath.FromSlash(l.Name+".crt")))
		if !c.NotAfter.Equal(caEnd[l.Signer]) {
			t.Errorf("%s expires %s, want its CA's %s (capped, not 365 days)", l.Name, c.NotAfter, caEnd[l.Signer])
		}
		if !c.BasicConstraintsValid || c.IsCA {
			t.Errorf("%s: basicConstraints valid=%v CA=%v, want CA:FALSE", l.Name, c.BasicConstraintsValid, c.IsCA)
		}
	}
	for _, c := range certs.CAs {
		file := filepath.Join(tls, filepath.FromSlash(c.CertFile))
		if v := testutil.ToFloat64(s.Metrics().CAExpiring.WithLabelValues(file)); v != 1 {
			t.Errorf("kpki_ca_expiring{file=%s} = %v, want 1", file, v)
		}
		if v := testutil.ToFloat64(s.Metrics().CAChainExpiry.WithLabelValues(file)); v != float64(caEnd[c.ID].Unix()) {
			t.Errorf("kpki_ca_chain_expiration_seconds{file=%s} = %v, want %d", file, v, caEnd[c.ID].Unix())
		}
	}

	// The loop's first warning comes before it holds its ticker.
	waitFor(t, func() bool { return fc.Tickers() > 0 })
	warnings := func() int { return strings.Count(logs.String(), "CA certificate expires within the CA warning window") }
	if got := warnings(); got != len(certs.CAs) {
		t.Fatalf("%d CA warnings at start, want one per CA (%d):\n%s", got, len(certs.CAs), logs.String())
	}
	for _, want := range []string{"file=" + filepath.Join(tls, "server-ca.crt"), `subject="CN=kpki-server-ca@`, "days-left=20", "warn-days=365"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("warnings lack %q:\n%s", want, logs.String())
		}
	}

	signed := stats.Signatures.Load()
	const passes = 48
	for i := 1; i <= passes; i++ {
		fc.Advance(time.Hour)
		if err := s.RenewNow(); err != nil {
			t.Fatalf("pass %d: %v", i, err)
		}
		if got := warnings(); got != (i+1)*len(certs.CAs) {
			t.Fatalf("after pass %d: %d CA warnings, want %d (one per CA per pass)", i, got, (i+1)*len(certs.CAs))
		}
	}
	if got := stats.Signatures.Load() - signed; got != 0 {
		t.Errorf("%d signatures in %d renewal passes, want none (the leaves already expire with their CAs)", got, passes)
	}

	// Past the CAs' expiry: the passes still sign nothing and fail nothing, and say so.
	fc.Advance(20 * 24 * time.Hour)
	if err := s.RenewNow(); err != nil {
		t.Fatalf("pass after the CAs expired: %v", err)
	}
	if got := stats.Signatures.Load() - signed; got != 0 {
		t.Errorf("%d signatures after the CAs expired", got)
	}
	if got := strings.Count(logs.String(), "CA certificate has expired"); got != len(certs.CAs) {
		t.Errorf("%d expired-CA errors, want %d:\n%s", got, len(certs.CAs), logs.String())
	}
}

// TestCAWarnWindow checks that a CA outside the window is neither logged nor flagged.
func TestCAWarnWindow(t *testing.T) {
	dir := t.TempDir()
	fc := clock.NewFake(time.Now())
	cfg := testConfig(t, dir)
	cfg.CAValidityDays = 400
	cfg.CAWarnDays = 300
	cfg.RenewInterval = 10000 * time.Hour
	var logs syncBuffer
	s, err := New(cfg, Options{Log: slog.New(slog.NewTextHandler(&logs, nil)), Clock: fc})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	waitFor(t, func() bool { return fc.Tickers() > 0 })
	file := filepath.Join(dir, "server", "tls", "server-ca.crt")
	if strings.Contains(logs.String(), "CA warning window") {
		t.Errorf("warned about CAs with 400 days left and a 300-day window:\n%s", logs.String())
	}
	if v := testutil.ToFloat64(s.Metrics().CAExpiring.WithLabelValues(file)); v != 0 {
		t.Errorf("kpki_ca_expiring = %v, want 0", v)
	}
	fc.Advance(101 * 24 * time.Hour)
	if err := s.RenewNow(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(logs.String(), "CA certificate expires within the CA warning window"); got != len(certs.CAs) {
		t.Errorf("%d warnings once inside the window, want %d", got, len(certs.CAs))
	}
	if v := testutil.ToFloat64(s.Metrics().CAExpiring.WithLabelValues(file)); v != 1 {
		t.Errorf("kpki_ca_expiring = %v once inside the window, want 1", v)
	}
}

func TestCAWarnDaysValidated(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.CAWarnDays = -1
	if _, err := New(cfg, Options{Log: quietLog()}); err == nil || !strings.Contains(err.Error(), "--ca-warn-days -1 must be at least 0") {
		t.Errorf("New with --ca-warn-days -1: %v", err)
	}
}

func readFirstCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := pki.ParseCerts(data)
	if err != nil {
		t.Fatal(err)
	}
	return cs[0]
}
