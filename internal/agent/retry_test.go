package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/certapply"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/token"
)

// get makes one HTTPS request with client and returns its error.
func get(t *testing.T, ctx context.Context, c *http.Client, url string) error {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("GET %s succeeded, want an error", url)
	}
	return err
}

// realErrors makes the errors the HTTP client of a pass meets on the network, against
// real sockets on loopback.
func realErrors(t *testing.T) map[string]error {
	t.Helper()
	ctx := context.Background()
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer insecure.CloseIdleConnections()
	out := map[string]error{}

	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "https://" + ln.Addr().String()
	ln.Close()
	out["connection refused"] = get(t, ctx, insecure, closed)

	// A dying server: it accepts the connection and closes it during the TLS handshake.
	dying, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dying.Close()
	go func() {
		for {
			c, err := dying.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	out["EOF in the TLS handshake"] = get(t, ctx, insecure, "https://"+dying.Addr().String())

	// The request's own timeout, already passed.
	expired, cancel := context.WithDeadline(ctx, time.Unix(0, 0))
	defer cancel()
	out["request timeout"] = get(t, expired, insecure, "https://"+dying.Addr().String())

	cancelled, cancel2 := context.WithCancel(ctx)
	cancel2()
	out["cancelled by the caller"] = get(t, cancelled, insecure, "https://"+dying.Addr().String())

	// A TLS server whose certificate the client's roots did not sign.
	other := httptest.NewUnstartedServer(http.NotFoundHandler())
	other.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake
	other.StartTLS()
	defer other.Close()
	strict := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: nil, MinVersion: tls.VersionTLS12}}}
	defer strict.CloseIdleConnections()
	out["unknown certificate authority"] = get(t, ctx, strict, other.URL)

	// A plain HTTP server.
	plain := httptest.NewServer(http.NotFoundHandler())
	defer plain.Close()
	out["plain http"] = get(t, ctx, insecure, "https://"+strings.TrimPrefix(plain.URL, "http://"))
	return out
}

func TestTransient(t *testing.T) {
	real := realErrors(t)
	for name, err := range real {
		t.Logf("%s: %v", name, err)
	}
	status := func(code int) error {
		return &StatusError{Code: code, Message: fmt.Sprintf("POST /v1-kpki/client-kubelet.crt at https://127.0.0.2:9345 failed: %d", code)}
	}
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", real["connection refused"], true},
		{"EOF in the TLS handshake of a dying server", real["EOF in the TLS handshake"], true},
		{"request timeout", real["request timeout"], true},
		{"connection reset", reset, true},
		{"connection reset, wrapped", fmt.Errorf("cannot reach the kpki server at https://127.0.0.1:9345: %w", reset), true},
		{"transport error wrapping a refused connection", &TransportError{Message: "cannot reach the kpki server", Err: real["connection refused"]}, true},
		{"transport error whose cause is not kept", &TransportError{Message: "cannot reach the kpki server: stream error: INTERNAL_ERROR"}, true},
		{"TLS internal error alert (no serving certificate yet)", tls.AlertError(80), true},
		{"DNS timeout", &net.DNSError{Err: "i/o timeout", Name: "kpki", IsTimeout: true}, true},
		{"500", status(500), true},
		{"502", status(502), true},
		{"503 no quorum", fmt.Errorf("sign: %w", status(503)), true},
		{"504", status(504), true},
		{"429", status(429), true},
		{"408", status(408), true},
		{"transport failure and 503 joined", errors.Join(real["connection refused"], status(503)), true},

		{"cancelled by the caller", real["cancelled by the caller"], false},
		{"context cancelled", context.Canceled, false},
		{"unknown certificate authority", real["unknown certificate authority"], false},
		{"transport error wrapping an unknown authority", &TransportError{Message: "presented a certificate that the cluster CA did not sign", Err: real["unknown certificate authority"]}, false},
		{"plain http", real["plain http"], false},
		{"TLS bad certificate alert", tls.AlertError(42), false},
		{"no such host", &net.DNSError{Err: "no such host", Name: "kpki.invalid", IsNotFound: true}, false},
		{"400", status(400), false},
		{"401", status(401), false},
		{"403", status(403), false},
		{"404", status(404), false},
		{"409", status(409), false},
		{"501", status(501), false},
		{"CA hash mismatch", fmt.Errorf("%w: aaa != bbb", token.ErrCAHashMismatch), false},
		{"files on disk", &certapply.FileError{Err: errors.New("client-kubelet.crt: not PEM")}, false},
		{"a file problem joined with a 503", errors.Join(&certapply.FileError{Err: errors.New("bad key")}, status(503)), false},
		{"agent lock held", fmt.Errorf("another kpki process holds the agent lock: %w", datadir.ErrLocked), false},
		{"a message that reads like a network failure", errors.New("cannot reach the kpki server at https://127.0.0.1:9345: connection refused"), false},
		{"no error", nil, false},
		{"empty join", errors.Join(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err == nil && tc.name != "no error" && tc.name != "empty join" {
				t.Fatal("the error was not produced")
			}
			if got := Transient(tc.err); got != tc.want {
				t.Errorf("Transient(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// fakeRetrier runs on a fake clock: a wait advances the clock at once and is recorded.
func fakeRetrier(deadline time.Duration, servers ...string) (*retrier, *clock.Fake, *[]time.Duration) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var waits []time.Duration
	r := &retrier{
		clock: clk, deadline: deadline, servers: servers,
		jitter: func(d time.Duration) time.Duration { return d },
		sleep: func(ctx context.Context, d time.Duration) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			waits = append(waits, d)
			clk.Advance(d)
			return nil
		},
	}
	return r, clk, &waits
}

var errUnavailable = &StatusError{Code: http.StatusServiceUnavailable, Message: "POST /v1-kpki/client-kubelet.crt at https://127.0.0.3:9345 failed: datastore unavailable (no quorum)"}

func durations(s ...string) []time.Duration {
	out := make([]time.Duration, len(s))
	for i, v := range s {
		d, err := time.ParseDuration(v)
		if err != nil {
			panic(err)
		}
		out[i] = d
	}
	return out
}

func TestRetrier(t *testing.T) {
	t.Run("one server: backoff doubles until the pass succeeds", func(t *testing.T) {
		r, _, waits := fakeRetrier(2*time.Minute, "https://a:9345")
		n := 0
		server, err := r.run(context.Background(), 0, func(ctx context.Context, i int) error {
			n++
			if _, ok := ctx.Deadline(); !ok {
				t.Error("the attempt's context has no deadline")
			}
			if n < 4 {
				return errUnavailable
			}
			return nil
		})
		if err != nil || server != 0 || n != 4 {
			t.Fatalf("run = %d, %v after %d attempts; want success on the fourth", server, err, n)
		}
		if want := durations("500ms", "1s", "2s"); !slices.Equal(*waits, want) {
			t.Errorf("waits %v, want %v", *waits, want)
		}
	})

	t.Run("several servers: the next one at once, a wait after each round", func(t *testing.T) {
		r, _, waits := fakeRetrier(2*time.Minute, "https://a:9345", "https://b:9345", "https://c:9345")
		var visited []int
		var retries []string
		r.onRetry = func(server, n int, err error, next int, wait time.Duration) {
			retries = append(retries, fmt.Sprintf("%d->%d after %s", server, next, wait))
		}
		server, err := r.run(context.Background(), 1, func(_ context.Context, i int) error {
			visited = append(visited, i)
			if len(visited) < 5 {
				return errUnavailable
			}
			return nil
		})
		if err != nil || server != 2 {
			t.Fatalf("run = %d, %v; want success on server 2", server, err)
		}
		if want := []int{1, 2, 0, 1, 2}; !slices.Equal(visited, want) {
			t.Errorf("servers tried %v, want %v", visited, want)
		}
		if want := durations("500ms"); !slices.Equal(*waits, want) {
			t.Errorf("waits %v, want %v", *waits, want)
		}
		if want := []string{"1->2 after 0s", "2->0 after 0s", "0->1 after 500ms", "1->2 after 0s"}; !slices.Equal(retries, want) {
			t.Errorf("retries %q, want %q", retries, want)
		}
	})

	t.Run("gives up at the deadline", func(t *testing.T) {
		r, clk, waits := fakeRetrier(2*time.Minute, "https://a:9345", "https://b:9345")
		start := clk.Now()
		n := 0
		_, err := r.run(context.Background(), 0, func(context.Context, int) error { n++; return errUnavailable })
		var re *RetryError
		if !errors.As(err, &re) || !errors.Is(err, errUnavailable) {
			t.Fatalf("run = %v, want a RetryError wrapping the last error", err)
		}
		if elapsed := clk.Now().Sub(start); elapsed >= 2*time.Minute {
			t.Errorf("%s passed, want less than the deadline", elapsed)
		}
		if want := durations("500ms", "1s", "2s", "4s", "8s", "15s", "15s", "15s", "15s", "15s", "15s"); !slices.Equal(*waits, want) {
			t.Errorf("waits %v, want %v", *waits, want)
		}
		if re.Attempts != n || n != 2*(len(*waits)+1) {
			t.Errorf("%d attempts reported, %d made, %d waits", re.Attempts, n, len(*waits))
		}
		for _, w := range []string{"datastore unavailable (no quorum)", fmt.Sprintf("gave up after %d attempts", n), "https://a:9345, https://b:9345"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not contain %q", err, w)
			}
		}
		if !Transient(err) {
			t.Error("the RetryError of transient failures is not transient")
		}
	})

	t.Run("an attempt cut by the deadline reports the failure before it", func(t *testing.T) {
		r, _, _ := fakeRetrier(10*time.Second, "https://a:9345")
		var reach func() // ends the current attempt's context as its deadline would
		r.bound = func(ctx context.Context, _ time.Duration) (context.Context, context.CancelFunc) {
			c, cancel := context.WithCancel(ctx)
			reach = cancel
			return c, cancel
		}
		n := 0
		_, err := r.run(context.Background(), 0, func(ctx context.Context, _ int) error {
			n++
			if n < 3 {
				return errUnavailable
			}
			reach() // a slow answer: the deadline ends the attempt
			return &TransportError{Message: "cannot reach the kpki server: context deadline exceeded", Err: ctx.Err()}
		})
		var re *RetryError
		if !errors.As(err, &re) || re.Err != errUnavailable || re.Attempts != 3 {
			t.Fatalf("run = %#v, want a RetryError after 3 attempts with the 503 as its cause", err)
		}
	})

	t.Run("a failure that is not transient ends at once", func(t *testing.T) {
		for _, perm := range []error{
			&StatusError{Code: http.StatusUnauthorized, Message: "the server refused the token"},
			fmt.Errorf("%w: aaa != bbb", token.ErrCAHashMismatch),
			errors.New("unknown"),
		} {
			r, _, waits := fakeRetrier(2*time.Minute, "https://a:9345", "https://b:9345")
			n := 0
			_, err := r.run(context.Background(), 0, func(context.Context, int) error { n++; return perm })
			if err != perm || n != 1 || len(*waits) != 0 {
				t.Errorf("%v: run = %v after %d attempts and waits %v; want it returned unchanged after one", perm, err, n, *waits)
			}
		}
	})

	t.Run("no deadline: every server once, no waiting", func(t *testing.T) {
		r, _, waits := fakeRetrier(0, "https://a:9345", "https://b:9345")
		var visited []int
		server, err := r.run(context.Background(), 1, func(ctx context.Context, i int) error {
			visited = append(visited, i)
			if _, ok := ctx.Deadline(); ok {
				t.Error("the attempt got a deadline without a retry deadline")
			}
			return errUnavailable
		})
		if err != errUnavailable || server != 0 || !slices.Equal(visited, []int{1, 0}) || len(*waits) != 0 {
			t.Errorf("run = %d, %v; visited %v, waits %v", server, err, visited, *waits)
		}
	})

	t.Run("the caller's context ends the retries", func(t *testing.T) {
		r, _, waits := fakeRetrier(2*time.Minute, "https://a:9345")
		ctx, cancel := context.WithCancel(context.Background())
		n := 0
		_, err := r.run(ctx, 0, func(context.Context, int) error {
			n++
			if n == 3 {
				cancel()
			}
			return errUnavailable
		})
		if err != errUnavailable || n != 3 || len(*waits) != 2 {
			t.Errorf("run = %v after %d attempts and waits %v; want the last error after 3", err, n, *waits)
		}
	})
}

func TestServerURLs(t *testing.T) {
	cfg := Defaults()
	cfg.Token, cfg.DataDir, cfg.NodeName = agentPassword, t.TempDir(), testNode
	cfg.ServerURL = " https://127.0.0.2:9345/ ,https://127.0.0.3:9345,, https://127.0.0.2:9345"
	a, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := a.serverList(); got != "https://127.0.0.2:9345,https://127.0.0.3:9345" {
		t.Errorf("servers %q", got)
	}
	if a.base != a.servers[0] || a.apiServer != "https://127.0.0.2:6443" {
		t.Errorf("base %s, api server %s; want the first server's host", a.base, a.apiServer)
	}
	for _, tc := range []struct{ url, want string }{
		{"https://127.0.0.2:9345,http://127.0.0.3:9345", `--server "http://127.0.0.3:9345" must look like https://host:port`},
		{" , ", "--server is required"},
	} {
		cfg.ServerURL = tc.url
		if _, err := New(cfg, Options{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.url, err, tc.want)
		}
	}
	cfg.ServerURL, cfg.RetryDeadline = "https://127.0.0.2:9345", -time.Second
	if _, err := New(cfg, Options{}); err == nil || !strings.Contains(err.Error(), "--retry-deadline -1s must not be negative") {
		t.Errorf("negative deadline: %v", err)
	}
}

// TestRefusalIsNotRetried runs a real pass against the fake server with a retry
// deadline: a refused token is answered once, not repeated.
func TestRefusalIsNotRetried(t *testing.T) {
	fx := newFixture(t)
	fx.cfg.Token = strings.Replace(fx.fake.secureToken(), agentPassword, "wrong-password", 1)
	fx.cfg.RetryDeadline = time.Minute
	a, _ := fx.agent()
	_, err := a.RunOnce(context.Background())
	if err == nil || !strings.Contains(err.Error(), "refused the token") {
		t.Fatalf("RunOnce = %v, want the refusal", err)
	}
	if n := len(fx.fake.takeRequests()); n != 2 {
		t.Errorf("%d requests, want 2 (GET /cacerts and the refused GET of the server CA)", n)
	}
}
