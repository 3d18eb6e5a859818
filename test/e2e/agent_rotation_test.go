package e2e

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// applyRotation waits until s has taken the CA rotation (or rollback) saved by rotate-ca
// live, without a restart, up to its last step (an etcd restart included), and returns it.
func applyRotation(t *testing.T, s *kpkiServer) *kpkiServer {
	t.Helper()
	rec, keys := currentRecord(t, s)
	waitAppliedRevision(t, s, rec, keys[bootstrapKey(passphrase(readTokenFile(t, s.DataDir, "token")))].modRevision)
	return s
}

// waitAppliedRevision waits until s has applied rec, stored at revision rev, live and logged
// the apply as finished, and checks that its process kept running.
func waitAppliedRevision(t *testing.T, s *kpkiServer, rec bootstrapRecord, rev int64) {
	t.Helper()
	pid := s.cmd.Process.Pid
	done := fmt.Sprintf("revision=%d ", rev)
	if !waitUntil(t, 90*time.Second, func() (bool, string) {
		if ok, why := liveApplied(s, rec); !ok {
			return false, why
		}
		for _, line := range strings.Split(s.Stderr(), "\n") {
			if strings.Contains(line, done) && (strings.Contains(line, "applied the new bootstrap data live") || strings.Contains(line, "breaks continuity")) {
				return true, ""
			}
		}
		return false, "the live apply of revision " + strconv.FormatInt(rev, 10) + " has not finished"
	}) {
		t.Fatalf("the server did not apply the rotation live:\n%s", s.tail(40))
	}
	if s.exited() || s.cmd.Process.Pid != pid {
		t.Fatal("the server process did not keep running")
	}
}

// crossSignRotate runs cross-sign-ca and rotate-ca on s, whose data dir is sdd, waits
// until s applied the rotation live and returns s and the server and client CA bundles
// it then holds, each new CA, new root, cross-signed root, old root (oldRoot for the
// server CA).
func crossSignRotate(t *testing.T, s *kpkiServer, sdd string, oldRoot *x509.Certificate) (*kpkiServer, []*x509.Certificate, []*x509.Certificate) {
	t.Helper()
	kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", sdd)
	assertRotateCASaved(t, rotateCA(t, s, filepath.Join(sdd, "server", "rotate-ca")))
	s = applyRotation(t, s)
	bundle := readCerts(t, filepath.Join(s.TLSDir(), "server-ca.crt"))
	clientBundle := readCerts(t, filepath.Join(s.TLSDir(), "client-ca.crt"))
	if len(bundle) != 4 || !bundle[3].Equal(oldRoot) || len(clientBundle) != 4 {
		t.Fatalf("server-ca.crt after the rotation holds %d certificates, want new CA, new root, cross-signed root, old root", len(bundle))
	}
	return s, bundle, clientBundle
}

// assertRunning fails the test when the agent exited or is not the process pid.
func (p *agentProc) assertRunning(t *testing.T, pid int) {
	t.Helper()
	select {
	case <-p.done:
		t.Fatalf("the agent exited:\n%s", p.log())
	default:
	}
	if p.cmd.Process.Pid != pid {
		t.Fatal("the agent process changed")
	}
}

// rollbackCA runs rotate-ca --rollback against s and checks it saved.
func rollbackCA(t *testing.T, s *kpkiServer) {
	t.Helper()
	r := runKpki(t, nil, "certificate", "rotate-ca", "--rollback", "--server", s.SupervisorURL(), "--data-dir", s.DataDir)
	if r.code != 0 || !strings.Contains(r.stdout, "kept CA files restored to the datastore") {
		t.Fatalf("rotate-ca --rollback did not restore the kept files:\n%s", r)
	}
}

// agentMetric reads one sample of an agent's /metrics at addr by its exact name (labels
// included); false while the listener does not answer or the sample is missing.
func agentMetric(addr, name string) (float64, bool) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return 0, false
	}
	for _, line := range strings.Split(buf.String(), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			return v, err == nil
		}
	}
	return 0, false
}

// waitMetric polls the agent's metrics until name equals want.
func (p *agentProc) waitMetric(t *testing.T, addr, name string, want float64) {
	t.Helper()
	p.waitFor(t, name+" = "+strconv.FormatFloat(want, 'g', -1, 64), func() bool {
		v, ok := agentMetric(addr, name)
		return ok && v == want
	})
}

// leavesUnder reports whether every agent leaf under dd is signed by the first
// certificate of the server's CA file that signs it.
func leavesUnder(t *testing.T, s *kpkiServer, dd string) bool {
	t.Helper()
	for _, l := range agentLeafFiles {
		signer := "client-ca.crt"
		if l.name == "serving-kubelet" {
			signer = "server-ca.crt"
		}
		data, err := os.ReadFile(filepath.Join(dd, "agent", l.name+".crt"))
		if err != nil {
			return false
		}
		list, err := parseCertsPEM(data)
		if err != nil || list[0].CheckSignatureFrom(readCerts(t, filepath.Join(s.TLSDir(), signer))[0]) != nil {
			return false
		}
	}
	return true
}

// assertAgentUnder checks an agent's files against the CAs s now serves: each leaf
// verifies with openssl against the root given for its signer alone, its server CA copy is
// serverCA, which every kubeconfig reads, and it stores the roots trusted.
func assertAgentUnder(t *testing.T, s *kpkiServer, dd string, serverRoot, clientRoot *x509.Certificate, serverCA, trusted []*x509.Certificate) {
	t.Helper()
	ad := filepath.Join(dd, "agent")
	for _, l := range agentLeafFiles {
		root := clientRoot
		if l.name == "serving-kubelet" {
			root = serverRoot
		}
		opensslVerifyTo(t, filepath.Join(ad, l.name+".crt"), root, l.purpose)
	}
	if got := readCerts(t, filepath.Join(ad, "server-ca.crt")); !sameCerts(got, serverCA) {
		t.Errorf("agent server-ca.crt holds %d certificates (first %q), want %d (first %q)", len(got), got[0].Subject, len(serverCA), serverCA[0].Subject)
	}
	for file := range agentKubeconfigs {
		kc := kubectlConfig(t, filepath.Join(ad, file), true)
		if len(kc.Clusters) != 1 || !bytes.Equal(kc.Clusters[0].Cluster.CertificateAuthorityData, certsPEM(serverCA...)) {
			t.Errorf("%s: the CA data kubectl reads is not the agent's server CA", file)
		}
	}
	if got := readCerts(t, filepath.Join(ad, "server-ca-roots.pem")); !sameCerts(got, trusted) {
		t.Errorf("agent server-ca-roots.pem holds %d certificates, want %d", len(got), len(trusted))
	}
}

// TestAgentLiveCARotation: a cross-signed CA rotation (cross-sign-ca, rotate-ca) under a
// running agent. Without a restart or a new token the agent re-issues its leaves under
// the new CAs, points its kubeconfigs at the new chain and moves to the new root; an agent
// that was down catches up with the token it joined with; a rollback to the CA of before
// is followed by the same running agent, which then restarts with its old token.
func TestAgentLiveCARotation(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "kubectl")
	sdd := filepath.Join(t.TempDir(), "server")
	s := startServer(t, sdd)
	s.WaitReady(t)
	oldTok := agentToken(t, s)
	oldRoot := readCerts(t, filepath.Join(s.TLSDir(), "server-ca.crt"))[0]
	oldClientRoot := readCerts(t, filepath.Join(s.TLSDir(), "client-ca.crt"))[0]

	// Agent B joins, then is down during the rotation.
	ddB := filepath.Join(t.TempDir(), "b")
	argsB := agentArgsAt(s.SupervisorURL(), oldTok, ddB, "agent-b", s.Ports.APIServer)
	agentOK(t, argsB...)

	ddA := filepath.Join(t.TempDir(), "a")
	addr := net.JoinHostPort(loopback, strconv.Itoa(freePort(t, loopback)))
	argsA := agentArgsAt(s.SupervisorURL(), oldTok, ddA, "agent-a", s.Ports.APIServer)
	p := startAgent(t, append(argsA, "--renew-interval", "1s", "--metrics-address", addr)...)
	p.waitMetric(t, addr, "kpki_agent_trusted_roots", 1)
	pid := p.cmd.Process.Pid

	s, bundle, clientBundle := crossSignRotate(t, s, sdd, oldRoot)
	newCA, newRoot, cross := bundle[0], bundle[1], bundle[2]

	p.waitFor(t, "leaves under the new CAs", func() bool { return leavesUnder(t, s, ddA) })
	p.waitFor(t, "the kubeconfigs' CA on the new chain", func() bool {
		got, err := os.ReadFile(filepath.Join(ddA, "agent", "server-ca.crt"))
		return err == nil && bytes.Equal(got, certsPEM(newCA, newRoot, oldRoot))
	})
	p.waitMetric(t, addr, "kpki_agent_trusted_roots", 2)
	if v, _ := agentMetric(addr, "kpki_agent_ca_untrusted"); v != 0 {
		t.Errorf("kpki_agent_ca_untrusted %v, want 0", v)
	}
	assertAgentUnder(t, s, ddA, newRoot, clientBundle[1], []*x509.Certificate{newCA, newRoot, oldRoot}, []*x509.Certificate{oldRoot, cross, newRoot})
	if !strings.Contains(p.log(), "now also trusting the new root") {
		t.Errorf("the agent did not log the new root:\n%s", p.log())
	}

	// Agent B, down during the rotation, starts with the token it joined with.
	issued := issuedCount(s)
	agentOK(t, argsB...)
	if n := issuedCount(s) - issued; n != 4 {
		t.Errorf("agent B had %d certificates signed when it came back, want 4", n)
	}
	assertAgentUnder(t, s, ddB, newRoot, clientBundle[1], []*x509.Certificate{newCA, newRoot, oldRoot}, []*x509.Certificate{oldRoot, cross, newRoot})

	// rotate-ca --rollback restores the CAs of before: the running agent, which still trusts
	// the old root, follows.
	rollbackCA(t, s)
	s = applyRotation(t, s)
	if got := readCerts(t, filepath.Join(s.TLSDir(), "server-ca.crt")); len(got) != 1 || !got[0].Equal(oldRoot) {
		t.Fatal("the rollback did not restore the old server CA")
	}
	p.waitFor(t, "leaves under the old CAs", func() bool { return leavesUnder(t, s, ddA) })
	p.waitFor(t, "the old server CA", func() bool {
		got, err := os.ReadFile(filepath.Join(ddA, "agent", "server-ca.crt"))
		return err == nil && bytes.Equal(got, certsPEM(oldRoot))
	})
	assertAgentUnder(t, s, ddA, oldRoot, oldClientRoot, []*x509.Certificate{oldRoot}, []*x509.Certificate{oldRoot, cross, newRoot})
	if v, _ := agentMetric(addr, "kpki_agent_trusted_roots"); v != 2 {
		t.Errorf("kpki_agent_trusted_roots %v after the rollback, want 2", v)
	}
	p.assertRunning(t, pid)
	p.stop(t)

	// Restarted with its old token: nothing to sign, nothing to write.
	tree, issued := hashTree(t, ddA), issuedCount(s)
	agentOK(t, argsA...)
	if n := issuedCount(s) - issued; n != 0 {
		t.Errorf("%d certificates signed for a restarted agent already current", n)
	}
	assertTreeUnchanged(t, "agent A restarted with its old token", tree, hashTree(t, ddA))
}

// TestAgentRefusesForcedRoot: rotate-ca --force to an unrelated root. The running agent
// does not follow: nothing changes on its disk, no root is added, it says what to do and
// its metrics show it; restarted with its token it refuses too.
func TestAgentRefusesForcedRoot(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "bash")
	s := startServer(t, filepath.Join(t.TempDir(), "server"))
	s.WaitReady(t)
	oldTok := agentToken(t, s)
	dd := filepath.Join(t.TempDir(), "a")
	addr := net.JoinHostPort(loopback, strconv.Itoa(freePort(t, loopback)))
	args := agentArgsAt(s.SupervisorURL(), oldTok, dd, "agent-a", s.Ports.APIServer)
	p := startAgent(t, append(args, "--renew-interval", "1s", "--metrics-address", addr)...)
	p.waitMetric(t, addr, "kpki_agent_trusted_roots", 1)
	p.waitFor(t, "kubeconfigs", func() bool { return leavesUnder(t, s, dd) })
	tree := hashTree(t, dd)

	stage := filepath.Join(t.TempDir(), "opt-kpki")
	runGenCustomCA(t, stage)
	assertRotateCASaved(t, rotateCA(t, s, filepath.Join(stage, "server"), "--force"))
	s = applyRotation(t, s)

	p.waitMetric(t, addr, "kpki_agent_ca_untrusted", 1)
	p.waitFor(t, "the refusal in the log", func() bool {
		return strings.Contains(p.log(), "give this agent the cluster's current agent token")
	})
	if v, _ := agentMetric(addr, "kpki_agent_trusted_roots"); v != 1 {
		t.Errorf("kpki_agent_trusted_roots %v, want 1", v)
	}
	assertTreeUnchanged(t, "running agent after a forced root", tree, hashTree(t, dd))
	p.stop(t)

	r := runAgentOnce(t, args...)
	assertFailure(t, r.code, r.stderr, "token CA hash does not match the Cluster CA certificate hash")
	assertTreeUnchanged(t, "agent restarted with its old token after a forced root", tree, hashTree(t, dd))
}
