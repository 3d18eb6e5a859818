package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

// caBundles returns a single self-signed CA file and a chain file (intermediate then
// root) with the root's DER hash.
func caBundles(t *testing.T) (single []byte, chain []byte, rootHash string) {
	t.Helper()
	iss := pki.NewIssuer(nil, nil)
	rootKey, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	root, err := iss.SelfSignedCA(rootKey, "kpki-root-ca", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	interKey, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	inter, err := iss.SignCA(&pki.CA{Cert: root, Key: rootKey, Bundle: []*x509.Certificate{root}}, interKey.Public(), "kpki-server-ca", 12*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(root.Raw)
	return pki.EncodeCert(root), pki.EncodeCerts(inter, root), hex.EncodeToString(sum[:])
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// parseToken parses a token string, failing the test on error.
func parseToken(t *testing.T, s string) token.Token {
	t.Helper()
	tok, err := token.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestFetchPinnedCA(t *testing.T) {
	single, chain, rootHash := caBundles(t)
	singleHash := sha256Hex(single)
	chainCerts, err := pki.ParseCerts(chain)
	if err != nil {
		t.Fatal(err)
	}
	other, _, _ := caBundles(t)
	appended := append(append([]byte{}, chain...), other...)
	otherHash := strings.Repeat("0f", 32)
	const pw = "0123456789abcdef0123456789abcdef"
	serve := func(body []byte) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/cacerts" || r.Method != http.MethodGet {
				http.NotFound(w, r)
				return
			}
			w.Write(body)
		}
	}
	tests := []struct {
		name       string
		handler    http.HandlerFunc
		token      string
		suffix     string // appended to the server URL
		wantPEM    []byte
		wantPinned bool
		wantErr    string // substring; "exact:" prefix for an exact message
	}{
		{name: "secure token, single CA", handler: serve(single), token: token.Format(singleHash, "server", pw),
			wantPEM: single, wantPinned: true},
		{name: "secure token without user", handler: serve(single), token: "K10" + singleHash + "::" + pw,
			wantPEM: single, wantPinned: true},
		{name: "upper-case hash in token", handler: serve(single), token: token.Format(strings.ToUpper(singleHash), "node", pw),
			wantPEM: single, wantPinned: true},
		{name: "secure token, chain pinned to its root", handler: serve(chain), token: token.Format(rootHash, "server", pw),
			wantPEM: chain, wantPinned: true},
		{name: "secure token, chain pinned to its first certificate", handler: serve(chain), token: token.Format(sha256Hex(chainCerts[0].Raw), "server", pw),
			wantPEM: pki.EncodeCert(chainCerts[0]), wantPinned: true},
		{name: "appended CA dropped", handler: serve(appended), token: token.Format(rootHash, "server", pw),
			wantPEM: chain, wantPinned: true},
		{name: "trailing slash on the URL", handler: serve(single), token: token.Format(singleHash, "server", pw), suffix: "/",
			wantPEM: single, wantPinned: true},
		{name: "short token pins nothing", handler: serve(single), token: pw, wantPEM: single, wantPinned: false},
		{name: "hash mismatch", handler: serve(single), token: token.Format(otherHash, "server", pw),
			wantErr: "exact:token CA hash does not match the Cluster CA certificate hash: " + otherHash + " != " + singleHash},
		{name: "chain hash is not the file hash", handler: serve(chain), token: token.Format(sha256Hex(chain), "server", pw),
			wantErr: "exact:token CA hash does not match the Cluster CA certificate hash: " + sha256Hex(chain) + " != " + rootHash},
		{name: "HTML answer", token: token.Format(singleHash, "server", pw),
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				io.WriteString(w, "<html><body>It works!</body></html>")
			},
			wantErr: "is not a kpki server: GET /cacerts did not return PEM certificates"},
		{name: "HTML answer, short token", token: pw,
			handler: func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "<html></html>") },
			wantErr: "is not a kpki server"},
		{name: "truncated PEM", token: pw, handler: serve(single[:len(single)/2]), wantErr: "is not a kpki server"},
		{name: "not found", token: token.Format(singleHash, "server", pw), handler: http.NotFound,
			wantErr: "is not a kpki server: GET /cacerts answered 404 Not Found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var authorized atomic.Bool
			ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("Authorization") != "" {
					authorized.Store(true)
				}
				tc.handler(w, r)
			}))
			defer ts.Close()
			tr, err := FetchPinnedCA(context.Background(), ts.URL+tc.suffix, parseToken(t, tc.token), FetchOptions{})
			if authorized.Load() {
				t.Error("credentials sent to /cacerts before the CA was verified")
			}
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("FetchPinnedCA succeeded (pinned %v)", tr.Pinned)
				}
				if exact, ok := strings.CutPrefix(tc.wantErr, "exact:"); ok {
					if err.Error() != exact {
						t.Errorf("error\n %q\nwant\n %q", err, exact)
					}
				} else if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %q, want it to contain %q", err, tc.wantErr)
				}
				if tr != nil {
					t.Errorf("trust %v returned with an error", tr)
				}
				if strings.Contains(err.Error(), pw) {
					t.Errorf("error %q contains the token password", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(tr.PEM, tc.wantPEM) {
				t.Errorf("trust PEM %q, want %q", tr.PEM, tc.wantPEM)
			}
			if tr.Pinned != tc.wantPinned {
				t.Errorf("pinned = %v, want %v", tr.Pinned, tc.wantPinned)
			}
		})
	}
}

func TestFetchPinnedCAUnreachable(t *testing.T) {
	dead := closedURL(t)
	tok := parseToken(t, token.Format(strings.Repeat("ab", 32), "server", "secret"))
	tr, err := FetchPinnedCA(context.Background(), dead, tok, FetchOptions{})
	if err == nil {
		t.Fatal("FetchPinnedCA succeeded against a closed port")
	}
	if want := "cannot reach the kpki server at " + dead; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q, want it to contain %q", err, want)
	}
	if tr != nil {
		t.Errorf("trust %v returned with an error", tr)
	}
}

// TestFetchPinnedCACancelled: a server that accepts the connection and never answers
// holds a join only until its context ends; so does a hung verified request.
func TestFetchPinnedCACancelled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	url := "https://" + ln.Addr().String()
	tok := parseToken(t, token.Format(strings.Repeat("ab", 32), "server", "secret"))
	single, _, _ := caBundles(t)
	c, err := NewClient(url, pemTrust(t, single), testUser, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func(context.Context) error{
		"FetchPinnedCA": func(ctx context.Context) error { _, err := FetchPinnedCA(ctx, url, tok, FetchOptions{}); return err },
		"Client.Do":     func(ctx context.Context) error { return c.Do(ctx, http.MethodGet, PathEtcdMembers, nil, nil, nil) },
	} {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- call(ctx) }()
		var conn net.Conn
		select {
		case conn = <-accepted:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s never connected", name)
		}
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("%s: %v, want context.Canceled", name, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s did not return after its context was cancelled", name)
		}
		conn.Close()
	}
}

// TestFetchPinnedCAThenClient checks the joining sequence: the pinned trust is enough
// for a Client to verify the server it came from, and a server presenting a
// certificate of another CA receives nothing: its handshake fails first.
func TestFetchPinnedCAThenClient(t *testing.T) {
	var ts *httptest.Server
	ts = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/cacerts":
			w.Write(serverCAPEM(ts))
		default:
			echo(w, r)
		}
	}))
	defer ts.Close()
	hash := sha256Hex(serverCAPEM(ts))
	tr, err := FetchPinnedCA(context.Background(), ts.URL, parseToken(t, token.Format(hash, "server", testPassword)), FetchOptions{})
	if err != nil || !tr.Pinned {
		t.Fatalf("FetchPinnedCA = %v, %v", tr, err)
	}
	c, err := NewClient(ts.URL, tr, testUser, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	var out echoOut
	if err := c.Do(context.Background(), http.MethodGet, PathServerBootstrap, nil, nil, &out); err != nil {
		t.Fatal(err)
	}
	if out.User != testUser || out.Password != testPassword {
		t.Errorf("server saw %q:%q", out.User, out.Password)
	}

	// Another server, serving a certificate of its own CA for the same address.
	var reached atomic.Bool
	fake := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached.Store(true) }))
	fake.Config.ErrorLog = log.New(io.Discard, "", 0)
	fake.TLS = &tls.Config{Certificates: []tls.Certificate{otherServing(t)}}
	fake.StartTLS()
	defer fake.Close()
	f, err := NewClient(fake.URL, tr, testUser, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Do(context.Background(), http.MethodGet, PathServerBootstrap, nil, nil, &out)
	if err == nil || !strings.Contains(err.Error(), "presented a certificate that the cluster CA did not sign") {
		t.Errorf("Do against another server: %v", err)
	}
	if reached.Load() {
		t.Error("a request reached the server whose certificate does not verify")
	}
}

// otherServing is a serving certificate for 127.0.0.1 from a CA of its own.
func otherServing(t *testing.T) tls.Certificate {
	t.Helper()
	iss := pki.NewIssuer(nil, nil)
	caKey, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := iss.SelfSignedCA(caKey, "attacker-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := iss.SignLeaf(&pki.CA{Cert: caCert, Key: caKey, Bundle: []*x509.Certificate{caCert}}, key.Public(), pki.LeafProfile{
		CommonName: "kpki", IPs: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{leaf.Raw, caCert.Raw}, PrivateKey: key}
}

// TestFollowCA: a later fetch verified against the trust keeps the trust when the CA
// did not change and refuses a body that does not chain to the anchor.
func TestFollowCA(t *testing.T) {
	var body atomic.Value
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			t.Error("credentials sent with GET /cacerts")
		}
		w.Write(body.Load().([]byte))
	}))
	defer ts.Close()
	body.Store(serverCAPEM(ts))
	tok := parseToken(t, token.Format(sha256Hex(serverCAPEM(ts)), "node", testPassword))
	tr, err := FetchPinnedCA(context.Background(), ts.URL, tok, FetchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{URL: ts.URL, Trust: tr, User: "node", Password: testPassword})
	if err != nil {
		t.Fatal(err)
	}
	next, err := c.FollowCA(context.Background(), tok, nil)
	if err != nil || tr.Changed(next) {
		t.Fatalf("FollowCA of the same CA: %v", err)
	}
	other, _, _ := caBundles(t)
	body.Store(other)
	if _, err := c.FollowCA(context.Background(), tok, nil); err == nil || !strings.Contains(err.Error(), "does not trust") {
		t.Errorf("FollowCA of another CA: %v", err)
	}
}
