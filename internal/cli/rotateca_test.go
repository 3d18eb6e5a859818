package cli

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

// stagedWith makes <dir>/tls with a good server-ca.key plus whatever setup puts at
// tls/server-ca.crt.
func stagedWith(t *testing.T, setup func(t *testing.T, crt string)) string {
	t.Helper()
	dir := t.TempDir()
	tls := filepath.Join(dir, "tls")
	if err := os.MkdirAll(tls, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tls, "server-ca.key"), []byte("-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	setup(t, filepath.Join(tls, "server-ca.crt"))
	return dir
}

func TestReadStagedRefusesHostileFiles(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "real.crt")
	if err := os.WriteFile(outside, []byte("PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	symlink := func(to string) func(t *testing.T, crt string) {
		return func(t *testing.T, crt string) {
			if err := os.Symlink(to, crt); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, crt string)
		want  []string
	}{
		{"symlink to /dev/zero", symlink("/dev/zero"), []string{"character device"}},
		{"FIFO", func(t *testing.T, crt string) {
			if err := syscall.Mkfifo(crt, 0o600); err != nil {
				t.Fatal(err)
			}
		}, []string{"named pipe"}},
		{"dangling symlink", symlink("/nonexistent/kpki-ca.crt"), []string{"is a dangling symlink"}},
		{"100 MB sparse file", func(t *testing.T, crt string) {
			f, err := os.Create(crt)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := f.Truncate(100 << 20); err != nil {
				t.Fatal(err)
			}
		}, []string{"larger than 1 MiB", "104857600 bytes"}},
		{"empty file", func(t *testing.T, crt string) {
			if err := os.WriteFile(crt, []byte("\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, []string{"is empty"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := stagedWith(t, tc.setup)
			done := make(chan error, 1)
			go func() {
				_, err := readStaged(dir)
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("reading the staging dir blocked")
			}
			if err == nil {
				t.Fatal("hostile staged file accepted")
			}
			for _, w := range append(tc.want, filepath.Join(dir, "tls", "server-ca.crt")) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}

	t.Run("symlink to a regular file is read", func(t *testing.T) {
		dir := stagedWith(t, symlink(outside))
		staged, err := readStaged(dir)
		if err != nil {
			t.Fatal(err)
		}
		if string(staged["ServerCA"]) != "PEM" || len(staged) != 2 {
			t.Errorf("staged %d files, ServerCA %q", len(staged), staged["ServerCA"])
		}
	})
}

// TestRotateCAHonoursContext: against a server that accepts the connection and never
// answers, cancelling the context (as SIGINT does) ends rotate-ca at once.
func TestRotateCAHonoursContext(t *testing.T) {
	dd := t.TempDir()
	l := datadir.Layout{Root: dd}
	iss := pki.NewIssuer(clock.Real{}, nil)
	key, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	ca, err := iss.SelfSignedCA(key, "ctx-test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caPEM := pki.EncodeCert(ca)
	hash, _ := pki.CAHash(caPEM)
	if err := datadir.WriteFile(l.TLS(certs.CA(certs.ServerCA).CertFile), caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := datadir.WriteFile(l.TokenFile(), []byte(token.Format(hash, "server", "ctx-test-password")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	stage := stagedWith(t, func(t *testing.T, crt string) {
		if err := os.WriteFile(crt, caPEM, 0o600); err != nil {
			t.Fatal(err)
		}
	})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- runRotateCA(ctx, &bytes.Buffer{}, &bytes.Buffer{}, dd, "https://"+ln.Addr().String(), stage, false, true, outputText)
	}()
	select {
	case c := <-accepted:
		defer c.Close()
	case err := <-done:
		t.Fatalf("rotate-ca returned before connecting: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("rotate-ca never connected")
	}
	cancel()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "interrupted") {
			t.Fatalf("rotate-ca = %v, want an interrupted error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("rotate-ca ignored the cancelled context")
	}
}
