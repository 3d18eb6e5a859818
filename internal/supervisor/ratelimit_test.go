package supervisor

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/clock"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// try is one failed authentication attempt of key: refused with the wait, or counted.
func (l *authLimiter) try(key string) time.Duration {
	if w := l.wait(key); w > 0 {
		return w
	}
	l.failed(key)
	return 0
}

func TestAuthLimiterBucket(t *testing.T) {
	fc := clock.NewFake(t0)
	l := newAuthLimiter(fc, 3, 2*time.Second, 16)
	for i := range 3 {
		if w := l.try("a"); w != 0 {
			t.Fatalf("attempt %d of a full bucket waits %v", i+1, w)
		}
	}
	if w := l.try("a"); w != 2*time.Second {
		t.Fatalf("attempt on an empty bucket: wait %v, want 2s", w)
	}
	fc.Advance(1500 * time.Millisecond)
	if w := l.try("a"); w != 500*time.Millisecond {
		t.Fatalf("1.5 s later: wait %v, want 500ms", w)
	}
	if w := l.try("b"); w != 0 {
		t.Fatalf("another address waits %v behind a", w)
	}
	fc.Advance(500 * time.Millisecond)
	if w := l.try("a"); w != 0 {
		t.Fatalf("2 s after emptying: wait %v, want one attempt", w)
	}
	if w := l.try("a"); w != 2*time.Second {
		t.Fatalf("the refilled attempt was used: wait %v, want 2s", w)
	}
	// A long pause refills the bucket to its size, never beyond.
	fc.Advance(time.Hour)
	for i := range 3 {
		if w := l.try("a"); w != 0 {
			t.Fatalf("after an hour, attempt %d waits %v", i+1, w)
		}
	}
	if w := l.try("a"); w == 0 {
		t.Fatal("after an hour the bucket holds more than its size")
	}
	// Success forgets the address.
	l.succeeded("a")
	for i := range 3 {
		if w := l.try("a"); w != 0 {
			t.Fatalf("after a success, attempt %d waits %v", i+1, w)
		}
	}
}

func TestAuthLimiterTableBounded(t *testing.T) {
	fc := clock.NewFake(t0)
	l := newAuthLimiter(fc, 1, 2*time.Second, 4)
	if l.try("victim") != 0 || l.try("victim") == 0 {
		t.Fatal("a one-attempt bucket does not empty")
	}
	for i := range 100 {
		fc.Advance(time.Millisecond)
		l.try("flood-" + strconv.Itoa(i))
		if n := l.len(); n > 4 {
			t.Fatalf("table holds %d addresses, want at most 4", n)
		}
	}
	// The oldest address was evicted: it starts afresh rather than being locked, and
	// the newest ones are still limited.
	if w := l.try("victim"); w != 0 {
		t.Errorf("evicted address waits %v", w)
	}
	if w := l.try("flood-99"); w == 0 {
		t.Errorf("the most recent address lost its bucket")
	}
}

func TestClientKey(t *testing.T) {
	tests := map[string]string{
		"127.0.0.9:1234":           "127.0.0.9",
		"127.0.0.9:9999":           "127.0.0.9",
		"[::ffff:127.0.0.9]:1":     "127.0.0.9",
		"[2001:db8:1:2::1]:443":    "2001:db8:1:2::/64",
		"[2001:db8:1:2:ff::9]:443": "2001:db8:1:2::/64",
		"[2001:db8:1:3::1]:443":    "2001:db8:1:3::/64",
		"[fe80::1%eth0]:443":       "fe80::/64",
		"not an address":           "not an address",
	}
	for in, want := range tests {
		if got := clientKey(in); got != want {
			t.Errorf("clientKey(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestRequireSlowsFailedAuthentication drives Require with a fake clock: a flood of
// failures from one address gets 429 with Retry-After, without its credentials being
// checked; another address is served at once; the wait is bounded; a success resets.
func TestRequireSlowsFailedAuthentication(t *testing.T) {
	fc := clock.NewFake(t0)
	checked := 0
	auth := func(user, pw string) (Role, bool) {
		checked++
		return testAuth(user, pw)
	}
	s := New(Config{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Clock: fc, Authenticate: auth})
	h := s.Require(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }, RoleServer, RoleAgent)
	do := func(remote, user, pw string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, "/v1-kpki/x", nil)
		r.RemoteAddr = remote
		if user != "" || pw != "" {
			r.SetBasicAuth(user, pw)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	for i := range authBurst {
		// Every attempt from another source port: the address counts, not the connection.
		if w := do("127.0.0.9:"+strconv.Itoa(40000+i), "server", "guess-"+strconv.Itoa(i)); w.Code != http.StatusUnauthorized {
			t.Fatalf("failure %d: HTTP %d, want 401", i+1, w.Code)
		}
	}
	before := checked
	for _, cred := range [][2]string{{"server", "guess-x"}, {"server", serverPassword}} {
		w := do("127.0.0.9:50000", cred[0], cred[1])
		if w.Code != http.StatusTooManyRequests {
			t.Fatalf("after %d failures: HTTP %d, want 429", authBurst, w.Code)
		}
		ra, err := strconv.Atoi(w.Header().Get("Retry-After"))
		if err != nil || ra < 1 || ra > int(authRefill/time.Second) {
			t.Errorf("Retry-After %q, want 1..%d seconds", w.Header().Get("Retry-After"), int(authRefill/time.Second))
		}
		var body struct{ Error, ID string }
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || !strings.Contains(body.Error, "too many failed authentications") || body.ID == "" {
			t.Errorf("429 body %q (%v)", w.Body.String(), err)
		}
		if strings.Contains(w.Body.String(), serverPassword) {
			t.Error("the 429 answer holds the password")
		}
	}
	if checked != before {
		t.Errorf("credentials of a limited address were checked %d times", checked-before)
	}
	// Requests without credentials are not counted and still get their 401.
	if w := do("127.0.0.9:50001", "", ""); w.Code != http.StatusUnauthorized {
		t.Errorf("no credentials from the limited address: HTTP %d, want 401", w.Code)
	}
	// Another loopback address is served at once, and so is IPv6.
	for _, remote := range []string{"127.0.0.10:1", "[::1]:1"} {
		if w := do(remote, "server", serverPassword); w.Code != http.StatusOK {
			t.Errorf("good request from %s while 127.0.0.9 is limited: HTTP %d", remote, w.Code)
		}
	}
	// The wait is bounded: after authRefill one attempt more.
	fc.Advance(authRefill)
	if w := do("127.0.0.9:50002", "server", "guess-y"); w.Code != http.StatusUnauthorized {
		t.Fatalf("after %v: HTTP %d, want the attempt checked (401)", authRefill, w.Code)
	}
	if w := do("127.0.0.9:50003", "server", serverPassword); w.Code != http.StatusTooManyRequests {
		t.Fatalf("second attempt after one refill: HTTP %d, want 429", w.Code)
	}
	// A success resets the address.
	fc.Advance(authRefill)
	if w := do("127.0.0.9:50004", "node", agentPassword); w.Code != http.StatusOK {
		t.Fatalf("good request after the refill: HTTP %d", w.Code)
	}
	for i := range authBurst {
		if w := do("127.0.0.9:50005", "server", "again"); w.Code != http.StatusUnauthorized {
			t.Fatalf("after a success, failure %d: HTTP %d, want 401 (the count was reset)", i+1, w.Code)
		}
	}
	// Valid requests never take from the bucket, even right after failures.
	for i := range authBurst - 1 {
		do("127.0.0.12:1", "server", "typo-"+strconv.Itoa(i))
	}
	for i := range 3 * authBurst {
		if w := do("127.0.0.12:"+strconv.Itoa(2+i), "node", agentPassword); w.Code != http.StatusOK {
			t.Fatalf("valid request %d after %d failures: HTTP %d", i+1, authBurst-1, w.Code)
		}
	}
	if n := s.authL.len(); n > 2 {
		t.Errorf("the table holds %d addresses; successes must not fill it", n)
	}
	// A wrong role is not a failed authentication.
	fc.Advance(time.Hour)
	hs := s.Require(func(w http.ResponseWriter, r *http.Request) {}, RoleServer)
	for i := range 2 * authBurst {
		r := httptest.NewRequest(http.MethodGet, "/v1-kpki/x", nil)
		r.RemoteAddr = "127.0.0.11:1"
		r.SetBasicAuth("node", agentPassword)
		w := httptest.NewRecorder()
		hs.ServeHTTP(w, r)
		if w.Code != http.StatusForbidden {
			t.Fatalf("agent on a server endpoint, request %d: HTTP %d, want 403", i+1, w.Code)
		}
	}
}
