package server

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/nodeauth"
	"github.com/kpki/kpki/internal/nodeclaim"
)

func serverNames(list []nodeclaim.Server) []string {
	var out []string
	for _, s := range list {
		out = append(out, s.NodeName)
	}
	slices.Sort(out)
	return out
}

// TestServerRegistry starts a server and checks what it registers, that its node name
// is closed to node passwords, that the claim check sees another server's record as soon
// as the watch reports it (and fails closed on a broken one), and the node-IP index.
func TestServerRegistry(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.TLSSANs = []string{"api.test", "10.9.9.9"}
	cfg.NodeIPs = []string{"127.0.0.1", "10.8.8.8"}
	s := startServer(t, cfg, clock.NewFake(time.Now()), nil)
	defer s.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	raw, _, err := s.store.Get(ctx, nodeauth.ServersPrefix+"node-a")
	if err != nil {
		t.Fatal(err)
	}
	var rec nodeclaim.Server
	if err := json.Unmarshal(raw, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.NodeName != "node-a" || rec.AdvertiseAddress != "127.0.0.1" || !slices.Equal(rec.NodeIPs, []string{"127.0.0.1", "10.8.8.8"}) ||
		!slices.Equal(rec.TLSSANs, cfg.TLSSANs) || rec.ServiceCIDR != "10.43.0.0/16" || rec.ClusterDomain != "cluster.local" {
		t.Errorf("server record %s", raw)
	}
	if v, _, err := s.store.Get(ctx, nodeauth.NodePasswordPrefix+"node-a"); err != nil || string(v) != nodeauth.ServerNodeMarker {
		t.Errorf("node-password record of the server's name = %q, %v; want %q", v, err, nodeauth.ServerNodeMarker)
	}
	for _, pw := range []string{"", "kpki-server", "guess"} {
		if ok, err := s.nodes.CheckNodePassword(ctx, "node-a", pw); ok || !errors.Is(err, nodeauth.ErrServerNodeName) {
			t.Errorf("node password %q for the server's name: ok=%v err=%v", pw, ok, err)
		}
	}

	list, err := s.nodes.ClusterServers(ctx)
	if err != nil || !slices.Equal(serverNames(list), []string{"node-a"}) {
		t.Fatalf("clusterServers = %v, %v", serverNames(list), err)
	}
	waitFor(t, s.nodes.Watching)
	if _, err := s.nodes.ClusterServers(ctx); err != nil { // fills the cache
		t.Fatal(err)
	}
	other, _ := json.Marshal(nodeclaim.Server{NodeName: "node-b", AdvertiseAddress: "10.1.1.1"})
	if err := s.store.Put(ctx, nodeauth.ServersPrefix+"node-b", other); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		list, err := s.nodes.ClusterServers(ctx)
		return err == nil && slices.Equal(serverNames(list), []string{"node-a", "node-b"})
	})
	list, _ = s.nodes.ClusterServers(ctx)
	if err := nodeclaim.Check(list, "worker", []net.IP{net.ParseIP("10.1.1.1")}); err == nil || !strings.Contains(err.Error(), "server node-b") {
		t.Errorf("claim of node-b's address: %v", err)
	}
	for _, c := range []struct{ name, ip string }{{"node-a", ""}, {"api.test", ""}, {"worker", "10.9.9.9"}, {"worker", "10.8.8.8"}, {"worker", "127.0.0.1"}} {
		var ips []net.IP
		if c.ip != "" {
			ips = []net.IP{net.ParseIP(c.ip)}
		}
		if err := nodeclaim.Check(list, c.name, ips); err == nil || !strings.Contains(err.Error(), "server node-a") {
			t.Errorf("claim %s %s of this server: %v", c.name, c.ip, err)
		}
	}

	if err := s.store.Put(ctx, nodeauth.ServersPrefix+"broken", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, err := s.nodes.ClusterServers(ctx); return err != nil })
	if _, err := s.nodes.ClusterServers(ctx); err == nil || !strings.Contains(err.Error(), nodeauth.ServersPrefix+"broken") {
		t.Errorf("a broken record: %v", err)
	}
	if _, err := s.store.Client().Delete(ctx, nodeauth.ServersPrefix+"broken"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, err := s.nodes.ClusterServers(ctx); return err == nil })

	// The node-IP index: a first claim, the same node again, another node.
	ip := []net.IP{net.ParseIP("::ffff:10.0.0.5")}
	if err := s.nodes.RecordIPClaims(ctx, "worker-1", ip, "test"); err != nil {
		t.Fatal(err)
	}
	if err := s.nodes.RecordIPClaims(ctx, "worker-1", ip, "test"); err != nil {
		t.Fatal(err)
	}
	if v, _, err := s.store.Get(ctx, nodeauth.NodeIPPrefix+"10.0.0.5"); err != nil || string(v) != "worker-1" {
		t.Fatalf("index of 10.0.0.5 = %q, %v", v, err)
	}
	if n := strings.Count(readAudit(t, s), `"node-ip-reclaimed"`); n != 0 {
		t.Errorf("%d node-ip-reclaimed entries before another node claimed the IP", n)
	}
	if err := s.nodes.RecordIPClaims(ctx, "worker-2", ip, "test"); err != nil {
		t.Fatal(err)
	}
	if v, _, err := s.store.Get(ctx, nodeauth.NodeIPPrefix+"10.0.0.5"); err != nil || string(v) != "worker-2" {
		t.Errorf("index of 10.0.0.5 = %q, %v after worker-2 claimed it", v, err)
	}
	log := readAudit(t, s)
	if !strings.Contains(log, `"action":"node-ip-reclaimed","actor":"worker-2"`) || !strings.Contains(log, "node IP 10.0.0.5 was claimed before by node worker-1") {
		t.Errorf("audit log lacks the re-claim:\n%s", log)
	}
}

// TestServerTakesBackItsName starts a server whose node name an agent registered first.
func TestServerTakesBackItsName(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	s := startServer(t, cfg, clock.NewFake(time.Now()), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.store.Put(ctx, nodeauth.NodePasswordPrefix+"node-a", []byte("00:agent")); err != nil {
		t.Fatal(err)
	}
	if err := s.store.Put(ctx, nodeauth.NodeIPPrefix+"127.0.0.1", []byte("squatter")); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	s = startServer(t, cfg, clock.NewFake(time.Now()), nil)
	defer s.Stop()
	if v, _, err := s.store.Get(ctx, nodeauth.NodePasswordPrefix+"node-a"); err != nil || string(v) != nodeauth.ServerNodeMarker {
		t.Errorf("node-password record = %q, %v; want the server marker", v, err)
	}
	log := readAudit(t, s)
	for _, want := range []string{`"server-node-name-taken-back"`, `"server-ip-claimed-by-agent","actor":"squatter"`} {
		if !strings.Contains(log, want) {
			t.Errorf("audit log lacks %s:\n%s", want, log)
		}
	}
}

func readAudit(t *testing.T, s *Server) string {
	t.Helper()
	b, err := os.ReadFile(s.audit.Path())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
