package server

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpki/kpki/internal/clock"
)

// TestDebugRaisesEtcdLogLevel: with kpki at debug level (--debug) the embedded member
// logs at info level to its log file; otherwise at warn, so a normal start leaves no info
// line there.
func TestDebugRaisesEtcdLogLevel(t *testing.T) {
	for _, debug := range []bool{false, true} {
		dir := t.TempDir()
		level := slog.LevelInfo
		if debug {
			level = slog.LevelDebug
		}
		cfg := testConfig(t, dir)
		s, err := New(cfg, Options{Log: slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: level})), Clock: clock.Real{}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		s.Stop()
		data, err := os.ReadFile(filepath.Join(dir, "server", "logs", "etcd.log"))
		if err != nil && debug {
			t.Fatal(err)
		}
		info := strings.Contains(string(data), `"level":"info"`)
		if info != debug {
			t.Errorf("debug %v: etcd.log has info lines: %v", debug, info)
		}
	}
}
