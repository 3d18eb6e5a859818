package api

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/trust"
)

const (
	testUser     = "server"
	testPassword = "0123456789abcdef0123456789abcdef"
)

// serverCAPEM is the PEM of the certificate an httptest TLS server presents.
func serverCAPEM(ts *httptest.Server) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw})
}

// tsTrust is the trust of the certificate an httptest TLS server presents.
func tsTrust(t *testing.T, ts *httptest.Server) *trust.Trust {
	t.Helper()
	return pemTrust(t, serverCAPEM(ts))
}

func pemTrust(t *testing.T, pemBytes []byte) *trust.Trust {
	t.Helper()
	tr, err := trust.Local(pemBytes, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// closedURL returns an https URL of a loopback port nobody listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "https://" + addr
}

func TestNewClient(t *testing.T) {
	ts := httptest.NewTLSServer(http.HandlerFunc(echo))
	defer ts.Close()
	ca := tsTrust(t, ts)
	tests := []struct {
		name    string
		url     string
		ca      *trust.Trust
		wantURL string
		wantErr string
	}{
		{name: "https with port", url: "https://10.0.0.1:9345", ca: ca, wantURL: "https://10.0.0.1:9345"},
		{name: "trailing slashes dropped", url: "https://kpki.example.com:9345//", ca: ca, wantURL: "https://kpki.example.com:9345"},
		{name: "IPv6", url: "https://[::1]:9345", ca: ca, wantURL: "https://[::1]:9345"},
		{name: "plain http", url: "http://10.0.0.1:9345", ca: ca, wantErr: `server URL "http://10.0.0.1:9345" must look like https://host:port`},
		{name: "no scheme", url: "10.0.0.1:9345", ca: ca, wantErr: "must look like https://host:port"},
		{name: "host only", url: "kpki.example.com", ca: ca, wantErr: "must look like https://host:port"},
		{name: "no host", url: "https://", ca: ca, wantErr: "must look like https://host:port"},
		{name: "path only", url: "https:///v1-kpki", ca: ca, wantErr: "must look like https://host:port"},
		{name: "unparsable", url: "https://10.0.0.1:port", ca: ca, wantErr: "must look like https://host:port"},
		{name: "empty", url: "", ca: ca, wantErr: "must look like https://host:port"},
		{name: "no CA", url: "https://10.0.0.1:9345", ca: nil, wantErr: "no cluster CA to verify the server with"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClient(tc.url, tc.ca, testUser, testPassword)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("NewClient = %v, want error containing %q", err, tc.wantErr)
				}
				if c != nil {
					t.Error("client returned with an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.BaseURL != tc.wantURL || c.Trust() != tc.ca {
				t.Errorf("client %+v", c)
			}
		})
	}

	// A client without trust cannot carry credentials, and sends nothing but GET /cacerts.
	if _, err := New(Config{URL: ts.URL, User: testUser, Password: testPassword}); err == nil || !strings.Contains(err.Error(), "credentials are only sent over verified TLS") {
		t.Errorf("New without trust, with credentials: %v", err)
	}
	c, err := New(Config{URL: ts.URL})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []Request{{Method: http.MethodGet, Path: PathServerBootstrap}, {Method: http.MethodPost, Path: PathCACerts}, {Method: http.MethodGet, Path: PathCACerts}} {
		if _, err := c.Send(context.Background(), r); err == nil || !strings.Contains(err.Error(), "is not verified yet") {
			t.Errorf("unverified client, %s %s: %v", r.Method, r.Path, err)
		}
	}
}

type echoIn struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

type echoOut struct {
	Method      string      `json:"method"`
	Path        string      `json:"path"`
	Query       string      `json:"query"`
	ContentType string      `json:"content_type"`
	User        string      `json:"user"`
	Password    string      `json:"password"`
	Body        *echoIn     `json:"body"`
	Raw         string      `json:"raw"`
	Extra       interface{} `json:"extra,omitempty"`
}

// echo answers what it received as JSON.
func echo(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	out := echoOut{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, ContentType: r.Header.Get("Content-Type"), Raw: string(raw)}
	out.User, out.Password, _ = r.BasicAuth()
	if len(raw) > 0 {
		out.Body = &echoIn{}
		if err := json.Unmarshal(raw, out.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

func TestClientDoSuccess(t *testing.T) {
	ts := httptest.NewTLSServer(http.HandlerFunc(echo))
	defer ts.Close()
	tests := []struct {
		name      string
		baseURL   string
		method    string
		path      string
		query     url.Values
		in        any
		wantQuery string
		wantBody  *echoIn
	}{
		{name: "PUT with body and query", baseURL: ts.URL, method: http.MethodPut, path: PathRotateCA,
			query: url.Values{"force": {"true"}, "dry-run": {"false"}}, in: echoIn{Name: "server-ca", Count: 2},
			wantQuery: "dry-run=false&force=true", wantBody: &echoIn{Name: "server-ca", Count: 2}},
		{name: "GET without body", baseURL: ts.URL, method: http.MethodGet, path: PathServerBootstrap},
		{name: "token rotate", baseURL: ts.URL + "/", method: http.MethodPut, path: PathTokenRotate,
			in: TokenRotateRequest{Token: "secret"}, wantBody: &echoIn{}},
		{name: "empty query", baseURL: ts.URL, method: http.MethodGet, path: "/v1-kpki/x", query: url.Values{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClient(tc.baseURL, tsTrust(t, ts), testUser, testPassword)
			if err != nil {
				t.Fatal(err)
			}
			var out echoOut
			if err := c.Do(context.Background(), tc.method, tc.path, tc.query, tc.in, &out); err != nil {
				t.Fatalf("Do: %v", err)
			}
			if out.Method != tc.method || out.Path != tc.path || out.Query != tc.wantQuery {
				t.Errorf("server saw %s %s?%s, want %s %s?%s", out.Method, out.Path, out.Query, tc.method, tc.path, tc.wantQuery)
			}
			if out.User != testUser || out.Password != testPassword {
				t.Errorf("basic auth %q:%q, want %q:%q", out.User, out.Password, testUser, testPassword)
			}
			if out.ContentType != "application/json" {
				t.Errorf("Content-Type %q, want application/json", out.ContentType)
			}
			if tc.in == nil {
				if out.Raw != "" {
					t.Errorf("body %q sent without input", out.Raw)
				}
				return
			}
			want, _ := json.Marshal(tc.in)
			if out.Raw != string(want) {
				t.Errorf("body %s, want %s", out.Raw, want)
			}
			if tc.wantBody != nil && out.Body != nil && *out.Body != *tc.wantBody {
				t.Errorf("decoded body %+v, want %+v", *out.Body, *tc.wantBody)
			}
		})
	}
}

func TestClientDoNilOutput(t *testing.T) {
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	defer ts.Close()
	c, err := NewClient(ts.URL, tsTrust(t, ts), testUser, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Do(context.Background(), http.MethodPut, PathTokenRotate, nil, TokenRotateRequest{}, nil); err != nil {
		t.Errorf("Do with a 204 answer and no output: %v", err)
	}
}

func TestClientDoErrors(t *testing.T) {
	tests := []struct {
		name       string
		handler    http.HandlerFunc
		wantStatus *StatusError // the error must be this StatusError
		wantMsg    string       // exact Error() (StatusError) or substring (other errors)
	}{
		{
			name: "kpki error with id",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusForbidden)
				io.WriteString(w, `{"error":"this endpoint needs the server token","id":"0123456789abcdef"}`+"\n")
			},
			wantStatus: &StatusError{Code: http.StatusForbidden, Body: ErrorBody{Error: "this endpoint needs the server token", ID: "0123456789abcdef"}},
			wantMsg:    "this endpoint needs the server token (server error id 0123456789abcdef)",
		},
		{
			name: "kpki error with a list",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusConflict)
				io.WriteString(w, `{"error":"checks failed","id":"ffff","errors":["a","b"]}`)
			},
			wantStatus: &StatusError{Code: http.StatusConflict, Body: ErrorBody{Error: "checks failed", ID: "ffff", Errors: []string{"a", "b"}}},
			wantMsg:    "checks failed (server error id ffff)",
		},
		{
			name: "HTML error page",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				w.WriteHeader(http.StatusBadGateway)
				io.WriteString(w, "  <html><body>Bad Gateway</body></html>\n")
			},
			wantStatus: &StatusError{Code: http.StatusBadGateway, Body: ErrorBody{Error: "<html><body>Bad Gateway</body></html>"}},
			wantMsg:    "<html><body>Bad Gateway</body></html>",
		},
		{
			name:       "empty error answer",
			handler:    func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) },
			wantStatus: &StatusError{Code: http.StatusServiceUnavailable},
			wantMsg:    "Service Unavailable",
		},
		{
			name: "JSON error of another server",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusUnauthorized)
				io.WriteString(w, `{"message":"Unauthorized"}`)
			},
			wantStatus: &StatusError{Code: http.StatusUnauthorized},
			wantMsg:    "Unauthorized",
		},
		{
			name: "HTML success answer",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				io.WriteString(w, "<!DOCTYPE html><html><body>Welcome to nginx!</body></html>")
			},
			wantMsg: "answered something that is not a kpki reply",
		},
		{
			name: "JSON of the wrong shape",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				io.WriteString(w, `["not","an","object"]`)
			},
			wantMsg: "answered something that is not a kpki reply",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := httptest.NewTLSServer(tc.handler)
			defer ts.Close()
			c, err := NewClient(ts.URL, tsTrust(t, ts), testUser, testPassword)
			if err != nil {
				t.Fatal(err)
			}
			var out TokenRotateResponse
			err = c.Do(context.Background(), http.MethodPut, PathTokenRotate, nil, TokenRotateRequest{}, &out)
			if err == nil {
				t.Fatalf("Do succeeded with %+v", out)
			}
			var se *StatusError
			isStatus := errors.As(err, &se)
			if tc.wantStatus == nil {
				if isStatus {
					t.Errorf("got StatusError %+v for a 200 answer", se)
				}
				if !strings.Contains(err.Error(), tc.wantMsg) || !strings.Contains(err.Error(), ts.URL) {
					t.Errorf("error %q, want it to contain %q and %q", err, tc.wantMsg, ts.URL)
				}
				return
			}
			if !isStatus {
				t.Fatalf("error %v (%T) is not a *StatusError", err, err)
			}
			if se.Code != tc.wantStatus.Code || se.Body.Error != tc.wantStatus.Body.Error || se.Body.ID != tc.wantStatus.Body.ID ||
				strings.Join(se.Body.Errors, "|") != strings.Join(tc.wantStatus.Body.Errors, "|") {
				t.Errorf("StatusError %+v, want %+v", se, tc.wantStatus)
			}
			if err.Error() != tc.wantMsg {
				t.Errorf("Error() = %q, want %q", err.Error(), tc.wantMsg)
			}
		})
	}
}

func TestClientDoTransportErrors(t *testing.T) {
	otherCA, _, _ := caBundles(t)
	other := pemTrust(t, otherCA)
	ts := httptest.NewUnstartedServer(http.HandlerFunc(echo))
	ts.Config.ErrorLog = log.New(io.Discard, "", 0)
	ts.StartTLS()
	defer ts.Close()
	dead := closedURL(t)
	tests := []struct {
		name    string
		baseURL string
		ca      *trust.Trust
		in      any
		wantMsg []string
	}{
		{name: "unreachable server", baseURL: dead, ca: tsTrust(t, ts), wantMsg: []string{"cannot reach the kpki server at " + dead}},
		{name: "server certificate from another CA", baseURL: ts.URL, ca: other,
			wantMsg: []string{"the server at " + ts.URL + " presented a certificate that the cluster CA did not sign"}},
		{name: "input that is not JSON", baseURL: ts.URL, ca: tsTrust(t, ts), in: map[string]any{"c": make(chan int)},
			wantMsg: []string{"json"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClient(tc.baseURL, tc.ca, testUser, testPassword)
			if err != nil {
				t.Fatal(err)
			}
			var out echoOut
			err = c.Do(context.Background(), http.MethodPut, PathTokenRotate, nil, tc.in, &out)
			if err == nil {
				t.Fatal("Do succeeded")
			}
			var se *StatusError
			if errors.As(err, &se) {
				t.Errorf("transport error reported as StatusError %+v", se)
			}
			for _, m := range tc.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not contain %q", err, m)
				}
			}
			if strings.Contains(err.Error(), testPassword) {
				t.Errorf("error %q contains the password", err)
			}
		})
	}
}

func TestStatusErrorMessage(t *testing.T) {
	tests := []struct {
		name string
		err  StatusError
		want string
	}{
		{name: "message and id", err: StatusError{Code: 400, Body: ErrorBody{Error: "bad CSR", ID: "abc"}}, want: "bad CSR (server error id abc)"},
		{name: "message only", err: StatusError{Code: 400, Body: ErrorBody{Error: "bad CSR"}}, want: "bad CSR"},
		{name: "id only", err: StatusError{Code: 500, Body: ErrorBody{ID: "abc"}}, want: "Internal Server Error (server error id abc)"},
		{name: "nothing", err: StatusError{Code: 404}, want: "Not Found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.err.Error(); got != tc.want {
				t.Errorf("Error() = %q, want %q", got, tc.want)
			}
		})
	}
}
