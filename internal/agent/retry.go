package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certapply"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/token"
)

// StatusError is an answer of the server other than 200 OK. Message is the whole error
// text, naming the server and its error message and id.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string { return e.Message }

// TransportError is a request that got no answer: the connection could not be made or
// broke, or the request timed out. Err is the HTTP client's error, kept for Transient
// (a certificate the pinned CA did not sign, found in Err, is not transient).
type TransportError struct {
	Message string
	Err     error
}

func (e *TransportError) Error() string { return e.Message }

func (e *TransportError) Unwrap() error { return e.Err }

// Backoff between rounds of retries: every server is tried once per round, then the
// agent waits, doubling the wait up to retryMaxWait.
const (
	retryFirstWait = 500 * time.Millisecond
	retryMaxWait   = 15 * time.Second
)

// Transient reports whether err is a failure that may pass when the pass is repeated,
// on the same server or another: the server could not be reached or its connection
// broke (refused, reset, EOF in the TLS handshake of a dying server, timeout), or it
// answered 5xx, 429 or 408. Refusals (4xx), a CA that does not match the token's pin,
// certificate and TLS failures other than a server-side TLS error, problems with the
// files on disk and the caller's cancellation are not transient. Every error of a
// joined error must be transient.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs := j.Unwrap()
		for _, e := range errs {
			if !Transient(e) {
				return false
			}
		}
		return len(errs) > 0
	}
	if permanent(err) {
		return false
	}
	code := 0
	var se *StatusError
	var ase *api.StatusError
	switch {
	case errors.As(err, &se):
		code = se.Code
	case errors.As(err, &ase):
		code = ase.Code
	}
	if code != 0 {
		switch code {
		case http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout,
			http.StatusTooManyRequests, http.StatusRequestTimeout:
			return true
		}
		return false
	}
	var ue *url.Error
	var ne net.Error
	var te *TransportError
	var alert tls.AlertError
	var dns *net.DNSError
	switch {
	case errors.As(err, &dns) && dns.IsNotFound:
		return false // no such host
	case errors.Is(err, context.DeadlineExceeded):
		return true // the request's own timeout; the caller's context is checked apart
	case errors.As(err, &alert):
		return alert == tls.AlertError(80) // internal_error: a server without its serving certificate yet
	case errors.As(err, &te), errors.As(err, &ue), errors.As(err, &ne):
		return true // no answer: dial, TLS handshake or connection failure
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return true
	}
	return false
}

// permanent finds the causes that no retry can change anywhere in err's chain.
func permanent(err error) bool {
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		notTLS    tls.RecordHeaderError
		plan      *certapply.FileError
	)
	return errors.Is(err, context.Canceled) || errors.Is(err, token.ErrCAHashMismatch) || errors.Is(err, datadir.ErrLocked) ||
		errors.Is(err, http.ErrSchemeMismatch) ||
		errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &notTLS) ||
		errors.As(err, &plan)
}

// RetryError is a pass given up on after transient failures until the retry deadline.
type RetryError struct {
	Attempts int
	Elapsed  time.Duration
	Servers  []string
	// Err is the error of the last attempt.
	Err error
}

func (e *RetryError) Error() string {
	return fmt.Sprintf("%v (gave up after %d attempts in %s; servers tried: %s)",
		e.Err, e.Attempts, e.Elapsed.Round(time.Second), strings.Join(e.Servers, ", "))
}

func (e *RetryError) Unwrap() error { return e.Err }

// retrier repeats an attempt on transient failures across servers up to a deadline.
type retrier struct {
	clock    clock.Clock
	sleep    func(ctx context.Context, d time.Duration) error
	jitter   func(d time.Duration) time.Duration
	deadline time.Duration // 0: each server once, no waiting
	servers  []string
	// onRetry is told of every failed attempt that will be followed by another, on
	// server next after wait.
	onRetry func(server, attempt int, err error, next int, wait time.Duration)
	// bound derives an attempt's context ending after d; nil: context.WithTimeout.
	bound func(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc)
}

// run calls attempt with a server index, from start on, until an attempt succeeds,
// fails with a non-transient error, or no further attempt fits before the deadline.
// After a transient failure the next attempt goes to the next server at once; once
// every server failed in a round the retrier waits, doubling the wait each round. Each
// attempt's context ends at the deadline. It returns the server of the last attempt.
func (r *retrier) run(ctx context.Context, start int, attempt func(ctx context.Context, server int) error) (int, error) {
	begin := r.clock.Now()
	end := begin.Add(r.deadline)
	server, wait, inRound := start, retryFirstWait, 0
	var last error
	for n := 1; ; n++ {
		actx, cancel := ctx, context.CancelFunc(func() {})
		if r.deadline > 0 {
			bound := r.bound
			if bound == nil {
				bound = context.WithTimeout
			}
			actx, cancel = bound(ctx, end.Sub(r.clock.Now()))
		}
		err := attempt(actx, server)
		cut := err != nil && actx.Err() != nil && ctx.Err() == nil
		cancel()
		if cut {
			// The deadline ended this attempt: the previous failure says more about why.
			if last == nil {
				last = err
			}
			return server, &RetryError{Attempts: n, Elapsed: r.clock.Now().Sub(begin), Servers: r.servers, Err: last}
		}
		if err == nil || ctx.Err() != nil || !Transient(err) {
			return server, err
		}
		last = err
		next := (server + 1) % len(r.servers)
		inRound++
		var pause time.Duration
		if inRound >= len(r.servers) {
			if r.deadline <= 0 {
				return server, err // every server tried once
			}
			pause, wait, inRound = r.jitter(wait), min(2*wait, retryMaxWait), 0
		}
		if r.deadline > 0 && !r.clock.Now().Add(pause).Before(end) {
			return server, &RetryError{Attempts: n, Elapsed: r.clock.Now().Sub(begin), Servers: r.servers, Err: err}
		}
		if r.onRetry != nil {
			r.onRetry(server, n, err, next, pause)
		}
		if pause > 0 {
			if serr := r.sleep(ctx, pause); serr != nil {
				return server, err
			}
		}
		server = next
	}
}

// jitter spreads a wait over [3/4 d, 5/4 d), so that agents that failed together do not
// retry together.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d*3/4 + rand.N(d/2+1)
}

// passWithRetry runs passes on the agent's servers until one succeeds, a failure is not
// transient, or the retry deadline passes. The result adds up what every attempt did.
func (a *Agent) passWithRetry(ctx context.Context) (Result, error) {
	var total Result
	names := make([]string, len(a.servers))
	for i, u := range a.servers {
		names[i] = u.String()
	}
	r := &retrier{
		clock: a.clock, sleep: a.sleep, jitter: a.jitter, deadline: a.cfg.RetryDeadline, servers: names,
		onRetry: func(server, n int, err error, next int, wait time.Duration) {
			a.log.Warn("the pass failed with a transient error; retrying", "server", names[server], "attempt", n,
				"error", err, "next-server", names[next], "retry-in", wait)
		},
	}
	attempts := 0
	server, err := r.run(ctx, a.cur, func(ctx context.Context, i int) error {
		attempts++
		a.base = a.servers[i]
		res, err := a.pass(ctx)
		total.add(res)
		return err
	})
	if err != nil && Transient(err) {
		server = (server + 1) % len(a.servers) // the next pass starts on another server
	}
	a.cur = server
	if err == nil && attempts > 1 {
		a.log.Info("certificate pass succeeded after retries", "server", a.base.String(), "attempts", attempts)
	}
	return total, err
}

// add appends what another attempt of the same pass did.
func (r *Result) add(o Result) {
	r.Issued = append(r.Issued, o.Issued...)
	r.Renewed = append(r.Renewed, o.Renewed...)
	r.Rebundled = append(r.Rebundled, o.Rebundled...)
	r.Written = append(r.Written, o.Written...)
}
