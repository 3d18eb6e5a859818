package e2e

import (
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestServerBadInput starts servers on broken input: each start must fail with one `kpki: ` line
// naming the cause and the file, and leave the data dir as it was.
func TestServerBadInput(t *testing.T) {
	t.Parallel()

	// firstStart gives a data dir after one clean start and stop, and the ports it used.
	firstStart := func(t *testing.T) (string, serverPorts) {
		t.Helper()
		dd := filepath.Join(t.TempDir(), "data")
		s := startServer(t, dd)
		s.WaitReady(t)
		s.Stop(t)
		return dd, s.Ports
	}

	t.Run("corrupt leaf certificate", func(t *testing.T) {
		t.Parallel()
		dd, ports := firstStart(t)
		crt := filepath.Join(dd, "server", "tls", "client-admin.crt")
		writeFile(t, crt, []byte("this is not a certificate\n"), 0o644)
		before := hashTree(t, dd)
		code, stderr := startServerOn(t, ports, dd).Wait(t, failTimeout)
		assertFailure(t, code, stderr, crt)
		assertTreeUnchanged(t, "corrupt client-admin.crt", before, hashTree(t, dd))
	})

	t.Run("unreadable key file", func(t *testing.T) {
		t.Parallel()
		dd, ports := firstStart(t)
		key := filepath.Join(dd, "server", "tls", "client-admin.key")
		if err := os.Remove(key); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(key, 0o700); err != nil {
			t.Fatal(err)
		}
		before := hashTree(t, dd)
		code, stderr := startServerOn(t, ports, dd).Wait(t, failTimeout)
		assertFailure(t, code, stderr, key)
		assertTreeUnchanged(t, "client-admin.key is a directory", before, hashTree(t, dd))
	})

	t.Run("data dir under a regular file", func(t *testing.T) {
		t.Parallel()
		parent := t.TempDir()
		file := filepath.Join(parent, "not-a-dir")
		writeFile(t, file, []byte("a regular file\n"), 0o644)
		before := hashTree(t, parent)
		code, stderr := startServer(t, filepath.Join(file, "data")).Wait(t, failTimeout)
		assertFailure(t, code, stderr, file)
		assertTreeUnchanged(t, "data dir under a regular file", before, hashTree(t, parent))
	})

	for _, which := range []string{"supervisor", "etcd client"} {
		t.Run(which+" port in use", func(t *testing.T) {
			t.Parallel()
			dd := filepath.Join(t.TempDir(), "data")
			ports := newServerPorts(t, loopback)
			port := ports.Supervisor
			if which == "etcd client" {
				port = ports.EtcdClient
			}
			l, err := net.Listen("tcp", net.JoinHostPort(loopback, strconv.Itoa(port)))
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			code, stderr := startServerOn(t, ports, dd).Wait(t, failTimeout)
			assertFailure(t, code, stderr, strconv.Itoa(port))
			if tree := hashTree(t, dd); len(tree) != 0 {
				t.Errorf("the failed start created data dir content:\n  %s", strings.Join(treeDiff(nil, tree), "\n  "))
			}
		})
	}

	t.Run("malformed config file", func(t *testing.T) {
		t.Parallel()
		dd := filepath.Join(t.TempDir(), "data")
		cfg := filepath.Join(t.TempDir(), "config.yaml")
		writeFile(t, cfg, []byte("supervisor-port: [9345\ntls-san:\n  - a\n - b: : :\n"), 0o644)
		code, stderr := startServer(t, dd, "--config", cfg).Wait(t, failTimeout)
		assertFailure(t, code, stderr, cfg)
		if tree := hashTree(t, dd); len(tree) != 0 {
			t.Errorf("the failed start created data dir content:\n  %s", strings.Join(treeDiff(nil, tree), "\n  "))
		}
	})

	t.Run("etcd that will not start", func(t *testing.T) {
		t.Parallel()
		dd, ports := firstStart(t)
		db := filepath.Join(dd, "server", "db", "etcd", "member", "snap", "db")
		if _, err := os.Stat(db); err != nil {
			t.Fatalf("embedded etcd database not where SPEC §8 puts it: %v", err)
		}
		garbage := make([]byte, 1<<20)
		if _, err := rand.Read(garbage); err != nil {
			t.Fatal(err)
		}
		writeFile(t, db, garbage, 0o600)
		before := hashTree(t, dd)
		code, stderr := startServerOn(t, ports, dd).Wait(t, failTimeout)
		assertFailure(t, code, stderr, "etcd")
		assertTreeUnchanged(t, "corrupt etcd database", before, hashTree(t, dd))
	})
}
