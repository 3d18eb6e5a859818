package rollout

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// caFiles makes a self-signed CA file for every CA of the table.
func caFiles(t *testing.T, iss *pki.Issuer) map[certs.CAID][]byte {
	t.Helper()
	out := map[certs.CAID][]byte{}
	for _, c := range certs.CAs {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := iss.SelfSignedCA(key, string(c.ID), 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		out[c.ID] = pki.EncodeCert(cert)
	}
	return out
}

func mustCurrent(t *testing.T, files map[certs.CAID][]byte) Current {
	t.Helper()
	cur, err := CurrentOf(files)
	if err != nil {
		t.Fatal(err)
	}
	return cur
}

func TestCurrentOfFollowsTheSigningCertificates(t *testing.T) {
	iss := pki.NewIssuer(clock.NewFake(t0), nil)
	files := caFiles(t, iss)
	cur := mustCurrent(t, files)
	if !ValidGeneration(cur.Generation) || !ValidGeneration(cur.ServerGeneration) || cur.Generation == cur.ServerGeneration {
		t.Fatalf("current %+v", cur)
	}
	other := caFiles(t, iss)

	// A bundle that only appends certificates after the signing one keeps the generation.
	rebundled := map[certs.CAID][]byte{}
	for id, b := range files {
		rebundled[id] = append(append([]byte{}, b...), other[id]...)
	}
	if got := mustCurrent(t, rebundled); got != cur {
		t.Errorf("appending to the bundles changed the generation: %+v, want %+v", got, cur)
	}

	// A new client CA changes both; a new etcd CA only the server generation.
	client := map[certs.CAID][]byte{}
	etcd := map[certs.CAID][]byte{}
	for id, b := range files {
		client[id], etcd[id] = b, b
	}
	client[certs.ClientCA] = other[certs.ClientCA]
	etcd[certs.ETCDPeerCA] = other[certs.ETCDPeerCA]
	if got := mustCurrent(t, client); got.Generation == cur.Generation || got.ServerGeneration == cur.ServerGeneration {
		t.Errorf("a new client CA: %+v, was %+v", got, cur)
	}
	if got := mustCurrent(t, etcd); got.Generation != cur.Generation || got.ServerGeneration == cur.ServerGeneration {
		t.Errorf("a new etcd peer CA: %+v, was %+v", got, cur)
	}

	// The agent's view (server and client CA only) gives the same generation.
	signers, err := certs.Signers(map[certs.CAID][]byte{certs.ServerCA: files[certs.ServerCA], certs.ClientCA: files[certs.ClientCA]})
	if err != nil {
		t.Fatal(err)
	}
	if g, err := certs.Generation(signers); err != nil || g != cur.Generation {
		t.Errorf("agent generation %q, %v; want %q", g, err, cur.Generation)
	}
	if _, err := certs.ServerGeneration(signers); err == nil {
		t.Error("a server generation without the other CAs")
	}
	delete(files, certs.ETCDServerCA)
	if _, err := CurrentOf(files); err == nil || !strings.Contains(err.Error(), string(certs.ETCDServerCA)) {
		t.Errorf("missing CA: %v", err)
	}
	if _, err := CurrentOf(map[certs.CAID][]byte{certs.ServerCA: []byte("not PEM")}); err == nil {
		t.Error("a file that is not PEM")
	}
}

func goodReport() Report {
	return Report{Node: "worker-1", Generation: "0123456789abcdef",
		Certificates: []Cert{{File: "agent/client-kubelet.crt", NotAfter: t0.Add(time.Hour)}}}
}

func TestCheckRefusesBadReports(t *testing.T) {
	if err := goodReport().Check(); err != nil {
		t.Fatalf("good report refused: %v", err)
	}
	many := goodReport()
	for range MaxCertificates {
		many.Certificates = append(many.Certificates, Cert{File: "agent/x.crt", NotAfter: t0})
	}
	for name, tc := range map[string]struct {
		mod  func(*Report)
		want string
	}{
		"name":              {func(r *Report) { r.Node = "Worker_1" }, "not a valid node name"},
		"empty name":        {func(r *Report) { r.Node = "" }, "not a valid node name"},
		"short generation":  {func(r *Report) { r.Generation = "0123" }, "lowercase hex"},
		"upper generation":  {func(r *Report) { r.Generation = "0123456789ABCDEF" }, "lowercase hex"},
		"server generation": {func(r *Report) { r.ServerGeneration = "0123456789abcdef" }, "servers only"},
		"absolute file":     {func(r *Report) { r.Certificates[0].File = "/etc/passwd" }, "relative path"},
		"dotdot file":       {func(r *Report) { r.Certificates[0].File = "agent/../x.crt" }, "relative path"},
		"control char":      {func(r *Report) { r.Certificates[0].File = "agent/x\n.crt" }, "relative path"},
		"long file":         {func(r *Report) { r.Certificates[0].File = strings.Repeat("a", MaxFileLen+1) }, "relative path"},
		"no expiry":         {func(r *Report) { r.Certificates[0].NotAfter = time.Time{} }, "not_after is missing"},
		"too many":          {func(r *Report) { *r = many }, "at most"},
	} {
		r := goodReport()
		r.Certificates = append([]Cert{}, r.Certificates...)
		tc.mod(&r)
		if err := r.Check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

func TestAggregate(t *testing.T) {
	cur := Current{Generation: "1111111111111111", ServerGeneration: "2222222222222222"}
	old := Current{Generation: "aaaaaaaaaaaaaaaa", ServerGeneration: "bbbbbbbbbbbbbbbb"}
	reports := []Report{
		{Node: "worker-b", Role: RoleAgent, Generation: old.Generation, ReportedAt: t0,
			Certificates: []Cert{{File: "agent/a.crt", NotAfter: t0.Add(3 * time.Hour)}, {File: "agent/b.crt", NotAfter: t0.Add(time.Hour)}}},
		{Node: "worker-a", Role: RoleAgent, Generation: cur.Generation, ReportedAt: t0.Add(time.Minute)},
		{Node: "srv-1", Role: RoleServer, Generation: cur.Generation, ServerGeneration: cur.ServerGeneration, ReportedAt: t0},
		// The agent generation is current but an etcd CA is not.
		{Node: "srv-2", Role: RoleServer, Generation: cur.Generation, ServerGeneration: old.ServerGeneration, ReportedAt: t0},
	}
	st := Aggregate(cur, reports, []string{"srv-1", "srv-2", "srv-3"}, []string{"worker-a", "worker-b", "worker-c"})
	var order []string
	for _, n := range st.Nodes {
		order = append(order, n.Node+"/"+n.Role+"/"+n.State)
	}
	want := "srv-1/server/current srv-2/server/pending srv-3/server/unknown worker-a/agent/current worker-b/agent/pending worker-c/agent/unknown"
	if got := strings.Join(order, " "); got != want {
		t.Errorf("nodes %q, want %q", got, want)
	}
	if st.OnCurrent != 2 || st.Total != 6 {
		t.Errorf("%d of %d", st.OnCurrent, st.Total)
	}
	b := st.Nodes[4]
	if b.EarliestExpiry == nil || b.EarliestExpiry.File != "agent/b.crt" || b.LastSeen == nil || !b.LastSeen.Equal(t0) {
		t.Errorf("worker-b: %+v", b)
	}
	if st.Nodes[3].EarliestExpiry != nil || st.Nodes[5].LastSeen != nil {
		t.Errorf("earliest expiry without certificates or last seen without a report: %+v %+v", st.Nodes[3], st.Nodes[5])
	}
	if got, want := st.Summary(), "2 of 6 nodes on the current CA generation; pending: srv-2, worker-b; not reported: srv-3, worker-c"; got != want {
		t.Errorf("summary %q, want %q", got, want)
	}
	all := Aggregate(cur, reports[1:3], nil, nil)
	if got, want := all.Summary(), "2 of 2 nodes on the current CA generation"; got != want {
		t.Errorf("summary %q, want %q", got, want)
	}
	// Empty lists are [] in JSON, never null.
	b2, _ := json.Marshal(all)
	if !strings.Contains(string(b2), `"pending":[]`) || !strings.Contains(string(b2), `"unknown":[]`) {
		t.Errorf("null list in %s", b2)
	}
	counts := Count(map[string]Report{"a": reports[0], "b": reports[1], "c": reports[2], "d": reports[3]})
	if counts[GenerationRole{cur.Generation, RoleServer}] != 2 || counts[GenerationRole{cur.Generation, RoleAgent}] != 1 ||
		counts[GenerationRole{old.Generation, RoleAgent}] != 1 || len(counts) != 3 {
		t.Errorf("counts %v", counts)
	}
}

func TestParse(t *testing.T) {
	r := goodReport()
	r.Role = RoleAgent
	data, _ := json.Marshal(r)
	got, err := Parse(Key("worker-1"), data)
	if err != nil || got.Node != "worker-1" || len(got.Certificates) != 1 {
		t.Errorf("Parse: %+v, %v", got, err)
	}
	if _, err := Parse(Key("worker-2"), data); err == nil {
		t.Error("a report stored under another node's key")
	}
	if _, err := Parse(Key("worker-1"), []byte("{")); err == nil {
		t.Error("a record that is not JSON")
	}
}

func TestCertificatesListsTheFirstCertificateOfEachFile(t *testing.T) {
	iss := pki.NewIssuer(clock.NewFake(t0), nil)
	files := caFiles(t, iss)
	root := t.TempDir()
	dir := filepath.Join(root, "agent")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "server-ca.crt")
	bundle := append(append([]byte{}, files[certs.ServerCA]...), files[certs.ClientCA]...)
	if err := os.WriteFile(good, bundle, 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.crt")
	if err := os.WriteFile(bad, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	got := Certificates(root, []string{good, bad, filepath.Join(dir, "missing.crt")}, datadir.FirstCert)
	first, _ := pki.ParseCerts(files[certs.ServerCA])
	if len(got) != 1 || got[0].File != "agent/server-ca.crt" || !got[0].NotAfter.Equal(first[0].NotAfter) {
		t.Errorf("Certificates: %+v", got)
	}
}
