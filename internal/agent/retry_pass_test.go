package agent

import (
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/api"
)

// fakeWaits makes a's waits advance the fixture's clock at once, calling each (with the
// number of the wait) first, and records them.
func fakeWaits(fx *fixture, a *Agent, each func(n int)) *[]time.Duration {
	var waits []time.Duration
	a.jitter = func(d time.Duration) time.Duration { return d }
	a.sleep = func(ctx context.Context, d time.Duration) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		waits = append(waits, d)
		if each != nil {
			each(len(waits))
		}
		fx.clock.Advance(d)
		return nil
	}
	return &waits
}

func TestRunOnceRetriesUnavailableServer(t *testing.T) {
	fx := newFixture(t)
	fx.cfg.RetryDeadline = 2 * time.Minute
	fx.fake.failWith(api.SignPath("client-kubelet"), http.StatusServiceUnavailable, "datastore unavailable (no quorum)")
	a, buf := fx.agent()
	waits := fakeWaits(fx, a, func(n int) {
		if n == 2 {
			fx.fake.failWith(api.SignPath("client-kubelet"), 0, "") // quorum is back
		}
	})
	res, err := a.RunOnce(context.Background())
	if err != nil || len(res.Issued) != 4 {
		t.Fatalf("RunOnce = %+v, %v; want the four leaves issued after the retries\n%s", res, err, buf)
	}
	if want := []time.Duration{500 * time.Millisecond, time.Second}; !slices.Equal(*waits, want) {
		t.Errorf("waits %v, want %v", *waits, want)
	}
	if s := signingRequests(fx.fake.takeRequests()); len(s) != 6 {
		t.Errorf("%d signing requests, want 6 (two refused with 503, then four)", len(s))
	}
	if !strings.Contains(buf.String(), "datastore unavailable (no quorum)") || !strings.Contains(buf.String(), "retrying") {
		t.Errorf("the retries are not logged with the server's reason:\n%s", buf)
	}
}

func TestRunOnceMovesToTheNextServer(t *testing.T) {
	fx := newFixture(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "https://" + ln.Addr().String()
	ln.Close()
	fx.cfg.ServerURL = dead + "," + fx.fake.URL()
	fx.cfg.RetryDeadline = 2 * time.Minute
	a, buf := fx.agent()
	waits := fakeWaits(fx, a, nil)
	res, err := a.RunOnce(context.Background())
	if err != nil || len(res.Issued) != 4 {
		t.Fatalf("RunOnce = %+v, %v; want a join through the second server\n%s", res, err, buf)
	}
	if len(*waits) != 0 {
		t.Errorf("waited %v before trying the second server", *waits)
	}
	if a.cur != 1 || a.base.String() != fx.fake.URL() {
		t.Errorf("the agent stays on server %d (%s), want the one that answered", a.cur, a.base)
	}
	if !strings.Contains(buf.String(), dead) {
		t.Errorf("the refused connection to %s is not logged:\n%s", dead, buf)
	}
}

func TestRunOnceGivesUpAtTheDeadline(t *testing.T) {
	fx := newFixture(t)
	fx.cfg.RetryDeadline = 20 * time.Second
	fx.fake.failWith(api.SignPath("client-kubelet"), http.StatusServiceUnavailable, "datastore unavailable (no quorum)")
	a, _ := fx.agent()
	start := fx.clock.Now()
	fakeWaits(fx, a, nil)
	_, err := a.RunOnce(context.Background())
	var re *RetryError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "datastore unavailable (no quorum)") {
		t.Fatalf("RunOnce = %v, want a RetryError naming the server's reason", err)
	}
	if elapsed := fx.clock.Now().Sub(start); elapsed >= 20*time.Second {
		t.Errorf("gave up after %s, want within the 20 s deadline", elapsed)
	}
	if s := signingRequests(fx.fake.takeRequests()); len(s) != re.Attempts || re.Attempts < 3 {
		t.Errorf("%d signing requests, %d attempts", len(s), re.Attempts)
	}
}
