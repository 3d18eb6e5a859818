package e2e

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestServerDataDirLock starts a second server on the data dir of a running one: the second
// must refuse (SPEC §5 lock) and the first must keep serving. Once the first is killed, the
// lock is gone and a new server starts on the data dir.
func TestServerDataDirLock(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "data")
	first := startServer(t, dd)
	first.WaitReady(t)
	before := hashTree(t, dd)

	second := startServer(t, dd) // its own ports, so only the lock can stop it
	code, stderr := second.Wait(t, failTimeout)
	line := assertFailure(t, code, stderr)
	if !strings.Contains(line, dd) && !strings.Contains(strings.ToLower(line), "lock") {
		t.Errorf("error line %q names neither the data dir %s nor the lock", line, dd)
	}

	if code, body := first.MustGet(t, "/ping"); code != 200 || strings.TrimSpace(string(body)) != "pong" {
		t.Errorf("first server after the refused second start: GET /ping %d %q", code, body)
	}
	if code, _ := first.MustGet(t, "/readyz"); code != 200 {
		t.Errorf("first server after the refused second start: GET /readyz %d", code)
	}
	assertTreeUnchanged(t, "refused second server", before, hashTree(t, dd))

	// The lock dies with its holder: after SIGKILL a new server on the data dir starts.
	first.Kill(t)
	third := startServerOn(t, first.Ports, dd)
	third.WaitReady(t)
	third.Stop(t)
}
