package e2e

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// rolesReply is one answer of the supervisor.
type rolesReply struct {
	code   int
	header http.Header
	body   []byte
}

// rolesRequest sends one request to s from the loopback address src (so that tests can
// play several clients), TLS verified with s's server-ca.crt.
func rolesRequest(t *testing.T, s *kpkiServer, src, method, path, user, pw string, body []byte) rolesReply {
	t.Helper()
	cfg, err := s.clientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	tr := &http.Transport{TLSClientConfig: cfg, DialContext: d.DialContext, DisableKeepAlives: true}
	c := &http.Client{Timeout: 15 * time.Second, Transport: tr}
	defer tr.CloseIdleConnections()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, s.SupervisorURL()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if user != "" || pw != "" {
		req.SetBasicAuth(user, pw)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s%s from %s: %v", method, s.SupervisorURL(), path, src, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read the answer to %s %s: %v", method, path, err)
	}
	return rolesReply{code: resp.StatusCode, header: resp.Header, body: data}
}

// rolesTokens returns the server and agent tokens of s and their passwords.
func rolesTokens(t *testing.T, s *kpkiServer) (serverTok, serverPW, agentTok, agentPW string) {
	t.Helper()
	serverTok = readTokenFile(t, s.DataDir, "token")
	agentTok = readTokenFile(t, s.DataDir, "agent-token")
	sm, am := serverTokenRE.FindStringSubmatch(serverTok), agentTokenRE.FindStringSubmatch(agentTok)
	if sm == nil || am == nil {
		t.Fatalf("token files are not K10<hash>::server:<pw> and K10<hash>::node:<pw>")
	}
	return serverTok, sm[2], agentTok, am[2]
}

// assertNoSecrets fails when an answer holds key material, bootstrap data or a password.
func assertNoSecrets(t *testing.T, what string, body []byte, passwords ...string) {
	t.Helper()
	for _, bad := range []string{"PRIVATE KEY", "BEGIN", "ServerCAKey", "PasswdFile", "ETCDPeerCAKey", "peer_urls", "client_urls"} {
		if bytes.Contains(body, []byte(bad)) {
			t.Errorf("%s: the answer holds %q: %.200s", what, bad, body)
		}
	}
	for _, pw := range passwords {
		if pw != "" && bytes.Contains(body, []byte(pw)) {
			t.Errorf("%s: the answer holds a password", what)
		}
	}
}

// rolesAuditActions counts the audit entries of each action.
func rolesAuditActions(t *testing.T, dd string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, e := range auditEntries(t, dd) {
		if a, ok := e["action"].(string); ok {
			out[a]++
		}
	}
	return out
}

// TestRolesAgentPasswordGetsNoServerSecrets plays a worker holding the agent token against
// every server-role endpoint, as user server and as user node: nothing secret comes back,
// nothing changes in the data dir or the bootstrap data. The agent token and the server
// token both still join an agent, and token rotate refuses the agent password.
func TestRolesAgentPasswordGetsNoServerSecrets(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	dd := filepath.Join(t.TempDir(), "data")
	s := startServer(t, dd)
	s.WaitReady(t)
	serverTok, serverPW, agentTok, agentPW := rolesTokens(t, s)
	if agentPW == serverPW {
		t.Fatal("the agent password is the server password: a worker holds the server token")
	}
	passwd := strings.Split(strings.TrimSpace(string(readFile(t, filepath.Join(dd, "server", "cred", "passwd")))), "\n")
	if !slices.Contains(passwd, serverPW+",server,server,kpki:server") || !slices.Contains(passwd, agentPW+",node,node,kpki:agent") || len(passwd) != 2 {
		t.Errorf("cred/passwd does not hold exactly the server and the agent entry (%d lines)", len(passwd))
	}
	hash := tokenCAHash(t, serverTok)
	rotateBody, err := json.Marshal(map[string]any{"files": map[string][]byte{"ServerCA": readFile(t, filepath.Join(s.TLSDir(), "server-ca.crt"))}})
	if err != nil {
		t.Fatal(err)
	}
	endpoints := []struct {
		method, path string
		body         []byte
	}{
		{http.MethodGet, "/v1-kpki/server-bootstrap", nil},
		{http.MethodGet, "/v1-kpki/etcd-members", nil},
		{http.MethodPut, "/v1-kpki/cert/cacerts", rotateBody},
		{http.MethodPut, "/v1-kpki/cert/cacerts?force=true", rotateBody},
		{http.MethodPut, "/v1-kpki/token", []byte(`{"token":"K10` + hash + `::server:stolen-by-a-worker"}`)},
		{http.MethodPut, "/v1-kpki/token", []byte(`{}`)},
	}
	before := takeBaseline(t, s)
	auditBefore := rolesAuditActions(t, dd)
	for _, e := range endpoints {
		for _, c := range []struct {
			user string
			code int
		}{{"server", http.StatusUnauthorized}, {"node", http.StatusForbidden}} {
			what := fmt.Sprintf("%s %s as %s with the agent password", e.method, e.path, c.user)
			r := rolesRequest(t, s, "127.0.0.21", e.method, e.path, c.user, agentPW, e.body)
			if r.code != c.code {
				t.Errorf("%s: HTTP %d, want %d: %.200s", what, r.code, c.code, r.body)
			}
			var errBody struct{ Error, ID string }
			if err := json.Unmarshal(r.body, &errBody); err != nil || errBody.Error == "" || errBody.ID == "" {
				t.Errorf("%s: the answer is not a JSON error: %.200s", what, r.body)
			}
			assertNoSecrets(t, what, r.body, serverPW, agentPW)
		}
	}
	before.assertUnchanged(t, s, "the agent password against the server endpoints")
	auditAfter := rolesAuditActions(t, dd)
	for _, a := range []string{"server-bootstrap", "rotate-ca", "token-rotate"} {
		if auditAfter[a] != auditBefore[a] {
			t.Errorf("audit.log gained %d %s entries from agent-password requests", auditAfter[a]-auditBefore[a], a)
		}
	}
	if strings.Contains(s.Stderr(), agentPW) || strings.Contains(s.Stderr(), serverPW) {
		t.Error("the server log shows a password")
	}

	// The same requests with the server password do reach the endpoints (so the refusals
	// above are about the role, not a broken endpoint).
	if r := rolesRequest(t, s, "127.0.0.22", http.MethodGet, "/v1-kpki/server-bootstrap", "server", serverPW, nil); r.code != http.StatusOK || !bytes.Contains(r.body, []byte("ServerCAKey")) {
		t.Errorf("GET server-bootstrap with the server token: HTTP %d, want 200 with the bootstrap data", r.code)
	}
	// The server token is still accepted from agents, as user server and as user node.
	for _, user := range []string{"server", "node"} {
		if r := rolesRequest(t, s, "127.0.0.22", http.MethodGet, "/v1-kpki/client-ca.crt", user, serverPW, nil); r.code != http.StatusOK {
			t.Errorf("GET client-ca.crt as %s with the server password: HTTP %d, want 200", user, r.code)
		}
	}
	if r := rolesRequest(t, s, "127.0.0.22", http.MethodGet, "/v1-kpki/server-bootstrap", "node", serverPW, nil); r.code != http.StatusForbidden {
		t.Errorf("GET server-bootstrap as node with the server password: HTTP %d, want 403 (node is an agent)", r.code)
	}

	t.Run("token rotate to the agent password", func(t *testing.T) {
		b := takeBaseline(t, s)
		for _, newTok := range []string{agentPW, "K10" + hash + "::server:" + agentPW, agentTok} {
			r := runKpki(t, nil, "token", "rotate", "--server", s.SupervisorURL(), "--data-dir", dd, "--new-token", newTok)
			assertRefused(t, r, anyOf("agent password"))
			if strings.Contains(r.stderr, agentPW) || strings.Contains(r.stdout, agentPW) {
				t.Error("the refusal shows the agent password")
			}
		}
		b.assertUnchanged(t, s, "token rotate to the agent password")
		if r := rolesRequest(t, s, "127.0.0.23", http.MethodGet, "/v1-kpki/server-bootstrap", "server", agentPW, nil); r.code != http.StatusUnauthorized {
			t.Errorf("after the refused rotation, server:<agent password>: HTTP %d, want 401", r.code)
		}
	})

	t.Run("agent joins with the agent token", func(t *testing.T) {
		adir := filepath.Join(t.TempDir(), "agent")
		agentOK(t, agentArgs(s, agentTok, adir, "--node-name", "roles-agent")...)
		rolesAssertJoined(t, s, adir, "roles-agent")
	})
	t.Run("agent joins with the server token", func(t *testing.T) {
		adir := filepath.Join(t.TempDir(), "agent")
		agentOK(t, agentArgs(s, serverTok, adir, "--node-name", "roles-server-token")...)
		rolesAssertJoined(t, s, adir, "roles-server-token")
	})
	s.Stop(t)
}

// rolesAssertJoined checks that the agent data dir dd holds node's kubelet client
// certificate signed by s's client CA.
func rolesAssertJoined(t *testing.T, s *kpkiServer, dd, node string) {
	t.Helper()
	list := readCerts(t, filepath.Join(dd, "agent", "client-kubelet.crt"))
	if list[0].Subject.CommonName != "system:node:"+node {
		t.Errorf("client-kubelet subject %s, want CN system:node:%s", list[0].Subject, node)
	}
	if err := list[0].CheckSignatureFrom(readCerts(t, filepath.Join(s.TLSDir(), "client-ca.crt"))[0]); err != nil {
		t.Errorf("client-kubelet of %s is not signed by the client CA: %v", node, err)
	}
}

// TestRolesFailedAuthSlowedPerAddress floods the supervisor with wrong passwords from
// 127.0.0.9: it is soon answered 429 with a bounded Retry-After, even with the right
// password, while 127.0.0.10 is served at once; once it may try again, a success resets it.
func TestRolesFailedAuthSlowedPerAddress(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "data")
	s := startServer(t, dd)
	s.WaitReady(t)
	_, serverPW, _, agentPW := rolesTokens(t, s)
	const attacker, other = "127.0.0.9", "127.0.0.10"
	const maxAttempts = 40
	failures, limitedAt := 0, 0
	var limited rolesReply
	for i := 1; i <= maxAttempts; i++ {
		r := rolesRequest(t, s, attacker, http.MethodGet, "/v1-kpki/server-bootstrap", "server", fmt.Sprintf("guess-%02d-%s", i, randomHex(8)), nil)
		if r.code == http.StatusTooManyRequests {
			limited, limitedAt = r, i
			break
		}
		if r.code != http.StatusUnauthorized {
			t.Fatalf("wrong password %d: HTTP %d, want 401 or 429", i, r.code)
		}
		failures++
	}
	if limitedAt == 0 {
		t.Fatalf("%d wrong passwords from %s were all answered 401: failed authentications are not slowed", maxAttempts, attacker)
	}
	t.Logf("%s limited after %d failed authentications", attacker, failures)
	if failures < 3 {
		t.Errorf("limited after %d failures: a mistyped password or two must not lock a client out", failures)
	}
	ra, err := strconv.Atoi(limited.header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > 5 {
		t.Errorf("Retry-After %q, want a bounded number of seconds (1..5)", limited.header.Get("Retry-After"))
	}
	assertNoSecrets(t, "429 answer", limited.body, serverPW, agentPW)

	// The right password from the limited address is not even checked...
	if r := rolesRequest(t, s, attacker, http.MethodGet, "/v1-kpki/server-bootstrap", "server", serverPW, nil); r.code != http.StatusTooManyRequests {
		t.Errorf("right password from the limited address: HTTP %d, want 429", r.code)
	} else {
		assertNoSecrets(t, "429 answer to the right password", r.body, serverPW, agentPW)
	}
	// ...while another address is served at once, for both roles.
	if r := rolesRequest(t, s, other, http.MethodGet, "/v1-kpki/client-ca.crt", "node", agentPW, nil); r.code != http.StatusOK {
		t.Errorf("agent token from %s while %s is limited: HTTP %d, want 200", other, attacker, r.code)
	}
	if r := rolesRequest(t, s, other, http.MethodGet, "/v1-kpki/server-bootstrap", "server", serverPW, nil); r.code != http.StatusOK {
		t.Errorf("server token from %s while %s is limited: HTTP %d, want 200", other, attacker, r.code)
	}
	// Unauthenticated endpoints are not limited.
	if r := rolesRequest(t, s, attacker, http.MethodGet, "/cacerts", "", "", nil); r.code != http.StatusOK {
		t.Errorf("GET /cacerts from the limited address: HTTP %d, want 200", r.code)
	}

	// The wait is bounded: within Retry-After (polled, at most 10 s) the right password
	// gets through, and that success resets the address.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := rolesRequest(t, s, attacker, http.MethodGet, "/v1-kpki/client-ca.crt", "node", agentPW, nil)
		if r.code == http.StatusOK {
			break
		}
		if r.code != http.StatusTooManyRequests || time.Now().After(deadline) {
			t.Fatalf("right password from %s after the wait: HTTP %d, want 200 within 10 s", attacker, r.code)
		}
		time.Sleep(250 * time.Millisecond)
	}
	for i := 1; i <= 3; i++ {
		if r := rolesRequest(t, s, attacker, http.MethodGet, "/v1-kpki/server-bootstrap", "server", "after-reset", nil); r.code != http.StatusUnauthorized {
			t.Errorf("wrong password %d after a success: HTTP %d, want 401 (a success resets the address)", i, r.code)
		}
	}
	s.Stop(t)
}

// etcdOf returns a client of the embedded etcd of s, closed at cleanup.
func etcdOf(t *testing.T, s *kpkiServer) *clientv3.Client {
	t.Helper()
	tlsDir := s.TLSDir()
	cfg := tlsFromFiles(t, filepath.Join(tlsDir, "etcd", "server-ca.crt"),
		filepath.Join(tlsDir, "etcd", "client.crt"), filepath.Join(tlsDir, "etcd", "client.key"))
	return etcdClientTLS(t, "https://"+net.JoinHostPort(s.IP, strconv.Itoa(s.Ports.EtcdClient)), cfg)
}

func etcdClientTLS(t *testing.T, endpoint string, cfg *tls.Config) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, TLS: cfg, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd client for %s: %v", endpoint, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// encryptBootstrap is the inverse of decryptBootstrap (SPEC §6).
func encryptBootstrap(t *testing.T, pass string, plain []byte) string {
	t.Helper()
	var raw [8]byte
	if _, err := rand.Read(raw[:]); err != nil {
		t.Fatal(err)
	}
	salt := hex.EncodeToString(raw[:])
	key, err := pbkdf2.Key(sha1.New, pass, []byte(salt), 4096, 32)
	if err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	return salt + ":" + base64.StdEncoding.EncodeToString(gcm.Seal(nonce, nonce, plain, nil))
}

// putRecord stores rec under the bootstrap key of pass in the embedded etcd of s, as
// another writer (an older kpki, K3s) would have.
func putRecord(t *testing.T, s *kpkiServer, pass string, rec bootstrapRecord) {
	t.Helper()
	plain, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := etcdOf(t, s).Put(ctx, bootstrapKey(pass), encryptBootstrap(t, pass, plain)); err != nil {
		t.Fatalf("put the bootstrap record: %v", err)
	}
}

// passwdLines splits a passwd file into its lines.
func passwdLines(data []byte) []string {
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

// TestRolesSharedAgentPasswordMigrated restarts a data dir whose agent password is the
// server password (what kpki wrote before, and the K3s default): the server gives agents a
// distinct password through the bootstrap data (compare-and-swap), cred/passwd and
// agent-token, and says so; agents holding the server token or the old agent token keep
// working; the new agent password is no server password; a second restart changes
// nothing; a joining server takes the same passwd from the record.
func TestRolesSharedAgentPasswordMigrated(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	ips := []string{"127.0.0.61", "127.0.0.62"}
	ports := haPorts(t, ips...)
	root := t.TempDir()
	dd := filepath.Join(root, "s1")
	args := []string{"--node-name", "roles-1"}
	s := launch(t, serverSpec{dataDir: dd, ip: ips[0], ports: &ports, args: args})
	s.WaitReady(t)
	serverTok, serverPW, _, _ := rolesTokens(t, s)
	hash := tokenCAHash(t, serverTok)

	// Make the data as the old default had it: node's password is the server password,
	// in the record, in cred/passwd and in agent-token.
	rec, _ := currentRecord(t, s)
	stamp := time.Now().Add(-time.Minute).UTC().Truncate(time.Second)
	old := []byte(serverPW + ",server,server,kpki:server\n" + serverPW + ",node,node,kpki:agent\n")
	rec["PasswdFile"] = bootstrapEntry{Timestamp: stamp.Format(time.RFC3339Nano), Content: old}
	putRecord(t, s, serverPW, rec)
	s.Stop(t)
	passwdPath := filepath.Join(dd, "server", "cred", "passwd")
	writeFile(t, passwdPath, old, 0o600)
	if err := os.Chtimes(passwdPath, stamp, stamp); err != nil {
		t.Fatal(err)
	}
	oldAgentTok := "K10" + hash + "::node:" + serverPW
	writeFile(t, filepath.Join(dd, "server", "agent-token"), []byte(oldAgentTok+"\n"), 0o600)

	s = launch(t, serverSpec{dataDir: dd, ip: ips[0], ports: &ports, args: args})
	s.WaitReady(t)
	var warning string
	for _, l := range strings.Split(s.Stderr(), "\n") {
		if strings.Contains(l, "WARN") && strings.Contains(l, "agent password was the server password") {
			warning = l
		}
	}
	if warning == "" || !strings.Contains(warning, passwdPath) || !strings.Contains(warning, filepath.Join(dd, "server", "agent-token")) {
		t.Errorf("no warning naming cred/passwd and agent-token about the migrated agent password; stderr:\n%s", s.tail(30))
	}
	if strings.Contains(s.Stderr(), serverPW) {
		t.Error("the server log shows the server password")
	}
	gotServerTok, gotServerPW, newAgentTok, newAgentPW := rolesTokens(t, s)
	if gotServerTok != serverTok {
		t.Errorf("the server token changed in the migration")
	}
	if newAgentPW == serverPW || newAgentPW == gotServerPW {
		t.Fatal("after the restart the agent password is still the server password")
	}
	if tokenCAHash(t, newAgentTok) != hash {
		t.Errorf("the new agent token has another CA hash")
	}
	rec2, keys := currentRecord(t, s)
	if len(keys) != 1 {
		t.Errorf("bootstrap keys %v, want the one of the unchanged token", keyNames(keys))
	}
	disk := readFile(t, passwdPath)
	if !bytes.Equal(rec2["PasswdFile"].Content, disk) {
		t.Errorf("cred/passwd differs from the record's PasswdFile")
	}
	if want := []string{serverPW + ",server,server,kpki:server", newAgentPW + ",node,node,kpki:agent"}; !slices.Equal(passwdLines(disk), want) {
		t.Errorf("cred/passwd has %d lines, want the unchanged server entry and the new agent entry", len(passwdLines(disk)))
	}
	for field, e := range rec {
		if field != "PasswdFile" && (!bytes.Equal(e.Content, rec2[field].Content) || e.Timestamp != rec2[field].Timestamp) {
			t.Errorf("the migration changed %s in the record", field)
		}
	}

	// The new agent password is an agent's only.
	src := "127.0.0.63"
	if r := rolesRequest(t, s, src, http.MethodGet, "/v1-kpki/server-bootstrap", "server", newAgentPW, nil); r.code != http.StatusUnauthorized {
		t.Errorf("server:<new agent password>: HTTP %d, want 401", r.code)
	} else {
		assertNoSecrets(t, "server:<new agent password>", r.body, serverPW, newAgentPW)
	}
	if r := rolesRequest(t, s, src, http.MethodGet, "/v1-kpki/server-bootstrap", "node", newAgentPW, nil); r.code != http.StatusForbidden {
		t.Errorf("node:<new agent password> on server-bootstrap: HTTP %d, want 403", r.code)
	}
	// Agents holding the old agent token (node:<server password>) or the new one keep joining.
	for i, tok := range []string{oldAgentTok, newAgentTok, serverTok} {
		adir := filepath.Join(t.TempDir(), "agent")
		node := fmt.Sprintf("roles-migrated-%d", i)
		agentOK(t, agentArgs(s, tok, adir, "--node-name", node)...)
		rolesAssertJoined(t, s, adir, node)
	}

	// A second restart finds nothing to do.
	b := takeBaseline(t, s)
	s.Stop(t)
	s = launch(t, serverSpec{dataDir: dd, ip: ips[0], ports: &ports, args: args})
	s.WaitReady(t)
	b.assertUnchanged(t, s, "a restart after the migration")
	if strings.Count(s.Stderr(), "agent password was the server password") != 0 {
		t.Errorf("the second restart migrated again")
	}

	// A joining server takes passwd and the agent token from the record.
	dd2 := filepath.Join(root, "s2")
	s2 := launch(t, serverSpec{dataDir: dd2, ip: ips[1], ports: &ports, args: []string{"--node-name", "roles-2", "--server", s.SupervisorURL(), "--token", serverTok}})
	s2.WaitReady(t)
	if !bytes.Equal(readFile(t, filepath.Join(dd2, "server", "cred", "passwd")), disk) {
		t.Errorf("the joining server's cred/passwd differs from the cluster's")
	}
	if got := readTokenFile(t, dd2, "agent-token"); got != newAgentTok {
		t.Errorf("the joining server's agent-token differs from the cluster's")
	}
	if strings.Contains(s2.Stderr(), "agent password was the server password") {
		t.Errorf("the joining server migrated the passwd again")
	}
	if r := rolesRequest(t, s2, src, http.MethodGet, "/v1-kpki/server-bootstrap", "server", newAgentPW, nil); r.code != http.StatusUnauthorized {
		t.Errorf("joined server, server:<agent password>: HTTP %d, want 401", r.code)
	}
	// The first server then lacks quorum: it is killed at cleanup.
	s2.Stop(t)
}

// TestRolesTokenRotateFailures: a record without PasswdFile makes token rotate refuse with
// nothing changed (a restart stores this server's passwd in it again); a passwd write that
// fails after the datastore took the new token leaves this server on the new token, and
// the next start writes cred/passwd from the datastore.
func TestRolesTokenRotateFailures(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	dd := filepath.Join(t.TempDir(), "data")
	s := startServer(t, dd)
	s.WaitReady(t)
	_, serverPW, agentTok, agentPW := rolesTokens(t, s)
	passwdPath := filepath.Join(dd, "server", "cred", "passwd")
	passwd := readFile(t, passwdPath)

	// A record without PasswdFile (servers are started with this test's t, not a subtest's,
	// so that they outlive each step).
	{
		rec, _ := currentRecord(t, s)
		delete(rec, "PasswdFile")
		putRecord(t, s, serverPW, rec)
		b := takeBaseline(t, s)
		r := runKpki(t, nil, "token", "rotate", "--server", s.SupervisorURL(), "--data-dir", dd)
		assertRefused(t, r, anyOf("no PasswdFile"), anyOf("nothing was changed"))
		b.assertUnchanged(t, s, "token rotate with a record without PasswdFile")
		if !bytes.Equal(readFile(t, passwdPath), passwd) {
			t.Fatal("cred/passwd changed")
		}
		s = restartServer(t, s)
		rec, _ = currentRecord(t, s)
		if !bytes.Equal(rec["PasswdFile"].Content, passwd) {
			t.Errorf("after the restart the record's PasswdFile is not this server's cred/passwd")
		}
		if !bytes.Equal(readFile(t, passwdPath), passwd) || readTokenFile(t, dd, "agent-token") != agentTok {
			t.Errorf("the restart changed cred/passwd or the agent token")
		}
	}

	// A passwd write that fails after the rotation.
	{
		oldTok := readTokenFile(t, dd, "token")
		// cred/passwd is a directory: the rename of the new file onto it fails.
		if err := os.Remove(passwdPath); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(passwdPath, 0o700); err != nil {
			t.Fatal(err)
		}
		r := runKpki(t, nil, "token", "rotate", "--server", s.SupervisorURL(), "--data-dir", dd)
		newTok := printedServerTokenRE.FindString(r.stdout)
		if r.code != 0 || newTok == "" {
			t.Fatalf("token rotate: want the new token printed (the datastore took it):\n%s", r)
		}
		if !strings.Contains(r.stderr, "warning") || !strings.Contains(r.stderr, passwdPath) {
			t.Errorf("token rotate does not warn that %s was not written:\n%s", passwdPath, r)
		}
		newPW := passphrase(newTok)
		if got := readTokenFile(t, dd, "token"); got != newTok {
			t.Errorf("the token file does not hold the new token")
		}
		keys := bootstrapKeys(t, s)
		if _, ok := keys[bootstrapKey(newPW)]; !ok || len(keys) != 1 {
			t.Fatalf("bootstrap keys %v, want only the new token's", keyNames(keys))
		}
		// The running server switched with the record.
		src := "127.0.0.71"
		if r := rolesRequest(t, s, src, http.MethodGet, "/v1-kpki/server-bootstrap", "server", newPW, nil); r.code != http.StatusOK {
			t.Errorf("the new token on the running server: HTTP %d, want 200", r.code)
		}
		if r := rolesRequest(t, s, src, http.MethodGet, "/v1-kpki/server-bootstrap", "server", passphrase(oldTok), nil); r.code != http.StatusUnauthorized {
			t.Errorf("the old token on the running server: HTTP %d, want 401", r.code)
		}
		if r := rolesRequest(t, s, src, http.MethodGet, "/v1-kpki/client-ca.crt", "node", agentPW, nil); r.code != http.StatusOK {
			t.Errorf("the agent token after the rotation: HTTP %d, want 200", r.code)
		}
		// The operator removes the obstacle; the next start writes passwd from the datastore.
		s.Stop(t)
		if err := os.Remove(passwdPath); err != nil {
			t.Fatal(err)
		}
		n := startServerOn(t, s.Ports, dd)
		n.WaitReady(t)
		s = n
		rec, _ := currentRecord(t, s)
		disk := readFile(t, passwdPath)
		if !bytes.Equal(rec["PasswdFile"].Content, disk) {
			t.Errorf("after the restart cred/passwd differs from the record")
		}
		if want := []string{newPW + ",server,server,kpki:server", agentPW + ",node,node,kpki:agent"}; !slices.Equal(passwdLines(disk), want) {
			t.Errorf("after the restart cred/passwd is not the new server password and the unchanged agent password")
		}
		if readTokenFile(t, dd, "agent-token") != agentTok {
			t.Errorf("the agent token changed")
		}
		if r := rolesRequest(t, s, "127.0.0.72", http.MethodGet, "/v1-kpki/server-bootstrap", "server", newPW, nil); r.code != http.StatusOK {
			t.Errorf("the new token after the restart: HTTP %d, want 200", r.code)
		}
	}
	s.Stop(t)
}

// TestRolesAgentTokenFlag: --agent-token equal to the server token is refused before
// anything is written; an --agent-token that is not the cluster's is refused at a restart
// with nothing changed; --agent-token on a first start is the agent token.
func TestRolesAgentTokenFlag(t *testing.T) {
	t.Parallel()
	const pw, agent = "roles-flag-server-secret", "roles-flag-agent-secret"
	dd := filepath.Join(t.TempDir(), "same")
	bad := startServer(t, dd, "--token", pw, "--agent-token", pw)
	code, stderr := bad.Wait(t, failTimeout)
	assertFailure(t, code, stderr, "--agent-token must differ from --token")
	if files := nonDirs(hashTree(t, dd)); len(files) != 0 {
		t.Errorf("the refused start wrote %s", strings.Join(files, ", "))
	}

	dd = filepath.Join(t.TempDir(), "data")
	s := startServer(t, dd, "--token", pw, "--agent-token", agent)
	s.WaitReady(t)
	_, serverPW, _, agentPW := rolesTokens(t, s)
	if serverPW != pw || agentPW != agent {
		t.Fatalf("token files do not hold --token and --agent-token")
	}
	s.Stop(t)
	before := hashTree(t, dd)
	other := startServerOn(t, s.Ports, dd, "--token", pw, "--agent-token", "roles-flag-another-agent")
	code, stderr = other.Wait(t, failTimeout)
	assertFailure(t, code, stderr, "--agent-token is not the cluster's agent token")
	assertTreeUnchanged(t, "restart with another --agent-token", before, hashTree(t, dd))
	if strings.Contains(stderr, agent) || strings.Contains(stderr, pw) {
		t.Errorf("the refusal shows a password")
	}
}
