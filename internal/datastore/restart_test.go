package datastore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/clock"
)

// TestRestartTakesNewCertificates: the member restarts in place with certificates of a
// new CA written over the old files; the same Store answers through its new client,
// keeps the data, and the restart is not reported as a failure.
func TestRestartTakesNewCertificates(t *testing.T) {
	e, cfg, certs := startEtcd(t)
	defer e.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := e.Put(ctx, "/k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	oldCA, err := os.ReadFile(certs.CA)
	if err != nil {
		t.Fatal(err)
	}
	oldClient := e.Client()
	newCerts := writeEtcdCerts(t, filepath.Dir(certs.CA))
	if newCA, _ := os.ReadFile(newCerts.CA); string(newCA) == string(oldCA) {
		t.Fatal("the new CA file is the old one; the test would prove nothing")
	}
	if err := e.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if e.Client() == oldClient {
		t.Error("the Store still uses the client made with the old certificates")
	}
	v, _, err := e.Get(ctx, "/k")
	if err != nil || string(v) != "v" {
		t.Fatalf("after the restart: %q %v", v, err)
	}
	// A client holding the old CA no longer trusts the member.
	oldCAFile := filepath.Join(t.TempDir(), "old-ca.crt")
	writeFile(t, oldCAFile, oldCA)
	if _, err := Connect(ctx, []string{cfg.ClientURL()}, ClientTLS{CAFile: oldCAFile, CertFile: newCerts.ClientCert, KeyFile: newCerts.ClientKey}, 2*time.Second); err == nil {
		t.Error("a client trusting only the old CA connected: the member did not restart with the new certificate")
	}
	select {
	case err := <-e.Err():
		t.Errorf("the restart was reported as a failure of the member: %v", err)
	default:
	}
}

// TestLockIsExclusive: a second owner does not get a held lock and is told who holds
// it; once released, it gets it.
func TestLockIsExclusive(t *testing.T) {
	e, _, _ := startEtcd(t)
	defer e.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := e.Lock(ctx, "x", "server-a", time.Minute, 0, time.Millisecond, clock.Real{})
	if err != nil {
		t.Fatal(err)
	}
	if h, err := e.Holder(ctx, "x"); err != nil || h != "server-a" {
		t.Errorf("holder %q %v, want server-a", h, err)
	}
	_, err = e.Lock(ctx, "x", "server-b", time.Minute, 0, time.Millisecond, clock.Real{})
	if !errors.Is(err, ErrLockTimeout) || !strings.Contains(err.Error(), "server-a") {
		t.Fatalf("second lock: %v, want ErrLockTimeout naming server-a", err)
	}
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if h, err := e.Holder(ctx, "x"); err != nil || h != "" {
		t.Errorf("holder after unlock %q %v, want none", h, err)
	}
	b, err := e.Lock(ctx, "x", "server-b", time.Minute, 0, time.Millisecond, clock.Real{})
	if err != nil {
		t.Fatalf("lock after the release: %v", err)
	}
	if err := b.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestRestartDoesNotWaitForWatches: another client (as kube-apiserver) holds a watch on
// the member. A restart closes it at once rather than waiting out etcd's graceful stop,
// which lasts its request timeout (7 s) while a watch stream is open; the watch then
// sees the member go and works again on the restarted member.
func TestRestartDoesNotWaitForWatches(t *testing.T) {
	e, cfg, _ := startEtcd(t)
	defer e.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	other, err := Connect(ctx, []string{cfg.ClientURL()}, cfg.clientTLS(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	wch := other.Client().Watch(ctx, "/w")
	if err := e.Put(ctx, "/w", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if ev := <-wch; ev.Err() != nil || len(ev.Events) != 1 {
		t.Fatalf("watch before the restart: %+v", ev)
	}
	start := time.Now()
	if err := e.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("restart with an open watch: %v", took)
	if took > 5*time.Second {
		t.Errorf("the restart took %v: the member waited for the open watch stream", took)
	}
	if err := e.Put(ctx, "/w", []byte("2")); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-wch:
		if ev.Err() != nil || len(ev.Events) != 1 || string(ev.Events[0].Kv.Value) != "2" {
			t.Fatalf("watch after the restart: %+v", ev)
		}
	case <-ctx.Done():
		t.Fatal("the watch saw nothing after the restart")
	}
}
