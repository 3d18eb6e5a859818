package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHATokenRotation rotates the server token on one of two servers: the other keeps
// running, then restarts with the new token and takes the new passwd from the datastore;
// a restart with the old token is refused without changing its PKI files.
func TestHATokenRotation(t *testing.T) {
	t.Parallel()
	ips := []string{"127.0.0.4", "127.0.0.5"}
	ports := haPorts(t, ips...)
	root := t.TempDir()
	s1 := launch(t, serverSpec{dataDir: filepath.Join(root, "s1"), ip: ips[0], ports: &ports, args: []string{"--node-name", "tok-1"}})
	s1.WaitReady(t)
	oldToken := haToken(t, s1)
	dd2 := filepath.Join(root, "s2")
	s2 := haJoin(t, s1, ips[1], "tok-2", ports, dd2, oldToken)
	s2.WaitReady(t)
	haWaitMembers(t, s1, s1, s2)

	r := kpkiOK(t, "token", "rotate", "--server", s1.SupervisorURL(), "--data-dir", s1.DataDir)
	newToken := haToken(t, s1)
	if newToken == oldToken || !strings.Contains(r.stdout, newToken) {
		t.Fatalf("token rotate printed %q; token file now %q (was %q)", r.stdout, newToken, oldToken)
	}

	// Restart server 2 with the old token: refused, PKI files untouched.
	s2.Stop(t)
	before := hashTree(t, dd2)
	stale := launch(t, serverSpec{dataDir: dd2, ip: ips[1], ports: &ports, args: []string{"--node-name", "tok-2", "--token", oldToken}})
	code, stderr := stale.Wait(t, 90*time.Second)
	assertFailure(t, code, stderr, "bootstrap data already found and encrypted with different token")
	assertTreeUnchanged(t, "restart with the old token", before, hashTree(t, dd2))

	// With the new token it starts, and its passwd and token files follow the datastore.
	s2b := launch(t, serverSpec{dataDir: dd2, ip: ips[1], ports: &ports, args: []string{"--node-name", "tok-2", "--token", newToken}})
	s2b.WaitReady(t)
	haAssertSameFiles(t, s1, s2b)
	if got := haToken(t, s2b); got != newToken {
		t.Errorf("server 2 token file %q, want the rotated %q", got, newToken)
	}
}
