package supervisor

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/kpki/kpki/internal/httplimit"
)

func TestClip(t *testing.T) {
	long := strings.Repeat("a", 1000)
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{long, 256, strings.Repeat("a", 256) + "…(1000 bytes)"},
		{"ab€cd", 3, "ab…(7 bytes)"}, // € is 3 bytes: never cut inside it
		{"ab€cd", 5, "ab€…(7 bytes)"},
	} {
		got := Clip(tc.in, tc.n)
		if got != tc.want {
			t.Errorf("Clip(%.20q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
		if !utf8.ValidString(got) {
			t.Errorf("Clip(%.20q, %d) = %q is not valid UTF-8", tc.in, tc.n, got)
		}
	}
}

func TestClipList(t *testing.T) {
	var list []string
	for range 100 {
		list = append(list, strings.Repeat("e", 2000))
	}
	got := clipList(list)
	if len(got) != ListMax+1 || got[ListMax] != "…(68 more)" {
		t.Fatalf("clipList kept %d items, last %q", len(got), got[len(got)-1])
	}
	for _, s := range got[:ListMax] {
		if len(s) > MessageMax+32 {
			t.Errorf("item of %d bytes", len(s))
		}
	}
}

// TestLongRequestsLogBoundedLines sends failed requests whose URL, query, user name or a
// header echoed in the error and the error list are tens of KB: every log line stays under
// 1 KB (2 KB when the error and its list both quote the header), and says how long the
// clipped value was.
func TestLongRequestsLogBoundedLines(t *testing.T) {
	huge := strings.Repeat("A", 60<<10)
	ts := startServer(t, Config{Authenticate: testAuth}, func(s *Supervisor) {
		s.Handle("GET /v1-kpki/needs-auth", s.Require(func(w http.ResponseWriter, _ *http.Request) {}, RoleServer))
		s.Handle("GET /v1-kpki/echo", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.ErrorList(w, r, http.StatusBadRequest, errors.New("node name "+r.Header.Get("X-Node")+" is not valid"),
				[]string{"list item " + r.Header.Get("X-Node")})
		}))
	})
	for _, tc := range []struct {
		name   string
		path   string
		setup  func(*http.Request)
		code   int
		marker string
		bound  int
	}{
		{"60 KB path", "/" + huge, nil, http.StatusNotFound, "…(61441 bytes)", 1024},
		{"60 KB query", "/nope?q=" + huge, nil, http.StatusNotFound, "…(61442 bytes)", 1024},
		{"30 KB path and 30 KB query", "/" + huge[:30<<10] + "?q=" + huge[:30<<10], nil, http.StatusNotFound, "…(30722 bytes)", 1024},
		{"40 KB user name", "/v1-kpki/needs-auth", func(r *http.Request) { r.SetBasicAuth(huge[:40<<10], "x") }, http.StatusUnauthorized, "…(40960 bytes)", 1024},
		{"60 KB header in the error", "/v1-kpki/echo", func(r *http.Request) { r.Header.Set("X-Node", huge) }, http.StatusBadRequest, "…(61463 bytes)", 2048},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(ts.log.String())
			code, _, body := ts.do(t, http.MethodGet, tc.path, tc.setup)
			if code != tc.code {
				t.Fatalf("status %d, want %d (%.200s)", code, tc.code, body)
			}
			lines := strings.Split(strings.TrimSpace(ts.log.String()[before:]), "\n")
			if len(lines) == 0 || lines[0] == "" {
				t.Fatal("nothing logged")
			}
			for _, l := range lines {
				if len(l) > tc.bound {
					t.Errorf("log line of %d bytes: %.300s…", len(l), l)
				}
			}
			if !strings.Contains(strings.Join(lines, "\n"), tc.marker) {
				t.Errorf("log does not say how long the clipped value was (%q):\n%s", tc.marker, strings.Join(lines, "\n"))
			}
		})
	}
}

// TestServerLimits: Serve runs with httplimit.Default unless Config.Limits says otherwise.
func TestServerLimits(t *testing.T) {
	srv := New(Config{}).httpServer()
	d := httplimit.Default()
	if srv.ReadHeaderTimeout != d.ReadHeaderTimeout || srv.ReadTimeout != d.ReadTimeout || srv.WriteTimeout != d.WriteTimeout ||
		srv.IdleTimeout != d.IdleTimeout || srv.MaxHeaderBytes != d.MaxHeaderBytes {
		t.Errorf("supervisor server limits %v %v %v %v %d, want %+v", srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout, srv.MaxHeaderBytes, d)
	}
	if srv.ErrorLog == nil || srv.TLSConfig == nil {
		t.Error("supervisor server without its error log or TLS config")
	}
}

// assertDisconnected reads from c until the server closes it; it fails if that takes
// more than 5 s.
func assertDisconnected(t *testing.T, c net.Conn) {
	t.Helper()
	start := time.Now()
	if err := c.SetReadDeadline(start.Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server kept the connection open for %v", time.Since(start).Round(time.Millisecond))
	}
}

// TestSlowClientsDisconnected: with a 200 ms header timeout, a client that opens a
// connection and sends nothing (no TLS handshake), or completes the handshake and sends
// half a request header, is disconnected.
func TestSlowClientsDisconnected(t *testing.T) {
	ts := startServer(t, Config{Limits: httplimit.Limits{ReadHeaderTimeout: 200 * time.Millisecond}}, nil)
	t.Run("no handshake", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", ts.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		assertDisconnected(t, c)
	})
	t.Run("partial header", func(t *testing.T) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ts.addr,
			&tls.Config{RootCAs: ts.ca.pool, MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "); err != nil {
			t.Fatal(err)
		}
		assertDisconnected(t, c)
	})
	t.Run("a whole request is still served", func(t *testing.T) {
		if code, _, _ := ts.do(t, http.MethodGet, "/ping", nil); code != http.StatusOK {
			t.Errorf("ping status %d", code)
		}
	})
}
