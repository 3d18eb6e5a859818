package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/kpki/kpki/internal/load"
)

// StormIPs are the addresses of the three servers of a storm.
var StormIPs = []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}

// StormOptions of a storm run.
type StormOptions struct {
	Kpki string
	Dir  string
	// Agents are the storm sizes, each run against a new cluster.
	Agents      []int
	Concurrency int
	// Kill kills the first server when a third of the agents have joined.
	Kill       bool
	ServerArgs []string
}

// StormResult is one storm and what the cluster held after it.
type StormResult struct {
	Report *load.StormReport
	// Killed is the server killed during the storm, "" when none was.
	Killed string
	// KilledAt is the number of agents joined when it was killed.
	KilledAt int
	// RSSBefore and RSSAfter are the survivors' resident set sizes (kB) before and after.
	RSSBefore, RSSAfter map[string]int64
	// DBBefore and DBAfter are the sizes in use (bytes) of the survivors' etcd databases.
	DBBefore, DBAfter map[string]int64
}

// Cluster is three kpki servers on StormIPs with embedded etcd.
type Cluster struct {
	Servers []*server
}

// StartCluster forms a three-server cluster under dir and waits until every server is
// ready and a voting etcd member.
func StartCluster(ctx context.Context, dir, bin string, extra ...string) (*Cluster, error) {
	p, err := portsOn(StormIPs...)
	if err != nil {
		return nil, err
	}
	c := &Cluster{}
	for i, ip := range StormIPs {
		var join *server
		if i > 0 {
			join = c.Servers[0]
		}
		s, err := startServer(ctx, dir, bin, ip, fmt.Sprintf("storm-%d", i+1), p, join, extra...)
		if err != nil {
			c.Stop()
			return nil, err
		}
		c.Servers = append(c.Servers, s)
	}
	if err := c.waitMembers(ctx, 120*time.Second); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// Stop stops every server still running.
func (c *Cluster) Stop() {
	var wg sync.WaitGroup
	for _, s := range c.Servers {
		wg.Go(s.stop)
	}
	wg.Wait()
}

// URLs are the servers' supervisor URLs.
func (c *Cluster) URLs() []string {
	var out []string
	for _, s := range c.Servers {
		out = append(out, s.url())
	}
	return out
}

// AgentToken is the cluster's agent token.
func (c *Cluster) AgentToken() (string, error) { return c.Servers[0].agentToken() }

// etcdClient connects to the etcd member of s with its etcd client certificate.
func etcdClient(s *server) (*clientv3.Client, error) {
	dir := filepath.Join(s.dataDir, "server", "tls", "etcd")
	caPEM, err := os.ReadFile(filepath.Join(dir, "server-ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))
	if err != nil {
		return nil, err
	}
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{"https://" + net.JoinHostPort(s.ip, strconv.Itoa(s.ports.etcdClient))},
		DialTimeout: 5 * time.Second,
		TLS:         &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		Logger:      zap.NewNop(),
	})
}

// waitMembers waits until the etcd cluster lists every server as a started voting member.
func (c *Cluster) waitMembers(ctx context.Context, timeout time.Duration) error {
	cli, err := etcdClient(c.Servers[0])
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := cli.MemberList(cctx)
		cancel()
		if err == nil {
			voting := 0
			for _, m := range resp.Members {
				if m.Name != "" && !m.IsLearner && len(m.ClientURLs) > 0 {
					voting++
				}
			}
			if voting == len(c.Servers) {
				return nil
			}
			last = fmt.Sprintf("%d of %d members voting", voting, len(c.Servers))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("the etcd cluster did not reach %d voting members in %v: %s", len(c.Servers), timeout, last)
}

// dbInUse is the logical size of the etcd database of s's member (what bbolt holds
// in use, not the file it preallocated).
func dbInUse(ctx context.Context, s *server) (int64, error) {
	cli, err := etcdClient(s)
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := cli.Status(cctx, cli.Endpoints()[0])
	if err != nil {
		return 0, err
	}
	return st.DbSizeInUse, nil
}

// measure reads RSS and database size of every running server.
func (c *Cluster) measure(ctx context.Context) (rss, db map[string]int64) {
	rss, db = map[string]int64{}, map[string]int64{}
	for _, s := range c.Servers {
		if s.exited() {
			continue
		}
		if v, err := rssKB(s.pid()); err == nil {
			rss[s.ip] = v
		}
		if v, err := dbInUse(ctx, s); err == nil {
			db[s.ip] = v
		}
	}
	return rss, db
}

// RunStorm runs one storm of agents against c, killing c's first server when a third of
// them have joined when kill is set.
func RunStorm(ctx context.Context, c *Cluster, agents, concurrency int, kill bool, progress io.Writer) (*StormResult, error) {
	tok, err := c.AgentToken()
	if err != nil {
		return nil, err
	}
	res := &StormResult{}
	victim := c.Servers[0]
	var once sync.Once
	killed := make(chan struct{})
	cfg := load.StormConfig{Servers: c.URLs(), Token: tok, Agents: agents, Concurrency: concurrency, Duration: load.MaxDuration}
	if kill {
		cfg.OnJoined = func(n int) {
			if n >= agents/3 {
				once.Do(func() {
					res.Killed, res.KilledAt = victim.url(), n
					// Kill before measuring: the survivors are what is measured after.
					go func() {
						victim.kill()
						fmt.Fprintf(progress, "kpki-bench: killed %s (pid %d) at %d joined agents\n", victim.url(), victim.pid(), n)
						close(killed)
					}()
				})
			}
		}
	}
	res.RSSBefore, res.DBBefore = c.measure(ctx)
	if kill {
		delete(res.RSSBefore, victim.ip)
		delete(res.DBBefore, victim.ip)
	}
	rep, err := load.Storm(ctx, cfg, progress)
	if err != nil {
		return nil, err
	}
	if kill && res.Killed != "" {
		<-killed
	}
	res.Report = rep
	res.RSSAfter, res.DBAfter = c.measure(ctx)
	return res, nil
}

// Storm runs a storm of each size in o.Agents against a new three-server cluster, and
// writes every report, then the curve and the cost per joined node.
func Storm(ctx context.Context, o StormOptions, out, progress io.Writer) ([]*StormResult, error) {
	if len(o.Agents) == 0 {
		return nil, fmt.Errorf("no storm size")
	}
	dir := o.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "kpki-storm-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	var results []*StormResult
	failed := 0
	for i, n := range o.Agents {
		cdir := filepath.Join(dir, fmt.Sprintf("storm-%d-%d", i+1, n))
		if err := os.MkdirAll(cdir, 0o700); err != nil {
			return nil, err
		}
		fmt.Fprintf(progress, "kpki-bench: starting 3 servers on %s for %d agents\n", strings.Join(StormIPs, ", "), n)
		c, err := StartCluster(ctx, cdir, o.Kpki, o.ServerArgs...)
		if err != nil {
			return nil, err
		}
		res, err := RunStorm(ctx, c, n, o.Concurrency, o.Kill, progress)
		c.Stop()
		if err != nil {
			return nil, err
		}
		if err := res.Report.WriteText(out); err != nil {
			return nil, err
		}
		if res.Killed != "" {
			fmt.Fprintf(out, "  %s killed at %d joined agents\n", res.Killed, res.KilledAt)
		}
		fmt.Fprintln(out)
		results = append(results, res)
		failed += res.Report.Failed
	}
	writeCurve(out, results)
	if failed > 0 {
		return results, fmt.Errorf("%d joins failed", failed)
	}
	return results, nil
}

// writeCurve prints each storm's totals and the cost per joined node.
func writeCurve(out io.Writer, results []*StormResult) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "agents\tjoined\tfailed\ttotal s\tjoins/s\tms per join\tp50 ms\tp99 ms\tRSS MiB after\tRSS KiB/node\tdb MiB in use\tdb KiB/node\t")
	for _, r := range results {
		rep := r.Report
		var rss0, rss1, db0, db1 int64
		n := 0
		for ip, v := range r.RSSAfter {
			if b, ok := r.RSSBefore[ip]; ok {
				rss0, rss1, db0, db1 = rss0+b, rss1+v, db0+r.DBBefore[ip], db1+r.DBAfter[ip]
				n++
			}
		}
		perNode := func(before, after int64, unit float64) string {
			if n == 0 || rep.Joined == 0 {
				return "-"
			}
			return strconv.FormatFloat(float64(after-before)/float64(n)/float64(rep.Joined)/unit, 'f', 2, 64)
		}
		avg := func(v int64, unit float64) string {
			if n == 0 {
				return "-"
			}
			return strconv.FormatFloat(float64(v)/float64(n)/unit, 'f', 1, 64)
		}
		msPer := 0.0
		if rep.Joined > 0 {
			msPer = rep.ElapsedSeconds * 1000 / float64(rep.Joined)
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%.1f\t%.1f\t%.2f\t%.0f\t%.0f\t%s\t%s\t%s\t%s\t\n", rep.Agents, rep.Joined, rep.Failed, rep.ElapsedSeconds,
			rep.JoinsPerSecond, msPer, rep.Latency.P50, rep.Latency.P99, avg(rss1, 1024), perNode(rss0, rss1, 1), avg(db1, 1<<20), perNode(db0, db1, 1024))
	}
	tw.Flush()
	fmt.Fprintln(out, "RSS and db are per surviving server (mean of the survivors); per node is the growth over the storm divided by the agents joined.")
}
