package e2e

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
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

// TestLiveCARotationThreeServers: three servers on 127.0.0.1/.2/.3; a cross-signed rotation
// made on the first is applied live on all three. The etcd CAs change with it, so each server
// restarts its embedded member, one at a time under the datastore lock: at least two members
// (a quorum) answer throughout, the restart windows do not overlap, and afterwards every
// server signs agent certificates under the new client CA.
func TestLiveCARotationThreeServers(t *testing.T) {
	t.Parallel()
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
	pids := map[string]int{}
	for _, s := range servers {
		pids[s.IP] = s.cmd.Process.Pid
	}

	// Sample the cluster's availability while the rotation is applied.
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

	kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", s1.DataDir)
	assertRotateCASaved(t, rotateCA(t, s1, filepath.Join(s1.DataDir, "server", "rotate-ca")))
	rec, _ := currentRecord(t, s1)
	for i, s := range servers {
		if !waitUntil(t, 3*time.Minute, func() (bool, string) { return liveDone(t, s, metrics[i], rec) }) {
			t.Fatalf("server %s did not apply the rotation live:\n%s", s.IP, s.tail(40))
		}
	}
	close(stop)
	wg.Wait()

	// Quorum kept: at no sample were fewer than two members answering for longer than a
	// leader election takes.
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
	// Serialised: each server restarted its member once, and no two restarts overlapped.
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
	t.Logf("%d availability samples, longest run below two servers: %d", len(samples), worst)
	for i, a := range windows {
		for _, b := range windows[i+1:] {
			if a.start.Before(b.end) && b.start.Before(a.end) {
				t.Errorf("etcd restarts overlap: %s %s-%s and %s %s-%s", a.server, a.start.Format(time.StampMilli), a.end.Format(time.StampMilli),
					b.server, b.start.Format(time.StampMilli), b.end.Format(time.StampMilli))
			}
		}
	}

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
