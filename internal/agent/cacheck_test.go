package agent

import (
	"errors"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/metrics"
)

// checkLoop is a running agent whose loop the test drives with the fake clock.
type checkLoop struct {
	fx     *fixture
	a      *Agent
	log    *logBuffer
	passes <-chan passResult
}

// startCheckLoop runs an agent with a renew interval of an hour and a CA check every
// minute, waits for its first pass and for it to wait on the clock, and forgets the
// requests so far.
func startCheckLoop(t *testing.T, edit func(*Config)) *checkLoop {
	t.Helper()
	fx := newFixture(t)
	fx.cfg.RenewInterval = time.Hour
	fx.cfg.CACheckInterval = time.Minute
	if edit != nil {
		edit(&fx.cfg)
	}
	a, buf := fx.agent()
	passes, stop := fx.runLoop(a)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	if p := nextPass(t, passes); p.err != nil || len(p.res.Issued) != 4 {
		t.Fatalf("first pass: issued %v, %v\n%s", p.res.Issued, p.err, buf)
	}
	waitTicker(t, fx.clock)
	fx.fake.takeRequests()
	return &checkLoop{fx: fx, a: a, log: buf, passes: passes}
}

func (l *checkLoop) checks(result string) float64 {
	return testutil.ToFloat64(l.a.metrics.CAChecks.WithLabelValues(result))
}

// advanceToCheck moves the clock by d, which ends the wait of a check, and waits until
// the agent counted the check as result (n of them in all) and waits on the clock again.
func (l *checkLoop) advanceToCheck(t *testing.T, d time.Duration, result string, n float64) {
	t.Helper()
	l.fx.clock.Advance(d)
	deadline := time.Now().Add(10 * time.Second)
	for l.checks(result) < n {
		if time.Now().After(deadline) {
			t.Fatalf("no %s CA check counted (%v of %v):\n%s", result, l.checks(result), n, l.log)
		}
		time.Sleep(time.Millisecond)
	}
	waitTicker(t, l.fx.clock)
}

// noPass fails the test when the agent ran a pass.
func (l *checkLoop) noPass(t *testing.T, what string) {
	t.Helper()
	select {
	case p := <-l.passes:
		t.Fatalf("%s: a pass ran (%+v, %v)", what, p.res, p.err)
	default:
	}
}

// requestPaths are the method and path of each request.
func requestPaths(rs []fakeRequest) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Method+" "+r.Path)
	}
	return out
}

// infoLines are the lines of log at info level or above from offset on.
func infoLines(log string, offset int) []string {
	var out []string
	for _, l := range strings.Split(log[offset:], "\n") {
		if l != "" && !strings.Contains(l, "level=DEBUG") {
			out = append(out, l)
		}
	}
	return out
}

// TestCACheckFollowsRotation: between passes an hour apart, the running agent checks the
// server's CAs every minute. Unchanged CAs: two GETs over the verified connection, no
// pass, no write, no line at info. After a cross-signed rotation of the server CA,
// nothing happens before the next check; that check runs the pass at once, which
// re-issues every leaf under the new CAs; the checks after it find nothing to do.
func TestCACheckFollowsRotation(t *testing.T) {
	l := startCheckLoop(t, nil)
	fx := l.fx
	dir := filepath.Join(fx.dd, "agent")
	before, logAt := snapshot(t, dir), len(l.log.String())

	l.advanceToCheck(t, time.Minute, metrics.CACheckUnchanged, 1)
	l.noPass(t, "unchanged CAs")
	if got, want := requestPaths(fx.fake.takeRequests()), []string{"GET " + api.PathCACerts, "GET " + api.PathClientCA}; !slices.Equal(got, want) {
		t.Errorf("the check sent %v, want %v", got, want)
	}
	assertUnchanged(t, "after an unchanged check", before, snapshot(t, dir))
	if lines := infoLines(l.log.String(), logAt); len(lines) != 0 {
		t.Errorf("an unchanged check logged at info: %q", lines)
	}
	if !strings.Contains(l.log.String()[logAt:], "the server's CAs are unchanged") {
		t.Errorf("no debug line for the unchanged check:\n%s", l.log.String()[logAt:])
	}

	old, _ := fx.fake.cas()
	r := fx.crossSign(old)
	fx.apply(r)
	fx.clock.Advance(59 * time.Second)
	l.noPass(t, "a second before the next check")
	if rs := fx.fake.takeRequests(); len(rs) != 0 {
		t.Errorf("requests before the check interval passed: %v", requestPaths(rs))
	}

	fx.clock.Advance(time.Second)
	p := nextPass(t, l.passes)
	if p.err != nil || len(p.res.Renewed) != 4 {
		t.Fatalf("the pass after the check: renewed %v, %v\n%s", p.res.Renewed, p.err, l.log)
	}
	if n := l.checks(metrics.CACheckChanged); n != 1 {
		t.Errorf("%s checks %v, want 1", metrics.CACheckChanged, n)
	}
	if !strings.Contains(l.log.String(), "the server's CAs differ from this agent's copies; running a certificate pass now") {
		t.Errorf("the changed CAs are not logged:\n%s", l.log)
	}
	fx.assertUnder("after the check", r.server.Bundle[:2])

	waitTicker(t, fx.clock)
	after := snapshot(t, dir)
	l.advanceToCheck(t, time.Minute, metrics.CACheckUnchanged, 2)
	l.noPass(t, "the check after the rotation")
	assertUnchanged(t, "the check after the rotation", after, snapshot(t, dir))
	if n := l.checks(metrics.CACheckChanged); n != 1 {
		t.Errorf("%s checks %v after the rotation was taken, want 1", metrics.CACheckChanged, n)
	}
}

// TestCACheckClientCA: a new client CA alone is a change too: the pass re-issues the
// certificates it signs.
func TestCACheckClientCA(t *testing.T) {
	l := startCheckLoop(t, nil)
	server, _ := l.fx.fake.cas()
	l.fx.fake.setCAs(server, l.fx.fake.selfSignedCA("kpki-client-ca-2"))
	l.fx.clock.Advance(time.Minute)
	p := nextPass(t, l.passes)
	if p.err != nil || len(p.res.Renewed) != 3 {
		t.Fatalf("the pass after the check: renewed %v, %v\n%s", p.res.Renewed, p.err, l.log)
	}
	l.fx.assertUnder("after a new client CA", server.Bundle)
}

// TestCACheckFailures: a check that fails is counted, logged once per streak at warn,
// and runs no pass; the pass still comes when the renew interval is up.
func TestCACheckFailures(t *testing.T) {
	l := startCheckLoop(t, nil)
	fx := l.fx
	warnings := func() int { return strings.Count(l.log.String(), "could not check the server's CAs") }
	fx.fake.failWith(api.PathCACerts, http.StatusServiceUnavailable, "datastore unavailable (no quorum)")
	l.advanceToCheck(t, time.Minute, metrics.CACheckFailed, 1)
	l.advanceToCheck(t, time.Minute, metrics.CACheckFailed, 2)
	l.noPass(t, "failed checks")
	if n := warnings(); n != 1 {
		t.Errorf("%d warnings for a streak of two failed checks, want 1:\n%s", n, l.log)
	}
	fx.fake.failWith(api.PathCACerts, 0, "")
	l.advanceToCheck(t, time.Minute, metrics.CACheckUnchanged, 1)
	if !strings.Contains(l.log.String(), "the server's CAs can be checked again") {
		t.Errorf("the end of the streak is not logged:\n%s", l.log)
	}
	fx.fake.failWith(api.PathClientCA, http.StatusInternalServerError, "boom")
	l.advanceToCheck(t, time.Minute, metrics.CACheckFailed, 3)
	if n := warnings(); n != 2 {
		t.Errorf("%d warnings for two streaks, want 2:\n%s", n, l.log)
	}
	fx.fake.failWith(api.PathClientCA, 0, "")
	l.noPass(t, "after four checks")

	// The pass is due an hour after the first one: four minutes have passed.
	fx.clock.Advance(56 * time.Minute)
	if p := nextPass(t, l.passes); p.err != nil || p.res.Signed() != 0 {
		t.Fatalf("the hourly pass: %+v, %v", p.res, p.err)
	}
}

// TestCACheckUntrustedRoot: a new root no trusted root vouches for is a change the check
// hands to a pass, which refuses it and keeps the files; no check runs while the pass is
// being retried.
func TestCACheckUntrustedRoot(t *testing.T) {
	l := startCheckLoop(t, nil)
	fx := l.fx
	dir := filepath.Join(fx.dd, "agent")
	before := snapshot(t, dir)
	forced := fx.fake.selfSignedCA("kpki-server-ca")
	fx.fake.setCAs(forced, fx.fake.selfSignedCA("kpki-client-ca"))
	fx.clock.Advance(time.Minute)
	p := nextPass(t, l.passes)
	if !errors.Is(p.err, ErrCAUntrusted) {
		t.Fatalf("the pass after the check: %v", p.err)
	}
	if n := l.checks(metrics.CACheckChanged); n != 1 {
		t.Errorf("%s checks %v, want 1", metrics.CACheckChanged, n)
	}
	if n := testutil.ToFloat64(l.a.metrics.CAUntrusted); n != 1 {
		t.Errorf("kpki_agent_ca_untrusted %v, want 1", n)
	}
	assertUnchanged(t, "after the forced root", before, snapshot(t, dir))
	// The retry comes 10 s later, with no check before it.
	waitTicker(t, fx.clock)
	fx.fake.takeRequests()
	fx.clock.Advance(retryMin)
	if p := nextPass(t, l.passes); p.err == nil {
		t.Fatal("the retried pass took the forced root")
	}
	if n := l.checks(metrics.CACheckChanged) + l.checks(metrics.CACheckUnchanged) + l.checks(metrics.CACheckFailed); n != 1 {
		t.Errorf("%v checks while the pass was retried, want the one before it", n)
	}
}

// TestCACheckOff: with a check interval of 0 nothing is asked between passes.
func TestCACheckOff(t *testing.T) {
	l := startCheckLoop(t, func(c *Config) { c.CACheckInterval = 0 })
	old, _ := l.fx.fake.cas()
	l.fx.apply(l.fx.crossSign(old))
	for range 5 {
		l.fx.clock.Advance(time.Minute)
	}
	l.noPass(t, "checks off")
	if rs := l.fx.fake.takeRequests(); len(rs) != 0 {
		t.Errorf("requests with the check off: %v", requestPaths(rs))
	}
	l.fx.clock.Advance(55 * time.Minute)
	if p := nextPass(t, l.passes); p.err != nil || len(p.res.Renewed) != 4 {
		t.Fatalf("the hourly pass: renewed %v, %v", p.res.Renewed, p.err)
	}
}
