package supervisor

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestRequestLogAtDebug: at debug level every request is logged with its path, user and
// status, never the password; at info level none is.
func TestRequestLogAtDebug(t *testing.T) {
	for _, level := range []slog.Level{slog.LevelDebug, slog.LevelInfo} {
		var buf bytes.Buffer
		log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: level}))
		h := New(Config{Log: log}).httpServer().Handler
		for _, path := range []string{"/ping", "/no-such"} {
			req := httptest.NewRequest(http.MethodGet, "https://kpki.test"+path+"?a=b", nil)
			req.SetBasicAuth("server", "request-log-secret")
			h.ServeHTTP(httptest.NewRecorder(), req)
		}
		out := buf.String()
		if level == slog.LevelInfo {
			if strings.Contains(out, "msg=request") {
				t.Errorf("request lines at info level:\n%s", out)
			}
			continue
		}
		for _, want := range []string{
			"level=DEBUG msg=request method=GET path=/ping query=\"a=b\" user=server remote=192.0.2.1:1234 status=200",
			"level=DEBUG msg=request method=GET path=/no-such query=\"a=b\" user=server remote=192.0.2.1:1234 status=404",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("log lacks %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "request-log-secret") {
			t.Errorf("the password is in the log:\n%s", out)
		}
	}
}
