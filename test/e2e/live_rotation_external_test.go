package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Live CA rotation on servers that share an external etcd: kpki re-keys nothing of the
// datastore's own. Its CAs, its server and client certificates belong to the operator, the
// etcd process is never restarted, and kpki's client for it keeps the operator's files.

// fileIdentity is hashTree of dir (type, mode, content hash) with each entry's inode and
// modification time: a file rewritten with the same bytes (an atomic replace) differs too.
func fileIdentity(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := hashTree(t, dir)
	for rel, id := range out {
		info, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(rel)))
		if err != nil {
			t.Fatal(err)
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			t.Fatalf("%s: no inode", rel)
		}
		out[rel] = fmt.Sprintf("%s inode %d mtime %d", id, st.Ino, info.ModTime().UnixNano())
	}
	return out
}

// etcdSampler reads the bootstrap keys from the external etcd with the etcd's own client
// certificate every 20ms, until stopped, and keeps when each read was answered.
type etcdSampler struct {
	stopCh   chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	answered []time.Time
	failed   int
	firstErr error
}

// sampleEtcd starts sampling e and returns once the first read was answered.
func sampleEtcd(t *testing.T, e *etcdProc) *etcdSampler {
	t.Helper()
	cli := e.Client(t)
	sm := &etcdSampler{stopCh: make(chan struct{})}
	sm.wg.Add(1)
	go func() {
		defer sm.wg.Done()
		for i := 0; i < 15000; i++ {
			select {
			case <-sm.stopCh:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := cli.Get(ctx, "/bootstrap/", clientv3.WithPrefix(), clientv3.WithCountOnly())
			cancel()
			sm.mu.Lock()
			if err == nil {
				sm.answered = append(sm.answered, time.Now())
			} else {
				sm.failed++
				if sm.firstErr == nil {
					sm.firstErr = err
				}
			}
			sm.mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	if !waitUntil(t, 30*time.Second, func() (bool, string) {
		sm.mu.Lock()
		defer sm.mu.Unlock()
		return len(sm.answered) > 0, fmt.Sprintf("no read of the external etcd answered (%d failed: %v)", sm.failed, sm.firstErr)
	}) {
		t.Fatal("the external etcd does not answer its own client certificate")
	}
	return sm
}

// etcdMaxGap is the longest time without an answered read that still counts as serving
// throughout (a read on this loaded machine may take a while; a restart takes longer).
const etcdMaxGap = 2 * time.Second

// stop ends the sampling and checks that every read was answered and that answers came
// from before the change was made until after the last server finished applying it, never
// more than etcdMaxGap apart.
func (sm *etcdSampler) stop(t *testing.T, what string, made, applied time.Time) {
	t.Helper()
	close(sm.stopCh)
	sm.wg.Wait()
	if sm.failed > 0 {
		t.Errorf("%s: %d reads of the external etcd failed (first: %v)", what, sm.failed, sm.firstErr)
	}
	if len(sm.answered) == 0 {
		t.Errorf("%s: no read of the external etcd was answered", what)
		return
	}
	first, last := sm.answered[0], sm.answered[len(sm.answered)-1]
	if !first.Before(made) || !last.After(applied) {
		t.Errorf("%s: reads answered from %s to %s do not cover the change (made %s, applied by %s)", what,
			first.Format(time.StampMilli), last.Format(time.StampMilli), made.Format(time.StampMilli), applied.Format(time.StampMilli))
	}
	var gap time.Duration
	for i := 1; i < len(sm.answered); i++ {
		gap = max(gap, sm.answered[i].Sub(sm.answered[i-1]))
	}
	t.Logf("%s: %d reads of the external etcd answered, longest gap %s", what, len(sm.answered), gap)
	if gap > etcdMaxGap {
		t.Errorf("%s: the external etcd answered no read for %s", what, gap)
	}
}

// externalCurrentRecord decrypts the bootstrap record of s's token password from the external
// etcd and returns it with its revision.
func externalCurrentRecord(t *testing.T, e *etcdProc, s *kpkiServer) (bootstrapRecord, int64) {
	t.Helper()
	pass := passphrase(readTokenFile(t, s.DataDir, "token"))
	key := bootstrapKey(pass)
	snap := snapshotPrefix(t, e.Client(t), "/bootstrap/")
	v, ok := snap[key]
	if !ok {
		t.Fatalf("the external etcd has no %s (the key of the password in %s/server/token); bootstrap keys: %v", key, s.DataDir, keyNames(snap))
	}
	return decodeRecord(t, pass, v.value), v.modRevision
}

// extLive is a pair of servers on one external etcd, with what must not change under them.
type extLive struct {
	e *etcdProc
	// etcdFiles is fileIdentity of the etcd's own PKI directory (its CA, server and client
	// certificates and keys, the client ones given to kpki).
	etcdFiles map[string]string
	servers   []*kpkiServer
	metrics   []string
}

// phase is what one change of the record (a rotation or a rollback) is expected to be.
type phase struct {
	what string
	// disruptive: the set breaks continuity (only the service-account signing key may;
	// never a CA).
	disruptive bool
}

// apply waits until both servers have applied the record now in the external etcd live and
// returns it with the time of the last server's apply, from its log. okBefore are the
// servers' counts of successful live applies before the change.
func (x *extLive) apply(t *testing.T, p phase, okBefore []int) (bootstrapRecord, time.Time) {
	t.Helper()
	rec, rev := externalCurrentRecord(t, x.e, x.servers[0])
	var applied time.Time
	for i, s := range x.servers {
		waitAppliedRevision(t, s, rec, rev)
		if !waitUntil(t, 30*time.Second, func() (bool, string) {
			n, _ := strconv.Atoi(metricValue(t, x.metrics[i], liveApplyOK))
			return n > okBefore[i], fmt.Sprintf("%s: %s counts %d successful live applies, as before", s.IP, liveApplyOK, n)
		}) {
			t.Fatalf("%s: server %s did not count the live apply:\n%s", p.what, s.IP, s.tail(30))
		}
		if at := x.assertAppliedWithoutRestart(t, p, s, rev); at.After(applied) {
			applied = at
		}
	}
	return rec, applied
}

// okCounts are the servers' counts of successful live applies.
func (x *extLive) okCounts(t *testing.T) []int {
	t.Helper()
	out := make([]int, len(x.servers))
	for i, m := range x.metrics {
		out[i], _ = strconv.Atoi(metricValue(t, m, liveApplyOK))
	}
	return out
}

// assertAppliedWithoutRestart checks s's log: its apply of revision rev is reported as p
// expects, restarted no etcd and broke no CA, and no line says an etcd restart started or
// that kpki must be restarted. It returns the time of the apply's line.
func (x *extLive) assertAppliedWithoutRestart(t *testing.T, p phase, s *kpkiServer, rev int64) time.Time {
	t.Helper()
	log := s.Stderr()
	msg := "applied the new bootstrap data live; no restart needed"
	if p.disruptive {
		msg = "applied a new CA set that breaks continuity"
	}
	var at time.Time
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, fmt.Sprintf("revision=%d ", rev)) || !strings.Contains(line, "msg=\"applied ") {
			continue
		}
		if !strings.Contains(line, msg) {
			t.Errorf("%s: server %s's apply is not reported as %q: %s", p.what, s.IP, msg, line)
		}
		if !strings.Contains(line, "etcd-restarted=false") {
			t.Errorf("%s: server %s's apply does not say etcd-restarted=false: %s", p.what, s.IP, line)
		}
		if p.disruptive && !strings.Contains(line, "broken=[]") {
			t.Errorf("%s: server %s's apply breaks a CA: %s", p.what, s.IP, line)
		}
		if m := logTimeRE.FindStringSubmatch(line); m != nil {
			at, _ = time.Parse(time.RFC3339Nano, m[1])
		}
	}
	if at.IsZero() {
		t.Errorf("%s: server %s logged no timed live apply of revision %d:\n%s", p.what, s.IP, rev, s.tail(30))
	}
	for _, bad := range []string{"restarting embedded etcd", "embedded etcd restarted", "etcd-restarted=true", "restart kpki to use", "etcd restart lock"} {
		if strings.Contains(log, bad) {
			t.Errorf("%s: server %s's log says %q:\n%s", p.what, s.IP, bad, s.tail(30))
		}
	}
	return at
}

// assertAfter checks both servers and the external etcd after a live apply of rec.
func (x *extLive) assertAfter(t *testing.T, p phase, rec bootstrapRecord, node string) {
	t.Helper()
	what := p.what
	// The etcd the test started is still that process (it is the test's child: had it
	// exited, done would be closed); the sampler showed it answering throughout.
	select {
	case <-x.e.done:
		t.Fatalf("%s: the external etcd (pid %d) exited", what, x.e.cmd.Process.Pid)
	default:
	}
	if d := treeDiff(x.etcdFiles, fileIdentity(t, filepath.Dir(x.e.CAFile))); len(d) > 0 {
		t.Errorf("%s: the external etcd's own certificate files changed:\n  %s", what, strings.Join(d, "\n  "))
	}
	haAssertSameFiles(t, x.servers[0], x.servers[1])
	dsCheckSingleRecord(t, x.e, haToken(t, x.servers[0]), x.servers[0])
	for i, s := range x.servers {
		if s.exited() {
			t.Errorf("%s: server %s did not keep running", what, s.IP)
		}
		disruptive := "0"
		if p.disruptive {
			disruptive = "1"
		}
		for name, want := range map[string]string{"kpki_restart_required": "0", "kpki_ca_rotation_disruptive": disruptive} {
			if v := metricValue(t, x.metrics[i], name); v != want {
				t.Errorf("%s: server %s: %s = %q, want %s", what, s.IP, name, v, want)
			}
		}
		dsCheckNoEmbeddedEtcd(t, s)
		assertDiskMatchesRecord(t, s.DataDir, rec)
		assertLeavesChainToRecord(t, s, rec)
		assertServesNewCA(t, s)
	}
	if n := readyCount(x.servers); n != len(x.servers) {
		t.Errorf("%s: %d of %d servers answer /readyz (their datastore check)", what, n, len(x.servers))
	}

	// kpki's client for the external etcd still works on both servers: a node registered
	// through one server (its password stored in the datastore) is known to the other.
	agentPW := haAgentPassword(t, x.servers[0])
	for i, s := range x.servers {
		other := x.servers[1-i]
		name, pw := fmt.Sprintf("%s-%d", node, i+1), randomHex(16)
		clientCA := filepath.Join(s.TLSDir(), "client-ca.crt")
		haCheckSigned(t, fmt.Sprintf("%s: new node %s joins through %s", what, name, s.IP), haSignSettled(t, s, agentPW, name, pw), clientCA)
		haCheckRefused(t, fmt.Sprintf("%s: node %s, wrong node password, through %s", what, name, other.IP), haSignSettled(t, other, agentPW, name, randomHex(16)))
		haCheckSigned(t, fmt.Sprintf("%s: node %s through %s", what, name, other.IP), haSignSettled(t, other, agentPW, name, pw), clientCA)
	}
}

// TestLiveCARotationExternalEtcd: two servers on 127.0.0.1 and 127.0.0.2 share a Debian etcd
// (mutual TLS, certificates of its own). cross-sign-ca and rotate-ca on the first, then
// rotate-ca --rollback on the second: each time both servers apply the record live (same
// processes, kpki_restart_required 0, no etcd restart logged), the external etcd keeps its
// process and answers every read made during the apply, the etcd's certificate files kpki was
// given are left as they were (bytes, inode, mtime), and both servers still use the datastore
// afterwards (a node joined through one is known to the other).
func TestLiveCARotationExternalEtcd(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	e := startEtcd(t, true)
	root := t.TempDir()
	x := &extLive{e: e, etcdFiles: fileIdentity(t, filepath.Dir(e.CAFile))}
	for _, ip := range []string{"127.0.0.1", "127.0.0.2"} {
		x.metrics = append(x.metrics, ip+":"+strconv.Itoa(freePort(t, ip)))
	}
	s1 := launch(t, serverSpec{dataDir: filepath.Join(root, "server1"), ip: "127.0.0.1",
		args: append([]string{"--node-name", "extlive-1", "--metrics-address", x.metrics[0]}, dsArgs(e)...)})
	s1.WaitReady(t)
	s2 := launch(t, serverSpec{dataDir: filepath.Join(root, "server2"), ip: "127.0.0.2",
		args: append([]string{"--node-name", "extlive-2", "--token", haToken(t, s1), "--metrics-address", x.metrics[1]}, dsArgs(e)...)})
	s2.WaitReady(t)
	x.servers = []*kpkiServer{s1, s2}
	orig := filesUnder(t, filepath.Join(s1.DataDir, "server"))

	// A cross-signed rotation keeps every CA and the signing key: continuous.
	rotation := phase{what: "rotate-ca on server 1"}
	kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", s1.DataDir)
	stage := filepath.Join(s1.DataDir, "server", "rotate-ca")
	rotated := filesUnder(t, stage)
	before := x.okCounts(t)
	sampler := sampleEtcd(t, e)
	made := time.Now()
	assertRotateCASaved(t, rotateCA(t, s1, stage))
	rec, applied := x.apply(t, rotation, before)
	sampler.stop(t, rotation.what, made, applied)
	assertRecordFiles(t, "the record after rotate-ca", rec, rotated)
	x.assertAfter(t, rotation, rec, "extlive-rotated")

	// The rollback keeps every CA trusted but drops the signing key the rotation added:
	// reported as disruptive for service-account tokens (docs/operations.md).
	rollback := phase{what: "rotate-ca --rollback on server 2", disruptive: true}
	before = x.okCounts(t)
	sampler = sampleEtcd(t, e)
	made = time.Now()
	rollbackCA(t, s2)
	rec, applied = x.apply(t, rollback, before)
	sampler.stop(t, rollback.what, made, applied)
	assertRecordFiles(t, "the record after the rollback", rec, orig)
	x.assertAfter(t, rollback, rec, "extlive-rolledback")
}

// TestExternalEtcdRefusesFilesKpkiWrites: a server whose --datastore-certfile and -keyfile
// name the etcd client leaf kpki issues in its own data dir (left by an earlier run on the
// embedded etcd) is refused at start, the flags named: renewals and CA rotations rewrite
// those files. Nothing is written, to the data dir or to the external etcd.
func TestExternalEtcdRefusesFilesKpkiWrites(t *testing.T) {
	t.Parallel()
	e := startEtcd(t, true)
	dd := filepath.Join(t.TempDir(), "data")
	s := startServer(t, dd)
	s.WaitReady(t)
	s.Stop(t)
	before := hashTree(t, dd)
	crt, key := filepath.Join(s.TLSDir(), "etcd", "client.crt"), filepath.Join(s.TLSDir(), "etcd", "client.key")
	code, stderr := startServerOn(t, s.Ports, dd, "--datastore-endpoint", e.Endpoint, "--datastore-cafile", e.CAFile,
		"--datastore-certfile", crt, "--datastore-keyfile", key).Wait(t, failTimeout)
	assertFailure(t, code, stderr, "--datastore-certfile "+crt, "--datastore-keyfile "+key, "kpki rewrites")
	if strings.Contains(stderr, "--datastore-cafile") {
		t.Errorf("the etcd's own CA file is refused too:\n%s", stderr)
	}
	assertTreeUnchanged(t, "a refused start on the external etcd", before, hashTree(t, dd))
	if keys := snapshotPrefix(t, e.Client(t), "/"); len(keys) != 0 {
		t.Errorf("the refused start wrote to the external etcd: %v", keyNames(keys))
	}
}
