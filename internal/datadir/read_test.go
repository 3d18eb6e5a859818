package datadir

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readPromptly runs ReadRegular and fails the test if it does not return within 10 s
// (a FIFO opened in blocking mode would block until a writer comes).
func readPromptly(t *testing.T, path string, max int64) ([]byte, error) {
	t.Helper()
	type res struct {
		b   []byte
		err error
	}
	c := make(chan res, 1)
	go func() {
		b, err := ReadRegular(path, max)
		c <- res{b, err}
	}()
	select {
	case r := <-c:
		return r.b, r.err
	case <-time.After(10 * time.Second):
		t.Fatalf("ReadRegular(%s) blocked", path)
		return nil, nil
	}
}

func TestReadRegular(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "ca.crt")
	put(t, regular, "pem", 0o600)
	link := filepath.Join(dir, "link.crt")
	if err := os.Symlink(regular, link); err != nil {
		t.Fatal(err)
	}
	chain := filepath.Join(dir, "chain.crt")
	if err := os.Symlink(link, chain); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero.crt")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo.crt")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	fifoLink := filepath.Join(dir, "fifo-link.crt")
	if err := os.Symlink(fifo, fifoLink); err != nil {
		t.Fatal(err)
	}
	dangling := filepath.Join(dir, "dangling.crt")
	if err := os.Symlink(filepath.Join(dir, "gone"), dangling); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub.crt")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.crt")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(100 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	exact := filepath.Join(dir, "exact.crt")
	put(t, exact, strings.Repeat("x", 1024), 0o600)
	over := filepath.Join(dir, "over.crt")
	put(t, over, strings.Repeat("x", 1025), 0o600)

	for _, tc := range []struct {
		name    string
		path    string
		want    string // content, when wantErr is ""
		wantErr []string
	}{
		{"regular file", regular, "pem", nil},
		{"symlink to a regular file", link, "pem", nil},
		{"symlink to a symlink to a regular file", chain, "pem", nil},
		{"exactly the bound", exact, strings.Repeat("x", 1024), nil},
		{"one byte over the bound", over, "", []string{over, "larger than 1 KiB"}},
		{"symlink to /dev/zero", zero, "", []string{zero, "character device"}},
		{"FIFO", fifo, "", []string{fifo, "named pipe"}},
		{"symlink to a FIFO", fifoLink, "", []string{fifoLink, "named pipe"}},
		{"dangling symlink", dangling, "", []string{dangling, "is a dangling symlink"}},
		{"directory", sub, "", []string{sub, "directory"}},
		{"100 MB sparse file", big, "", []string{big, "larger than 1 KiB", "104857600 bytes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := readPromptly(t, tc.path, 1024)
			if tc.wantErr == nil {
				if err != nil || string(b) != tc.want {
					t.Fatalf("ReadRegular = %q, %v; want %q", b, err, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("ReadRegular read %d bytes, want an error", len(b))
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		b, err := ReadRegular(filepath.Join(dir, "nope"), 1024)
		if b != nil || err != nil {
			t.Errorf("ReadRegular(missing) = %q, %v; want nil, nil", b, err)
		}
	})
	t.Run("missing directory", func(t *testing.T) {
		b, err := ReadRegular(filepath.Join(dir, "nodir", "x"), 1024)
		if b != nil || err != nil {
			t.Errorf("ReadRegular(missing dir) = %q, %v; want nil, nil", b, err)
		}
	})
}

// TestReadRegularRechecksWhatItOpened swaps the file between the check and the open: a
// FIFO, a symlink to /dev/zero, or a file grown past the bound, each is refused, without
// blocking and without reading more than the bound.
func TestReadRegularRechecksWhatItOpened(t *testing.T) {
	for _, tc := range []struct {
		name    string
		viaLink bool
		swap    func(t *testing.T, path string)
		wantErr string
	}{
		{"regular file becomes a FIFO", false, func(t *testing.T, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Mkfifo(p, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "named pipe"},
		{"regular file becomes a symlink to /dev/zero", false, func(t *testing.T, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("/dev/zero", p); err != nil {
				t.Fatal(err)
			}
		}, "replaced by a symlink"},
		{"symlink target becomes a FIFO", true, func(t *testing.T, p string) {
			target, err := os.Readlink(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(target); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Mkfifo(target, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "named pipe"},
		{"file grows past the bound", false, func(t *testing.T, p string) {
			if err := os.WriteFile(p, bytes.Repeat([]byte("x"), 4096), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "larger than 1 KiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "ca.crt")
			put(t, p, "pem", 0o600)
			read := p
			if tc.viaLink {
				read = filepath.Join(dir, "link.crt")
				if err := os.Symlink(p, read); err != nil {
					t.Fatal(err)
				}
			}
			beforeOpen = func(string) { tc.swap(t, read) }
			defer func() { beforeOpen = nil }()
			b, err := readPromptly(t, read, 1024)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), read) {
				t.Fatalf("ReadRegular = %d bytes, %v; want an error naming %s with %q", len(b), err, read, tc.wantErr)
			}
		})
	}
}
