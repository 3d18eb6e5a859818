package memstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/datastore"
)

func TestSemantics(t *testing.T) {
	ctx := context.Background()
	s := New()
	if _, _, err := s.Get(ctx, "/a"); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("Get of a missing key: %v", err)
	}
	if err := s.Create(ctx, "/a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, "/a", []byte("2")); !errors.Is(err, datastore.ErrExists) {
		t.Fatalf("second Create: %v", err)
	}
	v, rev, err := s.Get(ctx, "/a")
	if err != nil || string(v) != "1" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if _, err := s.Update(ctx, "/a", []byte("x"), rev-1); !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("Update at a stale revision: %v", err)
	}
	rev2, err := s.Update(ctx, "/a", []byte("3"), rev)
	if err != nil || rev2 <= rev {
		t.Fatalf("Update = %d, %v", rev2, err)
	}
	created, old, err := s.CreateOrGet(ctx, "/a", []byte("4"))
	if err != nil || created || string(old) != "3" {
		t.Fatalf("CreateOrGet of an existing key = %v %q %v", created, old, err)
	}
	if _, err := s.Replace(ctx, "/a", rev, "/b", []byte("5")); !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("Replace at a stale revision: %v", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := s.WatchPrefix(wctx, "/b", 0)
	rev3, err := s.Replace(ctx, "/a", rev2, "/b", []byte("5"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(ctx, "/a"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("the old key survived Replace: %v", err)
	}
	select {
	case ev := <-ch:
		if ev.Key != "/b" || ev.Revision != rev3 {
			t.Errorf("watch event %+v, want /b at %d", ev, rev3)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no watch event")
	}
	keys, err := s.Keys(ctx, "/")
	if err != nil || len(keys) != 1 || keys[0] != "/b" {
		t.Errorf("Keys = %v, %v", keys, err)
	}
	cancel()
	for range ch {
	}
}

// TestSideWrites: UpdateWith and ReplaceWith write their side at the revision they
// return when their compare holds, nothing when it does not, and refuse a key named
// twice, as etcd does.
func TestSideWrites(t *testing.T) {
	ctx := context.Background()
	s := New()
	if err := s.Put(ctx, "/r", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	_, rev, _ := s.Get(ctx, "/r")
	get := func(key string) (string, int64) {
		t.Helper()
		v, r, err := s.Get(ctx, key)
		if err != nil {
			t.Fatalf("Get %s: %v", key, err)
		}
		return string(v), r
	}
	absent := func(key string) {
		t.Helper()
		if _, _, err := s.Get(ctx, key); !errors.Is(err, datastore.ErrNotFound) {
			t.Errorf("%s exists: %v", key, err)
		}
	}
	if _, err := s.UpdateWith(ctx, "/r", []byte("v2"), rev, datastore.Side{Put: []datastore.KV{{Key: "/r", Value: []byte("x")}}}); err == nil {
		t.Fatal("UpdateWith naming its key twice was accepted")
	}
	newRev, err := s.UpdateWith(ctx, "/r", []byte("v2"), rev, datastore.Side{Put: []datastore.KV{{Key: "/k1", Value: []byte("v1")}}})
	if err != nil {
		t.Fatal(err)
	}
	if v, r := get("/k1"); v != "v1" || r != newRev {
		t.Errorf("side key %q at %d, want v1 at %d", v, r, newRev)
	}
	if _, err := s.UpdateWith(ctx, "/r", []byte("v3"), rev, datastore.Side{Put: []datastore.KV{{Key: "/k1", Value: []byte("v2")}}}); !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("UpdateWith at a stale revision: %v", err)
	}
	if v, _ := get("/k1"); v != "v1" {
		t.Errorf("a refused UpdateWith wrote its side: %q", v)
	}
	side := datastore.Side{Delete: []string{"/k1", "/never"}, Put: []datastore.KV{{Key: "/k2", Value: []byte("k")}}}
	if _, err := s.ReplaceWith(ctx, "/r", rev, "/m", []byte("m"), side); !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("ReplaceWith at a stale revision: %v", err)
	}
	absent("/k2")
	replRev, err := s.ReplaceWith(ctx, "/r", newRev, "/m", []byte("m"), side)
	if err != nil {
		t.Fatal(err)
	}
	absent("/r")
	absent("/k1")
	if v, r := get("/k2"); v != "k" || r != replRev {
		t.Errorf("side key %q at %d, want k at %d", v, r, replRev)
	}
}

func TestHoldBlocksUntilReleasedOrCancelled(t *testing.T) {
	s := New()
	release := make(chan struct{})
	started := make(chan string, 1)
	s.Hold("put", release, started)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Put(ctx, "/k", []byte("v")) }()
	<-started
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("held Put after cancel: %v", err)
	}
	if _, ok := s.Value("/k"); ok {
		t.Error("a cancelled Put wrote")
	}
	go func() { done <- s.Put(context.Background(), "/k", []byte("v")) }()
	<-started
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if v, ok := s.Value("/k"); !ok || string(v) != "v" {
		t.Errorf("released Put: %q %v", v, ok)
	}
	if n := s.Calls("put"); n != 2 {
		t.Errorf("Calls(put) = %d, want 2", n)
	}
}
