package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

const (
	loopback     = "127.0.0.1"
	nodeName     = "e2e-node"
	etcdBinary   = "/usr/bin/etcd"
	readyTimeout = 60 * time.Second
	stopTimeout  = 45 * time.Second
	failTimeout  = 60 * time.Second
)

var (
	kpkiBin  string
	buildErr error
)

func TestMain(m *testing.M) {
	if argv := os.Getenv(measureEnv); argv != "" {
		os.Exit(measureChild(argv))
	}
	if sock := os.Getenv(systemctlShimEnv); sock != "" {
		os.Exit(systemctlShim(sock, os.Args[1:]))
	}
	os.Exit(runTests(m))
}

// measureEnv makes the test binary a wrapper that runs the command in it (a JSON list) and
// writes the peak RSS of that command, in KB, to the file named by measureOutEnv. A command
// started straight from the test process would report the test process's own peak: Linux
// counts the memory of the process that execs, and os/exec starts children sharing the
// parent's memory until they exec. The wrapper is small, so its child's peak is the
// command's own.
const (
	measureEnv    = "KPKI_E2E_MEASURE_ARGV"
	measureOutEnv = "KPKI_E2E_MEASURE_OUT"
)

func measureChild(argv string) int {
	var args []string
	if err := json.Unmarshal([]byte(argv), &args); err != nil || len(args) == 0 {
		fmt.Fprintln(os.Stderr, "e2e measure:", err)
		return 125
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, measureEnv+"=") || strings.HasPrefix(kv, measureOutEnv+"=")
	})
	err := cmd.Run()
	if cmd.ProcessState == nil {
		fmt.Fprintln(os.Stderr, "e2e measure:", err)
		return 125
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		_ = os.WriteFile(os.Getenv(measureOutEnv), []byte(strconv.FormatInt(ru.Maxrss, 10)), 0o600)
	}
	return cmd.ProcessState.ExitCode()
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "kpki-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	kpkiBin = filepath.Join(dir, "kpki")
	root, err := moduleRoot()
	if err != nil {
		buildErr = err
	} else {
		cmd := exec.Command("go", "build", "-o", kpkiBin, "./cmd/kpki")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build -o %s ./cmd/kpki failed: %v\n%s", kpkiBin, err, out)
		}
	}
	return m.Run()
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

// binary returns the path of the kpki binary built by TestMain, failing the test when the build
// failed.
func binary(t *testing.T) string {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return kpkiBin
}

// requireTools fails the test when one of the named programs is not on PATH.
func requireTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("%s is required by this test and is not on PATH: %v", n, err)
		}
	}
}

// ---------------------------------------------------------------------------------------------
// Ports

var (
	portMu    sync.Mutex
	usedPorts = map[string]bool{}
)

// freePort returns a TCP port on ip that nothing listens on and that no other test of this
// process was given. Ports are taken below the usual ephemeral range so that outgoing
// connections do not grab them between allocation and use.
func freePort(t *testing.T, ip string) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	for range 500 {
		p := 20000 + rand.IntN(12000)
		key := net.JoinHostPort(ip, strconv.Itoa(p))
		if usedPorts[key] {
			continue
		}
		l, err := net.Listen("tcp", key)
		if err != nil {
			continue
		}
		l.Close()
		usedPorts[key] = true
		return p
	}
	t.Fatalf("no free TCP port found on %s", ip)
	return 0
}

// listening reports whether something accepts TCP connections on ip:port.
func listening(ip string, port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, strconv.Itoa(port)), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// ---------------------------------------------------------------------------------------------
// kpki server processes

type serverPorts struct {
	Supervisor, EtcdClient, EtcdPeer, APIServer int
}

func newServerPorts(t *testing.T, ip string) serverPorts {
	t.Helper()
	return serverPorts{
		Supervisor: freePort(t, ip),
		EtcdClient: freePort(t, ip),
		EtcdPeer:   freePort(t, ip),
		APIServer:  freePort(t, ip),
	}
}

// serverSpec describes one `kpki server` process. The harness passes --data-dir,
// --bind-address, --advertise-address, --node-name, the four port flags and
// --metrics-address "" unless args already holds the flag or omit names it.
type serverSpec struct {
	dataDir string
	ip      string       // bind and advertise address; 127.0.0.1 when empty
	ports   *serverPorts // nil: new free ports
	env     []string     // extra environment (KPKI_* variables of the test process are dropped)
	args    []string     // extra flags
	omit    []string     // default flags not to pass, e.g. "--supervisor-port"
}

type kpkiServer struct {
	DataDir string
	IP      string
	Ports   serverPorts
	Args    []string

	cmd      *exec.Cmd
	stderr   string
	stdout   string
	done     chan struct{}
	exitCode int
}

var procCounter atomic.Int64

// startServer starts `kpki server` on dataDir with fresh ports and the default flags plus args.
func startServer(t *testing.T, dataDir string, args ...string) *kpkiServer {
	t.Helper()
	return launch(t, serverSpec{dataDir: dataDir, args: args})
}

// startServerOn is startServer with the given ports (a restart of the same node).
func startServerOn(t *testing.T, ports serverPorts, dataDir string, args ...string) *kpkiServer {
	t.Helper()
	return launch(t, serverSpec{dataDir: dataDir, ports: &ports, args: args})
}

func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}

func cleanEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "KPKI_") || strings.HasPrefix(kv, "ETCD_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

func launch(t *testing.T, spec serverSpec) *kpkiServer {
	t.Helper()
	bin := binary(t)
	ip := spec.ip
	if ip == "" {
		ip = loopback
	}
	var ports serverPorts
	if spec.ports != nil {
		ports = *spec.ports
	} else {
		ports = newServerPorts(t, ip)
	}
	defaults := [][2]string{
		{"--data-dir", spec.dataDir},
		{"--bind-address", ip},
		{"--advertise-address", ip},
		{"--node-name", nodeName},
		{"--supervisor-port", strconv.Itoa(ports.Supervisor)},
		{"--etcd-client-port", strconv.Itoa(ports.EtcdClient)},
		{"--etcd-peer-port", strconv.Itoa(ports.EtcdPeer)},
		{"--api-server-port", strconv.Itoa(ports.APIServer)},
		{"--metrics-address", ""},
	}
	args := []string{"server"}
	for _, d := range defaults {
		if slices.Contains(spec.omit, d[0]) || hasFlag(spec.args, d[0]) {
			continue
		}
		args = append(args, d[0], d[1])
	}
	args = append(args, spec.args...)

	logDir := t.TempDir()
	n := procCounter.Add(1)
	s := &kpkiServer{
		DataDir: spec.dataDir,
		IP:      ip,
		Ports:   ports,
		Args:    args,
		stderr:  filepath.Join(logDir, fmt.Sprintf("kpki-%d.stderr", n)),
		stdout:  filepath.Join(logDir, fmt.Sprintf("kpki-%d.stdout", n)),
		done:    make(chan struct{}),
	}
	errFile, err := os.Create(s.stderr)
	if err != nil {
		t.Fatal(err)
	}
	outFile, err := os.Create(s.stdout)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = cleanEnv(spec.env)
	cmd.Stderr = errFile
	cmd.Stdout = outFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		errFile.Close()
		outFile.Close()
		t.Fatalf("start %s: %v", bin, err)
	}
	s.cmd = cmd
	go func() {
		err := cmd.Wait()
		errFile.Close()
		outFile.Close()
		code := 0
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else {
				code = -1
			}
		}
		s.exitCode = code
		close(s.done)
	}()
	t.Logf("started kpki %s (pid %d)", strings.Join(quoteArgs(args), " "), cmd.Process.Pid)
	t.Cleanup(func() {
		if !s.exited() {
			_ = cmd.Process.Kill()
			<-s.done
		}
		if t.Failed() {
			t.Logf("kpki (pid %d) %s\nexit code %d; stderr (last 100 lines):\n%s",
				cmd.Process.Pid, strings.Join(quoteArgs(args), " "), s.exitCode, s.tail(100))
		}
	})
	return s
}

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'") {
			a = strconv.Quote(a)
		}
		out[i] = a
	}
	return out
}

func (s *kpkiServer) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Stderr returns everything the process wrote to stderr so far.
func (s *kpkiServer) Stderr() string {
	b, _ := os.ReadFile(s.stderr)
	return string(b)
}

// Stdout returns everything the process wrote to stdout so far.
func (s *kpkiServer) Stdout() string {
	b, _ := os.ReadFile(s.stdout)
	return string(b)
}

func (s *kpkiServer) tail(n int) string {
	lines := strings.Split(strings.TrimRight(s.Stderr(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Stop sends SIGTERM, waits for the process and asserts a clean exit 0.
func (s *kpkiServer) Stop(t *testing.T) {
	t.Helper()
	if s.exited() {
		t.Fatalf("kpki server had already exited with code %d before Stop; stderr tail:\n%s", s.exitCode, s.tail(30))
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-s.done:
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.done
		t.Fatalf("kpki server did not exit within %v of SIGTERM; stderr tail:\n%s", stopTimeout, s.tail(30))
	}
	if s.exitCode != 0 {
		t.Fatalf("kpki server exited with code %d after SIGTERM, want 0; stderr tail:\n%s", s.exitCode, s.tail(30))
	}
}

// Kill sends SIGKILL and waits for the process.
func (s *kpkiServer) Kill(t *testing.T) {
	t.Helper()
	if !s.exited() {
		_ = s.cmd.Process.Kill()
	}
	<-s.done
}

// Wait waits for the process to exit on its own and returns its exit code and stderr. It fails
// the test (after killing the process) when the process is still running after timeout.
func (s *kpkiServer) Wait(t *testing.T, timeout time.Duration) (int, string) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(timeout):
		_ = s.cmd.Process.Kill()
		<-s.done
		t.Fatalf("kpki server still running after %v, expected it to exit on its own; stderr tail:\n%s", timeout, s.tail(30))
	}
	return s.exitCode, s.Stderr()
}

// WaitReady polls GET /readyz (TLS verified with <dd>/server/tls/server-ca.crt) until it answers
// 200, the process exits, or readyTimeout passes.
func (s *kpkiServer) WaitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	var last string
	for {
		if s.exited() {
			t.Fatalf("kpki server exited with code %d before becoming ready; stderr tail:\n%s", s.exitCode, s.tail(40))
		}
		code, body, err := s.get("/readyz")
		switch {
		case err == nil && code == http.StatusOK:
			return
		case err != nil:
			last = err.Error()
		default:
			last = fmt.Sprintf("HTTP %d: %s", code, strings.TrimSpace(string(body)))
		}
		if time.Now().After(deadline) {
			t.Fatalf("kpki server not ready on port %d within %v (last: %s); stderr tail:\n%s",
				s.Ports.Supervisor, readyTimeout, last, s.tail(40))
		}
		select {
		case <-s.done:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TLSDir is <dd>/server/tls.
func (s *kpkiServer) TLSDir() string { return filepath.Join(s.DataDir, "server", "tls") }

// SupervisorURL is https://<ip>:<supervisor port>.
func (s *kpkiServer) SupervisorURL() string {
	return "https://" + net.JoinHostPort(s.IP, strconv.Itoa(s.Ports.Supervisor))
}

func (s *kpkiServer) clientTLS(serverName string) (*tls.Config, error) {
	pemBytes, err := os.ReadFile(filepath.Join(s.TLSDir(), "server-ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, errors.New("server-ca.crt holds no certificate")
	}
	if serverName == "" {
		serverName = s.IP
	}
	return &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}, nil
}

func (s *kpkiServer) get(path string) (int, []byte, error) {
	cfg, err := s.clientTLS("")
	if err != nil {
		return 0, nil, err
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(s.SupervisorURL() + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// MustGet does a verified GET on the supervisor and fails the test on a transport error.
func (s *kpkiServer) MustGet(t *testing.T, path string) (int, []byte) {
	t.Helper()
	code, body, err := s.get(path)
	if err != nil {
		t.Fatalf("GET %s%s: %v", s.SupervisorURL(), path, err)
	}
	return code, body
}

// ServedChain connects to the supervisor, verifies its certificate against server-ca.crt for
// serverName (the advertise address when empty) and returns the chain the server sent.
func (s *kpkiServer) ServedChain(t *testing.T, serverName string) []*x509.Certificate {
	t.Helper()
	cfg, err := s.clientTLS(serverName)
	if err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", net.JoinHostPort(s.IP, strconv.Itoa(s.Ports.Supervisor)), cfg)
	if err != nil {
		t.Fatalf("TLS to supervisor (server name %q): %v", cfg.ServerName, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates
}

// ---------------------------------------------------------------------------------------------
// Failure assertions

// lastLine returns the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.TrimSpace(lines[i]) != "" {
			return lines[i]
		}
	}
	return ""
}

// assertFailure checks a failed run: non-zero exit, exactly one stderr line starting with
// "kpki: ", that line last, and containing every want (case-sensitive).
func assertFailure(t *testing.T, code int, stderr string, wants ...string) string {
	t.Helper()
	if code == 0 {
		t.Errorf("exit code 0, want non-zero")
	}
	last := lastLine(stderr)
	t.Logf("exit code %d, last stderr line: %s", code, last)
	if !strings.HasPrefix(last, "kpki: ") {
		t.Errorf("last stderr line does not start with %q: %q", "kpki: ", last)
	}
	n := 0
	for _, l := range strings.Split(stderr, "\n") {
		if strings.HasPrefix(l, "kpki: ") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d stderr lines start with %q, want exactly 1", n, "kpki: ")
	}
	for _, w := range wants {
		if !strings.Contains(last, w) {
			t.Errorf("error line %q does not contain %q", last, w)
		}
	}
	return last
}

// ---------------------------------------------------------------------------------------------
// Data directory snapshots

func excludedFromHash(rel string) bool {
	for _, d := range []string{"server/db", "server/logs"} {
		if rel == d || strings.HasPrefix(rel, d+"/") {
			return true
		}
	}
	return rel == "server/audit.log" || rel == "server/kpki.lock"
}

// hashTree maps every path under dir (relative, slash-separated) to its type, mode and, for
// regular files, the SHA-256 of its content. It leaves out server/db/, server/logs/,
// server/audit.log, server/kpki.lock, and the directories "." and "server" that hold them. A
// missing dir gives an empty map.
func hashTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return out
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if excludedFromHash(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if rel != "." && rel != "server" {
				out[rel] = fmt.Sprintf("dir %v", info.Mode())
			}
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out[rel] = "symlink -> " + target
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[rel] = fmt.Sprintf("file %v sha256:%x", info.Mode(), sha256.Sum256(data))
		default:
			out[rel] = fmt.Sprintf("other %v", info.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatalf("hashTree %s: %v", dir, err)
	}
	return out
}

// treeDiff lists the differences between two hashTree results.
func treeDiff(before, after map[string]string) []string {
	var diff []string
	for k, v := range before {
		w, ok := after[k]
		switch {
		case !ok:
			diff = append(diff, "removed "+k)
		case v != w:
			diff = append(diff, fmt.Sprintf("changed %s (%s -> %s)", k, v, w))
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			diff = append(diff, "added "+k)
		}
	}
	sort.Strings(diff)
	return diff
}

// nonDirs lists the entries of a hashTree result that are not directories.
func nonDirs(tree map[string]string) []string {
	var out []string
	for k, v := range tree {
		if !strings.HasPrefix(v, "dir ") {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func assertTreeUnchanged(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	if d := treeDiff(before, after); len(d) > 0 {
		t.Errorf("%s: data directory changed:\n  %s", what, strings.Join(d, "\n  "))
	}
}

// copyTree copies src into dst (created), keeping file and directory modes.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			if err := os.MkdirAll(target, 0o700); err != nil {
				return err
			}
			return os.Chmod(target, info.Mode().Perm())
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := os.WriteFile(target, data, info.Mode().Perm()); err != nil {
			return err
		}
		return os.Chmod(target, info.Mode().Perm())
	})
	if err != nil {
		t.Fatalf("copy %s to %s: %v", src, dst, err)
	}
}

// ---------------------------------------------------------------------------------------------
// PEM and X.509 helpers

func parseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("trailing data after the last PEM block")
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate")
	}
	return certs, nil
}

func readCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := parseCertsPEM(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return certs
}

type privateKey struct {
	pemType string
	signer  crypto.Signer
}

func parseKeysPEM(data []byte) ([]privateKey, error) {
	var keys []privateKey
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		var k any
		var err error
		switch b.Type {
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		default:
			return nil, fmt.Errorf("unexpected PEM block %q", b.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %v", b.Type, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s: not a signing key", b.Type)
		}
		keys = append(keys, privateKey{pemType: b.Type, signer: s})
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("trailing data after the last PEM block")
	}
	if len(keys) == 0 {
		return nil, errors.New("no private key")
	}
	return keys, nil
}

func readKeys(t *testing.T, path string) []privateKey {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := parseKeysPEM(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return keys
}

func keyMatches(pub crypto.PublicKey, key crypto.Signer) bool {
	p, ok := pub.(interface{ Equal(crypto.PublicKey) bool })
	return ok && p.Equal(key.Public())
}

func certsPEM(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

func sameCerts(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return info.Mode()
}

// ---------------------------------------------------------------------------------------------
// openssl and kubectl

func run(t *testing.T, dir string, env []string, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = cleanEnv(env)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// opensslVerify splits a leaf .crt file (leaf followed by its CA bundle) and runs
// `openssl verify -purpose <purpose>` with the last certificate as the trust anchor and the
// certificates between leaf and root as untrusted intermediates. purpose is sslserver or
// sslclient. A failure is reported with t.Errorf.
func opensslVerify(t *testing.T, crtFile, purpose string) {
	t.Helper()
	certs := readCerts(t, crtFile)
	if len(certs) < 2 {
		t.Errorf("%s: %d certificate(s), want the leaf followed by its CA bundle", crtFile, len(certs))
		return
	}
	dir := t.TempDir()
	leaf := filepath.Join(dir, "leaf.pem")
	root := filepath.Join(dir, "root.pem")
	writeFile(t, leaf, certsPEM(certs[0]), 0o600)
	writeFile(t, root, certsPEM(certs[len(certs)-1]), 0o600)
	args := []string{"verify", "-purpose", purpose, "-CAfile", root}
	if mid := certs[1 : len(certs)-1]; len(mid) > 0 {
		untrusted := filepath.Join(dir, "untrusted.pem")
		writeFile(t, untrusted, certsPEM(mid...), 0o600)
		args = append(args, "-untrusted", untrusted)
	}
	args = append(args, leaf)
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), leaf+": OK") {
		t.Errorf("openssl verify -purpose %s %s: %v\n%s", purpose, crtFile, err, out)
	}
}

// kubectlView runs `kubectl --kubeconfig F config view` plus extra arguments and returns the
// output; a non-zero exit fails the test.
func kubectlView(t *testing.T, kubeconfig string, extra ...string) []byte {
	t.Helper()
	args := append([]string{"--kubeconfig", kubeconfig, "config", "view"}, extra...)
	cmd := exec.Command("kubectl", args...)
	cmd.Env = cleanEnv([]string{"KUBECONFIG="})
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

type kubeconfig struct {
	Clusters []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server                   string `json:"server"`
			CertificateAuthority     string `json:"certificate-authority"`
			CertificateAuthorityData []byte `json:"certificate-authority-data"`
		} `json:"cluster"`
	} `json:"clusters"`
	Users []struct {
		Name string `json:"name"`
		User struct {
			ClientCertificate     string `json:"client-certificate"`
			ClientCertificateData []byte `json:"client-certificate-data"`
			ClientKey             string `json:"client-key"`
			ClientKeyData         []byte `json:"client-key-data"`
		} `json:"user"`
	} `json:"users"`
	Contexts []struct {
		Name    string `json:"name"`
		Context struct {
			Cluster string `json:"cluster"`
			User    string `json:"user"`
		} `json:"context"`
	} `json:"contexts"`
	CurrentContext string `json:"current-context"`
}

// kubectlConfig loads a kubeconfig with `kubectl config view --raw -o json` (and --flatten,
// which reads every referenced file into the output, when flatten is set).
func kubectlConfig(t *testing.T, path string, flatten bool) kubeconfig {
	t.Helper()
	extra := []string{"--raw", "-o", "json"}
	if flatten {
		extra = append(extra, "--flatten")
	}
	out := kubectlView(t, path, extra...)
	var kc kubeconfig
	if err := json.Unmarshal(out, &kc); err != nil {
		t.Fatalf("kubectl config view of %s: %v\n%s", path, err, out)
	}
	return kc
}

// ---------------------------------------------------------------------------------------------
// Debian etcd

type etcdProc struct {
	Endpoint string
	// Client credentials when started with TLS.
	CAFile, CertFile, KeyFile string

	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

const opensslTestConf = `[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, digitalSignature
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
[client_ext]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
`

// makeTestPKI makes, with the openssl CLI, a CA and a server and client certificate for an etcd
// on 127.0.0.1 in dir: ca.crt, server.crt/.key, client.crt/.key.
func makeTestPKI(t *testing.T, dir string) {
	t.Helper()
	writeFile(t, filepath.Join(dir, "openssl.cnf"), []byte(opensslTestConf), 0o600)
	run(t, dir, nil, "openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
	run(t, dir, nil, "openssl", "req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "2",
		"-subj", "/CN=e2e-etcd-ca", "-config", "openssl.cnf", "-extensions", "ca_ext", "-out", "ca.crt")
	for _, name := range []string{"server", "client"} {
		run(t, dir, nil, "openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", name+".key")
		run(t, dir, nil, "openssl", "req", "-new", "-key", name+".key", "-subj", "/CN=e2e-etcd-"+name,
			"-config", "openssl.cnf", "-out", name+".csr")
		run(t, dir, nil, "openssl", "x509", "-req", "-in", name+".csr", "-CA", "ca.crt", "-CAkey", "ca.key",
			"-set_serial", "0x"+randomHex(16), "-days", "2", "-sha256",
			"-extfile", "openssl.cnf", "-extensions", name+"_ext", "-out", name+".crt")
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.IntN(256))
	}
	b[0] &= 0x7f
	b[0] |= 0x10
	return hex.EncodeToString(b)
}

// startEtcd runs Debian's etcd on loopback with its own data dir, plain HTTP or mutual TLS, and
// stops it at cleanup.
func startEtcd(t *testing.T, useTLS bool) *etcdProc {
	t.Helper()
	if _, err := os.Stat(etcdBinary); err != nil {
		t.Fatalf("%s is required (apt-get install -y etcd-server etcd-client): %v", etcdBinary, err)
	}
	dir := t.TempDir()
	clientPort := freePort(t, loopback)
	peerPort := freePort(t, loopback)
	scheme := "http"
	e := &etcdProc{log: filepath.Join(dir, "etcd.log"), done: make(chan struct{})}
	var tlsArgs []string
	if useTLS {
		requireTools(t, "openssl")
		pki := filepath.Join(dir, "pki")
		if err := os.Mkdir(pki, 0o700); err != nil {
			t.Fatal(err)
		}
		makeTestPKI(t, pki)
		scheme = "https"
		e.CAFile = filepath.Join(pki, "ca.crt")
		e.CertFile = filepath.Join(pki, "client.crt")
		e.KeyFile = filepath.Join(pki, "client.key")
		tlsArgs = []string{
			"--cert-file", filepath.Join(pki, "server.crt"),
			"--key-file", filepath.Join(pki, "server.key"),
			"--trusted-ca-file", e.CAFile,
			"--client-cert-auth",
		}
	}
	clientURL := fmt.Sprintf("%s://127.0.0.1:%d", scheme, clientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	e.Endpoint = clientURL
	args := []string{
		"--name", "e2e",
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", clientURL,
		"--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "e2e=" + peerURL,
		"--initial-cluster-state", "new",
		"--logger", "zap",
		"--log-outputs", "stderr",
	}
	args = append(args, tlsArgs...)
	logFile, err := os.Create(e.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(etcdBinary, args...)
	cmd.Env = cleanEnv(nil)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start etcd: %v", err)
	}
	e.cmd = cmd
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(e.done)
	}()
	t.Cleanup(func() {
		select {
		case <-e.done:
		default:
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-e.done:
			case <-time.After(20 * time.Second):
				_ = cmd.Process.Kill()
				<-e.done
			}
		}
		if t.Failed() {
			b, _ := os.ReadFile(e.log)
			lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
			if len(lines) > 30 {
				lines = lines[len(lines)-30:]
			}
			t.Logf("etcd %s log (last lines):\n%s", clientURL, strings.Join(lines, "\n"))
		}
	})
	cli := e.Client(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-e.done:
			b, _ := os.ReadFile(e.log)
			t.Fatalf("etcd exited during start-up:\n%s", b)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Get(ctx, "e2e-health")
		cancel()
		if err == nil {
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd on %s not ready within 30s: %v", clientURL, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Client returns an etcd v3 client for this etcd, closed at cleanup.
func (e *etcdProc) Client(t *testing.T) *clientv3.Client {
	t.Helper()
	var cfg *tls.Config
	if e.CAFile != "" {
		cfg = tlsFromFiles(t, e.CAFile, e.CertFile, e.KeyFile)
	}
	return etcdClient(t, e.Endpoint, cfg)
}

// tlsFromFiles builds a client TLS config trusting caFile and, when certFile is set, presenting
// certFile/keyFile.
func tlsFromFiles(t *testing.T, caFile, certFile, keyFile string) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(readFile(t, caFile)) {
		t.Fatalf("%s: no certificate", caFile)
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatalf("load %s: %v", certFile, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg
}

func etcdClient(t *testing.T, endpoint string, cfg *tls.Config) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		TLS:         cfg,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client for %s: %v", endpoint, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// ---------------------------------------------------------------------------------------------
// Tokens and bootstrap data (SPEC §6, §9), implemented here independently of the product.

var (
	serverTokenRE = regexp.MustCompile(`^K10([0-9a-f]{64})::server:(.+)$`)
	agentTokenRE  = regexp.MustCompile(`^K10([0-9a-f]{64})::node:(.+)$`)
)

// passphrase returns the password part of a token (a bare token is its own passphrase).
func passphrase(token string) string {
	token = strings.TrimSpace(token)
	if strings.HasPrefix(token, "K10") {
		if _, creds, ok := strings.Cut(token, "::"); ok {
			if _, pw, ok := strings.Cut(creds, ":"); ok {
				return pw
			}
		}
	}
	return token
}

func bootstrapKey(pass string) string {
	sum := sha256.Sum256([]byte(pass))
	return "/bootstrap/" + hex.EncodeToString(sum[:])[:12]
}

var saltRE = regexp.MustCompile(`^[0-9a-f]{16}$`)

// decryptBootstrap decrypts a bootstrap value `<salt>:<base64(nonce‖ciphertext‖tag)>`.
func decryptBootstrap(pass, value string) ([]byte, error) {
	salt, b64, ok := strings.Cut(value, ":")
	if !ok {
		return nil, errors.New("value has no salt separator")
	}
	if !saltRE.MatchString(salt) {
		return nil, fmt.Errorf("salt %q is not 16 lowercase hex characters", salt)
	}
	data, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("base64: %v", err)
	}
	key, err := pbkdf2.Key(sha1.New, pass, []byte(salt), 4096, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	if len(data) < gcm.NonceSize()+gcm.Overhead() {
		return nil, errors.New("ciphertext too short")
	}
	return gcm.Open(nil, data[:gcm.NonceSize()], data[gcm.NonceSize():], nil)
}

type bootstrapEntry struct {
	Timestamp string `json:"Timestamp"`
	Content   []byte `json:"Content"`
}

// bootstrapFiles maps the bootstrap fields to their paths under <dd>/server.
var bootstrapFiles = map[string]string{
	"ServerCA":           "tls/server-ca.crt",
	"ServerCAKey":        "tls/server-ca.key",
	"ClientCA":           "tls/client-ca.crt",
	"ClientCAKey":        "tls/client-ca.key",
	"RequestHeaderCA":    "tls/request-header-ca.crt",
	"RequestHeaderCAKey": "tls/request-header-ca.key",
	"ETCDServerCA":       "tls/etcd/server-ca.crt",
	"ETCDServerCAKey":    "tls/etcd/server-ca.key",
	"ETCDPeerCA":         "tls/etcd/peer-ca.crt",
	"ETCDPeerCAKey":      "tls/etcd/peer-ca.key",
	"ServiceKey":         "tls/service.key",
	"PasswdFile":         "cred/passwd",
}
