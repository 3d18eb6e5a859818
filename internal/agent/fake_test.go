package agent

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

// fakeServer implements the agent's side of the supervisor API (SPEC §7) for unit tests:
// /cacerts, the CA bundles and the four signing endpoints, with basic auth against
// fixed passwords and a node-password registry. It records every request.
type fakeServer struct {
	t      *testing.T
	srv    *httptest.Server
	leaves *pki.Issuer // signs leaves on the test's clock
	caIss  *pki.Issuer // makes CAs and serving certs on the wall clock, for TLS handshakes

	mu        sync.Mutex
	serverCA  *pki.CA
	clientCA  *pki.CA
	serving   *tls.Certificate
	passwords map[string]string // basic-auth user → password
	nodes     map[string]string // node name → node password
	validity  time.Duration
	fail      map[string]fakeFailure      // path → forced answer
	handlers  map[string]http.HandlerFunc // path → replacement handler
	requests  []fakeRequest
}

type fakeFailure struct {
	status int
	msg    string
}

type fakeRequest struct {
	Method, Path string
	Authorized   bool // an Authorization header was sent
	Header       http.Header
}

const (
	agentPassword  = "agent-secret-7f3a9c"
	serverPassword = "server-secret-41b2"
	testNode       = "node-1"
)

func newFakeServer(t *testing.T, clk clock.Clock) *fakeServer {
	t.Helper()
	f := &fakeServer{
		t:         t,
		leaves:    pki.NewIssuer(clk, nil),
		caIss:     pki.NewIssuer(clock.Real{}, nil),
		passwords: map[string]string{"node": agentPassword, "server": serverPassword},
		nodes:     map[string]string{},
		validity:  365 * 24 * time.Hour,
		fail:      map[string]fakeFailure{},
		handlers:  map[string]http.HandlerFunc{},
	}
	f.setCAs(f.selfSignedCA("kpki-server-ca"), f.selfSignedCA("kpki-client-ca"))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /cacerts", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		w.Write(f.serverCA.BundlePEM)
	})
	mux.HandleFunc("GET /v1-kpki/server-ca.crt", f.auth(func(w http.ResponseWriter, r *http.Request) {
		w.Write(f.serverCA.BundlePEM)
	}))
	mux.HandleFunc("GET /v1-kpki/client-ca.crt", f.auth(func(w http.ResponseWriter, r *http.Request) {
		w.Write(f.clientCA.BundlePEM)
	}))
	mux.HandleFunc("POST /v1-kpki/{file}", f.auth(f.handleSign))
	f.srv = httptest.NewUnstartedServer(f.record(mux))
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are what some tests do
	f.srv.TLS = &tls.Config{
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			return &tls.Config{Certificates: []tls.Certificate{*f.serving}}, nil
		},
	}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeServer) URL() string { return f.srv.URL }

func (f *fakeServer) selfSignedCA(cn string) *pki.CA {
	f.t.Helper()
	key, err := f.caIss.NewECKey()
	if err != nil {
		f.t.Fatal(err)
	}
	cert, err := f.caIss.SelfSignedCA(key, cn, 10*365*24*time.Hour)
	if err != nil {
		f.t.Fatal(err)
	}
	return &pki.CA{Cert: cert, Key: key, Bundle: []*x509.Certificate{cert}, BundlePEM: pki.EncodeCert(cert)}
}

// signedCA makes a CA signed by parent whose bundle is the CA followed by chain.
func (f *fakeServer) signedCA(parent *pki.CA, cn string, chain ...*x509.Certificate) *pki.CA {
	f.t.Helper()
	key, err := f.caIss.NewECKey()
	if err != nil {
		f.t.Fatal(err)
	}
	cert, err := f.caIss.SignCA(parent, key.Public(), cn, 10*365*24*time.Hour)
	if err != nil {
		f.t.Fatal(err)
	}
	bundle := append([]*x509.Certificate{cert}, chain...)
	return &pki.CA{Cert: cert, Key: key, Bundle: bundle, BundlePEM: pki.EncodeCerts(bundle...)}
}

// setCAs replaces the CAs and the serving certificate, as a server restarted after a
// CA rotation would.
func (f *fakeServer) setCAs(serverCA, clientCA *pki.CA) {
	f.t.Helper()
	f.setServing(serverCA)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.serverCA, f.clientCA = serverCA, clientCA
}

// impersonate makes the fake answer as an attacker on the network would: bundle at
// /cacerts and /v1-kpki/server-ca.crt, and a serving certificate signed by signer.
func (f *fakeServer) impersonate(bundle []byte, signer *pki.CA) {
	f.t.Helper()
	f.setServing(signer)
	serve := func(w http.ResponseWriter, _ *http.Request) { w.Write(bundle) }
	f.override(api.PathCACerts, serve)
	f.override(api.PathServerCA, serve)
}

// setServing replaces the serving certificate with one signed by ca.
func (f *fakeServer) setServing(ca *pki.CA) {
	f.t.Helper()
	key, err := f.caIss.NewECKey()
	if err != nil {
		f.t.Fatal(err)
	}
	leaf, err := f.caIss.SignLeaf(ca, key.Public(), pki.LeafProfile{
		CommonName: "kpki", DNSNames: []string{"localhost"}, IPs: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, 365*24*time.Hour)
	if err != nil {
		f.t.Fatal(err)
	}
	chain := [][]byte{leaf.Raw}
	for _, c := range ca.Bundle {
		chain = append(chain, c.Raw)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.serving = &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}
}

func (f *fakeServer) cas() (serverCA, clientCA *pki.CA) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.serverCA, f.clientCA
}

// secureToken is the agent token pinning the current server CA.
func (f *fakeServer) secureToken() string {
	f.t.Helper()
	s, _ := f.cas()
	h, err := pki.CAHash(s.BundlePEM)
	if err != nil {
		f.t.Fatal(err)
	}
	return token.Format(h, "node", agentPassword)
}

func (f *fakeServer) failWith(path string, status int, msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if status == 0 {
		delete(f.fail, path)
		return
	}
	f.fail[path] = fakeFailure{status, msg}
}

func (f *fakeServer) override(path string, h http.HandlerFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.handlers[path] = h
}

func (f *fakeServer) setValidity(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.validity = d
}

func (f *fakeServer) registerNode(name, password string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes[name] = password
}

func (f *fakeServer) nodePassword(name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nodes[name]
}

// Requests returns the requests recorded so far and forgets them.
func (f *fakeServer) takeRequests() []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.requests
	f.requests = nil
	return r
}

func signingRequests(rs []fakeRequest) []fakeRequest {
	var out []fakeRequest
	for _, r := range rs {
		if r.Method == http.MethodPost {
			out = append(out, r)
		}
	}
	return out
}

func (f *fakeServer) record(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests = append(f.requests, fakeRequest{
			Method: r.Method, Path: r.URL.Path, Authorized: r.Header.Get("Authorization") != "", Header: r.Header.Clone(),
		})
		fail, forced := f.fail[r.URL.Path]
		h := f.handlers[r.URL.Path]
		f.mu.Unlock()
		if forced {
			fakeError(w, fail.status, fail.msg)
			return
		}
		if h != nil {
			h(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func fakeError(w http.ResponseWriter, status int, msg string) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg, "id": hex.EncodeToString(b[:])})
}

func (f *fakeServer) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		user, pw, ok := r.BasicAuth()
		f.mu.Lock()
		want, known := f.passwords[user]
		f.mu.Unlock()
		if !ok || !known || pw != want {
			fakeError(w, http.StatusUnauthorized, "invalid credentials")
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		h(w, r)
	}
}

// handleSign runs with f.mu held.
func (f *fakeServer) handleSign(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimSuffix(r.PathValue("file"), ".crt")
	var leaf *certs.Leaf
	for _, l := range certs.Select(certs.AgentNode, nil) {
		if l.Name == name {
			leaf = &l
		}
	}
	if leaf == nil || !strings.HasSuffix(r.PathValue("file"), ".crt") {
		fakeError(w, http.StatusNotFound, "no such endpoint")
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != api.ContentTypeCSR {
		fakeError(w, http.StatusBadRequest, "content type "+ct+", want "+api.ContentTypeCSR)
		return
	}
	node, nodePW := r.Header.Get(api.HeaderNodeName), r.Header.Get(api.HeaderNodePassword)
	if node == "" || nodePW == "" {
		fakeError(w, http.StatusBadRequest, "node name and node password headers are required")
		return
	}
	if have, ok := f.nodes[node]; ok && have != nodePW {
		fakeError(w, http.StatusForbidden, "node "+node+" is registered with another node password")
		return
	}
	f.nodes[node] = nodePW
	var ips []net.IP
	if v := r.Header.Get(api.HeaderNodeIP); v != "" {
		for _, s := range strings.Split(v, ",") {
			ip := net.ParseIP(s)
			if ip == nil {
				fakeError(w, http.StatusBadRequest, "bad node IP "+s)
				return
			}
			ips = append(ips, ip)
		}
	}
	der, err := io.ReadAll(r.Body)
	if err != nil {
		fakeError(w, http.StatusBadRequest, err.Error())
		return
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		fakeError(w, http.StatusBadRequest, "bad CSR: "+err.Error())
		return
	}
	ca := f.clientCA
	if leaf.Signer == certs.ServerCA {
		ca = f.serverCA
	}
	cert, err := f.leaves.SignLeaf(ca, csr.PublicKey, leaf.Profile(certs.Params{NodeName: node, NodeIPs: ips}), f.validity)
	if err != nil {
		fakeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Write(append(pki.EncodeCert(cert), ca.BundlePEM...))
}

// logBuffer collects an agent's log and checks at the end of the test that it never
// held a secret.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newLog(t *testing.T, f *fakeServer) (*slog.Logger, *logBuffer) {
	buf := &logBuffer{}
	t.Cleanup(func() {
		out := buf.String()
		secrets := []string{agentPassword, serverPassword, "PRIVATE KEY"}
		if f != nil {
			f.mu.Lock()
			for _, pw := range f.nodes {
				secrets = append(secrets, pw)
			}
			f.mu.Unlock()
		}
		for _, s := range secrets {
			if s != "" && strings.Contains(out, s) {
				t.Errorf("the agent log holds a secret (%q):\n%s", s, out)
			}
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}
