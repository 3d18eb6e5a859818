package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kpki/kpki/internal/load"
)

// stormAgents is the size of the CI storm; make storm runs the large ones.
const stormAgents = 200

// TestStormThroughServerLoss joins stormAgents whole agents (pinned /cacerts, the CA
// bundles, the four agent certificates, each agent with its own keys and node password)
// against three servers on 127.0.0.1/.2/.3 and kills the first server with SIGKILL when a
// third of them have joined. Every join must succeed, agents that started with the
// killed server must have failed over to the survivors, every agent must be registered
// in etcd, and every certificate an agent received must be in an audit log.
func TestStormThroughServerLoss(t *testing.T) {
	t.Parallel()
	start := time.Now()
	c := startFailoverCluster(t, "storm")
	victim := c.servers[0]
	var once sync.Once
	killedAt := 0
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var urls []string
	for _, s := range c.servers {
		urls = append(urls, s.SupervisorURL())
	}
	stormStart := time.Now()
	rep, err := load.Storm(ctx, load.StormConfig{
		Servers: urls, Token: c.agentToken, Agents: stormAgents, Concurrency: 32, Duration: 90 * time.Second,
		NamePrefix: "storm",
		OnJoined: func(n int) {
			if n >= stormAgents/3 {
				once.Do(func() {
					killedAt = n
					_ = victim.cmd.Process.Kill()
				})
			}
		},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stormTime := time.Since(stormStart)
	select {
	case <-victim.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the killed server did not exit")
	}
	t.Logf("storm: %d joined, %d failed in %v (%.1f joins/s, p50 %.0f ms, p99 %.0f ms); %s killed at %d; retries %v; finished on %v; cluster start + storm %v",
		rep.Joined, rep.Failed, stormTime.Round(time.Millisecond), rep.JoinsPerSecond, rep.Latency.P50, rep.Latency.P99,
		victim.SupervisorURL(), killedAt, rep.Retries, rep.JoinedVia, time.Since(start).Round(time.Second))
	if rep.Failed != 0 || rep.Joined != stormAgents || rep.Certificates != 4*stormAgents {
		t.Fatalf("joined %d of %d agents (%d certificates), failed %d: %v %v", rep.Joined, stormAgents, rep.Certificates, rep.Failed, rep.Failures, rep.FirstFailures)
	}
	if killedAt == 0 {
		t.Fatal("no server was killed")
	}
	if rep.Retries["transport"] == 0 {
		t.Error("no agent failed over from the killed server")
	}
	for _, s := range c.servers[1:] {
		if rep.JoinedVia["https://"+net.JoinHostPort(s.IP, strconv.Itoa(s.Ports.Supervisor))] == 0 {
			t.Errorf("no join finished on survivor %s", s.SupervisorURL())
		}
	}

	// Every agent is registered, durably, in the cluster's datastore.
	s := c.servers[1]
	etcdDir := filepath.Join(s.TLSDir(), "etcd")
	cli := etcdClient(t, "https://"+net.JoinHostPort(s.IP, strconv.Itoa(s.Ports.EtcdClient)),
		tlsFromFiles(t, filepath.Join(etcdDir, "server-ca.crt"), filepath.Join(etcdDir, "client.crt"), filepath.Join(etcdDir, "client.key")))
	prefix := "/kpki/node-passwords/storm-" + rep.RunID + "-"
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != stormAgents {
		t.Errorf("%d node-password records under %s, want %d", resp.Count, prefix, stormAgents)
	}

	// Every certificate an agent holds was audited before it was answered: each agent's
	// four certificates are in the audit logs of the three servers.
	issued := map[string]int{}
	for _, srv := range c.servers {
		f, err := os.Open(filepath.Join(srv.DataDir, "server", "audit.log"))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var e struct{ Action, Actor, File string }
			if json.Unmarshal(sc.Bytes(), &e) == nil && e.Action == "issue" && strings.HasPrefix(e.Actor, "storm-"+rep.RunID+"-") {
				issued[e.Actor+" "+e.File]++
			}
		}
		f.Close()
	}
	if len(issued) != 4*stormAgents {
		t.Errorf("the audit logs name %d distinct agent certificates of this storm, want %d", len(issued), 4*stormAgents)
	}
	if d := time.Since(start); d > 60*time.Second {
		t.Errorf("cluster start and storm took %v, want under 60 s", d)
	}
}
