package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTokenRotateInterrupted leaves a server in the state a crash between the datastore
// transaction of `token rotate` and the token files' write leaves: the record is under the
// new password, the token file still holds the old one. The token files cannot all be written
// (server/node-token is a directory), the server is stopped, the old token file is put back,
// and the next start must take the new token from the datastore and rewrite the token files,
// instead of refusing with "encrypted with different token".
func TestTokenRotateInterrupted(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "data")
	s := startServer(t, dd)
	s.WaitReady(t)
	tokenPath := filepath.Join(dd, "server", "token")
	nodeTokenPath := filepath.Join(dd, "server", "node-token")
	oldTok := readTokenFile(t, dd, "token")
	if err := os.Remove(nodeTokenPath); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(nodeTokenPath, 0o700); err != nil {
		t.Fatal(err)
	}
	r := runKpki(t, nil, "token", "rotate", "--server", s.SupervisorURL(), "--data-dir", dd,
		"--new-token", strings.Repeat("7", 32))
	if r.code != 0 || !strings.Contains(r.stderr, "warning") {
		t.Fatalf("token rotate: want success with a warning that the token files were not written:\n%s", r)
	}
	newPW := strings.Repeat("7", 32)
	if _, ok := bootstrapKeys(t, s)[bootstrapKey(newPW)]; !ok {
		t.Fatalf("the record is not under the new token's key: %v", keyNames(bootstrapKeys(t, s)))
	}
	pending := filepath.Join(dd, "server", "token.rotating")
	if got := strings.TrimSpace(string(readFile(t, pending))); got != newPW {
		t.Fatalf("%s holds %q, want the new password", pending, redact(got))
	}
	if fileMode(t, pending) != 0o600 {
		t.Errorf("%s mode %v, want 0600", pending, fileMode(t, pending))
	}
	s.Stop(t)
	if err := os.Remove(nodeTokenPath); err != nil {
		t.Fatal(err)
	}
	writeFile(t, tokenPath, []byte(oldTok+"\n"), 0o600)

	s = startServerOn(t, s.Ports, dd)
	s.WaitReady(t)
	if !strings.Contains(s.Stderr(), "completing a token rotation that was interrupted") {
		t.Errorf("the start does not say it completed the interrupted rotation:\n%s", s.tail(20))
	}
	if got := passphrase(readTokenFile(t, dd, "token")); got != newPW {
		t.Errorf("the token file was not rewritten with the new token")
	}
	if got := passphrase(readTokenFile(t, dd, "node-token")); got != newPW {
		t.Errorf("node-token was not rewritten with the new token")
	}
	rec, keys := currentRecord(t, s)
	if len(keys) != 1 {
		t.Errorf("bootstrap keys %v, want one", keyNames(keys))
	}
	assertDiskMatchesRecord(t, dd, rec)
	if _, err := os.Stat(pending); !os.IsNotExist(err) {
		t.Errorf("%s is still there after the rotation was completed: %v", pending, err)
	}
	if strings.Contains(s.Stderr(), newPW) || strings.Contains(s.Stderr(), passphrase(oldTok)) {
		t.Errorf("the server log shows a token password")
	}
}

// TestTokenRotatePendingDiscarded: a recorded rotation that never reached the datastore (a
// crash before its transaction) is dropped at the next start, and the old token stays.
func TestTokenRotatePendingDiscarded(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "data")
	s := startServer(t, dd)
	s.WaitReady(t)
	oldTok := readTokenFile(t, dd, "token")
	s.Stop(t)
	pending := filepath.Join(dd, "server", "token.rotating")
	writeFile(t, pending, []byte(strings.Repeat("8", 32)+"\n"), 0o600)
	s = startServerOn(t, s.Ports, dd)
	s.WaitReady(t)
	if got := readTokenFile(t, dd, "token"); got != oldTok {
		t.Errorf("the token changed after a rotation that never reached the datastore")
	}
	if _, err := os.Stat(pending); !os.IsNotExist(err) {
		t.Errorf("%s is still there: %v", pending, err)
	}
	currentRecord(t, s)
}
