package e2e

import (
	"bufio"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const systemdAnalyze = "/usr/bin/systemd-analyze"

// unitFiles are the shipped units, relative to the module root.
var unitFiles = map[string]string{
	"kpki.service":       "server",
	"kpki-agent.service": "agent",
}

func unitPath(t *testing.T, name string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "dist", "systemd", name)
}

// parseUnit returns the directives of a unit file as section -> key -> values, in order.
func parseUnit(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			if out[section] == nil {
				out[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: line %q is not key=value inside a section", path, line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSystemdUnitDirectives checks the directives the units must carry (RKE2's layout).
func TestSystemdUnitDirectives(t *testing.T) {
	for name, role := range unitFiles {
		u := parseUnit(t, unitPath(t, name))
		other := "kpki-agent.service"
		if role == "agent" {
			other = "kpki.service"
		}
		want := map[string]map[string][]string{
			"Unit": {
				"Wants":     {"network-online.target"},
				"After":     {"network-online.target"},
				"Conflicts": {other},
			},
			"Install": {"WantedBy": {"multi-user.target"}},
			"Service": {
				"Type":     {"notify"},
				"KillMode": {"process"},
				"Restart":  {"always"},
				"EnvironmentFile": {
					"-/etc/default/%N",
					"-/etc/sysconfig/%N",
					"-/usr/local/lib/systemd/system/%N.env",
				},
				"ExecStart":       {"/usr/local/bin/kpki " + role},
				"TimeoutStartSec": {"0"},
				"RestartSec":      {"5s"},
				"LimitNOFILE":     {"1048576"},
			},
		}
		for sec, keys := range want {
			for k, vals := range keys {
				if got := u[sec][k]; strings.Join(got, "\n") != strings.Join(vals, "\n") {
					t.Errorf("%s [%s] %s = %q, want %q", name, sec, k, got, vals)
				}
			}
		}
		if len(u["Unit"]["Description"]) != 1 || len(u["Unit"]["Documentation"]) != 1 {
			t.Errorf("%s: want one Description and one Documentation line, got %v", name, u["Unit"])
		}
		env := strings.TrimSuffix(name, ".service") + ".env"
		data := string(readFile(t, unitPath(t, env)))
		// The server joins by KPKI_SERVER (it ignores the agent's KPKI_URL), the agent by KPKI_URL.
		join := map[string]string{"kpki.env": "#KPKI_SERVER=", "kpki-agent.env": "#KPKI_URL="}[env]
		for _, v := range []string{"#KPKI_TOKEN=", "#KPKI_TOKEN_FILE=", join} {
			if !strings.Contains(data, "\n"+v+"\n") {
				t.Errorf("%s does not carry the commented example %s", env, v)
			}
		}
		if env == "kpki.env" && strings.Contains(data, "\n#KPKI_URL=") {
			t.Errorf("kpki.env suggests KPKI_URL, which kpki server ignores")
		}
	}
}

// TestSystemdAnalyzeVerify runs systemd-analyze verify on copies of the units whose
// ExecStart names the built binary (verify needs the command to exist; no running systemd
// is needed). Any diagnostic fails the test: verify exits 0 on some parse warnings.
func TestSystemdAnalyzeVerify(t *testing.T) {
	if _, err := os.Stat(systemdAnalyze); err != nil {
		t.Skipf("%s is not installed (Debian package systemd): %v", systemdAnalyze, err)
	}
	bin := binary(t)
	dir := t.TempDir()
	var paths []string
	for name := range unitFiles {
		data := string(readFile(t, unitPath(t, name)))
		if !strings.Contains(data, "\nExecStart=/usr/local/bin/kpki ") {
			t.Fatalf("%s: no ExecStart=/usr/local/bin/kpki line", name)
		}
		data = strings.Replace(data, "\nExecStart=/usr/local/bin/kpki ", "\nExecStart="+bin+" ", 1)
		p := filepath.Join(dir, name)
		writeFile(t, p, []byte(data), 0o644)
		paths = append(paths, p)
	}
	verify := func(paths ...string) (string, error) {
		cmd := exec.Command(systemdAnalyze, append([]string{"verify"}, paths...)...)
		cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0")
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := verify(paths...); err != nil || out != "" {
		t.Fatalf("systemd-analyze verify %v: %v\n%s", paths, err, out)
	}
	// The check can fail: a misspelt directive value is reported.
	bad := filepath.Join(t.TempDir(), "kpki.service")
	writeFile(t, bad, []byte(strings.Replace(string(readFile(t, paths[0])), "Type=notify", "Type=notifyy", 1)), 0o644)
	if out, _ := verify(bad); !strings.Contains(out, "notifyy") {
		t.Fatalf("systemd-analyze verify did not report a bad Type: %q", out)
	}
}

// notifySocket listens on a unixgram socket for sd_notify datagrams.
type notifySocket struct {
	path string
	conn *net.UnixConn
	msgs chan string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	p := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifySocket{path: p, conn: c, msgs: make(chan string, 16)}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				close(n.msgs)
				return
			}
			n.msgs <- string(buf[:k])
		}
	}()
	t.Cleanup(func() { c.Close() })
	return n
}

// next returns the next datagram, failing the test when none arrives within timeout.
func (n *notifySocket) next(t *testing.T, what string, timeout time.Duration) string {
	t.Helper()
	select {
	case m := <-n.msgs:
		return m
	case <-time.After(timeout):
		t.Fatalf("no sd_notify datagram (%s) within %v", what, timeout)
		return ""
	}
}

// none fails the test when a datagram is already waiting.
func (n *notifySocket) none(t *testing.T, what string) {
	t.Helper()
	select {
	case m := <-n.msgs:
		t.Fatalf("unexpected sd_notify datagram %q %s", m, what)
	default:
	}
}

func countLines(log, msg string) int {
	n := 0
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, `msg="`+msg+`"`) {
			n++
		}
	}
	return n
}

// TestSystemdNotifyServer runs `kpki server` as systemd would run kpki.service: READY=1
// arrives only once /readyz answers 200; SIGTERM gives STOPPING=1 and one log line.
func TestSystemdNotifyServer(t *testing.T) {
	ns := listenNotify(t)
	s := launch(t, serverSpec{dataDir: t.TempDir(), env: []string{"NOTIFY_SOCKET=" + ns.path}})
	if m := ns.next(t, "READY=1", readyTimeout); m != "READY=1" {
		t.Fatalf("first datagram %q, want READY=1", m)
	}
	code, body, err := s.get("/readyz")
	if err != nil || code != http.StatusOK {
		t.Fatalf("READY=1 sent while /readyz answers %d %q (%v)", code, body, err)
	}
	if n := countLines(s.Stderr(), "kpki server is ready"); n != 1 {
		t.Fatalf("READY=1 sent with %d 'kpki server is ready' lines logged", n)
	}
	ns.none(t, "after READY=1 while running")
	s.Stop(t)
	if m := ns.next(t, "STOPPING=1", stopTimeout); m != "STOPPING=1" {
		t.Fatalf("datagram after SIGTERM %q, want STOPPING=1", m)
	}
	ns.none(t, "after STOPPING=1")
	if n := countLines(s.Stderr(), "kpki server stopping"); n != 1 {
		t.Fatalf("%d 'kpki server stopping' lines after SIGTERM, want 1:\n%s", n, s.tail(20))
	}
}

// TestSystemdNotifyAgent runs `kpki agent` as kpki-agent.service: READY=1 after its first
// successful pass (its certificates are written), STOPPING=1 and one log line on SIGTERM.
func TestSystemdNotifyAgent(t *testing.T) {
	s := startServer(t, t.TempDir())
	s.WaitReady(t)
	ns := listenNotify(t)
	dd := t.TempDir()
	kubelet := filepath.Join(dd, "agent", "client-kubelet.crt")

	stderr := filepath.Join(t.TempDir(), "agent.stderr")
	f, err := os.Create(stderr)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary(t), agentArgs(s, agentToken(t, s), dd)...)
	cmd.Env = cleanEnv([]string{"NOTIFY_SOCKET=" + ns.path})
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); f.Close() }()
	exited := false
	t.Cleanup(func() {
		if !exited {
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(stderr)
			t.Logf("kpki agent stderr:\n%s", b)
		}
	})
	log := func() string { b, _ := os.ReadFile(stderr); return string(b) }

	if m := ns.next(t, "READY=1", readyTimeout); m != "READY=1" {
		t.Fatalf("first datagram %q, want READY=1", m)
	}
	if _, err := os.Stat(kubelet); err != nil {
		t.Fatalf("READY=1 sent before the first pass wrote %s: %v", kubelet, err)
	}
	ns.none(t, "after READY=1 while running")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		exited = true
		if err != nil {
			t.Fatalf("kpki agent after SIGTERM: %v", err)
		}
	case <-time.After(stopTimeout):
		t.Fatalf("kpki agent did not exit within %v of SIGTERM", stopTimeout)
	}
	if m := ns.next(t, "STOPPING=1", stopTimeout); m != "STOPPING=1" {
		t.Fatalf("datagram after SIGTERM %q, want STOPPING=1", m)
	}
	ns.none(t, "after STOPPING=1")
	if n := countLines(log(), "kpki agent stopping"); n != 1 {
		t.Fatalf("%d 'kpki agent stopping' lines after SIGTERM, want 1:\n%s", n, log())
	}
}

// TestMakeInstall stages `make install` in a DESTDIR: binary and units land where the units
// expect them, and an env file already there (it may hold a token) is kept.
func TestMakeInstall(t *testing.T) {
	requireTools(t, "make", "install")
	bin := binary(t)
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	units := filepath.Join(dest, "usr", "local", "lib", "systemd", "system")
	writeFile(t, filepath.Join(units, "kpki.env"), []byte("KPKI_TOKEN=kept\n"), 0o600)
	run(t, root, nil, "make", "-s", "install", "BIN="+bin, "DESTDIR="+dest)
	if got, want := readFile(t, filepath.Join(dest, "usr", "local", "bin", "kpki")), readFile(t, bin); string(got) != string(want) {
		t.Fatal("/usr/local/bin/kpki is not the built binary")
	}
	if m := fileMode(t, filepath.Join(dest, "usr", "local", "bin", "kpki")); m != 0o755 {
		t.Errorf("/usr/local/bin/kpki mode %v, want 0755", m)
	}
	doc := filepath.Join(dest, "usr", "local", "share", "doc", "kpki", "operations.md")
	if got, want := readFile(t, doc), readFile(t, filepath.Join(root, "docs", "operations.md")); string(got) != string(want) {
		t.Errorf("%s is not docs/operations.md, which the units name as their documentation", doc)
	}
	for name := range unitFiles {
		if got, want := readFile(t, filepath.Join(units, name)), readFile(t, unitPath(t, name)); string(got) != string(want) {
			t.Errorf("installed %s differs from dist/systemd/%s", name, name)
		}
	}
	if got := string(readFile(t, filepath.Join(units, "kpki.env"))); got != "KPKI_TOKEN=kept\n" {
		t.Errorf("make install overwrote an existing kpki.env: %q", got)
	}
	agentEnv := filepath.Join(units, "kpki-agent.env")
	if got, want := readFile(t, agentEnv), readFile(t, unitPath(t, "kpki-agent.env")); string(got) != string(want) {
		t.Errorf("kpki-agent.env not installed from dist/systemd")
	}
	if m := fileMode(t, agentEnv); m != 0o600 {
		t.Errorf("kpki-agent.env mode %v, want 0600", m)
	}
}
