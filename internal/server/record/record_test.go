package record

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/datastore"
	"github.com/kpki/kpki/internal/datastore/memstore"
)

func TestOwnTellsInFlightWritesApart(t *testing.T) {
	var o Own
	o.Set(5)
	ctx := context.Background()
	if !o.Mine(ctx, 5) || o.Mine(ctx, 6) {
		t.Fatal("Mine with nothing in flight")
	}
	done := o.Begin()
	answer := make(chan bool, 1)
	go func() { answer <- o.Mine(ctx, 7) }()
	select {
	case v := <-answer:
		t.Fatalf("Mine(7) = %v while a write was in flight; want it to wait", v)
	case <-time.After(50 * time.Millisecond):
	}
	done(7)
	if v := <-answer; !v {
		t.Error("Mine(7) = false after the own write at 7")
	}
	done = o.Begin()
	go func() { answer <- o.Mine(ctx, 9) }()
	done(0)
	if v := <-answer; v {
		t.Error("Mine(9) = true after a failed own write")
	}
	cctx, cancel := context.WithCancel(ctx)
	done = o.Begin()
	go func() { answer <- o.Mine(cctx, 10) }()
	cancel()
	if v := <-answer; v {
		t.Error("Mine after its context ended = true")
	}
	done(0)
}

func TestReadUpdateMove(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	if rec, _, err := Read(ctx, st, "pw-a", nil); rec != nil || err != nil {
		t.Fatalf("Read of an empty datastore = %v, %v", rec, err)
	}
	if _, _, err := Current(ctx, st, "pw-a"); err == nil {
		t.Fatal("Current of an empty datastore succeeded")
	}
	rec := bootstrap.NewRecord()
	rec.Set("ServerCA", bootstrap.File{Timestamp: time.Unix(1, 0).UTC(), Content: []byte("ca")})
	value, err := Seal("pw-a", rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, bootstrap.KeyName("pw-a"), value); err != nil {
		t.Fatal(err)
	}
	got, rev, err := Current(ctx, st, "pw-a")
	if err != nil {
		t.Fatal(err)
	}
	if f, ok := got.Get("ServerCA"); !ok || string(f.Content) != "ca" {
		t.Errorf("read back %+v", f)
	}
	for _, pw := range []string{"pw-b", ""} {
		if _, _, err := Read(ctx, st, pw, nil); !errors.Is(err, ErrDifferentToken) {
			t.Errorf("Read with %q = %v, want ErrDifferentToken", pw, err)
		}
	}
	// The missing callback names the password to look under instead.
	asked := 0
	if got, _, err := Read(ctx, st, "pw-b", func(context.Context) (string, error) { asked++; return "pw-a", nil }); err != nil || got == nil || asked != 1 {
		t.Errorf("Read with a pending password = %v, %v (asked %d)", got, err, asked)
	}
	if _, err := Update(ctx, st, "pw-a", rev-1, got); !errors.Is(err, datastore.ErrConflict) {
		t.Errorf("Update at a stale revision: %v", err)
	}
	rev2, err := Update(ctx, st, "pw-a", rev, got)
	if err != nil || rev2 <= rev {
		t.Fatalf("Update = %d, %v", rev2, err)
	}
	rev3, err := Move(ctx, st, "pw-a", rev2, "pw-c", got, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Value(bootstrap.KeyName("pw-a")); ok {
		t.Error("the old key survived the move")
	}
	if moved, r, err := Current(ctx, st, "pw-c"); err != nil || r != rev3 || moved == nil {
		t.Errorf("Current under the new password = %v, %d, %v", moved, r, err)
	}
}

// TestKeptRecord: UpdateKeeping stores the kept record with the record, encrypted under
// the same password, at the revision of the record; a refused update keeps nothing;
// Move re-encrypts the kept record under the new password and leaves nothing under the
// old one, also when there is none to move.
func TestKeptRecord(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	file := func(s string) bootstrap.File {
		return bootstrap.File{Timestamp: time.Unix(1, 0).UTC(), Content: []byte(s)}
	}
	rec := bootstrap.NewRecord()
	rec.Set("ServerCA", file("ca-1"))
	value, err := Seal("pw-a", rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, bootstrap.KeyName("pw-a"), value); err != nil {
		t.Fatal(err)
	}
	if kept, _, err := Previous(ctx, st, "pw-a"); kept != nil || err != nil {
		t.Fatalf("Previous with nothing kept = %v, %v", kept, err)
	}
	_, rev, err := Current(ctx, st, "pw-a")
	if err != nil {
		t.Fatal(err)
	}
	next := bootstrap.NewRecord()
	next.Set("ServerCA", file("ca-2"))
	if _, err := UpdateKeeping(ctx, st, "pw-a", rev-1, next, rec); !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("UpdateKeeping at a stale revision: %v", err)
	}
	if _, ok := st.Value(bootstrap.PreviousKeyName("pw-a")); ok {
		t.Fatal("a refused UpdateKeeping stored the kept record")
	}
	rev2, err := UpdateKeeping(ctx, st, "pw-a", rev, next, rec)
	if err != nil {
		t.Fatal(err)
	}
	keptValue, _ := st.Value(bootstrap.PreviousKeyName("pw-a"))
	if _, err := bootstrap.Decrypt("pw-b", string(keptValue)); !errors.Is(err, bootstrap.ErrWrongPassphrase) {
		t.Errorf("the kept record opens with another password: %v", err)
	}
	kept, keptRev, err := Previous(ctx, st, "pw-a")
	if f, _ := kept.Get("ServerCA"); err != nil || string(f.Content) != "ca-1" || keptRev != rev2 {
		t.Fatalf("Previous = %q at %d, %v; want the replaced ca-1 at %d", f.Content, keptRev, err, rev2)
	}
	if cur, r, err := Current(ctx, st, "pw-a"); err != nil || r != rev2 {
		t.Fatalf("Current = %v, %d, %v", cur, r, err)
	} else if f, _ := cur.Get("ServerCA"); string(f.Content) != "ca-2" {
		t.Errorf("record %q, want ca-2", f.Content)
	}
	if _, _, err := Previous(ctx, st, "pw-b"); err != nil {
		t.Errorf("Previous of a password that keeps nothing: %v", err)
	}

	if _, err := Move(ctx, st, "pw-a", rev2, "pw-c", next, kept); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Value(bootstrap.PreviousKeyName("pw-a")); ok {
		t.Error("the kept record is still under the old password's key")
	}
	moved, _, err := Previous(ctx, st, "pw-c")
	if f, _ := moved.Get("ServerCA"); err != nil || string(f.Content) != "ca-1" {
		t.Errorf("kept record after the move = %q, %v", f.Content, err)
	}
	// A move with nothing to keep deletes what an old password kept.
	if err := st.Put(ctx, bootstrap.PreviousKeyName("pw-c"), keptValue); err != nil {
		t.Fatal(err)
	}
	_, rev3, _ := Current(ctx, st, "pw-c")
	if _, err := Move(ctx, st, "pw-c", rev3, "pw-d", next, nil); err != nil {
		t.Fatal(err)
	}
	for _, pw := range []string{"pw-c", "pw-d"} {
		if _, ok := st.Value(bootstrap.PreviousKeyName(pw)); ok {
			t.Errorf("a kept record under %s after a move with none", pw)
		}
	}
}
