package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/rollout"
	"github.com/kpki/kpki/internal/server/record"
)

// withFullRecord stores a bootstrap record holding every CA of the host, and returns
// the generation of those CAs.
func (e *env) withFullRecord() rollout.Current {
	e.t.Helper()
	rec := bootstrap.NewRecord()
	rec.Set(bootstrap.PasswdField, bootstrap.File{Timestamp: e.clock.Now().UTC(), Content: e.host.Creds().Bytes()})
	files := map[certs.CAID][]byte{}
	for _, c := range certs.CAs {
		pem := e.host.cas[c.ID].BundlePEM
		rec.Set(c.CertField, bootstrap.File{Timestamp: e.clock.Now().UTC(), Content: pem})
		files[c.ID] = pem
	}
	e.putRecord(rec)
	cur, err := rollout.CurrentOf(files)
	if err != nil {
		e.t.Fatal(err)
	}
	return cur
}

// join has worker sign one certificate, which registers its node password.
func (e *env) join(node, nodePW string) {
	e.t.Helper()
	csr, _ := csrFor(e.t)
	if r := e.must("POST", api.SignPath("client-kube-proxy"), "node", agentPW, csr, nodeHeaders(node, nodePW)); r.code != http.StatusOK {
		e.t.Fatalf("join %s: %d %s", node, r.code, r.body)
	}
}

func statusBody(t *testing.T, rep api.NodeStatus) []byte {
	t.Helper()
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func agentReport(node, gen string, notAfter time.Time) api.NodeStatus {
	return api.NodeStatus{Node: node, Generation: gen, Certificates: []rollout.Cert{
		{File: "agent/client-kubelet.crt", NotAfter: notAfter}, {File: "agent/serving-kubelet.crt", NotAfter: notAfter.Add(time.Hour)}}}
}

func TestNodeStatusStoresTheAgentsOwnReport(t *testing.T) {
	e := newEnv(t)
	cur := e.withFullRecord()
	e.join("worker-1", "pw-1")
	e.join("worker-2", "pw-2")
	exp := e.clock.Now().Add(30 * 24 * time.Hour).UTC()

	r := e.must("PUT", api.PathNodeStatus, "node", agentPW, statusBody(t, agentReport("worker-1", cur.Generation, exp)), nodeHeaders("worker-1", "pw-1"))
	if r.code != http.StatusNoContent {
		t.Fatalf("report: %d %s", r.code, r.body)
	}
	v, ok := e.store.Value(rollout.Key("worker-1"))
	if !ok {
		t.Fatal("report not stored")
	}
	stored, err := rollout.Parse(rollout.Key("worker-1"), v)
	if err != nil || stored.Role != rollout.RoleAgent || !stored.ReportedAt.Equal(e.clock.Now()) || stored.Generation != cur.Generation || len(stored.Certificates) != 2 {
		t.Errorf("stored %+v, %v", stored, err)
	}

	before := e.store.Calls("put")
	old := strings.Repeat("a", certs.GenerationLen)
	for name, c := range map[string]struct {
		user, pw string
		headers  map[string]string
		body     []byte
		code     int
		want     string
	}{
		"for another node":       {"node", agentPW, nodeHeaders("worker-2", "pw-2"), statusBody(t, agentReport("worker-1", old, exp)), http.StatusForbidden, "reports only for itself"},
		"wrong node password":    {"node", agentPW, nodeHeaders("worker-1", "pw-2"), statusBody(t, agentReport("worker-1", old, exp)), http.StatusForbidden, "another node password"},
		"not joined":             {"node", agentPW, nodeHeaders("worker-9", "pw-9"), statusBody(t, agentReport("worker-9", old, exp)), http.StatusForbidden, "has not joined"},
		"a server's name":        {"node", agentPW, nodeHeaders("srv-1", "x"), statusBody(t, agentReport("srv-1", old, exp)), http.StatusForbidden, "node name of a server"},
		"oversize body":          {"node", agentPW, nodeHeaders("worker-1", "pw-1"), bytes.Repeat([]byte(" "), rollout.MaxBody+1), http.StatusRequestEntityTooLarge, "larger than"},
		"not JSON":               {"node", agentPW, nodeHeaders("worker-1", "pw-1"), []byte("{"), http.StatusBadRequest, "not valid JSON"},
		"bad generation":         {"node", agentPW, nodeHeaders("worker-1", "pw-1"), statusBody(t, agentReport("worker-1", "zz", exp)), http.StatusBadRequest, "lowercase hex"},
		"claims the server role": {"node", agentPW, nodeHeaders("worker-1", "pw-1"), []byte(`{"node":"worker-1","role":"server","generation":"` + old + `"}`), http.StatusBadRequest, "agents report as"},
		"no node headers":        {"node", agentPW, nil, statusBody(t, agentReport("worker-1", old, exp)), http.StatusBadRequest, "are required"},
		"no credentials":         {"", "", nodeHeaders("worker-1", "pw-1"), statusBody(t, agentReport("worker-1", old, exp)), http.StatusUnauthorized, ""},
	} {
		r := e.must("PUT", api.PathNodeStatus, c.user, c.pw, c.body, c.headers)
		if r.code != c.code || !strings.Contains(r.err.Error, c.want) {
			t.Errorf("%s: %d %s, want %d %q", name, r.code, r.body, c.code, c.want)
		}
	}
	if n := e.store.Calls("put") - before; n != 0 {
		t.Errorf("%d datastore writes by refused reports", n)
	}
	if v2, _ := e.store.Value(rollout.Key("worker-1")); !bytes.Equal(v, v2) {
		t.Error("a refused report changed worker-1's status")
	}
	if _, ok := e.store.Value(nodePasswordKey("worker-9")); ok {
		t.Error("a report registered a node that never joined")
	}
	var refused int
	for _, en := range e.auditEntries() {
		if en.Action == "node-status-refused" && en.Actor == "worker-2" {
			refused++
		}
	}
	if refused != 1 {
		t.Errorf("%d node-status-refused audit entries by worker-2, want 1", refused)
	}
}

func nodePasswordKey(node string) string { return "/kpki/node-passwords/" + node }

func TestRolloutStatusListsEveryNode(t *testing.T) {
	e := newEnv(t)
	cur := e.withFullRecord()
	e.join("worker-1", "pw-1")
	e.join("worker-2", "pw-2")
	e.join("worker-3", "pw-3")
	exp := e.clock.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
	for node, gen := range map[string]string{"worker-1": cur.Generation, "worker-2": strings.Repeat("0", certs.GenerationLen)} {
		if r := e.must("PUT", api.PathNodeStatus, "node", agentPW, statusBody(t, agentReport(node, gen, exp)), nodeHeaders(node, "pw-"+node[len(node)-1:])); r.code != http.StatusNoContent {
			t.Fatalf("report %s: %d %s", node, r.code, r.body)
		}
	}
	// The server's own record, as internal/server writes it.
	srv, _ := json.Marshal(rollout.Report{Node: "srv-1", Role: rollout.RoleServer, Generation: cur.Generation, ServerGeneration: cur.ServerGeneration, ReportedAt: e.clock.Now()})
	if err := e.store.Put(context.Background(), rollout.Key("srv-1"), srv); err != nil {
		t.Fatal(err)
	}

	r := e.must("GET", api.PathRolloutStatus, "server", serverPW, nil, nil)
	if r.code != http.StatusOK {
		t.Fatalf("rollout-status: %d %s", r.code, r.body)
	}
	var st api.RolloutStatus
	if err := json.Unmarshal(r.body, &st); err != nil {
		t.Fatal(err)
	}
	if st.Current != cur {
		t.Errorf("current %+v, want %+v", st.Current, cur)
	}
	var rows []string
	for _, n := range st.Nodes {
		rows = append(rows, n.Node+"/"+n.Role+"/"+n.State)
	}
	if got, want := strings.Join(rows, " "), "srv-1/server/current worker-1/agent/current worker-2/agent/pending worker-3/agent/unknown"; got != want {
		t.Errorf("nodes %q, want %q", got, want)
	}
	if n := st.Nodes[1]; n.EarliestExpiry == nil || !n.EarliestExpiry.NotAfter.Equal(exp) || n.EarliestExpiry.File != "agent/client-kubelet.crt" {
		t.Errorf("worker-1 earliest expiry %+v", n.EarliestExpiry)
	}
	if st.OnCurrent != 2 || st.Total != 4 {
		t.Errorf("%d of %d", st.OnCurrent, st.Total)
	}

	if r := e.must("GET", api.PathRolloutStatus, "node", agentPW, nil, nil); r.code != http.StatusForbidden {
		t.Errorf("rollout-status to an agent: %d", r.code)
	}
	// A record without every CA cannot be compared with: an error, not a wrong answer.
	newEnvRecord(t, e)
	if r := e.must("GET", api.PathRolloutStatus, "server", serverPW, nil, nil); r.code != http.StatusInternalServerError || !strings.Contains(r.err.Error, "holds no") {
		t.Errorf("rollout-status without the CAs in the record: %d %s", r.code, r.body)
	}
}

// newEnvRecord puts back a record holding only the server CA.
func newEnvRecord(t *testing.T, e *env) {
	t.Helper()
	rec := bootstrap.NewRecord()
	rec.Set("ServerCA", bootstrap.File{Timestamp: e.clock.Now().UTC(), Content: e.host.cas[certs.ServerCA].BundlePEM})
	e.putRecord(rec)
}

// putRecord stores rec as the bootstrap record under serverPW.
func (e *env) putRecord(rec *bootstrap.Record) {
	e.t.Helper()
	value, err := record.Seal(serverPW, rec)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.store.Put(context.Background(), bootstrap.KeyName(serverPW), value); err != nil {
		e.t.Fatal(err)
	}
}
