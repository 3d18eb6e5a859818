package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// The recovery tests take CA material away from a server, or overwrite it, the ways an
// operator does by mistake, and check that the datastore brings back exactly what the
// cluster had: every file byte for byte with its stored mtime, no certificate issued or
// renewed, the bootstrap record untouched, the tokens still valid.

// recoverCAFiles are the CA files under <dd>/server, certificate and key of each CA.
func recoverCAFiles() []string {
	var files []string
	for _, ca := range caFiles {
		files = append(files, "tls/"+ca+".crt", "tls/"+ca+".key")
	}
	return files
}

var recoverEtcdCAFiles = []string{"tls/etcd/server-ca.crt", "tls/etcd/server-ca.key", "tls/etcd/peer-ca.crt", "tls/etcd/peer-ca.key"}

// recoverState is what a recovery must leave as it was.
type recoverState struct {
	tree   map[string]string    // hashTree of the data dir
	mtimes map[string]time.Time // of the bootstrap files (the record's timestamps)
	audit  []byte
	record etcdSnapshot // the /bootstrap/ keys with value and revision
}

// recordReader reads the /bootstrap/ keys of the datastore a server uses.
type recordReader func(t *testing.T) etcdSnapshot

func embeddedRecord(s func() *kpkiServer) recordReader {
	return func(t *testing.T) etcdSnapshot { return bootstrapKeys(t, s()) }
}

func externalRecord(e *etcdProc) recordReader {
	return func(t *testing.T) etcdSnapshot { return snapshotPrefix(t, e.Client(t), "/bootstrap/") }
}

func readAuditLog(t *testing.T, dd string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dd, "server", "audit.log"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return data
}

// captureRecoverState records the state of a running server's data dir and datastore.
func captureRecoverState(t *testing.T, dd string, record recordReader) recoverState {
	t.Helper()
	st := recoverState{tree: hashTree(t, dd), mtimes: map[string]time.Time{}, audit: readAuditLog(t, dd), record: record(t)}
	for _, rel := range bootstrapFiles {
		fi, err := os.Stat(filepath.Join(dd, "server", rel))
		if err != nil {
			t.Fatal(err)
		}
		st.mtimes[rel] = fi.ModTime()
	}
	if len(st.record) == 0 {
		t.Fatalf("no bootstrap record in the datastore of %s", dd)
	}
	return st
}

// checkRecovered compares a running server with the state captured before the mistake.
func checkRecovered(t *testing.T, what string, dd string, before recoverState, record recordReader) {
	t.Helper()
	assertTreeUnchanged(t, what, before.tree, hashTree(t, dd))
	for rel, want := range before.mtimes {
		fi, err := os.Stat(filepath.Join(dd, "server", rel))
		if err != nil {
			t.Errorf("%s: %v", what, err)
			continue
		}
		if !fi.ModTime().Equal(want) {
			t.Errorf("%s: server/%s has mtime %v, want the datastore's timestamp %v", what, rel, fi.ModTime(), want)
		}
	}
	if after := readAuditLog(t, dd); !bytes.Equal(after, before.audit) {
		t.Errorf("%s: audit.log changed; new entries:\n%s", what, bytes.TrimPrefix(after, before.audit))
	}
	if after := record(t); !equalSnapshots(before.record, after) {
		t.Errorf("%s: the bootstrap keys changed: %v -> %v", what, keyNames(before.record), keyNames(after))
	}
}

func equalSnapshots(a, b etcdSnapshot) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// checkTokensValid checks that the server and agent tokens in the data dir pin the server CA
// on disk and authenticate at the supervisor, and that a wrong password does not.
func checkTokensValid(t *testing.T, what string, s *kpkiServer) {
	t.Helper()
	caPEM := readFile(t, filepath.Join(s.TLSDir(), "server-ca.crt"))
	sum := sha256.Sum256(caPEM)
	caHash := hex.EncodeToString(sum[:])
	srv := serverTokenRE.FindStringSubmatch(readTokenFile(t, s.DataDir, "token"))
	agent := agentTokenRE.FindStringSubmatch(readTokenFile(t, s.DataDir, "agent-token"))
	if srv == nil || agent == nil {
		t.Fatalf("%s: token or agent-token in %s is not a secure K10 token", what, s.DataDir)
	}
	for _, tok := range [][]string{srv, agent} {
		if tok[1] != caHash {
			t.Errorf("%s: token CA hash %s, want the hash of server-ca.crt %s", what, tok[1], caHash)
		}
	}
	for _, c := range []struct {
		user, pw, path string
		want           int
	}{
		{"server", srv[2], "/v1-kpki/server-ca.crt", http.StatusOK},
		{"node", agent[2], "/v1-kpki/client-ca.crt", http.StatusOK},
		{"server", srv[2] + "x", "/v1-kpki/server-ca.crt", http.StatusUnauthorized},
	} {
		r := supRequest(t, s, http.MethodGet, c.path, c.user, c.pw, nil, nil)
		if r.code != c.want {
			t.Errorf("%s: GET %s as %s: HTTP %d, want %d", what, c.path, c.user, r.code, c.want)
		}
	}
}

// newerPaths returns the paths a "newer than datastore" error line names, relative to
// <dd>/server.
func newerPaths(t *testing.T, dd, line string) []string {
	t.Helper()
	i := strings.Index(line, " newer than datastore")
	if i < 0 {
		t.Fatalf("error line %q does not say newer than datastore", line)
	}
	var out []string
	for _, p := range strings.Split(strings.TrimPrefix(line[:i], "kpki: "), ", ") {
		rel, err := filepath.Rel(filepath.Join(dd, "server"), p)
		if err != nil || strings.HasPrefix(rel, "..") {
			t.Fatalf("error line names %q, not a file under %s/server", p, dd)
		}
		out = append(out, filepath.ToSlash(rel))
	}
	sort.Strings(out)
	return out
}

func removeFiles(t *testing.T, dd string, rels []string) {
	t.Helper()
	for _, rel := range rels {
		if err := os.Remove(filepath.Join(dd, "server", rel)); err != nil {
			t.Fatal(err)
		}
	}
}

// otherClusterCAs makes a CA set and service.key of another cluster with `kpki certificate
// generate-ca` and returns its data dir.
func otherClusterCAs(t *testing.T) string {
	t.Helper()
	dd := filepath.Join(t.TempDir(), "other")
	kpkiOK(t, "certificate", "generate-ca", "--data-dir", dd)
	return dd
}

// overwriteWith copies rels from the data dir src over dd's, with an mtime well past the
// datastore's timestamps.
func overwriteWith(t *testing.T, dd, src string, rels []string) {
	t.Helper()
	newer := time.Now().Add(time.Minute)
	for _, rel := range rels {
		data := readFile(t, filepath.Join(src, "server", rel))
		p := filepath.Join(dd, "server", rel)
		if bytes.Equal(data, readFile(t, p)) {
			t.Fatalf("server/%s of the other cluster is the same as this cluster's", rel)
		}
		writeFile(t, p, data, 0o600)
		if err := os.Chtimes(p, newer, newer); err != nil {
			t.Fatal(err)
		}
	}
}

// checkOverwriteRefused starts a server whose files rels were overwritten with newer ones:
// it must refuse with the datastore's advice naming exactly those files, and write nothing.
// It returns the files the advice names.
func checkOverwriteRefused(t *testing.T, dd string, rels []string, start func() *kpkiServer) []string {
	t.Helper()
	tree, audit := hashTree(t, dd), readAuditLog(t, dd)
	s := start()
	code, stderr := s.Wait(t, failTimeout)
	line := assertFailure(t, code, stderr, "newer than datastore and could cause a cluster outage. Remove the file(s) from disk and restart to be recreated from datastore.")
	named := newerPaths(t, dd, line)
	want := slices.Clone(rels)
	sort.Strings(want)
	if !slices.Equal(named, want) {
		t.Errorf("the refusal names %v, want the overwritten files %v", named, want)
	}
	assertTreeUnchanged(t, "refused start with files newer than the datastore", tree, hashTree(t, dd))
	if after := readAuditLog(t, dd); !bytes.Equal(after, audit) {
		t.Errorf("the refused start wrote to audit.log:\n%s", bytes.TrimPrefix(after, audit))
	}
	for _, w := range []string{"renewed certificate", "issued certificate"} {
		if strings.Contains(stderr, w) {
			t.Errorf("the refused start logged %q before refusing", w)
		}
	}
	return named
}

// TestRecoverMissingFiles removes, in turn, each CA file, each CA pair, the etcd CAs, every
// CA file, service.key, and every file of the bootstrap record from a server on embedded
// etcd, and restarts it: it starts, the files come back from its own etcd member byte for byte
// with their stored mtimes, no certificate is issued or renewed, the record is untouched and
// the tokens still work. The first case follows a kill -9 right after the first start, so the
// member must first commit again what it had acknowledged.
func TestRecoverMissingFiles(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "data")
	s := startServer(t, dd)
	s.WaitReady(t)
	ports := s.Ports
	record := embeddedRecord(func() *kpkiServer { return s })
	before := captureRecoverState(t, dd, record)
	s.Kill(t)

	all := append(recoverCAFiles(), "tls/service.key", "cred/passwd")
	cases := []struct {
		name  string
		files []string
	}{{"every bootstrap file after kill -9", all}}
	for _, f := range recoverCAFiles() {
		cases = append(cases, struct {
			name  string
			files []string
		}{f, []string{f}})
	}
	for _, ca := range caFiles {
		cases = append(cases, struct {
			name  string
			files []string
		}{ca + " pair", []string{"tls/" + ca + ".crt", "tls/" + ca + ".key"}})
	}
	cases = append(cases, []struct {
		name  string
		files []string
	}{
		{"etcd CAs", recoverEtcdCAFiles},
		{"every CA file", recoverCAFiles()},
		{"service.key", []string{"tls/service.key"}},
	}...)

	// One process per case, all in this test: a subtest would stop its server when it ends.
	for i, c := range cases {
		what := fmt.Sprintf("case %d (%s): restart without %s", i+1, c.name, strings.Join(c.files, ", "))
		t.Logf("%s", what)
		if i > 0 {
			s.Stop(t)
		}
		removeFiles(t, dd, c.files)
		s = startServerOn(t, ports, dd)
		s.WaitReady(t)
		checkRecovered(t, what, dd, before, record)
		checkTokensValid(t, what, s)
		before.audit = readAuditLog(t, dd)
	}
	s.Stop(t)
}

// TestRecoverOverwrittenTLS overwrites the CA files and service.key of a stopped server on
// embedded etcd with another cluster's, newer than the datastore: the start refuses with the
// datastore's advice before anything is planned or signed and writes nothing; following the
// advice (removing the named files) the server starts with exactly the cluster's files.
func TestRecoverOverwrittenTLS(t *testing.T) {
	t.Parallel()
	other := otherClusterCAs(t)
	dd := filepath.Join(t.TempDir(), "data")
	s := startServer(t, dd)
	s.WaitReady(t)
	ports := s.Ports
	record := embeddedRecord(func() *kpkiServer { return s })
	before := captureRecoverState(t, dd, record)
	s.Stop(t)

	overwritten := append(recoverCAFiles(), "tls/service.key")
	overwriteWith(t, dd, other, overwritten)
	named := checkOverwriteRefused(t, dd, overwritten, func() *kpkiServer { return startServerOn(t, ports, dd) })

	removeFiles(t, dd, named)
	s = startServerOn(t, ports, dd)
	s.WaitReady(t)
	checkRecovered(t, "restart after removing the files the refusal named", dd, before, record)
	checkTokensValid(t, "restart after removing the files the refusal named", s)
	s.Stop(t)
}

// TestRecoverExternalDatastore does the same with a Debian etcd as external datastore: every
// bootstrap file removed comes back, and overwritten newer files are refused and, once
// removed as the advice says, come back.
func TestRecoverExternalDatastore(t *testing.T) {
	t.Parallel()
	other := otherClusterCAs(t)
	e := startEtcd(t, true)
	dd := filepath.Join(t.TempDir(), "data")
	spec := serverSpec{dataDir: dd, args: dsArgs(e)}
	s := launch(t, spec)
	s.WaitReady(t)
	spec.ports = &s.Ports
	record := externalRecord(e)
	before := captureRecoverState(t, dd, record)
	s.Stop(t)

	removeFiles(t, dd, append(recoverCAFiles(), "tls/service.key", "cred/passwd"))
	s = launch(t, spec)
	s.WaitReady(t)
	checkRecovered(t, "restart on external etcd without the bootstrap files", dd, before, record)
	checkTokensValid(t, "restart on external etcd without the bootstrap files", s)
	before.audit = readAuditLog(t, dd)
	s.Stop(t)

	overwritten := append(recoverCAFiles(), "tls/service.key")
	overwriteWith(t, dd, other, overwritten)
	named := checkOverwriteRefused(t, dd, overwritten, func() *kpkiServer { return launch(t, spec) })
	if after := record(t); !equalSnapshots(before.record, after) {
		t.Errorf("the refused start changed the bootstrap keys: %v -> %v", keyNames(before.record), keyNames(after))
	}
	removeFiles(t, dd, named)
	s = launch(t, spec)
	s.WaitReady(t)
	checkRecovered(t, "restart on external etcd after removing the files the refusal named", dd, before, record)
	s.Stop(t)
}

// TestRecoverHAMember runs three servers on embedded etcd. The third loses its etcd CA files
// (after kill -9), then every bootstrap file (after a clean stop), while the other two keep
// running: each time it reads the record from its own member, which cannot reach the others
// without those files, restores them, rejoins the cluster and serves, with nothing issued.
// Then it loses them again while a CA rotation happens elsewhere: it ends with the rotated files.
func TestRecoverHAMember(t *testing.T) {
	t.Parallel()
	ips := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	ports := haPorts(t, ips...)
	root := t.TempDir()
	dd := func(i int) string { return filepath.Join(root, fmt.Sprintf("server%d", i+1)) }

	s1 := launch(t, serverSpec{dataDir: dd(0), ip: ips[0], ports: &ports, args: []string{"--node-name", "rec-1"}})
	s1.WaitReady(t)
	token := haToken(t, s1)
	s2 := haJoin(t, s1, ips[1], "rec-2", ports, dd(1), token)
	s2.WaitReady(t)
	s3 := haJoin(t, s1, ips[2], "rec-3", ports, dd(2), token)
	s3.WaitReady(t)
	haWaitMembers(t, s1, s1, s2, s3)

	record := embeddedRecord(func() *kpkiServer { return s1 })
	before := captureRecoverState(t, dd(2), record)
	restart := func() *kpkiServer { return haJoin(t, s1, ips[2], "rec-3", ports, dd(2), token) }

	for i, c := range []struct {
		name  string
		files []string
		kill  bool
	}{
		{"etcd CAs after kill -9", recoverEtcdCAFiles, true},
		{"every bootstrap file", append(recoverCAFiles(), "tls/service.key", "cred/passwd"), false},
	} {
		what := fmt.Sprintf("server 3, case %d (%s)", i+1, c.name)
		t.Logf("%s", what)
		if c.kill {
			s3.Kill(t)
		} else {
			s3.Stop(t)
		}
		removeFiles(t, dd(2), c.files)
		s3 = restart()
		s3.WaitReady(t)
		haWaitMembers(t, s1, s1, s2, s3)
		haAssertSameFiles(t, s1, s3)
		checkRecovered(t, what, dd(2), before, record)
		checkTokensValid(t, what, s3)
		before.audit = readAuditLog(t, dd(2))
		for _, s := range []*kpkiServer{s1, s2} {
			s.WaitReady(t)
		}
	}
	r := haSignSettled(t, s3, haAgentPassword(t, s1), "rec-node", randomHex(16))
	haCheckSigned(t, "kube-proxy CSR signed by the recovered server 3", r, filepath.Join(s1.TLSDir(), "client-ca.crt"))

	// A CA rotation made while server 3 is down leaves its member's copy of the record older
	// than the cluster's: the files come back from that copy, and once the member has rejoined,
	// the cluster's record replaces them and the leaves are issued under the rotated CAs.
	s3.Stop(t)
	kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", dd(0))
	assertRotateCASaved(t, rotateCA(t, s1, filepath.Join(dd(0), "server", "rotate-ca")))
	rotated, _ := currentRecord(t, s1)
	removeFiles(t, dd(2), append(recoverCAFiles(), "tls/service.key", "cred/passwd"))
	s3 = restart()
	s3.WaitReady(t)
	haWaitMembers(t, s1, s1, s2, s3)
	for field, rel := range bootstrapFiles {
		if !bytes.Equal(readFile(t, filepath.Join(dd(2), "server", rel)), rotated[field].Content) {
			t.Errorf("server 3 restarted after a rotation: server/%s is not the rotated record's %s", rel, field)
		}
	}
	for _, l := range serverLeaves(s3.IP) {
		crt := filepath.Join(s3.TLSDir(), l.file+".crt")
		chain, ca := readCerts(t, crt), readCerts(t, filepath.Join(s3.TLSDir(), l.ca))
		if err := chain[0].CheckSignatureFrom(ca[0]); err != nil || !sameCerts(chain[1:], ca) {
			t.Errorf("server 3 restarted after a rotation: %s is not signed by the rotated %s followed by its bundle (%v)", crt, l.ca, err)
		}
	}
	r = haSignSettled(t, s3, haAgentPassword(t, s1), "rec-node-2", randomHex(16))
	haCheckSigned(t, "kube-proxy CSR signed by server 3 after the rotation", r, filepath.Join(s3.TLSDir(), "client-ca.crt"))
	for _, s := range []*kpkiServer{s1, s2} {
		s.WaitReady(t)
	}
}
