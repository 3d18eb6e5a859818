package supervisor

import (
	"container/list"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/kpki/kpki/internal/clock"
)

// Failed authentications are slowed down per remote address with a token bucket: an
// address may fail authBurst times in a row, then one more time every authRefill. An
// address whose bucket is empty is answered 429 with Retry-After (at most authRefill)
// and its credentials are not even checked, so guessing costs time without holding any
// connection open. A successful authentication forgets the address. The table holds at
// most authTable addresses; a new one evicts the address seen least recently, so
// memory stays bounded, and no address is ever refused because of another one.
const (
	authBurst  = 10
	authRefill = 2 * time.Second
	authTable  = 4096
)

// authLimiter is the per-address bucket table. Only failures take from a bucket, so
// valid requests are never refused however many arrive at once; parallel guesses from
// one address can overrun an almost empty bucket only by the few that are checked in
// the same instant.
type authLimiter struct {
	clock  clock.Clock
	burst  int
	refill time.Duration
	size   int

	mu      sync.Mutex
	entries map[string]*list.Element // of *authEntry
	order   *list.List               // front: most recently seen
}

type authEntry struct {
	key    string
	tokens int       // failures still allowed at time at
	at     time.Time // when tokens was last brought up to date
}

func newAuthLimiter(c clock.Clock, burst int, refill time.Duration, size int) *authLimiter {
	if c == nil {
		c = clock.Real{}
	}
	return &authLimiter{clock: c, burst: burst, refill: refill, size: size,
		entries: map[string]*list.Element{}, order: list.New()}
}

// refilled brings e up to date at now.
func (l *authLimiter) refilled(e *authEntry, now time.Time) {
	if n := int(now.Sub(e.at) / l.refill); n > 0 {
		e.tokens = min(l.burst, e.tokens+n)
		e.at = e.at.Add(time.Duration(n) * l.refill)
	}
	if e.tokens >= l.burst {
		e.at = now
	}
}

// wait returns 0 when key may authenticate now, or how long until it may.
func (l *authLimiter) wait(key string) time.Duration {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	el, ok := l.entries[key]
	if !ok {
		return 0
	}
	l.order.MoveToFront(el)
	e := el.Value.(*authEntry)
	l.refilled(e, now)
	if e.tokens > 0 {
		return 0
	}
	return e.at.Add(l.refill).Sub(now)
}

// failed records a failed authentication of key. A new address evicts the one seen
// least recently when the table is full.
func (l *authLimiter) failed(key string) {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	el, ok := l.entries[key]
	if !ok {
		for l.order.Len() >= l.size {
			oldest := l.order.Back()
			l.order.Remove(oldest)
			delete(l.entries, oldest.Value.(*authEntry).key)
		}
		el = l.order.PushFront(&authEntry{key: key, tokens: l.burst, at: now})
		l.entries[key] = el
	}
	l.order.MoveToFront(el)
	e := el.Value.(*authEntry)
	l.refilled(e, now)
	if e.tokens > 0 {
		e.tokens--
	}
}

// succeeded forgets key: its credentials were right.
func (l *authLimiter) succeeded(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if el, ok := l.entries[key]; ok {
		l.order.Remove(el)
		delete(l.entries, key)
	}
}

// len is the number of addresses in the table.
func (l *authLimiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.entries)
}

// clientKey is the limiter key of a request's remote address: the IP without the port;
// for IPv6 its /64, which one host commonly holds whole.
func clientKey(remoteAddr string) string {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		host, _, err := net.SplitHostPort(remoteAddr)
		if err != nil {
			return remoteAddr
		}
		return host
	}
	ip := ap.Addr().Unmap()
	if ip.Is6() {
		if p, err := ip.Prefix(64); err == nil {
			return p.String()
		}
	}
	return ip.String()
}
