package clock

import (
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, time.January, 1, 0, 0, 0, 0, time.UTC)

// fired returns the value waiting on c, if any, without blocking.
func fired(c <-chan time.Time) (time.Time, bool) {
	select {
	case v := <-c:
		return v, true
	default:
		return time.Time{}, false
	}
}

func TestRealNow(t *testing.T) {
	before := time.Now()
	got := Real{}.Now()
	after := time.Now()
	if got.Before(before) || got.After(after) {
		t.Errorf("Real.Now() = %s, not within [%s, %s]", got, before, after)
	}
}

func TestRealTicker(t *testing.T) {
	tk := Real{}.NewTicker(time.Millisecond)
	defer tk.Stop()
	select {
	case v := <-tk.C():
		if v.IsZero() {
			t.Error("tick carries a zero time")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("real ticker never fired")
	}
	var _ Clock = Real{}
	var _ Clock = (*Fake)(nil)
}

func TestFakeNowSetAdvance(t *testing.T) {
	f := NewFake(t0)
	steps := []struct {
		name string
		do   func()
		want time.Time
	}{
		{"start", func() {}, t0},
		{"advance 1h", func() { f.Advance(time.Hour) }, t0.Add(time.Hour)},
		{"advance 0", func() { f.Advance(0) }, t0.Add(time.Hour)},
		{"advance 90 days", func() { f.Advance(90 * 24 * time.Hour) }, t0.Add(time.Hour + 90*24*time.Hour)},
		{"set back", func() { f.Set(t0.Add(-time.Minute)) }, t0.Add(-time.Minute)},
		{"advance after set", func() { f.Advance(time.Second) }, t0.Add(-time.Minute + time.Second)},
	}
	for _, s := range steps {
		s.do()
		if got := f.Now(); !got.Equal(s.want) {
			t.Errorf("%s: Now() = %s, want %s", s.name, got, s.want)
		}
	}
}

func TestFakeTicker(t *testing.T) {
	type step struct {
		advance  time.Duration
		wantFire bool
		wantAt   time.Duration // the fired value, as an offset from t0
	}
	tests := []struct {
		name   string
		period time.Duration
		steps  []step
	}{
		{"fires once the deadline is reached", 10 * time.Second, []step{
			{5 * time.Second, false, 0},
			{4 * time.Second, false, 0},
			{time.Second, true, 10 * time.Second},
			{9 * time.Second, false, 0},
			{time.Second, true, 20 * time.Second},
		}},
		{"one tick for several missed periods", 10 * time.Second, []step{
			{35 * time.Second, true, 35 * time.Second},
			{4 * time.Second, false, 0},
			{time.Second, true, 40 * time.Second},
		}},
		{"one tick per Advance past the deadline", time.Hour, []step{
			{time.Hour, true, time.Hour},
			{time.Hour, true, 2 * time.Hour},
			{time.Hour + time.Minute, true, 3*time.Hour + time.Minute},
			{59 * time.Minute, true, 4 * time.Hour},
		}},
		{"advance 0 never fires", time.Second, []step{
			{0, false, 0},
			{0, false, 0},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake(t0)
			tk := f.NewTicker(tc.period)
			defer tk.Stop()
			for i, s := range tc.steps {
				f.Advance(s.advance)
				v, ok := fired(tk.C())
				if ok != s.wantFire {
					t.Fatalf("step %d (advance %s): fired = %v, want %v", i, s.advance, ok, s.wantFire)
				}
				if ok && !v.Equal(t0.Add(s.wantAt)) {
					t.Errorf("step %d: tick value %s, want %s", i, v, t0.Add(s.wantAt))
				}
				if _, again := fired(tk.C()); again {
					t.Errorf("step %d: more than one tick for one Advance", i)
				}
			}
		})
	}
}

func TestFakeTickerDropsTicksNobodyRead(t *testing.T) {
	f := NewFake(t0)
	tk := f.NewTicker(time.Minute)
	f.Advance(time.Minute)
	f.Advance(time.Minute)
	f.Advance(time.Minute)
	v, ok := fired(tk.C())
	if !ok || !v.Equal(t0.Add(time.Minute)) {
		t.Errorf("first tick = %s, %v; want the one at +1m", v, ok)
	}
	if _, ok := fired(tk.C()); ok {
		t.Error("unread ticks piled up; a ticker holds at most one")
	}
}

func TestFakeSeveralTickers(t *testing.T) {
	f := NewFake(t0)
	fast := f.NewTicker(time.Minute)
	slow := f.NewTicker(time.Hour)
	if got := f.Tickers(); got != 2 {
		t.Fatalf("Tickers() = %d, want 2", got)
	}
	f.Advance(time.Minute)
	if _, ok := fired(fast.C()); !ok {
		t.Error("minute ticker did not fire after 1m")
	}
	if _, ok := fired(slow.C()); ok {
		t.Error("hour ticker fired after 1m")
	}
	f.Advance(59 * time.Minute)
	if _, ok := fired(fast.C()); !ok {
		t.Error("minute ticker did not fire after 60m")
	}
	if _, ok := fired(slow.C()); !ok {
		t.Error("hour ticker did not fire after 60m")
	}

	// A ticker made later counts its period from the time it was made.
	late := f.NewTicker(time.Hour)
	f.Advance(59 * time.Minute)
	if _, ok := fired(late.C()); ok {
		t.Error("late ticker fired before its first period")
	}
	f.Advance(time.Minute)
	if _, ok := fired(late.C()); !ok {
		t.Error("late ticker did not fire after its first period")
	}
}

func TestFakeTickerStop(t *testing.T) {
	f := NewFake(t0)
	a := f.NewTicker(time.Second)
	b := f.NewTicker(time.Second)
	c := f.NewTicker(time.Second)
	steps := []struct {
		stop Ticker
		want int
	}{
		{nil, 3}, {b, 2}, {b, 2}, {a, 1}, {c, 0},
	}
	for i, s := range steps {
		if s.stop != nil {
			s.stop.Stop()
		}
		if got := f.Tickers(); got != s.want {
			t.Errorf("step %d: Tickers() = %d, want %d", i, got, s.want)
		}
	}
	f.Advance(time.Hour)
	for name, tk := range map[string]Ticker{"a": a, "b": b, "c": c} {
		if _, ok := fired(tk.C()); ok {
			t.Errorf("stopped ticker %s fired", name)
		}
	}

	// Stopping one ticker leaves the others running.
	x := f.NewTicker(time.Second)
	y := f.NewTicker(time.Second)
	x.Stop()
	f.Advance(time.Second)
	if _, ok := fired(x.C()); ok {
		t.Error("stopped ticker x fired")
	}
	if _, ok := fired(y.C()); !ok {
		t.Error("ticker y did not fire after x was stopped")
	}
}

func TestFakeSetDoesNotFire(t *testing.T) {
	f := NewFake(t0)
	tk := f.NewTicker(time.Minute)
	f.Set(t0.Add(time.Hour))
	if _, ok := fired(tk.C()); ok {
		t.Error("Set fired a ticker")
	}
}

func TestFakeNewTickerNonPositivePanics(t *testing.T) {
	for _, d := range []time.Duration{0, -time.Second} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewTicker(%s) did not panic", d)
				}
			}()
			NewFake(t0).NewTicker(d)
		}()
	}
}

func TestFakeConcurrentUse(t *testing.T) {
	f := NewFake(t0)
	tk := f.NewTicker(time.Second)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range 100 {
				f.Advance(time.Second)
			}
		}()
		go func() {
			defer wg.Done()
			for range 100 {
				_ = f.Now()
				fired(tk.C())
			}
		}()
	}
	wg.Wait()
	if got, want := f.Now(), t0.Add(400*time.Second); !got.Equal(want) {
		t.Errorf("Now() = %s after 400 concurrent 1s advances, want %s", got, want)
	}
}
