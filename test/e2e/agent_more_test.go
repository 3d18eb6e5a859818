package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// supReply is one answer of the supervisor.
type supReply struct {
	code  int
	ctype string
	body  []byte
}

// supRequest sends method path to the supervisor of s over TLS verified with its server CA,
// with basic auth user:pw when user is set and the given headers.
func supRequest(t *testing.T, s *kpkiServer, method, path, user, pw string, hdr map[string]string, body []byte) supReply {
	t.Helper()
	cfg, err := s.clientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	defer c.CloseIdleConnections()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, s.SupervisorURL()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, pw)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/pkcs10")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s%s: %v", method, s.SupervisorURL(), path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read the answer to %s %s: %v", method, path, err)
	}
	return supReply{code: resp.StatusCode, ctype: resp.Header.Get("Content-Type"), body: data}
}

// assertJSONError checks a JSON {"error","id"} answer with status code whose id is in the
// server's log, and returns the error message.
func assertJSONError(t *testing.T, s *kpkiServer, r supReply, code int) string {
	t.Helper()
	if r.code != code {
		t.Errorf("HTTP %d, want %d; body: %s", r.code, code, bytes.TrimSpace(r.body))
	}
	if !strings.HasPrefix(r.ctype, "application/json") {
		t.Errorf("Content-Type %q, want application/json", r.ctype)
	}
	var eb map[string]any
	if err := json.Unmarshal(r.body, &eb); err != nil {
		t.Errorf("the body is not JSON: %v: %q", err, r.body)
		return ""
	}
	msg, _ := eb["error"].(string)
	id, _ := eb["id"].(string)
	if msg == "" || id == "" {
		t.Errorf(`the body lacks a non-empty "error" or "id": %s`, bytes.TrimSpace(r.body))
		return msg
	}
	if !strings.Contains(s.Stderr(), id) {
		t.Errorf("error id %s is not in the server's log", id)
	}
	return msg
}

// metricSum fetches http://<addr>/metrics and sums every sample of name, whatever its labels.
func metricSum(t *testing.T, addr, name string) float64 {
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
	sum := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 || (f[0] != name && !strings.HasPrefix(f[0], name+"{")) {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// auditEntries parses <dd>/server/audit.log (none when it does not exist).
func auditEntries(t *testing.T, dd string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dd, "server", "audit.log"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("audit.log line %q: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

func countAudit(entries []map[string]any, action, actor string) int {
	n := 0
	for _, e := range entries {
		if e["action"] == action && e["actor"] == actor {
			n++
		}
	}
	return n
}

func csrDER(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}, key)
	if err != nil {
		t.Fatalf("create CSR: %v", err)
	}
	return der
}

func ecCSR(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return csrDER(t, k)
}

// dsaCSR makes a DER CSR for a DSA-2048 key with the openssl CLI.
func dsaCSR(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	run(t, dir, nil, "openssl", "dsaparam", "-genkey", "-out", "dsa.pem", "2048")
	run(t, dir, nil, "openssl", "req", "-new", "-key", "dsa.pem", "-outform", "DER", "-subj", "/CN=x", "-out", "dsa.der")
	return readFile(t, filepath.Join(dir, "dsa.der"))
}

// oversizedCSR is a well-formed CSR over 64 KiB: a P-256 CSR carrying a large extension.
func oversizedCSR(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "x"},
		ExtraExtensions: []pkix.Extension{{
			Id:    asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55555, 1},
			Value: bytes.Repeat([]byte{'A'}, 70<<10),
		}},
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, k)
	if err != nil {
		t.Fatalf("create CSR: %v", err)
	}
	if len(der) <= 64<<10 {
		t.Fatalf("oversized CSR is only %d bytes", len(der))
	}
	return der
}

func containsFold(s string, alts []string) bool {
	for _, a := range alts {
		if strings.Contains(strings.ToLower(s), strings.ToLower(a)) {
			return true
		}
	}
	return false
}

// TestSupervisorRejectsBadCSRs posts broken signing requests with valid node credentials
// (SPEC §7): each is refused with a JSON error naming the reason and logged with its id,
// nothing is issued and the node name is not registered.
func TestSupervisorRejectsBadCSRs(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	metrics := net.JoinHostPort(loopback, strconv.Itoa(freePort(t, loopback)))
	dd := filepath.Join(t.TempDir(), "server")
	s := startServer(t, dd, "--metrics-address", metrics)
	s.WaitReady(t)
	pw := passphrase(agentToken(t, s))
	const issued = "kpki_certificates_issued_total"
	const kubelet = "/v1-kpki/client-kubelet.crt"

	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	badSig := ecCSR(t)
	badSig[len(badSig)-1] ^= 0x01

	type tc struct {
		name     string
		node     string // Kpki-Node-Name; "" leaves it out
		nodePW   string // Kpki-Node-Password; "" leaves it out
		nodeIP   string
		body     []byte
		code     int
		reason   []string // the error names at least one of these (case-insensitive)
		register bool     // check afterwards that node is still free
	}
	cases := []tc{
		{name: "RSA-1024 key", node: "bad-rsa1024", nodePW: "pw-rsa1024", body: csrDER(t, rsaKey),
			code: http.StatusBadRequest, reason: []string{"1024"}, register: true},
		{name: "DSA key", node: "bad-dsa", nodePW: "pw-dsa", body: dsaCSR(t),
			code: http.StatusBadRequest, reason: []string{"DSA", "key type", "algorithm"}, register: true},
		{name: "signature does not verify", node: "bad-signature", nodePW: "pw-signature", body: badSig,
			code: http.StatusBadRequest, reason: []string{"signature"}, register: true},
		{name: "garbage body", node: "bad-garbage", nodePW: "pw-garbage", body: []byte("this is not a certificate request\x00\x01\x02"),
			code: http.StatusBadRequest, reason: []string{"PKCS#10", "certificate request", "CSR"}, register: true},
		{name: "body over 64 KiB", node: "bad-oversized", nodePW: "pw-oversized", body: oversizedCSR(t),
			code: http.StatusRequestEntityTooLarge, reason: []string{"65536", "64 KiB", "too large", "larger"}, register: true},
		{name: "node name not a DNS label", node: "Bad_Name!", nodePW: "pw-badname", body: ecCSR(t),
			code: http.StatusBadRequest, reason: []string{"node name", "DNS"}},
		{name: "bad Kpki-Node-IP entry", node: "bad-node-ip", nodePW: "pw-node-ip", nodeIP: "10.0.0.1,notanip", body: ecCSR(t),
			code: http.StatusBadRequest, reason: []string{"notanip"}, register: true},
		{name: "missing node headers", body: ecCSR(t),
			code: http.StatusBadRequest, reason: []string{"Kpki-Node-Name", "Kpki-Node-Password"}},
		{name: "missing node password", node: "bad-no-password", body: ecCSR(t),
			code: http.StatusBadRequest, reason: []string{"Kpki-Node-Password"}, register: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := metricSum(t, metrics, issued)
			hdr := map[string]string{}
			if c.node != "" {
				hdr["Kpki-Node-Name"] = c.node
			}
			if c.nodePW != "" {
				hdr["Kpki-Node-Password"] = c.nodePW
			}
			if c.nodeIP != "" {
				hdr["Kpki-Node-IP"] = c.nodeIP
			}
			r := supRequest(t, s, http.MethodPost, kubelet, "node", pw, hdr, c.body)
			msg := assertJSONError(t, s, r, c.code)
			t.Logf("HTTP %d: %s", r.code, msg)
			if !containsFold(msg, c.reason) {
				t.Errorf("error %q names none of %q", msg, c.reason)
			}
			if after := metricSum(t, metrics, issued); after != before {
				t.Errorf("%s went from %v to %v", issued, before, after)
			}
			if c.node != "" {
				if n := countAudit(auditEntries(t, dd), "issue", strings.ToLower(c.node)); n != 0 {
					t.Errorf("audit.log has %d issue entries for %s", n, strings.ToLower(c.node))
				}
			}
		})
	}

	t.Run("node names stay unregistered", func(t *testing.T) {
		for _, c := range cases {
			if !c.register {
				continue
			}
			hdr := map[string]string{"Kpki-Node-Name": c.node, "Kpki-Node-Password": "another-" + c.node}
			r := supRequest(t, s, http.MethodPost, kubelet, "node", pw, hdr, ecCSR(t))
			if r.code != http.StatusOK {
				t.Errorf("%s: a valid request for %s with another node password got HTTP %d, want 200 (the refused request registered the name): %s",
					c.name, c.node, r.code, bytes.TrimSpace(r.body))
				continue
			}
			if _, err := parseCertsPEM(r.body); err != nil {
				t.Errorf("%s: the reply for %s is not PEM certificates: %v", c.name, c.node, err)
			}
		}
	})

	t.Run("no auth", func(t *testing.T) {
		before := metricSum(t, metrics, issued)
		hdr := map[string]string{"Kpki-Node-Name": "no-auth", "Kpki-Node-Password": "pw-no-auth"}
		r := supRequest(t, s, http.MethodPost, kubelet, "", "", hdr, ecCSR(t))
		assertJSONError(t, s, r, http.StatusUnauthorized)
		if after := metricSum(t, metrics, issued); after != before {
			t.Errorf("%s went from %v to %v", issued, before, after)
		}
	})

	t.Run("agent password for server-bootstrap", func(t *testing.T) {
		r := supRequest(t, s, http.MethodGet, "/v1-kpki/server-bootstrap", "node", pw, nil, nil)
		assertJSONError(t, s, r, http.StatusForbidden)
		if bytes.Contains(r.body, []byte("ServerCAKey")) || bytes.Contains(r.body, []byte("PRIVATE KEY")) {
			t.Errorf("the 403 answer holds bootstrap data")
		}
		for _, e := range auditEntries(t, dd) {
			if e["action"] == "server-bootstrap" {
				t.Errorf("audit.log records a server-bootstrap for an agent: %v", e)
			}
		}
	})
}

// TestAgentImpersonation joins a second host under a node name already taken: it is refused
// with 403, writes no certificate, and the refusal is audited without any node password.
func TestAgentImpersonation(t *testing.T) {
	t.Parallel()
	sdd := filepath.Join(t.TempDir(), "server")
	s := startServer(t, sdd)
	s.WaitReady(t)
	tok := agentToken(t, s)
	const worker = "worker-1"

	ddA := filepath.Join(t.TempDir(), "a")
	agentOK(t, agentArgs(s, tok, ddA, "--node-name", worker)...)
	issuedA := countAudit(auditEntries(t, sdd), "issue", worker)
	treeA := hashTree(t, ddA)

	ddB := filepath.Join(t.TempDir(), "b")
	r := runAgentOnce(t, agentArgs(s, tok, ddB, "--node-name", worker)...)
	line := assertFailure(t, r.code, r.stderr, worker)
	if !containsFold(line, []string{"403", "registered"}) {
		t.Errorf("error line %q says neither 403 nor registered", line)
	}
	for _, l := range agentLeafFiles {
		for _, f := range []string{l.name + ".crt", l.name + ".key"} {
			if _, err := os.Stat(filepath.Join(ddB, "agent", f)); err == nil {
				t.Errorf("the refused agent wrote %s", f)
			}
		}
	}
	for f := range agentKubeconfigs {
		if _, err := os.Stat(filepath.Join(ddB, "agent", f)); err == nil {
			t.Errorf("the refused agent wrote %s", f)
		}
	}
	assertTreeUnchanged(t, "agent A after agent B was refused", treeA, hashTree(t, ddA))

	entries := auditEntries(t, sdd)
	if n := countAudit(entries, "node-password-mismatch", worker); n == 0 {
		t.Errorf("audit.log has no node-password-mismatch entry for %s:\n%s", worker, readFile(t, filepath.Join(sdd, "server", "audit.log")))
	}
	if n := countAudit(entries, "issue", worker); n != issuedA {
		t.Errorf("audit.log has %d issue entries for %s after the refusal, want %d", n, worker, issuedA)
	}
	audit := string(readFile(t, filepath.Join(sdd, "server", "audit.log")))
	pwA := strings.TrimSpace(string(readFile(t, filepath.Join(ddA, "agent", "node-password"))))
	if strings.Contains(audit, pwA) {
		t.Errorf("audit.log holds agent A's node password")
	}
	if b, err := os.ReadFile(filepath.Join(ddB, "agent", "node-password")); err == nil {
		if pwB := strings.TrimSpace(string(b)); pwB != "" && strings.Contains(audit, pwB) {
			t.Errorf("audit.log holds agent B's node password")
		}
	} else {
		t.Logf("agent B left no node-password file (%v); only agent A's password is checked against audit.log", err)
	}
	if strings.Contains(audit, passphrase(tok)) {
		t.Errorf("audit.log holds the agent token password")
	}
}

// TestAgentRefusesMITM points an agent holding cluster A's token at cluster B: it refuses B's
// CA before sending any credential and writes nothing.
func TestAgentRefusesMITM(t *testing.T) {
	t.Parallel()
	a := startServer(t, filepath.Join(t.TempDir(), "a"))
	b := startServer(t, filepath.Join(t.TempDir(), "b"))
	a.WaitReady(t)
	b.WaitReady(t)
	tokA, tokB := agentToken(t, a), agentToken(t, b)
	hashA, hashB := tokenCAHash(t, tokA), tokenCAHash(t, tokB)
	if hashA == hashB {
		t.Fatalf("the two clusters have the same CA hash %s", hashA)
	}
	auditB := filepath.Join(b.DataDir, "server", "audit.log")
	auditBefore, _ := os.ReadFile(auditB)
	logBefore := len(b.Stderr())

	dd := filepath.Join(t.TempDir(), "agent")
	r := runAgentOnce(t, agentArgs(b, tokA, dd)...)
	assertFailure(t, r.code, r.stderr,
		fmt.Sprintf("token CA hash does not match the Cluster CA certificate hash: %s != %s", hashA, hashB))
	if strings.Contains(r.stderr, passphrase(tokA)) {
		t.Errorf("the agent logged the token password:\n%s", r.stderr)
	}
	if tree := hashTree(t, dd); len(tree) != 0 {
		t.Errorf("the refused agent wrote:\n  %s", strings.Join(treeDiff(nil, tree), "\n  "))
	}
	auditAfter, _ := os.ReadFile(auditB)
	if !bytes.Equal(auditBefore, auditAfter) {
		t.Errorf("server B's audit.log changed:\n%s", auditAfter[len(auditBefore):])
	}
	if newLog := b.Stderr()[logBefore:]; strings.Contains(newLog, "/v1-kpki") {
		t.Errorf("server B saw a /v1-kpki request from the agent:\n%s", newLog)
	}
}

// opensslVerifyTo runs `openssl verify -purpose purpose` on the leaf of crtFile with anchor as
// the only trust anchor and the leaf's bundle certificates that are not self-signed as
// untrusted intermediates.
func opensslVerifyTo(t *testing.T, crtFile string, anchor *x509.Certificate, purpose string) {
	t.Helper()
	list := readCerts(t, crtFile)
	var mid []*x509.Certificate
	for _, c := range list[1:] {
		if !(bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil) {
			mid = append(mid, c)
		}
	}
	dir := t.TempDir()
	leaf, anchorFile := filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "anchor.pem")
	writeFile(t, leaf, certsPEM(list[0]), 0o600)
	writeFile(t, anchorFile, certsPEM(anchor), 0o600)
	args := []string{"verify", "-purpose", purpose, "-CAfile", anchorFile}
	if len(mid) > 0 {
		untrusted := filepath.Join(dir, "untrusted.pem")
		writeFile(t, untrusted, certsPEM(mid...), 0o600)
		args = append(args, "-untrusted", untrusted)
	}
	out, err := exec.Command("openssl", append(args, leaf)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), leaf+": OK") {
		t.Errorf("openssl verify -purpose %s %s against %s: %v\n%s", purpose, crtFile, anchor.Subject, err, out)
	}
}

// TestRunningAgentRenewsWithoutRestart runs an agent whose renew window covers every
// certificate the server signs: the running process renews client-kubelet.crt again and
// again, for the same key, each time before the previous one expires.
func TestRunningAgentRenewsWithoutRestart(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	s := startServer(t, filepath.Join(t.TempDir(), "server"), "--cert-validity-days", "2", "--renew-before-days", "1")
	s.WaitReady(t)
	dd := filepath.Join(t.TempDir(), "data")
	p := startAgent(t, agentArgs(s, agentToken(t, s), dd, "--renew-before-days", "3", "--renew-interval", "1s")...)
	pid := p.cmd.Process.Pid
	crtFile := filepath.Join(dd, "agent", "client-kubelet.crt")
	keyFile := filepath.Join(dd, "agent", "client-kubelet.key")
	p.waitFor(t, "client-kubelet.crt and .key", func() bool {
		_, errC := os.Stat(crtFile)
		_, errK := os.Stat(keyFile)
		return errC == nil && errK == nil
	})
	keyPEM := readFile(t, keyFile)
	key := readKeys(t, keyFile)[0].signer
	clientCA := readCerts(t, filepath.Join(s.TLSDir(), "client-ca.crt"))[0]

	type seen struct {
		cert *x509.Certificate
		file string
		at   time.Time
	}
	var certs []seen
	serials := map[string]bool{}
	deadline := time.Now().Add(readyTimeout)
	for len(certs) < 3 {
		select {
		case <-p.done:
			t.Fatalf("kpki agent (pid %d) exited with code %d while renewing:\n%s", pid, p.code, p.log())
		default:
		}
		data, err := os.ReadFile(crtFile)
		if err != nil {
			t.Fatalf("client-kubelet.crt disappeared: %v", err)
		}
		list, err := parseCertsPEM(data)
		if err != nil {
			t.Fatalf("client-kubelet.crt is not a certificate file: %v", err)
		}
		now := time.Now()
		if serial := list[0].SerialNumber.Text(16); !serials[serial] {
			serials[serial] = true
			if n := len(certs); n > 0 && !now.Before(certs[n-1].cert.NotAfter) {
				t.Errorf("serial %s replaced serial %s after it expired (%s)", serial, certs[n-1].cert.SerialNumber.Text(16), certs[n-1].cert.NotAfter)
			}
			f := filepath.Join(t.TempDir(), "client-kubelet-"+serial+".crt")
			writeFile(t, f, data, 0o600)
			certs = append(certs, seen{cert: list[0], file: f, at: now})
			continue
		}
		if now.After(deadline) {
			t.Fatalf("the running agent replaced client-kubelet.crt %d time(s) within %v, want at least 2:\n%s", len(certs)-1, readyTimeout, p.log())
		}
		select {
		case <-p.done:
		case <-time.After(50 * time.Millisecond):
		}
	}
	if p.cmd.Process.Pid != pid {
		t.Fatalf("agent pid changed from %d to %d", pid, p.cmd.Process.Pid)
	}
	for i, c := range certs {
		if !keyMatches(c.cert.PublicKey, key) {
			t.Errorf("certificate %d (serial %s) is not for the original client-kubelet key", i, c.cert.SerialNumber.Text(16))
		}
		if v := c.cert.NotAfter.Sub(c.cert.NotBefore); v > 2*24*time.Hour+time.Hour {
			t.Errorf("certificate %d valid for %v, want at most 2 days (--cert-validity-days 2)", i, v)
		}
		if !c.at.After(c.cert.NotBefore) || !c.at.Before(c.cert.NotAfter) {
			t.Errorf("certificate %d not valid when observed at %s (%s … %s)", i, c.at, c.cert.NotBefore, c.cert.NotAfter)
		}
		if err := c.cert.CheckSignatureFrom(clientCA); err != nil {
			t.Errorf("certificate %d not signed by client-ca: %v", i, err)
		}
		opensslVerifyTo(t, c.file, clientCA, "sslclient")
	}
	if !bytes.Equal(readFile(t, keyFile), keyPEM) {
		t.Errorf("client-kubelet.key changed while the agent renewed")
	}
	p.stop(t)
}

// TestAgentTokensAfterRootRotation rotates the cluster to an unrelated root (rotate-ca
// --force): the new agent token joins a new agent under the new root, and the old token no
// longer matches the CA hash.
func TestAgentTokensAfterRootRotation(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "bash")
	sdd := filepath.Join(t.TempDir(), "server")
	s := startServer(t, sdd)
	s.WaitReady(t)
	oldTok := agentToken(t, s)
	ddA := filepath.Join(t.TempDir(), "a")
	agentOK(t, agentArgs(s, oldTok, ddA, "--node-name", "agent-a")...)

	stage := filepath.Join(t.TempDir(), "opt-kpki")
	runGenCustomCA(t, stage)
	newRoot := readCerts(t, filepath.Join(stage, "server", "tls", "root-ca.pem"))[0]
	assertRotateCASaved(t, rotateCA(t, s, filepath.Join(stage, "server"), "--force"))
	s = restartServer(t, s)

	newTok := agentToken(t, s)
	if got := tokenCAHash(t, newTok); got != derHash(newRoot) {
		t.Fatalf("agent-token CA hash %s after the restart, want the new root's %s", got, derHash(newRoot))
	}

	ddB := filepath.Join(t.TempDir(), "b")
	agentOK(t, agentArgs(s, newTok, ddB, "--node-name", "agent-b")...)
	for _, l := range agentLeafFiles {
		crt := filepath.Join(ddB, "agent", l.name+".crt")
		list := readCerts(t, crt)
		if !list[len(list)-1].Equal(newRoot) {
			t.Errorf("%s does not end with the new root", l.name)
		}
		opensslVerifyTo(t, crt, newRoot, l.purpose)
	}

	before := hashTree(t, ddA)
	r := runAgentOnce(t, agentArgs(s, oldTok, ddA, "--node-name", "agent-a")...)
	assertFailure(t, r.code, r.stderr,
		fmt.Sprintf("token CA hash does not match the Cluster CA certificate hash: %s != %s", tokenCAHash(t, oldTok), derHash(newRoot)))
	assertTreeUnchanged(t, "agent A with its old token", before, hashTree(t, ddA))
}
