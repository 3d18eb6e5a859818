package datastore

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kpki/kpki/internal/clock"
)

func TestClassify(t *testing.T) {
	live := context.Background()
	expired, cancel := context.WithDeadline(context.Background(), time.Unix(0, 0))
	defer cancel()
	cancelled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	closing, cancel3 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel3()
	for _, tc := range []struct {
		name    string
		err     error
		attempt context.Context
		want    failure
	}{
		{"no error", nil, live, permanent},
		{"no leader", rpctypes.ErrNoLeader, live, rejected},
		{"no leader, wrapped", fmt.Errorf("get: %w", rpctypes.ErrNoLeader), live, rejected},
		{"timeout", rpctypes.ErrTimeout, live, ambiguous},
		{"timeout due to leader failure", rpctypes.ErrTimeoutDueToLeaderFail, live, ambiguous},
		{"timeout due to connection lost", rpctypes.ErrTimeoutDueToConnectionLost, live, ambiguous},
		{"leader changed", rpctypes.ErrLeaderChanged, live, ambiguous},
		{"not leader", rpctypes.ErrNotLeader, live, ambiguous},
		{"gRPC unavailable (connection failed)", status.Error(codes.Unavailable, "connection error: dial tcp: connection refused"), live, ambiguous},
		{"the attempt's deadline", context.DeadlineExceeded, expired, ambiguous},
		{"gRPC deadline of the attempt", status.Error(codes.DeadlineExceeded, "context deadline exceeded"), expired, ambiguous},
		{"a deadline that is not the attempt's", context.DeadlineExceeded, live, permanent},
		{"the member's answer to the attempt's deadline, a moment early", status.Error(codes.DeadlineExceeded, "context deadline exceeded"), closing, ambiguous},
		{"cancelled", context.Canceled, cancelled, permanent},
		{"gRPC cancelled by the caller", status.Error(codes.Canceled, "context canceled"), cancelled, permanent},
		{"the client closed under the attempt (reconnect)", status.Error(codes.Canceled, "grpc: the client connection is closing"), live, ambiguous},
		{"compacted", rpctypes.ErrCompacted, live, permanent},
		{"permission denied", rpctypes.ErrPermissionDenied, live, permanent},
		{"request too large", rpctypes.ErrRequestTooLarge, live, permanent},
		{"gRPC invalid argument", status.Error(codes.InvalidArgument, "bad"), live, permanent},
		{"key exists", ErrExists, live, permanent},
		{"conflict", ErrConflict, live, permanent},
		{"a message that reads like a timeout", errors.New("etcdserver: request timed out"), live, permanent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := classify(tc.err, tc.attempt); got != tc.want {
				t.Errorf("classify(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
}

// fakeStore is a Store without a client whose retries run on a fake clock: sleeping
// advances the clock at once and is recorded.
func fakeStore() (*Store, *clock.Fake, *[]time.Duration) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var slept []time.Duration
	s := &Store{policy: defaultRetry, clock: clk}
	s.sleep = func(ctx context.Context, d time.Duration) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		slept = append(slept, d)
		clk.Advance(d)
		return nil
	}
	return s, clk, &slept
}

// script answers attempts with errs in turn (the last one for every further attempt),
// recording the again flag of each.
type script struct {
	errs   []error
	agains []bool
}

func (sc *script) attempt(_ context.Context, again bool) error {
	sc.agains = append(sc.agains, again)
	i := min(len(sc.agains), len(sc.errs)) - 1
	return sc.errs[i]
}

func ms(n ...int) []time.Duration {
	out := make([]time.Duration, len(n))
	for i, v := range n {
		out[i] = time.Duration(v) * time.Millisecond
	}
	return out
}

func TestDoRetries(t *testing.T) {
	t.Run("rides out a leader election", func(t *testing.T) {
		s, _, slept := fakeStore()
		sc := &script{errs: []error{rpctypes.ErrTimeoutDueToLeaderFail, rpctypes.ErrNoLeader, rpctypes.ErrNoLeader, nil}}
		if err := s.do(context.Background(), "create", "k", true, sc.attempt); err != nil {
			t.Fatalf("do = %v, want success", err)
		}
		if want := []bool{false, true, true, true}; !slices.Equal(sc.agains, want) {
			t.Errorf("again flags %v, want %v", sc.agains, want)
		}
		if want := ms(50, 100, 200); !slices.Equal(*slept, want) {
			t.Errorf("backoffs %v, want %v", *slept, want)
		}
	})

	t.Run("no leader for longer than an election: no quorum", func(t *testing.T) {
		s, clk, slept := fakeStore()
		start := clk.Now()
		sc := &script{errs: []error{rpctypes.ErrNoLeader}}
		err := s.do(context.Background(), "create", "/kpki/node-passwords/n1", true, sc.attempt)
		var ue *UnavailableError
		if !errors.As(err, &ue) || !errors.Is(err, ErrNoQuorum) || !errors.Is(err, ErrUnavailable) || !errors.Is(err, rpctypes.ErrNoLeader) {
			t.Fatalf("do = %v, want an UnavailableError for no quorum wrapping the last error", err)
		}
		waited := clk.Now().Sub(start)
		if waited < defaultRetry.noLeader || waited > defaultRetry.noLeader+defaultRetry.maxBackoff {
			t.Errorf("gave up after %s, want %s to %s", waited, defaultRetry.noLeader, defaultRetry.noLeader+defaultRetry.maxBackoff)
		}
		if want := ms(50, 100, 200, 400, 500, 500, 500, 500, 500); !slices.Equal(*slept, want) {
			t.Errorf("backoffs %v, want %v", *slept, want)
		}
		for _, w := range []string{"datastore create /kpki/node-passwords/n1", "datastore unavailable (no quorum)", fmt.Sprintf("%d attempts", len(sc.agains)), "no leader"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not contain %q", err, w)
			}
		}
		if slices.Contains(sc.agains, true) {
			t.Errorf("a refused attempt was taken as possibly applied: %v", sc.agains)
		}
	})

	t.Run("timeouts until the budget is spent", func(t *testing.T) {
		s, clk, _ := fakeStore()
		start := clk.Now()
		sc := &script{errs: []error{rpctypes.ErrTimeout}}
		err := s.do(context.Background(), "get", "k", true, sc.attempt)
		var ue *UnavailableError
		if !errors.As(err, &ue) || errors.Is(err, ErrNoQuorum) || !errors.Is(err, rpctypes.ErrTimeout) {
			t.Fatalf("do = %v, want an UnavailableError without no quorum", err)
		}
		if waited := clk.Now().Sub(start); waited > defaultRetry.total || waited < defaultRetry.total-defaultRetry.maxBackoff {
			t.Errorf("gave up after %s, want just under %s", waited, defaultRetry.total)
		}
		if ue.Attempts != len(sc.agains) || ue.Attempts < 10 {
			t.Errorf("%d attempts reported, %d made", ue.Attempts, len(sc.agains))
		}
	})

	t.Run("permanent errors are not repeated", func(t *testing.T) {
		for _, perm := range []error{rpctypes.ErrCompacted, ErrExists, ErrConflict, errors.New("bad request")} {
			s, _, slept := fakeStore()
			sc := &script{errs: []error{perm, nil}}
			if err := s.do(context.Background(), "update", "k", true, sc.attempt); err != perm {
				t.Errorf("do = %v, want %v unchanged", err, perm)
			}
			if len(sc.agains) != 1 || len(*slept) != 0 {
				t.Errorf("%v: %d attempts, slept %v; want one attempt", perm, len(sc.agains), *slept)
			}
		}
	})

	t.Run("an operation that cannot recognise its write repeats only refused attempts", func(t *testing.T) {
		s, _, _ := fakeStore()
		sc := &script{errs: []error{rpctypes.ErrNoLeader, rpctypes.ErrTimeoutDueToLeaderFail, nil}}
		if err := s.do(context.Background(), "put", "k", false, sc.attempt); !errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) {
			t.Errorf("do = %v, want the ambiguous timeout returned", err)
		}
		if len(sc.agains) != 2 {
			t.Errorf("%d attempts, want 2 (the refused one repeated, the ambiguous one not)", len(sc.agains))
		}
	})

	t.Run("the caller's context ends the retries", func(t *testing.T) {
		s, _, slept := fakeStore()
		ctx, cancel := context.WithCancel(context.Background())
		n := 0
		err := s.do(ctx, "get", "k", true, func(context.Context, bool) error {
			n++
			if n == 2 {
				cancel()
			}
			return rpctypes.ErrNoLeader
		})
		if !errors.Is(err, rpctypes.ErrNoLeader) || n != 2 || len(*slept) != 1 {
			t.Errorf("do = %v after %d attempts and sleeps %v; want the last error after 2 attempts", err, n, *slept)
		}
	})

	t.Run("an attempt past its deadline is repeated", func(t *testing.T) {
		s, _, _ := fakeStore()
		s.policy.attempt = time.Millisecond
		n := 0
		err := s.do(context.Background(), "get", "k", true, func(ctx context.Context, again bool) error {
			n++
			if n == 1 {
				<-ctx.Done() // a request forwarded to a dead leader: no answer
				return ctx.Err()
			}
			if !again {
				return errors.New("the second attempt was not told the first may have been applied")
			}
			return nil
		})
		if err != nil || n != 2 {
			t.Errorf("do = %v after %d attempts, want success on the second", err, n)
		}
	})
}

// TestAttemptsRecogniseOwnWrite runs the single attempts of the guarded writes against
// etcd the way a retry does after an attempt that was applied but timed out: with again
// set, the write of the earlier attempt counts as this one's; without it, or with another
// value, the compare fails as before.
func TestAttemptsRecogniseOwnWrite(t *testing.T) {
	s, p := sharedStore(t)
	ctx := testCtx(t)

	t.Run("create", func(t *testing.T) {
		key, v := p+"create", []byte("value-1")
		if err := s.createAttempt(ctx, key, v, false); err != nil {
			t.Fatal(err)
		}
		if err := s.createAttempt(ctx, key, v, true); err != nil {
			t.Errorf("repeated create of the same value after an ambiguous attempt = %v, want success", err)
		}
		if err := s.createAttempt(ctx, key, v, false); !errors.Is(err, ErrExists) {
			t.Errorf("create of an existing key = %v, want ErrExists", err)
		}
		if err := s.createAttempt(ctx, key, []byte("value-2"), true); !errors.Is(err, ErrExists) {
			t.Errorf("repeated create of another value = %v, want ErrExists", err)
		}
		if got, _ := mustGet(t, s, key); got != "value-1" {
			t.Errorf("value %q, want value-1", got)
		}
	})

	t.Run("create or get", func(t *testing.T) {
		key, v := p+"create-or-get", []byte("salt:hash-1")
		if created, _, _, err := s.createOrGetAttempt(ctx, key, v, false); err != nil || !created {
			t.Fatalf("first attempt = %v, %v", created, err)
		}
		if created, existing, _, err := s.createOrGetAttempt(ctx, key, v, true); err != nil || !created || existing != nil {
			t.Errorf("repeated attempt = %v, %q, %v; want created", created, existing, err)
		}
		if created, existing, _, err := s.createOrGetAttempt(ctx, key, v, false); err != nil || created || string(existing) != string(v) {
			t.Errorf("attempt without again = %v, %q, %v; want the existing value", created, existing, err)
		}
		if created, existing, _, err := s.createOrGetAttempt(ctx, key, []byte("salt:hash-2"), true); err != nil || created || string(existing) != string(v) {
			t.Errorf("repeated attempt with another value = %v, %q, %v; want the existing value", created, existing, err)
		}
	})

	t.Run("update", func(t *testing.T) {
		key := p + "update"
		if err := s.Put(ctx, key, []byte("v0")); err != nil {
			t.Fatal(err)
		}
		_, r0 := mustGet(t, s, key)
		r1, err := s.updateAttempt(ctx, key, []byte("v1"), r0, Side{}, false)
		if err != nil {
			t.Fatal(err)
		}
		if r, err := s.updateAttempt(ctx, key, []byte("v1"), r0, Side{}, true); err != nil || r != r1 {
			t.Errorf("repeated update = %d, %v; want the first attempt's revision %d", r, err, r1)
		}
		if _, err := s.updateAttempt(ctx, key, []byte("v1"), r0, Side{}, false); !errors.Is(err, ErrConflict) {
			t.Errorf("update from a stale revision = %v, want ErrConflict", err)
		}
		if _, err := s.updateAttempt(ctx, key, []byte("v2"), r0, Side{}, true); !errors.Is(err, ErrConflict) {
			t.Errorf("repeated update with another value = %v, want ErrConflict", err)
		}
		if got, rev := mustGet(t, s, key); got != "v1" || rev != r1 {
			t.Errorf("value %q at %d, want v1 at %d", got, rev, r1)
		}
	})

	t.Run("replace", func(t *testing.T) {
		oldKey, newKey := p+"replace-old", p+"replace-new"
		if err := s.Put(ctx, oldKey, []byte("old")); err != nil {
			t.Fatal(err)
		}
		_, r0 := mustGet(t, s, oldKey)
		r1, err := s.replaceAttempt(ctx, oldKey, r0, newKey, []byte("new"), Side{}, false)
		if err != nil {
			t.Fatal(err)
		}
		if r, err := s.replaceAttempt(ctx, oldKey, r0, newKey, []byte("new"), Side{}, true); err != nil || r != r1 {
			t.Errorf("repeated replace = %d, %v; want the first attempt's revision %d", r, err, r1)
		}
		if _, err := s.replaceAttempt(ctx, oldKey, r0, newKey, []byte("new"), Side{}, false); !errors.Is(err, ErrConflict) {
			t.Errorf("replace without again = %v, want ErrConflict", err)
		}
		if _, err := s.replaceAttempt(ctx, oldKey, r0, newKey, []byte("other"), Side{}, true); !errors.Is(err, ErrConflict) {
			t.Errorf("repeated replace with another value = %v, want ErrConflict", err)
		}
		// The old key written again: the replace did not (or no longer) hold.
		if err := s.Put(ctx, oldKey, []byte("old")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.replaceAttempt(ctx, oldKey, r0, newKey, []byte("new"), Side{}, true); !errors.Is(err, ErrConflict) {
			t.Errorf("repeated replace with the old key present = %v, want ErrConflict", err)
		}
	})
}

// startCluster starts n embedded members on 127.0.0.1 forming one cluster; every member
// is closed when the test ends.
func startCluster(t *testing.T, n int) []*Embedded {
	t.Helper()
	dir := t.TempDir()
	certs := writeEtcdCerts(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var members []*Embedded
	var peers []string
	for i := range n {
		cfg := embeddedConfig(t, filepath.Join(dir, fmt.Sprintf("m%d", i+1)), certs)
		cfg.Name = fmt.Sprintf("m%d", i+1)
		peers = append(peers, cfg.Name+"="+cfg.PeerURL())
		if i > 0 {
			cfg.JoinExisting, cfg.InitialPeers = true, strings.Join(peers, ",")
			var err error
			for range 20 {
				_, err = members[0].Client().MemberAdd(ctx, []string{cfg.PeerURL()})
				if !errors.Is(err, rpctypes.ErrUnhealthy) {
					break
				}
				time.Sleep(250 * time.Millisecond) // the member started last is not counted as healthy yet
			}
			if err != nil {
				t.Fatalf("add member %s: %v", cfg.Name, err)
			}
		}
		e, err := StartEmbedded(ctx, cfg)
		if err != nil {
			t.Fatalf("start member %s: %v", cfg.Name, err)
		}
		t.Cleanup(func() { e.Close() })
		members = append(members, e)
	}
	return members
}

// leaderOf returns the index of the member that leads, waiting up to 10 s for one.
func leaderOf(t *testing.T, members []*Embedded) int {
	t.Helper()
	for range 100 {
		for i, e := range members {
			if e.running().Server.Leader() == e.running().Server.MemberID() {
				return i
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("no member became leader within 10 s")
	return -1
}

// TestRetryAcrossLeaderLoss crashes the leader of a three-member cluster and writes
// through a survivor at once: the operations wait out the election and succeed. With a
// second member crashed, the survivor has no quorum and operations fail within seconds
// with ErrNoQuorum instead of hanging.
func TestRetryAcrossLeaderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-member etcd cluster")
	}
	members := startCluster(t, 3)
	ctx := testCtx(t)
	lead := leaderOf(t, members)
	var survivors []*Embedded
	for i, e := range members {
		if i != lead {
			survivors = append(survivors, e)
		}
	}
	st := survivors[0].Store
	if err := st.Put(ctx, "/retry-test/before", []byte("x")); err != nil {
		t.Fatal(err)
	}

	members[lead].running().Server.HardStop() // no leadership transfer: a crash
	start := time.Now()
	created, _, err := st.CreateOrGet(ctx, "/retry-test/node-a", []byte("salt:hash"))
	if err != nil || !created {
		t.Fatalf("CreateOrGet right after the leader crashed = %v, %v; want created", created, err)
	}
	if err := st.Create(ctx, "/retry-test/created", []byte("c")); err != nil {
		t.Fatalf("Create after the leader crashed: %v", err)
	}
	_, rev, err := st.Get(ctx, "/retry-test/before")
	if err != nil {
		t.Fatalf("Get after the leader crashed: %v", err)
	}
	if _, err := st.Update(ctx, "/retry-test/before", []byte("y"), rev); err != nil {
		t.Fatalf("Update after the leader crashed: %v", err)
	}
	if d := time.Since(start); d > 12*time.Second {
		t.Errorf("the operations took %s across the election", d)
	}
	t.Logf("four operations through the election in %s", time.Since(start).Round(time.Millisecond))

	survivors[1].running().Server.HardStop()
	start = time.Now()
	_, _, err = st.Get(ctx, "/retry-test/before")
	if !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("Get without quorum = %v, want ErrNoQuorum", err)
	}
	if d := time.Since(start); d > 9*time.Second {
		t.Errorf("Get without quorum failed after %s, want within a few seconds", d)
	}
	start = time.Now()
	if _, _, err := st.CreateOrGet(ctx, "/retry-test/node-b", []byte("salt:hash")); !errors.Is(err, ErrNoQuorum) {
		t.Errorf("CreateOrGet without quorum = %v, want ErrNoQuorum", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("CreateOrGet on a member known to be without a leader took %s", d)
	}
	start = time.Now()
	if err := st.Healthy(ctx, 3*time.Second); !errors.Is(err, ErrNoQuorum) {
		t.Errorf("Healthy without quorum = %v, want ErrNoQuorum", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Healthy without quorum took %s, want an immediate answer", d)
	}
}
