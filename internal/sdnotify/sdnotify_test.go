package sdnotify

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func receive(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no datagram: %v", err)
	}
	return string(buf[:n])
}

func TestNoSocketIsNoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	sent, err := Notify(Ready)
	if sent || err != nil {
		t.Fatalf("Notify without NOTIFY_SOCKET = %v, %v; want false, nil", sent, err)
	}
}

func TestPathSocket(t *testing.T) {
	name := filepath.Join(t.TempDir(), "notify")
	c := listen(t, name)
	t.Setenv("NOTIFY_SOCKET", name)
	for _, state := range []string{Ready, Stopping} {
		sent, err := Notify(state)
		if !sent || err != nil {
			t.Fatalf("Notify(%q) = %v, %v", state, sent, err)
		}
		if got := receive(t, c); got != state {
			t.Fatalf("received %q, want %q", got, state)
		}
	}
}

func TestAbstractSocket(t *testing.T) {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	name := "@kpki-sdnotify-test-" + hex.EncodeToString(b)
	c := listen(t, name)
	t.Setenv("NOTIFY_SOCKET", name)
	sent, err := Notify(Ready)
	if !sent || err != nil {
		t.Fatalf("Notify = %v, %v", sent, err)
	}
	if got := receive(t, c); got != Ready {
		t.Fatalf("received %q, want %q", got, Ready)
	}
	// The same name without '@' is a relative path, not the abstract socket.
	if sent, err := notify(name[1:], Ready); sent || err == nil {
		t.Fatalf("notify(%q) = %v, %v; want a refusal", name[1:], sent, err)
	}
}

func TestNobodyListening(t *testing.T) {
	name := filepath.Join(t.TempDir(), "absent")
	sent, err := notify(name, Ready)
	if sent || err == nil || !strings.Contains(err.Error(), "notify systemd") {
		t.Fatalf("notify to a missing socket = %v, %v; want an error", sent, err)
	}
}
