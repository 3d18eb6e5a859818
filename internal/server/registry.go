package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/datastore"
	"github.com/kpki/kpki/internal/nodeclaim"
)

// Datastore keys of node identity.
const (
	// serversPrefix holds one record per server, /kpki/servers/<node name>: the JSON
	// form of nodeclaim.Server, written by the server at every start.
	serversPrefix = "/kpki/servers/"
	// nodeIPPrefix maps a node IP claimed by an agent to the node that claimed it last,
	// /kpki/node-ips/<ip> -> node name.
	nodeIPPrefix = "/kpki/node-ips/"
	// serverNodeMarker is the node-password record of a server's node name. It is not of
	// the "<salt>:<hash>" form, so no node password matches it.
	serverNodeMarker = "kpki-server"
)

// errServerNodeName is what checkNodePassword reports for a node name a server holds.
var errServerNodeName = errors.New("is the node name of a server of this cluster")

// serverRegistry caches the other servers' records. The cache is used only while a
// watch on serversPrefix is running, and every change seen by the watch drops it.
type serverRegistry struct {
	mu       sync.Mutex
	servers  []nodeclaim.Server // every registered server but this one
	valid    bool
	watching bool
	gen      uint64 // bumped by every invalidation
}

func (g *serverRegistry) invalidate(watching bool) {
	g.mu.Lock()
	g.valid, g.watching = false, watching
	g.gen++
	g.mu.Unlock()
}

// selfRecord is what this server owns.
func (s *Server) selfRecord() nodeclaim.Server {
	rec := nodeclaim.Server{NodeName: s.r.nodeName, AdvertiseAddress: s.r.advertise,
		TLSSANs: append([]string{}, s.cfg.TLSSANs...), ServiceCIDR: s.cfg.ServiceCIDR, ClusterDomain: s.cfg.ClusterDomain}
	for _, ip := range s.r.nodeIPs {
		rec.NodeIPs = append(rec.NodeIPs, ip.String())
	}
	return rec
}

// registerServer records in the datastore what this server owns, so that no agent can
// claim it: its record under serversPrefix (put, not create: a restart with other flags
// replaces it) and its node name as taken in the node-password namespace.
func (s *Server) registerServer(ctx context.Context) error {
	self := s.selfRecord()
	data, err := json.Marshal(self)
	if err != nil {
		return err
	}
	if err := s.store.Put(ctx, serversPrefix+self.NodeName, data); err != nil {
		return fmt.Errorf("register this server in the datastore: %w", err)
	}
	key := nodePasswordPrefix + self.NodeName
	created, prev, err := s.store.CreateOrGet(ctx, key, []byte(serverNodeMarker))
	if err != nil {
		return fmt.Errorf("register this server's node name: %w", err)
	}
	if !created && string(prev) != serverNodeMarker {
		if err := s.store.Put(ctx, key, []byte(serverNodeMarker)); err != nil {
			return fmt.Errorf("register this server's node name: %w", err)
		}
		s.log.Warn("an agent had registered this server's node name; the server takes it back, the agent's certificates for it can no longer be renewed",
			"node", self.NodeName)
		s.writeAudit(audit.Entry{Time: s.clock.Now().UTC(), Action: "server-node-name-taken-back", Actor: self.NodeName,
			Detail: "the node name was registered by an agent before this server started; it is now the server's"})
	}
	for _, ip := range ownedIPs(self) {
		v, _, err := s.store.Get(ctx, nodeIPPrefix+ip)
		if errors.Is(err, datastore.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		s.log.Warn("an agent holds a kubelet serving certificate naming an address of this server; agents can no longer claim it, rotate that node's certificates",
			"ip", ip, "agent", string(v))
		s.writeAudit(audit.Entry{Time: s.clock.Now().UTC(), Action: "server-ip-claimed-by-agent", Actor: string(v),
			Detail: "agent " + string(v) + " was issued a serving certificate for " + ip + ", an address of server " + self.NodeName})
	}
	s.log.Info("registered this server's node name and addresses", "node", self.NodeName, "ips", ownedIPs(self))
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

// clusterServers returns every server of the cluster: this one from its own
// configuration, the others from the datastore (or the cache while a watch keeps it).
func (s *Server) clusterServers(ctx context.Context) ([]nodeclaim.Server, error) {
	self := s.selfRecord()
	g := &s.registry
	g.mu.Lock()
	if g.valid {
		out := append([]nodeclaim.Server{self}, g.servers...)
		g.mu.Unlock()
		return out, nil
	}
	gen, watching := g.gen, g.watching
	g.mu.Unlock()
	kvs, _, err := s.store.GetPrefix(ctx, serversPrefix)
	if err != nil {
		return nil, err
	}
	others, err := decodeServers(kvs, self.NodeName)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	if watching && g.watching && g.gen == gen {
		g.servers, g.valid = others, true
	}
	g.mu.Unlock()
	return append([]nodeclaim.Server{self}, others...), nil
}

// decodeServers parses the server records but the one of self. A record that does not
// parse is an error: the claim check fails closed.
func decodeServers(kvs []datastore.KV, self string) ([]nodeclaim.Server, error) {
	var out []nodeclaim.Server
	for _, kv := range kvs {
		if kv.Key == serversPrefix+self {
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

// watchServers keeps the registry cache valid only as long as a watch on serversPrefix
// runs: each watch starts right after the revision of a fresh read, and every event,
// and the end of the watch, drops the cache.
func (s *Server) watchServers(ctx context.Context) {
	g := &s.registry
	for ctx.Err() == nil {
		_, rev, err := s.store.GetPrefix(ctx, serversPrefix)
		if err == nil {
			ch := s.store.WatchPrefix(ctx, serversPrefix, rev+1)
			g.invalidate(true)
			for range ch {
				g.invalidate(true)
			}
			g.invalidate(false)
		}
		if ctx.Err() != nil {
			return
		}
		t := s.clock.NewTicker(time.Second)
		select {
		case <-ctx.Done():
		case <-t.C():
		}
		t.Stop()
	}
}

// recordIPClaims notes node as the last claimant of each IP, warning and auditing when
// another node held it before: re-used addresses are allowed (DHCP, replaced hosts), but
// visible.
func (s *Server) recordIPClaims(ctx context.Context, node string, ips []net.IP, remote string) error {
	seen := map[string]bool{}
	for _, raw := range ips {
		ip := nodeclaim.Normalize(raw)
		if seen[ip] {
			continue
		}
		seen[ip] = true
		prev, err := s.claimIP(ctx, node, ip)
		if err != nil {
			return err
		}
		if prev != "" {
			s.log.Warn("node claims an IP another node claimed before; the other node's serving certificate for it stays valid until it expires",
				"node", node, "ip", ip, "previous-node", prev, "remote", remote)
			s.writeAudit(audit.Entry{Time: s.clock.Now().UTC(), Action: "node-ip-reclaimed", Actor: node, RemoteAddr: remote,
				Detail: "node IP " + ip + " was claimed before by node " + prev})
		}
	}
	return nil
}

// claimIP makes node the holder of ip and returns the previous holder when it was
// another node.
func (s *Server) claimIP(ctx context.Context, node, ip string) (string, error) {
	key := nodeIPPrefix + ip
	for range 5 {
		v, rev, err := s.store.Get(ctx, key)
		switch {
		case errors.Is(err, datastore.ErrNotFound):
			err = s.store.Create(ctx, key, []byte(node))
			if errors.Is(err, datastore.ErrExists) {
				continue
			}
			return "", err
		case err != nil:
			return "", err
		case string(v) == node:
			return "", nil
		}
		if _, err := s.store.Update(ctx, key, []byte(node), rev); errors.Is(err, datastore.ErrConflict) {
			continue
		} else if err != nil {
			return "", err
		}
		return string(v), nil
	}
	return "", fmt.Errorf("node IP record %s keeps changing concurrently", key)
}
