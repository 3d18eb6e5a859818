package api

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
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
	otherHash := strings.Repeat("0f", 32)
	const pw = "0123456789abcdef0123456789abcdef"
	serve := func(body []byte) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/cacerts" || r.Method != http.MethodGet {
				http.NotFound(w, r)
				return
			}
			if _, _, ok := r.BasicAuth(); ok {
				t.Errorf("credentials sent to /cacerts before the CA was verified")
			}
			w.Write(body)
		}
	}
	tests := []struct {
		name       string
		handler    http.HandlerFunc
		token      string
		suffix     string // appended to the server URL
		wantBundle []byte
		wantPinned bool
		wantErr    string // substring; "exact:" prefix for an exact message
	}{
		{name: "secure token, single CA", handler: serve(single), token: token.Format(singleHash, "server", pw),
			wantBundle: single, wantPinned: true},
		{name: "secure token without user", handler: serve(single), token: "K10" + singleHash + "::" + pw,
			wantBundle: single, wantPinned: true},
		{name: "upper-case hash in token", handler: serve(single), token: token.Format(strings.ToUpper(singleHash), "node", pw),
			wantBundle: single, wantPinned: true},
		{name: "secure token, chain pinned to its root", handler: serve(chain), token: token.Format(rootHash, "server", pw),
			wantBundle: chain, wantPinned: true},
		{name: "trailing slash on the URL", handler: serve(single), token: token.Format(singleHash, "server", pw), suffix: "/",
			wantBundle: single, wantPinned: true},
		{name: "short token pins nothing", handler: serve(single), token: pw, wantBundle: single, wantPinned: false},
		{name: "hash mismatch", handler: serve(single), token: token.Format(otherHash, "server", pw),
			wantErr: "exact:token CA hash does not match the Cluster CA certificate hash: " + otherHash + " != " + singleHash},
		{name: "chain hash is not the file hash", handler: serve(chain), token: token.Format(sha256Hex(chain), "server", pw),
			wantErr: "exact:token CA hash does not match the Cluster CA certificate hash: " + sha256Hex(chain) + " != " + rootHash},
		{name: "HTML answer", token: token.Format(singleHash, "server", pw),
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				io.WriteString(w, "<html><body>It works!</body></html>")
			},
			wantErr: "did not answer with CA certificates"},
		{name: "HTML answer, short token", token: pw,
			handler: func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "<html></html>") },
			wantErr: "not a kpki server?"},
		{name: "truncated PEM", token: pw, handler: serve(single[:len(single)/2]), wantErr: "not a kpki server?"},
		{name: "not found", token: token.Format(singleHash, "server", pw), handler: http.NotFound,
			wantErr: "answered 404 Not Found: not a kpki server?"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := httptest.NewTLSServer(tc.handler)
			defer ts.Close()
			bundle, pinned, err := FetchPinnedCA(ts.URL+tc.suffix, parseToken(t, tc.token))
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("FetchPinnedCA succeeded (pinned %v)", pinned)
				}
				if exact, ok := strings.CutPrefix(tc.wantErr, "exact:"); ok {
					if err.Error() != exact {
						t.Errorf("error\n %q\nwant\n %q", err, exact)
					}
				} else if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %q, want it to contain %q", err, tc.wantErr)
				}
				if bundle != nil || pinned {
					t.Errorf("bundle %q, pinned %v returned with an error", bundle, pinned)
				}
				if strings.Contains(err.Error(), pw) {
					t.Errorf("error %q contains the token password", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(bundle, tc.wantBundle) {
				t.Errorf("bundle %q, want %q", bundle, tc.wantBundle)
			}
			if pinned != tc.wantPinned {
				t.Errorf("pinned = %v, want %v", pinned, tc.wantPinned)
			}
		})
	}
}

func TestFetchPinnedCAUnreachable(t *testing.T) {
	dead := closedURL(t)
	tok := parseToken(t, token.Format(strings.Repeat("ab", 32), "server", "secret"))
	bundle, pinned, err := FetchPinnedCA(dead, tok)
	if err == nil {
		t.Fatal("FetchPinnedCA succeeded against a closed port")
	}
	if want := "cannot reach the kpki server at " + dead; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q, want it to contain %q", err, want)
	}
	if bundle != nil || pinned {
		t.Errorf("bundle %q, pinned %v returned with an error", bundle, pinned)
	}
}

// TestFetchPinnedCAThenClient checks the joining sequence: the pinned bundle is enough
// for a Client to verify the server it came from.
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
	bundle, pinned, err := FetchPinnedCA(ts.URL, parseToken(t, token.Format(hash, "server", testPassword)))
	if err != nil || !pinned {
		t.Fatalf("FetchPinnedCA = %v, pinned %v", err, pinned)
	}
	c, err := NewClient(ts.URL, bundle, testUser, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	var out echoOut
	if err := c.Do(http.MethodGet, "/v1-kpki/server-bootstrap", nil, nil, &out); err != nil {
		t.Fatal(err)
	}
	if out.User != testUser || out.Password != testPassword {
		t.Errorf("server saw %q:%q", out.User, out.Password)
	}
}
