package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	cryptorand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

const (
	haSignTimeout   = 30 * time.Second
	haMemberTimeout = 30 * time.Second
)

// haSharedFiles are the files (under <dd>/server) every server of one cluster must hold
// byte for byte: the CA pairs, the service-account keys and the password file.
func haSharedFiles() []string {
	var files []string
	for _, ca := range caFiles {
		files = append(files, "tls/"+ca+".crt", "tls/"+ca+".key")
	}
	return append(files, "tls/service.key", "cred/passwd")
}

// haAssertSameFiles checks that every haSharedFiles entry of other is byte-identical to ref's.
func haAssertSameFiles(t *testing.T, ref, other *kpkiServer) {
	t.Helper()
	for _, rel := range haSharedFiles() {
		want := readFile(t, filepath.Join(ref.DataDir, "server", rel))
		got := readFile(t, filepath.Join(other.DataDir, "server", rel))
		if !bytes.Equal(want, got) {
			t.Errorf("server/%s differs between %s and %s", rel, ref.DataDir, other.DataDir)
		}
	}
}

// haPortOnAll returns a TCP port that is free on every one of ips and that no other test of
// this process was given on any of them.
func haPortOnAll(t *testing.T, ips []string) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
next:
	for range 500 {
		p := 20000 + rand.IntN(12000)
		for _, ip := range ips {
			key := net.JoinHostPort(ip, strconv.Itoa(p))
			if usedPorts[key] {
				continue next
			}
			l, err := net.Listen("tcp", key)
			if err != nil {
				continue next
			}
			l.Close()
		}
		for _, ip := range ips {
			usedPorts[net.JoinHostPort(ip, strconv.Itoa(p))] = true
		}
		return p
	}
	t.Fatalf("no TCP port found that is free on all of %v", ips)
	return 0
}

// haPorts returns one set of server ports free on every one of ips, for servers that run on
// several loopback addresses with the same ports.
func haPorts(t *testing.T, ips ...string) serverPorts {
	t.Helper()
	return serverPorts{
		Supervisor: haPortOnAll(t, ips),
		EtcdClient: haPortOnAll(t, ips),
		EtcdPeer:   haPortOnAll(t, ips),
		APIServer:  haPortOnAll(t, ips),
	}
}

// haToken returns the content of <dd>/server/token.
func haToken(t *testing.T, s *kpkiServer) string {
	t.Helper()
	return strings.TrimSpace(string(readFile(t, filepath.Join(s.DataDir, "server", "token"))))
}

// haAgentPassword returns the password part of <dd>/server/agent-token.
func haAgentPassword(t *testing.T, s *kpkiServer) string {
	t.Helper()
	tok := strings.TrimSpace(string(readFile(t, filepath.Join(s.DataDir, "server", "agent-token"))))
	m := agentTokenRE.FindStringSubmatch(tok)
	if m == nil {
		t.Fatalf("%s/server/agent-token is not K10<hash>::node:<password>", s.DataDir)
	}
	return m[2]
}

type haSignResult struct {
	code int
	body []byte
	key  crypto.Signer
}

// haSign posts a CSR for a new P-256 key to the kube-proxy signing endpoint of s with node
// basic auth and the node headers. TLS is verified with s's server-ca.crt.
func haSign(s *kpkiServer, agentPW, node, nodePW string) (haSignResult, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), cryptorand.Reader)
	if err != nil {
		return haSignResult{}, err
	}
	csr, err := x509.CreateCertificateRequest(cryptorand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "e2e-csr"}}, key)
	if err != nil {
		return haSignResult{}, err
	}
	cfg, err := s.clientTLS("")
	if err != nil {
		return haSignResult{}, err
	}
	c := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodPost, s.SupervisorURL()+"/v1-kpki/client-kube-proxy.crt", bytes.NewReader(csr))
	if err != nil {
		return haSignResult{}, err
	}
	req.SetBasicAuth("node", agentPW)
	req.Header.Set("Kpki-Node-Name", node)
	req.Header.Set("Kpki-Node-Password", nodePW)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.Do(req)
	if err != nil {
		return haSignResult{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return haSignResult{}, err
	}
	return haSignResult{code: resp.StatusCode, body: body, key: key}, nil
}

// haSignSettled is haSign repeated while the answer is a transport error or a 5xx (a
// datastore that is electing a leader), up to haSignTimeout. It fails the test when no
// definite answer came.
func haSignSettled(t *testing.T, s *kpkiServer, agentPW, node, nodePW string) haSignResult {
	t.Helper()
	deadline := time.Now().Add(haSignTimeout)
	for attempt := 1; ; attempt++ {
		r, err := haSign(s, agentPW, node, nodePW)
		var last string
		switch {
		case err != nil:
			last = err.Error()
		case r.code >= 500:
			last = fmt.Sprintf("HTTP %d: %s", r.code, strings.TrimSpace(string(r.body)))
		default:
			if attempt > 1 {
				t.Logf("%s: signing request for node %s answered %d after %d attempts", s.SupervisorURL(), node, r.code, attempt)
			}
			return r
		}
		if s.exited() {
			t.Fatalf("kpki server %s exited with code %d; last signing answer: %s; stderr tail:\n%s", s.SupervisorURL(), s.exitCode, last, s.tail(30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: signing request for node %s got no definite answer within %v (%d attempts, last: %s)", s.SupervisorURL(), node, haSignTimeout, attempt, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// haCheckSigned checks a successful kube-proxy signing answer: the PEM leaf for the CSR's key,
// CN system:kube-proxy, client auth, followed by the client-ca.crt bundle of clientCAFile,
// and verifying against that CA.
func haCheckSigned(t *testing.T, what string, r haSignResult, clientCAFile string) {
	t.Helper()
	if r.code != http.StatusOK {
		t.Errorf("%s: HTTP %d, want 200: %s", what, r.code, strings.TrimSpace(string(r.body)))
		return
	}
	certs, err := parseCertsPEM(r.body)
	if err != nil {
		t.Errorf("%s: reply is not PEM certificates: %v", what, err)
		return
	}
	leaf := certs[0]
	caCerts := readCerts(t, clientCAFile)
	if !sameCerts(certs[1:], caCerts) {
		t.Errorf("%s: the certificates after the leaf are not the bundle of %s", what, clientCAFile)
	}
	if !keyMatches(leaf.PublicKey, r.key) {
		t.Errorf("%s: the leaf does not carry the CSR's public key", what)
	}
	if leaf.Subject.CommonName != "system:kube-proxy" {
		t.Errorf("%s: leaf CN %q, want system:kube-proxy", what, leaf.Subject.CommonName)
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCerts[len(caCerts)-1])
	inter := x509.NewCertPool()
	for _, c := range caCerts[:len(caCerts)-1] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("%s: the leaf does not verify against %s for client auth: %v", what, clientCAFile, err)
	}
}

// haCheckRefused checks a 403 answer with the JSON error body {"error","id"}.
func haCheckRefused(t *testing.T, what string, r haSignResult) {
	t.Helper()
	if r.code != http.StatusForbidden {
		t.Errorf("%s: HTTP %d, want 403: %s", what, r.code, strings.TrimSpace(string(r.body)))
		return
	}
	var e struct {
		Error string `json:"error"`
		ID    string `json:"id"`
	}
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error == "" || e.ID == "" {
		t.Errorf("%s: 403 body is not JSON {\"error\",\"id\"} with both set: %q (%v)", what, r.body, err)
	}
}

type haMember struct {
	name              string
	peerURLs, clients []string
	learner           bool
}

// haEtcdMembers lists the members of the embedded etcd of s, as its etcd client certificate.
func haEtcdMembers(t *testing.T, s *kpkiServer) ([]haMember, error) {
	t.Helper()
	etcdDir := filepath.Join(s.TLSDir(), "etcd")
	cfg := tlsFromFiles(t, filepath.Join(etcdDir, "server-ca.crt"), filepath.Join(etcdDir, "client.crt"), filepath.Join(etcdDir, "client.key"))
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"https://" + net.JoinHostPort(s.IP, strconv.Itoa(s.Ports.EtcdClient))},
		DialTimeout: 5 * time.Second,
		TLS:         cfg,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.MemberList(ctx)
	if err != nil {
		return nil, err
	}
	var out []haMember
	for _, m := range resp.Members {
		out = append(out, haMember{name: m.Name, peerURLs: m.PeerURLs, clients: m.ClientURLs, learner: m.IsLearner})
	}
	return out, nil
}

func haMemberSummary(members []haMember) string {
	var parts []string
	for _, m := range members {
		parts = append(parts, fmt.Sprintf("{name %q peers %v clients %v learner %v}", m.name, m.peerURLs, m.clients, m.learner))
	}
	return strings.Join(parts, ", ")
}

// haWaitMembers polls the member list seen through s until it holds exactly the given
// servers, each started (named, with client URLs), a voting member, with the peer URL
// https://<ip>:<peer port>.
func haWaitMembers(t *testing.T, s *kpkiServer, servers ...*kpkiServer) {
	t.Helper()
	var want []string
	for _, o := range servers {
		want = append(want, "https://"+net.JoinHostPort(o.IP, strconv.Itoa(o.Ports.EtcdPeer)))
	}
	sort.Strings(want)
	deadline := time.Now().Add(haMemberTimeout)
	var last string
	for {
		members, err := haEtcdMembers(t, s)
		if err != nil {
			last = err.Error()
		} else {
			var peers []string
			started := true
			for _, m := range members {
				peers = append(peers, m.peerURLs...)
				if m.name == "" || len(m.clients) == 0 || m.learner {
					started = false
				}
			}
			sort.Strings(peers)
			if started && len(members) == len(servers) && slices.Equal(peers, want) {
				return
			}
			last = fmt.Sprintf("%d members: %s", len(members), haMemberSummary(members))
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd member list through %s: want exactly %d started voting members with peer URLs %v within %v; last: %s",
				s.IP, len(servers), want, haMemberTimeout, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// haJoin starts a server on ip that joins first with token.
func haJoin(t *testing.T, first *kpkiServer, ip, name string, ports serverPorts, dataDir, token string) *kpkiServer {
	t.Helper()
	return launch(t, serverSpec{dataDir: dataDir, ip: ip, ports: &ports,
		args: []string{"--node-name", name, "--server", first.SupervisorURL(), "--token", token}})
}

// TestHAThreeServers forms a three-server cluster on 127.0.0.1/.2/.3 (same ports on each
// address), checks that the servers share the cluster CA material, each have their own etcd
// certificates and are etcd members, and that the cluster keeps serving when one server is
// killed and takes it back when it restarts.
func TestHAThreeServers(t *testing.T) {
	t.Parallel()
	ips := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	ports := haPorts(t, ips...)
	root := t.TempDir()
	dd := func(i int) string { return filepath.Join(root, fmt.Sprintf("server%d", i+1)) }

	s1 := launch(t, serverSpec{dataDir: dd(0), ip: ips[0], ports: &ports, args: []string{"--node-name", "ha-1"}})
	s1.WaitReady(t)
	token := haToken(t, s1)
	if !serverTokenRE.MatchString(token) {
		t.Fatalf("%s/server/token is not a secure K10 server token", s1.DataDir)
	}
	s2 := haJoin(t, s1, ips[1], "ha-2", ports, dd(1), token)
	s2.WaitReady(t)
	s3 := haJoin(t, s1, ips[2], "ha-3", ports, dd(2), token)
	s3.WaitReady(t)
	servers := []*kpkiServer{s1, s2, s3}

	for _, s := range servers[1:] {
		haAssertSameFiles(t, s1, s)
	}
	for _, s := range servers {
		for _, f := range []string{"etcd/server-client.crt", "etcd/peer-server-client.crt"} {
			leaf := readCerts(t, filepath.Join(s.TLSDir(), f))[0]
			if !hasSAN(leaf, s.IP) {
				t.Errorf("%s/%s: no IP SAN %s (its advertise address); IP SANs %v", s.TLSDir(), f, s.IP, leaf.IPAddresses)
			}
		}
	}
	haWaitMembers(t, s1, servers...)

	agentPW := haAgentPassword(t, s1)
	clientCA := filepath.Join(s1.TLSDir(), "client-ca.crt")
	for i, s := range servers {
		node := fmt.Sprintf("ha-node-%d", i+1)
		r := haSignSettled(t, s, agentPW, node, randomHex(16))
		haCheckSigned(t, fmt.Sprintf("kube-proxy CSR for %s signed by server %d", node, i+1), r, clientCA)
	}

	s2.Kill(t)
	downPasswords := map[string]string{}
	for i, s := range []*kpkiServer{s1, s3} {
		s.WaitReady(t)
		node := fmt.Sprintf("ha-down-node-%d", i+1)
		downPasswords[node] = randomHex(16)
		r := haSignSettled(t, s, agentPW, node, downPasswords[node])
		haCheckSigned(t, fmt.Sprintf("kube-proxy CSR for %s signed by %s while server 2 is down", node, s.SupervisorURL()), r, clientCA)
	}

	s2b := launch(t, serverSpec{dataDir: dd(1), ip: ips[1], ports: &ports,
		args: []string{"--node-name", "ha-2", "--server", s1.SupervisorURL(), "--token", token}})
	s2b.WaitReady(t)
	haAssertSameFiles(t, s1, s2b)
	for node, pw := range downPasswords {
		wrong := haSignSettled(t, s2b, agentPW, node, randomHex(16))
		haCheckRefused(t, fmt.Sprintf("restarted server 2, node %s registered while it was down, wrong node password", node), wrong)
		right := haSignSettled(t, s2b, agentPW, node, pw)
		haCheckSigned(t, fmt.Sprintf("restarted server 2, node %s with its node password", node), right, clientCA)
	}
	haWaitMembers(t, s2b, s1, s2b, s3)
}

// TestJoinRefusals starts joining servers with a token whose CA hash is wrong and with a
// token whose password is wrong: both must exit non-zero, write nothing and leave the
// cluster's membership alone.
func TestJoinRefusals(t *testing.T) {
	t.Parallel()
	ips := []string{"127.0.0.1", "127.0.0.2"}
	ports := haPorts(t, ips...)
	root := t.TempDir()
	s1 := launch(t, serverSpec{dataDir: filepath.Join(root, "server1"), ip: ips[0], ports: &ports, args: []string{"--node-name", "refuse-1"}})
	s1.WaitReady(t)
	token := haToken(t, s1)
	m := serverTokenRE.FindStringSubmatch(token)
	if m == nil {
		t.Fatalf("%s/server/token is not a secure K10 server token", s1.DataDir)
	}
	hash, pw := m[1], m[2]
	flip := "0"
	if hash[63] == '0' {
		flip = "1"
	}
	wrongHash := hash[:63] + flip

	for _, c := range []struct {
		name, token string
		wants       []string
		anyOf       []string
	}{
		{
			name:  "wrong CA hash",
			token: "K10" + wrongHash + "::server:" + pw,
			wants: []string{"token CA hash does not match the Cluster CA certificate hash", wrongHash, hash},
		},
		{
			name:  "wrong password",
			token: "K10" + hash + "::server:" + pw + "x",
			anyOf: []string{"credential", "password", "unauthorized", "401", "denied", "refused", "forbidden", "403"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			dd := filepath.Join(t.TempDir(), "data")
			j := haJoin(t, s1, ips[1], "refuse-2", ports, dd, c.token)
			code, stderr := j.Wait(t, failTimeout)
			last := assertFailure(t, code, stderr, c.wants...)
			if len(c.anyOf) > 0 && !slices.ContainsFunc(c.anyOf, func(w string) bool { return strings.Contains(strings.ToLower(last), w) }) {
				t.Errorf("error line %q does not name the refusal (none of %v)", last, c.anyOf)
			}
			if files := nonDirs(hashTree(t, filepath.Join(dd, "server", "tls"))); len(files) != 0 {
				t.Errorf("a refused join wrote under server/tls: %s", strings.Join(files, ", "))
			}
			if files := nonDirs(hashTree(t, dd)); len(files) != 0 {
				t.Errorf("a refused join wrote files into the data dir: %s", strings.Join(files, ", "))
			}
			if strings.Contains(stderr, pw) {
				t.Errorf("the refused join's stderr shows the token password")
			}
			haWaitMembers(t, s1, s1)
		})
	}
	s1.WaitReady(t)
}

// TestShortTokenJoin joins a server with the password alone (no CA hash): the join works and
// the joining server warns that the CA is not pinned.
func TestShortTokenJoin(t *testing.T) {
	t.Parallel()
	ips := []string{"127.0.0.1", "127.0.0.2"}
	ports := haPorts(t, ips...)
	root := t.TempDir()
	s1 := launch(t, serverSpec{dataDir: filepath.Join(root, "server1"), ip: ips[0], ports: &ports, args: []string{"--node-name", "short-1"}})
	s1.WaitReady(t)
	pw := passphrase(haToken(t, s1))
	s2 := haJoin(t, s1, ips[1], "short-2", ports, filepath.Join(root, "server2"), pw)
	s2.WaitReady(t)

	haAssertSameFiles(t, s1, s2)
	haWaitMembers(t, s1, s1, s2)
	stderr := s2.Stderr()
	warned := false
	for _, l := range strings.Split(stderr, "\n") {
		if strings.Contains(l, "WARN") && strings.Contains(strings.ToLower(l), "not pinned") {
			warned = true
			t.Logf("warning: %s", l)
		}
	}
	if !warned {
		t.Errorf("the server joining with a short token logged no warning that the CA is not pinned; stderr:\n%s", s2.tail(40))
	}
	if strings.Contains(stderr, pw) {
		t.Errorf("the joining server's log shows the token password")
	}
	r := haSignSettled(t, s2, haAgentPassword(t, s1), "short-node", randomHex(16))
	haCheckSigned(t, "kube-proxy CSR signed by the server joined with a short token", r, filepath.Join(s1.TLSDir(), "client-ca.crt"))
}
