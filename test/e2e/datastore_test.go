package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// dsArgs are the --datastore-* flags for e.
func dsArgs(e *etcdProc) []string {
	args := []string{"--datastore-endpoint", e.Endpoint}
	if e.CAFile != "" {
		args = append(args, "--datastore-cafile", e.CAFile, "--datastore-certfile", e.CertFile, "--datastore-keyfile", e.KeyFile)
	}
	return args
}

// dsCheckSingleRecord checks that the etcd of e holds exactly one key under /bootstrap/, the
// one of token's passphrase, and that it decrypts to the files on ref's disk.
func dsCheckSingleRecord(t *testing.T, e *etcdProc, token string, ref *kpkiServer) {
	t.Helper()
	pass := passphrase(token)
	want := bootstrapKey(pass)
	snap := snapshotPrefix(t, e.Client(t), "/bootstrap/")
	var keys []string
	for k := range snap {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) != 1 || keys[0] != want {
		t.Errorf("keys under /bootstrap/: %v, want exactly [%s]", keys, want)
	}
	rec, ok := snap[want]
	if !ok {
		return
	}
	plain, err := decryptBootstrap(pass, rec.value)
	if err != nil {
		t.Errorf("decrypt %s with the token's passphrase: %v", want, err)
		return
	}
	var fields map[string]bootstrapEntry
	if err := json.Unmarshal(plain, &fields); err != nil {
		t.Errorf("bootstrap record %s: plaintext is not JSON: %v", want, err)
		return
	}
	for field, rel := range bootstrapFiles {
		f, ok := fields[field]
		if !ok {
			t.Errorf("bootstrap record %s: no field %s", want, field)
			continue
		}
		if disk := readFile(t, filepath.Join(ref.DataDir, "server", rel)); !bytes.Equal(disk, f.Content) {
			t.Errorf("bootstrap record field %s differs from %s/server/%s", field, ref.DataDir, rel)
		}
	}
}

// dsCheckNoEmbeddedEtcd checks that nothing listens on the embedded etcd ports of s.
func dsCheckNoEmbeddedEtcd(t *testing.T, s *kpkiServer) {
	t.Helper()
	for _, p := range []int{s.Ports.EtcdClient, s.Ports.EtcdPeer} {
		if listening(s.IP, p) {
			t.Errorf("something listens on %s:%d (an embedded etcd port) although an external datastore is configured", s.IP, p)
		}
	}
}

// TestExternalEtcdShared runs two servers on one external etcd (mutual TLS) with the same
// token: they share one bootstrap record, hence one set of CAs, and one node-password store.
func TestExternalEtcdShared(t *testing.T) {
	t.Parallel()
	e := startEtcd(t, true)
	root := t.TempDir()
	s1 := launch(t, serverSpec{dataDir: filepath.Join(root, "server1"), ip: "127.0.0.1", args: append([]string{"--node-name", "ext-1"}, dsArgs(e)...)})
	s1.WaitReady(t)
	token := haToken(t, s1)
	s2 := launch(t, serverSpec{dataDir: filepath.Join(root, "server2"), ip: "127.0.0.2",
		args: append([]string{"--node-name", "ext-2", "--token", token}, dsArgs(e)...)})
	s2.WaitReady(t)

	haAssertSameFiles(t, s1, s2)
	dsCheckSingleRecord(t, e, token, s1)
	for _, s := range []*kpkiServer{s1, s2} {
		dsCheckNoEmbeddedEtcd(t, s)
		served := s.ServedChain(t, "")
		if disk := readCerts(t, filepath.Join(s.TLSDir(), "serving-supervisor.crt")); !served[0].Equal(disk[0]) {
			t.Errorf("%s does not serve its serving-supervisor.crt", s.SupervisorURL())
		}
	}

	agentPW := haAgentPassword(t, s1)
	clientCA := filepath.Join(s1.TLSDir(), "client-ca.crt")
	nodePW := randomHex(16)
	haCheckSigned(t, "kube-proxy CSR signed by server 1", haSignSettled(t, s1, agentPW, "ext-node", nodePW), clientCA)
	haCheckRefused(t, "server 2, node registered through server 1, wrong node password", haSignSettled(t, s2, agentPW, "ext-node", randomHex(16)))
	haCheckSigned(t, "kube-proxy CSR signed by server 2 for the node registered through server 1", haSignSettled(t, s2, agentPW, "ext-node", nodePW), clientCA)
}

// TestExternalEtcdRace starts two first servers with the same token at the same moment on an
// empty external etcd, three times: each time both become ready with one CA set, one
// bootstrap record, and leaves that all chain to the shared CAs.
func TestExternalEtcdRace(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	const token = "race-e2e-secret"
	adopted := 0
	for round := 1; round <= 3; round++ {
		t.Run(fmt.Sprintf("round %d", round), func(t *testing.T) {
			e := startEtcd(t, false)
			root := t.TempDir()
			a := launch(t, serverSpec{dataDir: filepath.Join(root, "a"), ip: "127.0.0.1", args: append([]string{"--token", token}, dsArgs(e)...)})
			b := launch(t, serverSpec{dataDir: filepath.Join(root, "b"), ip: "127.0.0.2", args: append([]string{"--token", token}, dsArgs(e)...)})
			a.WaitReady(t)
			b.WaitReady(t)

			haAssertSameFiles(t, a, b)
			dsCheckSingleRecord(t, e, token, a)
			for _, s := range []*kpkiServer{a, b} {
				if strings.Contains(s.Stderr(), "adopting") {
					adopted++
					t.Logf("%s lost the create and adopted the stored record", s.DataDir)
				}
				dsCheckNoEmbeddedEtcd(t, s)
				for _, l := range serverLeaves(s.IP) {
					checkLeaf(t, s.TLSDir(), l)
				}
				served := s.ServedChain(t, "")
				if disk := readCerts(t, filepath.Join(s.TLSDir(), "serving-supervisor.crt")); !served[0].Equal(disk[0]) {
					t.Errorf("%s does not serve its serving-supervisor.crt", s.SupervisorURL())
				}
			}
		})
	}
	t.Logf("%d of 3 rounds had a server that lost the create", adopted)
}
