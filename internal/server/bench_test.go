package server

import (
	"testing"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/pki"
)

// newOffline returns a server whose PKI steps can run without a datastore.
func newOffline(b testing.TB, dir string, c clock.Clock, stats *pki.Stats) *Server {
	b.Helper()
	s, err := New(testConfig(b, dir), Options{Log: quietLog(), Clock: c, Stats: stats})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkColdPKI generates a whole server PKI in an empty data dir: five CAs, the
// service-account key, every leaf, kubeconfigs and token files.
func BenchmarkColdPKI(b *testing.B) {
	c := clock.Real{}
	for b.Loop() {
		b.StopTimer()
		dir := b.TempDir()
		s := newOffline(b, dir, c, nil)
		b.StartTimer()
		if err := s.initCAs(); err != nil {
			b.Fatal(err)
		}
		if err := s.buildPKI("bench"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkColdPKIPrimitives performs only the key generations and signatures a cold
// start needs (counted, not assumed), as the floor for BenchmarkColdPKI.
func BenchmarkColdPKIPrimitives(b *testing.B) {
	stats := &pki.Stats{}
	s := newOffline(b, b.TempDir(), clock.Real{}, stats)
	if err := s.initCAs(); err != nil {
		b.Fatal(err)
	}
	if err := s.buildPKI("bench"); err != nil {
		b.Fatal(err)
	}
	ecKeys := int(stats.Keys.Load()) - 1 // all EC but the service-account RSA key
	sigs := int(stats.Signatures.Load())
	iss := pki.NewIssuer(clock.Real{}, nil)
	for b.Loop() {
		caKey, err := iss.NewECKey()
		if err != nil {
			b.Fatal(err)
		}
		caCert, err := iss.SelfSignedCA(caKey, "bench-ca", time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		ca := &pki.CA{Cert: caCert, Key: caKey}
		for i := 1; i < ecKeys; i++ {
			if _, err := iss.NewECKey(); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := iss.NewRSAKey(2048); err != nil {
			b.Fatal(err)
		}
		for i := 1; i < sigs; i++ {
			if _, err := iss.SignLeaf(ca, caKey.Public(), pki.LeafProfile{CommonName: "x"}, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkWarmCheck is a warm start's PKI pass over an up-to-date data dir: read and
// parse every file, plan every leaf, compare every derived file.
func BenchmarkWarmCheck(b *testing.B) {
	stats := &pki.Stats{}
	s := newOffline(b, b.TempDir(), clock.Real{}, stats)
	if err := s.initCAs(); err != nil {
		b.Fatal(err)
	}
	if err := s.buildPKI("bench"); err != nil {
		b.Fatal(err)
	}
	keys, sigs := stats.Keys.Load(), stats.Signatures.Load()
	for b.Loop() {
		if err := s.buildPKI("bench"); err != nil {
			b.Fatal(err)
		}
	}
	if stats.Keys.Load() != keys || stats.Signatures.Load() != sigs {
		b.Fatal("warm check generated keys or signed")
	}
	b.ReportMetric(float64(len(certs.Select(certs.ServerNode, nil))), "leaves/op")
}
