package datastore

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"testing"
	"time"
)

// TestStartLocal stores keys through a normal member, stops it, removes every certificate
// and CA file, and reads the keys back through StartLocal: the member starts with nothing
// listening, reads are answered, writes are refused, and afterwards the member starts
// normally again with its data intact.
func TestStartLocal(t *testing.T) {
	e, cfg, certs := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Enough writes to be spread over the log and the database.
	for i := range 200 {
		if err := e.Put(ctx, "/local/"+strconv.Itoa(i), []byte("v"+strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	saved := map[string][]byte{}
	for _, f := range []string{certs.CA, certs.ServerCert, certs.ServerKey, certs.PeerCert, certs.PeerKey, certs.ClientCert, certs.ClientKey} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		saved[f] = data
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}

	l, err := StartLocal(ctx, cfg)
	if err != nil {
		t.Fatalf("StartLocal without certificate files: %v", err)
	}
	for _, p := range []int{cfg.ClientPort, cfg.PeerPort} {
		if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), time.Second); err == nil {
			c.Close()
			t.Errorf("something listens on port %d while the member runs for local reading", p)
		}
	}
	if l.Members != 1 {
		t.Errorf("Members = %d, want 1", l.Members)
	}
	for _, i := range []int{0, 117, 199} {
		v, _, err := l.Get(ctx, "/local/"+strconv.Itoa(i))
		if err != nil || string(v) != "v"+strconv.Itoa(i) {
			t.Errorf("local Get /local/%d = %q, %v; want v%d", i, v, err, i)
		}
	}
	if keys, err := l.Keys(ctx, "/local/"); err != nil || len(keys) != 200 {
		t.Errorf("local Keys = %d keys, %v; want 200", len(keys), err)
	}
	if _, _, err := l.Get(ctx, "/absent"); !errors.Is(err, ErrNotFound) {
		t.Errorf("local Get of an absent key: %v, want ErrNotFound", err)
	}
	if err := l.Put(ctx, "/local/new", []byte("x")); err == nil {
		t.Error("Put through the local member succeeded, want refused")
	}
	if err := l.Create(ctx, "/local/new", []byte("x")); err == nil {
		t.Error("Create through the local member succeeded, want refused")
	}
	l.Close()

	for f, data := range saved {
		if err := os.WriteFile(f, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e2, err := StartEmbedded(ctx, cfg)
	if err != nil {
		t.Fatalf("StartEmbedded after the local start: %v", err)
	}
	defer e2.Close()
	if _, _, err := e2.Get(ctx, "/local/new"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the refused local write is in the datastore: %v", err)
	}
	if v, _, err := e2.Get(ctx, "/local/199"); err != nil || string(v) != "v199" {
		t.Errorf("Get /local/199 after the local start = %q, %v", v, err)
	}
}

func TestStartLocalNoMember(t *testing.T) {
	cfg := embeddedConfig(t, t.TempDir(), etcdCerts{})
	if _, err := StartLocal(context.Background(), cfg); !errors.Is(err, ErrNoLocalData) {
		t.Fatalf("StartLocal on an empty data dir: %v, want ErrNoLocalData", err)
	}
	if _, err := os.Stat(cfg.DataDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("StartLocal on an empty data dir created %s (%v)", cfg.DataDir, err)
	}
}
