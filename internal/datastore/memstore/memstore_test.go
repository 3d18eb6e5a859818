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
