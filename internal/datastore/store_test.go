package datastore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// One embedded etcd serves every Store test of the package; each test works under a
// key prefix of its own.
var shared struct {
	once  sync.Once
	dir   string
	e     *Embedded
	cfg   EmbeddedConfig
	certs etcdCerts
	err   error
	runs  atomic.Int64 // makes prefixes unique across -count runs
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.e != nil {
		shared.e.Close()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// sharedStore returns the package's running etcd and a key prefix unique to this call.
func sharedStore(t *testing.T) (*Store, string) {
	t.Helper()
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "kpki-datastore-test-")
		if shared.err != nil {
			return
		}
		shared.certs = writeEtcdCerts(t, shared.dir)
		shared.cfg = embeddedConfig(t, shared.dir, shared.certs)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		shared.e, shared.err = StartEmbedded(ctx, shared.cfg)
	})
	if shared.e == nil {
		t.Fatalf("shared etcd did not start: %v", shared.err)
	}
	return shared.e.Store, fmt.Sprintf("/kpki-test/%d/%s/", shared.runs.Add(1), t.Name())
}

// testCtx is a context that ends with the test or after 20 s.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// mustGet returns the value and revision of key.
func mustGet(t *testing.T, s *Store, key string) (string, int64) {
	t.Helper()
	v, rev, err := s.Get(testCtx(t), key)
	if err != nil {
		t.Fatalf("Get %s: %v", key, err)
	}
	return string(v), rev
}

// checkAbsent fails unless key does not exist.
func checkAbsent(t *testing.T, s *Store, key string) {
	t.Helper()
	if v, rev, err := s.Get(testCtx(t), key); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get %s = %q, %d, %v; want ErrNotFound", key, v, rev, err)
	}
}

func TestGet(t *testing.T) {
	s, p := sharedStore(t)
	ctx := testCtx(t)
	if err := s.Put(ctx, p+"present", []byte("value")); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, p+"empty", nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, p+"deleted", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client().Delete(ctx, p+"deleted"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		key     string
		want    string
		wantErr error
	}{
		{name: "present", key: p + "present", want: "value"},
		{name: "empty value", key: p + "empty", want: ""},
		{name: "missing", key: p + "missing", wantErr: ErrNotFound},
		{name: "deleted", key: p + "deleted", wantErr: ErrNotFound},
		{name: "prefix of an existing key", key: p + "pres", wantErr: ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, rev, err := s.Get(ctx, tc.key)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || v != nil || rev != 0 {
					t.Errorf("Get = %q, %d, %v; want nil, 0, %v", v, rev, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(v) != tc.want || rev <= 0 {
				t.Errorf("Get = %q, %d; want %q and a positive revision", v, rev, tc.want)
			}
		})
	}
}

func TestCreate(t *testing.T) {
	s, p := sharedStore(t)
	ctx := testCtx(t)
	tests := []struct {
		name    string
		setup   func(t *testing.T, key string)
		wantErr error
		want    string // value afterwards
	}{
		{name: "new key", setup: func(*testing.T, string) {}, want: "new"},
		{name: "existing key", setup: func(t *testing.T, key string) {
			if err := s.Put(ctx, key, []byte("old")); err != nil {
				t.Fatal(err)
			}
		}, wantErr: ErrExists, want: "old"},
		{name: "existing empty value", setup: func(t *testing.T, key string) {
			if err := s.Put(ctx, key, nil); err != nil {
				t.Fatal(err)
			}
		}, wantErr: ErrExists, want: ""},
		{name: "key deleted before", setup: func(t *testing.T, key string) {
			if err := s.Put(ctx, key, []byte("old")); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Client().Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
		}, want: "new"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := p + tc.name
			tc.setup(t, key)
			err := s.Create(ctx, key, []byte("new"))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Create = %v, want %v", err, tc.wantErr)
			}
			if v, _ := mustGet(t, s, key); v != tc.want {
				t.Errorf("value %q, want %q", v, tc.want)
			}
		})
	}
}

func TestCreateConcurrentlyOnlyOneWins(t *testing.T) {
	s, p := sharedStore(t)
	ctx := testCtx(t)
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = s.Create(ctx, p+"node-password", []byte(fmt.Sprint(i))) })
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("creators %d and %d both succeeded", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, ErrExists):
			t.Fatalf("creator %d: %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no creator succeeded")
	}
	if v, _ := mustGet(t, s, p+"node-password"); v != fmt.Sprint(winner) {
		t.Errorf("value %q, want the winner's %d", v, winner)
	}
}

func TestUpdate(t *testing.T) {
	s, p := sharedStore(t)
	ctx := testCtx(t)
	tests := []struct {
		name    string
		exists  bool
		rev     func(current int64) int64
		wantErr error
	}{
		{name: "current revision", exists: true, rev: func(c int64) int64 { return c }},
		{name: "stale revision", exists: true, rev: func(c int64) int64 { return c - 1 }, wantErr: ErrConflict},
		{name: "future revision", exists: true, rev: func(c int64) int64 { return c + 1000 }, wantErr: ErrConflict},
		{name: "revision 0 of an existing key", exists: true, rev: func(int64) int64 { return 0 }, wantErr: ErrConflict},
		{name: "revision 0 of a missing key creates it", exists: false, rev: func(int64) int64 { return 0 }},
		{name: "a revision of a missing key", exists: false, rev: func(int64) int64 { return 5 }, wantErr: ErrConflict},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := p + tc.name
			var cur int64
			if tc.exists {
				if err := s.Put(ctx, key, []byte("old")); err != nil {
					t.Fatal(err)
				}
				_, cur = mustGet(t, s, key)
			}
			newRev, err := s.Update(ctx, key, []byte("new"), tc.rev(cur))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || newRev != 0 {
					t.Fatalf("Update = %d, %v; want 0, %v", newRev, err, tc.wantErr)
				}
				if !tc.exists {
					checkAbsent(t, s, key)
					return
				}
				if v, rev := mustGet(t, s, key); v != "old" || rev != cur {
					t.Errorf("after a failed Update: %q at %d, want \"old\" at %d", v, rev, cur)
				}
				return
			}
			if err != nil {
				t.Fatalf("Update: %v", err)
			}
			v, rev := mustGet(t, s, key)
			if v != "new" || rev != newRev || newRev <= cur {
				t.Errorf("after Update: %q at %d; Update returned %d (was %d)", v, rev, newRev, cur)
			}
			// The returned revision is the one to use for the next update.
			if _, err := s.Update(ctx, key, []byte("newer"), newRev); err != nil {
				t.Errorf("Update with the returned revision: %v", err)
			}
		})
	}
}

func TestUpdateConcurrentlyOnlyOneWins(t *testing.T) {
	s, p := sharedStore(t)
	ctx := testCtx(t)
	key := p + "bootstrap"
	if err := s.Put(ctx, key, []byte("v0")); err != nil {
		t.Fatal(err)
	}
	_, rev := mustGet(t, s, key)
	const n = 8
	revs := make([]int64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { revs[i], errs[i] = s.Update(ctx, key, []byte(fmt.Sprint("v", i)), rev) })
	}
	wg.Wait()
	wins := 0
	for i, err := range errs {
		switch {
		case err == nil:
			wins++
			if v, got := mustGet(t, s, key); v != fmt.Sprint("v", i) || got != revs[i] {
				t.Errorf("value %q at %d, want the winner's v%d at %d", v, got, i, revs[i])
			}
		case !errors.Is(err, ErrConflict):
			t.Errorf("updater %d: %v", i, err)
		}
	}
	if wins != 1 {
		t.Errorf("%d updaters succeeded, want exactly 1", wins)
	}
}

func TestReplace(t *testing.T) {
	s, p := sharedStore(t)
	ctx := testCtx(t)
	tests := []struct {
		name      string
		newExists bool
		rev       func(current int64) int64
		wantErr   error
	}{
		{name: "current revision", rev: func(c int64) int64 { return c }},
		{name: "stale revision", rev: func(c int64) int64 { return c - 1 }, wantErr: ErrConflict},
		{name: "new key already exists", newExists: true, rev: func(c int64) int64 { return c }, wantErr: ErrConflict},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			oldKey, newKey := p+tc.name+"/old", p+tc.name+"/new"
			if err := s.Put(ctx, oldKey, []byte("old")); err != nil {
				t.Fatal(err)
			}
			_, cur := mustGet(t, s, oldKey)
			if tc.newExists {
				if err := s.Put(ctx, newKey, []byte("other")); err != nil {
					t.Fatal(err)
				}
			}
			newRev, err := s.Replace(ctx, oldKey, tc.rev(cur), newKey, []byte("new"))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || newRev != 0 {
					t.Fatalf("Replace = %d, %v; want 0, %v", newRev, err, tc.wantErr)
				}
				if v, rev := mustGet(t, s, oldKey); v != "old" || rev != cur {
					t.Errorf("old key after a failed Replace: %q at %d", v, rev)
				}
				if tc.newExists {
					if v, _ := mustGet(t, s, newKey); v != "other" {
						t.Errorf("new key after a failed Replace: %q", v)
					}
				} else {
					checkAbsent(t, s, newKey)
				}
				return
			}
			if err != nil {
				t.Fatalf("Replace: %v", err)
			}
			checkAbsent(t, s, oldKey)
			v, rev := mustGet(t, s, newKey)
			if v != "new" || rev != newRev || newRev <= cur {
				t.Errorf("new key %q at %d; Replace returned %d (old at %d)", v, rev, newRev, cur)
			}
		})
	}
	t.Run("old key missing", func(t *testing.T) {
		newRev, err := s.Replace(ctx, p+"never/old", 3, p+"never/new", []byte("new"))
		if !errors.Is(err, ErrConflict) || newRev != 0 {
			t.Fatalf("Replace = %d, %v; want ErrConflict", newRev, err)
		}
		checkAbsent(t, s, p+"never/new")
	})
}

// TestSideWrites: UpdateWith and ReplaceWith write their side in the same transaction
// (at the revision they return) when their compare holds, and nothing at all when it
// does not.
func TestSideWrites(t *testing.T) {
	s, p := sharedStore(t)
	ctx := testCtx(t)
	key, kept := p+"record", p+"kept/1"
	if err := s.Put(ctx, key, []byte("v1")); err != nil {
		t.Fatal(err)
	}
	_, rev := mustGet(t, s, key)
	newRev, err := s.UpdateWith(ctx, key, []byte("v2"), rev, Side{Put: []KV{{Key: kept, Value: []byte("v1")}}})
	if err != nil {
		t.Fatalf("UpdateWith: %v", err)
	}
	if v, r := mustGet(t, s, key); v != "v2" || r != newRev {
		t.Errorf("key %q at %d, want v2 at %d", v, r, newRev)
	}
	if v, r := mustGet(t, s, kept); v != "v1" || r != newRev {
		t.Errorf("side key %q at %d, want v1 at %d (the same transaction)", v, r, newRev)
	}
	if _, err := s.UpdateWith(ctx, key, []byte("v3"), rev, Side{Put: []KV{{Key: kept, Value: []byte("v2")}}}); !errors.Is(err, ErrConflict) {
		t.Fatalf("UpdateWith at a stale revision: %v, want ErrConflict", err)
	}
	if v, r := mustGet(t, s, kept); v != "v1" || r != newRev {
		t.Errorf("a refused UpdateWith wrote its side: %q at %d", v, r)
	}

	moved, movedKept := p+"moved", p+"kept/2"
	if _, err := s.ReplaceWith(ctx, key, rev, moved, []byte("m"), Side{Delete: []string{kept}, Put: []KV{{Key: movedKept, Value: []byte("k")}}}); !errors.Is(err, ErrConflict) {
		t.Fatalf("ReplaceWith at a stale revision: %v, want ErrConflict", err)
	}
	checkAbsent(t, s, movedKept)
	mustGet(t, s, kept)
	replRev, err := s.ReplaceWith(ctx, key, newRev, moved, []byte("m"), Side{Delete: []string{kept, p + "never"}, Put: []KV{{Key: movedKept, Value: []byte("k")}}})
	if err != nil {
		t.Fatalf("ReplaceWith: %v", err)
	}
	checkAbsent(t, s, key)
	checkAbsent(t, s, kept)
	if v, r := mustGet(t, s, moved); v != "m" || r != replRev {
		t.Errorf("new key %q at %d, want m at %d", v, r, replRev)
	}
	if v, r := mustGet(t, s, movedKept); v != "k" || r != replRev {
		t.Errorf("side key %q at %d, want k at %d", v, r, replRev)
	}
}

func TestKeys(t *testing.T) {
	s, p := sharedStore(t)
	ctx := testCtx(t)
	for _, k := range []string{"a/2", "a/1", "a/sub/x", "ab", "b/1", "a"} {
		if err := s.Put(ctx, p+k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Client().Delete(ctx, p+"b/1"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		prefix string
		want   []string
	}{
		{name: "directory prefix", prefix: p + "a/", want: []string{p + "a/1", p + "a/2", p + "a/sub/x"}},
		{name: "bare prefix", prefix: p + "a", want: []string{p + "a", p + "a/1", p + "a/2", p + "a/sub/x", p + "ab"}},
		{name: "nested", prefix: p + "a/sub/", want: []string{p + "a/sub/x"}},
		{name: "only deleted keys", prefix: p + "b/", want: []string{}},
		{name: "nothing", prefix: p + "zzz/", want: []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Keys(ctx, tc.prefix)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil || !slices.Equal(got, tc.want) {
				t.Errorf("Keys(%q) = %#v, want %#v", tc.prefix, got, tc.want)
			}
		})
	}
}

func TestGetPrefix(t *testing.T) {
	s, p := sharedStore(t)
	ctx := testCtx(t)
	for _, k := range []string{"a/2", "a/1", "ab", "b"} {
		if err := s.Put(ctx, p+k, []byte("v-"+k)); err != nil {
			t.Fatal(err)
		}
	}
	kvs, rev, err := s.GetPrefix(ctx, p+"a/")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, kv := range kvs {
		got = append(got, kv.Key+"="+string(kv.Value))
	}
	if want := []string{p + "a/1=v-a/1", p + "a/2=v-a/2"}; !slices.Equal(got, want) {
		t.Errorf("GetPrefix = %v, want %v", got, want)
	}
	_, latest := mustGet(t, s, p+"b")
	if rev < latest {
		t.Errorf("GetPrefix revision %d is older than the last write %d", rev, latest)
	}
	if err := s.Put(ctx, p+"a/3", []byte("new")); err != nil {
		t.Fatal(err)
	}
	if _, rev3 := mustGet(t, s, p+"a/3"); rev3 <= rev {
		t.Errorf("a write after the read has revision %d, not after the read's %d", rev3, rev)
	}
	if kvs, _, err := s.GetPrefix(ctx, p+"zzz/"); err != nil || len(kvs) != 0 {
		t.Errorf("GetPrefix of nothing = %v, %v", kvs, err)
	}
}

func TestPut(t *testing.T) {
	s, p := sharedStore(t)
	ctx := testCtx(t)
	key := p + "k"
	var last int64
	for i, v := range []string{"one", "two", ""} {
		if err := s.Put(ctx, key, []byte(v)); err != nil {
			t.Fatal(err)
		}
		got, rev := mustGet(t, s, key)
		if got != v || rev <= last {
			t.Errorf("write %d: %q at %d, want %q after %d", i, got, rev, v, last)
		}
		last = rev
	}
}

// nextEvent waits for the next event that is not about ignore.
func nextEvent(t *testing.T, ch <-chan Event, ignore string) Event {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("watch channel closed")
			}
			if ev.Key == ignore {
				continue
			}
			return ev
		case <-deadline:
			t.Fatal("no watch event within 10 s")
		}
	}
}

// syncWatch writes key until its event comes through ch, so that the watch is known to
// be established.
func syncWatch(t *testing.T, s *Store, ch <-chan Event, key string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if err := s.Put(testCtx(t), key, []byte("sync")); err != nil {
			t.Fatal(err)
		}
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("watch channel closed")
			}
			if ev.Key == key {
				return
			}
			t.Fatalf("unexpected event %+v before any change", ev)
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Fatal("the watch never saw a write")
}

func TestWatchPrefix(t *testing.T) {
	s, p := sharedStore(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	prefix := p + "bootstrap/"
	syncKey := prefix + "sync"
	ch := s.WatchPrefix(ctx, prefix, 0)
	syncWatch(t, s, ch, syncKey)

	type step struct {
		name string
		do   func(t *testing.T) int64 // returns the revision of the change
		want []Event                  // each with the revision do returned
	}
	putRev := func(key, v string) func(t *testing.T) int64 {
		return func(t *testing.T) int64 {
			if err := s.Put(ctx, key, []byte(v)); err != nil {
				t.Fatal(err)
			}
			_, rev := mustGet(t, s, key)
			return rev
		}
	}
	steps := []step{
		{name: "put", do: putRev(prefix+"a", "1"), want: []Event{{Key: prefix + "a"}}},
		{name: "create", do: func(t *testing.T) int64 {
			if err := s.Create(ctx, prefix+"b", []byte("1")); err != nil {
				t.Fatal(err)
			}
			_, rev := mustGet(t, s, prefix+"b")
			return rev
		}, want: []Event{{Key: prefix + "b"}}},
		{name: "update", do: func(t *testing.T) int64 {
			_, rev := mustGet(t, s, prefix+"a")
			newRev, err := s.Update(ctx, prefix+"a", []byte("2"), rev)
			if err != nil {
				t.Fatal(err)
			}
			return newRev
		}, want: []Event{{Key: prefix + "a"}}},
		{name: "delete", do: func(t *testing.T) int64 {
			resp, err := s.Client().Delete(ctx, prefix+"b")
			if err != nil {
				t.Fatal(err)
			}
			return resp.Header.Revision
		}, want: []Event{{Key: prefix + "b", Deleted: true}}},
		{name: "replace", do: func(t *testing.T) int64 {
			_, rev := mustGet(t, s, prefix+"a")
			newRev, err := s.Replace(ctx, prefix+"a", rev, prefix+"c", []byte("3"))
			if err != nil {
				t.Fatal(err)
			}
			return newRev
		}, want: []Event{{Key: prefix + "a", Deleted: true}, {Key: prefix + "c"}}},
		{name: "outside the prefix, then inside", do: func(t *testing.T) int64 {
			if err := s.Put(ctx, p+"bootstrap", []byte("x")); err != nil {
				t.Fatal(err)
			}
			if err := s.Put(ctx, p+"other/a", []byte("x")); err != nil {
				t.Fatal(err)
			}
			return putRev(prefix+"d", "4")(t)
		}, want: []Event{{Key: prefix + "d"}}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			rev := st.do(t)
			for _, w := range st.want {
				w.Revision = rev
				if got := nextEvent(t, ch, syncKey); got != w {
					t.Errorf("event %+v, want %+v", got, w)
				}
			}
		})
	}

	cancel()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return
			}
			t.Errorf("event %+v after the last change", ev)
		case <-deadline:
			t.Fatal("watch channel not closed after the context ended")
		}
	}
}

func TestHealthy(t *testing.T) {
	s, _ := sharedStore(t)
	ctx := testCtx(t)
	tests := []struct {
		name    string
		store   func(t *testing.T) *Store
		ctx     func() context.Context
		wantErr bool
	}{
		{name: "running", store: func(*testing.T) *Store { return s }, ctx: func() context.Context { return ctx }},
		{name: "closed client", store: func(t *testing.T) *Store {
			st, err := Connect(ctx, []string{shared.cfg.ClientURL()}, shared.certs.clientTLS(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			st.Close()
			return st
		}, ctx: func() context.Context { return ctx }, wantErr: true},
		{name: "cancelled context", store: func(*testing.T) *Store { return s }, ctx: func() context.Context {
			c, cancel := context.WithCancel(ctx)
			cancel()
			return c
		}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			err := tc.store(t).Healthy(tc.ctx(), time.Second)
			if (err != nil) != tc.wantErr {
				t.Errorf("Healthy = %v, want error %v", err, tc.wantErr)
			}
			if d := time.Since(start); d > 4*time.Second {
				t.Errorf("Healthy took %s with a 1 s timeout", d)
			}
		})
	}
}

func TestConnect(t *testing.T) {
	_, _ = sharedStore(t)
	ctx := testCtx(t)
	live := shared.cfg.ClientURL()
	good := shared.certs.clientTLS()
	dead := fmt.Sprintf("https://127.0.0.1:%d", freePort(t))
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not-a-ca.crt")
	writeFile(t, notPEM, []byte("hello"))
	const timeout = 1500 * time.Millisecond
	tests := []struct {
		name      string
		endpoints []string
		tls       ClientTLS
		wantErr   []string
		wantEPs   []string
	}{
		{name: "live member", endpoints: []string{live}, tls: good, wantEPs: []string{live}},
		{name: "spaces around the endpoint", endpoints: []string{"  " + live + " "}, tls: good, wantEPs: []string{live}},
		{name: "one dead and one live endpoint", endpoints: []string{dead, live}, tls: good, wantEPs: []string{dead, live}},
		{name: "closed port", endpoints: []string{dead}, tls: good, wantErr: []string{"datastore " + dead}},
		{name: "closed port without TLS", endpoints: []string{strings.Replace(dead, "https", "http", 1)}, wantErr: []string{"datastore http://127.0.0.1:"}},
		{name: "missing CA file", endpoints: []string{live}, tls: ClientTLS{CAFile: filepath.Join(dir, "missing.crt")},
			wantErr: []string{"datastore CA file", "missing.crt"}},
		{name: "CA file without a certificate", endpoints: []string{live}, tls: ClientTLS{CAFile: notPEM},
			wantErr: []string{"datastore CA file " + notPEM + ": no certificate found"}},
		{name: "certificate without key", endpoints: []string{live}, tls: ClientTLS{CAFile: good.CAFile, CertFile: good.CertFile},
			wantErr: []string{"datastore client certificate and key must be given together"}},
		{name: "key without certificate", endpoints: []string{live}, tls: ClientTLS{CAFile: good.CAFile, KeyFile: good.KeyFile},
			wantErr: []string{"datastore client certificate and key must be given together"}},
		{name: "key of another certificate", endpoints: []string{live},
			tls:     ClientTLS{CAFile: good.CAFile, CertFile: good.CertFile, KeyFile: shared.certs.ServerKey},
			wantErr: []string{"datastore client certificate " + good.CertFile}},
		{name: "plain http with TLS files", endpoints: []string{"http://127.0.0.1:2379"}, tls: good,
			wantErr: []string{"datastore endpoint http://127.0.0.1:2379 is plain http but TLS files were given"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			st, err := Connect(ctx, tc.endpoints, tc.tls, timeout)
			elapsed := time.Since(start)
			if elapsed > timeout+3*time.Second {
				t.Errorf("Connect took %s with a %s timeout", elapsed, timeout)
			}
			if tc.wantErr != nil {
				if err == nil {
					st.Close()
					t.Fatal("Connect succeeded")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Connect: %v", err)
			}
			defer st.Close()
			if !slices.Equal(st.Endpoints, tc.wantEPs) {
				t.Errorf("Endpoints = %q, want %q", st.Endpoints, tc.wantEPs)
			}
			if st.Client() == nil {
				t.Error("no etcd client")
			}
			if err := st.Healthy(ctx, 5*time.Second); err != nil {
				t.Errorf("Healthy: %v", err)
			}
		})
	}
}

func TestCreateOrGet(t *testing.T) {
	s, p := sharedStore(t)
	ctx := testCtx(t)
	key := p + "create-or-get"
	created, existing, err := s.CreateOrGet(ctx, key, []byte("first"))
	if err != nil || !created || existing != nil {
		t.Fatalf("first CreateOrGet = %v, %q, %v; want created", created, existing, err)
	}
	created, existing, err = s.CreateOrGet(ctx, key, []byte("second"))
	if err != nil || created || string(existing) != "first" {
		t.Fatalf("second CreateOrGet = %v, %q, %v; want the first value back", created, existing, err)
	}
	if v, _ := mustGet(t, s, key); v != "first" {
		t.Errorf("value %q after a second CreateOrGet, want first", v)
	}
}
