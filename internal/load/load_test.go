package load

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests that run kpki-load against a real kpki server are in test/e2e (load_test.go).

// TestRefusesNonLoopback listens on a non-loopback address of this machine and checks
// that kpki-load refuses it without connecting.
func TestRefusesNonLoopback(t *testing.T) {
	var ip net.IP
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil && !n.IP.IsLinkLocalUnicast() {
			ip = n.IP
			break
		}
	}
	servers := []string{"https://192.0.2.1:9345", "https://0.0.0.0:9345"}
	var l *net.TCPListener
	if ip != nil {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		l = ln.(*net.TCPListener)
		servers = append(servers, "https://"+ln.Addr().String())
	} else {
		t.Log("this machine has no non-loopback IPv4 address: only the refusal message is checked")
	}
	for _, server := range servers {
		cfg := Config{Server: server, Token: "K10" + strings.Repeat("0", 64) + "::node:pw", Nodes: 2, Requests: 5,
			Concurrency: 1, Duration: time.Minute, Scenarios: []Scenario{Ping, Join}}
		_, err := Run(context.Background(), cfg, nil)
		if err == nil || !strings.Contains(err.Error(), "is not a loopback address") {
			t.Errorf("Run against %s = %v, want a refusal naming the non-loopback address", server, err)
		}
		var stderr bytes.Buffer
		if code := Main(context.Background(), []string{"--server", server, "--token", cfg.Token}, io.Discard, &stderr); code != ExitUsage ||
			!strings.Contains(stderr.String(), "only sends load to this machine") {
			t.Errorf("kpki-load --server %s: exit %d, %q", server, code, stderr.String())
		}
	}
	if l != nil {
		// A connection the kernel completed would be waiting in the accept queue; the
		// listening socket is non-blocking, so an empty queue answers EAGAIN at once.
		rc, err := l.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var accErr error
		if err := rc.Control(func(fd uintptr) {
			var nfd int
			if nfd, _, accErr = syscall.Accept(int(fd)); accErr == nil {
				syscall.Close(nfd)
			}
		}); err != nil {
			t.Fatal(err)
		}
		switch {
		case accErr == nil:
			t.Errorf("kpki-load connected to %s", l.Addr())
		case !errors.Is(accErr, syscall.EAGAIN):
			t.Errorf("accept on %s: %v", l.Addr(), accErr)
		}
	}
}
