// Package kube proves kpki's PKI on real Kubernetes: it builds kube-apiserver and
// kube-controller-manager from the Go module proxy, runs them on the files of a real
// kpki server (with kpki's embedded etcd as their storage) and drives them with kubectl.
package kube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
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
)

// KubeVersion is the Kubernetes release the suite builds and runs.
const KubeVersion = "v1.37.2"

var bins struct {
	kpki, apiserver, controllerManager string
}

func TestMain(m *testing.M) {
	if err := buildAll(); err != nil {
		fmt.Fprintln(os.Stderr, "kube e2e: "+err.Error())
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// buildAll builds kpki from the repository and the Kubernetes components into a cache
// directory that survives between runs (the Go build cache makes a rebuild a relink).
func buildAll() error {
	for _, tool := range []string{"kubectl", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is required: %w", tool, err)
		}
	}
	cache := os.Getenv("KPKI_KUBE_BIN_DIR")
	if cache == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return err
		}
		cache = filepath.Join(base, "kpki-kube-e2e", KubeVersion)
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return err
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		return err
	}
	bins.kpki = filepath.Join(cache, "kpki")
	if out, err := exec.Command("go", "build", "-C", root, "-o", bins.kpki, "./cmd/kpki").CombinedOutput(); err != nil {
		return fmt.Errorf("build kpki: %v\n%s", err, out)
	}
	bins.apiserver = filepath.Join(cache, "kube-apiserver")
	bins.controllerManager = filepath.Join(cache, "kube-controller-manager")
	ld := "-s -w -X k8s.io/component-base/version.gitVersion=" + KubeVersion +
		" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37" +
		" -X k8s.io/client-go/pkg/version.gitVersion=" + KubeVersion
	start := time.Now()
	cmd := exec.Command("go", "build", "-ldflags", ld, "-o", cache+"/",
		"k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build Kubernetes %s components: %v\n%s", KubeVersion, err, out)
	}
	fmt.Fprintf(os.Stderr, "kube e2e: kpki and Kubernetes %s components ready in %s (%s)\n", KubeVersion, cache, time.Since(start).Round(time.Second))
	return nil
}

var portMu sync.Mutex
var usedPorts = map[int]bool{}

// freePort returns a loopback port no other part of this run was given.
func freePort(t *testing.T) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	for i := 0; i < 100; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !usedPorts[p] {
			usedPorts[p] = true
			return p
		}
	}
	t.Fatal("no free port")
	return 0
}

// proc is a background process whose output goes to a log file.
type proc struct {
	// grace is how long stop waits after SIGTERM before killing.
	grace time.Duration
	name  string
	cmd   *exec.Cmd
	log   string
	done  chan struct{}
	err   error
}

func start(t *testing.T, name, logDir string, bin string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(logDir, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano()))
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{}), grace: 30 * time.Second}
	go func() { p.err = cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("--- %s log (%s), last lines:\n%s", name, logPath, tail(logPath, 40))
		}
	})
	return p
}

func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(p.grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitFor polls cond until it returns nil or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, procs []*proc, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if last = cond(); last == nil {
			return
		}
		for _, p := range procs {
			if p.exited() {
				t.Fatalf("%s exited while waiting for %s: %v\n%s", p.name, what, p.err, tail(p.log, 40))
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, last)
}

// run runs a command and returns its stdout; stderr is part of the error.
func run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// servingCert returns the leaf certificate a TLS server presents, verified against caFile.
func servingCert(addr, caFile string) (*x509.Certificate, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("no CA in " + caFile)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

// httpsOK GETs url without verification (readiness probing only).
func httpsOK(url string) error {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s %s", url, resp.Status, body)
	}
	return nil
}

func itoa(i int) string { return strconv.Itoa(i) }
