package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ---------------------------------------------------------------------------------------------
// Running kpki client commands

const cmdTimeout = 2 * time.Minute

// cmdResult is the outcome of one kpki client command.
type cmdResult struct {
	args   []string
	code   int
	stdout string
	stderr string
}

func (r cmdResult) String() string {
	return fmt.Sprintf("kpki %s: exit code %d\n--- stdout:\n%s--- stderr:\n%s",
		strings.Join(quoteArgs(r.args), " "), r.code, r.stdout, r.stderr)
}

// runKpki runs the kpki binary with args; env is added to the environment of the test process
// without its KPKI_* variables.
func runKpki(t *testing.T, env []string, args ...string) cmdResult {
	t.Helper()
	bin := binary(t)
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = cleanEnv(env)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	r := cmdResult{args: args, stdout: stdout.String(), stderr: stderr.String()}
	if ctx.Err() != nil {
		t.Fatalf("kpki %s did not finish within %v\n%s", strings.Join(quoteArgs(args), " "), cmdTimeout, r)
	}
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("run kpki %s: %v", strings.Join(quoteArgs(args), " "), err)
		}
		r.code = ee.ExitCode()
	}
	t.Logf("kpki %s: exit code %d", strings.Join(quoteArgs(args), " "), r.code)
	return r
}

// kpkiOK runs kpki and fails the test unless it exits 0.
func kpkiOK(t *testing.T, args ...string) cmdResult {
	t.Helper()
	r := runKpki(t, nil, args...)
	if r.code != 0 {
		t.Fatalf("want exit code 0:\n%s", r)
	}
	return r
}

// assertRefused checks a refused command: non-zero exit, exactly one `kpki: ` line, last on
// stderr, and, for each group of wants, at least one of them on stderr, where an operator reads
// the reason (SPEC §1: one clear line on stderr).
func assertRefused(t *testing.T, r cmdResult, wants ...[]string) {
	t.Helper()
	assertFailure(t, r.code, r.stderr)
	var missing []string
	onStdout := 0
	for _, alts := range wants {
		if containsAny(r.stderr, alts) {
			continue
		}
		missing = append(missing, fmt.Sprintf("%q", alts))
		if containsAny(r.stdout, alts) {
			onStdout++
		}
	}
	if len(missing) > 0 {
		where := ""
		if onStdout == len(missing) {
			where = " (stdout has them: the reason is printed on stdout only)"
		}
		t.Errorf("stderr does not give the reason of the refusal: it has none of %s%s\n%s", strings.Join(missing, ", none of "), where, r)
	}
}

func containsAny(s string, alts []string) bool {
	for _, a := range alts {
		if strings.Contains(s, a) {
			return true
		}
	}
	return false
}

// anyOf is a group of alternatives for assertRefused.
func anyOf(s ...string) []string { return s }

// rotateCA runs `kpki certificate rotate-ca --path=<path>` against s, with its data dir.
func rotateCA(t *testing.T, s *kpkiServer, path string, flags ...string) cmdResult {
	t.Helper()
	args := []string{"certificate", "rotate-ca", "--path=" + path, "--server", s.SupervisorURL(), "--data-dir", s.DataDir}
	return runKpki(t, nil, append(args, flags...)...)
}

const rotateCASaved = "certificates saved to datastore; restart kpki on all nodes, servers first, then agents"

// assertRotateCASaved checks a successful rotate-ca run.
func assertRotateCASaved(t *testing.T, r cmdResult) {
	t.Helper()
	if r.code != 0 || !strings.Contains(r.stdout, rotateCASaved) {
		t.Fatalf("want exit code 0 and %q on stdout:\n%s", rotateCASaved, r)
	}
}

// restartServer stops s and starts it again on the same ports and data dir with args.
func restartServer(t *testing.T, s *kpkiServer, args ...string) *kpkiServer {
	t.Helper()
	s.Stop(t)
	n := startServerOn(t, s.Ports, s.DataDir, args...)
	n.WaitReady(t)
	return n
}

// ---------------------------------------------------------------------------------------------
// Tokens

var (
	printedServerTokenRE = regexp.MustCompile(`K10[0-9a-f]{64}::server:[^\s"',;]+`)
	printedAgentTokenRE  = regexp.MustCompile(`K10[0-9a-f]{64}::node:[^\s"',;]+`)
)

func readTokenFile(t *testing.T, dd, name string) string {
	t.Helper()
	return strings.TrimSpace(string(readFile(t, filepath.Join(dd, "server", name))))
}

// tokenCAHash returns the CA hash part of a secure server or agent token.
func tokenCAHash(t *testing.T, token string) string {
	t.Helper()
	if m := serverTokenRE.FindStringSubmatch(token); m != nil {
		return m[1]
	}
	if m := agentTokenRE.FindStringSubmatch(token); m != nil {
		return m[1]
	}
	t.Fatalf("%q is not a secure token K10<64 hex>::<user>:<password>", redact(token))
	return ""
}

func derHash(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// ---------------------------------------------------------------------------------------------
// The bootstrap record in the embedded etcd

type bootstrapRecord map[string]bootstrapEntry

// bootstrapKeys returns every /bootstrap/ key of the embedded etcd of s with its raw value and
// revision, read with the etcd client certificate of the data dir. A live apply may be
// restarting the member with new certificates: a read that fails is tried again, with the
// files as they are then, for up to a minute.
func bootstrapKeys(t *testing.T, s *kpkiServer) etcdSnapshot {
	t.Helper()
	return embeddedPrefix(t, s, "/bootstrap/")
}

// embeddedPrefix returns every key under prefix of the embedded etcd of s with its raw
// value and revision, read with the etcd client certificate of the data dir, retried as
// bootstrapKeys says.
func embeddedPrefix(t *testing.T, s *kpkiServer, prefix string) etcdSnapshot {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		snap, err := readPrefix(s, prefix)
		if err == nil {
			return snap
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd get %s* of %s: %v", prefix, s.IP, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// readPrefix is one attempt of embeddedPrefix.
func readPrefix(s *kpkiServer, prefix string) (etcdSnapshot, error) {
	tlsDir := s.TLSDir()
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(tlsDir, "etcd", "server-ca.crt"))
	if err != nil {
		return nil, err
	}
	pool.AppendCertsFromPEM(caPEM)
	pair, err := tls.LoadX509KeyPair(filepath.Join(tlsDir, "etcd", "client.crt"), filepath.Join(tlsDir, "etcd", "client.key"))
	if err != nil {
		return nil, err
	}
	endpoint := "https://" + net.JoinHostPort(s.IP, strconv.Itoa(s.Ports.EtcdClient))
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		TLS:         &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	return getPrefix(cli, prefix)
}

func keyNames(snap etcdSnapshot) []string {
	var out []string
	for k, v := range snap {
		out = append(out, fmt.Sprintf("%s@%d", k, v.modRevision))
	}
	sort.Strings(out)
	return out
}

func decodeRecord(t *testing.T, pass, value string) bootstrapRecord {
	t.Helper()
	plain, err := decryptBootstrap(pass, value)
	if err != nil {
		t.Fatalf("decrypt the bootstrap record with the token password: %v", err)
	}
	var rec bootstrapRecord
	if err := json.Unmarshal(plain, &rec); err != nil {
		t.Fatalf("bootstrap plaintext is not the JSON object of SPEC §6: %v", err)
	}
	return rec
}

// currentRecord decrypts the bootstrap record of s stored under the key of the password in
// <dd>/server/token, and returns it with every /bootstrap/ key.
func currentRecord(t *testing.T, s *kpkiServer) (bootstrapRecord, etcdSnapshot) {
	t.Helper()
	keys := bootstrapKeys(t, s)
	pass := passphrase(readTokenFile(t, s.DataDir, "token"))
	key := bootstrapKey(pass)
	v, ok := keys[key]
	if !ok {
		t.Fatalf("etcd has no %s (the key of the password in %s/server/token); bootstrap keys: %v", key, s.DataDir, keyNames(keys))
	}
	return decodeRecord(t, pass, v.value), keys
}

// baseline is what a refused operation must leave as it was: the data dir and every
// /bootstrap/ key (raw value and revision).
type baseline struct {
	tree map[string]string
	keys etcdSnapshot
}

func takeBaseline(t *testing.T, s *kpkiServer) baseline {
	t.Helper()
	return baseline{tree: hashTree(t, s.DataDir), keys: bootstrapKeys(t, s)}
}

func (b baseline) assertUnchanged(t *testing.T, s *kpkiServer, what string) {
	t.Helper()
	assertTreeUnchanged(t, what, b.tree, hashTree(t, s.DataDir))
	if after := bootstrapKeys(t, s); !reflect.DeepEqual(after, b.keys) {
		t.Errorf("%s: the bootstrap data in etcd changed: keys %v, before %v", what, keyNames(after), keyNames(b.keys))
	}
}

// caRecordField maps a CA file under <dd>/server/tls to its bootstrap record field.
var caRecordField = map[string]string{
	"server-ca.crt":         "ServerCA",
	"client-ca.crt":         "ClientCA",
	"request-header-ca.crt": "RequestHeaderCA",
	"etcd/server-ca.crt":    "ETCDServerCA",
	"etcd/peer-ca.crt":      "ETCDPeerCA",
}

// assertDiskMatchesRecord checks that every bootstrap file on disk holds its record content.
func assertDiskMatchesRecord(t *testing.T, dd string, rec bootstrapRecord) {
	t.Helper()
	for field, rel := range bootstrapFiles {
		e, ok := rec[field]
		if !ok {
			t.Errorf("the bootstrap record has no %s", field)
			continue
		}
		if !bytes.Equal(readFile(t, filepath.Join(dd, "server", rel)), e.Content) {
			t.Errorf("%s on disk differs from the record's %s", rel, field)
		}
	}
}

// assertRecordHoldsStaged checks that every file staged under <stageServer>/tls is the content
// of its record field, stamped with a time between from and to (SPEC §10: the time of the
// update, not the staged file's mtime).
func assertRecordHoldsStaged(t *testing.T, rec bootstrapRecord, stageServer string, from, to time.Time) {
	t.Helper()
	n := 0
	for field, rel := range bootstrapFiles {
		if !strings.HasPrefix(rel, "tls/") {
			continue
		}
		staged, err := os.ReadFile(filepath.Join(stageServer, rel))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
		e := rec[field]
		if !bytes.Equal(e.Content, staged) {
			t.Errorf("the record's %s is not the staged %s", field, rel)
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, e.Timestamp)
		if err != nil {
			t.Errorf("%s.Timestamp %q: %v", field, e.Timestamp, err)
		} else if ts.Before(from.Add(-time.Second)) || ts.After(to.Add(time.Second)) {
			t.Errorf("%s.Timestamp %s, want the time of the rotate-ca call (%s … %s)", field, e.Timestamp,
				from.UTC().Format(time.RFC3339Nano), to.UTC().Format(time.RFC3339Nano))
		}
	}
	if n == 0 {
		t.Fatalf("nothing staged under %s/tls", stageServer)
	}
}

// ---------------------------------------------------------------------------------------------
// Leaves and chains

func leafPurposes(l leafSpec) []string {
	var p []string
	if l.server {
		p = append(p, "sslserver")
	}
	if l.client {
		p = append(p, "sslclient")
	}
	return p
}

// assertLeavesChainToRecord checks every leaf of s against the CA bundle its CA field holds in
// the bootstrap record: the leaf file carries that bundle after the leaf, the leaf is signed by
// the bundle's first certificate, and `openssl verify` accepts it with the bundle's self-signed
// certificates as trust anchors.
func assertLeavesChainToRecord(t *testing.T, s *kpkiServer, rec bootstrapRecord) {
	t.Helper()
	dir := t.TempDir()
	for i, l := range serverLeaves(s.IP) {
		field := caRecordField[l.ca]
		bundle, err := parseCertsPEM(rec[field].Content)
		if err != nil {
			t.Errorf("the record's %s: %v", field, err)
			continue
		}
		crt := filepath.Join(s.TLSDir(), l.file+".crt")
		certs := readCerts(t, crt)
		if !sameCerts(certs[1:], bundle) {
			t.Errorf("%s: the certificates after the leaf are not the record's %s bundle", crt, field)
		}
		if err := certs[0].CheckSignatureFrom(bundle[0]); err != nil {
			t.Errorf("%s: not signed by the first certificate of the record's %s (%s): %v", crt, field, bundle[0].Subject, err)
			continue
		}
		for _, purpose := range leafPurposes(l) {
			opensslVerifyBundle(t, filepath.Join(dir, strconv.Itoa(i)+"-"+purpose), crt, certs[0], bundle, purpose)
		}
	}
}

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

// opensslVerifyBundle runs `openssl verify -purpose <purpose>` on leaf with the self-signed
// certificates of bundle as trust anchors and its other certificates as untrusted
// intermediates; files go to prefix.*.
func opensslVerifyBundle(t *testing.T, prefix, label string, leaf *x509.Certificate, bundle []*x509.Certificate, purpose string) {
	t.Helper()
	var anchors, mid []*x509.Certificate
	for _, c := range bundle {
		if selfSigned(c) {
			anchors = append(anchors, c)
		} else {
			mid = append(mid, c)
		}
	}
	if len(anchors) == 0 {
		t.Errorf("%s: the CA bundle holds no self-signed root to verify against", label)
		return
	}
	opensslVerifyWith(t, prefix, label, leaf, anchors, mid, purpose)
}

// opensslVerifyWith runs `openssl verify -purpose <purpose>` on leaf with anchors as the only
// trusted certificates and untrusted as intermediates; files go to prefix.*.
func opensslVerifyWith(t *testing.T, prefix, label string, leaf *x509.Certificate, anchors, untrusted []*x509.Certificate, purpose string) {
	t.Helper()
	leafFile, anchorFile := prefix+".leaf.pem", prefix+".anchors.pem"
	writeFile(t, leafFile, certsPEM(leaf), 0o600)
	writeFile(t, anchorFile, certsPEM(anchors...), 0o600)
	args := []string{"verify", "-purpose", purpose, "-CAfile", anchorFile}
	if len(untrusted) > 0 {
		f := prefix + ".untrusted.pem"
		writeFile(t, f, certsPEM(untrusted...), 0o600)
		args = append(args, "-untrusted", f)
	}
	args = append(args, leafFile)
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), leafFile+": OK") {
		var names []string
		for _, a := range anchors {
			names = append(names, a.Subject.CommonName)
		}
		t.Errorf("%s: openssl verify -purpose %s trusting only %q: %v\n%s", label, purpose, names, err, out)
	}
}

// leafFiles is one leaf's files as they were at a moment.
type leafFiles struct {
	crt, key []byte
	cert     *x509.Certificate
}

// snapshotLeaves reads every leaf of s, keyed by its file name without extension.
func snapshotLeaves(t *testing.T, s *kpkiServer) map[string]leafFiles {
	t.Helper()
	out := map[string]leafFiles{}
	for _, l := range serverLeaves(s.IP) {
		crt := filepath.Join(s.TLSDir(), l.file+".crt")
		out[l.file] = leafFiles{
			crt:  readFile(t, crt),
			key:  readFile(t, filepath.Join(s.TLSDir(), l.file+".key")),
			cert: readCerts(t, crt)[0],
		}
	}
	return out
}

func samePublicKey(a, b *x509.Certificate) bool {
	p, ok := a.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && p.Equal(b.PublicKey)
}

// firstCerts returns the first certificate of each CA file of dd.
func firstCerts(t *testing.T, dd string) map[string]*x509.Certificate {
	t.Helper()
	out := map[string]*x509.Certificate{}
	for _, ca := range caFiles {
		out[ca] = readCerts(t, filepath.Join(dd, "server", "tls", ca+".crt"))[0]
	}
	return out
}

// assertReissuedUnderNewCAs checks that every leaf of s is a new certificate signed by the first
// certificate of its (new) CA file. With profile, it also runs checkLeaf (the SPEC §2 profile and
// checkLeaf's `openssl verify`, which trusts the last certificate of the bundle and so cannot
// be used on a cross-signed bundle, whose last certificate is the old root).
func assertReissuedUnderNewCAs(t *testing.T, s *kpkiServer, old map[string]leafFiles, profile bool) {
	t.Helper()
	for _, l := range serverLeaves(s.IP) {
		crt := filepath.Join(s.TLSDir(), l.file+".crt")
		leaf := readCerts(t, crt)[0]
		if o, ok := old[l.file]; ok && leaf.Equal(o.cert) {
			t.Errorf("%s was not re-issued after the CA rotation", crt)
		}
		if profile {
			checkLeaf(t, s.TLSDir(), l)
			continue
		}
		ca := readCerts(t, filepath.Join(s.TLSDir(), l.ca))[0]
		if err := leaf.CheckSignatureFrom(ca); err != nil {
			t.Errorf("%s: not signed by the first certificate of %s: %v", crt, l.ca, err)
		}
		keys := readKeys(t, filepath.Join(s.TLSDir(), l.file+".key"))
		if !keyMatches(leaf.PublicKey, keys[0].signer) {
			t.Errorf("%s.key does not match %s", l.file, crt)
		}
		if leaf.Subject.CommonName != l.cn {
			t.Errorf("%s: CN %q, want %q", crt, leaf.Subject.CommonName, l.cn)
		}
	}
}

// assertServesNewCA checks /cacerts and the supervisor's served certificate against the files
// on disk after a restart.
func assertServesNewCA(t *testing.T, s *kpkiServer) {
	t.Helper()
	if code, body := s.MustGet(t, "/cacerts"); code != 200 || !bytes.Equal(body, readFile(t, filepath.Join(s.TLSDir(), "server-ca.crt"))) {
		t.Errorf("GET /cacerts: %d, body is not server-ca.crt", code)
	}
	served := s.ServedChain(t, "")
	if want := readCerts(t, filepath.Join(s.TLSDir(), "serving-supervisor.crt"))[0]; !served[0].Equal(want) {
		t.Errorf("the supervisor does not serve serving-supervisor.crt")
	}
}

// ---------------------------------------------------------------------------------------------
// Staging directories and CA material

// stageFrom creates a staging data dir whose server/tls holds copies of the files of
// <dd>/server/tls matching patterns, as the seed page's `cp` commands do, and returns the
// staging data dir (DATA_DIR for gen-custom-ca.sh; rotate-ca takes <stage>/server).
func stageFrom(t *testing.T, dd string, patterns ...string) string {
	t.Helper()
	stage := filepath.Join(t.TempDir(), "opt-kpki")
	tlsStage := filepath.Join(stage, "server", "tls")
	if err := os.MkdirAll(tlsStage, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range patterns {
		matches, err := filepath.Glob(filepath.Join(dd, "server", "tls", p))
		if err != nil || len(matches) == 0 {
			t.Fatalf("no %s in %s/server/tls (%v)", p, dd, err)
		}
		for _, m := range matches {
			writeFile(t, filepath.Join(tlsStage, filepath.Base(m)), readFile(t, m), 0o600)
		}
	}
	return stage
}

// writeStaged writes files (paths relative to <stage>/server) into a new staging dir and
// returns <stage>/server.
func writeStaged(t *testing.T, files map[string][]byte) string {
	t.Helper()
	server := filepath.Join(t.TempDir(), "stage", "server")
	if err := os.MkdirAll(filepath.Join(server, "tls"), 0o700); err != nil {
		t.Fatal(err)
	}
	for rel, data := range files {
		writeFile(t, filepath.Join(server, rel), data, 0o600)
	}
	return server
}

// opensslGenRSA runs the seed page's `openssl genrsa ${OPENSSL_GENRSA_FLAGS:-} -out <out> 2048`,
// with -traditional on OpenSSL 3.
func opensslGenRSA(t *testing.T, out string) {
	t.Helper()
	args := []string{"genrsa"}
	if v, err := exec.Command("openssl", "version").Output(); err == nil && strings.Contains(string(v), "OpenSSL 3") {
		args = append(args, "-traditional")
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o700); err != nil {
		t.Fatal(err)
	}
	run(t, "", nil, "openssl", append(args, "-out", out, "2048")...)
}

// appendFile is the seed page's `cat <from> >> <to>`.
func appendFile(t *testing.T, to, from string) {
	t.Helper()
	f, err := os.OpenFile(to, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if _, err := io.Copy(f, src); err != nil {
		t.Fatal(err)
	}
}

// rootMaterial is an existing root and intermediate CA, as an operator has in /etc/ssl.
type rootMaterial struct {
	rootPEM, rootKey, interPEM, interKey []byte
}

var (
	existingRootOnce sync.Once
	existingRootMat  rootMaterial
	existingRootErr  error
)

// existingRoot returns a root and intermediate CA made once per test binary by
// gen-custom-ca.sh.
func existingRoot(t *testing.T) rootMaterial {
	t.Helper()
	existingRootOnce.Do(func() {
		script, err := filepath.Abs(genCustomCA)
		if err != nil {
			existingRootErr = err
			return
		}
		dir, err := os.MkdirTemp("", "kpki-e2e-root-")
		if err != nil {
			existingRootErr = err
			return
		}
		defer os.RemoveAll(dir)
		cmd := exec.Command("bash", script)
		cmd.Dir = dir
		cmd.Env = cleanEnv([]string{"DATA_DIR=" + dir})
		if out, err := cmd.CombinedOutput(); err != nil {
			existingRootErr = fmt.Errorf("bash %s: %v\n%s", script, err, out)
			return
		}
		tlsDir := filepath.Join(dir, "server", "tls")
		for _, f := range []struct {
			name string
			dst  *[]byte
		}{
			{"root-ca.pem", &existingRootMat.rootPEM},
			{"root-ca.key", &existingRootMat.rootKey},
			{"intermediate-ca.pem", &existingRootMat.interPEM},
			{"intermediate-ca.key", &existingRootMat.interKey},
		} {
			b, err := os.ReadFile(filepath.Join(tlsDir, f.name))
			if err != nil {
				existingRootErr = err
				return
			}
			*f.dst = b
		}
	})
	if existingRootErr != nil {
		t.Fatalf("make an existing root CA: %v", existingRootErr)
	}
	return existingRootMat
}

// customCADataDir prepares a data dir for a first start with custom CAs, as the seed page's
// "Using the Example Script" does: the existing root (root-ca.pem/.key) or root and intermediate
// (root-ca.pem, intermediate-ca.pem/.key) placed in server/tls, then gen-custom-ca.sh. It
// returns the data dir and the root certificate.
func customCADataDir(t *testing.T, withIntermediate bool) (string, *x509.Certificate) {
	t.Helper()
	m := existingRoot(t)
	dd := filepath.Join(t.TempDir(), "data")
	tlsDir := filepath.Join(dd, "server", "tls")
	writeFile(t, filepath.Join(tlsDir, "root-ca.pem"), m.rootPEM, 0o600)
	if withIntermediate {
		writeFile(t, filepath.Join(tlsDir, "intermediate-ca.pem"), m.interPEM, 0o600)
		writeFile(t, filepath.Join(tlsDir, "intermediate-ca.key"), m.interKey, 0o600)
	} else {
		writeFile(t, filepath.Join(tlsDir, "root-ca.key"), m.rootKey, 0o600)
	}
	runGenCustomCA(t, dd)
	root, err := parseCertsPEM(m.rootPEM)
	if err != nil {
		t.Fatal(err)
	}
	return dd, root[0]
}

// selfSignedCAPEM makes a self-signed P-256 CA and returns its certificate and key PEM.
func selfSignedCAPEM(t *testing.T, cn string) ([]byte, []byte, *x509.Certificate, crypto.Signer) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), c, k
}

// ---------------------------------------------------------------------------------------------
// Metrics

// metricValue fetches http://<addr>/metrics and returns the value of the sample name (without
// labels); "" when absent.
func metricValue(t *testing.T, addr, name string) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET http://%s/metrics: %v", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			return f[1]
		}
	}
	return ""
}
