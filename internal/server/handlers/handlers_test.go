package handlers

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datastore"
	"github.com/kpki/kpki/internal/datastore/memstore"
	"github.com/kpki/kpki/internal/membership"
	"github.com/kpki/kpki/internal/metrics"
	"github.com/kpki/kpki/internal/nodeauth"
	"github.com/kpki/kpki/internal/nodeclaim"
	"github.com/kpki/kpki/internal/passwd"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/server/record"
	"github.com/kpki/kpki/internal/supervisor"
	"github.com/kpki/kpki/internal/testport"
	"github.com/kpki/kpki/internal/token"
)

const (
	serverPW = "0123456789abcdef0123456789abcdef"
	agentPW  = "fedcba9876543210fedcba9876543210"
)

// fakeHost is the running server's state, with files in a temp dir.
type fakeHost struct {
	dir string
	cas map[certs.CAID]*pki.CA

	mu       sync.Mutex
	password string
	creds    passwd.File
	rotated  int
	// recordChanged counts RecordChanged calls.
	recordChanged int
}

func (h *fakeHost) CAs() map[certs.CAID]*pki.CA { return h.cas }

func (h *fakeHost) Password() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.password
}

func (h *fakeHost) Creds() *passwd.File {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.creds
	return &c
}

func (h *fakeHost) TokenRotated(pw string, creds passwd.File) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.password, h.creds = pw, creds
	h.rotated++
}

func (h *fakeHost) RecordChanged() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recordChanged++
}

func (h *fakeHost) PasswdFile() string       { return filepath.Join(h.dir, "passwd") }
func (h *fakeHost) TokenFile() string        { return filepath.Join(h.dir, "token") }
func (h *fakeHost) PendingTokenFile() string { return filepath.Join(h.dir, "token.rotating") }

func (h *fakeHost) WritePendingToken(pw string) error {
	return os.WriteFile(h.PendingTokenFile(), []byte(pw+"\n"), 0o600)
}

func (h *fakeHost) DropPendingToken() { os.Remove(h.PendingTokenFile()) }

func (h *fakeHost) WritePasswd(content []byte, _ time.Time) error {
	return os.WriteFile(h.PasswdFile(), content, 0o600)
}

func (h *fakeHost) WriteTokenFiles() error {
	return os.WriteFile(h.TokenFile(), []byte(token.Format("", passwd.ServerUser, h.Password())+"\n"), 0o600)
}

// env is one API served by a real supervisor over TLS on loopback, on an in-memory
// datastore holding a bootstrap record under serverPW.
type env struct {
	t      *testing.T
	api    *API
	store  *memstore.Store
	host   *fakeHost
	audit  *audit.Log
	base   string
	client *http.Client
	clock  *clock.Fake
}

func newCA(t *testing.T, iss *pki.Issuer, cn string) *pki.CA {
	t.Helper()
	key, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := iss.SelfSignedCA(key, cn, 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pki.EncodeCert(cert)
	return &pki.CA{Cert: cert, Key: key, Bundle: []*x509.Certificate{cert}, BundlePEM: certPEM}
}

func newEnv(t *testing.T) *env {
	t.Helper()
	fc := clock.NewFake(time.Now().Truncate(time.Second))
	iss := pki.NewIssuer(fc, nil)
	cas := map[certs.CAID]*pki.CA{}
	for _, c := range certs.CAs {
		cas[c.ID] = newCA(t, iss, string(c.ID)+"-ca")
	}
	creds, err := passwd.Parse([]byte(serverPW + ",server,server,kpki:server\n" + agentPW + ",node,node,kpki:agent\n"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	host := &fakeHost{dir: dir, cas: cas, password: serverPW, creds: creds}
	st := memstore.New()
	rec := bootstrap.NewRecord()
	rec.Set("PasswdFile", bootstrap.File{Timestamp: fc.Now().UTC(), Content: creds.Bytes()})
	rec.Set("ServerCA", bootstrap.File{Timestamp: fc.Now().UTC(), Content: cas[certs.ServerCA].BundlePEM})
	value, err := record.Seal(serverPW, rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(context.Background(), bootstrap.KeyName(serverPW), value); err != nil {
		t.Fatal(err)
	}
	log := audit.Open(filepath.Join(dir, "audit.log"))
	t.Cleanup(func() { log.Close() })
	writeAudit := func(e audit.Entry) {
		if err := log.Write(e); err != nil {
			t.Errorf("audit: %v", err)
		}
	}
	sup := supervisor.New(supervisor.Config{Log: quietLog(), Clock: fc, CACerts: func() []byte { return host.CAs()[certs.ServerCA].BundlePEM },
		Ready: func(context.Context) error { return nil },
		Authenticate: func(user, pw string) (supervisor.Role, bool) {
			return host.Creds().Authenticate(user, pw)
		}})
	nodes := &nodeauth.Registry{Store: st, Self: nodeclaim.Server{NodeName: "srv-1", AdvertiseAddress: "127.0.0.1", NodeIPs: []string{"127.0.0.1"}},
		Log: quietLog(), Clock: fc, Audit: writeAudit}
	if err := nodes.RegisterServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	a := &API{Sup: sup, Store: st, Nodes: nodes, Host: host, Own: &record.Own{}, Log: quietLog(), Clock: fc,
		Metrics: metrics.New(), Audit: writeAudit, Issuer: iss, Validity: 30 * 24 * time.Hour, ClusterDomain: "cluster.local"}
	a.Register()

	// The supervisor's serving certificate, for 127.0.0.1, from the server CA.
	key, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := iss.SignLeaf(cas[certs.ServerCA], key.Public(), pki.LeafProfile{CommonName: "kpki-supervisor", IPs: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sup.SetCertificate(&tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf})
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(testport.Free(t))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- sup.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	roots := x509.NewCertPool()
	roots.AddCert(cas[certs.ServerCA].Cert)
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", Time: fc.Now}}}
	t.Cleanup(client.CloseIdleConnections)
	return &env{t: t, api: a, store: st, host: host, audit: log, base: "https://" + ln.Addr().String(), client: client, clock: fc}
}

type reply struct {
	code int
	body []byte
	err  struct {
		Error  string   `json:"error"`
		Errors []string `json:"errors"`
	}
}

// do sends one request; headers holds extra headers, user "" sends no credentials.
func (e *env) do(ctx context.Context, method, path, user, pw string, body []byte, headers map[string]string) (reply, error) {
	req, err := http.NewRequestWithContext(ctx, method, e.base+path, bytes.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	if user != "" {
		req.SetBasicAuth(user, pw)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	r := reply{code: resp.StatusCode}
	if r.body, err = io.ReadAll(resp.Body); err != nil {
		return r, err
	}
	if resp.StatusCode != http.StatusOK {
		_ = json.Unmarshal(r.body, &r.err)
	}
	return r, nil
}

func (e *env) must(method, path, user, pw string, body []byte, headers map[string]string) reply {
	e.t.Helper()
	r, err := e.do(context.Background(), method, path, user, pw, body, headers)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

func (e *env) auditEntries() []audit.Entry {
	e.t.Helper()
	data, err := os.ReadFile(e.audit.Path())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		e.t.Fatal(err)
	}
	var out []audit.Entry
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var en audit.Entry
		if err := json.Unmarshal([]byte(line), &en); err != nil {
			e.t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, en)
	}
	return out
}

func csrFor(t *testing.T) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ignored"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func nodeHeaders(node, pw string) map[string]string {
	return map[string]string{api.HeaderNodeName: node, api.HeaderNodePassword: pw}
}

func TestSignIssuesFromTheTableAndBindsTheNodePassword(t *testing.T) {
	e := newEnv(t)
	csr, key := csrFor(t)
	r := e.must("POST", api.SignPath("client-kube-proxy"), "node", agentPW, csr, nodeHeaders("worker-1", "node-secret-1"))
	if r.code != http.StatusOK {
		t.Fatalf("sign: %d %s", r.code, r.body)
	}
	chain, err := pki.ParseCerts(r.body)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if leaf.Subject.CommonName != "system:kube-proxy" || !leaf.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
		t.Errorf("leaf CN %q, or not for the CSR's key", leaf.Subject.CommonName)
	}
	if want := e.clock.Now().Add(30 * 24 * time.Hour); leaf.NotAfter.After(want) {
		t.Errorf("leaf expires %s, after the validity's end %s", leaf.NotAfter, want)
	}
	if err := leaf.CheckSignatureFrom(e.host.cas[certs.ClientCA].Cert); err != nil {
		t.Errorf("leaf not signed by the client CA: %v", err)
	}
	if v := testutil.ToFloat64(e.api.Metrics.JoinRequests.WithLabelValues("ok")); v != 1 {
		t.Errorf("join requests ok = %v", v)
	}
	// Another host claiming the node name is refused and audited; nothing is signed.
	r = e.must("POST", api.SignPath("client-kube-proxy"), "node", agentPW, csr, nodeHeaders("worker-1", "another-password"))
	if r.code != http.StatusForbidden || !strings.Contains(r.err.Error, "registered with another node password") {
		t.Errorf("second host: %d %s", r.code, r.body)
	}
	// A server's node name is refused before anything is registered.
	r = e.must("POST", api.SignPath("client-kube-proxy"), "node", agentPW, csr, nodeHeaders("srv-1", "x"))
	if r.code != http.StatusForbidden {
		t.Errorf("server's name: %d %s", r.code, r.body)
	}
	var actions []string
	for _, en := range e.auditEntries() {
		actions = append(actions, en.Action+"/"+en.Actor)
	}
	want := "issue/worker-1 node-password-mismatch/worker-1 node-claim-refused/srv-1"
	if got := strings.Join(actions, " "); got != want {
		t.Errorf("audit %q, want %q", got, want)
	}
	if v := testutil.ToFloat64(e.api.Metrics.JoinRequests.WithLabelValues("forbidden")); v != 2 {
		t.Errorf("join requests forbidden = %v, want 2", v)
	}
}

func TestSignRejectsBadInputBeforeTheDatastore(t *testing.T) {
	e := newEnv(t)
	csr, _ := csrFor(t)
	creates := e.store.Calls("create")
	for name, c := range map[string]struct {
		headers map[string]string
		body    []byte
		want    string
	}{
		"no node name":   {map[string]string{api.HeaderNodePassword: "x"}, csr, "are required"},
		"bad node name":  {nodeHeaders("Not_DNS!", "x"), csr, "not a valid DNS name"},
		"bad node IP":    {map[string]string{api.HeaderNodeName: "w", api.HeaderNodePassword: "x", api.HeaderNodeIP: "10.0.0.1,nope"}, csr, "is not an IP address"},
		"not a CSR":      {nodeHeaders("w", "x"), []byte("hello"), ""},
		"body too large": {nodeHeaders("w", "x"), bytes.Repeat([]byte("a"), maxCSRBody+1), "larger than"},
	} {
		r := e.must("POST", api.SignPath("client-kube-proxy"), "node", agentPW, c.body, c.headers)
		if r.code != http.StatusBadRequest && r.code != http.StatusRequestEntityTooLarge || !strings.Contains(r.err.Error, c.want) {
			t.Errorf("%s: %d %s", name, r.code, r.body)
		}
	}
	if n := e.store.Calls("create") - creates; n != 0 {
		t.Errorf("%d node-password records touched by refused requests", n)
	}
	if r := e.must("POST", api.SignPath("client-kube-proxy"), "server", agentPW, csr, nodeHeaders("w", "x")); r.code != http.StatusUnauthorized {
		t.Errorf("the agent password as server: %d", r.code)
	}
}

func TestServerBootstrapAndMembers(t *testing.T) {
	e := newEnv(t)
	r := e.must("GET", api.PathServerBootstrap, "server", serverPW, nil, nil)
	if r.code != http.StatusOK {
		t.Fatalf("server-bootstrap: %d %s", r.code, r.body)
	}
	rec, err := bootstrap.ParseRecord(r.body)
	if err != nil {
		t.Fatal(err)
	}
	if f, ok := rec.Get("ServerCA"); !ok || !bytes.Equal(f.Content, e.host.cas[certs.ServerCA].BundlePEM) {
		t.Error("the record sent lacks the server CA")
	}
	if r := e.must("GET", api.PathServerBootstrap, "node", agentPW, nil, nil); r.code != http.StatusForbidden {
		t.Errorf("server-bootstrap to an agent: %d", r.code)
	}
	entries := e.auditEntries()
	if len(entries) != 1 || entries[0].Action != "server-bootstrap" || entries[0].Actor != "server" {
		t.Errorf("audit %+v", entries)
	}
	if r := e.must("GET", api.PathEtcdMembers, "server", serverPW, nil, nil); r.code != http.StatusNotFound {
		t.Errorf("etcd-members with an external datastore: %d", r.code)
	}
	e.api.Members = func(context.Context) ([]membership.Member, error) {
		return []membership.Member{{Name: "srv-1", PeerURLs: []string{"https://127.0.0.1:2380"}}}, nil
	}
	r = e.must("GET", api.PathEtcdMembers, "server", serverPW, nil, nil)
	var members []membership.Member
	if r.code != http.StatusOK || json.Unmarshal(r.body, &members) != nil || len(members) != 1 || members[0].Name != "srv-1" {
		t.Errorf("etcd-members: %d %s", r.code, r.body)
	}
	// A datastore without quorum is a 503 the client may retry.
	e.store.Fail("get", &datastore.UnavailableError{Op: "get", Key: "/bootstrap/x", NoQuorum: true, Attempts: 3, Err: errors.New("no leader")})
	if r := e.must("GET", api.PathServerBootstrap, "server", serverPW, nil, nil); r.code != http.StatusServiceUnavailable || r.err.Error != "datastore unavailable (no quorum)" {
		t.Errorf("server-bootstrap without quorum: %d %s", r.code, r.body)
	}
}

func TestTokenRotateMovesTheRecord(t *testing.T) {
	e := newEnv(t)
	newPW := "new-server-password-0123456789ab"
	body, _ := json.Marshal(api.TokenRotateRequest{Token: newPW})
	r := e.must("PUT", api.PathTokenRotate, "server", serverPW, body, nil)
	if r.code != http.StatusOK {
		t.Fatalf("token rotate: %d %s", r.code, r.body)
	}
	var out api.TokenRotateResponse
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatal(err)
	}
	if tok, err := token.Parse(out.Token); err != nil || tok.Password != newPW {
		t.Errorf("answered token %v", err)
	}
	if _, ok := e.store.Value(bootstrap.KeyName(serverPW)); ok {
		t.Error("the record is still under the old key")
	}
	rec, rev, err := record.Current(context.Background(), e.store, newPW)
	if err != nil {
		t.Fatal(err)
	}
	pf, _ := rec.Get("PasswdFile")
	pw, err := passwd.Parse(pf.Content)
	if err != nil {
		t.Fatal(err)
	}
	if srv, _ := pw.Find(passwd.ServerUser); srv.Password != newPW {
		t.Error("the record's passwd does not hold the new password")
	}
	if e.host.Password() != newPW || e.host.rotated != 1 {
		t.Errorf("the server was not switched to the new password")
	}
	if e.api.Own.Rev() != rev {
		t.Errorf("own revision %d, want the record's %d: the watch would take the change for another server's", e.api.Own.Rev(), rev)
	}
	if _, err := os.Stat(e.host.PendingTokenFile()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pending token file left behind: %v", err)
	}
	if data, err := os.ReadFile(e.host.TokenFile()); err != nil || !strings.Contains(string(data), newPW) {
		t.Errorf("token file %q, %v", data, err)
	}
	// The old password no longer authenticates; the same token again is refused.
	if r := e.must("PUT", api.PathTokenRotate, "server", serverPW, body, nil); r.code != http.StatusUnauthorized {
		t.Errorf("old password after the rotation: %d", r.code)
	}
	if r := e.must("PUT", api.PathTokenRotate, "server", newPW, body, nil); r.code != http.StatusBadRequest || !strings.Contains(r.err.Error, "is the current one") {
		t.Errorf("rotation to the current token: %d %s", r.code, r.body)
	}
	agentBody, _ := json.Marshal(api.TokenRotateRequest{Token: agentPW})
	if r := e.must("PUT", api.PathTokenRotate, "server", newPW, agentBody, nil); r.code != http.StatusBadRequest || r.err.Error != errNewIsAgentPassword.Error() {
		t.Errorf("rotation to the agent password: %d %s", r.code, r.body)
	}
}

func TestTokenRotateConflictChangesNothing(t *testing.T) {
	e := newEnv(t)
	before, _ := e.store.Value(bootstrap.KeyName(serverPW))
	e.store.Fail("replace", datastore.ErrConflict)
	body, _ := json.Marshal(api.TokenRotateRequest{})
	r := e.must("PUT", api.PathTokenRotate, "server", serverPW, body, nil)
	if r.code != http.StatusConflict {
		t.Fatalf("token rotate on a conflict: %d %s", r.code, r.body)
	}
	if after, _ := e.store.Value(bootstrap.KeyName(serverPW)); !bytes.Equal(before, after) {
		t.Error("the record changed")
	}
	if e.host.Password() != serverPW || e.host.rotated != 0 {
		t.Error("the server switched passwords on a failed rotation")
	}
	if _, err := os.Stat(e.host.PendingTokenFile()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pending token file left behind: %v", err)
	}
	if n := len(e.auditEntries()); n != 0 {
		t.Errorf("%d audit entries for a rotation that did not happen", n)
	}
}

func TestRotateCARefusesBadInput(t *testing.T) {
	e := newEnv(t)
	before, _ := e.store.Value(bootstrap.KeyName(serverPW))
	if r := e.must("PUT", api.PathRotateCA, "server", serverPW, []byte("{"), nil); r.code != http.StatusBadRequest || !strings.Contains(r.err.Error, "not valid JSON") {
		t.Errorf("rotate-ca with a broken body: %d %s", r.code, r.body)
	}
	body, _ := json.Marshal(api.RotateCARequest{Files: map[string][]byte{"server-ca.crt": []byte("not a certificate")}})
	r := e.must("PUT", api.PathRotateCA, "server", serverPW, body, nil)
	if r.code != http.StatusBadRequest || !strings.Contains(r.err.Error, "CA rotation refused; nothing was changed") || len(r.err.Errors) == 0 {
		t.Errorf("rotate-ca with a bad file: %d %s", r.code, r.body)
	}
	if r := e.must("PUT", api.PathRotateCA, "node", agentPW, body, nil); r.code != http.StatusForbidden {
		t.Errorf("rotate-ca by an agent: %d", r.code)
	}
	if after, _ := e.store.Value(bootstrap.KeyName(serverPW)); !bytes.Equal(before, after) {
		t.Error("the record changed")
	}
	if n := e.store.Calls("update"); n != 0 {
		t.Errorf("%d record updates for refused rotations", n)
	}
	if e.host.recordChanged != 0 {
		t.Errorf("refused rotations asked the server %d times to apply the record", e.host.recordChanged)
	}
}

// TestSlowDatastoreBlocksNoOtherRequest holds every read of the bootstrap record, as a
// datastore that does not answer would: a token rotation waits in it, and meanwhile
// /ping, /cacerts, the CA bundles and node signing answer at once, because no handler
// holds a lock while it waits for the datastore. The rotation completes once the
// datastore answers.
func TestSlowDatastoreBlocksNoOtherRequest(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	held := make(chan string, 4)
	e.store.Hook("get", func(ctx context.Context, key string) error {
		if !strings.HasPrefix(key, bootstrap.KeyPrefix) {
			return nil
		}
		held <- key
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	body, _ := json.Marshal(api.TokenRotateRequest{Token: "rotated-password-0123456789abcdef"})
	rotated := make(chan reply, 1)
	go func() {
		r, err := e.do(context.Background(), "PUT", api.PathTokenRotate, "server", serverPW, body, nil)
		if err != nil {
			t.Errorf("token rotate: %v", err)
		}
		rotated <- r
	}()
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the token rotation never reached the datastore")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	csr, _ := csrFor(t)
	for _, c := range []struct {
		method, path, user, pw string
		body                   []byte
		headers                map[string]string
	}{
		{"GET", api.PathPing, "", "", nil, nil},
		{"GET", api.PathCACerts, "", "", nil, nil},
		{"GET", api.PathServerCA, "node", agentPW, nil, nil},
		{"GET", api.PathClientCA, "server", serverPW, nil, nil},
		{"POST", api.SignPath("client-kube-proxy"), "node", agentPW, csr, nodeHeaders("worker-9", "pw-9")},
	} {
		r, err := e.do(ctx, c.method, c.path, c.user, c.pw, c.body, c.headers)
		if err != nil || r.code != http.StatusOK {
			t.Errorf("%s %s while the datastore holds the token rotation: %d %v %s", c.method, c.path, r.code, err, r.body)
		}
	}
	select {
	case r := <-rotated:
		t.Fatalf("the token rotation finished while its datastore read was held: %d %s", r.code, r.body)
	default:
	}
	close(release)
	select {
	case r := <-rotated:
		if r.code != http.StatusOK {
			t.Errorf("token rotate once the datastore answered: %d %s", r.code, r.body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the token rotation did not finish once the datastore answered")
	}
}

// TestConcurrentTokenRotationIsRefused: a second rotation while one waits for the
// datastore is answered 409 at once, and only the first one happens.
func TestConcurrentTokenRotationIsRefused(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	started := make(chan string, 1)
	e.store.Hold("replace", release, started)
	first, _ := json.Marshal(api.TokenRotateRequest{Token: "first-password-0123456789abcdef0"})
	second, _ := json.Marshal(api.TokenRotateRequest{Token: "second-password-0123456789abcdef"})
	done := make(chan reply, 1)
	go func() {
		r, err := e.do(context.Background(), "PUT", api.PathTokenRotate, "server", serverPW, first, nil)
		if err != nil {
			t.Errorf("first rotation: %v", err)
		}
		done <- r
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the first rotation never reached the datastore")
	}
	r := e.must("PUT", api.PathTokenRotate, "server", serverPW, second, nil)
	if r.code != http.StatusConflict || !strings.Contains(r.err.Error, "another token rotation is under way") {
		t.Errorf("second rotation: %d %s", r.code, r.body)
	}
	pending, err := os.ReadFile(e.host.PendingTokenFile())
	if err != nil || !strings.Contains(string(pending), "first-password") {
		t.Errorf("pending token file %q, %v: the refused rotation touched it", pending, err)
	}
	close(release)
	if r := <-done; r.code != http.StatusOK {
		t.Errorf("first rotation: %d %s", r.code, r.body)
	}
	if got := e.host.Password(); got != "first-password-0123456789abcdef0" {
		t.Errorf("password after both: %q", got)
	}
}
