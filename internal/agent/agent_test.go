package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

const day = 24 * time.Hour

type fixture struct {
	t     *testing.T
	clock *clock.Fake
	fake  *fakeServer
	dd    string
	cfg   Config
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	f := newFakeServer(t, clk)
	cfg := Defaults()
	cfg.ServerURL = f.URL()
	cfg.Token = f.secureToken()
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	cfg.NodeName = testNode
	return &fixture{t: t, clock: clk, fake: f, dd: cfg.DataDir, cfg: cfg}
}

func (fx *fixture) agent(opts ...func(*Options)) (*Agent, *logBuffer) {
	fx.t.Helper()
	log, buf := newLog(fx.t, fx.fake)
	o := Options{Log: log, Clock: fx.clock}
	for _, f := range opts {
		f(&o)
	}
	a, err := New(fx.cfg, o)
	if err != nil {
		fx.t.Fatal(err)
	}
	return a, buf
}

func (fx *fixture) path(name string) string { return filepath.Join(fx.dd, "agent", name) }

// join runs a first pass and fails the test when it does not succeed.
func (fx *fixture) join() (*Agent, *logBuffer) {
	fx.t.Helper()
	a, buf := fx.agent()
	if _, err := a.RunOnce(context.Background()); err != nil {
		fx.t.Fatalf("first join: %v\nlog:\n%s", err, buf)
	}
	fx.fake.takeRequests()
	return a, buf
}

func agentLeaves() []certs.Leaf { return certs.Select(certs.AgentNode, nil) }

// The CA copies and the kubeconfigs an agent writes, written down apart from the certs
// tables.
const (
	serverCAFile = "server-ca.crt"
	clientCAFile = "client-ca.crt"
)

var agentKubeconfigs = []struct{ File, Leaf string }{
	{"kubelet.kubeconfig", "client-kubelet"},
	{"kubeproxy.kubeconfig", "client-kube-proxy"},
	{"kpkicontroller.kubeconfig", "client-kpki-controller"},
}

// allFiles are the files a joined agent has, relative to <dd>/agent.
func allFiles() []string {
	files := []string{serverCAFile, clientCAFile, NodePasswordFile, LockFile, TrustFile}
	for _, l := range agentLeaves() {
		files = append(files, l.Name+".crt", l.Name+".key")
	}
	for _, k := range agentKubeconfigs {
		files = append(files, k.File)
	}
	slices.Sort(files)
	return files
}

type fileState struct {
	sum   [32]byte
	mode  fs.FileMode
	mtime time.Time
}

func snapshot(t *testing.T, dir string) map[string]fileState {
	t.Helper()
	out := map[string]fileState{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == dir {
				return filepath.SkipDir
			}
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		st := fileState{mode: info.Mode(), mtime: info.ModTime()}
		if !d.IsDir() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			st.sum = sha256.Sum256(b)
		}
		out[rel] = st
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func assertUnchanged(t *testing.T, what string, before, after map[string]fileState) {
	t.Helper()
	for p, b := range before {
		a, ok := after[p]
		switch {
		case !ok:
			t.Errorf("%s: %s was removed", what, p)
		case a != b:
			t.Errorf("%s: %s changed (content, mode or mtime)", what, p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s: %s was created", what, p)
		}
	}
}

func assertNothingWritten(t *testing.T, dd string) {
	t.Helper()
	if _, err := os.Lstat(dd); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the failed agent created %s: %v", dd, snapshot(t, dd))
	}
}

func readCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	list, err := pki.ParseCerts(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return list
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitTicker waits until the agent's loop waits on a ticker of the fake clock.
func waitTicker(t *testing.T, clk *clock.Fake) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for clk.Tickers() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the agent loop never waited for its next tick")
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

type passResult struct {
	res Result
	err error
}

// runLoop starts Run and returns a channel of pass results and a stop function that
// cancels the loop and returns Run's error.
func (fx *fixture) runLoop(a *Agent) (<-chan passResult, func() error) {
	passes := make(chan passResult, 16)
	a.onPass = func(r Result, err error) { passes <- passResult{r, err} }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	return passes, func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			fx.t.Fatal("Run did not return after its context was cancelled")
			return nil
		}
	}
}

func nextPass(t *testing.T, passes <-chan passResult) passResult {
	t.Helper()
	select {
	case p := <-passes:
		return p
	case <-time.After(30 * time.Second):
		t.Fatal("no agent pass happened")
		return passResult{}
	}
}

func TestFirstJoinWritesEveryFile(t *testing.T) {
	fx := newFixture(t)
	fx.cfg.NodeIPs = []string{"10.0.0.5", "fd00::5"}
	a, _ := fx.agent()
	res, err := a.RunOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Issued) != 4 || len(res.Renewed) != 0 {
		t.Errorf("issued %v, renewed %v; want 4 issued", res.Issued, res.Renewed)
	}

	st, err := os.Stat(filepath.Join(fx.dd, "agent"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Errorf("agent dir mode %v, want 0700", st.Mode().Perm())
	}
	entries, err := os.ReadDir(filepath.Join(fx.dd, "agent"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", e.Name(), info.Mode().Perm())
		}
	}
	if !slices.Equal(names, allFiles()) {
		t.Errorf("agent dir holds %v, want %v", names, allFiles())
	}

	pw := strings.TrimSpace(string(readFile(t, fx.path(NodePasswordFile))))
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(pw) {
		t.Errorf("node password %q is not 32 hex characters", pw)
	}
	if got := fx.fake.nodePassword(testNode); got != pw {
		t.Error("the server registered another node password than the one on disk")
	}

	serverCA, clientCA := fx.fake.cas()
	if !bytes.Equal(readFile(t, fx.path(serverCAFile)), serverCA.BundlePEM) || !bytes.Equal(readFile(t, fx.path(clientCAFile)), clientCA.BundlePEM) {
		t.Error("CA bundle files differ from the server's bundles")
	}
	for _, l := range agentLeaves() {
		ca := clientCA
		if l.Signer == certs.ServerCA {
			ca = serverCA
		}
		crtPath, keyPath := fx.path(l.Name+".crt"), fx.path(l.Name+".key")
		crt := readFile(t, crtPath)
		list := readCerts(t, crtPath)
		if err := list[0].CheckSignatureFrom(ca.Cert); err != nil {
			t.Errorf("%s not signed by %s: %v", l.Name, l.Signer, err)
		}
		if !bytes.Equal(crt, certs.BuildCertFile(list[0], ca)) {
			t.Errorf("%s is not the leaf followed by its CA bundle", l.Name)
		}
		key, err := pki.ParseKey(readFile(t, keyPath))
		if err != nil {
			t.Fatal(err)
		}
		if !pki.KeyMatchesCert(key, list[0]) {
			t.Errorf("%s key does not match its certificate", l.Name)
		}
		if !strings.HasPrefix(string(readFile(t, keyPath)), "-----BEGIN EC PRIVATE KEY-----") {
			t.Errorf("%s key is not an EC PRIVATE KEY", l.Name)
		}
		d, err := certs.Plan(l.Profile(certs.Params{NodeName: testNode, NodeIPs: a.nodeIPs}),
			certs.Existing{CertPEM: crt, KeyPEM: readFile(t, keyPath)}, ca, certs.Policy{Now: fx.clock.Now(), RenewBefore: 90 * day})
		if err != nil || d.Action != certs.Keep {
			t.Errorf("%s: planner says %v (%s), %v; want keep", l.Name, d.Action, d.Reason, err)
		}
	}
	serving := readCerts(t, fx.path("serving-kubelet.crt"))[0]
	var ips []string
	for _, ip := range serving.IPAddresses {
		ips = append(ips, ip.String())
	}
	if !slices.Contains(ips, "10.0.0.5") || !slices.Contains(ips, "fd00::5") {
		t.Errorf("serving-kubelet IP SANs %v lack the node IPs", ips)
	}

	reqs := fx.fake.takeRequests()
	if reqs[0].Path != api.PathCACerts || reqs[0].Authorized {
		t.Errorf("first request %s (authorized %v), want an anonymous GET /cacerts", reqs[0].Path, reqs[0].Authorized)
	}
	signs := signingRequests(reqs)
	if len(signs) != 4 {
		t.Fatalf("%d signing requests, want 4", len(signs))
	}
	for _, r := range signs {
		if r.Header.Get("Content-Type") != api.ContentTypeCSR || r.Header.Get(api.HeaderNodeName) != testNode ||
			r.Header.Get(api.HeaderNodePassword) != pw || r.Header.Get(api.HeaderNodeIP) != "10.0.0.5,fd00::5" {
			t.Errorf("%s headers: %v", r.Path, r.Header)
		}
	}

	for _, k := range agentKubeconfigs {
		var kc struct {
			Clusters []struct {
				Cluster map[string]string `json:"cluster"`
			} `json:"clusters"`
			Users []struct {
				User map[string]string `json:"user"`
			} `json:"users"`
		}
		if err := yaml.Unmarshal(readFile(t, fx.path(k.File)), &kc); err != nil {
			t.Fatalf("%s: %v", k.File, err)
		}
		if len(kc.Clusters) != 1 || len(kc.Users) != 1 {
			t.Fatalf("%s: %+v", k.File, kc)
		}
		c, u := kc.Clusters[0].Cluster, kc.Users[0].User
		if c["server"] != "https://127.0.0.1:6443" || c["certificate-authority"] != fx.path(serverCAFile) ||
			u["client-certificate"] != fx.path(k.Leaf+".crt") || u["client-key"] != fx.path(k.Leaf+".key") {
			t.Errorf("%s: cluster %v, user %v", k.File, c, u)
		}
	}
}

func TestSecondPassChangesNothing(t *testing.T) {
	fx := newFixture(t)
	fx.join()
	before := snapshot(t, fx.dd)
	fx.clock.Advance(30 * day)
	a, _ := fx.agent()
	res, err := a.RunOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Written) != 0 || res.Signed() != 0 {
		t.Errorf("second pass result %+v, want nothing done", res)
	}
	if s := signingRequests(fx.fake.takeRequests()); len(s) != 0 {
		t.Errorf("second pass made %d signing requests", len(s))
	}
	assertUnchanged(t, "second pass", before, snapshot(t, fx.dd))
}

func TestLoopRenewsWithSameKey(t *testing.T) {
	fx := newFixture(t)
	a, buf := fx.agent()
	passes, stop := fx.runLoop(a)
	if p := nextPass(t, passes); p.err != nil || len(p.res.Issued) != 4 {
		t.Fatalf("first pass: %+v", p)
	}
	keys := map[string][]byte{}
	expiry := map[string]time.Time{}
	for _, l := range agentLeaves() {
		keys[l.Name] = readFile(t, fx.path(l.Name+".key"))
		expiry[l.Name] = readCerts(t, fx.path(l.Name+".crt"))[0].NotAfter
	}
	fx.fake.takeRequests()

	// A tick outside the renewal window does nothing.
	waitTicker(t, fx.clock)
	fx.clock.Advance(time.Hour)
	if p := nextPass(t, passes); p.err != nil || p.res.Signed() != 0 {
		t.Fatalf("pass outside the window: %+v", p)
	}

	// 365-day certificates renewed 90 days before expiry: day 276 is inside the window.
	waitTicker(t, fx.clock)
	fx.clock.Advance(276 * day)
	p := nextPass(t, passes)
	if p.err != nil || len(p.res.Renewed) != 4 || len(p.res.Issued) != 0 {
		t.Fatalf("pass in the window: %+v", p)
	}
	for _, l := range agentLeaves() {
		if !bytes.Equal(readFile(t, fx.path(l.Name+".key")), keys[l.Name]) {
			t.Errorf("%s: key changed on renewal", l.Name)
		}
		c := readCerts(t, fx.path(l.Name+".crt"))[0]
		if !c.NotAfter.After(expiry[l.Name].Add(270 * day)) {
			t.Errorf("%s: new expiry %v, old %v", l.Name, c.NotAfter, expiry[l.Name])
		}
	}
	if s := signingRequests(fx.fake.takeRequests()); len(s) != 4 {
		t.Errorf("%d signing requests, want 4", len(s))
	}
	if err := stop(); err != nil {
		t.Errorf("Run returned %v after cancel, want nil", err)
	}
	out := buf.String()
	if !strings.Contains(out, "renewed certificate") || !strings.Contains(out, "old-expiry=") || !strings.Contains(out, "new-expiry=") {
		t.Errorf("renewals not logged with old and new expiry:\n%s", out)
	}
}

func TestLoopRetriesFailedPass(t *testing.T) {
	fx := newFixture(t)
	fx.fake.failWith(api.PathClientCA, http.StatusServiceUnavailable, "datastore not ready")
	a, buf := fx.agent()
	passes, stop := fx.runLoop(a)
	p := nextPass(t, passes)
	if p.err == nil || !strings.Contains(p.err.Error(), "datastore not ready") {
		t.Fatalf("first pass error %v, want the server's message", p.err)
	}
	fx.fake.failWith(api.PathClientCA, 0, "")
	waitTicker(t, fx.clock)
	fx.clock.Advance(retryMin)
	if p := nextPass(t, passes); p.err != nil || len(p.res.Issued) != 4 {
		t.Fatalf("retried pass: %+v", p)
	}
	if err := stop(); err != nil {
		t.Error(err)
	}
	if !strings.Contains(buf.String(), "will retry") {
		t.Errorf("failed pass not logged:\n%s", buf)
	}
}

// chainedCAs returns server and client CAs under one intermediate and root, as
// `kpki certificate generate-ca` lays them out.
func chainedCAs(f *fakeServer, root, inter *pki.CA) (*pki.CA, *pki.CA) {
	return f.signedCA(inter, "kpki-server-ca", inter.Cert, root.Cert), f.signedCA(inter, "kpki-client-ca", inter.Cert, root.Cert)
}

func TestCAChangeReissuesLeaves(t *testing.T) {
	fx := newFixture(t)
	root := fx.fake.selfSignedCA("root-ca")
	inter := fx.fake.signedCA(root, "intermediate-ca", root.Cert)
	fx.fake.setCAs(chainedCAs(fx.fake, root, inter))
	fx.cfg.Token = fx.fake.secureToken()
	a, _ := fx.join()
	keys := map[string][]byte{}
	for _, l := range agentLeaves() {
		keys[l.Name] = readFile(t, fx.path(l.Name+".key"))
	}

	// New server and client CAs under the same root: the token's hash does not change.
	newServer, newClient := chainedCAs(fx.fake, root, inter)
	fx.fake.setCAs(newServer, newClient)
	res, err := a.RunOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Renewed) != 4 {
		t.Errorf("renewed %v, want all 4 leaves", res.Renewed)
	}
	if !bytes.Equal(readFile(t, fx.path(serverCAFile)), newServer.BundlePEM) || !bytes.Equal(readFile(t, fx.path(clientCAFile)), newClient.BundlePEM) {
		t.Error("CA files not updated")
	}
	for _, l := range agentLeaves() {
		ca := newClient
		if l.Signer == certs.ServerCA {
			ca = newServer
		}
		if err := readCerts(t, fx.path(l.Name+".crt"))[0].CheckSignatureFrom(ca.Cert); err != nil {
			t.Errorf("%s does not chain to the new CA: %v", l.Name, err)
		}
		if !bytes.Equal(readFile(t, fx.path(l.Name+".key")), keys[l.Name]) {
			t.Errorf("%s: key changed", l.Name)
		}
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return fmt.Sprintf("%x", s[:])
}

// TestUnrelatedNewCARefusedByRunningAgent: the server now presents a certificate of a
// CA that does not chain to the agent's anchor. The TLS handshake of the later /cacerts
// fetch fails: no request reaches the server and no file changes.
func TestUnrelatedNewCARefusedByRunningAgent(t *testing.T) {
	fx := newFixture(t)
	a, _ := fx.join()
	fx.fake.setCAs(fx.fake.selfSignedCA("kpki-server-ca"), fx.fake.selfSignedCA("kpki-client-ca"))
	before := snapshot(t, fx.dd)
	_, err := a.RunOnce(context.Background())
	if err == nil || !strings.Contains(err.Error(), "presented a certificate that the cluster CA did not sign") || !strings.Contains(err.Error(), "kpki token show") {
		t.Fatalf("got %v, want a refused server certificate and the way out", err)
	}
	if rs := fx.fake.takeRequests(); len(rs) != 0 {
		t.Errorf("%d requests reached a server whose certificate the agent does not trust: %+v", len(rs), rs)
	}
	assertUnchanged(t, "refused CA", before, snapshot(t, fx.dd))
}

func TestHashMismatchRefusedBeforeCredentials(t *testing.T) {
	fx := newFixture(t)
	other := fx.fake.selfSignedCA("someone-else")
	wrong, _ := pki.CAHash(other.BundlePEM)
	fx.cfg.Token = token.Format(wrong, "node", agentPassword)
	a, _ := fx.agent()
	_, err := a.RunOnce(context.Background())
	server, _ := fx.fake.cas()
	right, _ := pki.CAHash(server.BundlePEM)
	want := fmt.Sprintf("token CA hash does not match the Cluster CA certificate hash: %s != %s", wrong, right)
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}
	for _, r := range fx.fake.takeRequests() {
		if r.Authorized || r.Path != api.PathCACerts || r.Header.Get(api.HeaderNodePassword) != "" {
			t.Errorf("request %s %s sent credentials (authorized %v) before the CA was checked", r.Method, r.Path, r.Authorized)
		}
	}
	assertNothingWritten(t, fx.dd)
}

func TestShortTokenWarns(t *testing.T) {
	fx := newFixture(t)
	fx.cfg.Token = agentPassword
	a, buf := fx.agent()
	if _, err := a.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "level=WARN") || !strings.Contains(buf.String(), "does not pin the cluster CA") {
		t.Errorf("no warning about the unpinned CA:\n%s", buf)
	}
	for _, r := range fx.fake.takeRequests() {
		if r.Authorized {
			if u, _, _ := (&http.Request{Header: r.Header}).BasicAuth(); u != DefaultUser {
				t.Errorf("%s authenticated as %q, want %q", r.Path, u, DefaultUser)
			}
		}
	}
}

func TestRefusals(t *testing.T) {
	t.Run("wrong token password", func(t *testing.T) {
		fx := newFixture(t)
		tok, _ := token.Parse(fx.cfg.Token)
		fx.cfg.Token = token.Format(tok.CAHash, "node", "not-the-password")
		a, _ := fx.agent()
		_, err := a.RunOnce(context.Background())
		if err == nil || !strings.Contains(err.Error(), "refused the token") || !strings.Contains(err.Error(), "invalid credentials (server error id ") {
			t.Fatalf("got %v", err)
		}
		assertNothingWritten(t, fx.dd)
	})
	t.Run("node name taken", func(t *testing.T) {
		fx := newFixture(t)
		fx.fake.registerNode(testNode, "another-hosts-password")
		a, _ := fx.agent()
		_, err := a.RunOnce(context.Background())
		if err == nil || !strings.Contains(err.Error(), "node node-1 is registered with another node password (server error id ") {
			t.Fatalf("got %v", err)
		}
		if n := len(signingRequests(fx.fake.takeRequests())); n != 1 {
			t.Errorf("%d signing requests after a 403, want 1", n)
		}
		for _, k := range agentKubeconfigs {
			if datadir.Exists(fx.path(k.File)) {
				t.Errorf("%s written by a failed join", k.File)
			}
		}
	})
	t.Run("forbidden on a later leaf", func(t *testing.T) {
		fx := newFixture(t)
		fx.fake.failWith(api.SignPath("client-kube-proxy"), http.StatusBadRequest, "unsupported key type")
		a, _ := fx.agent()
		_, err := a.RunOnce(context.Background())
		if err == nil || !strings.Contains(err.Error(), "POST /v1-kpki/client-kube-proxy.crt") || !strings.Contains(err.Error(), "unsupported key type (server error id ") {
			t.Fatalf("got %v", err)
		}
	})
}

func TestNotAKpkiServer(t *testing.T) {
	html := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/cacerts" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, "<html><body>Welcome to nginx!</body></html>")
	}))
	defer html.Close()
	notFound := httptest.NewTLSServer(http.NotFoundHandler())
	defer notFound.Close()
	plain := httptest.NewServer(http.NotFoundHandler())
	defer plain.Close()
	closed := httptest.NewTLSServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()

	for _, tc := range []struct{ name, url, want string }{
		{"html page", html.URL, "is not a kpki server: GET /cacerts did not return PEM certificates"},
		{"404", notFound.URL, "is not a kpki server: GET /cacerts answered 404"},
		{"plain http", "https://" + strings.TrimPrefix(plain.URL, "http://"), "is not a kpki server: it does not speak TLS"},
		{"unreachable", closedURL, "cannot reach the kpki server at " + closedURL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dd := filepath.Join(t.TempDir(), "data")
			log, _ := newLog(t, nil)
			cfg := Defaults()
			cfg.ServerURL, cfg.Token, cfg.DataDir, cfg.NodeName = tc.url, agentPassword, dd, testNode
			a, err := New(cfg, Options{Log: log})
			if err != nil {
				t.Fatal(err)
			}
			_, err = a.RunOnce(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.url) {
				t.Errorf("error %q does not name %s", err, tc.url)
			}
			assertNothingWritten(t, dd)
		})
	}
}

func TestBadConfig(t *testing.T) {
	hash := strings.Repeat("a", 64)
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"garbage token", func(c *Config) { c.Token = "K10zzz" }, "--token: invalid token format"},
		{"short hash", func(c *Config) { c.Token = "K10abc::node:pw" }, "--token: invalid token CA hash length"},
		{"no token", func(c *Config) { c.Token = "" }, "--token is required"},
		{"no server", func(c *Config) { c.ServerURL = "" }, "--server is required"},
		{"http server", func(c *Config) { c.ServerURL = "http://127.0.0.1:9345" }, `--server "http://127.0.0.1:9345" must look like https://host:port`},
		{"bad node name", func(c *Config) { c.NodeName = "node_1" }, `node name "node_1" is not a valid DNS name`},
		{"bad node ip", func(c *Config) { c.NodeIPs = []string{"10.0.0.1,10.0.0.300"} }, `--node-ip "10.0.0.300" is not an IP address`},
		{"bad port", func(c *Config) { c.APIServerPort = 70000 }, "--api-server-port 70000 is not a port number"},
		{"bad interval", func(c *Config) { c.RenewInterval = 0 }, "--renew-interval 0s must be positive"},
		{"negative CA check", func(c *Config) { c.CACheckInterval = -time.Second }, "--ca-check-interval -1s must not be negative (0 turns the CA check off)"},
		{"CA check above the renew interval", func(c *Config) { c.RenewInterval, c.CACheckInterval = 30*time.Second, time.Minute },
			"--ca-check-interval 1m0s must not be longer than --renew-interval 30s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Defaults()
			cfg.ServerURL = "https://127.0.0.1:9345"
			cfg.Token = token.Format(hash, "node", "pw")
			cfg.DataDir = filepath.Join(t.TempDir(), "data")
			cfg.NodeName = testNode
			tc.edit(&cfg)
			_, err := New(cfg, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "pw") && tc.name != "http server" {
				t.Errorf("error %q may hold the token password", err)
			}
			assertNothingWritten(t, cfg.DataDir)
		})
	}

	cfg := Defaults()
	cfg.ServerURL, cfg.Token, cfg.DataDir, cfg.NodeName = "https://[::1]:9345/", hash, t.TempDir(), "Node-A.Example"
	a, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if a.NodeName() != "node-a.example" || a.apiServer != "https://[::1]:6443" || a.base.String() != "https://[::1]:9345" {
		t.Errorf("node %q, api server %q, base %q", a.NodeName(), a.apiServer, a.base)
	}
}

func TestForceRestartRemoved(t *testing.T) {
	fx := newFixture(t)
	a, _ := fx.join()
	marker := filepath.Join(fx.dd, "force-restart")
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// `certificate rotate` deleted the kubelet client pair: it is issued with a new key.
	os.Remove(fx.path("client-kubelet.crt"))
	os.Remove(fx.path("client-kubelet.key"))
	res, err := a.RunOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Issued, []string{fx.path("client-kubelet.crt")}) {
		t.Errorf("issued %v", res.Issued)
	}
	if datadir.Exists(marker) {
		t.Error("force-restart still exists after a successful pass")
	}
}

func TestLockHeld(t *testing.T) {
	fx := newFixture(t)
	fx.join()
	l, err := datadir.Lock(fx.path(LockFile))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	a, _ := fx.agent()
	if _, err := a.RunOnce(context.Background()); !errors.Is(err, datadir.ErrLocked) {
		t.Errorf("RunOnce with the lock held: %v", err)
	}
	if err := a.Run(context.Background()); !errors.Is(err, datadir.ErrLocked) {
		t.Errorf("Run with the lock held: %v", err)
	}
	if n := len(fx.fake.takeRequests()); n != 0 {
		t.Errorf("%d requests made while the lock was held", n)
	}
}

func TestRebundleSignsNothing(t *testing.T) {
	fx := newFixture(t)
	a, _ := fx.join()
	crt := fx.path("client-kube-proxy.crt")
	leaf := readCerts(t, crt)[0]
	if err := os.WriteFile(crt, pki.EncodeCert(leaf), 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := a.RunOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Signed() != 0 || !slices.Equal(res.Rebundled, []string{crt}) {
		t.Errorf("result %+v, want only %s rebundled", res, crt)
	}
	_, clientCA := fx.fake.cas()
	if !bytes.Equal(readFile(t, crt), certs.BuildCertFile(leaf, clientCA)) {
		t.Error("bundle not restored")
	}
}

func TestCorruptKeyIsReported(t *testing.T) {
	fx := newFixture(t)
	a, _ := fx.join()
	key := fx.path("serving-kubelet.key")
	if err := os.WriteFile(key, []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := a.RunOnce(context.Background())
	if err == nil || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "--service kubelet") {
		t.Fatalf("got %v", err)
	}
	if string(readFile(t, key)) != "garbage\n" {
		t.Error("corrupt key replaced")
	}
}

func TestShortValidityWarns(t *testing.T) {
	fx := newFixture(t)
	fx.fake.setValidity(30 * day)
	_, buf := fx.join()
	if !strings.Contains(buf.String(), "renew again at its next pass") {
		t.Errorf("no warning about certificates shorter than the renewal window:\n%s", buf)
	}
}

func TestNodePasswordKept(t *testing.T) {
	fx := newFixture(t)
	if err := os.MkdirAll(filepath.Join(fx.dd, "agent"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fx.path(NodePasswordFile), []byte("0123456789abcdef0123456789abcdef\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fx.join()
	if got := fx.fake.nodePassword(testNode); got != "0123456789abcdef0123456789abcdef" {
		t.Errorf("server got node password %q", got)
	}
	if st, _ := os.Stat(fx.path(NodePasswordFile)); st.Mode().Perm() != 0o600 {
		t.Errorf("node-password mode %v, want 0600", st.Mode().Perm())
	}

	if err := os.WriteFile(fx.path(NodePasswordFile), []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, _ := fx.agent()
	if _, err := a.RunOnce(context.Background()); err == nil || !strings.Contains(err.Error(), fx.path(NodePasswordFile)) {
		t.Errorf("empty node password: %v", err)
	}
}

func TestServerCAEndpointsDisagree(t *testing.T) {
	fx := newFixture(t)
	a, _ := fx.agent()
	other := fx.fake.selfSignedCA("other")
	current, _ := fx.fake.cas()
	fx.fake.override(api.PathServerCA, func(w http.ResponseWriter, r *http.Request) {
		w.Write(append(append([]byte{}, current.BundlePEM...), other.BundlePEM...))
	})
	_, err := a.RunOnce(context.Background())
	if err == nil || !strings.Contains(err.Error(), "different server CA bundles") {
		t.Fatalf("got %v", err)
	}
	assertNothingWritten(t, fx.dd)
}

// TestDefaultNodeIPOnLoopback checks that without --node-ip an agent reaching its server
// over loopback claims no node IP: the address is not one other hosts can reach it by,
// and the server refuses a loopback address that is its own.
func TestDefaultNodeIPOnLoopback(t *testing.T) {
	fx := newFixture(t)
	fx.cfg.NodeIPs = nil
	a, _ := fx.agent()
	if _, err := a.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	signs := signingRequests(fx.fake.takeRequests())
	if len(signs) != 4 {
		t.Fatalf("%d signing requests, want 4", len(signs))
	}
	for _, r := range signs {
		if got, ok := r.Header[http.CanonicalHeaderKey(api.HeaderNodeIP)]; ok {
			t.Errorf("%s: %s = %q, want no node IP claimed for a loopback route", r.Path, api.HeaderNodeIP, got)
		}
	}
}

// TestDefaultNodeIPs checks which route addresses the agent claims by default.
func TestDefaultNodeIPs(t *testing.T) {
	for route, want := range map[string]string{
		"10.0.0.7": "10.0.0.7", "192.168.1.20": "192.168.1.20", "2001:db8::7": "2001:db8::7", "fd00::5": "fd00::5",
		"127.0.0.1": "", "127.0.0.5": "", "::1": "", "169.254.3.4": "", "fe80::1": "", "0.0.0.0": "",
	} {
		got := defaultNodeIPs(net.ParseIP(route))
		if want == "" {
			if got != nil {
				t.Errorf("defaultNodeIPs(%s) = %v, want none", route, got)
			}
			continue
		}
		if len(got) != 1 || got[0].String() != want {
			t.Errorf("defaultNodeIPs(%s) = %v, want [%s]", route, got, want)
		}
	}
	if got := defaultNodeIPs(nil); got != nil {
		t.Errorf("defaultNodeIPs(nil) = %v", got)
	}
}
