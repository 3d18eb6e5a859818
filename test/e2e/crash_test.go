package e2e

// Crash injection: kpki is killed with SIGKILL at a random instant of an operation, started
// again, and the data dir and the datastore are checked against the invariants every crash must
// keep (SPEC §11: a crash at any instant leaves the old or the new state, never a certificate
// paired with a key it does not match).
//
// KPKI_CRASH_N sets the number of crashes (default: two per scenario, the sample the unit run
// takes); KPKI_CRASH_SEED makes a run repeatable. `make crash` runs a long sample.

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// crashScenario is one operation crashed again and again on the same data dir.
type crashScenario struct {
	name string
	// setup prepares the scenario's cluster once and returns it.
	setup func(t *testing.T) *crashEnv
	// crash runs the operation and kills kpki after delay (or lets it finish when the
	// operation is shorter), leaving env ready for recover; it reports whether the kill
	// landed inside the operation.
	crash func(t *testing.T, env *crashEnv, delay time.Duration) bool
	// window is the span the kill instant is drawn from.
	window time.Duration
}

// crashEnv is a scenario's cluster: a server data dir and ports, optionally an agent data dir.
type crashEnv struct {
	dd       string
	ports    serverPorts
	args     []string // extra server flags of every start
	server   *kpkiServer
	agentDD  string
	agentArg []string
	// cas holds every set of CA certificates the record may hold after a crash (the set before
	// the operation and, for rotate-ca, the staged one).
	cas []map[string][]byte
}

func crashCount(t *testing.T, scenarios int) int {
	v := os.Getenv("KPKI_CRASH_N")
	if v == "" {
		return 2 * scenarios
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("KPKI_CRASH_N=%q must be a positive number", v)
	}
	return n
}

func crashSeed(t *testing.T) uint64 {
	if v := os.Getenv("KPKI_CRASH_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("KPKI_CRASH_SEED=%q must be a number", v)
		}
		return s
	}
	return uint64(time.Now().UnixNano())
}

// TestCrash kills kpki with SIGKILL at random instants of: a first start, a restart that renews
// every leaf, `certificate rotate` and the start after it, rotate-ca and the restart after it,
// token rotate, an agent join and an agent renewal. After each crash kpki is started again and
// must come up, with every certificate matching its key and chaining to a CA of the record in
// the datastore, the record decrypting with the token in the token file, no CA lost, and an
// audit log that parses.
func TestCrash(t *testing.T) {
	requireTools(t, "openssl")
	scenarios := crashScenarios()
	n := crashCount(t, len(scenarios))
	seed := crashSeed(t)
	t.Logf("crash injection: %d crashes, KPKI_CRASH_SEED=%d", n, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	// Each scenario keeps one cluster for all its crashes, so that state accumulates the way
	// it does on a real node. Scenarios run one after the other: the kill instants are drawn
	// against durations measured on an otherwise quiet machine.
	per := make([]int, len(scenarios))
	for i := range n {
		per[i%len(scenarios)]++
	}
	total, hits := 0, 0
	for i, sc := range scenarios {
		if per[i] == 0 {
			continue
		}
		delays := make([]time.Duration, per[i])
		for j := range delays {
			delays[j] = time.Duration(rng.Int64N(int64(sc.window)))
		}
		t.Run(sc.name, func(t *testing.T) {
			env := sc.setup(t)
			for j, d := range delays {
				if t.Failed() {
					return
				}
				inside := sc.crash(t, env, d)
				if inside {
					hits++
				}
				t.Logf("crash %d/%d of %s: SIGKILL after %v, inside the operation: %v", j+1, len(delays), sc.name, d.Round(time.Millisecond), inside)
				recoverAndCheck(t, env)
				total++
			}
		})
	}
	t.Logf("%d crashes injected, %d of them inside the operation (the others after it ended); every one recovered from", total, hits)
}

func crashScenarios() []crashScenario {
	return []crashScenario{
		{name: "first-start", window: 2500 * time.Millisecond, setup: newCrashEnv(false), crash: crashFirstStart},
		{name: "restart-with-renewal", window: 2500 * time.Millisecond, setup: newCrashEnv(true), crash: crashRestart},
		{name: "rotate-then-start", window: 2500 * time.Millisecond, setup: newCrashEnv(true), crash: crashRotateThenStart},
		{name: "rotate-ca-then-restart", window: 3000 * time.Millisecond, setup: newCrashEnv(true), crash: crashRotateCA},
		{name: "token-rotate", window: 300 * time.Millisecond, setup: newCrashEnv(true), crash: crashTokenRotate},
		{name: "agent-join", window: 350 * time.Millisecond, setup: newAgentCrashEnv, crash: crashAgentJoin},
		{name: "agent-renewal", window: 250 * time.Millisecond, setup: newAgentCrashEnv, crash: crashAgentRenewal},
	}
}

// newCrashEnv returns a setup that makes a data dir and, when started, a running server whose
// leaves are issued valid for 2h, so that every start a second later, with --renew-before 1h59m59s, renews them all.
func newCrashEnv(started bool) func(t *testing.T) *crashEnv {
	return func(t *testing.T) *crashEnv {
		env := &crashEnv{
			dd:    filepath.Join(t.TempDir(), "data"),
			ports: newServerPorts(t, loopback),
			args:  []string{"--cert-validity", "2h", "--renew-before", "119m59s"},
		}
		if started {
			env.server = startServerOn(t, env.ports, env.dd, env.args...)
			env.server.WaitReady(t)
			env.cas = []map[string][]byte{recordCAs(t, env.server)}
		}
		return env
	}
}

func newAgentCrashEnv(t *testing.T) *crashEnv {
	env := newCrashEnv(true)(t)
	env.agentDD = filepath.Join(t.TempDir(), "agent")
	env.agentArg = agentArgs(env.server, agentToken(t, env.server), env.agentDD,
		"--node-ip", "127.0.0.77", "--renew-before-days", "1")
	agentOK(t, env.agentArg...)
	return env
}

// killAfter starts the prepared command and kills it with SIGKILL after delay, or returns once it
// exits by itself; it reports whether the kill happened.
func killAfter(t *testing.T, cmd *exec.Cmd, delay time.Duration) bool {
	t.Helper()
	cmd.Env = cleanEnv(nil)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", strings.Join(cmd.Args, " "), err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
		return false
	case <-time.After(delay):
		_ = cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(failTimeout):
			t.Fatalf("%s survived SIGKILL", cmd.Args[0])
		}
		return true
	}
}

// killServerAfter kills the server of env after delay unless it exits first (it then failed:
// recover reports why). It reports whether the kill landed before the server was ready.
func killServerAfter(t *testing.T, env *crashEnv, delay time.Duration) bool {
	t.Helper()
	select {
	case <-env.server.done:
		return false
	case <-time.After(delay):
	}
	_ = env.server.cmd.Process.Kill()
	<-env.server.done
	return !strings.Contains(env.server.Stderr(), "kpki server is ready")
}

// killRunningServer kills the server of env at once; the operation it served was still running.
func killRunningServer(env *crashEnv) {
	if !env.server.exited() {
		_ = env.server.cmd.Process.Kill()
		<-env.server.done
	}
}

func crashFirstStart(t *testing.T, env *crashEnv, delay time.Duration) bool {
	// A new data dir for every crash: each one is a first start.
	if env.server != nil && !env.server.exited() {
		env.server.Stop(t)
	}
	env.dd = filepath.Join(t.TempDir(), "data")
	env.cas = nil
	env.server = startServerOn(t, env.ports, env.dd, env.args...)
	return killServerAfter(t, env, delay)
}

func crashRestart(t *testing.T, env *crashEnv, delay time.Duration) bool {
	env.server.Stop(t)
	env.server = startServerOn(t, env.ports, env.dd, env.args...)
	return killServerAfter(t, env, delay)
}

func crashRotateThenStart(t *testing.T, env *crashEnv, delay time.Duration) bool {
	env.server.Stop(t)
	start := time.Now()
	cmd := exec.Command(binary(t), "certificate", "rotate", "--data-dir", env.dd)
	if killAfter(t, cmd, delay) {
		return true
	}
	env.server = startServerOn(t, env.ports, env.dd, env.args...)
	return killServerAfter(t, env, delay-time.Since(start))
}

func crashRotateCA(t *testing.T, env *crashEnv, delay time.Duration) bool {
	s := env.server
	kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", env.dd)
	stage := filepath.Join(env.dd, "server", "rotate-ca")
	env.cas = append(env.cas, stagedCAs(t, filepath.Join(stage, "tls")))
	start := time.Now()
	cmd := exec.Command(binary(t), "certificate", "rotate-ca", "--path="+stage,
		"--server", s.SupervisorURL(), "--data-dir", env.dd)
	rotated := make(chan struct{})
	go func() {
		defer close(rotated)
		cmd.Env = cleanEnv(nil)
		_ = cmd.Run()
	}()
	select {
	case <-rotated:
	case <-time.After(delay):
		killRunningServer(env)
		<-rotated
		return true
	}
	env.server.Stop(t)
	env.server = startServerOn(t, env.ports, env.dd, env.args...)
	return killServerAfter(t, env, delay-time.Since(start))
}

func crashTokenRotate(t *testing.T, env *crashEnv, delay time.Duration) bool {
	s := env.server
	cmd := exec.Command(binary(t), "token", "rotate", "--server", s.SupervisorURL(), "--data-dir", env.dd)
	done := make(chan struct{})
	go func() {
		defer close(done)
		cmd.Env = cleanEnv(nil)
		_ = cmd.Run()
	}()
	hit := false
	select {
	case <-done:
	case <-time.After(delay):
		hit = true
	}
	killRunningServer(env)
	<-done
	return hit
}

func crashAgentJoin(t *testing.T, env *crashEnv, delay time.Duration) bool {
	// A new agent data dir and node name for every crash: each one is a first join.
	env.agentDD = filepath.Join(t.TempDir(), "agent")
	node := fmt.Sprintf("crash-agent-%d", rand.IntN(1<<30))
	env.agentArg = []string{"agent", "--server", env.server.SupervisorURL(), "--token", agentToken(t, env.server),
		"--data-dir", env.agentDD, "--node-name", node, "--node-ip", "127.0.0.78",
		"--api-server-port", strconv.Itoa(env.server.Ports.APIServer), "--renew-before-days", "1"}
	return killAfter(t, exec.Command(binary(t), append(env.agentArg, "--once")...), delay)
}

func crashAgentRenewal(t *testing.T, env *crashEnv, delay time.Duration) bool {
	// The server issues 2h leaves and the agent renews within a day: every pass renews all four.
	return killAfter(t, exec.Command(binary(t), append(env.agentArg, "--once")...), delay)
}

// recoverAndCheck starts kpki again after a crash and checks every invariant.
func recoverAndCheck(t *testing.T, env *crashEnv) {
	t.Helper()
	if env.server == nil || env.server.exited() {
		env.server = startServerOn(t, env.ports, env.dd, env.args...)
		env.server.WaitReady(t)
	}
	s := env.server
	rec, keys := currentRecord(t, s)
	if len(keys) != 1 {
		t.Errorf("bootstrap keys after the crash: %v, want exactly one", keyNames(keys))
	}
	assertDiskMatchesRecord(t, env.dd, rec)
	got := map[string][]byte{}
	for _, f := range caFiles {
		got[f] = rec[caRecordField[f+".crt"]].Content
	}
	if env.cas != nil && !oneOfCASets(got, env.cas) {
		t.Errorf("the record holds CA certificates that are neither the ones before the operation nor the staged ones: a CA was lost")
	}
	env.cas = []map[string][]byte{got}
	checkServerLeaves(t, s, rec)
	checkAuditLog(t, env.dd)
	tokenFile := readTokenFile(t, env.dd, "token")
	if err := exec.Command("test", "-s", filepath.Join(env.dd, "server", "agent-token")).Run(); err != nil {
		t.Errorf("agent-token is missing or empty after the crash")
	}
	if tokenCAHash(t, tokenFile) == "" {
		t.Errorf("token file holds no CA hash")
	}
	if env.agentDD != "" {
		r := runAgentOnce(t, env.agentArg...)
		if r.code != 0 {
			t.Fatalf("the agent does not recover after the crash:\n%s", r)
		}
		checkAgentFiles(t, env.agentDD, rec)
	}
}

func recordCAs(t *testing.T, s *kpkiServer) map[string][]byte {
	t.Helper()
	rec, _ := currentRecord(t, s)
	out := map[string][]byte{}
	for _, f := range caFiles {
		out[f] = rec[caRecordField[f+".crt"]].Content
	}
	return out
}

func stagedCAs(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, f := range caFiles {
		out[f] = readFile(t, filepath.Join(dir, f+".crt"))
	}
	return out
}

func oneOfCASets(got map[string][]byte, sets []map[string][]byte) bool {
	for _, set := range sets {
		same := true
		for f, b := range set {
			if !bytes.Equal(got[f], b) {
				same = false
			}
		}
		if same {
			return true
		}
	}
	return false
}

// checkServerLeaves checks that every leaf of the server matches its key and chains to the CA
// bundle of its field in the record.
func checkServerLeaves(t *testing.T, s *kpkiServer, rec bootstrapRecord) {
	t.Helper()
	for _, l := range serverLeaves(s.IP) {
		bundle, err := parseCertsPEM(rec[caRecordField[l.ca]].Content)
		if err != nil {
			t.Errorf("record %s: %v", caRecordField[l.ca], err)
			continue
		}
		checkPair(t, filepath.Join(s.TLSDir(), l.file), bundle)
	}
}

func checkAgentFiles(t *testing.T, dd string, rec bootstrapRecord) {
	t.Helper()
	for _, l := range agentLeafFiles {
		field := "ClientCA"
		if l.name == "serving-kubelet" {
			field = "ServerCA"
		}
		bundle, err := parseCertsPEM(rec[field].Content)
		if err != nil {
			t.Errorf("record %s: %v", field, err)
			continue
		}
		checkPair(t, filepath.Join(dd, "agent", l.name), bundle)
	}
}

// checkPair checks base.crt against base.key and verifies its leaf against bundle.
func checkPair(t *testing.T, base string, bundle []*x509.Certificate) {
	t.Helper()
	certs := readCerts(t, base+".crt")
	keys := readKeys(t, base+".key")
	if len(keys) == 0 || !keyMatches(certs[0].PublicKey, keys[0].signer) {
		t.Errorf("%s.crt does not match %s.key", base, base)
		return
	}
	roots := x509.NewCertPool()
	inter := x509.NewCertPool()
	for _, c := range bundle {
		if selfSigned(c) {
			roots.AddCert(c)
		} else {
			inter.AddCert(c)
		}
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("%s.crt does not chain to the CA in the datastore: %v", base, err)
	}
}

// checkAuditLog checks that the audit log exists and every line of it is a JSON object.
func checkAuditLog(t *testing.T, dd string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dd, "server", "audit.log")); err != nil {
		t.Errorf("audit log: %v", err)
		return
	}
	auditEntries(t, dd)
}
