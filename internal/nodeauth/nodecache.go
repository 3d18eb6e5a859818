package nodeauth

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"strings"
	"sync"
	"time"
)

// nodeCache keeps the node-password records this server has read or written, so that a
// node that renews is checked against its record in memory rather than with an etcd
// transaction every time. It holds what etcd holds (salt and hash, never a password) and
// is used only while a watch on NodePasswordPrefix runs:
//   - a record is cached only when the read or write that returned it saw a revision at
//     or after the start of the running watch, so every later change reaches the watch;
//   - every change the watch sees replaces the key's entry by a tombstone at the
//     change's revision, and a record read at an older revision is not cached over it;
//   - the end of a watch drops everything.
//
// A mismatch is never answered from the cache: it goes to etcd, which decides.
type nodeCache struct {
	mu       sync.Mutex
	watching bool
	since    int64 // revision the running watch started after
	entries  map[string]nodeEntry
}

// nodeEntry is a cached record, or a tombstone when record is "".
type nodeEntry struct {
	record string
	rev    int64 // revision the record is known current at, or of the change
}

// maxNodeCache bounds the cache; past it, new records are not cached.
const maxNodeCache = 1 << 20

// check answers from the cache: hit is false when node is not cached or its password
// does not match the cached record (etcd decides those). serverName is true for a node
// name a server holds.
func (c *nodeCache) check(node, pw string) (hit, serverName bool) {
	c.mu.Lock()
	e, ok := c.entries[node]
	watching := c.watching
	c.mu.Unlock()
	if !ok || !watching || e.record == "" {
		return false, false
	}
	if e.record == ServerNodeMarker {
		return true, true
	}
	match, _ := recordMatches(e.record, pw)
	return match, false
}

// recordMatches reports whether record, "<salt hex>:<hash>", is the record of pw, and
// whether it is of that form at all.
func recordMatches(record, pw string) (match, wellFormed bool) {
	saltHex, sum, ok := strings.Cut(record, ":")
	salt, err := hex.DecodeString(saltHex)
	if !ok || err != nil {
		return false, false
	}
	return subtle.ConstantTimeCompare([]byte(nodeHash(salt, pw)), []byte(sum)) == 1, true
}

// put caches record for node, current at rev.
func (c *nodeCache) put(node, record string, rev int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.watching || rev < c.since {
		return
	}
	if e, ok := c.entries[node]; ok && e.rev > rev {
		return
	}
	if _, ok := c.entries[node]; !ok && len(c.entries) >= maxNodeCache {
		return
	}
	c.entries[node] = nodeEntry{record: record, rev: rev}
}

// changed records a change of node's record seen by the watch at rev.
func (c *nodeCache) changed(node string, rev int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[node]; ok && e.rev >= rev {
		return
	}
	if c.entries != nil {
		c.entries[node] = nodeEntry{rev: rev}
	}
}

// reset drops every entry; watching says whether a watch from since+1 now runs.
func (c *nodeCache) reset(watching bool, since int64) {
	c.mu.Lock()
	c.watching, c.since = watching, since
	c.entries = map[string]nodeEntry{}
	c.mu.Unlock()
}

// WatchNodes keeps the cache of node-password records usable while a watch on
// NodePasswordPrefix runs; it returns when ctx ends.
func (g *Registry) WatchNodes(ctx context.Context) {
	c := &g.nodes
	for ctx.Err() == nil {
		rev, err := g.Store.Revision(ctx)
		if err == nil {
			ch := g.Store.WatchPrefix(ctx, NodePasswordPrefix, rev+1)
			c.reset(true, rev+1)
			for ev := range ch {
				c.changed(strings.TrimPrefix(ev.Key, NodePasswordPrefix), ev.Revision)
			}
			c.reset(false, 0)
		}
		if ctx.Err() != nil {
			return
		}
		t := g.Clock.NewTicker(time.Second)
		select {
		case <-ctx.Done():
		case <-t.C():
		}
		t.Stop()
	}
}
