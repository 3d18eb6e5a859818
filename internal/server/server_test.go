package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/testport"
)

func freePort(t testing.TB) int {
	t.Helper()
	return testport.Free(t)
}

func testConfig(t testing.TB, dir string) Config {
	cfg := Defaults()
	cfg.DataDir = dir
	cfg.NodeName = "node-a"
	cfg.BindAddress = "127.0.0.1"
	cfg.AdvertiseAddress = "127.0.0.1"
	cfg.SupervisorPort = freePort(t)
	cfg.EtcdClientPort = freePort(t)
	cfg.EtcdPeerPort = freePort(t)
	cfg.MetricsAddress = ""
	cfg.EtcdUnsafeNoFsync = true
	return cfg
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startServer(t *testing.T, cfg Config, c clock.Clock, stats *pki.Stats) *Server {
	t.Helper()
	s, err := New(cfg, Options{Log: quietLog(), Clock: c, Stats: stats})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

// treeHashes hashes every PKI file of a data dir (not etcd's data, logs, audit log or lock).
func treeHashes(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			if rel == filepath.Join("server", "db") || rel == filepath.Join("server", "logs") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(rel, "audit.log") || strings.HasSuffix(rel, "kpki.lock") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		out[rel] = hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestWarmStartGeneratesNoKeyAndSignsNothing(t *testing.T) {
	dir := t.TempDir()
	fc := clock.NewFake(time.Now())
	cfg := testConfig(t, dir)

	cold := &pki.Stats{}
	s := startServer(t, cfg, fc, cold)
	s.Stop()
	// One key and one signature per CA and per server leaf of the table, and the
	// service-account key, which nothing signs.
	cas, leaves := int64(len(certs.CAs)), int64(len(certs.Select(certs.ServerNode, nil)))
	if cas == 0 || leaves == 0 {
		t.Fatalf("table: %d CAs, %d server leaves", cas, leaves)
	}
	if got, want := cold.Keys.Load(), cas+leaves+1; got != want {
		t.Errorf("cold start generated %d keys, want %d (%d CAs, %d server leaves, service.key)", got, want, cas, leaves)
	}
	if got, want := cold.Signatures.Load(), cas+leaves; got != want {
		t.Errorf("cold start made %d signatures, want %d (%d CAs, %d server leaves)", got, want, cas, leaves)
	}
	before := treeHashes(t, dir)

	fc.Advance(24 * time.Hour)
	warm := &pki.Stats{}
	s = startServer(t, cfg, fc, warm)
	s.Stop()
	if k, sig := warm.Keys.Load(), warm.Signatures.Load(); k != 0 || sig != 0 {
		t.Errorf("warm start generated %d keys and made %d signatures, want none", k, sig)
	}
	after := treeHashes(t, dir)
	if len(before) < 50 {
		t.Fatalf("only %d files in the data dir", len(before))
	}
	for f, h := range before {
		if after[f] != h {
			t.Errorf("%s changed on a warm start", f)
		}
	}
	for f := range after {
		if _, ok := before[f]; !ok {
			t.Errorf("%s appeared on a warm start", f)
		}
	}
}

func servedCert(t *testing.T, addr string, roots *x509.CertPool, c clock.Clock) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", Time: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

func TestRenewerRenewsLiveWithInjectedClock(t *testing.T) {
	dir := t.TempDir()
	start := time.Now()
	fc := clock.NewFake(start)
	cfg := testConfig(t, dir)
	cfg.CertValidityDays = 30
	cfg.RenewBeforeDays = 10
	cfg.RenewInterval = time.Hour
	stats := &pki.Stats{}
	s := startServer(t, cfg, fc, stats)
	defer s.Stop()
	leaves := int64(len(certs.Select(certs.ServerNode, nil)))
	firstKeys := stats.Keys.Load()

	caPEM, err := os.ReadFile(filepath.Join(dir, "server", "tls", "server-ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.SupervisorPort))
	first := servedCert(t, addr, roots, fc)
	keyBefore, err := os.ReadFile(filepath.Join(dir, "server", "tls", "serving-supervisor.key"))
	if err != nil {
		t.Fatal(err)
	}

	// Wait for the renew loop to hold its ticker, then move time outside the window:
	// nothing is due yet.
	waitFor(t, func() bool { return fc.Tickers() > 0 })
	signed := stats.Signatures.Load()
	fc.Advance(5 * 24 * time.Hour)
	if err := s.RenewNow(); err != nil { // serialises with the loop's pass
		t.Fatal(err)
	}
	if got := stats.Signatures.Load(); got != signed {
		t.Fatalf("%d signatures outside the renewal window", got-signed)
	}

	// 21 days after issuance the 30-day leaves are inside the 10-day window.
	fc.Advance(16 * 24 * time.Hour)
	waitFor(t, func() bool { return stats.Signatures.Load() >= signed+leaves })
	waitFor(t, func() bool { return servedCert(t, addr, roots, fc).SerialNumber.Cmp(first.SerialNumber) != 0 })
	now := servedCert(t, addr, roots, fc)
	if !now.NotAfter.After(first.NotAfter) {
		t.Errorf("renewed certificate expires %s, not after the old %s", now.NotAfter, first.NotAfter)
	}
	if k := stats.Keys.Load(); k != firstKeys {
		t.Errorf("renewal generated keys: %d keys in all, want the %d of the first start", k, firstKeys)
	}
	keyAfter, err := os.ReadFile(filepath.Join(dir, "server", "tls", "serving-supervisor.key"))
	if err != nil {
		t.Fatal(err)
	}
	if string(keyAfter) != string(keyBefore) {
		t.Error("renewal replaced the key; it must keep it")
	}
	if v := testutil.ToFloat64(s.Metrics().Issued.WithLabelValues("serving")); v < 4 {
		t.Errorf("kpki_certificates_issued_total{kind=serving} = %v, want at least 4 (issue + renew)", v)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
