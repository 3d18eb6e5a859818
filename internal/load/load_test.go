package load

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/agent"
	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

const (
	readyTimeout = 90 * time.Second
	stopTimeout  = 30 * time.Second
)

var (
	binDir   string
	kpkiBin  string
	buildErr error

	srvOnce sync.Once
	srv     *kpkiServer
	srvErr  error
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	var err error
	if binDir, err = os.MkdirTemp("", "kpki-load-bin-"); err != nil {
		fmt.Fprintln(os.Stderr, "load tests:", err)
		return 1
	}
	defer os.RemoveAll(binDir)
	kpkiBin = filepath.Join(binDir, "kpki")
	if root, err := moduleRoot(); err != nil {
		buildErr = err
	} else {
		cmd := exec.Command("go", "build", "-o", kpkiBin, "./cmd/kpki")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build -o %s ./cmd/kpki failed: %v\n%s", kpkiBin, err, out)
		}
	}
	code := m.Run()
	if srv != nil {
		if err := srv.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "load tests:", err)
			code = max(code, 1)
		}
	}
	return code
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}

// kpkiServer is a `kpki server` process on loopback ports.
type kpkiServer struct {
	dataDir string
	url     string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error

	mu   sync.Mutex
	tail []string
}

// freePort returns a loopback TCP port below the ephemeral range that nothing listens
// on, so that the test's own outgoing connections cannot take it.
func freePort(taken map[int]bool) (int, error) {
	for range 500 {
		p := 20000 + mrand.IntN(12000)
		if taken[p] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		l.Close()
		taken[p] = true
		return p, nil
	}
	return 0, errors.New("no free TCP port on 127.0.0.1")
}

// sharedServer starts one kpki server for the package's tests; TestMain stops it.
func sharedServer(t *testing.T) *kpkiServer {
	t.Helper()
	srvOnce.Do(func() { srv, srvErr = startServer() })
	if srvErr != nil {
		t.Fatal(srvErr)
	}
	return srv
}

func startServer() (*kpkiServer, error) {
	if buildErr != nil {
		return nil, buildErr
	}
	dataDir, err := os.MkdirTemp("", "kpki-load-data-")
	if err != nil {
		return nil, err
	}
	taken := map[int]bool{}
	var ports [3]int
	for i := range ports {
		if ports[i], err = freePort(taken); err != nil {
			return nil, err
		}
	}
	cmd := exec.Command(kpkiBin, "server",
		"--supervisor-port", strconv.Itoa(ports[0]),
		"--etcd-client-port", strconv.Itoa(ports[1]),
		"--etcd-peer-port", strconv.Itoa(ports[2]),
		"--metrics-address", "",
		"--data-dir", dataDir,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--node-name", "load",
		"--etcd-unsafe-no-fsync")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KPKI_") && !strings.HasPrefix(kv, "ETCD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", kpkiBin, err)
	}
	s := &kpkiServer{
		dataDir: dataDir,
		url:     "https://127.0.0.1:" + strconv.Itoa(ports[0]),
		cmd:     cmd,
		done:    make(chan struct{}),
	}
	// Every line the server logs is a moment to ask /readyz again; the channel holds at
	// most one pending signal so that the server never waits on this reader.
	line := make(chan struct{}, 1)
	scanned := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			s.mu.Lock()
			s.tail = append(s.tail, sc.Text())
			if len(s.tail) > 60 {
				s.tail = s.tail[len(s.tail)-60:]
			}
			s.mu.Unlock()
			select {
			case line <- struct{}{}:
			default:
			}
		}
		close(scanned)
	}()
	go func() {
		<-scanned
		s.waitErr = cmd.Wait()
		close(s.done)
	}()

	timeout := time.After(readyTimeout)
	for {
		select {
		case <-line:
			if s.ready() {
				return s, nil
			}
		case <-s.done:
			os.RemoveAll(dataDir)
			return nil, fmt.Errorf("kpki server exited before it was ready (%v); stderr tail:\n%s", s.waitErr, s.stderrTail())
		case <-timeout:
			err := s.stop()
			return nil, fmt.Errorf("kpki server not ready within %v (stop: %v); stderr tail:\n%s", readyTimeout, err, s.stderrTail())
		}
	}
}

// ready reports whether GET /readyz answers 200.
func (s *kpkiServer) ready() bool {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // a readiness probe sends nothing
	}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(s.url + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (s *kpkiServer) stderrTail() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.tail, "\n")
}

// stop sends SIGTERM, kills the server if it does not exit in time, and removes its
// data dir.
func (s *kpkiServer) stop() error {
	defer os.RemoveAll(s.dataDir)
	select {
	case <-s.done:
		return fmt.Errorf("kpki server had exited (%v); stderr tail:\n%s", s.waitErr, s.stderrTail())
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		return nil
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("kpki server did not exit within %v of SIGTERM", stopTimeout)
	}
}

func (s *kpkiServer) file(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dataDir, "server", rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (s *kpkiServer) agentToken(t *testing.T) string {
	t.Helper()
	return strings.TrimSpace(string(s.file(t, "agent-token")))
}

// signAs posts a fresh CSR for node with node password pw and returns the status.
func (s *kpkiServer) signAs(t *testing.T, c *http.Client, tok token.Token, node, pw string) int {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := agent.BuildCSR(key, pki.LeafProfile{CommonName: "system:node:" + node})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, s.url+api.SignPath(DefaultCert), bytes.NewReader(csr))
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(tok.Username, tok.Password)
	req.Header.Set("Content-Type", api.ContentTypeCSR)
	req.Header.Set(api.HeaderNodeName, node)
	req.Header.Set(api.HeaderNodePassword, pw)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// verifiedClient trusts the server's server-ca.crt.
func (s *kpkiServer) verifiedClient(t *testing.T) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.file(t, "tls/server-ca.crt")) {
		t.Fatal("server-ca.crt holds no certificate")
	}
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// logWriter sends progress lines to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestScenarios(t *testing.T) {
	s := sharedServer(t)
	const requests, nodes = 40, 5
	var mu sync.Mutex
	issued := map[Scenario][]Issued{}
	cfg := Config{
		Server:      s.url,
		Token:       s.agentToken(t),
		Nodes:       nodes,
		Requests:    requests,
		Concurrency: 4,
		Duration:    5 * time.Minute,
		Scenarios:   []Scenario{Ping, Renew, Join},
		OnIssued: func(i Issued) {
			mu.Lock()
			issued[i.Scenario] = append(issued[i.Scenario], i)
			mu.Unlock()
		},
	}
	rep, err := Run(context.Background(), cfg, logWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", text.String())

	if rep.Stopped != "" || len(rep.NotRun) > 0 || len(rep.Results) != 3 {
		t.Fatalf("run stopped early (%q, not run %v) or has %d results", rep.Stopped, rep.NotRun, len(rep.Results))
	}
	for _, res := range rep.Results {
		if res.Requests != requests || res.OK != requests || len(res.Errors) != 0 || res.Interrupted != 0 || res.Stopped != "requests" {
			t.Errorf("%s: %d requests, %d ok, errors %v (%v), %d interrupted, stopped by %q; want %d ok and nothing else",
				res.Scenario, res.Requests, res.OK, res.Errors, res.FirstErrors, res.Interrupted, res.Stopped, requests)
		}
		if (res.Scenario == Ping) != (res.VsPing == nil) {
			t.Errorf("%s: ratio to ping %+v", res.Scenario, res.VsPing)
		}
	}
	if rep.ErrorCount() != 0 {
		t.Errorf("ErrorCount() = %d", rep.ErrorCount())
	}

	// Every issued certificate verifies against the server's client-ca.crt, is for the
	// key of the CSR that was sent and names the node.
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(s.file(t, "tls/client-ca.crt")) {
		t.Fatal("client-ca.crt holds no certificate")
	}
	for _, sc := range []Scenario{Renew, Join} {
		if len(issued[sc]) != requests {
			t.Errorf("%s: %d certificates handed to OnIssued, want %d", sc, len(issued[sc]), requests)
		}
		for _, is := range issued[sc] {
			list, err := pki.ParseCerts(is.Reply)
			if err != nil {
				t.Fatalf("%s %s: reply: %v", sc, is.Node, err)
			}
			leaf := list[0]
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("%s %s: certificate does not verify against client-ca.crt: %v", sc, is.Node, err)
			}
			csr, err := x509.ParseCertificateRequest(is.CSR)
			if err != nil {
				t.Fatal(err)
			}
			if !pki.PublicKeysEqual(csr.PublicKey, leaf.PublicKey) {
				t.Errorf("%s %s: certificate is not for the CSR's key", sc, is.Node)
			}
			if want := "system:node:" + is.Node; leaf.Subject.CommonName != want {
				t.Errorf("%s: CN %q, want %q", sc, leaf.Subject.CommonName, want)
			}
		}
	}

	names := func(sc Scenario) map[string]bool {
		set := map[string]bool{}
		for _, is := range issued[sc] {
			set[is.Node] = true
		}
		return set
	}
	if got := len(names(Renew)); got != nodes {
		t.Errorf("renew signed for %d distinct nodes, want %d", got, nodes)
	}
	// Each join request registered its own node name: another node password for any of
	// them is refused.
	joined := names(Join)
	if len(joined) != requests {
		t.Fatalf("join used %d distinct node names for %d requests", len(joined), requests)
	}
	tok, err := token.Parse(cfg.Token)
	if err != nil {
		t.Fatal(err)
	}
	c := s.verifiedClient(t)
	for name := range joined {
		if !strings.HasPrefix(name, DefaultNamePrefix+"-"+rep.RunID+"-join-") {
			t.Errorf("join node name %q does not carry the run id %s", name, rep.RunID)
		}
		other, err := token.GeneratePassword()
		if err != nil {
			t.Fatal(err)
		}
		if code := s.signAs(t, c, tok, name, other); code != http.StatusForbidden {
			t.Errorf("node %s with another node password: %d, want 403 (registered by the join run)", name, code)
		}
	}
}

func TestMainJSON(t *testing.T) {
	s := sharedServer(t)
	tokenFile := filepath.Join(s.dataDir, "server", "agent-token")
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), []string{
		"--server", s.url, "--token-file", tokenFile, "--scenario", "ping,join",
		"--requests", "10", "--concurrency", "3", "--keep-alive", "--json",
	}, &stdout, &stderr)
	t.Logf("stderr:\n%s", stderr.String())
	if code != ExitOK {
		t.Fatalf("exit %d, want 0", code)
	}
	var rep Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("stdout is not a JSON report: %v\n%s", err, stdout.String())
	}
	if rep.Connections != "reused" || rep.Nodes != 0 || len(rep.Results) != 2 {
		t.Fatalf("report: %+v", rep)
	}
	join := rep.Results[1]
	if join.Scenario != Join || join.OK != 10 || join.VsPing == nil || join.VsPing.P50 <= 0 || join.VsPing.Throughput <= 0 {
		t.Errorf("join result: %+v", join)
	}
	for _, key := range []string{`"throughput_rps"`, `"p50"`, `"p99"`, `"vs_ping"`, `"errors": {}`} {
		if !strings.Contains(stdout.String(), key) {
			t.Errorf("JSON report has no %s:\n%s", key, stdout.String())
		}
	}
}

func TestRefusesBadToken(t *testing.T) {
	s := sharedServer(t)
	good, err := token.Parse(s.agentToken(t))
	if err != nil {
		t.Fatal(err)
	}
	other := sha256.Sum256([]byte("another cluster"))
	cases := map[string]struct {
		tok  string
		want string
	}{
		"wrong CA hash":  {token.Format(hex.EncodeToString(other[:]), good.Username, good.Password), "token CA hash does not match the Cluster CA certificate hash"},
		"wrong password": {token.Format(good.CAHash, good.Username, "0123456789abcdef0123456789abcdef"), "refused the token's credentials"},
		"short token":    {good.Password, "must be a secure agent token"},
		"not a token":    {"K10abc::node:pw", "invalid token CA hash length"},
	}
	for name, tc := range cases {
		issued := 0
		cfg := Config{Server: s.url, Token: tc.tok, Nodes: 2, Requests: 5, Concurrency: 1, Duration: time.Minute,
			Scenarios: []Scenario{Ping, Renew, Join}, OnIssued: func(Issued) { issued++ }}
		rep, err := Run(context.Background(), cfg, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Run = %v, want an error containing %q", name, err, tc.want)
		}
		if rep != nil || issued != 0 {
			t.Errorf("%s: a refused token still ran (%d certificates issued)", name, issued)
		}
	}
}

// TestRefusesNonLoopback listens on a non-loopback address of this machine and checks
// that kpki-load refuses it without connecting.
func TestRefusesNonLoopback(t *testing.T) {
	var ip net.IP
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil && !n.IP.IsLinkLocalUnicast() {
			ip = n.IP
			break
		}
	}
	servers := []string{"https://192.0.2.1:9345", "https://0.0.0.0:9345"}
	var l *net.TCPListener
	if ip != nil {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		l = ln.(*net.TCPListener)
		servers = append(servers, "https://"+ln.Addr().String())
	} else {
		t.Log("this machine has no non-loopback IPv4 address: only the refusal message is checked")
	}
	for _, server := range servers {
		cfg := Config{Server: server, Token: "K10" + strings.Repeat("0", 64) + "::node:pw", Nodes: 2, Requests: 5,
			Concurrency: 1, Duration: time.Minute, Scenarios: []Scenario{Ping, Join}}
		_, err := Run(context.Background(), cfg, nil)
		if err == nil || !strings.Contains(err.Error(), "is not a loopback address") {
			t.Errorf("Run against %s = %v, want a refusal naming the non-loopback address", server, err)
		}
		var stderr bytes.Buffer
		if code := Main(context.Background(), []string{"--server", server, "--token", cfg.Token}, io.Discard, &stderr); code != ExitUsage ||
			!strings.Contains(stderr.String(), "only sends load to this machine") {
			t.Errorf("kpki-load --server %s: exit %d, %q", server, code, stderr.String())
		}
	}
	if l != nil {
		// A connection the kernel completed would be waiting in the accept queue; the
		// listening socket is non-blocking, so an empty queue answers EAGAIN at once.
		rc, err := l.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var accErr error
		if err := rc.Control(func(fd uintptr) {
			var nfd int
			if nfd, _, accErr = syscall.Accept(int(fd)); accErr == nil {
				syscall.Close(nfd)
			}
		}); err != nil {
			t.Fatal(err)
		}
		switch {
		case accErr == nil:
			t.Errorf("kpki-load connected to %s", l.Addr())
		case !errors.Is(accErr, syscall.EAGAIN):
			t.Errorf("accept on %s: %v", l.Addr(), accErr)
		}
	}
}

// TestStopsWhenCancelled ends the context at the first issued certificate: the run stops
// sending, reports what it measured and names the scenarios it did not run.
func TestStopsWhenCancelled(t *testing.T) {
	s := sharedServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	issued := 0
	cfg := Config{Server: s.url, Token: s.agentToken(t), Nodes: 2, Requests: 500, Concurrency: 2, Duration: 5 * time.Minute,
		Scenarios: []Scenario{Join, Renew, Ping},
		OnIssued: func(Issued) {
			mu.Lock()
			issued++
			mu.Unlock()
			cancel()
		}}
	rep, err := Run(ctx, cfg, logWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Stopped != "interrupted" || len(rep.Results) != 1 || len(rep.NotRun) != 2 || rep.NotRun[0] != Renew {
		t.Fatalf("stopped %q, %d results, not run %v; want interrupted during join", rep.Stopped, len(rep.Results), rep.NotRun)
	}
	join := rep.Results[0]
	if join.Stopped != "interrupted" || join.OK < 1 || join.OK > cfg.Concurrency || join.OK != issued || len(join.Errors) != 0 {
		t.Errorf("join: stopped %q, %d ok (%d issued), errors %v; want interrupted after at most %d", join.Stopped, join.OK, issued, join.Errors, cfg.Concurrency)
	}
	var out bytes.Buffer
	if err := rep.WriteText(&out); err != nil || !strings.Contains(out.String(), "not run: renew, ping") {
		t.Errorf("text report: %v\n%s", err, out.String())
	}

	cfg.OnIssued = func(Issued) { t.Error("a certificate was issued with an ended context") }
	if _, err := Run(ctx, cfg, nil); err == nil {
		t.Error("Run with an ended context succeeded")
	}
}
