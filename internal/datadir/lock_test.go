package datadir

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// lockHelperEnv makes the test binary a helper process that holds a lock (see TestMain).
const lockHelperEnv = "KPKI_DATADIR_TEST_LOCK_HELPER"

func TestMain(m *testing.M) {
	if path := os.Getenv(lockHelperEnv); path != "" {
		os.Exit(lockHelper(path))
	}
	os.Exit(m.Run())
}

// lockHelper takes the lock, says so on stdout and holds it until stdin closes or the
// process is killed.
func lockHelper(path string) int {
	if _, err := Lock(path); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("locked")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

func TestLockExclusive(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "server", "kpki.lock")

	first, err := Lock(path)
	if err != nil {
		t.Fatalf("first Lock: %v", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("lock file not created: %v", err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("lock file mode %o, want 600", st.Mode().Perm())
	}
	if st, err := os.Stat(filepath.Dir(path)); err != nil {
		t.Error(err)
	} else if st.Mode().Perm() != 0o700 {
		t.Errorf("lock directory mode %o, want 700", st.Mode().Perm())
	}

	second, err := Lock(path)
	if err == nil {
		second.Unlock()
		t.Fatal("second Lock on a held lock succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Errorf("second Lock error %v is not ErrLocked", err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the lock file", err)
	}

	if err := first.Unlock(); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	if err := first.Unlock(); err != nil {
		t.Errorf("second Unlock: %v", err)
	}
	third, err := Lock(path)
	if err != nil {
		t.Fatalf("Lock after Unlock: %v", err)
	}
	if err := third.Unlock(); err != nil {
		t.Error(err)
	}

	var nilLock *FileLock
	if err := nilLock.Unlock(); err != nil {
		t.Errorf("nil Unlock: %v", err)
	}
}

func TestLockErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
	}{
		{"parent is a file", filepath.Join(file, "kpki.lock")},
		{"path is a directory", dir},
	}
	for _, tc := range tests {
		l, err := Lock(tc.path)
		if err == nil {
			l.Unlock()
			t.Errorf("%s: Lock succeeded", tc.name)
			continue
		}
		if errors.Is(err, ErrLocked) {
			t.Errorf("%s: error %v reported as ErrLocked", tc.name, err)
		}
	}
}

// TestLockAcrossProcesses holds the lock in another process, and checks that the
// kernel releases it when that process dies without unlocking.
func TestLockAcrossProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kpki.lock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), lockHelperEnv+"="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "locked\n" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("helper said %q, %v; want \"locked\"", line, err)
	}

	if l, err := Lock(path); !errors.Is(err, ErrLocked) {
		if l != nil {
			l.Unlock()
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("Lock while another process holds it: %v, want ErrLocked", err)
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	l, err := Lock(path)
	if err != nil {
		t.Fatalf("Lock after the holder died: %v", err)
	}
	l.Unlock()
}
