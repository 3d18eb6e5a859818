// Package clock owns the notion of "now" for every time-dependent decision in kpki
// (expiry, renewal windows, backup names). Production code uses Real; tests use Fake
// and move time forward explicitly instead of sleeping.
package clock

import (
	"context"
	"sort"
	"sync"
	"time"
)

// Clock tells the time and makes tickers.
type Clock interface {
	Now() time.Time
	// NewTicker returns a ticker that fires every d.
	NewTicker(d time.Duration) Ticker
}

// Ticker is the part of time.Ticker that kpki uses.
type Ticker interface {
	C() <-chan time.Time
	Stop()
}

// Real is the wall clock.
type Real struct{}

// Now returns time.Now().
func (Real) Now() time.Time { return time.Now() }

// NewTicker wraps time.NewTicker.
func (Real) NewTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }

type realTicker struct{ t *time.Ticker }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }

// Fake is a manually driven clock. Its tickers fire when Advance moves time past
// their next deadline.
type Fake struct {
	mu      sync.Mutex
	now     time.Time
	tickers []*fakeTicker
}

// NewFake returns a fake clock set to t.
func NewFake(t time.Time) *Fake { return &Fake{now: t} }

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Set moves the clock to t without firing tickers.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	f.now = t
	f.mu.Unlock()
}

// NewTicker returns a ticker driven by Advance. Like time.NewTicker, it panics when d
// is not positive.
func (f *Fake) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("non-positive interval for NewTicker")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTicker{f: f, period: d, next: f.now.Add(d), c: make(chan time.Time, 1)}
	f.tickers = append(f.tickers, t)
	return t
}

// Tickers reports how many live tickers exist, so tests can wait until a loop has started.
func (f *Fake) Tickers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.tickers)
}

// Advance moves time forward by d and fires every ticker whose deadline passed
// (at most once per ticker per call, like a real ticker that drops missed ticks).
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	ts := append([]*fakeTicker(nil), f.tickers...)
	sort.Slice(ts, func(i, j int) bool { return ts[i].next.Before(ts[j].next) })
	for _, t := range ts {
		if f.now.Before(t.next) {
			continue
		}
		for !f.now.Before(t.next) {
			t.next = t.next.Add(t.period)
		}
		select {
		case t.c <- f.now:
		default:
		}
	}
}

type fakeTicker struct {
	f      *Fake
	period time.Duration
	next   time.Time
	c      chan time.Time
}

func (t *fakeTicker) C() <-chan time.Time { return t.c }

func (t *fakeTicker) Stop() {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	for i, x := range t.f.tickers {
		if x == t {
			t.f.tickers = append(t.f.tickers[:i], t.f.tickers[i+1:]...)
			return
		}
	}
}

// Sleep waits d on clk, or until ctx ends (then it returns ctx's error).
func Sleep(ctx context.Context, clk Clock, d time.Duration) error {
	t := clk.NewTicker(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}
