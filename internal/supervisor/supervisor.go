// Package supervisor is kpki's HTTPS API (SPEC §7): the unauthenticated endpoints a
// joining node uses before it trusts the cluster (/cacerts, /ping, /readyz) and the
// /v1-kpki endpoints. It serves a certificate that can be replaced while running and
// answers errors as JSON with an id that is also logged. It decides nothing about the
// PKI itself: the server hands it functions to call.
package supervisor

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/httplimit"
)

// Config is what the supervisor needs from the server.
type Config struct {
	Log *slog.Logger
	// Clock times the slowing down of failed authentications; the wall clock when nil.
	Clock clock.Clock
	// CACerts returns the server CA bundle served at /cacerts.
	CACerts func() []byte
	// Ready returns nil when the datastore and the PKI are ready.
	Ready func(ctx context.Context) error
	// Authenticate checks basic-auth credentials for the /v1-kpki endpoints.
	Authenticate Authenticator
	// Limits are the server's timeouts and header bound (httplimit.Default for zero
	// fields).
	Limits httplimit.Limits
	// Certificate, when set, is asked for the serving certificate at each handshake
	// instead of the one SetCertificate stores: a server that swaps its certificate
	// together with other state keeps both behind one pointer.
	Certificate func() *tls.Certificate
}

// Supervisor is the HTTPS API.
type Supervisor struct {
	cfg   Config
	cert  atomic.Pointer[tls.Certificate]
	mux   *http.ServeMux
	authL *authLimiter
}

// New builds the API.
func New(cfg Config) *Supervisor {
	s := &Supervisor{cfg: cfg, mux: http.NewServeMux(), authL: newAuthLimiter(cfg.Clock, authBurst, authRefill, authTable)}
	s.mux.HandleFunc(api.Pattern(http.MethodGet, api.PathCACerts), s.cacerts)
	s.mux.HandleFunc(api.Pattern(http.MethodGet, api.PathPing), func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set(api.HeaderContentType, api.ContentTypeText)
		fmt.Fprint(w, "pong")
	})
	s.mux.HandleFunc(api.Pattern(http.MethodGet, api.PathReadyz), s.readyz)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.Error(w, r, http.StatusNotFound, fmt.Errorf("no such endpoint: %s", Clip(r.Method+" "+r.URL.Path, ClientFieldMax)))
	})
	return s
}

// Handle registers an additional endpoint (pattern as for http.ServeMux).
func (s *Supervisor) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// SetCertificate replaces the serving certificate; new connections use it at once.
func (s *Supervisor) SetCertificate(c *tls.Certificate) { s.cert.Store(c) }

// Certificate returns the serving certificate.
func (s *Supervisor) Certificate() *tls.Certificate {
	if s.cfg.Certificate != nil {
		return s.cfg.Certificate()
	}
	return s.cert.Load()
}

// TLSConfig is the server-side TLS configuration.
func (s *Supervisor) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c := s.Certificate()
			if c == nil {
				return nil, errors.New("no serving certificate yet")
			}
			return c, nil
		},
	}
}

// httpServer is the http.Server Serve runs.
func (s *Supervisor) httpServer() *http.Server {
	srv := s.cfg.Limits.Server(s.logRequests(s.mux))
	srv.TLSConfig = s.TLSConfig()
	// HTTP/1.1 only: every client of the supervisor (agents, joining servers, kpki's
	// commands) sends a few short requests, each answered in full, over a connection of
	// its own; HTTP/2's multiplexing buys them nothing, and Go's HTTP/2 server spends
	// more CPU on each small request (framing, HPACK, a goroutine per stream and a
	// writer goroutine per frame) than HTTP/1.1 does on a kept-alive connection.
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.ErrorLog = log.New(serverErrorLog{s.cfg.Log}, "", 0)
	return srv
}

// logRequests logs every request at debug level when the logger has that level
// enabled: method, path, query and basic-auth user (clipped; never the password), remote
// address, status and duration. Otherwise it is next itself.
func (s *Supervisor) logRequests(next http.Handler) http.Handler {
	if s.cfg.Log == nil || !s.cfg.Log.Enabled(context.Background(), slog.LevelDebug) {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		s.cfg.Log.Debug("request", append(requestAttrs(r), "status", rec.status, "duration", time.Since(start))...)
	})
}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Serve serves HTTPS on ln until ctx ends.
func (s *Supervisor) Serve(ctx context.Context, ln net.Listener) error {
	srv := s.httpServer()
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}

func (s *Supervisor) cacerts(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set(api.HeaderContentType, api.ContentTypePEM)
	w.Write(s.cfg.CACerts())
}

func (s *Supervisor) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if err := s.cfg.Ready(ctx); err != nil {
		s.Error(w, r, http.StatusServiceUnavailable, err)
		return
	}
	w.Header().Set(api.HeaderContentType, api.ContentTypeText)
	fmt.Fprint(w, "ok")
}

// Error answers an api.ErrorBody {"error": msg, "id": id} with status code and logs the
// same id.
func (s *Supervisor) Error(w http.ResponseWriter, r *http.Request, code int, err error) {
	s.ErrorList(w, r, code, err, nil)
}

// Unavailable answers 503 with an api.ErrorBody and a Retry-After header of
// retryAfter (rounded up to whole seconds): the request may succeed when repeated.
// detail, the full cause, is logged with the same id but not sent.
func (s *Supervisor) Unavailable(w http.ResponseWriter, r *http.Request, err, detail error, retryAfter time.Duration) {
	secs := int64((retryAfter + time.Second - 1) / time.Second)
	w.Header().Set(api.HeaderRetryAfter, strconv.FormatInt(max(secs, 1), 10))
	s.errorDetail(w, r, http.StatusServiceUnavailable, err, detail, nil)
}

// ErrorList is Error with the list of every failed check in "errors".
func (s *Supervisor) ErrorList(w http.ResponseWriter, r *http.Request, code int, err error, list []string) {
	s.errorDetail(w, r, code, err, nil, list)
}

func (s *Supervisor) errorDetail(w http.ResponseWriter, r *http.Request, code int, err, detail error, list []string) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	attrs := append([]any{"id", id}, requestAttrs(r)...)
	attrs = append(attrs, "status", code, "error", Clip(err.Error(), MessageMax))
	if detail != nil && detail.Error() != err.Error() {
		attrs = append(attrs, "detail", Clip(detail.Error(), MessageMax))
	}
	if len(list) > 0 {
		attrs = append(attrs, "errors", clipList(list))
	}
	s.cfg.Log.Warn("request failed", attrs...)
	api.WriteError(w, code, api.ErrorBody{Error: err.Error(), ID: id, Errors: list})
}

// JSON answers v as JSON with status 200.
func JSON(w http.ResponseWriter, v any) { api.WriteJSON(w, v) }
