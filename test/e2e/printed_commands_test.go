package e2e

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var quotedKpki = regexp.MustCompile("`(kpki [^`]+)`")

// runPrinted runs the kpki command quoted in msg exactly as printed (in a clean
// environment: no KPKI_* variable helps it) and fails the test unless it succeeds.
func runPrinted(t *testing.T, msg, wantPrefix string) {
	t.Helper()
	m := quotedKpki.FindStringSubmatch(msg)
	if m == nil || !strings.HasPrefix(m[1], wantPrefix) {
		t.Fatalf("no `%s…` in %q", wantPrefix, msg)
	}
	words := strings.Fields(m[1])
	cmd := exec.Command(binary(t), words[1:]...)
	cmd.Env = cleanEnv(nil)
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the printed command %q failed: %v\n%s", m[1], err, out)
	}
	t.Logf("ran the printed %q", m[1])
}

// TestPrintedCommandsRun: the server and the agent, on data dirs that are not the
// default, refuse a corrupt certificate file with an advice to run `kpki certificate
// rotate --service …` that names that data dir; run as printed, from another directory and
// without KPKI_* variables, it works and the next start issues the certificate again.
func TestPrintedCommandsRun(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "server")
	s := startServer(t, dd)
	s.WaitReady(t)
	add := filepath.Join(t.TempDir(), "agent")
	agentOK(t, agentArgs(s, agentToken(t, s), add)...)
	s.Stop(t)

	garbage := []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
	writeFile(t, filepath.Join(dd, "server", "tls", "client-admin.crt"), garbage, 0o600)
	bad := startServerOn(t, s.Ports, dd)
	code, stderr := bad.Wait(t, failTimeout)
	last := lastLine(stderr)
	if code == 0 || !strings.Contains(last, "`kpki certificate rotate --service admin --data-dir="+dd+"`") {
		t.Fatalf("server on a corrupt leaf: exit %d, last line %q", code, last)
	}
	runPrinted(t, last, "kpki certificate rotate --service admin")
	s = startServerOn(t, s.Ports, dd)
	s.WaitReady(t)
	if c := readCerts(t, filepath.Join(dd, "server", "tls", "client-admin.crt")); len(c) == 0 || c[0].Subject.CommonName != "system:admin" {
		t.Errorf("client-admin.crt not issued again: %v", c)
	}

	writeFile(t, filepath.Join(add, "agent", "client-kubelet.crt"), garbage, 0o600)
	r := runAgentOnce(t, agentArgs(s, agentToken(t, s), add)...)
	last = lastLine(r.stderr)
	if r.code == 0 || !strings.Contains(last, "`kpki certificate rotate --service kubelet --data-dir="+add+"`") {
		t.Fatalf("agent on a corrupt leaf: %s", r)
	}
	runPrinted(t, last, "kpki certificate rotate --service kubelet")
	agentOK(t, agentArgs(s, agentToken(t, s), add)...)
	if c := readCerts(t, filepath.Join(add, "agent", "client-kubelet.crt")); len(c) == 0 {
		t.Error("client-kubelet.crt not issued again")
	}
	s.Stop(t)
}
