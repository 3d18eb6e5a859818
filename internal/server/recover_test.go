package server

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/pki"
)

// bootstrapPaths are the files of the bootstrap record, relative to the data dir.
func bootstrapPaths() []string {
	var out []string
	for _, f := range bootstrap.Files {
		out = append(out, filepath.FromSlash(f.Path))
	}
	return out
}

func sameHashes(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	for f, h := range before {
		if after[f] != h {
			t.Errorf("%s: %s changed", what, f)
		}
	}
	for f := range after {
		if _, ok := before[f]; !ok {
			t.Errorf("%s: %s appeared", what, f)
		}
	}
}

// A server whose bootstrap files (CA files, service.key, passwd) are gone takes them back from
// its own etcd member and starts without generating a key or signing anything.
func TestStartRecoversBootstrapFilesFromOwnMember(t *testing.T) {
	dir := t.TempDir()
	fc := clock.NewFake(time.Now())
	cfg := testConfig(t, dir)
	s := startServer(t, cfg, fc, &pki.Stats{})
	s.Stop()
	before := treeHashes(t, dir)

	for _, rel := range bootstrapPaths() {
		if err := os.Remove(filepath.Join(dir, rel)); err != nil {
			t.Fatal(err)
		}
	}
	stats := &pki.Stats{}
	s = startServer(t, cfg, fc, stats)
	s.Stop()
	if k, sig := stats.Keys.Load(), stats.Signatures.Load(); k != 0 || sig != 0 {
		t.Errorf("the recovering start generated %d keys and made %d signatures, want none", k, sig)
	}
	sameHashes(t, "start without the bootstrap files", before, treeHashes(t, dir))
}

// A server whose CA file was replaced by a newer one refuses to start before it plans or
// signs any leaf, and writes nothing.
func TestStartRefusesNewerCAFileBeforeSigning(t *testing.T) {
	dir := t.TempDir()
	fc := clock.NewFake(time.Now())
	cfg := testConfig(t, dir)
	s := startServer(t, cfg, fc, &pki.Stats{})
	s.Stop()

	iss := pki.NewIssuer(nil, nil)
	key, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := iss.SelfSignedCA(key, "other-cluster-client-ca", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	newer := time.Now().Add(time.Minute)
	for name, data := range map[string][]byte{"client-ca.crt": pki.EncodeCert(cert), "client-ca.key": keyPEM} {
		p := filepath.Join(dir, "server", "tls", name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, newer, newer); err != nil {
			t.Fatal(err)
		}
	}
	before := treeHashes(t, dir)
	audit, err := os.ReadFile(filepath.Join(dir, "server", "audit.log"))
	if err != nil {
		t.Fatal(err)
	}

	stats := &pki.Stats{}
	s, err = New(cfg, Options{Log: quietLog(), Clock: fc, Stats: stats})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	err = s.Start(ctx)
	var newerErr *bootstrap.NewerError
	if !errors.As(err, &newerErr) || len(newerErr.Paths) != 2 {
		t.Fatalf("Start = %v, want a NewerError naming client-ca.crt and client-ca.key", err)
	}
	if k, sig := stats.Keys.Load(), stats.Signatures.Load(); k != 0 || sig != 0 {
		t.Errorf("the refused start generated %d keys and made %d signatures, want none", k, sig)
	}
	sameHashes(t, "refused start", before, treeHashes(t, dir))
	if after, err := os.ReadFile(filepath.Join(dir, "server", "audit.log")); err != nil || string(after) != string(audit) {
		t.Errorf("the refused start changed audit.log (%v)", err)
	}
}
