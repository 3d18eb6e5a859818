package supervisor

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http"
	"unicode/utf8"
)

// Bounds of what is logged of a request: whatever a client sends (method, path, user
// name, header values) is logged at most ClientFieldMax bytes, the query at most
// QueryMax, an error message (which may quote a header) at most MessageMax bytes, an
// error list at most ListMax items. However long a client's URL or headers, a log line
// of a failed request stays under 2 KB, and under 1 KB when only the URL is long.
const (
	ClientFieldMax = 256
	QueryMax       = 128
	MessageMax     = 512
	ListMax        = 32
)

// Clip returns s cut to at most n bytes (at a UTF-8 boundary) followed by
// "…(<len> bytes)" when it is longer; s itself otherwise.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…(%d bytes)", s[:cut], len(s))
}

// clipList clips each item of list to MessageMax bytes and keeps at most ListMax items,
// the last saying how many were left out.
func clipList(list []string) []string {
	out := make([]string, 0, min(len(list), ListMax+1))
	for i, s := range list {
		if i == ListMax {
			out = append(out, fmt.Sprintf("…(%d more)", len(list)-ListMax))
			break
		}
		out = append(out, Clip(s, MessageMax))
	}
	return out
}

// requestAttrs are the log attributes of a request, client-controlled parts clipped.
func requestAttrs(r *http.Request) []any {
	attrs := []any{"method", Clip(r.Method, ClientFieldMax), "path", Clip(r.URL.Path, ClientFieldMax)}
	if r.URL.RawQuery != "" {
		attrs = append(attrs, "query", Clip(r.URL.RawQuery, QueryMax))
	}
	if user, _, ok := r.BasicAuth(); ok {
		attrs = append(attrs, "user", Clip(user, ClientFieldMax))
	}
	return append(attrs, "remote", r.RemoteAddr)
}

// serverErrorLog receives what net/http logs (TLS handshake errors and the like, which
// may quote what a client sent) and logs each line clipped, at debug level.
type serverErrorLog struct{ log *slog.Logger }

func (l serverErrorLog) Write(p []byte) (int, error) {
	l.log.Debug("http server", "message", Clip(string(bytes.TrimRight(p, "\n")), MessageMax))
	return len(p), nil
}
