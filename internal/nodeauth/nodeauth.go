// Package nodeauth is node identity in the datastore: which node name is bound to which
// node password, which names and addresses the cluster's servers own (so that no agent
// can claim them), and which node claimed each node IP last. It keeps no certificate
// and no secret: node passwords are stored salted and hashed.
package nodeauth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datastore"
	"github.com/kpki/kpki/internal/nodeclaim"
)

// Store is what nodeauth needs of the datastore (datastore.Store, or an in-memory
// store in tests).
type Store interface {
	Get(ctx context.Context, key string) ([]byte, int64, error)
	GetPrefix(ctx context.Context, prefix string) ([]datastore.KV, int64, error)
	Create(ctx context.Context, key string, value []byte) error
	CreateOrGet(ctx context.Context, key string, value []byte) (bool, []byte, error)
	CreateOrGetRev(ctx context.Context, key string, value []byte) (bool, []byte, int64, error)
	Revision(ctx context.Context) (int64, error)
	Update(ctx context.Context, key string, value []byte, rev int64) (int64, error)
	Put(ctx context.Context, key string, value []byte) error
	WatchPrefix(ctx context.Context, prefix string, fromRev int64) <-chan datastore.Event
}

// Registry binds node names and addresses for one server. Self is the record of that
// server; Audit receives the entries it writes (nil: none).
type Registry struct {
	Store Store
	Self  nodeclaim.Server
	Log   *slog.Logger
	Clock clock.Clock
	Audit func(audit.Entry)

	cache serverCache
	nodes nodeCache
}

func (g *Registry) audit(e audit.Entry) {
	e.Time = g.Clock.Now().UTC()
	if g.Audit != nil {
		g.Audit(e)
	}
}

// Datastore keys of node identity.
const (
	// NodePasswordPrefix holds node password records, one key per node name:
	// "<salt hex>:<sha256 hex of salt and password>", or ServerNodeMarker.
	NodePasswordPrefix = "/kpki/node-passwords/"
	// ServersPrefix holds one record per server, /kpki/servers/<node name>: the JSON
	// form of nodeclaim.Server, written by the server at every start.
	ServersPrefix = "/kpki/servers/"
	// NodeIPPrefix maps a node IP claimed by an agent to the node that claimed it last,
	// /kpki/node-ips/<ip> -> node name.
	NodeIPPrefix = "/kpki/node-ips/"
	// ServerNodeMarker is the node-password record of a server's node name. It is not of
	// the "<salt>:<hash>" form, so no node password matches it.
	ServerNodeMarker = "kpki-server"
)

// ErrServerNodeName is what CheckNodePassword reports for a node name a server holds.
var ErrServerNodeName = errors.New("is the node name of a server of this cluster")

// serverCache caches the other servers' records. The cache is used only while a
// watch on ServersPrefix is running, and every change seen by the watch drops it.
type serverCache struct {
	mu       sync.Mutex
	servers  []nodeclaim.Server // every registered server but this one
	valid    bool
	watching bool
	gen      uint64 // bumped by every invalidation
}

func (c *serverCache) invalidate(watching bool) {
	c.mu.Lock()
	c.valid, c.watching = false, watching
	c.gen++
	c.mu.Unlock()
}

// RegisterServer records in the datastore what this server owns, so that no agent can
// claim it: its record under ServersPrefix (put, not create: a restart with other flags
// replaces it) and its node name as taken in the node-password namespace.
func (g *Registry) RegisterServer(ctx context.Context) error {
	self := g.Self
	data, err := json.Marshal(self)
	if err != nil {
		return err
	}
	if err := g.Store.Put(ctx, ServersPrefix+self.NodeName, data); err != nil {
		return fmt.Errorf("register this server in the datastore: %w", err)
	}
	key := NodePasswordPrefix + self.NodeName
	created, prev, err := g.Store.CreateOrGet(ctx, key, []byte(ServerNodeMarker))
	if err != nil {
		return fmt.Errorf("register this server's node name: %w", err)
	}
	if !created && string(prev) != ServerNodeMarker {
		if err := g.Store.Put(ctx, key, []byte(ServerNodeMarker)); err != nil {
			return fmt.Errorf("register this server's node name: %w", err)
		}
		g.Log.Warn("an agent had registered this server's node name; the server takes it back, the agent's certificates for it can no longer be renewed",
			"node", self.NodeName)
		g.audit(audit.Entry{Action: "server-node-name-taken-back", Actor: self.NodeName,
			Detail: "the node name was registered by an agent before this server started; it is now the server's"})
	}
	for _, ip := range ownedIPs(self) {
		v, _, err := g.Store.Get(ctx, NodeIPPrefix+ip)
		if errors.Is(err, datastore.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		g.Log.Warn("an agent holds a kubelet serving certificate naming an address of this server; agents can no longer claim it, rotate that node's certificates",
			"ip", ip, "agent", string(v))
		g.audit(audit.Entry{Action: "server-ip-claimed-by-agent", Actor: string(v),
			Detail: "agent " + string(v) + " was issued a serving certificate for " + ip + ", an address of server " + self.NodeName})
	}
	g.Log.Info("registered this server's node name and addresses", "node", self.NodeName, "ips", ownedIPs(self))
	return nil
}

// ownedIPs lists the IP addresses of a server record: node IPs, advertise address and
// IP --tls-san entries.
func ownedIPs(rec nodeclaim.Server) []string {
	var out []string
	seen := map[string]bool{}
	for _, v := range append(append([]string{rec.AdvertiseAddress}, rec.NodeIPs...), rec.TLSSANs...) {
		a, err := netip.ParseAddr(strings.TrimSpace(v))
		if err != nil || seen[a.Unmap().String()] {
			continue
		}
		seen[a.Unmap().String()] = true
		out = append(out, a.Unmap().String())
	}
	return out
}

// ClusterServers returns every server of the cluster: this one from its own
// configuration, the others from the datastore (or the cache while a watch keeps it).
func (g *Registry) ClusterServers(ctx context.Context) ([]nodeclaim.Server, error) {
	self := g.Self
	c := &g.cache
	c.mu.Lock()
	if c.valid {
		out := append([]nodeclaim.Server{self}, c.servers...)
		c.mu.Unlock()
		return out, nil
	}
	gen, watching := c.gen, c.watching
	c.mu.Unlock()
	kvs, _, err := g.Store.GetPrefix(ctx, ServersPrefix)
	if err != nil {
		return nil, err
	}
	others, err := decodeServers(kvs, self.NodeName)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if watching && c.watching && c.gen == gen {
		c.servers, c.valid = others, true
	}
	c.mu.Unlock()
	return append([]nodeclaim.Server{self}, others...), nil
}

// decodeServers parses the server records but the one of self. A record that does not
// parse is an error: the claim check fails closed.
func decodeServers(kvs []datastore.KV, self string) ([]nodeclaim.Server, error) {
	var out []nodeclaim.Server
	for _, kv := range kvs {
		if kv.Key == ServersPrefix+self {
			continue
		}
		var rec nodeclaim.Server
		if err := json.Unmarshal(kv.Value, &rec); err != nil || rec.NodeName == "" {
			return nil, fmt.Errorf("server record %s in the datastore is malformed; fix or delete it", kv.Key)
		}
		out = append(out, rec)
	}
	return out, nil
}

// WatchServers keeps the registry cache valid only as long as a watch on ServersPrefix
// runs: each watch starts right after the revision of a fresh read, and every event,
// and the end of the watch, drops the cache.
func (g *Registry) WatchServers(ctx context.Context) {
	c := &g.cache
	for ctx.Err() == nil {
		_, rev, err := g.Store.GetPrefix(ctx, ServersPrefix)
		if err == nil {
			ch := g.Store.WatchPrefix(ctx, ServersPrefix, rev+1)
			c.invalidate(true)
			for range ch {
				c.invalidate(true)
			}
			c.invalidate(false)
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

// RecordIPClaims notes node as the last claimant of each IP, warning and auditing when
// another node held it before: re-used addresses are allowed (DHCP, replaced hosts), but
// visible.
func (g *Registry) RecordIPClaims(ctx context.Context, node string, ips []net.IP, remote string) error {
	seen := map[string]bool{}
	for _, raw := range ips {
		ip := nodeclaim.Normalize(raw)
		if seen[ip] {
			continue
		}
		seen[ip] = true
		prev, err := g.claimIP(ctx, node, ip)
		if err != nil {
			return err
		}
		if prev != "" {
			g.Log.Warn("node claims an IP another node claimed before; the other node's serving certificate for it stays valid until it expires",
				"node", node, "ip", ip, "previous-node", prev, "remote", remote)
			g.audit(audit.Entry{Action: "node-ip-reclaimed", Actor: node, RemoteAddr: remote,
				Detail: "node IP " + ip + " was claimed before by node " + prev})
		}
	}
	return nil
}

// claimIP makes node the holder of ip and returns the previous holder when it was
// another node.
func (g *Registry) claimIP(ctx context.Context, node, ip string) (string, error) {
	key := NodeIPPrefix + ip
	for range 5 {
		v, rev, err := g.Store.Get(ctx, key)
		switch {
		case errors.Is(err, datastore.ErrNotFound):
			err = g.Store.Create(ctx, key, []byte(node))
			if errors.Is(err, datastore.ErrExists) {
				continue
			}
			return "", err
		case err != nil:
			return "", err
		case string(v) == node:
			return "", nil
		}
		if _, err := g.Store.Update(ctx, key, []byte(node), rev); errors.Is(err, datastore.ErrConflict) {
			continue
		} else if err != nil {
			return "", err
		}
		return string(v), nil
	}
	return "", fmt.Errorf("node IP record %s keeps changing concurrently", key)
}

// Watching reports whether the cache of server records is kept by a running watch.
func (g *Registry) Watching() bool {
	g.cache.mu.Lock()
	defer g.cache.mu.Unlock()
	return g.cache.watching
}

// CheckNodePassword binds a node name to the first node password it was used with and
// reports whether pw is that password. The stored value is a salted SHA-256: node
// passwords are 128-bit random. A node name a server registered (ServerNodeMarker)
// gives ErrServerNodeName. A node whose record this server has seen is answered from
// memory while the watch of WatchNodes runs; a mismatch is always decided by the
// datastore.
func (g *Registry) CheckNodePassword(ctx context.Context, node, pw string) (bool, error) {
	if hit, serverName := g.nodes.check(node, pw); serverName {
		return false, ErrServerNodeName
	} else if hit {
		return true, nil
	}
	key := NodePasswordPrefix + node
	var salt [16]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return false, err
	}
	record := hex.EncodeToString(salt[:]) + ":" + nodeHash(salt[:], pw)
	created, stored, rev, err := g.Store.CreateOrGetRev(ctx, key, []byte(record))
	if err != nil {
		return false, err
	}
	if created {
		g.nodes.put(node, record, rev)
		g.Log.Info("registered node", "node", node)
		return true, nil
	}
	g.nodes.put(node, string(stored), rev)
	if string(stored) == ServerNodeMarker {
		return false, ErrServerNodeName
	}
	match, wellFormed := recordMatches(string(stored), pw)
	if !wellFormed {
		return false, fmt.Errorf("node password record %s is malformed", key)
	}
	return match, nil
}

func nodeHash(salt []byte, pw string) string {
	h := sha256.New()
	h.Write(salt)
	h.Write([]byte(pw))
	return hex.EncodeToString(h.Sum(nil))
}
