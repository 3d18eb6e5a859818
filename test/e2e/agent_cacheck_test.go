package e2e

import (
	"bytes"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// caChecks is a sample of the agent's kpki_agent_ca_checks_total; -1 while it cannot be read.
func caChecks(addr, result string) float64 {
	v, ok := agentMetric(addr, `kpki_agent_ca_checks_total{result="`+result+`"}`)
	if !ok {
		return -1
	}
	return v
}

// agentPasses is the agent's count of passes that succeeded; -1 while it cannot be read.
func agentPasses(addr string) float64 {
	v, ok := agentMetric(addr, `kpki_agent_passes_total{result="ok"}`)
	if !ok {
		return -1
	}
	return v
}

// TestAgentCACheckFollowsLiveRotation: an agent whose passes are an hour apart
// (--renew-interval 1h) checks the server's CAs every 2 s. Unchanged CAs run no pass and
// write nothing. After cross-sign-ca and rotate-ca, applied live by the server, the same
// agent process re-issues its leaves under the new CAs within 60 s through a check, and
// its kubelet kubeconfig and bundles verify against the new roots; the checks after it
// find nothing to do.
func TestAgentCACheckFollowsLiveRotation(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "kubectl")
	sdd := filepath.Join(t.TempDir(), "server")
	s := startServer(t, sdd)
	s.WaitReady(t)
	oldRoot := readCerts(t, filepath.Join(s.TLSDir(), "server-ca.crt"))[0]
	dd := filepath.Join(t.TempDir(), "agent")
	addr := net.JoinHostPort(loopback, strconv.Itoa(freePort(t, loopback)))
	args := agentArgsAt(s.SupervisorURL(), agentToken(t, s), dd, "agent-check", s.Ports.APIServer)
	p := startAgent(t, append(args, "--renew-interval", "1h", "--ca-check-interval", "2s", "--metrics-address", addr)...)
	p.waitMetric(t, addr, `kpki_agent_passes_total{result="ok"}`, 1)
	pid := p.cmd.Process.Pid

	// Unchanged CAs: checks, no pass, nothing written.
	tree := hashTree(t, dd)
	p.waitFor(t, "two unchanged CA checks", func() bool { return caChecks(addr, "unchanged") >= 2 })
	if n := agentPasses(addr); n != 1 {
		t.Errorf("%v passes after unchanged CA checks, want 1", n)
	}
	assertTreeUnchanged(t, "agent after unchanged CA checks", tree, hashTree(t, dd))

	s, bundle, clientBundle := crossSignRotate(t, s, sdd, oldRoot)
	newCA, newRoot, cross, newClientRoot := bundle[0], bundle[1], bundle[2], clientBundle[1]

	start := time.Now()
	if !waitUntil(t, 60*time.Second, func() (bool, string) {
		if !leavesUnder(t, s, dd) {
			return false, "the agent's leaves are not all under the new CAs"
		}
		got, err := os.ReadFile(filepath.Join(dd, "agent", "server-ca.crt"))
		if err != nil || !bytes.Equal(got, certsPEM(newCA, newRoot, oldRoot)) {
			return false, "the agent's server-ca.crt is not the new chain and the old root"
		}
		return true, ""
	}) {
		t.Fatalf("the agent did not follow the rotation:\n%s", p.log())
	}
	t.Logf("the agent followed the rotation %s after the server applied it", time.Since(start).Round(time.Second))
	p.assertRunning(t, pid)
	if n := caChecks(addr, "changed"); n < 1 {
		t.Errorf("kpki_agent_ca_checks_total{result=\"changed\"} %v, want at least 1", n)
	}
	if !strings.Contains(p.log(), "the server's CAs differ from this agent's copies; running a certificate pass now") {
		t.Errorf("the agent did not log the changed CAs:\n%s", p.log())
	}
	assertAgentUnder(t, s, dd, newRoot, newClientRoot, []*x509.Certificate{newCA, newRoot, oldRoot}, []*x509.Certificate{oldRoot, cross, newRoot})
	assertKubeconfigUnder(t, s, filepath.Join(dd, "agent", "kubelet.kubeconfig"), newRoot, newClientRoot)

	// Settled: the checks find the agent's copies current.
	p.waitMetric(t, addr, "kpki_agent_trusted_roots", 2)
	passes, unchanged := agentPasses(addr), caChecks(addr, "unchanged")
	tree = hashTree(t, dd)
	p.waitFor(t, "two more unchanged CA checks", func() bool { return caChecks(addr, "unchanged") >= unchanged+2 })
	if n := agentPasses(addr); n != passes {
		t.Errorf("%v passes after the rotation was taken, then %v: the checks ran passes", passes, n)
	}
	assertTreeUnchanged(t, "agent after the rotation was taken", tree, hashTree(t, dd))
	p.stop(t)
}

// assertKubeconfigUnder checks what kubectl reads of the kubeconfig at path: its CA data
// verifies the certificate the supervisor of s now serves up to serverRoot alone, and its
// client certificate verifies for client auth up to clientRoot alone.
func assertKubeconfigUnder(t *testing.T, s *kpkiServer, path string, serverRoot, clientRoot *x509.Certificate) {
	t.Helper()
	kc := kubectlConfig(t, path, true)
	if len(kc.Clusters) != 1 || len(kc.Users) != 1 {
		t.Fatalf("%s: %d clusters, %d users", path, len(kc.Clusters), len(kc.Users))
	}
	verify := func(what string, pemData []byte, root *x509.Certificate, usage x509.ExtKeyUsage, leaf *x509.Certificate) {
		list, err := parseCertsPEM(pemData)
		if err != nil {
			t.Fatalf("%s: %s: %v", path, what, err)
		}
		if leaf == nil {
			leaf, list = list[0], list[1:]
		}
		roots, inter := x509.NewCertPool(), x509.NewCertPool()
		roots.AddCert(root)
		for _, c := range list {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("%s: %s does not verify up to %q: %v", path, what, root.Subject, err)
		}
	}
	served, err := servedLeaf(s)
	if err != nil {
		t.Fatal(err)
	}
	verify("the served certificate with the CA data", kc.Clusters[0].Cluster.CertificateAuthorityData, serverRoot, x509.ExtKeyUsageServerAuth, served)
	verify("the client certificate", kc.Users[0].User.ClientCertificateData, clientRoot, x509.ExtKeyUsageClientAuth, nil)
}
