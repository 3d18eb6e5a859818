package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const agentNodeName = "e2e-agent"

// agentLeafFiles are the agent leaves (SPEC §2) and the openssl purpose each must pass.
var agentLeafFiles = []struct{ name, purpose string }{
	{"client-kubelet", "sslclient"},
	{"serving-kubelet", "sslserver"},
	{"client-kube-proxy", "sslclient"},
	{"client-kpki-controller", "sslclient"},
}

// agentKubeconfigs maps each agent kubeconfig to the client leaf it uses.
var agentKubeconfigs = map[string]string{
	"kubelet.kubeconfig":        "client-kubelet",
	"kubeproxy.kubeconfig":      "client-kube-proxy",
	"kpkicontroller.kubeconfig": "client-kpki-controller",
}

// agentResult is the outcome of one `kpki agent` run.
type agentResult struct {
	args   []string
	code   int
	stderr string
}

func (r agentResult) String() string {
	return fmt.Sprintf("kpki %s: exit code %d\n--- stderr:\n%s", strings.Join(quoteArgs(r.args), " "), r.code, r.stderr)
}

// agentArgs are the flags of an agent joining s with tok on dataDir.
func agentArgs(s *kpkiServer, tok, dataDir string, extra ...string) []string {
	args := []string{"agent", "--server", s.SupervisorURL(), "--token", tok, "--data-dir", dataDir,
		"--node-name", agentNodeName, "--api-server-port", strconv.Itoa(s.Ports.APIServer)}
	return append(args, extra...)
}

// runAgentOnce runs `kpki agent --once` with args (after "agent") and waits for it.
func runAgentOnce(t *testing.T, args ...string) agentResult {
	t.Helper()
	args = append(slices.Clone(args), "--once")
	ctx, cancel := context.WithTimeout(context.Background(), failTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), args...)
	cmd.Env = cleanEnv(nil)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	r := agentResult{args: args, stderr: stderr.String()}
	if ctx.Err() != nil {
		t.Fatalf("kpki agent --once did not finish within %v\n%s", failTimeout, r)
	}
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("run %s: %v", strings.Join(args, " "), err)
		}
		r.code = ee.ExitCode()
	}
	t.Logf("kpki %s: exit code %d", strings.Join(quoteArgs(redactToken(args)), " "), r.code)
	return r
}

func redactToken(args []string) []string {
	out := slices.Clone(args)
	for i := range out {
		if i > 0 && out[i-1] == "--token" {
			out[i] = "<token>"
		}
	}
	return out
}

func agentOK(t *testing.T, args ...string) agentResult {
	t.Helper()
	r := runAgentOnce(t, args...)
	if r.code != 0 {
		t.Fatalf("want exit code 0:\n%s", r)
	}
	return r
}

func agentToken(t *testing.T, s *kpkiServer) string {
	t.Helper()
	return strings.TrimSpace(string(readFile(t, filepath.Join(s.DataDir, "server", "agent-token"))))
}

func issuedCount(s *kpkiServer) int { return strings.Count(s.Stderr(), "issued node certificate") }

// assertAgentFiles checks every file of a joined agent data dir against the server's CAs.
func assertAgentFiles(t *testing.T, s *kpkiServer, dd string, nodeIPs ...string) {
	t.Helper()
	assertAgentFilesKeeping(t, s, dd, nil, nodeIPs...)
}

// assertAgentFilesKeeping is assertAgentFiles for an agent that keeps serverChain of the
// server's server-ca.crt (the chain from its first certificate to the anchor the token
// names); nil: the whole file, byte for byte.
func assertAgentFilesKeeping(t *testing.T, s *kpkiServer, dd string, serverChain []*x509.Certificate, nodeIPs ...string) {
	t.Helper()
	ad := filepath.Join(dd, "agent")
	if m := fileMode(t, ad).Perm(); m != 0o700 {
		t.Errorf("%s mode %v, want 0700", ad, m)
	}
	for _, ca := range []string{"server-ca.crt", "client-ca.crt"} {
		want := readFile(t, filepath.Join(s.TLSDir(), ca))
		if ca == "server-ca.crt" && serverChain != nil {
			want = certsPEM(serverChain...)
		}
		if !bytes.Equal(readFile(t, filepath.Join(ad, ca)), want) {
			t.Errorf("agent %s is not the expected chain", ca)
		}
	}
	pw := readFile(t, filepath.Join(ad, "node-password"))
	if !regexp.MustCompile(`^[0-9a-f]{32}\n?$`).Match(pw) {
		t.Errorf("node-password is not 32 hex characters")
	}
	for _, l := range agentLeafFiles {
		crt, key := filepath.Join(ad, l.name+".crt"), filepath.Join(ad, l.name+".key")
		for _, f := range []string{crt, key, filepath.Join(ad, "node-password")} {
			if m := fileMode(t, f).Perm(); m != 0o600 {
				t.Errorf("%s mode %v, want 0600", f, m)
			}
		}
		agentOpensslVerify(t, crt, l.purpose)
		list := readCerts(t, crt)
		keys := readKeys(t, key)
		if keys[0].pemType != "EC PRIVATE KEY" || !keyMatches(list[0].PublicKey, keys[0].signer) {
			t.Errorf("%s: key is %s and matches its certificate: %v", l.name, keys[0].pemType, keyMatches(list[0].PublicKey, keys[0].signer))
		}
		signer := "client-ca.crt"
		if l.name == "serving-kubelet" {
			signer = "server-ca.crt"
		}
		bundle := readCerts(t, filepath.Join(s.TLSDir(), signer))
		if signer == "server-ca.crt" && serverChain != nil {
			bundle = serverChain
		}
		if !sameCerts(list[1:], bundle) {
			t.Errorf("%s: the bundle after the leaf is not the agent's %s", l.name, signer)
		}
		if err := list[0].CheckSignatureFrom(readCerts(t, filepath.Join(s.TLSDir(), signer))[0]); err != nil {
			t.Errorf("%s not signed by %s: %v", l.name, signer, err)
		}
	}
	kubelet := readCerts(t, filepath.Join(ad, "client-kubelet.crt"))[0]
	if kubelet.Subject.CommonName != "system:node:"+agentNodeName || !slices.Equal(kubelet.Subject.Organization, []string{"system:nodes"}) {
		t.Errorf("client-kubelet subject %s", kubelet.Subject)
	}
	serving := readCerts(t, filepath.Join(ad, "serving-kubelet.crt"))[0]
	if serving.Subject.CommonName != agentNodeName || !slices.Contains(serving.DNSNames, agentNodeName) || !slices.Contains(serving.DNSNames, "localhost") {
		t.Errorf("serving-kubelet subject %s, DNS SANs %v", serving.Subject, serving.DNSNames)
	}
	var ips []string
	for _, ip := range serving.IPAddresses {
		ips = append(ips, ip.String())
	}
	for _, want := range append([]string{"127.0.0.1"}, nodeIPs...) {
		if !slices.Contains(ips, want) {
			t.Errorf("serving-kubelet IP SANs %v lack %s", ips, want)
		}
	}
	for file, leaf := range agentKubeconfigs {
		path := filepath.Join(ad, file)
		if m := fileMode(t, path).Perm(); m != 0o600 {
			t.Errorf("%s mode %v, want 0600", path, m)
		}
		kc := kubectlConfig(t, path, false)
		if len(kc.Clusters) != 1 || len(kc.Users) != 1 {
			t.Fatalf("%s: %d clusters, %d users", file, len(kc.Clusters), len(kc.Users))
		}
		c, u := kc.Clusters[0].Cluster, kc.Users[0].User
		wantServer := "https://" + net.JoinHostPort(s.IP, strconv.Itoa(s.Ports.APIServer))
		if c.Server != wantServer || c.CertificateAuthority != filepath.Join(ad, "server-ca.crt") ||
			u.ClientCertificate != filepath.Join(ad, leaf+".crt") || u.ClientKey != filepath.Join(ad, leaf+".key") {
			t.Errorf("%s: server %s, CA %s, cert %s, key %s", file, c.Server, c.CertificateAuthority, u.ClientCertificate, u.ClientKey)
		}
		flat := kubectlConfig(t, path, true)
		if len(flat.Users) != 1 || len(flat.Users[0].User.ClientKeyData) == 0 || len(flat.Clusters[0].Cluster.CertificateAuthorityData) == 0 {
			t.Errorf("%s: kubectl config view --flatten could not read the referenced files", file)
		}
	}
}

// agentOpensslVerify runs `openssl verify -purpose <purpose>` on the leaf of a .crt file
// (leaf followed by its CA bundle) with the bundle's self-signed certificates as trust anchors
// and its other certificates as untrusted intermediates, so that a bundle holding a new root
// next to its cross-signed copy and the old root (SPEC §10 cross-sign-ca) verifies too.
func agentOpensslVerify(t *testing.T, crtFile, purpose string) {
	t.Helper()
	list := readCerts(t, crtFile)
	if len(list) < 2 {
		t.Errorf("%s: %d certificate(s), want the leaf followed by its CA bundle", crtFile, len(list))
		return
	}
	var roots, mid []*x509.Certificate
	for _, c := range list[1:] {
		if bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil {
			roots = append(roots, c)
		} else {
			mid = append(mid, c)
		}
	}
	dir := t.TempDir()
	leaf, rootFile := filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "roots.pem")
	writeFile(t, leaf, certsPEM(list[0]), 0o600)
	writeFile(t, rootFile, certsPEM(roots...), 0o600)
	args := []string{"verify", "-purpose", purpose, "-CAfile", rootFile}
	if len(mid) > 0 {
		untrusted := filepath.Join(dir, "untrusted.pem")
		writeFile(t, untrusted, certsPEM(mid...), 0o600)
		args = append(args, "-untrusted", untrusted)
	}
	out, err := exec.Command("openssl", append(args, leaf)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), leaf+": OK") {
		t.Errorf("openssl verify -purpose %s %s: %v\n%s", purpose, crtFile, err, out)
	}
}

// TestAgentJoin joins an agent to a real server with `kpki agent --once`, checks every file
// with openssl and kubectl, and checks that a second pass signs and writes nothing.
func TestAgentJoin(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "kubectl")
	s := startServer(t, filepath.Join(t.TempDir(), "server"))
	s.WaitReady(t)
	dd := filepath.Join(t.TempDir(), "agent")
	tok := agentToken(t, s)

	r := agentOK(t, agentArgs(s, tok, dd, "--node-ip", "127.0.0.9")...)
	if strings.Contains(r.stderr, tok) || strings.Contains(r.stderr, "PRIVATE KEY") {
		t.Errorf("agent log holds the token or a key:\n%s", r.stderr)
	}
	assertAgentFiles(t, s, dd, "127.0.0.9")
	pw := strings.TrimSpace(string(readFile(t, filepath.Join(dd, "agent", "node-password"))))
	if strings.Contains(r.stderr, pw) {
		t.Errorf("agent log holds the node password:\n%s", r.stderr)
	}

	before, issued := hashTree(t, dd), issuedCount(s)
	agentOK(t, agentArgs(s, tok, dd, "--node-ip", "127.0.0.9")...)
	assertTreeUnchanged(t, "second agent pass", before, hashTree(t, dd))
	if n := issuedCount(s) - issued; n != 0 {
		t.Errorf("the second agent pass had %d certificates signed, want 0", n)
	}

	// Another host claiming the same node name is refused (SPEC §7 node password).
	other := filepath.Join(t.TempDir(), "other")
	r = runAgentOnce(t, agentArgs(s, tok, other)...)
	assertFailure(t, r.code, r.stderr, "registered with another node password")

	// A short token (the password alone) joins without CA pinning, with a warning.
	short := tok[strings.LastIndex(tok, ":")+1:]
	sdd := filepath.Join(t.TempDir(), "short")
	r = agentOK(t, "agent", "--server", s.SupervisorURL(), "--token", short, "--data-dir", sdd, "--node-name", "e2e-short")
	if !strings.Contains(r.stderr, "does not pin the cluster CA") {
		t.Errorf("no warning for a short token:\n%s", r.stderr)
	}
}

// TestAgentBadInput runs `kpki agent --once` on broken input: one `kpki: ` line naming the
// cause, and nothing written.
func TestAgentBadInput(t *testing.T) {
	t.Parallel()
	s := startServer(t, filepath.Join(t.TempDir(), "server"))
	s.WaitReady(t)
	tok := agentToken(t, s)
	caHash := strings.TrimPrefix(tok[:strings.Index(tok, "::")], "K10")
	password := tok[strings.LastIndex(tok, ":")+1:]
	sum := sha256.Sum256([]byte("another cluster"))
	wrongHash := hex.EncodeToString(sum[:])

	html := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, "<!DOCTYPE html><html><body>It works!</body></html>")
	}))
	defer html.Close()
	closed := "https://" + net.JoinHostPort(loopback, strconv.Itoa(freePort(t, loopback)))

	for _, tc := range []struct {
		name  string
		args  func(dd string) []string
		wants []string
	}{
		{"CA hash mismatch", func(dd string) []string {
			return agentArgs(s, "K10"+wrongHash+"::node:"+password, dd)
		}, []string{fmt.Sprintf("token CA hash does not match the Cluster CA certificate hash: %s != %s", wrongHash, caHash)}},
		{"garbage token", func(dd string) []string { return agentArgs(s, "K10garbage", dd) }, []string{"invalid token"}},
		{"wrong password", func(dd string) []string {
			return agentArgs(s, "K10"+caHash+"::node:wrong-password", dd)
		}, []string{"refused the token"}},
		{"unreachable server", func(dd string) []string {
			return []string{"agent", "--server", closed, "--token", tok, "--data-dir", dd, "--node-name", agentNodeName, "--retry-deadline", "2s"}
		}, []string{closed}},
		{"not a kpki server", func(dd string) []string {
			return []string{"agent", "--server", html.URL, "--token", tok, "--data-dir", dd, "--node-name", agentNodeName}
		}, []string{html.URL, "not a kpki server"}},
		{"invalid node name", func(dd string) []string {
			return append(agentArgs(s, tok, dd), "--node-name", "Not_A_Name")
		}, []string{"not_a_name", "not a valid DNS name"}},
		{"bad node ip", func(dd string) []string { return agentArgs(s, tok, dd, "--node-ip", "10.0.0.300") }, []string{"10.0.0.300"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dd := filepath.Join(t.TempDir(), "agent")
			r := runAgentOnce(t, tc.args(dd)...)
			line := assertFailure(t, r.code, r.stderr, tc.wants...)
			if strings.Contains(r.stderr, password) || strings.Contains(line, "wrong-password") {
				t.Errorf("stderr holds a token password:\n%s", r.stderr)
			}
			if tree := hashTree(t, dd); len(tree) != 0 {
				t.Errorf("the failed agent wrote:\n  %s", strings.Join(treeDiff(nil, tree), "\n  "))
			}
		})
	}
}

// agentProc is a `kpki agent` process running its renewal loop.
type agentProc struct {
	cmd    *exec.Cmd
	stderr string
	done   chan struct{}
	code   int
}

func startAgent(t *testing.T, args ...string) *agentProc {
	t.Helper()
	p := &agentProc{stderr: filepath.Join(t.TempDir(), "agent.stderr"), done: make(chan struct{})}
	f, err := os.Create(p.stderr)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(binary(t), args...)
	p.cmd.Env = cleanEnv(nil)
	p.cmd.Stderr = f
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		f.Close()
		t.Fatal(err)
	}
	go func() {
		err := p.cmd.Wait()
		f.Close()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		} else if err != nil {
			p.code = -1
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("kpki agent stderr:\n%s", p.log())
		}
	})
	return p
}

func (p *agentProc) log() string {
	b, _ := os.ReadFile(p.stderr)
	return string(b)
}

// waitFor polls until cond holds, the process exits or the timeout passes.
func (p *agentProc) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for !cond() {
		select {
		case <-p.done:
			t.Fatalf("kpki agent exited with code %d before %s:\n%s", p.code, what, p.log())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("kpki agent: no %s within %v:\n%s", what, readyTimeout, p.log())
		}
	}
}

func (p *agentProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		t.Fatalf("kpki agent did not exit within %v of SIGTERM:\n%s", stopTimeout, p.log())
	}
	if p.code != 0 {
		t.Fatalf("kpki agent exited with code %d after SIGTERM, want 0:\n%s", p.code, p.log())
	}
}

// TestAgentLoopAndRotate runs the agent's loop: it joins, holds its lock so that
// `certificate rotate` refuses, and exits 0 on SIGTERM. Then `certificate rotate` deletes the
// kubelet pair and the next agent run issues it with a new key and removes force-restart.
func TestAgentLoopAndRotate(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "kubectl")
	s := startServer(t, filepath.Join(t.TempDir(), "server"))
	s.WaitReady(t)
	dd := filepath.Join(t.TempDir(), "data")
	tok := agentToken(t, s)
	args := agentArgs(s, tok, dd)

	p := startAgent(t, args...)
	kubeconfig := filepath.Join(dd, "agent", "kpkicontroller.kubeconfig")
	p.waitFor(t, "kubeconfigs", func() bool { _, err := os.Stat(kubeconfig); return err == nil })
	assertAgentFiles(t, s, dd)

	if r := runAgentOnce(t, args...); r.code == 0 {
		t.Errorf("a second agent on the same data dir ran while the first held the lock:\n%s", r)
	} else {
		assertFailure(t, r.code, r.stderr, "kpki-agent.lock")
	}
	rot := exec.Command(binary(t), "certificate", "rotate", "--data-dir", dd)
	rot.Env = cleanEnv(nil)
	if out, err := rot.CombinedOutput(); err == nil || !strings.Contains(string(out), "stop it first") {
		t.Errorf("certificate rotate while the agent ran: %v\n%s", err, out)
	}
	p.stop(t)

	oldKey := readFile(t, filepath.Join(dd, "agent", "client-kubelet.key"))
	oldProxy := readFile(t, filepath.Join(dd, "agent", "client-kube-proxy.crt"))
	rot = exec.Command(binary(t), "certificate", "rotate", "--data-dir", dd, "--service", "kubelet")
	rot.Env = cleanEnv(nil)
	if out, err := rot.CombinedOutput(); err != nil {
		t.Fatalf("certificate rotate --service kubelet: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dd, "force-restart")); err != nil {
		t.Fatalf("certificate rotate left no force-restart marker: %v", err)
	}
	agentOK(t, args...)
	if bytes.Equal(readFile(t, filepath.Join(dd, "agent", "client-kubelet.key")), oldKey) {
		t.Error("client-kubelet key unchanged after certificate rotate")
	}
	if !bytes.Equal(readFile(t, filepath.Join(dd, "agent", "client-kube-proxy.crt")), oldProxy) {
		t.Error("client-kube-proxy changed though only kubelet was rotated")
	}
	if _, err := os.Stat(filepath.Join(dd, "force-restart")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("force-restart still there after a successful agent pass: %v", err)
	}
	assertAgentFiles(t, s, dd)
}
