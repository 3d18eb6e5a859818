package e2e

import (
	"bufio"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrapeMetrics fetches the Prometheus text at url and returns its samples by name and
// labels as printed.
func scrapeMetrics(t *testing.T, url string) map[string]float64 {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	out := map[string]float64{}
	for _, l := range strings.Split(string(body), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndex(l, " ")
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", l, err)
		}
		out[l[:i]] = v
	}
	return out
}

// opensslNotAfter is the notAfter openssl reads from the first certificate of file.
func opensslNotAfter(t *testing.T, file string) time.Time {
	t.Helper()
	out := strings.TrimSpace(string(run(t, "", nil, "openssl", "x509", "-noout", "-enddate", "-in", file)))
	v, ok := strings.CutPrefix(out, "notAfter=")
	if !ok {
		t.Fatalf("openssl x509 -enddate: %q", out)
	}
	when, err := time.Parse("Jan _2 15:04:05 2006 MST", v)
	if err != nil {
		t.Fatalf("openssl notAfter %q: %v", v, err)
	}
	return when
}

// secretsOf returns what must never show in a log: the token passwords, the node
// password and every line of every private key's PEM body in dirs.
func secretsOf(t *testing.T, passwords []string, dirs ...string) []string {
	t.Helper()
	out := append([]string(nil), passwords...)
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".key") {
				return err
			}
			data := readFile(t, p)
			for {
				var b *pem.Block
				b, data = pem.Decode(data)
				if b == nil {
					break
				}
				enc := pem.EncodeToMemory(&pem.Block{Type: b.Type, Bytes: b.Bytes})
				sc := bufio.NewScanner(strings.NewReader(string(enc)))
				for sc.Scan() {
					if l := sc.Text(); !strings.HasPrefix(l, "-----") && len(l) >= 16 {
						out = append(out, l)
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestAgentMetricsTokenFileDebug: a server and an agent take their tokens from files
// (--token-file and the server's --agent-token-file, whitespace around the token ignored) and run with --debug; the agent serves
// --metrics-address, whose expiry samples are the NotAfter openssl reads from each of its
// certificate files, and counts what the server signed. At debug level, after a wrong
// password and a garbage TLS handshake at the supervisor, no log of either process holds a
// token password, the node password or a line of any private key.
func TestAgentMetricsTokenFileDebug(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	dir := t.TempDir()
	const serverPassword = "e2e-token-file-server-password"
	serverTokenFile := filepath.Join(dir, "server-token")
	writeFile(t, serverTokenFile, []byte("\n  "+serverPassword+" \t\n"), 0o600)
	const agentPasswordGiven = "e2e-agent-token-file-password"
	agentGivenFile := filepath.Join(dir, "agent-token-given")
	writeFile(t, agentGivenFile, []byte(agentPasswordGiven+"\n"), 0o600)
	dd := filepath.Join(dir, "server")
	s := startServer(t, dd, "--token-file", serverTokenFile, "--agent-token-file", agentGivenFile, "--debug")
	s.WaitReady(t)
	written := strings.TrimSpace(string(readFile(t, filepath.Join(dd, "server", "token"))))
	if !strings.HasSuffix(written, "::server:"+serverPassword) {
		t.Fatalf("the server token %q does not carry the password of --token-file", written)
	}
	if a := agentToken(t, s); !strings.HasSuffix(a, "::node:"+agentPasswordGiven) {
		t.Fatalf("the agent token %q does not carry the password of --agent-token-file", a)
	}
	// --token and --token-file together: refused, nothing started.
	r := runKpki(t, nil, "server", "--data-dir", filepath.Join(dir, "other"), "--token", "x", "--token-file", serverTokenFile)
	assertRefused(t, r, anyOf("--token and --token-file are mutually exclusive"))

	agentTok := agentToken(t, s)
	agentTokenFile := filepath.Join(dir, "agent-token")
	writeFile(t, agentTokenFile, []byte(agentTok+"\n\n"), 0o600)
	add := filepath.Join(dir, "agent")
	port := freePort(t, loopback)
	addr := net.JoinHostPort(loopback, strconv.Itoa(port))
	args := []string{"agent", "--server", s.SupervisorURL(), "--token-file", agentTokenFile, "--data-dir", add,
		"--node-name", agentNodeName, "--api-server-port", strconv.Itoa(s.Ports.APIServer), "--metrics-address", addr, "--debug"}
	p := startAgent(t, args...)
	leaves := []string{"client-kubelet", "serving-kubelet", "client-kube-proxy", "client-kpki-controller"}
	url := "http://" + addr + "/metrics"
	var samples map[string]float64
	p.waitFor(t, "a successful pass in the metrics", func() bool {
		c := &http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		samples = scrapeMetrics(t, url)
		return samples[`kpki_agent_passes_total{result="ok"}`] >= 1
	})

	expiry := regexp.MustCompile(`^kpki_certificate_expiration_seconds\{file="([^"]+)",subject="([^"]*)",usages="([^"]*)"\}$`)
	got := map[string]float64{}
	for k, v := range samples {
		if m := expiry.FindStringSubmatch(k); m != nil {
			got[m[1]] = v
		}
	}
	files := []string{filepath.Join(add, "agent", "server-ca.crt"), filepath.Join(add, "agent", "client-ca.crt")}
	for _, l := range leaves {
		files = append(files, filepath.Join(add, "agent", l+".crt"))
	}
	if len(got) != len(files) {
		t.Errorf("expiry samples for %d files, want %d: %v", len(got), len(files), got)
	}
	for _, f := range files {
		want := opensslNotAfter(t, f)
		if v, ok := got[f]; !ok || int64(v) != want.Unix() {
			t.Errorf("%s: kpki_certificate_expiration_seconds %v, openssl notAfter %s (%d)", f, v, want, want.Unix())
		}
		if c := readCerts(t, f)[0]; !c.NotAfter.Equal(want) {
			t.Errorf("%s: x509 NotAfter %s, openssl %s", f, c.NotAfter, want)
		}
	}
	if v := samples[`kpki_agent_certificates_signed_total{action="issue"}`]; v != float64(len(leaves)) {
		t.Errorf("kpki_agent_certificates_signed_total{action=\"issue\"} = %v, want %d", v, len(leaves))
	}
	if v, ok := samples[`kpki_agent_certificates_signed_total{action="renew"}`]; !ok || v != 0 {
		t.Errorf("kpki_agent_certificates_signed_total{action=\"renew\"} = %v (present %v), want 0", v, ok)
	}
	if v := samples["kpki_agent_last_success_timestamp_seconds"]; time.Since(time.Unix(int64(v), 0)) > 5*time.Minute {
		t.Errorf("kpki_agent_last_success_timestamp_seconds = %v", v)
	}

	// Provoke what the server logs at debug level: a wrong password and a TLS handshake
	// with garbage.
	conf, err := s.clientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: conf}}
	req, _ := http.NewRequest(http.MethodGet, s.SupervisorURL()+"/v1-kpki/server-bootstrap", nil)
	req.SetBasicAuth("server", "wrong-"+serverPassword)
	if resp, err := c.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("wrong password: %d", resp.StatusCode)
		}
	}
	if conn, err := net.DialTimeout("tcp", net.JoinHostPort(s.IP, strconv.Itoa(s.Ports.Supervisor)), 5*time.Second); err == nil {
		fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", serverPassword)
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.Copy(io.Discard, conn)
		conn.Close()
	}
	show := kpkiOK(t, "token", "show", "--debug", "--data-dir", dd)
	p.stop(t)
	s.Stop(t)

	if !regexp.MustCompile(`level=DEBUG msg=request method=GET path=/v1-kpki/server-bootstrap user=server remote=\S+ status=401`).MatchString(s.Stderr()) {
		t.Errorf("the server did not log the refused request at debug level:\n%s", s.tail(40))
	}
	nodePassword := strings.TrimSpace(string(readFile(t, filepath.Join(add, "agent", "node-password"))))
	_, agentPassword, _ := strings.Cut(strings.TrimPrefix(agentTok, "K10"), "::node:")
	secrets := secretsOf(t, []string{serverPassword, agentPassword, nodePassword}, dd, add)
	for name, log := range map[string]string{"server": s.Stderr(), "agent": p.log(), "token show stderr": show.stderr} {
		if name != "token show stderr" && !strings.Contains(log, "level=DEBUG") {
			t.Errorf("%s: no debug line with --debug:\n%s", name, log)
		}
		for _, sec := range secrets {
			if strings.Contains(log, sec) {
				t.Errorf("%s log holds a secret (%d characters, starting %q)", name, len(sec), sec[:4])
			}
		}
		if strings.Contains(log, "PRIVATE KEY") {
			t.Errorf("%s log mentions a PRIVATE KEY block", name)
		}
	}
}
