package e2e

import (
	"io"
	"net/http"
	"path/filepath"
	"strconv"
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
	metrics := "http://" + ips[1] + ":" + strconv.Itoa(freePort(t, ips[1])) + "/metrics"
	s2 := launch(t, serverSpec{dataDir: dd2, ip: ips[1], ports: &ports, args: []string{"--node-name", "tok-2",
		"--server", s1.SupervisorURL(), "--token", oldToken, "--metrics-address", strings.TrimSuffix(strings.TrimPrefix(metrics, "http://"), "/metrics")}})
	s2.WaitReady(t)
	haWaitMembers(t, s1, s1, s2)
	if v := restartRequired(t, metrics); v != "0" {
		t.Fatalf("kpki_restart_required = %s on server 2 before any change, want 0", v)
	}

	r := kpkiOK(t, "token", "rotate", "--server", s1.SupervisorURL(), "--data-dir", s1.DataDir)
	newToken := haToken(t, s1)
	if newToken == oldToken || !strings.Contains(r.stdout, newToken) {
		t.Fatalf("token rotate printed %q; token file now %q (was %q)", r.stdout, newToken, oldToken)
	}

	// Server 2, still running, notices the change made on server 1.
	deadline := time.Now().Add(30 * time.Second)
	for restartRequired(t, metrics) != "1" {
		if time.Now().After(deadline) {
			t.Fatal("server 2 never set kpki_restart_required after the token was rotated on server 1")
		}
		time.Sleep(100 * time.Millisecond)
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

// restartRequired reads kpki_restart_required from a metrics URL.
func restartRequired(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "kpki_restart_required "); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no kpki_restart_required in %s", url)
	return ""
}
