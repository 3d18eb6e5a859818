package e2e

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// readyCount asks every server's /readyz (the server's own etcd member must answer with a
// leader) and returns how many answered 200. TLS is not verified: the certificates change
// under the sampler.
func readyCount(servers []*kpkiServer) int {
	n := 0
	for _, s := range servers {
		c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // availability only
		resp, err := c.Get(s.SupervisorURL() + "/readyz")
		c.CloseIdleConnections()
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			n++
		}
	}
	return n
}

// etcdRestartWindow is when a server restarted its embedded member, from its log.
type etcdRestartWindow struct {
	server     string
	start, end time.Time
}

var logTimeRE = regexp.MustCompile(`time=(\S+)`)

// etcdRestarts finds the restarts of the embedded member in s's log.
func etcdRestarts(t *testing.T, s *kpkiServer) []etcdRestartWindow {
	t.Helper()
	var out []etcdRestartWindow
	for _, line := range strings.Split(s.Stderr(), "\n") {
		m := logTimeRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			continue
		}
		switch {
		case strings.Contains(line, "restarting embedded etcd with its new certificates"):
			out = append(out, etcdRestartWindow{server: s.IP, start: at})
		case strings.Contains(line, "embedded etcd restarted with its new certificates and is healthy"):
			if len(out) > 0 {
				out[len(out)-1].end = at
			}
		}
	}
	return out
}

// liveCluster starts three servers on 127.0.0.1/.2/.3 (the second and third joining the
// first), each with a metrics address, and waits for the three etcd members.
func liveCluster(t *testing.T) ([]*kpkiServer, []string) {
	t.Helper()
	ips := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	ports := haPorts(t, ips...)
	root := t.TempDir()
	dd := func(i int) string { return filepath.Join(root, fmt.Sprintf("server%d", i+1)) }
	metrics := make([]string, len(ips))
	for i, ip := range ips {
		metrics[i] = ip + ":" + strconv.Itoa(freePort(t, ip))
	}
	s1 := launch(t, serverSpec{dataDir: dd(0), ip: ips[0], ports: &ports, args: []string{"--node-name", "live-1", "--metrics-address", metrics[0]}})
	s1.WaitReady(t)
	token := haToken(t, s1)
	servers := []*kpkiServer{s1}
	for i := 1; i < 3; i++ {
		s := launch(t, serverSpec{dataDir: dd(i), ip: ips[i], ports: &ports,
			args: []string{"--node-name", fmt.Sprintf("live-%d", i+1), "--server", s1.SupervisorURL(), "--token", token, "--metrics-address", metrics[i]}})
		s.WaitReady(t)
		servers = append(servers, s)
	}
	haWaitMembers(t, s1, servers...)
	return servers, metrics
}

// sampleReady samples readyCount(servers) every 100 ms (at most 3000 times) until the
// returned function is called; it returns the samples.
func sampleReady(servers []*kpkiServer) func() []int {
	servers = slices.Clone(servers) // the caller may replace a restarted server
	stop := make(chan struct{})
	var mu sync.Mutex
	var samples []int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 3000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			n := readyCount(servers)
			mu.Lock()
			samples = append(samples, n)
			mu.Unlock()
			time.Sleep(100 * time.Millisecond)
		}
	}()
	return func() []int {
		close(stop)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return samples
	}
}

// waitAllLiveDone waits for every server to have applied rec live.
func waitAllLiveDone(t *testing.T, servers []*kpkiServer, metrics []string, rec bootstrapRecord) {
	t.Helper()
	for i, s := range servers {
		if !waitUntil(t, 3*time.Minute, func() (bool, string) { return liveDone(t, s, metrics[i], rec) }) {
			t.Fatalf("server %s did not apply the rotation live:\n%s", s.IP, s.tail(40))
		}
	}
}

// assertQuorumKept: at no sample were fewer than two of three servers ready for longer than
// a leader election takes.
func assertQuorumKept(t *testing.T, samples []int) {
	t.Helper()
	worst, run := 0, 0
	for _, n := range samples {
		if n < 2 {
			run++
			worst = max(worst, run)
		} else {
			run = 0
		}
	}
	if len(samples) < 10 {
		t.Errorf("only %d availability samples; the check proves nothing", len(samples))
	}
	if worst > 20 {
		t.Errorf("fewer than two servers answered for %d consecutive samples (~%ds): quorum was lost; samples %v", worst, worst/10, samples)
	}
	t.Logf("%d availability samples, longest run below two servers: %d", len(samples), worst)
}

// assertEtcdRestartsSerialised: each server restarted its member once, and no two restarts
// overlapped.
func assertEtcdRestartsSerialised(t *testing.T, servers []*kpkiServer) {
	t.Helper()
	var windows []etcdRestartWindow
	for _, s := range servers {
		w := etcdRestarts(t, s)
		if len(w) != 1 || w[0].end.IsZero() {
			t.Errorf("server %s: etcd restarts %+v, want exactly one that finished", s.IP, w)
		}
		windows = append(windows, w...)
	}
	for _, w := range windows {
		t.Logf("etcd restart on %s: %s - %s", w.server, w.start.Format(time.StampMilli), w.end.Format(time.StampMilli))
	}
	for i, a := range windows {
		for _, b := range windows[i+1:] {
			if a.start.Before(b.end) && b.start.Before(a.end) {
				t.Errorf("etcd restarts overlap: %s %s-%s and %s %s-%s", a.server, a.start.Format(time.StampMilli), a.end.Format(time.StampMilli),
					b.server, b.start.Format(time.StampMilli), b.end.Format(time.StampMilli))
			}
		}
	}

}

// TestLiveCARotationThreeServers: three servers on 127.0.0.1/.2/.3; a cross-signed rotation
// made on the first is applied live on all three. The etcd CAs change with it, so each server
// restarts its embedded member, one at a time under the datastore lock: at least two members
// (a quorum) answer throughout, the restart windows do not overlap, and afterwards every
// server signs agent certificates under the new client CA.
func TestLiveCARotationThreeServers(t *testing.T) {
	t.Parallel()
	servers, metrics := liveCluster(t)
	s1 := servers[0]
	pids := map[string]int{}
	for _, s := range servers {
		pids[s.IP] = s.cmd.Process.Pid
	}

	avail := sampleReady(servers)
	kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", s1.DataDir)
	assertRotateCASaved(t, rotateCA(t, s1, filepath.Join(s1.DataDir, "server", "rotate-ca")))
	rec, _ := currentRecord(t, s1)
	waitAllLiveDone(t, servers, metrics, rec)
	assertQuorumKept(t, avail())
	assertEtcdRestartsSerialised(t, servers)
	haWaitMembers(t, s1, servers...)
	agentPW := haAgentPassword(t, s1)
	for i, s := range servers {
		if s.exited() || s.cmd.Process.Pid != pids[s.IP] {
			t.Errorf("server %s did not keep running", s.IP)
		}
		if v := metricValue(t, metrics[i], "kpki_restart_required"); v != "0" {
			t.Errorf("server %s: kpki_restart_required %q, want 0", s.IP, v)
		}
		assertDiskMatchesRecord(t, s.DataDir, rec)
		assertLeavesChainToRecord(t, s, rec)
		assertServesNewCA(t, s)
		for _, f := range []string{"etcd/server-client.crt", "etcd/peer-server-client.crt", "etcd/client.crt"} {
			leaf := readCerts(t, filepath.Join(s.TLSDir(), f))[0]
			ca := "etcd/server-ca.crt"
			if strings.Contains(f, "peer") {
				ca = "etcd/peer-ca.crt"
			}
			if err := leaf.CheckSignatureFrom(readCerts(t, filepath.Join(s.TLSDir(), ca))[0]); err != nil {
				t.Errorf("%s/%s is not under the new %s: %v", s.TLSDir(), f, ca, err)
			}
		}
		r := haSignSettled(t, s, agentPW, fmt.Sprintf("live-node-%d", i+1), randomHex(16))
		haCheckSigned(t, fmt.Sprintf("kube-proxy CSR signed by %s after the live rotation", s.IP), r, filepath.Join(s.TLSDir(), "client-ca.crt"))
	}
}

// TestLiveForcedRootThreeServers: rotate-ca --force to an unrelated root (every CA new,
// the etcd CAs included) on one of three servers. Members under the old and the new etcd
// CAs cannot talk to each other, yet the cluster must neither lose quorum for longer than an
// election nor stall: every server applies the new set live, its member rejoins the
// cluster, and every server signs under the new client CA afterwards.
func TestLiveForcedRootThreeServers(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "bash")
	servers, metrics := liveCluster(t)
	s1 := servers[0]
	stage := filepath.Join(t.TempDir(), "opt-kpki")
	runGenCustomCA(t, stage)
	newRoot := readCerts(t, filepath.Join(stage, "server", "tls", "root-ca.pem"))[0]

	// s1's client certificate for its member, under the old etcd server CA.
	oldClient, err := tls.LoadX509KeyPair(filepath.Join(s1.TLSDir(), "etcd", "client.crt"), filepath.Join(s1.TLSDir(), "etcd", "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	etcdAddr := net.JoinHostPort(s1.IP, strconv.Itoa(s1.Ports.EtcdClient))
	if !etcdAcceptsClient(t, etcdAddr, oldClient) {
		t.Fatal("the member refuses its own client certificate before the rotation: the check proves nothing")
	}

	avail := sampleReady(servers)
	assertRotateCASaved(t, rotateCA(t, s1, filepath.Join(stage, "server"), "--force"))
	rec, _ := currentRecord(t, s1)
	waitAllLiveDone(t, servers, metrics, rec)
	assertQuorumKept(t, avail())
	assertTransitionOrdered(t, servers)

	// The end state: the member trusts the new root only.
	newClient, err := tls.LoadX509KeyPair(filepath.Join(s1.TLSDir(), "etcd", "client.crt"), filepath.Join(s1.TLSDir(), "etcd", "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	if !etcdAcceptsClient(t, etcdAddr, newClient) {
		t.Error("the member refuses a client certificate under the new etcd server CA")
	}
	if etcdAcceptsClient(t, etcdAddr, oldClient) {
		t.Error("after the transition the member still accepts a client certificate under the old etcd server CA")
	}

	haWaitMembers(t, s1, servers...)
	agentPW := haAgentPassword(t, s1)
	for i, s := range servers {
		if v := metricValue(t, metrics[i], "kpki_restart_required"); v != "0" {
			t.Errorf("server %s: kpki_restart_required %q, want 0", s.IP, v)
		}
		if v := metricValue(t, metrics[i], "kpki_ca_rotation_disruptive"); v != "1" {
			t.Errorf("server %s: kpki_ca_rotation_disruptive %q, want 1", s.IP, v)
		}
		assertDiskMatchesRecord(t, s.DataDir, rec)
		assertLeavesChainToRecord(t, s, rec)
		for _, f := range []string{"etcd/server-client.crt", "etcd/peer-server-client.crt", "etcd/client.crt"} {
			chain := readCerts(t, filepath.Join(s.TLSDir(), f))
			if !chain[len(chain)-1].Equal(newRoot) {
				t.Errorf("%s/%s does not end with the new root", s.TLSDir(), f)
			}
		}
		if _, err := os.Stat(filepath.Join(s.TLSDir(), "etcd", "transition")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("server %s: the etcd CA transition dir is still there (%v)", s.IP, err)
		}
		r := haSignSettled(t, s, agentPW, fmt.Sprintf("forced-node-%d", i+1), randomHex(16))
		haCheckSigned(t, fmt.Sprintf("kube-proxy CSR signed by %s after the forced rotation", s.IP), r, filepath.Join(s.TLSDir(), "client-ca.crt"))
	}
}

// etcdAcceptsClient connects to an etcd client port with cert and reports whether the
// member accepted it: a refused certificate ends the connection with an alert, an
// accepted one leaves etcd waiting for the client's first bytes.
func etcdAcceptsClient(t *testing.T, addr string, cert tls.Certificate) bool {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, NextProtos: []string{"h2"}}) //nolint:gosec // the client side is what is tested
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	var ne net.Error
	return err == nil || (errors.As(err, &ne) && ne.Timeout())
}

var transitionLogRE = regexp.MustCompile(`msg="(restarting embedded etcd for the etcd CA transition|embedded etcd reached the etcd CA transition phase)".* phase=(\d)`)

// assertTransitionOrdered checks the three phases in the servers' logs: each server went
// through phases 1, 2 and 3 once; no server started phase 2 before every server had reached
// phase 1, nor phase 3 before every server had reached phase 2; no two restarts overlapped.
func assertTransitionOrdered(t *testing.T, servers []*kpkiServer) {
	t.Helper()
	type event struct {
		server string
		start  bool
		phase  int
		at     time.Time
	}
	var events []event
	reached := map[int][]time.Time{}
	for _, s := range servers {
		for _, line := range strings.Split(s.Stderr(), "\n") {
			m := transitionLogRE.FindStringSubmatch(line)
			tm := logTimeRE.FindStringSubmatch(line)
			if m == nil || tm == nil {
				continue
			}
			at, err := time.Parse(time.RFC3339Nano, tm[1])
			if err != nil {
				continue
			}
			p, _ := strconv.Atoi(m[2])
			e := event{server: s.IP, start: strings.HasPrefix(m[1], "restarting"), phase: p, at: at}
			events = append(events, e)
			if !e.start {
				reached[p] = append(reached[p], at)
			}
		}
	}
	for p := 1; p <= 3; p++ {
		if len(reached[p]) != len(servers) {
			t.Errorf("phase %d reached %d times, want once per server (%d)", p, len(reached[p]), len(servers))
		}
	}
	lastReached := func(p int) time.Time {
		var last time.Time
		for _, at := range reached[p] {
			if at.After(last) {
				last = at
			}
		}
		return last
	}
	for _, e := range events {
		if e.start && e.phase >= 2 && e.at.Before(lastReached(e.phase-1)) {
			t.Errorf("server %s started phase %d at %s, before every server had reached phase %d (%s)",
				e.server, e.phase, e.at.Format(time.StampMilli), e.phase-1, lastReached(e.phase-1).Format(time.StampMilli))
		}
	}
	// One restart at a time: between a server's start of a phase and its reaching it, no
	// other server starts one.
	var open *event
	for i := range events {
		e := &events[i]
		t.Logf("%s %s phase %d start=%v", e.at.Format(time.StampMilli), e.server, e.phase, e.start)
	}
	slices.SortFunc(events, func(a, b event) int { return a.at.Compare(b.at) })
	for i := range events {
		e := &events[i]
		switch {
		case e.start && open != nil:
			t.Errorf("server %s started phase %d while %s was in phase %d", e.server, e.phase, open.server, open.phase)
		case e.start:
			open = e
		case open != nil && open.server == e.server:
			open = nil
		}
	}
}

// TestLiveForcedRootServerKilled: the forced etcd root transition of
// TestLiveForcedRootThreeServers with the second server SIGKILLed once its member has
// trusted both roots. While it is down no other member restarts (the two left would lose
// quorum); restarted with the new token, it resumes its transition from its state on disk,
// and all three end under the new root only.
func TestLiveForcedRootServerKilled(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "bash")
	servers, metrics := liveCluster(t)
	s1, s2 := servers[0], servers[1]
	stage := filepath.Join(t.TempDir(), "opt-kpki")
	runGenCustomCA(t, stage)

	avail := sampleReady(servers)
	assertRotateCASaved(t, rotateCA(t, s1, filepath.Join(stage, "server"), "--force"))
	rec, _ := currentRecord(t, s1)
	if !waitUntil(t, 3*time.Minute, func() (bool, string) {
		return strings.Contains(s2.Stderr(), `msg="embedded etcd reached the etcd CA transition phase"`), "the second server's member has not reached phase 1"
	}) {
		t.Fatalf("server %s:\n%s", s2.IP, s2.tail(30))
	}
	s2.Kill(t)
	killedAt := time.Now()
	t.Logf("SIGKILLed %s after its member reached phase 1", s2.IP)
	restarted := launch(t, serverSpec{dataDir: s2.DataDir, ip: s2.IP, ports: &s2.Ports,
		args: []string{"--node-name", "live-2", "--server", s1.SupervisorURL(), "--token", readTokenFile(t, s2.DataDir, "token"), "--metrics-address", metrics[1]}})
	restarted.WaitReady(t)
	t.Logf("%s restarted after %s", s2.IP, time.Since(killedAt).Round(time.Millisecond))
	servers[1] = restarted
	waitAllLiveDone(t, servers, metrics, rec)
	assertQuorumKept(t, avail())

	haWaitMembers(t, s1, servers...)
	agentPW := haAgentPassword(t, s1)
	for i, s := range servers {
		assertDiskMatchesRecord(t, s.DataDir, rec)
		assertLeavesChainToRecord(t, s, rec)
		if _, err := os.Stat(filepath.Join(s.TLSDir(), "etcd", "transition")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("server %s: the etcd CA transition dir is still there (%v)", s.IP, err)
		}
		r := haSignSettled(t, s, agentPW, fmt.Sprintf("killed-node-%d", i+1), randomHex(16))
		haCheckSigned(t, fmt.Sprintf("kube-proxy CSR signed by %s after the forced rotation", s.IP), r, filepath.Join(s.TLSDir(), "client-ca.crt"))
	}
}

// TestLiveCARotationWithServerDown: a cross-signed rotation made while one of three
// servers is down. The other two apply the new files but do not restart their members,
// which would leave the cluster without quorum, until the third is back; then all three
// finish, and the two kept answering throughout.
func TestLiveCARotationWithServerDown(t *testing.T) {
	t.Parallel()
	servers, metrics := liveCluster(t)
	s1, s3 := servers[0], servers[2]
	s3.Kill(t)
	up := servers[:2]
	avail := sampleReady(up)

	kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", s1.DataDir)
	assertRotateCASaved(t, rotateCA(t, s1, filepath.Join(s1.DataDir, "server", "rotate-ca")))
	rec, _ := currentRecord(t, s1)
	const waiting = "waiting for the other etcd members before restarting this one"
	if !waitUntil(t, 3*time.Minute, func() (bool, string) {
		for _, s := range up {
			if strings.Contains(s.Stderr(), waiting) {
				return true, ""
			}
		}
		return false, "no server waits for the missing member"
	}) {
		t.Fatalf("%s\n%s", up[0].tail(20), up[1].tail(20))
	}
	for _, s := range up {
		if w := etcdRestarts(t, s); len(w) > 0 {
			t.Errorf("server %s restarted its member while another was down: %+v", s.IP, w)
		}
	}

	restarted := launch(t, serverSpec{dataDir: s3.DataDir, ip: s3.IP, ports: &s3.Ports,
		args: []string{"--node-name", "live-3", "--server", s1.SupervisorURL(), "--token", readTokenFile(t, s3.DataDir, "token"), "--metrics-address", metrics[2]}})
	restarted.WaitReady(t)
	servers[2] = restarted
	waitAllLiveDone(t, up, metrics[:2], rec)
	assertQuorumKept(t, avail())
	assertDiskMatchesRecord(t, restarted.DataDir, rec)
	haWaitMembers(t, s1, servers...)
	agentPW := haAgentPassword(t, s1)
	for i, s := range servers {
		assertLeavesChainToRecord(t, s, rec)
		r := haSignSettled(t, s, agentPW, fmt.Sprintf("down-node-%d", i+1), randomHex(16))
		haCheckSigned(t, fmt.Sprintf("kube-proxy CSR signed by %s after the rotation", s.IP), r, filepath.Join(s.TLSDir(), "client-ca.crt"))
	}
}
