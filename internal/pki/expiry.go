package pki

import (
	"crypto/x509"
	"sync"
	"time"
)

// chainKey identifies a CA value by its certificate and bundle: certificates are never
// changed once parsed, so the same pointers mean the same chain.
type chainKey struct {
	cert   *x509.Certificate
	bundle [maxKeyedBundle]*x509.Certificate
	n      int
}

// maxKeyedBundle is the longest bundle whose expiry is remembered.
const maxKeyedBundle = 8

type chainEnd struct {
	at    time.Time
	limit *x509.Certificate
}

// expiryCache remembers ChainExpiry per CA value: walking the chain checks a signature
// per link, which would otherwise be paid again by every leaf signed.
type expiryCache struct {
	mu sync.Mutex
	m  map[chainKey]chainEnd
}

// maxExpiryCache bounds the cache; a server holds a handful of CAs.
const maxExpiryCache = 64

func (c *expiryCache) chainExpiry(ca *CA) (time.Time, *x509.Certificate) {
	if len(ca.Bundle) > maxKeyedBundle {
		return ca.ChainExpiry()
	}
	k := chainKey{cert: ca.Cert, n: len(ca.Bundle)}
	copy(k.bundle[:], ca.Bundle)
	c.mu.Lock()
	e, ok := c.m[k]
	c.mu.Unlock()
	if ok {
		return e.at, e.limit
	}
	at, limit := ca.ChainExpiry()
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxExpiryCache {
		c.m = map[chainKey]chainEnd{}
	}
	c.m[k] = chainEnd{at: at, limit: limit}
	c.mu.Unlock()
	return at, limit
}
