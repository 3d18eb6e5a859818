package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rolloutJSON is the documented object of `kpki certificate rotate-ca --status -o json`.
type rolloutJSON struct {
	Current struct {
		Generation       string `json:"generation"`
		ServerGeneration string `json:"server_generation"`
	} `json:"current"`
	Nodes []struct {
		Node           string        `json:"node"`
		Role           string        `json:"role"`
		Generation     string        `json:"generation"`
		State          string        `json:"state"`
		EarliestExpiry *rolloutCert  `json:"earliest_expiry"`
		LastSeen       *string       `json:"last_seen"`
		Certificates   []rolloutCert `json:"certificates"`
	} `json:"nodes"`
	OnCurrent int      `json:"on_current"`
	Total     int      `json:"total"`
	Pending   []string `json:"pending"`
	Unknown   []string `json:"unknown"`
}

type rolloutCert struct {
	File     string `json:"file"`
	NotAfter string `json:"not_after"`
}

// caGeneration is the CA generation as docs/operations.md defines it: the first 16 hex
// characters of the SHA-256 of, for the server CA and then the client CA, the CA's name,
// a zero byte and the SHA-256 of the DER of the first certificate of its file.
func caGeneration(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	for _, ca := range []string{"server-ca", "client-ca"} {
		c := readCerts(t, filepath.Join(dir, ca+".crt"))[0]
		sum := sha256.Sum256(c.Raw)
		h.Write([]byte(ca))
		h.Write([]byte{0})
		h.Write(sum[:])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func rolloutStatus(t *testing.T, s *kpkiServer) rolloutJSON {
	t.Helper()
	r := kpkiOK(t, "certificate", "rotate-ca", "--status", "-o", "json", "--server", s.SupervisorURL(), "--data-dir", s.DataDir)
	var st rolloutJSON
	decodeStrict(t, "rotate-ca --status -o json", r.stdout, &st)
	return st
}

// states is "node/role/state" for each row.
func (st rolloutJSON) states() string {
	var out []string
	for _, n := range st.Nodes {
		out = append(out, n.Node+"/"+n.Role+"/"+n.State)
	}
	return strings.Join(out, " ")
}

func TestRotateCAStatus(t *testing.T) {
	t.Parallel()
	sdd := filepath.Join(t.TempDir(), "server")
	metricsAddr := loopback + ":" + strconv.Itoa(freePort(t, loopback))
	s := startServer(t, sdd, "--metrics-address", metricsAddr)
	s.WaitReady(t)
	workers := []string{"worker-1", "worker-2"}
	agentDirs := map[string]string{}
	runAgents := func(tok string) {
		t.Helper()
		for _, w := range workers {
			if agentDirs[w] == "" {
				agentDirs[w] = filepath.Join(t.TempDir(), w)
			}
			agentOK(t, "agent", "--server", s.SupervisorURL(), "--token", tok, "--data-dir", agentDirs[w],
				"--node-name", w, "--api-server-port", strconv.Itoa(s.Ports.APIServer))
		}
	}
	gauge := func(gen, role string) string {
		return metricValue(t, metricsAddr, `kpki_ca_generation_nodes{generation="`+gen+`",role="`+role+`"}`)
	}
	waitGauge := func(gen string, servers, agents string, gone string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for gauge(gen, "server") != servers || gauge(gen, "agent") != agents || (gone != "" && gauge(gone, "agent") != "") {
			if time.Now().After(deadline) {
				t.Fatalf("kpki_ca_generation_nodes for %s: server %q agent %q (want %q %q); for %s: agent %q (want none)",
					gen, gauge(gen, "server"), gauge(gen, "agent"), servers, agents, gone, gauge(gone, "agent"))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	runAgents(agentToken(t, s))

	oldGen := caGeneration(t, s.TLSDir())
	st := rolloutStatus(t, s)
	if st.Current.Generation != oldGen || len(st.Current.ServerGeneration) != 16 {
		t.Fatalf("current %+v, want generation %s", st.Current, oldGen)
	}
	if got, want := st.states(), "e2e-node/server/current worker-1/agent/current worker-2/agent/current"; got != want {
		t.Fatalf("nodes %q, want %q", got, want)
	}
	if st.OnCurrent != 3 || st.Total != 3 || len(st.Pending) != 0 || len(st.Unknown) != 0 {
		t.Errorf("%d of %d, pending %v, unknown %v", st.OnCurrent, st.Total, st.Pending, st.Unknown)
	}
	for _, n := range st.Nodes {
		if n.Generation != oldGen || n.LastSeen == nil || n.EarliestExpiry == nil {
			t.Errorf("%s: generation %s (want %s), last seen %v, earliest expiry %v", n.Node, n.Generation, oldGen, n.LastSeen, n.EarliestExpiry)
		}
		if n.Role != "agent" {
			continue
		}
		// What the agent reported is what its files hold.
		var files []string
		for _, c := range n.Certificates {
			files = append(files, c.File)
			crt := readCerts(t, filepath.Join(agentDirs[n.Node], filepath.FromSlash(c.File)))[0]
			if got, err := time.Parse(time.RFC3339, c.NotAfter); err != nil || !got.Equal(crt.NotAfter) {
				t.Errorf("%s %s: not_after %s, the file's certificate expires %s", n.Node, c.File, c.NotAfter, crt.NotAfter)
			}
		}
		slices.Sort(files)
		want := []string{"agent/client-ca.crt", "agent/client-kpki-controller.crt", "agent/client-kube-proxy.crt", "agent/client-kubelet.crt", "agent/server-ca.crt", "agent/serving-kubelet.crt"}
		if !slices.Equal(files, want) {
			t.Errorf("%s reported %v, want %v", n.Node, files, want)
		}
	}
	text := kpkiOK(t, "certificate", "rotate-ca", "--status", "--server", s.SupervisorURL(), "--data-dir", sdd).stdout
	if !strings.Contains(text, "3 of 3 nodes on the current CA generation\n") || !strings.Contains(text, "worker-2") || !strings.Contains(text, oldGen) {
		t.Errorf("text status:\n%s", text)
	}
	waitGauge(oldGen, "1", "2", "")

	// rotate-ca with cross-signed CAs: the datastore moves on, the nodes have not yet.
	kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", sdd)
	stage := filepath.Join(sdd, "server", "rotate-ca")
	newGen := caGeneration(t, filepath.Join(stage, "tls"))
	assertRotateCASaved(t, rotateCA(t, s, stage))
	if newGen == oldGen {
		t.Fatal("cross-sign-ca staged the same CA generation")
	}
	// The server applies the rotation live and then reports the new generation; the agents
	// (run with --once) have not run since.
	s = applyRotation(t, s)
	if !waitUntil(t, 90*time.Second, func() (bool, string) {
		st = rolloutStatus(t, s)
		return len(st.Nodes) > 0 && st.Nodes[0].State == "current", st.states()
	}) {
		t.Fatalf("the server did not report the new generation after its live apply:\n%s", s.tail(30))
	}
	if st.Current.Generation != newGen {
		t.Fatalf("current generation after rotate-ca %s, want the staged %s", st.Current.Generation, newGen)
	}
	if onDisk := caGeneration(t, s.TLSDir()); onDisk != newGen {
		t.Errorf("the server's files hold generation %s after its live apply, want %s", onDisk, newGen)
	}
	if got, want := st.states(), "e2e-node/server/current worker-1/agent/pending worker-2/agent/pending"; got != want {
		t.Errorf("after rotate-ca: nodes %q, want %q", got, want)
	}
	for _, n := range st.Nodes[1:] {
		if n.Generation != oldGen {
			t.Errorf("%s: generation %s, want the old %s", n.Node, n.Generation, oldGen)
		}
	}
	if !slices.Equal(st.Pending[len(st.Pending)-2:], workers) {
		t.Errorf("pending %v", st.Pending)
	}
	text = kpkiOK(t, "certificate", "rotate-ca", "--status", "--server", s.SupervisorURL(), "--data-dir", sdd).stdout
	t.Logf("rotate-ca --status after rotate-ca:\n%s", text)
	if !strings.Contains(text, "nodes on the current CA generation; pending: ") || !strings.Contains(text, "worker-1, worker-2\n") {
		t.Errorf("text status after rotate-ca:\n%s", text)
	}

	// The seed page's restart, and the agents run again (with the new token): all current.
	s = restartServer(t, s, "--metrics-address", metricsAddr)
	runAgents(agentToken(t, s))
	st = rolloutStatus(t, s)
	if got, want := st.states(), "e2e-node/server/current worker-1/agent/current worker-2/agent/current"; got != want {
		t.Errorf("after the restarts: nodes %q, want %q", got, want)
	}
	if st.OnCurrent != 3 || st.Total != 3 || len(st.Pending) != 0 {
		t.Errorf("after the restarts: %d of %d, pending %v", st.OnCurrent, st.Total, st.Pending)
	}
	for _, n := range st.Nodes {
		if n.Generation != newGen {
			t.Errorf("%s: generation %s, want %s", n.Node, n.Generation, newGen)
		}
	}
	for _, w := range workers {
		if g := caGeneration(t, filepath.Join(agentDirs[w], "agent")); g != newGen {
			t.Errorf("%s's files hold generation %s, want %s", w, g, newGen)
		}
	}
	waitGauge(newGen, "1", "2", oldGen)

	// --status changes nothing and takes no rotation flag.
	r := runKpki(t, nil, "certificate", "rotate-ca", "--status", "--dry-run", "--server", s.SupervisorURL(), "--data-dir", sdd)
	assertRefused(t, r, anyOf("cannot be combined with --dry-run"))
	s.Stop(t)
}
