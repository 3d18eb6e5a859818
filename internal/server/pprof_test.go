package server

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestPprofLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:6060", ":6060", "192.0.2.1:6060", "localhost:6060", "127.0.0.1"} {
		if l, err := listenPprof(addr); err == nil {
			l.Close()
			t.Errorf("listenPprof(%q) listened", addr)
		} else if !strings.Contains(err.Error(), "must be a loopback IP address") {
			t.Errorf("listenPprof(%q): %v", addr, err)
		}
	}
	l, err := listenPprof("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- servePprof(ctx, l) }()
	resp, err := http.Get("http://" + l.Addr().String() + "/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), ".test") {
		t.Errorf("cmdline: %d %q", resp.StatusCode, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("servePprof: %v", err)
	}
}
