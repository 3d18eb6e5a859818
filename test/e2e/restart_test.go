package e2e

import (
	"bytes"
	"crypto"
	"path/filepath"
	"slices"
	"testing"
)

// TestServerRestartNothingToDo restarts a server with the same flags: no file may change.
func TestServerRestartNothingToDo(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "data")
	first := startServer(t, dd)
	first.WaitReady(t)
	first.Stop(t)
	before := hashTree(t, dd)

	second := startServerOn(t, first.Ports, dd)
	second.WaitReady(t)
	code, body := second.MustGet(t, "/cacerts")
	if code != 200 || !bytes.Equal(body, readFile(t, filepath.Join(second.TLSDir(), "server-ca.crt"))) {
		t.Errorf("GET /cacerts after restart: %d, body is not server-ca.crt", code)
	}
	second.Stop(t)
	assertTreeUnchanged(t, "restart with nothing to do", before, hashTree(t, dd))
}

// TestServerRestartNewTLSSAN restarts a server with one more --tls-san: the certificates that
// carry the SAN-LIST are re-issued with the same keys, nothing else changes.
func TestServerRestartNewTLSSAN(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	const extra = "extra.example.test"
	dd := filepath.Join(t.TempDir(), "data")
	first := startServer(t, dd, "--token", "tls-san-e2e-secret")
	first.WaitReady(t)
	first.Stop(t)
	before := hashTree(t, dd)
	tlsDir := first.TLSDir()
	reissued := []string{"serving-kube-apiserver", "serving-supervisor", "etcd/server-client", "etcd/peer-server-client"}
	oldLeaves := map[string][]byte{}
	for _, f := range reissued {
		oldLeaves[f] = readFile(t, filepath.Join(tlsDir, f+".crt"))
		if hasSAN(readCerts(t, filepath.Join(tlsDir, f+".crt"))[0], extra) {
			t.Fatalf("%s.crt already carries %s before the restart", f, extra)
		}
	}

	second := startServerOn(t, first.Ports, dd, "--token", "tls-san-e2e-secret", "--tls-san", extra)
	second.WaitReady(t)
	second.ServedChain(t, extra) // verifies the served certificate for the new name
	second.Stop(t)
	after := hashTree(t, dd)

	for _, l := range serverLeaves(second.IP, extra) {
		if !slices.Contains(reissued, l.file) {
			continue
		}
		leaf := checkLeaf(t, tlsDir, l)
		old, err := parseCertsPEM(oldLeaves[l.file])
		if err != nil {
			t.Fatal(err)
		}
		if pub, ok := old[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
			t.Errorf("%s: the public key changed; renewal must keep the existing key", l.file)
		}
	}
	for _, f := range reissued {
		k := "server/tls/" + f + ".crt"
		if before[k] == after[k] {
			t.Errorf("%s was not re-issued", k)
		}
		delete(before, k)
		delete(after, k)
	}
	assertTreeUnchanged(t, "restart with a new --tls-san (besides the re-issued certificates)", before, after)
}
