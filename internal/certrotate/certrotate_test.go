package certrotate

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
)

var now = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

// serverDir lays out every CA and server leaf of the table.
func serverDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	l := datadir.Layout{Root: dir}
	iss := pki.NewIssuer(clock.NewFake(now), nil)
	k, _ := iss.NewECKey()
	c, err := iss.SelfSignedCA(k, "ca", time.Hour*24*365)
	if err != nil {
		t.Fatal(err)
	}
	ca := &pki.CA{Cert: c, Key: k, BundlePEM: pki.EncodeCert(c)}
	kp, _ := pki.EncodeKey(k)
	for _, s := range certs.CAs {
		must(t, datadir.WritePair(l.TLS(s.CertFile), ca.BundlePEM, l.TLS(s.KeyFile), kp))
	}
	for _, leaf := range certs.Select(certs.ServerNode, nil) {
		lk, _ := iss.NewECKey()
		lc, err := iss.SignLeaf(ca, lk.Public(), pki.LeafProfile{CommonName: leaf.CN}, time.Hour*24)
		must(t, err)
		lkp, _ := pki.EncodeKey(lk)
		must(t, datadir.WritePair(l.TLS(leaf.Name+".crt"), certs.BuildCertFile(lc, ca), l.TLS(leaf.Name+".key"), lkp))
	}
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestRotateSelectedServices(t *testing.T) {
	dir := serverDir(t)
	l := datadir.Layout{Root: dir}
	svc, err := certs.ResolveServices([]string{"admin", "rke2-server"})
	must(t, err)
	p, err := Build(Options{DataDir: dir, Services: svc, Now: now})
	must(t, err)
	want := []string{l.TLS("client-admin.crt"), l.TLS("client-admin.key"), l.TLS("serving-supervisor.crt"), l.TLS("serving-supervisor.key")}
	if strings.Join(p.Delete, ",") != strings.Join(want, ",") {
		t.Fatalf("delete %v, want %v", p.Delete, want)
	}
	var out bytes.Buffer
	p.Print(&out, true)
	if !strings.Contains(out.String(), "would delete "+l.TLS("client-admin.key")) || !strings.Contains(out.String(), "would back up") {
		t.Errorf("dry-run output:\n%s", out.String())
	}
	if _, err := os.Stat(l.ForceRestart()); err == nil {
		t.Fatal("planning wrote the marker")
	}
	log := audit.Open(l.AuditLog())
	must(t, p.Execute(log, "test", now))
	for _, f := range want {
		if datadir.Exists(f) {
			t.Errorf("%s not deleted", f)
		}
		backup := filepath.Join(p.Backups[0].Dir, filepath.Base(f))
		if !datadir.Exists(backup) {
			t.Errorf("%s not backed up", backup)
		}
	}
	if p.Backups[0].Dir != l.Server("tls-1772323200") {
		t.Errorf("backup dir %s", p.Backups[0].Dir)
	}
	for _, keep := range []string{"client-controller.crt", "server-ca.crt", "server-ca.key", "etcd/client.key"} {
		if !datadir.Exists(l.TLS(keep)) {
			t.Errorf("%s deleted", keep)
		}
	}
	if !datadir.Exists(l.ForceRestart()) {
		t.Error("force-restart marker missing")
	}
	a, err := os.ReadFile(l.AuditLog())
	must(t, err)
	if n := strings.Count(string(a), `"action":"rotate"`); n != 2 {
		t.Errorf("%d rotate audit entries, want 2:\n%s", n, a)
	}
	if strings.Contains(string(a), "PRIVATE KEY") {
		t.Error("audit log holds key material")
	}
}

func TestRotateAllNeverTouchesCAs(t *testing.T) {
	dir := serverDir(t)
	l := datadir.Layout{Root: dir}
	p, err := Build(Options{DataDir: dir, Now: now})
	must(t, err)
	if got, want := len(p.Delete), 2*len(certs.Select(certs.ServerNode, nil)); got != want {
		t.Errorf("%d files to delete, want %d", got, want)
	}
	for _, f := range p.Delete {
		for _, c := range certs.CAs {
			if f == l.TLS(c.CertFile) || f == l.TLS(c.KeyFile) {
				t.Errorf("would delete CA file %s", f)
			}
		}
	}
}

func TestLockRefusesWhileRunning(t *testing.T) {
	dir := serverDir(t)
	l := datadir.Layout{Root: dir}
	held, err := datadir.Lock(l.LockFile())
	must(t, err)
	if _, err := Lock(dir); !errors.Is(err, ErrRunning) {
		t.Fatalf("Lock while held: %v", err)
	}
	held.Unlock()
	release, err := Lock(dir)
	must(t, err)
	release()
}

func TestNothingToRotate(t *testing.T) {
	if _, err := Build(Options{DataDir: t.TempDir(), Now: now}); err == nil || !strings.Contains(err.Error(), "holds no kpki") {
		t.Fatalf("empty dir: %v", err)
	}
	dir := serverDir(t)
	l := datadir.Layout{Root: dir}
	must(t, os.Remove(l.TLS("client-admin.crt")))
	must(t, os.Remove(l.TLS("client-admin.key")))
	if _, err := Build(Options{DataDir: dir, Services: []string{"admin"}, Now: now}); err == nil {
		t.Fatal("rotating a service with no files succeeded")
	}
}
