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
	rev3, err := Move(ctx, st, "pw-a", rev2, "pw-c", got)
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
