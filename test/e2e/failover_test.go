package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

const (
	// noQuorumError is the error a server without etcd quorum answers.
	noQuorumError = "datastore unavailable (no quorum)"
	// failoverAgentTimeout bounds one `kpki agent --once` process of these tests.
	failoverAgentTimeout = 90 * time.Second
)

// failoverCluster is three kpki servers on embedded etcd at 127.0.0.1/.2/.3.
type failoverCluster struct {
	servers    []*kpkiServer
	agentToken string
}

// startFailoverCluster forms the cluster the way TestHAThreeServers does and waits until
// all three are ready voting etcd members.
func startFailoverCluster(t *testing.T, prefix string) *failoverCluster {
	t.Helper()
	ips := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	ports := haPorts(t, ips...)
	root := t.TempDir()
	dd := func(i int) string { return filepath.Join(root, fmt.Sprintf("server%d", i+1)) }
	s1 := launch(t, serverSpec{dataDir: dd(0), ip: ips[0], ports: &ports, args: []string{"--node-name", prefix + "-1"}})
	s1.WaitReady(t)
	token := haToken(t, s1)
	s2 := haJoin(t, s1, ips[1], prefix+"-2", ports, dd(1), token)
	s2.WaitReady(t)
	s3 := haJoin(t, s1, ips[2], prefix+"-3", ports, dd(2), token)
	s3.WaitReady(t)
	haWaitMembers(t, s1, s1, s2, s3)
	return &failoverCluster{servers: []*kpkiServer{s1, s2, s3}, agentToken: agentToken(t, s1)}
}

// etcdStatus asks the embedded etcd member of s for its member id and the leader it follows.
func etcdStatus(t *testing.T, s *kpkiServer) (member, leader uint64, err error) {
	t.Helper()
	etcdDir := filepath.Join(s.TLSDir(), "etcd")
	endpoint := "https://" + net.JoinHostPort(s.IP, strconv.Itoa(s.Ports.EtcdClient))
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		TLS:         tlsFromFiles(t, filepath.Join(etcdDir, "server-ca.crt"), filepath.Join(etcdDir, "client.crt"), filepath.Join(etcdDir, "client.key")),
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return 0, 0, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := cli.Status(ctx, endpoint)
	if err != nil {
		return 0, 0, err
	}
	return st.Header.MemberId, st.Leader, nil
}

// etcdLeader returns the index of the server whose etcd member leads, once every server
// names the same leader (within 30 s).
func etcdLeader(t *testing.T, servers []*kpkiServer) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for {
		leader, agree, lead := uint64(0), true, -1
		for i, s := range servers {
			member, l, err := etcdStatus(t, s)
			if err != nil {
				agree, last = false, err.Error()
				break
			}
			if leader == 0 {
				leader = l
			}
			if l == 0 || l != leader {
				agree, last = false, fmt.Sprintf("server %d follows %x, another %x", i+1, l, leader)
			}
			if member == l {
				lead = i
			}
		}
		if agree && lead >= 0 {
			return lead
		}
		if time.Now().After(deadline) {
			t.Fatalf("the servers did not agree on an etcd leader within 30 s; last: %s", last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// agentRun is the outcome of one `kpki agent --once` process.
type agentRun struct {
	args       []string
	code       int
	stderr     string
	start, end time.Time
	elapsed    time.Duration
	err        error // the process could not be run or did not end within failoverAgentTimeout
}

func (r agentRun) String() string {
	return fmt.Sprintf("kpki %s: exit code %d after %s (%v)\n--- stderr:\n%s",
		strings.Join(quoteArgs(redactToken(r.args)), " "), r.code, r.elapsed.Round(time.Millisecond), r.err, r.stderr)
}

// runAgentProc runs `kpki agent --once` with args; safe to call from any goroutine.
func runAgentProc(bin string, args ...string) agentRun {
	args = append([]string{"agent"}, append(slices.Clone(args), "--once")...)
	ctx, cancel := context.WithTimeout(context.Background(), failoverAgentTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = cleanEnv(nil)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	r := agentRun{args: args, stderr: stderr.String(), start: start, end: time.Now(), elapsed: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		r.err, r.code = fmt.Errorf("still running after %s", failoverAgentTimeout), -1
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		r.err, r.code = err, -1
	}
	return r
}

// checkJoined verifies the four leaves of a joined agent data dir against the cluster
// CAs of s: key matches, signed for its usage, the kubelet serving certificate names the
// node and its IP. It returns the problems found.
func checkJoined(t *testing.T, s *kpkiServer, dd, node, ip string) []string {
	t.Helper()
	var problems []string
	pool := func(name string) *x509.CertPool {
		p := x509.NewCertPool()
		for _, c := range readCerts(t, filepath.Join(s.TLSDir(), name)) {
			p.AddCert(c)
		}
		return p
	}
	clientCA, serverCA := pool("client-ca.crt"), pool("server-ca.crt")
	for _, l := range agentLeafFiles {
		crt, key := filepath.Join(dd, "agent", l.name+".crt"), filepath.Join(dd, "agent", l.name+".key")
		list := readCerts(t, crt)
		keys := readKeys(t, key)
		if len(keys) != 1 || !keyMatches(list[0].PublicKey, keys[0].signer) {
			problems = append(problems, l.name+": the key does not match the certificate")
		}
		roots, usage := clientCA, x509.ExtKeyUsageClientAuth
		if l.name == "serving-kubelet" {
			roots, usage = serverCA, x509.ExtKeyUsageServerAuth
		}
		if _, err := list[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			problems = append(problems, fmt.Sprintf("%s: does not verify against the cluster CA: %v", l.name, err))
		}
	}
	serving := readCerts(t, filepath.Join(dd, "agent", "serving-kubelet.crt"))[0]
	var ips []string
	for _, a := range serving.IPAddresses {
		ips = append(ips, a.String())
	}
	if !slices.Contains(serving.DNSNames, node) || !slices.Contains(ips, ip) {
		problems = append(problems, fmt.Sprintf("serving-kubelet SANs %v %v lack %s / %s", serving.DNSNames, ips, node, ip))
	}
	return problems
}

// TestFailoverLeaderKilled kills -9 the server whose etcd member leads and at once joins
// an agent through each survivor. The agents may not retry (--retry-deadline 0): the
// survivors must ride out the leader election themselves and answer every request.
func TestFailoverLeaderKilled(t *testing.T) {
	t.Parallel()
	c := startFailoverCluster(t, "fo-leader")
	lead := etcdLeader(t, c.servers)
	var survivors []*kpkiServer
	for i, s := range c.servers {
		if i != lead {
			survivors = append(survivors, s)
		}
	}
	bin := binary(t)
	dds := []string{filepath.Join(t.TempDir(), "agent1"), filepath.Join(t.TempDir(), "agent2")}
	nodes := []string{agentNodeName, "fo-leader-node-2"}
	ips := []string{"127.0.0.21", "127.0.0.22"}

	c.servers[lead].Kill(t)
	t.Logf("killed server %d (%s), the etcd leader", lead+1, c.servers[lead].SupervisorURL())
	runs := make([]agentRun, len(survivors))
	var wg sync.WaitGroup
	for i, s := range survivors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runs[i] = runAgentProc(bin, "--server", s.SupervisorURL(), "--token", c.agentToken, "--data-dir", dds[i],
				"--node-name", nodes[i], "--node-ip", ips[i], "--api-server-port", strconv.Itoa(s.Ports.APIServer), "--retry-deadline", "0")
		}()
	}
	wg.Wait()
	for i, r := range runs {
		if r.err != nil || r.code != 0 {
			t.Fatalf("agent through survivor %s right after the leader was killed failed:\n%s\nserver stderr tail:\n%s",
				survivors[i].SupervisorURL(), r, survivors[i].tail(30))
		}
		t.Logf("agent through %s joined in %s", survivors[i].SupervisorURL(), r.elapsed.Round(time.Millisecond))
		if strings.Contains(r.stderr, "retrying") {
			t.Errorf("the agent retried although it was told not to:\n%s", r.stderr)
		}
	}
	assertAgentFiles(t, survivors[0], dds[0], ips[0])
	if p := checkJoined(t, survivors[1], dds[1], nodes[1], ips[1]); len(p) > 0 {
		t.Errorf("agent through %s: %s", survivors[1].SupervisorURL(), strings.Join(p, "; "))
	}
	for _, s := range survivors {
		if strings.Contains(s.Stderr(), "status=500") || strings.Contains(s.Stderr(), "status=503") {
			t.Errorf("survivor %s answered an error during the election:\n%s", s.SupervisorURL(), s.tail(30))
		}
	}
}

// TestFailoverNoQuorum kills two of three servers: the survivor answers the signing
// endpoint with 503 "datastore unavailable (no quorum)" within seconds, its /readyz says
// not ready, and an agent against it fails with that message within its retry deadline.
func TestFailoverNoQuorum(t *testing.T) {
	t.Parallel()
	c := startFailoverCluster(t, "fo-quorum")
	lead := etcdLeader(t, c.servers)
	survivor := c.servers[(lead+1)%3]
	for i, s := range c.servers {
		if s != survivor {
			s.Kill(t)
			t.Logf("killed server %d (%s)", i+1, s.SupervisorURL())
		}
	}
	agentPW := haAgentPassword(t, c.servers[0])
	sign := func(node string) (supReply, time.Duration) {
		start := time.Now()
		r := supRequest(t, survivor, http.MethodPost, "/v1-kpki/client-kube-proxy.crt", "node", agentPW,
			map[string]string{"Kpki-Node-Name": node, "Kpki-Node-Password": randomHex(16)}, ecCSR(t))
		return r, time.Since(start)
	}

	r, took := sign("fo-quorum-raw-1")
	if msg := assertJSONError(t, survivor, r, http.StatusServiceUnavailable); msg != noQuorumError {
		t.Errorf("signing right after losing quorum: error %q, want %q", msg, noQuorumError)
	}
	t.Logf("first signing request without quorum answered %d in %s", r.code, took.Round(time.Millisecond))
	if took > 15*time.Second {
		t.Errorf("the first signing request without quorum took %s, want a few seconds", took)
	}

	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body, err := survivor.get("/readyz")
		if err == nil && code == http.StatusServiceUnavailable && strings.Contains(string(body), noQuorumError) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz without quorum: %d %q (%v), want 503 naming %q", code, body, err, noQuorumError)
		}
		time.Sleep(200 * time.Millisecond)
	}

	r, took = sign("fo-quorum-raw-2")
	if msg := assertJSONError(t, survivor, r, http.StatusServiceUnavailable); msg != noQuorumError {
		t.Errorf("signing without quorum: error %q, want %q", msg, noQuorumError)
	}
	if took > 8*time.Second {
		t.Errorf("a signing request to a server known to be without quorum took %s, want a few seconds", took)
	}

	dd := filepath.Join(t.TempDir(), "agent")
	ar := runAgentProc(binary(t), "--server", survivor.SupervisorURL(), "--token", c.agentToken, "--data-dir", dd,
		"--node-name", "fo-quorum-agent", "--retry-deadline", "15s")
	if ar.err != nil {
		t.Fatalf("%s", ar)
	}
	t.Logf("agent without quorum: exit %d after %s", ar.code, ar.elapsed.Round(time.Millisecond))
	line := assertFailure(t, ar.code, ar.stderr, noQuorumError, survivor.SupervisorURL())
	t.Logf("agent error: %s", line)
	if ar.elapsed > 60*time.Second {
		t.Errorf("the agent took %s to give up with a 15 s retry deadline", ar.elapsed)
	}
	for _, p := range agentLeafFiles {
		if _, err := os.Stat(filepath.Join(dd, "agent", p.name+".crt")); err == nil {
			t.Errorf("the agent without quorum wrote %s.crt", p.name)
		}
	}
}

// TestFailoverJoinStorm joins agents concurrently through two servers, each agent given
// both URLs, and kills -9 the third server (the etcd leader) in the middle of it: every
// join succeeds.
func TestFailoverJoinStorm(t *testing.T) {
	t.Parallel()
	const (
		agents      = 36
		concurrency = 6
		killAfter   = agents / 3
	)
	c := startFailoverCluster(t, "fo-storm")
	lead := etcdLeader(t, c.servers)
	victim := c.servers[lead]
	var survivors []*kpkiServer
	for i, s := range c.servers {
		if i != lead {
			survivors = append(survivors, s)
		}
	}
	bin := binary(t)
	root := t.TempDir()
	runs := make([]agentRun, agents)
	var done atomic.Int32
	var killedAt time.Time
	killed := make(chan int32, 1)
	go func() {
		for range 6000 { // polls for up to 5 min; the storm ends well before
			if n := done.Load(); n >= killAfter {
				victim.cmd.Process.Kill()
				killedAt = time.Now()
				killed <- n
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		killed <- -1
	}()
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range agents {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			a, b := survivors[i%2], survivors[(i+1)%2]
			runs[i] = runAgentProc(bin, "--server", a.SupervisorURL()+","+b.SupervisorURL(), "--token", c.agentToken,
				"--data-dir", filepath.Join(root, fmt.Sprintf("agent%02d", i)), "--node-name", fmt.Sprintf("storm-%02d", i),
				"--node-ip", fmt.Sprintf("127.0.0.%d", 10+i), "--retry-deadline", "60s")
			done.Add(1)
		}()
	}
	wg.Wait()
	atKill := <-killed
	victim.Kill(t)
	t.Logf("%d agents joined through %s and %s in %s; server %d (the etcd leader) was killed after %d had finished",
		agents, survivors[0].SupervisorURL(), survivors[1].SupervisorURL(), time.Since(start).Round(time.Millisecond), lead+1, atKill)
	if atKill < killAfter || atKill >= agents {
		t.Fatalf("the kill came after %d of %d joins, not in the middle of the storm", atKill, agents)
	}
	inFlight, during := 0, 0
	for _, r := range runs {
		if r.start.Before(killedAt) && r.end.After(killedAt) {
			inFlight++
		}
		if r.start.After(killedAt) && r.start.Before(killedAt.Add(3*time.Second)) {
			during++
		}
	}
	t.Logf("%d joins were running when the leader was killed, %d more started within 3 s of the kill", inFlight, during)
	if inFlight == 0 {
		t.Errorf("no join was running when the leader was killed")
	}
	failed := 0
	for i, r := range runs {
		if r.err != nil || r.code != 0 {
			failed++
			t.Errorf("join %d failed:\n%s", i, r)
			continue
		}
		node, ip := fmt.Sprintf("storm-%02d", i), fmt.Sprintf("127.0.0.%d", 10+i)
		if p := checkJoined(t, survivors[0], filepath.Join(root, fmt.Sprintf("agent%02d", i)), node, ip); len(p) > 0 {
			t.Errorf("join %d: %s", i, strings.Join(p, "; "))
		}
	}
	for _, s := range survivors {
		if strings.Contains(s.Stderr(), "status=500") {
			t.Errorf("survivor %s answered 500 during the storm", s.SupervisorURL())
			failed++
		}
	}
	if failed > 0 {
		for _, s := range survivors {
			t.Logf("survivor %s stderr tail:\n%s", s.SupervisorURL(), s.tail(40))
		}
	}
}
