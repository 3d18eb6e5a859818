package supervisor

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/pki"
)

// syncBuffer is a bytes.Buffer safe for the server goroutines that log into it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// logRecords decodes the JSON log lines written so far.
func (s *syncBuffer) logRecords(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(s.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// testCA is a CA that signs serving certificates for 127.0.0.1.
type testCA struct {
	iss  *pki.Issuer
	ca   *pki.CA
	pool *x509.CertPool
	pem  []byte
}

func newTestCA(t *testing.T, cn string) *testCA {
	t.Helper()
	iss := pki.NewIssuer(nil, nil)
	key, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := iss.SelfSignedCA(key, cn, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	bundle := pki.EncodeCert(cert)
	return &testCA{
		iss:  iss,
		ca:   &pki.CA{Cert: cert, Key: key, Bundle: []*x509.Certificate{cert}, BundlePEM: bundle},
		pool: pool,
		pem:  bundle,
	}
}

// serving issues a serving certificate for 127.0.0.1.
func (c *testCA) serving(t *testing.T, cn string) *tls.Certificate {
	t.Helper()
	key, err := c.iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := c.iss.SignLeaf(c.ca, key.Public(), pki.LeafProfile{
		CommonName:  cn,
		IPs:         []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{leaf.Raw, c.ca.Cert.Raw}, PrivateKey: key, Leaf: leaf}
}

// testServer is a Supervisor serving HTTPS on a loopback port.
type testServer struct {
	sup  *Supervisor
	ca   *testCA
	log  *syncBuffer
	addr string
	url  string
	done chan error
	stop context.CancelFunc
}

// startServer runs New(cfg) (with a JSON logger) behind Serve with a certificate of a
// fresh CA; register runs before serving starts.
func startServer(t *testing.T, cfg Config, register func(*Supervisor)) *testServer {
	t.Helper()
	logs := &syncBuffer{}
	cfg.Log = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := New(cfg)
	if register != nil {
		register(s)
	}
	ca := newTestCA(t, "supervisor-test-ca")
	s.SetCertificate(ca.serving(t, "kpki-supervisor"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{sup: s, ca: ca, log: logs, addr: ln.Addr().String(), url: "https://" + ln.Addr().String(), done: make(chan error, 1), stop: cancel}
	go func() { ts.done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-ts.done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after its context ended")
		}
	})
	return ts
}

// client returns an HTTP client trusting the server's CA, one connection a request.
func (ts *testServer) client() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			TLSClientConfig:   &tls.Config{RootCAs: ts.ca.pool, MinVersion: tls.VersionTLS12},
		},
	}
}

// do sends a request and returns the status, headers and body.
func (ts *testServer) do(t *testing.T, method, path string, setup func(*http.Request)) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, ts.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(req)
	}
	resp, err := ts.client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, body
}

// checkJSONError checks that body is a JSON error with an id that the server logged
// together with the same status and message, and returns it.
func checkJSONError(t *testing.T, ts *testServer, hdr http.Header, body []byte, code int, wantMsg string) api.ErrorBody {
	t.Helper()
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var eb api.ErrorBody
	if err := json.Unmarshal(body, &eb); err != nil {
		t.Fatalf("error answer %q is not JSON: %v", body, err)
	}
	// The client reads the same body.
	if se := (api.Reply{Status: code, Body: body}).StatusError(); se.Code != code || se.Body.Error != eb.Error || se.Body.ID != eb.ID ||
		strings.Join(se.Body.Errors, "|") != strings.Join(eb.Errors, "|") {
		t.Errorf("api.Reply.StatusError() = %+v, want the body %+v", se, eb)
	}
	if !strings.Contains(eb.Error, wantMsg) {
		t.Errorf("error = %q, want it to contain %q", eb.Error, wantMsg)
	}
	if len(eb.ID) != 16 {
		t.Errorf("id = %q, want 16 hex characters", eb.ID)
	}
	var found map[string]any
	for _, rec := range ts.log.logRecords(t) {
		if rec["id"] == eb.ID {
			found = rec
		}
	}
	if found == nil {
		t.Fatalf("error id %s not in the server log:\n%s", eb.ID, ts.log.String())
	}
	if found["level"] != "WARN" || found["error"] != eb.Error || found["status"] != float64(code) {
		t.Errorf("log record %v does not match the answer %+v (status %d)", found, eb, code)
	}
	return eb
}

func TestUnauthenticatedEndpoints(t *testing.T) {
	bundle := []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	tests := []struct {
		name     string
		ready    error
		method   string
		path     string
		code     int
		ctype    string
		body     string // exact body of a successful answer
		errorMsg string // for JSON error answers
	}{
		{name: "cacerts", method: http.MethodGet, path: "/cacerts", code: http.StatusOK, ctype: "application/x-pem-file", body: string(bundle)},
		{name: "ping", method: http.MethodGet, path: "/ping", code: http.StatusOK, ctype: "text/plain", body: "pong"},
		{name: "readyz ready", method: http.MethodGet, path: "/readyz", code: http.StatusOK, ctype: "text/plain", body: "ok"},
		{name: "readyz not ready", ready: errors.New("datastore is not ready"), method: http.MethodGet, path: "/readyz",
			code: http.StatusServiceUnavailable, errorMsg: "datastore is not ready"},
		{name: "unknown path", method: http.MethodGet, path: "/nope", code: http.StatusNotFound, errorMsg: "no such endpoint: GET /nope"},
		{name: "unknown v1-kpki path", method: http.MethodPost, path: "/v1-kpki/nope", code: http.StatusNotFound, errorMsg: "no such endpoint: POST /v1-kpki/nope"},
		{name: "ping with another method", method: http.MethodPost, path: "/ping", code: http.StatusNotFound, errorMsg: "no such endpoint: POST /ping"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var readyCalls atomic.Int32
			ts := startServer(t, Config{
				CACerts: func() []byte { return bundle },
				Ready: func(ctx context.Context) error {
					readyCalls.Add(1)
					if _, ok := ctx.Deadline(); !ok {
						t.Error("Ready called without a deadline")
					}
					return tc.ready
				},
			}, nil)
			code, hdr, body := ts.do(t, tc.method, tc.path, nil)
			if code != tc.code {
				t.Fatalf("status = %d, want %d (body %q)", code, tc.code, body)
			}
			if tc.errorMsg != "" {
				checkJSONError(t, ts, hdr, body, tc.code, tc.errorMsg)
				return
			}
			if got := hdr.Get("Content-Type"); got != tc.ctype {
				t.Errorf("Content-Type = %q, want %q", got, tc.ctype)
			}
			if string(body) != tc.body {
				t.Errorf("body = %q, want %q", body, tc.body)
			}
			if tc.path == "/readyz" && readyCalls.Load() != 1 {
				t.Errorf("Ready called %d times, want 1", readyCalls.Load())
			}
		})
	}
}

func TestErrorAnswers(t *testing.T) {
	tests := []struct {
		name string
		code int
		err  error
		list []string
	}{
		{name: "plain error", code: http.StatusBadRequest, err: errors.New("bad CSR: signature does not verify")},
		{name: "server error", code: http.StatusInternalServerError, err: errors.New("datastore unavailable")},
		{name: "error list", code: http.StatusConflict, err: errors.New("rotate-ca checks failed"),
			list: []string{"server-ca: does not chain to the old root", "client-ca: expired"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, Config{}, func(s *Supervisor) {
				s.Handle("GET /v1-kpki/fail", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					s.ErrorList(w, r, tc.code, tc.err, tc.list)
				}))
			})
			code, hdr, body := ts.do(t, http.MethodGet, "/v1-kpki/fail", nil)
			if code != tc.code {
				t.Fatalf("status = %d, want %d", code, tc.code)
			}
			eb := checkJSONError(t, ts, hdr, body, tc.code, tc.err.Error())
			if eb.Error != tc.err.Error() {
				t.Errorf("error = %q, want %q", eb.Error, tc.err.Error())
			}
			if strings.Join(eb.Errors, "|") != strings.Join(tc.list, "|") {
				t.Errorf("errors = %q, want %q", eb.Errors, tc.list)
			}
			var raw map[string]any
			if err := json.Unmarshal(body, &raw); err != nil {
				t.Fatal(err)
			}
			if _, ok := raw["errors"]; ok != (len(tc.list) > 0) {
				t.Errorf("\"errors\" present = %v, want %v (body %s)", ok, len(tc.list) > 0, body)
			}
		})
	}
}

func TestUnavailable(t *testing.T) {
	public := errors.New("datastore unavailable (no quorum)")
	detail := errors.New("datastore create /kpki/node-passwords/n1: datastore unavailable (no quorum): 9 attempts in 3.1s, the last failed with: etcdserver: no leader")
	for _, tc := range []struct {
		name       string
		detail     error
		retryAfter time.Duration
		wantAfter  string
	}{
		{"with detail", detail, 2 * time.Second, "2"},
		{"rounded up", detail, 1500 * time.Millisecond, "2"},
		{"at least a second", nil, 0, "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, Config{}, func(s *Supervisor) {
				s.Handle("POST /v1-kpki/sign", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					s.Unavailable(w, r, public, tc.detail, tc.retryAfter)
				}))
			})
			code, hdr, body := ts.do(t, http.MethodPost, "/v1-kpki/sign", nil)
			if code != http.StatusServiceUnavailable {
				t.Fatalf("status = %d, want 503", code)
			}
			if got := hdr.Get("Retry-After"); got != tc.wantAfter {
				t.Errorf("Retry-After = %q, want %q", got, tc.wantAfter)
			}
			eb := checkJSONError(t, ts, hdr, body, code, public.Error())
			if eb.Error != public.Error() {
				t.Errorf("error = %q, want exactly %q", eb.Error, public)
			}
			var rec map[string]any
			for _, r := range ts.log.logRecords(t) {
				if r["id"] == eb.ID {
					rec = r
				}
			}
			if tc.detail != nil && rec["detail"] != tc.detail.Error() {
				t.Errorf("log record %v does not hold the detail %q", rec, tc.detail)
			}
			if tc.detail == nil && rec["detail"] != nil {
				t.Errorf("log record %v holds a detail", rec)
			}
			if strings.Contains(string(body), "attempts") {
				t.Errorf("the answer holds the detail: %s", body)
			}
		})
	}
}

func TestErrorIDsAreUnique(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	seen := map[string]bool{}
	for range 20 {
		_, _, body := ts.do(t, http.MethodGet, "/missing", nil)
		var eb api.ErrorBody
		if err := json.Unmarshal(body, &eb); err != nil {
			t.Fatal(err)
		}
		if seen[eb.ID] {
			t.Fatalf("error id %s answered twice", eb.ID)
		}
		seen[eb.ID] = true
	}
}

func TestJSON(t *testing.T) {
	tests := []struct {
		name string
		v    any
		want string
	}{
		{name: "object", v: map[string]string{"token": "K10abc"}, want: `{"token":"K10abc"}`},
		{name: "list", v: []int{1, 2}, want: `[1,2]`},
		{name: "nil", v: nil, want: `null`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, Config{}, func(s *Supervisor) {
				s.Handle("GET /v1-kpki/json", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { JSON(w, tc.v) }))
			})
			code, hdr, body := ts.do(t, http.MethodGet, "/v1-kpki/json", nil)
			if code != http.StatusOK {
				t.Fatalf("status = %d", code)
			}
			if ct := hdr.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			if got := strings.TrimSpace(string(body)); got != tc.want {
				t.Errorf("body = %s, want %s", got, tc.want)
			}
		})
	}
}

// servedSerial opens a new TLS connection to addr and returns the serial of the leaf
// certificate the server presents.
func servedSerial(t *testing.T, addr string, roots *x509.CertPool) *big.Int {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

func TestSetCertificateSwapsServingCertificate(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	first := ts.sup.Certificate()
	if got := servedSerial(t, ts.addr, ts.ca.pool); got.Cmp(first.Leaf.SerialNumber) != 0 {
		t.Fatalf("served serial %x, want the first certificate's %x", got, first.Leaf.SerialNumber)
	}

	// A connection opened before the swap keeps working afterwards.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ts.ca.pool, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	kept := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	ping := func() *x509.Certificate {
		t.Helper()
		resp, err := kept.Get(ts.url + "/ping")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Fatal(err)
		}
		return resp.TLS.PeerCertificates[0]
	}
	if got := ping(); got.SerialNumber.Cmp(first.Leaf.SerialNumber) != 0 {
		t.Fatalf("kept connection: serial %x, want %x", got.SerialNumber, first.Leaf.SerialNumber)
	}

	steps := []struct {
		name string
		ca   *testCA
	}{
		{name: "renewed under the same CA", ca: ts.ca},
		{name: "renewed again", ca: ts.ca},
		{name: "issued by a new CA", ca: newTestCA(t, "rotated-ca")},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			next := st.ca.serving(t, "kpki-supervisor")
			ts.sup.SetCertificate(next)
			if ts.sup.Certificate() != next {
				t.Fatal("Certificate() does not return the certificate just set")
			}
			if got := servedSerial(t, ts.addr, st.ca.pool); got.Cmp(next.Leaf.SerialNumber) != 0 {
				t.Fatalf("new connection: serial %x, want %x", got, next.Leaf.SerialNumber)
			}
		})
	}
	if got := ping(); got.SerialNumber.Cmp(first.Leaf.SerialNumber) != 0 {
		t.Errorf("connection opened before the swaps now shows serial %x, want %x", got.SerialNumber, first.Leaf.SerialNumber)
	}
}

func TestTLSConfig(t *testing.T) {
	s := New(Config{Log: slog.New(slog.DiscardHandler)})
	cfg := s.TLSConfig()
	if cfg.MinVersion < tls.VersionTLS12 {
		t.Errorf("MinVersion = %x, want TLS 1.2 or later", cfg.MinVersion)
	}
	if _, err := cfg.GetCertificate(&tls.ClientHelloInfo{}); err == nil {
		t.Error("GetCertificate without a certificate set: no error")
	}
	ca := newTestCA(t, "ca")
	c := ca.serving(t, "leaf")
	s.SetCertificate(c)
	got, err := cfg.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil || got != c {
		t.Errorf("GetCertificate = %p, %v; want %p", got, err, c)
	}
}

func TestServeWithoutCertificateRefusesHandshake(t *testing.T) {
	s := New(Config{Log: slog.New(slog.DiscardHandler)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(),
		&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) //nolint:gosec // the handshake must fail anyway
	if err == nil {
		conn.Close()
		t.Fatal("TLS handshake succeeded without a serving certificate")
	}
}

func TestServe(t *testing.T) {
	tests := []struct {
		name    string
		closeLn bool // close the listener instead of cancelling the context
		wantErr bool
	}{
		{name: "context cancelled", wantErr: false},
		{name: "listener closed", closeLn: true, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Config{Log: slog.New(slog.DiscardHandler)})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- s.Serve(ctx, ln) }()
			if tc.closeLn {
				ln.Close()
			} else {
				cancel()
			}
			select {
			case err := <-done:
				if (err != nil) != tc.wantErr {
					t.Errorf("Serve = %v, want error %v", err, tc.wantErr)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Serve did not return")
			}
		})
	}
}

// TestServesHTTP1 checks that the supervisor answers a client that offers HTTP/2 (as Go's
// default transport, and so every kpki client, does) over HTTP/1.1, and keeps the
// connection for the next request.
func TestServesHTTP1(t *testing.T) {
	ts := startServer(t, Config{CACerts: func() []byte { return nil }, Ready: func(context.Context) error { return nil }}, nil)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: ts.ca.pool, MinVersion: tls.VersionTLS12}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	var first string
	for i := range 2 {
		var conn string
		req, err := http.NewRequest(http.MethodGet, ts.url+"/ping", nil)
		if err != nil {
			t.Fatal(err)
		}
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(info httptrace.GotConnInfo) { conn = info.Conn.LocalAddr().String() },
		}))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 1 || resp.TLS == nil || resp.TLS.NegotiatedProtocol != "http/1.1" || string(body) != "pong" {
			t.Fatalf("request %d: %s, ALPN %q, body %q; want HTTP/1.1 negotiated as http/1.1 and pong", i, resp.Proto, resp.TLS.NegotiatedProtocol, body)
		}
		if i == 0 {
			first = conn
		} else if conn != first {
			t.Errorf("the second request used connection %s, not the kept-alive %s", conn, first)
		}
	}
}
