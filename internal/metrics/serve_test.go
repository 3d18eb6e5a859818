package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/httplimit"
)

// TestServeLimits: the metrics listener runs with every timeout and the header bound of
// httplimit.Default.
func TestServeLimits(t *testing.T) {
	srv := New().httpServer(httplimit.Default())
	d := httplimit.Default()
	if srv.ReadHeaderTimeout != d.ReadHeaderTimeout || srv.ReadTimeout != d.ReadTimeout || srv.WriteTimeout != d.WriteTimeout ||
		srv.IdleTimeout != d.IdleTimeout || srv.MaxHeaderBytes != d.MaxHeaderBytes {
		t.Errorf("metrics server limits %v %v %v %v %d, want %+v", srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout, srv.MaxHeaderBytes, d)
	}
	if zero := New().httpServer(httplimit.Limits{}); zero.ReadTimeout != d.ReadTimeout || zero.IdleTimeout != d.IdleTimeout {
		t.Errorf("zero limits not defaulted: %v %v", zero.ReadTimeout, zero.IdleTimeout)
	}
}

// TestServeDisconnectsSlowClients: with a 200 ms header timeout, a client that sends half a
// request header is disconnected, one that sends nothing too, and a whole request is served.
func TestServeDisconnectsSlowClients(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New().Serve(ctx, ln, httplimit.Limits{ReadHeaderTimeout: 200 * time.Millisecond}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	for _, tc := range []struct{ name, send string }{
		{"partial header", "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "},
		{"nothing", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, tc.send); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if err := c.SetReadDeadline(start.Add(5 * time.Second)); err != nil {
				t.Fatal(err)
			}
			_, err = io.Copy(io.Discard, c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the metrics listener kept the connection open for %v", time.Since(start).Round(time.Millisecond))
			}
		})
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "kpki_restart_required") {
		t.Errorf("GET /metrics: %d %.200s", resp.StatusCode, body)
	}
}
