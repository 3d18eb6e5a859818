package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
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
)

// TestSeedPageVerbatim runs the shell blocks of the seed page (testdata/certificate-management.txt,
// a copy of seed/certificate-management.txt) as written, against kpki's default paths: the data
// dir /var/lib/rancher/kpki and the config file /etc/rancher/kpki/config.yaml, with neither
// --data-dir nor --config on any command line. The blocks are read from the page; the only
// changes made to them are rke2 → kpki, `curl -sL <K3s repo>/<script>` → `cat testdata/<script>`
// (the openssl versions of the two K3s scripts, written for this project: gen-custom-ca.sh and
// rotate-default-ca.sh), and the page's `<SERVICE>,<SERVICE>` placeholder filled in. The page's
// prose steps are run as the commands it names: `systemctl restart kpki` after a rotate-ca, and
// for a new root the custom-CA rotation block without the copy of the old root, with rotate-ca
// refused and then run with `--force`. Between the page's procedures the walks also run kpki's
// own commands at the defaults: `certificate check`, `token show`, `token rotate`,
// `certificate cross-sign-ca` and the rotate-ca command it prints, and a `certificate rotate`
// without the stop. After each step the outcome is checked the way seed_test.go does: openssl
// chains, the bootstrap record in etcd, token files and printed tokens, re-issued leaves, the
// service-account keys.
//
// Default paths without touching the host: each walk runs in a private mount namespace
// (`unshare --mount --propagation private`, held open by a sleeping process). In it /etc,
// /var/lib, /opt and /usr/local are overlays whose upper layers are throw-away directories, and
// /var/lib/rancher, /etc/rancher and /opt/kpki are bind mounts of plain temporary directories,
// which the test reads from outside. The page's commands and the server enter the namespace
// with nsenter. kpki is installed in it as docs/operations.md says (`make install`: the binary
// under test as /usr/local/bin/kpki, the units and env files in /usr/local/lib/systemd/system).
// The host's paths are checked to be unchanged while the namespace is live and after it is
// gone. The test is skipped when a mount namespace cannot be made (not root, no CAP_SYS_ADMIN).
//
// systemctl: systemd's service manager starts units in its own mount namespace, the host's, so a
// real `systemctl start kpki` would write the host's /var/lib/rancher. The page's commands
// therefore find on PATH a systemctl that hands `start`, `stop`, `restart`, `is-active`,
// `enable [--now]` and `daemon-reload` to the test, which runs the installed kpki.service the
// way systemd does: the unit file found first in systemd's unit directories of the namespace,
// its EnvironmentFile= files, its ExecStart inside the namespace with systemd's PATH,
// Type=notify (the start returns when READY=1 arrives on NOTIFY_SOCKET, and fails when kpki
// exits first), KillMode=process (stop sends SIGTERM to the main process). It is stricter than
// systemd in one way: a stop after which kpki did not send STOPPING=1 and exit 0 fails.
func TestSeedPageVerbatim(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "bash", "unshare", "nsenter", "make", "install")
	if os.Geteuid() != 0 {
		t.Skip("the seed page is walked at the default paths in a private mount namespace, which needs root")
	}
	if out, err := exec.Command("unshare", "--mount", "--propagation", "private", "true").CombinedOutput(); err != nil {
		t.Skipf("no private mount namespace can be made here (%v: %s); the seed page cannot be walked at the default paths", err, bytes.TrimSpace(out))
	}
	page := loadSeedPage(t)
	var skipped atomic.Bool
	t.Run("walks", func(t *testing.T) {
		for name, walk := range map[string]func(*testing.T, *seedPage){"self-signed CAs": walkSelfSigned, "custom CAs": walkCustomCA} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				t.Cleanup(func() {
					if t.Skipped() {
						skipped.Store(true)
					}
				})
				walk(t, page)
			})
		}
	})
	if !t.Failed() && !skipped.Load() {
		page.assertAllRun(t)
	}
}

// ---------------------------------------------------------------------------------------------
// The page

const seedPageFile = "testdata/certificate-management.txt"

// pageCommands are the first words of the page's shell lines; with the "# " comment lines they
// make up its command blocks. Every other non-blank line is prose and ends a block.
var pageCommands = map[string]bool{"systemctl": true, "rke2": true, "mkdir": true, "cp": true, "curl": true, "openssl": true, "cat": true}

// k3sScripts maps the K3s scripts the page fetches to their openssl versions in testdata.
var k3sScripts = map[string]string{
	"generate-custom-ca-certs.sh": "testdata/gen-custom-ca.sh",
	"rotate-default-ca-certs.sh":  "testdata/rotate-default-ca.sh",
}

var pageCurlRE = regexp.MustCompile(`curl -sL https://github\.com/k3s-io/k3s/raw/master/contrib/util/([A-Za-z0-9.-]+)`)

type seedPage struct {
	text    string
	blocks  [][]string // as on the page
	scripts map[string]string

	mu   sync.Mutex
	used map[int]bool
}

func loadSeedPage(t *testing.T) *seedPage {
	t.Helper()
	text := string(readFile(t, seedPageFile))
	p := &seedPage{text: text, blocks: parsePageBlocks(text), scripts: map[string]string{}, used: map[int]bool{}}
	for name, rel := range k3sScripts {
		abs, err := filepath.Abs(rel)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(abs); err != nil {
			t.Fatalf("%s, which stands for the page's %s, is missing: %v", rel, name, err)
		}
		p.scripts[name] = abs
	}
	// The page's procedures: rotate (all, --service), custom CAs (first start, rotation),
	// self-signed CA rotation, service-account key rotation. A page with other blocks needs
	// this test to follow it.
	if len(p.blocks) != 6 {
		t.Fatalf("%s: %d command blocks, want the page's 6:\n%s", seedPageFile, len(p.blocks), p.dump())
	}
	return p
}

func parsePageBlocks(text string) [][]string {
	var blocks [][]string
	var cur []string
	for _, line := range strings.Split(text, "\n") {
		l := strings.TrimSpace(line)
		first, _, _ := strings.Cut(l, " ")
		switch {
		case l == "":
			// Blank lines separate the commands of a block.
		case strings.HasPrefix(l, "# ") || pageCommands[first]:
			cur = append(cur, l)
		default:
			if len(cur) > 0 {
				blocks = append(blocks, cur)
			}
			cur = nil
		}
	}
	if len(cur) > 0 {
		blocks = append(blocks, cur)
	}
	return blocks
}

func (p *seedPage) dump() string {
	var b strings.Builder
	for i, bl := range p.blocks {
		fmt.Fprintf(&b, "block %d:\n  %s\n", i+1, strings.Join(bl, "\n  "))
	}
	return b.String()
}

// block returns the lines of the one page block holding the line marker (page wording, rke2),
// with rke2 read as kpki and the K3s scripts taken from testdata.
func (p *seedPage) block(t *testing.T, marker string) []string {
	t.Helper()
	idx := -1
	for i, bl := range p.blocks {
		if slices.Contains(bl, marker) {
			if idx >= 0 {
				t.Fatalf("two blocks of the page hold %q", marker)
			}
			idx = i
		}
	}
	if idx < 0 {
		t.Fatalf("no block of the page holds %q:\n%s", marker, p.dump())
	}
	p.mu.Lock()
	p.used[idx] = true
	p.mu.Unlock()
	var out []string
	for _, l := range p.blocks[idx] {
		out = append(out, p.asKpki(t, l))
	}
	return out
}

// rotatableServices returns the page's list of the certificates that can be rotated, read as
// kpki, comma-separated as --service takes it.
func (p *seedPage) rotatableServices(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`The following certificates can be rotated:\s*\n\s*([a-z0-9, -]+)\.`).FindStringSubmatch(p.text)
	if m == nil {
		t.Fatalf("%s has no list of the certificates that can be rotated", seedPageFile)
	}
	return strings.ReplaceAll(strings.ReplaceAll(m[1], " ", ""), "rke2", "kpki")
}

// asKpki is the page line l with rke2 read as kpki and `curl -sL <K3s script URL>` replaced by
// `cat <its testdata version>`, so that `| PRODUCT=kpki bash -` and the rest stay as written.
func (p *seedPage) asKpki(t *testing.T, l string) string {
	t.Helper()
	l = pageCurlRE.ReplaceAllStringFunc(l, func(m string) string {
		name := pageCurlRE.FindStringSubmatch(m)[1]
		local, ok := p.scripts[name]
		if !ok {
			t.Fatalf("the page fetches %s, which has no version in testdata", name)
		}
		return "cat " + local
	})
	if strings.Contains(l, "curl ") {
		t.Fatalf("page line %q still fetches something after the substitution", l)
	}
	return strings.ReplaceAll(l, "rke2", "kpki")
}

func (p *seedPage) assertAllRun(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, bl := range p.blocks {
		if !p.used[i] {
			t.Errorf("block %d of the page was not run:\n  %s", i+1, strings.Join(bl, "\n  "))
		}
	}
}

// script joins lines into one bash script, leaving out the lines that contain one of drop.
func script(lines []string, drop ...string) string {
	var keep []string
	for _, l := range lines {
		if !slices.ContainsFunc(drop, func(d string) bool { return strings.Contains(l, d) }) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n") + "\n"
}

// lineWith returns the one line of lines that contains s.
func lineWith(t *testing.T, lines []string, s string) string {
	t.Helper()
	var found []string
	for _, l := range lines {
		if strings.Contains(l, s) {
			found = append(found, l)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d lines of the block hold %q, want one:\n  %s", len(found), s, strings.Join(lines, "\n  "))
	}
	return found[0]
}

// ---------------------------------------------------------------------------------------------
// The scratch root: a private mount namespace

const (
	nsDataDir    = "/var/lib/rancher/kpki"
	nsConfigFile = "/etc/rancher/kpki/config.yaml"
	nsStage      = "/opt/kpki"
	systemdPATH  = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// nsSetup runs as `unshare --mount --propagation private bash -c nsSetup _ <scratch>`.
const nsSetup = `set -eu
S=$1
for d in /etc /var/lib /opt /usr/local; do
  n=$(printf '%s' "$d" | tr / _)
  mkdir -p "$S/overlay/$n/upper" "$S/overlay/$n/work"
  mount -t overlay overlay -o "lowerdir=$d,upperdir=$S/overlay/$n/upper,workdir=$S/overlay/$n/work" "$d"
done
for m in var-lib-rancher:/var/lib/rancher etc-rancher:/etc/rancher opt-kpki:/opt/kpki; do
  mkdir -p "${m#*:}"
  mount --bind "$S/${m%%:*}" "${m#*:}"
done
echo ready
exec sleep infinity
`

// hostPaths are the host paths the walks use inside their namespaces; none may change.
var hostPaths = []string{
	"/var/lib/rancher", "/etc/rancher", "/opt/kpki", "/usr/local/bin/kpki", "/usr/local/lib/systemd/system",
	"/usr/local/share/doc/kpki", "/etc/systemd/system/kpki.service",
	"/etc/ssl/certs/root-ca.pem", "/etc/ssl/certs/intermediate-ca.pem", "/etc/ssl/private/intermediate-ca.key",
}

func hostState(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range hostPaths {
		info, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			out[p] = "absent"
		case err != nil:
			t.Fatal(err)
		case info.IsDir():
			tree := hashTree(t, p)
			keys := make([]string, 0, len(tree))
			for k := range tree {
				keys = append(keys, k+"="+tree[k])
			}
			sort.Strings(keys)
			out[p] = fmt.Sprintf("dir %v [%s]", info.Mode(), strings.Join(keys, " "))
		case info.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out[p] = "symlink -> " + target
		default:
			out[p] = fmt.Sprintf("file %v sha256:%x", info.Mode(), sha256.Sum256(readFile(t, p)))
		}
	}
	return out
}

func assertHostUnchanged(t *testing.T, when string, before map[string]string) {
	t.Helper()
	after := hostState(t)
	for _, p := range hostPaths {
		if before[p] != after[p] {
			t.Errorf("%s: the host's %s changed: %s -> %s", when, p, before[p], after[p])
		}
	}
}

// pageHost is one mount namespace with the page's default paths, the systemctl the page's
// commands use in it, and the kpki.service runs it made.
type pageHost struct {
	scratch string // host dir holding the bind-mounted dirs and the overlays' upper layers
	sockDir string // short host dir for the unix sockets
	shimDir string // on PATH first inside the namespace: systemctl
	nsMnt   string // /proc/<holder>/ns/mnt
	nsRoot  string // /proc/<holder>/root
	ports   serverPorts

	mu    sync.Mutex
	runs  []*unitRun
	calls []string
}

type unitRun struct {
	srv    *kpkiServer
	unit   string // the unit file it was started from
	env    []string
	notify *net.UnixConn
	msgs   chan string
}

// newPageHost makes the namespace and the systemctl the page's commands find in it.
func newPageHost(t *testing.T) *pageHost {
	t.Helper()
	hostBefore := hostState(t)
	t.Cleanup(func() { assertHostUnchanged(t, "after the namespace is gone", hostBefore) })

	h := &pageHost{scratch: t.TempDir(), ports: newServerPorts(t, loopback)}
	for _, d := range []string{"var-lib-rancher", "etc-rancher", "opt-kpki", "shim"} {
		if err := os.MkdirAll(filepath.Join(h.scratch, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	h.shimDir = filepath.Join(h.scratch, "shim")
	sockDir, err := os.MkdirTemp("", "kpki-ns-")
	if err != nil {
		t.Fatal(err)
	}
	h.sockDir = sockDir
	t.Cleanup(func() { os.RemoveAll(sockDir) })

	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "bash", "-c", nsSetup, "ns-setup", h.scratch)
	cmd.Env = cleanEnv(nil)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	cmd.Stdout = pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	pw.Close()
	if err != nil {
		t.Fatalf("unshare: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(pr).ReadString('\n')
		line <- l
	}()
	select {
	case l := <-line:
		if l != "ready\n" {
			err := <-exited
			if strings.Contains(stderr.String(), "unshare failed") && strings.Contains(stderr.String(), "Operation not permitted") {
				t.Skipf("no private mount namespace can be made here (%v: %s); the seed page cannot be walked at the default paths", err, strings.TrimSpace(stderr.String()))
			}
			t.Fatalf("setting up the mount namespace failed (%v):\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		t.Fatalf("the mount namespace was not set up within 30s:\n%s", stderr.String())
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	pid := strconv.Itoa(cmd.Process.Pid)
	h.nsMnt = "/proc/" + pid + "/ns/mnt"
	h.nsRoot = "/proc/" + pid + "/root"
	// Cleanups run last-registered first: the servers stop before the namespace goes.
	t.Cleanup(func() { h.killAll(t) })

	l, err := net.Listen("unix", filepath.Join(sockDir, "systemctl"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go h.serveSystemctl(l)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	shim := fmt.Sprintf("#!/bin/sh\n# systemctl for TestSeedPageVerbatim: hands the request to the test, which runs kpki.service.\n%s=%s exec %s \"$@\"\n",
		systemctlShimEnv, shellQuote(filepath.Join(sockDir, "systemctl")), shellQuote(self))
	writeFile(t, filepath.Join(h.shimDir, "systemctl"), []byte(shim), 0o755)

	// The namespace shows the default paths, backed by the scratch dirs; the host does not.
	writeFile(t, filepath.Join(h.scratch, "etc-rancher", ".probe"), []byte("probe\n"), 0o600)
	if r := h.sh(t, "test -f /etc/rancher/.probe && test -d /var/lib/rancher && test -d /opt/kpki"); r.code != 0 {
		t.Fatalf("the namespace does not show the scratch dirs at the default paths:\n%s", r)
	}
	if err := os.Remove(filepath.Join(h.scratch, "etc-rancher", ".probe")); err != nil {
		t.Fatal(err)
	}
	assertHostUnchanged(t, "with the namespace set up", hostBefore)
	t.Cleanup(func() { assertHostUnchanged(t, "with the namespace live", hostBefore) })
	return h
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// host maps a path inside the namespace to the host path that holds it.
func (h *pageHost) host(t *testing.T, nsPath string) string {
	t.Helper()
	for prefix, dir := range map[string]string{"/var/lib/rancher": "var-lib-rancher", "/etc/rancher": "etc-rancher", "/opt/kpki": "opt-kpki"} {
		if nsPath == prefix || strings.HasPrefix(nsPath, prefix+"/") {
			return filepath.Join(h.scratch, dir, strings.TrimPrefix(nsPath, prefix))
		}
	}
	t.Fatalf("%s is not under a bind-mounted dir of the namespace", nsPath)
	return ""
}

// install runs docs/operations.md's `make install` (as root, no DESTDIR) in the namespace
// and checks that /usr/local/bin/kpki there is the binary under test.
func (h *pageHost) install(t *testing.T) {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := binary(t)
	if r := h.sh(t, fmt.Sprintf("make -s -C %s install BIN=%s", shellQuote(root), shellQuote(bin))); r.code != 0 {
		t.Fatalf("make install in the namespace:\n%s", r)
	}
	a, b := readFile(t, h.nsRoot+"/usr/local/bin/kpki"), readFile(t, bin)
	if !bytes.Equal(a, b) {
		t.Fatalf("/usr/local/bin/kpki in the namespace is not the binary under test")
	}
	if !bytes.Equal(readFile(t, h.nsRoot+installedUnit), readFile(t, unitPath(t, "kpki.service"))) {
		t.Fatalf("%s in the namespace is not dist/systemd/kpki.service", installedUnit)
	}
}

// installedUnit is where `make install` puts kpki.service.
const installedUnit = "/usr/local/lib/systemd/system/kpki.service"

// dataDir is the host path of /var/lib/rancher/kpki.
func (h *pageHost) dataDir(t *testing.T) string { return h.host(t, nsDataDir) }

// writeConfig writes /etc/rancher/kpki/config.yaml, as an operator installing kpki does: the
// harness's loopback ports (the suite runs in parallel) and the node name of serverLeaves.
func (h *pageHost) writeConfig(t *testing.T, extra string) {
	t.Helper()
	writeFile(t, h.host(t, nsConfigFile), fmt.Appendf(nil, `node-name: %s
bind-address: %s
advertise-address: %s
supervisor-port: %d
etcd-client-port: %d
etcd-peer-port: %d
api-server-port: %d
metrics-address: ""
%s`, nodeName, loopback, loopback, h.ports.Supervisor, h.ports.EtcdClient, h.ports.EtcdPeer, h.ports.APIServer, extra), 0o600)
}

// clearStage empties /opt/kpki, as an operator does once a staged rotation is loaded.
func (h *pageHost) clearStage(t *testing.T) {
	t.Helper()
	dir := h.host(t, nsStage)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
}

// sh runs script with bash -e -o pipefail inside the namespace, as an operator's root shell.
func (h *pageHost) sh(t *testing.T, script string) cmdResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "--mount="+h.nsMnt, "--wd=/", "--", "bash", "-e", "-o", "pipefail", "-c", script)
	cmd.Env = cleanEnv([]string{"PATH=" + h.shimDir + ":" + systemdPATH, "HOME=/root"})
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	began := time.Now()
	err := cmd.Run()
	took := time.Since(began).Round(time.Millisecond)
	r := cmdResult{args: []string{"(in the namespace)", script}, stdout: stdout.String(), stderr: stderr.String()}
	if ctx.Err() != nil {
		t.Fatalf("the commands did not finish within %v:\n%s", cmdTimeout, r)
	}
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("nsenter: %v", err)
		}
		r.code = ee.ExitCode()
	}
	t.Logf("ran in the namespace (exit code %d, %v):\n  %s", r.code, took, strings.ReplaceAll(strings.TrimSpace(script), "\n", "\n  "))
	return r
}

// page runs commands of the page, which must all succeed, without a kpki warning.
func (h *pageHost) page(t *testing.T, script string) cmdResult {
	t.Helper()
	r := h.sh(t, script)
	if r.code != 0 {
		t.Fatalf("the page's commands fail when run as written:\n%s%s", r, h.lastLog())
	}
	if strings.Contains(r.stderr, "kpki: warning") {
		t.Errorf("the page's commands print a kpki warning:\n%s", r)
	}
	return r
}

// server returns the running kpki.service process.
func (h *pageHost) server(t *testing.T) *kpkiServer {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.runs) == 0 || h.runs[len(h.runs)-1].srv.exited() {
		t.Fatalf("kpki.service is not running; systemctl calls: %q%s", h.calls, h.lastLogLocked())
	}
	run := h.runs[len(h.runs)-1]
	if run.unit != installedUnit || !slices.Equal(run.srv.Args, []string{"/usr/local/bin/kpki", "server"}) {
		t.Fatalf("kpki runs as %q from %s, want /usr/local/bin/kpki server from %s", run.srv.Args, run.unit, installedUnit)
	}
	for _, kv := range run.env {
		if strings.HasPrefix(kv, "KPKI_DATA_DIR=") || strings.HasPrefix(kv, "KPKI_CONFIG=") {
			t.Fatalf("kpki.service runs with %s; the walk is of the default paths", kv)
		}
	}
	return run.srv
}

func (h *pageHost) lastLog() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lastLogLocked()
}

func (h *pageHost) lastLogLocked() string {
	if len(h.runs) == 0 {
		return ""
	}
	s := h.runs[len(h.runs)-1].srv
	return fmt.Sprintf("\nlast kpki.service run, stderr tail:\n%s", s.tail(30))
}

func (h *pageHost) killAll(t *testing.T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.runs {
		if !r.srv.exited() {
			_ = r.srv.cmd.Process.Kill()
			<-r.srv.done
		}
		r.notify.Close()
	}
	if t.Failed() && len(h.runs) > 0 {
		t.Logf("systemctl calls: %q%s", h.calls, h.lastLogLocked())
	}
}

// ---------------------------------------------------------------------------------------------
// systemctl

const systemctlShimEnv = "KPKI_E2E_SYSTEMCTL"

type shimRequest struct {
	Args []string `json:"args"`
}

type shimResponse struct {
	Code   int    `json:"code"`
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
}

// systemctlShim is the test binary run as systemctl (TestMain): it sends its arguments to the
// test listening on sock and prints the answer.
func systemctlShim(sock string, args []string) int {
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, "systemctl (e2e):", err)
		return 1
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Minute))
	if err := json.NewEncoder(c).Encode(shimRequest{Args: args}); err != nil {
		fmt.Fprintln(os.Stderr, "systemctl (e2e):", err)
		return 1
	}
	var resp shimResponse
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		fmt.Fprintln(os.Stderr, "systemctl (e2e):", err)
		return 1
	}
	fmt.Fprint(os.Stdout, resp.Stdout)
	fmt.Fprint(os.Stderr, resp.Stderr)
	return resp.Code
}

func (h *pageHost) serveSystemctl(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(3 * time.Minute))
			var req shimRequest
			if err := json.NewDecoder(c).Decode(&req); err != nil {
				return
			}
			_ = json.NewEncoder(c).Encode(h.systemctl(req.Args))
		}()
	}
}

func (h *pageHost) systemctl(args []string) shimResponse {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, strings.Join(args, " "))
	var flags, words []string
	for _, a := range args {
		if strings.HasPrefix(a, "-") {
			flags = append(flags, a)
		} else {
			words = append(words, a)
		}
	}
	const usage = "systemctl (e2e): want start|stop|restart|is-active|enable [--now] kpki, or daemon-reload\n"
	if len(words) == 0 {
		return shimResponse{Code: 1, Stderr: usage}
	}
	verb, units := words[0], words[1:]
	now := slices.Equal(flags, []string{"--now"})
	if len(flags) > 0 && (verb != "enable" || !now) {
		return shimResponse{Code: 1, Stderr: fmt.Sprintf("systemctl (e2e): %q with %v is not handled\n", verb, flags)}
	}
	if verb == "daemon-reload" {
		// Units are read at each start.
		return shimResponse{}
	}
	if len(units) == 0 {
		return shimResponse{Code: 1, Stderr: usage}
	}
	for _, u := range units {
		if u != "kpki" && u != "kpki.service" {
			return shimResponse{Code: 1, Stderr: fmt.Sprintf("systemctl (e2e): only kpki.service is handled, not %s\n", u)}
		}
	}
	var err error
	switch verb {
	case "start":
		err = h.startLocked()
	case "stop":
		err = h.stopLocked()
	case "restart":
		if err = h.stopLocked(); err == nil {
			err = h.startLocked()
		}
	case "enable":
		// WantedBy=multi-user.target means nothing here; --now starts the unit.
		if _, err = h.loadUnitLocked(); err == nil && now {
			err = h.startLocked()
		}
	case "is-active":
		if h.activeLocked() {
			return shimResponse{Stdout: "active\n"}
		}
		return shimResponse{Code: 3, Stdout: "inactive\n"}
	default:
		return shimResponse{Code: 1, Stderr: fmt.Sprintf("systemctl (e2e): verb %q is not handled\n", verb)}
	}
	if errors.Is(err, errNoUnit) {
		return shimResponse{Code: 5, Stderr: fmt.Sprintf("Failed to %s kpki.service: Unit kpki.service not found.\n", verb)}
	}
	if err != nil {
		return shimResponse{Code: 1, Stderr: "Job for kpki.service failed: " + err.Error() + "\n"}
	}
	return shimResponse{}
}

// systemdUnitDirs are the unit directories systemd searches, in its order.
var systemdUnitDirs = []string{"/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"}

var errNoUnit = errors.New("unit not found")

type serviceUnit struct {
	path      string
	execStart []string
	envFiles  []string // "-" prefix kept: the file may be missing
}

// loadUnitLocked reads kpki.service from the first unit directory of the namespace that holds
// it and checks that it is what this systemctl runs.
func (h *pageHost) loadUnitLocked() (*serviceUnit, error) {
	for _, dir := range systemdUnitDirs {
		path := dir + "/kpki.service"
		data, err := os.ReadFile(h.nsRoot + path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		unit, err := parseUnitText(string(data))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		svc := unit["Service"]
		if len(svc["ExecStart"]) != 1 || strings.Join(svc["Type"], ",") != "notify" || strings.Join(svc["KillMode"], ",") != "process" {
			return nil, fmt.Errorf("%s: ExecStart %q Type %q KillMode %q; this systemctl runs one ExecStart, Type=notify, KillMode=process", path, svc["ExecStart"], svc["Type"], svc["KillMode"])
		}
		u := &serviceUnit{path: path, execStart: strings.Fields(svc["ExecStart"][0])}
		for _, f := range svc["EnvironmentFile"] {
			u.envFiles = append(u.envFiles, strings.ReplaceAll(f, "%N", "kpki"))
		}
		return u, nil
	}
	return nil, errNoUnit
}

// parseUnitText returns the directives of a unit file as section -> key -> values.
func parseUnitText(text string) (map[string]map[string][]string, error) {
	out := map[string]map[string][]string{}
	section := ""
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
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
				return nil, fmt.Errorf("line %q is not key=value inside a section", line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	return out, nil
}

// unitEnv reads the unit's EnvironmentFile= files in the namespace: KEY=VALUE lines, # and ;
// comments, values optionally in quotes. A file named with a "-" prefix may be missing.
func (h *pageHost) unitEnv(u *serviceUnit) ([]string, error) {
	var env []string
	for _, f := range u.envFiles {
		optional := strings.HasPrefix(f, "-")
		f = strings.TrimPrefix(f, "-")
		data, err := os.ReadFile(h.nsRoot + f)
		if optional && errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("EnvironmentFile %s: %w", f, err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
				continue
			}
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				return nil, fmt.Errorf("EnvironmentFile %s: line %q is not KEY=VALUE", f, line)
			}
			if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
				v = v[1 : len(v)-1]
			}
			env = append(env, strings.TrimSpace(k)+"="+v)
		}
	}
	return env, nil
}

func (h *pageHost) activeLocked() bool {
	return len(h.runs) > 0 && !h.runs[len(h.runs)-1].srv.exited()
}

// startLocked runs kpki.service's ExecStart in the namespace and waits for READY=1.
func (h *pageHost) startLocked() error {
	if h.activeLocked() {
		return nil
	}
	unit, err := h.loadUnitLocked()
	if err != nil {
		return err
	}
	unitEnv, err := h.unitEnv(unit)
	if err != nil {
		return err
	}
	n := len(h.runs) + 1
	notifyPath := filepath.Join(h.sockDir, fmt.Sprintf("notify-%d", n))
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		return err
	}
	msgs := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:k])
		}
	}()
	s := &kpkiServer{
		DataDir: filepath.Join(h.scratch, "var-lib-rancher", "kpki"),
		IP:      loopback,
		Ports:   h.ports,
		Args:    unit.execStart,
		stderr:  filepath.Join(h.scratch, fmt.Sprintf("kpki-%d.stderr", n)),
		stdout:  filepath.Join(h.scratch, fmt.Sprintf("kpki-%d.stdout", n)),
		done:    make(chan struct{}),
	}
	errFile, err := os.Create(s.stderr)
	if err != nil {
		conn.Close()
		return err
	}
	outFile, err := os.Create(s.stdout)
	if err != nil {
		errFile.Close()
		conn.Close()
		return err
	}
	cmd := exec.Command("nsenter", append([]string{"--mount=" + h.nsMnt, "--wd=/", "--"}, unit.execStart...)...)
	cmd.Env = append([]string{"PATH=" + systemdPATH, "LANG=C.UTF-8", "NOTIFY_SOCKET=" + notifyPath}, unitEnv...)
	cmd.Stdout, cmd.Stderr = outFile, errFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		errFile.Close()
		outFile.Close()
		conn.Close()
		return err
	}
	s.cmd = cmd
	go func() {
		err := cmd.Wait()
		errFile.Close()
		outFile.Close()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				s.exitCode = ee.ExitCode()
			} else {
				s.exitCode = -1
			}
		}
		close(s.done)
	}()
	h.runs = append(h.runs, &unitRun{srv: s, unit: unit.path, env: cmd.Env, notify: conn, msgs: msgs})
	deadline := time.After(readyTimeout)
	for {
		select {
		case m, ok := <-msgs:
			if ok && m == "READY=1" {
				return nil
			}
			if !ok {
				return errors.New("the notify socket closed before READY=1")
			}
		case <-s.done:
			return fmt.Errorf("kpki exited with code %d before READY=1; stderr tail:\n%s", s.exitCode, s.tail(30))
		case <-deadline:
			_ = cmd.Process.Kill()
			<-s.done
			return fmt.Errorf("no READY=1 within %v; stderr tail:\n%s", readyTimeout, s.tail(30))
		}
	}
}

// stopLocked sends SIGTERM to the main process (KillMode=process) and waits for it.
func (h *pageHost) stopLocked() error {
	if len(h.runs) == 0 {
		return nil
	}
	r := h.runs[len(h.runs)-1]
	s := r.srv
	if s.exited() {
		if s.exitCode != 0 {
			return fmt.Errorf("kpki had exited with code %d; stderr tail:\n%s", s.exitCode, s.tail(30))
		}
		return nil
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-s.done:
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("kpki did not exit within %v of SIGTERM", stopTimeout)
	}
	stopping := false
	for !stopping {
		select {
		case m, ok := <-r.msgs:
			if !ok {
				return errors.New("the notify socket closed")
			}
			stopping = m == "STOPPING=1"
		case <-time.After(time.Second):
			return fmt.Errorf("kpki exited without sending STOPPING=1; stderr tail:\n%s", s.tail(10))
		}
	}
	r.notify.Close()
	if s.exitCode != 0 {
		return fmt.Errorf("kpki exited with code %d after SIGTERM; stderr tail:\n%s", s.exitCode, s.tail(30))
	}
	if n := countLines(s.Stderr(), "kpki server stopping"); n != 1 {
		return fmt.Errorf("kpki logged %d 'kpki server stopping' lines on SIGTERM, want 1", n)
	}
	return nil
}

// ---------------------------------------------------------------------------------------------
// Checks after a step

// started checks the kpki.service run started by the page: /readyz over TLS verified with the
// server CA, the default data dir in use, the disk and the bootstrap record in agreement, every
// leaf chaining to its CA in the record.
func (h *pageHost) started(t *testing.T) (*kpkiServer, bootstrapRecord) {
	t.Helper()
	s := h.server(t)
	s.WaitReady(t)
	if !strings.Contains(s.Stderr(), "data-dir="+nsDataDir) {
		t.Errorf("the server does not say it uses the default data dir %s:\n%s", nsDataDir, s.tail(5))
	}
	rec, _ := currentRecord(t, s)
	assertDiskMatchesRecord(t, s.DataDir, rec)
	assertLeavesChainToRecord(t, s, rec)
	return s, rec
}

// tokenShow runs `kpki token show` and returns the one server and the one agent token it prints.
func (h *pageHost) tokenShow(t *testing.T) (string, string) {
	t.Helper()
	r := h.page(t, "kpki token show")
	servers := printedServerTokenRE.FindAllString(r.stdout, -1)
	agents := printedAgentTokenRE.FindAllString(r.stdout, -1)
	if len(servers) != 1 || len(agents) != 1 {
		t.Fatalf("token show prints %d server and %d agent tokens, want one of each:\n%s", len(servers), len(agents), r)
	}
	return servers[0], agents[0]
}

// assertTokens checks that the token files and `kpki token show` hold server and agent.
func (h *pageHost) assertTokens(t *testing.T, what, server, agent string) {
	t.Helper()
	dd := h.dataDir(t)
	for _, f := range []string{"token", "node-token"} {
		if got := readTokenFile(t, dd, f); got != server {
			t.Errorf("%s: %s/server/%s %q, want %q", what, nsDataDir, f, redact(got), redact(server))
		}
	}
	if got := readTokenFile(t, dd, "agent-token"); got != agent {
		t.Errorf("%s: %s/server/agent-token %q, want %q", what, nsDataDir, redact(got), redact(agent))
	}
	gotServer, gotAgent := h.tokenShow(t)
	if gotServer != server || gotAgent != agent {
		t.Errorf("%s: token show prints %q and %q, want %q and %q", what, redact(gotServer), redact(gotAgent), redact(server), redact(agent))
	}
}

type pageCheckReport struct {
	Certificates []struct {
		File   string `json:"filename"`
		Index  int    `json:"index"`
		SHA256 string `json:"sha256"`
		Status string `json:"status"`
	} `json:"certificates"`
	Summary struct {
		Total  int            `json:"total"`
		Counts map[string]int `json:"counts"`
	} `json:"summary"`
}

// assertCheck runs `kpki certificate check` (table and json) with the defaults: it reports the
// leaves of the default data dir as they are on disk, all OK.
func (h *pageHost) assertCheck(t *testing.T, s *kpkiServer) {
	t.Helper()
	r := h.page(t, "kpki certificate check")
	if r.stderr != "" || !strings.HasPrefix(lastLine(r.stdout), "summary:") {
		t.Errorf("certificate check: want nothing on stderr and a summary line last:\n%s", r)
	}
	r = h.page(t, "kpki certificate check -o json")
	var rep pageCheckReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("certificate check -o json: %v\n%s", err, r)
	}
	if rep.Summary.Total == 0 || rep.Summary.Counts["OK"] != rep.Summary.Total {
		t.Errorf("certificate check: summary %+v, want every certificate OK", rep.Summary)
	}
	for _, l := range serverLeaves(s.IP) {
		leaf := readCerts(t, filepath.Join(s.TLSDir(), l.file+".crt"))[0]
		sum := sha256.Sum256(leaf.Raw)
		found := false
		for _, c := range rep.Certificates {
			if c.File == "server/tls/"+l.file+".crt" && c.Index == 0 {
				found = true
				if c.SHA256 != hex.EncodeToString(sum[:]) || c.Status != "OK" {
					t.Errorf("certificate check reports %s as %s %s, want the leaf on disk %x, OK", c.File, c.SHA256, c.Status, sum)
				}
			}
		}
		if !found {
			t.Errorf("certificate check does not report server/tls/%s.crt", l.file)
		}
	}
}

// backupOf checks the `certificates backed up to <dir>` line of a rotate run between from and
// to and returns the host path of the backup, a copy of oldTLS.
func (h *pageHost) backupOf(t *testing.T, r cmdResult, oldTLS map[string]string, from, to time.Time) {
	t.Helper()
	m := backedUpRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("certificate rotate does not say where it backed up the certificates:\n%s", r)
	}
	if filepath.Dir(m[1]) != nsDataDir+"/server" {
		t.Errorf("backup dir %s is not in %s/server", m[1], nsDataDir)
	}
	bm := regexp.MustCompile(`^tls-([0-9]+)(-[0-9]+)?$`).FindStringSubmatch(filepath.Base(m[1]))
	if bm == nil {
		t.Errorf("backup dir %s is not named tls-<unix seconds>", m[1])
	} else if secs, _ := strconv.ParseInt(bm[1], 10, 64); secs < from.Unix() || secs > to.Unix() {
		t.Errorf("backup dir %s is not named after the time of the rotation (%d … %d)", m[1], from.Unix(), to.Unix())
	}
	if d := treeDiff(oldTLS, hashTree(t, h.host(t, m[1]))); len(d) > 0 {
		t.Errorf("backup %s is not a copy of the old server/tls:\n  %s", m[1], strings.Join(d, "\n  "))
	}
}

// sameRecordCAs checks that the CA fields of two bootstrap records are the same.
func sameRecordCAs(t *testing.T, what string, a, b bootstrapRecord) {
	t.Helper()
	for field := range bootstrapFiles {
		if field != "PasswdFile" && !bytes.Equal(a[field].Content, b[field].Content) {
			t.Errorf("%s changed %s in the bootstrap record", what, field)
		}
	}
}

// ---------------------------------------------------------------------------------------------
// The walks

// walkSelfSigned: first start with generated CAs, certificate check, "Rotating Client and
// Server Certificates Manually" (all, then --service), "Rotating Self-Signed CA Certificates"
// with the rotate script, "Service-Account Issuer Key Rotation", and a token rotation.
func walkSelfSigned(t *testing.T, p *seedPage) {
	h := newPageHost(t)
	dd := h.dataDir(t)
	tlsDir := filepath.Join(dd, "server", "tls")
	rotateBlock := p.block(t, "systemctl stop rke2")
	stop := lineWith(t, rotateBlock, "systemctl stop")
	start := lineWith(t, rotateBlock, "systemctl start")
	if stop != "systemctl stop kpki" || start != "systemctl start kpki" {
		t.Fatalf("the page stops and starts with %q and %q", stop, start)
	}

	// Installed and enabled as docs/operations.md says; configured in the default config file.
	h.install(t)
	h.writeConfig(t, "")
	h.page(t, "systemctl daemon-reload\nsystemctl enable --now kpki\n")
	s, _ := h.started(t)
	t.Run("first start", func(t *testing.T) {
		for _, l := range serverLeaves(s.IP) {
			checkLeaf(t, tlsDir, l)
		}
		server, agent := h.tokenShow(t)
		h.assertTokens(t, "first start", server, agent)
		h.assertCheck(t, s)
	})

	// An operator who skips the stop is told to run it.
	t.Run("certificate rotate while kpki runs", func(t *testing.T) {
		b := takeBaseline(t, s)
		r := h.sh(t, lineWith(t, rotateBlock, "certificate rotate"))
		assertRefused(t, r, anyOf(stop))
		b.assertUnchanged(t, s, "certificate rotate while kpki runs")
	})

	// Rotating Client and Server Certificates Manually: the whole block.
	oldLeaves := snapshotLeaves(t, s)
	oldTLS := hashTree(t, tlsDir)
	oldCAs := readAll(t, tlsDir, customCAFiles)
	recBefore, _ := currentRecord(t, s)
	from := time.Now()
	r := h.page(t, script(rotateBlock))
	to := time.Now()
	s, rec := h.started(t)
	t.Run("certificate rotate", func(t *testing.T) {
		h.backupOf(t, r, oldTLS, from, to)
		for _, l := range serverLeaves(s.IP) {
			if leaf := checkLeaf(t, tlsDir, l); samePublicKey(leaf, oldLeaves[l.file].cert) {
				t.Errorf("%s was re-issued with its old key", l.file)
			}
		}
		for f, b := range readAll(t, tlsDir, customCAFiles) {
			if !bytes.Equal(b, oldCAs[f]) {
				t.Errorf("certificate rotate changed the CA file %s", f)
			}
		}
		sameRecordCAs(t, "certificate rotate", recBefore, rec)
		if _, err := os.Stat(filepath.Join(dd, "force-restart")); err == nil {
			t.Errorf("%s/force-restart is still there after the start", nsDataDir)
		}
		h.assertCheck(t, s)
	})

	// Individual certificates: the page's line with two of its services, read as kpki.
	const services = "kpki-controller,kpki-server"
	want := []string{"client-kpki-controller", "serving-supervisor"}
	serviceLine := p.block(t, "rke2 certificate rotate --service <SERVICE>,<SERVICE>")[0]
	if !strings.Contains(serviceLine, "<SERVICE>,<SERVICE>") {
		t.Fatalf("page line %q has no <SERVICE>,<SERVICE> placeholder", serviceLine)
	}
	serviceLine = strings.Replace(serviceLine, "<SERVICE>,<SERVICE>", services, 1)
	t.Run("every service the page lists is accepted", func(t *testing.T) {
		all := p.rotatableServices(t)
		if !strings.Contains(","+all+",", ",kpki-server,") || !strings.Contains(","+all+",", ",kpki-controller,") {
			t.Fatalf("the page's list %q lacks kpki-server or kpki-controller", all)
		}
		before := hashTree(t, dd)
		r := h.page(t, "kpki certificate rotate --dry-run --service "+all)
		for _, l := range serverLeaves(s.IP) {
			// client-supervisor is kpki's own "supervisor" service (SPEC §2), not on the page.
			listed := l.file != "client-supervisor"
			if got := strings.Contains(r.stdout, "/"+l.file+".crt\n"); got != listed {
				t.Errorf("the dry run of the page's services: rotates %s %v, want %v:\n%s", l.file, got, listed, r)
			}
		}
		assertTreeUnchanged(t, "certificate rotate --dry-run", before, hashTree(t, dd))
	})
	oldLeaves = snapshotLeaves(t, s)
	oldTLS = hashTree(t, tlsDir)
	from = time.Now()
	r = h.page(t, stop+"\n"+serviceLine+"\n"+start+"\n")
	to = time.Now()
	s, _ = h.started(t)
	t.Run("certificate rotate --service "+services, func(t *testing.T) {
		h.backupOf(t, r, oldTLS, from, to)
		for _, l := range serverLeaves(s.IP) {
			cur := snapshotLeaves(t, s)[l.file]
			old := oldLeaves[l.file]
			switch {
			case slices.Contains(want, l.file):
				if checkLeaf(t, tlsDir, l); samePublicKey(cur.cert, old.cert) {
					t.Errorf("%s was not re-issued with a new key", l.file)
				}
			case !bytes.Equal(cur.crt, old.crt) || !bytes.Equal(cur.key, old.key):
				t.Errorf("%s changed; --service %s rotates only %v", l.file, services, want)
			}
		}
		for f, b := range readAll(t, tlsDir, customCAFiles) {
			if !bytes.Equal(b, oldCAs[f]) {
				t.Errorf("certificate rotate --service changed the CA file %s", f)
			}
		}
	})

	// Rotating Self-Signed CA Certificates: the rotate script and rotate-ca, then a restart.
	caBlock := p.block(t, "rke2 certificate rotate-ca --path=/var/lib/rancher/rke2/server/rotate-ca")
	stage := h.host(t, nsDataDir+"/server/rotate-ca")
	previousRoots := map[string]*x509.Certificate{}
	for _, ca := range caFiles {
		previousRoots[ca+".crt"] = readCerts(t, filepath.Join(tlsDir, ca+".crt"))[0]
	}
	oldLeaves = snapshotLeaves(t, s)
	b := takeBaseline(t, s)
	from = time.Now()
	r = h.page(t, script(caBlock))
	to = time.Now()
	assertRotateCASaved(t, r)
	scriptServer := regexp.MustCompile(`Updated server token:\s+(\S+)`).FindStringSubmatch(r.stdout)
	scriptAgent := regexp.MustCompile(`Updated agent token:\s+(\S+)`).FindStringSubmatch(r.stdout)
	if scriptServer == nil || scriptAgent == nil {
		t.Fatalf("the rotate script does not print the updated tokens:\n%s", r)
	}
	t.Run("rotate script and rotate-ca", func(t *testing.T) {
		printedServer := regexp.MustCompile(`(?m)^server token: (\S+)$`).FindStringSubmatch(r.stdout)
		printedAgent := regexp.MustCompile(`(?m)^agent token: (\S+)$`).FindStringSubmatch(r.stdout)
		if printedServer == nil || printedAgent == nil || printedServer[1] != scriptServer[1] || printedAgent[1] != scriptAgent[1] {
			t.Errorf("rotate-ca does not print the tokens the rotate script printed:\n%s", r)
		}
		rec, _ := currentRecord(t, s)
		assertRecordHoldsStaged(t, rec, stage, from, to)
		// The running server applies the new CAs live: its PKI files change, nothing else
		// but the staging dir.
		waitLiveApplied(t, s, rec)
		assertDiskMatchesRecord(t, dd, rec)
		for _, d := range treeDiff(b.tree, hashTree(t, dd)) {
			if !liveApplyChange(d) && !strings.HasPrefix(d, "added server/rotate-ca") {
				t.Errorf("the rotate script or rotate-ca changed the data dir outside server/rotate-ca and the PKI files: %s", d)
			}
		}
		for _, ca := range caFiles {
			bundle := readCerts(t, filepath.Join(stage, "tls", ca+".crt"))
			if len(bundle) != 4 || !bundle[3].Equal(previousRoots[ca+".crt"]) || bundle[2].CheckSignatureFrom(previousRoots[ca+".crt"]) != nil || !selfSigned(bundle[1]) {
				t.Errorf("%s/server/rotate-ca/tls/%s.crt is not new CA, new root, new root cross-signed by the current root, current root", nsDataDir, ca)
			}
		}
	})
	staged := readAll(t, filepath.Join(stage, "tls"), customCAFiles)
	h.page(t, "systemctl restart kpki")
	s, _ = h.started(t)
	t.Run("restart after rotate-ca", func(t *testing.T) {
		h.assertTokens(t, "after the rotate script, rotate-ca and a restart", scriptServer[1], scriptAgent[1])
		bundle := readCerts(t, filepath.Join(tlsDir, "server-ca.crt"))
		hash := tokenCAHash(t, scriptServer[1])
		if !slices.ContainsFunc(bundle, func(c *x509.Certificate) bool { return selfSigned(c) && derHash(c) == hash }) {
			t.Errorf("the script's token CA hash %s is not the SHA-256 of a root of the new server-ca.crt", hash)
		}
		for f, b := range staged {
			if !bytes.Equal(readFile(t, filepath.Join(tlsDir, f)), b) {
				t.Errorf("%s on disk is not the staged file after the restart", f)
			}
		}
		assertReissuedUnderNewCAs(t, s, oldLeaves, false)
		assertServesNewCA(t, s)
		// The continuous chain of trust: a client trusting only the previous root verifies
		// every new leaf through the cross-signed new root.
		assertTrustedByPreviousRoots(t, s, previousRoots)
	})

	// Service-Account Issuer Key Rotation: the whole block, then a restart.
	saBlock := p.block(t, "cat /var/lib/rancher/rke2/server/tls/service.key >> /opt/rke2/server/tls/service.key")
	current := filepath.Join(tlsDir, "service.key")
	oldKeys := readKeys(t, current)
	oldLeaves = snapshotLeaves(t, s)
	oldCAs = readAll(t, tlsDir, customCAFiles[:len(customCAFiles)-1])
	tokenBefore := readTokenFile(t, dd, "token")
	before := hashTree(t, dd)
	from = time.Now()
	r = h.page(t, script(saBlock))
	to = time.Now()
	assertRotateCASaved(t, r)
	stagedKey := h.host(t, nsStage+"/server/tls/service.key")
	t.Run("service-account key rotate-ca", func(t *testing.T) {
		rec, _ := currentRecord(t, s)
		assertRecordHoldsStaged(t, rec, h.host(t, nsStage+"/server"), from, to)
		waitServiceKeyApplied(t, s, rec)
		for _, d := range treeDiff(before, hashTree(t, dd)) {
			if !strings.HasPrefix(d, "changed server/tls/service.key ") && !strings.HasPrefix(d, "changed server/tls/service.current.key ") {
				t.Errorf("rotate-ca of service.key changed more than the service-account keys: %s", d)
			}
		}
	})
	h.page(t, "systemctl restart kpki")
	s, _ = h.started(t)
	t.Run("restart after the service-account key rotation", func(t *testing.T) {
		if !bytes.Equal(readFile(t, current), readFile(t, stagedKey)) {
			t.Errorf("service.key on disk is not the staged file")
		}
		keys := readKeys(t, current)
		newKey := readKeys(t, stagedKey)[0]
		if len(keys) != len(oldKeys)+1 || !keyMatches(keys[0].signer.Public(), newKey.signer) || !keyMatches(keys[1].signer.Public(), oldKeys[0].signer) {
			t.Errorf("service.key holds %d keys, want the new key followed by the %d old one(s)", len(keys), len(oldKeys))
		}
		if cur := readKeys(t, filepath.Join(tlsDir, "service.current.key")); len(cur) != 1 || !keyMatches(cur[0].signer.Public(), newKey.signer) {
			t.Errorf("service.current.key is not the new first key of service.key")
		}
		for f, b := range readAll(t, tlsDir, customCAFiles[:len(customCAFiles)-1]) {
			if !bytes.Equal(b, oldCAs[f]) {
				t.Errorf("the CA file %s changed", f)
			}
		}
		for name, o := range snapshotLeaves(t, s) {
			if !bytes.Equal(o.crt, oldLeaves[name].crt) || !bytes.Equal(o.key, oldLeaves[name].key) {
				t.Errorf("%s changed; a service-account key rotation leaves the leaves alone", name)
			}
		}
		if got := readTokenFile(t, dd, "token"); got != tokenBefore {
			t.Errorf("the token changed")
		}
	})
	h.clearStage(t)

	// Token rotation with the defaults: the printed token, the token files and token show agree.
	oldToken := readTokenFile(t, dd, "token")
	agent := readTokenFile(t, dd, "agent-token")
	recBefore, _ = currentRecord(t, s)
	r = h.page(t, "kpki token rotate")
	printed := printedServerTokenRE.FindAllString(r.stdout, -1)
	if len(printed) != 1 || printed[0] == oldToken {
		t.Fatalf("token rotate prints %d server tokens, want the one new token:\n%s", len(printed), r)
	}
	newToken := printed[0]
	t.Run("token rotate", func(t *testing.T) {
		if tokenCAHash(t, newToken) != tokenCAHash(t, oldToken) {
			t.Errorf("token rotate changed the CA hash")
		}
		h.assertTokens(t, "after token rotate", newToken, agent)
		keys := bootstrapKeys(t, s)
		v, ok := keys[bootstrapKey(passphrase(newToken))]
		if !ok || len(keys) != 1 {
			t.Fatalf("bootstrap keys %v, want only the new token's %s", keyNames(keys), bootstrapKey(passphrase(newToken)))
		}
		if _, err := decryptBootstrap(passphrase(oldToken), v.value); err == nil {
			t.Errorf("the record still decrypts with the old password")
		}
		rec := decodeRecord(t, passphrase(newToken), v.value)
		sameRecordCAs(t, "token rotate", recBefore, rec)
		passwd := readFile(t, filepath.Join(dd, "server", "cred", "passwd"))
		if !bytes.Equal(rec["PasswdFile"].Content, passwd) {
			t.Errorf("the record's PasswdFile is not cred/passwd")
		}
	})
	h.page(t, "systemctl restart kpki")
	s, _ = h.started(t)
	t.Run("restart after token rotate", func(t *testing.T) {
		h.assertTokens(t, "after token rotate and a restart", newToken, agent)
		if keys := bootstrapKeys(t, s); len(keys) != 1 {
			t.Errorf("bootstrap keys %v, want one", keyNames(keys))
		}
	})

	// kpki's own cross-signing, and the rotate-ca command it prints, run as printed.
	r = h.page(t, "kpki certificate cross-sign-ca")
	next := regexp.MustCompile(`(?m)^\s*(kpki certificate rotate-ca --path=\S+.*)$`).FindStringSubmatch(r.stdout)
	csServer := regexp.MustCompile(`Updated server token:\s+(\S+)`).FindStringSubmatch(r.stdout)
	csAgent := regexp.MustCompile(`Updated agent token:\s+(\S+)`).FindStringSubmatch(r.stdout)
	if next == nil || csServer == nil || csAgent == nil {
		t.Fatalf("cross-sign-ca does not print the rotate-ca command and the updated tokens:\n%s", r)
	}
	if tokenCAHash(t, csAgent[1]) != tokenCAHash(t, csServer[1]) || passphrase(csServer[1]) != passphrase(newToken) || passphrase(csAgent[1]) != passphrase(agent) {
		t.Errorf("cross-sign-ca prints tokens %q and %q, want the current passwords under one new CA hash", redact(csServer[1]), redact(csAgent[1]))
	}
	r = h.page(t, next[1])
	assertRotateCASaved(t, r)
	if !strings.Contains(r.stdout, "server token: "+csServer[1]+"\n") || !strings.Contains(r.stdout, "agent token: "+csAgent[1]+"\n") {
		t.Errorf("rotate-ca does not print the tokens cross-sign-ca printed:\n%s", r)
	}
	h.page(t, "systemctl restart kpki")
	h.started(t)
	t.Run("restart after cross-sign-ca", func(t *testing.T) {
		h.assertTokens(t, "after cross-sign-ca, rotate-ca and a restart", csServer[1], csAgent[1])
	})
	h.page(t, stop)
}

// walkCustomCA: "Using Custom CA Certificates" with an existing root and intermediate in
// /etc/ssl, first start, "Rotating Custom CA Certificates" under the same root, then a new root
// with --force.
func walkCustomCA(t *testing.T, p *seedPage) {
	h := newPageHost(t)
	dd := h.dataDir(t)
	tlsDir := filepath.Join(dd, "server", "tls")

	// The operator's existing root and intermediate, where the page assumes them.
	m := existingRoot(t)
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "root-ca.pem"), m.rootPEM, 0o644)
	writeFile(t, filepath.Join(src, "intermediate-ca.pem"), m.interPEM, 0o644)
	writeFile(t, filepath.Join(src, "intermediate-ca.key"), m.interKey, 0o600)
	if r := h.sh(t, fmt.Sprintf(`install -m 0644 %[1]s/root-ca.pem %[1]s/intermediate-ca.pem /etc/ssl/certs/
install -m 0600 %[1]s/intermediate-ca.key /etc/ssl/private/
`, shellQuote(src))); r.code != 0 {
		t.Fatalf("placing the existing root and intermediate in /etc/ssl:\n%s", r)
	}
	root := readCerts(t, filepath.Join(src, "root-ca.pem"))[0]
	inter := readCerts(t, filepath.Join(src, "intermediate-ca.pem"))[0]

	h.page(t, script(p.block(t, "mkdir -p /var/lib/rancher/rke2/server/tls")))
	t.Run("custom CA files", func(t *testing.T) {
		if !bytes.Equal(readFile(t, filepath.Join(tlsDir, "root-ca.pem")), m.rootPEM) || !bytes.Equal(readFile(t, filepath.Join(tlsDir, "intermediate-ca.pem")), m.interPEM) {
			t.Errorf("root-ca.pem and intermediate-ca.pem in %s/server/tls are not the copies from /etc/ssl", nsDataDir)
		}
		for _, ca := range caFiles {
			b := readCerts(t, filepath.Join(tlsDir, ca+".crt"))
			if len(b) != 3 || !b[1].Equal(inter) || !b[2].Equal(root) || b[0].CheckSignatureFrom(inter) != nil {
				t.Errorf("%s.crt is not a CA signed by the existing intermediate, followed by it and the root", ca)
			}
		}
	})
	generated := readAll(t, tlsDir, customCAFiles)

	// Installed, the token set in the unit's env file, configured, started.
	h.install(t)
	const password = "seed-page-custom-ca-secret"
	if r := h.sh(t, "echo KPKI_TOKEN="+password+" >> /usr/local/lib/systemd/system/kpki.env"); r.code != 0 {
		t.Fatalf("setting the token in kpki.env:\n%s", r)
	}
	h.writeConfig(t, "")
	h.page(t, "systemctl start kpki")
	s, _ := h.started(t)
	t.Run("first start on the custom CAs", func(t *testing.T) {
		if got := readTokenFile(t, dd, "token"); got != "K10"+derHash(root)+"::server:"+password {
			t.Errorf("token %q, want K10<existing root hash>::server:<KPKI_TOKEN of kpki.env>", redact(got))
		}
		for f, b := range readAll(t, tlsDir, customCAFiles) {
			if !bytes.Equal(b, generated[f]) {
				t.Errorf("%s is not the file the script made: the custom CAs were not used", f)
			}
		}
		if got := tokenCAHash(t, readTokenFile(t, dd, "token")); got != derHash(root) {
			t.Errorf("token CA hash %s, want the SHA-256 of the existing root %s", got, derHash(root))
		}
		for _, l := range serverLeaves(s.IP) {
			checkLeaf(t, tlsDir, l)
			if certs := readCerts(t, filepath.Join(tlsDir, l.file+".crt")); !certs[len(certs)-1].Equal(root) {
				t.Errorf("%s.crt does not end with the existing root", l.file)
			}
		}
	})

	// Rotating Custom CA Certificates under the same root: the whole block, then a restart.
	customBlock := p.block(t, "cp /var/lib/rancher/rke2/server/tls/root-ca.* /var/lib/rancher/rke2/server/tls/intermediate-ca.* /opt/rke2/server/tls")
	tokenBefore := readTokenFile(t, dd, "token")
	agentBefore := readTokenFile(t, dd, "agent-token")
	oldLeaves := snapshotLeaves(t, s)
	b := takeBaseline(t, s)
	from := time.Now()
	r := h.page(t, script(customBlock))
	to := time.Now()
	assertRotateCASaved(t, r)
	stageServer := h.host(t, nsStage+"/server")
	t.Run("custom CA rotate-ca", func(t *testing.T) {
		rec, _ := currentRecord(t, s)
		assertRecordHoldsStaged(t, rec, stageServer, from, to)
		waitLiveApplied(t, s, rec)
		assertDiskMatchesRecord(t, dd, rec)
		for _, d := range treeDiff(b.tree, hashTree(t, dd)) {
			if !liveApplyChange(d) {
				t.Errorf("rotate-ca changed the data dir outside the PKI files: %s", d)
			}
		}
	})
	staged := readAll(t, filepath.Join(stageServer, "tls"), customCAFiles)
	h.page(t, "systemctl restart kpki")
	s, _ = h.started(t)
	t.Run("restart after the custom CA rotation", func(t *testing.T) {
		for f, b := range staged {
			if !bytes.Equal(readFile(t, filepath.Join(tlsDir, f)), b) {
				t.Errorf("%s on disk is not the staged file after the restart", f)
			}
		}
		h.assertTokens(t, "after a rotation under the same root", tokenBefore, agentBefore)
		assertReissuedUnderNewCAs(t, s, oldLeaves, true)
		assertServesNewCA(t, s)
	})

	// A new root: the same block without copying the old root and intermediate, so the script
	// makes a new root; rotate-ca is refused, and accepted with --force as the page says.
	h.clearStage(t)
	rootCopy := lineWith(t, customBlock, "/root-ca.* ")
	rotateLine := lineWith(t, customBlock, "certificate rotate-ca --path=")
	h.page(t, script(customBlock, rootCopy, rotateLine))
	newRoot := readCerts(t, filepath.Join(stageServer, "tls", "root-ca.pem"))[0]
	if newRoot.Equal(root) {
		t.Fatalf("the script reused the old root")
	}
	t.Run("new root without --force", func(t *testing.T) {
		b := takeBaseline(t, s)
		r := h.sh(t, rotateLine)
		assertRefused(t, r, anyOf("--force"), anyOf("chain"))
		b.assertUnchanged(t, s, "rotate-ca with a new root without --force")
		// "If the rotate-ca command returns an error, check the service log for errors."
		id := regexp.MustCompile(`server error id ([0-9a-f]+)`).FindStringSubmatch(r.stderr)
		if id == nil {
			t.Fatalf("the refusal names no server error id to look up in the service log:\n%s", r)
		}
		logged := false
		for _, line := range strings.Split(s.Stderr(), "\n") {
			logged = logged || (strings.Contains(line, "id="+id[1]) && strings.Contains(line, "chain"))
		}
		if !logged {
			t.Errorf("the service log has no line with id=%s giving the failed checks:\n%s", id[1], s.tail(10))
		}
	})
	oldLeaves = snapshotLeaves(t, s)
	r = h.page(t, rotateLine+" --force")
	assertRotateCASaved(t, r)
	newServer := "K10" + derHash(newRoot) + "::server:" + passphrase(tokenBefore)
	newAgent := "K10" + derHash(newRoot) + "::node:" + passphrase(agentBefore)
	if !strings.Contains(r.stdout, newServer+"\n") || !strings.Contains(r.stdout, newAgent+"\n") {
		t.Errorf("rotate-ca --force does not print the new tokens K10<new root hash>::<user>:<password>:\n%s", r)
	}
	h.page(t, "systemctl restart kpki")
	s, _ = h.started(t)
	t.Run("restart after rotate-ca --force", func(t *testing.T) {
		h.assertTokens(t, "after rotate-ca --force and a restart", newServer, newAgent)
		assertReissuedUnderNewCAs(t, s, oldLeaves, true)
		for _, l := range serverLeaves(s.IP) {
			if certs := readCerts(t, filepath.Join(tlsDir, l.file+".crt")); !certs[len(certs)-1].Equal(newRoot) {
				t.Errorf("%s.crt does not end with the new root", l.file)
			}
		}
		assertServesNewCA(t, s)
	})
	h.page(t, "systemctl stop kpki")
}
