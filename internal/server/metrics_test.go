package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

// scrapeMetrics GETs url over HTTP and parses the Prometheus text answer.
func scrapeMetrics(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("GET %s: not Prometheus text: %v\n%s", url, err, body)
	}
	return fams
}

// series is one expected sample: its labels and value.
type series struct {
	labels map[string]string
	value  float64
}

// checkFamily compares the family name of fams, of type typ, with want, keyed by the
// value of the label key.
func checkFamily(t *testing.T, fams map[string]*dto.MetricFamily, name string, typ dto.MetricType, key string, want map[string]series) {
	t.Helper()
	fam := fams[name]
	if fam == nil {
		t.Errorf("%s not exported", name)
		return
	}
	if fam.GetType() != typ || fam.GetHelp() == "" {
		t.Errorf("%s: type %v, help %q; want %v with a help text", name, fam.GetType(), fam.GetHelp(), typ)
	}
	seen := map[string]bool{}
	for _, m := range fam.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		k := got[key]
		w, ok := want[k]
		if !ok {
			t.Errorf("%s: series %v that the table does not explain", name, got)
			continue
		}
		if seen[k] {
			t.Errorf("%s: two series for %s=%q", name, key, k)
		}
		seen[k] = true
		if fmt.Sprint(got) != fmt.Sprint(w.labels) {
			t.Errorf("%s{%s=%q}: labels %v, want %v", name, key, k, got, w.labels)
		}
		v := m.GetGauge().GetValue()
		if typ == dto.MetricType_COUNTER {
			v = m.GetCounter().GetValue()
		}
		if v != w.value {
			t.Errorf("%s{%s=%q} = %v, want %v", name, key, k, v, w.value)
		}
	}
	for k := range want {
		if !seen[k] {
			t.Errorf("%s: no series for %s=%q", name, key, k)
		}
	}
}

// tableUsages is the usages label of a certificate with the table's usages.
func tableUsages(isCA bool, usage []x509.ExtKeyUsage) string {
	var u []string
	if isCA {
		u = append(u, "ca")
	}
	for _, e := range usage {
		switch e {
		case x509.ExtKeyUsageServerAuth:
			u = append(u, "server")
		case x509.ExtKeyUsageClientAuth:
			u = append(u, "client")
		}
	}
	return strings.Join(u, ",")
}

// readBundle parses the certificates of the file path.
func readBundle(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	list, err := pki.ParseCerts(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return list
}

// checkExpiryMetrics scrapes url and checks the expiry gauges against the files the
// table names under the data dir dir: one kpki_certificate_expiration_seconds series per
// CA and server leaf at its certificate's NotAfter, one kpki_ca_chain_expiration_seconds
// per CA at the earliest NotAfter of its file, kpki_ca_expiring 0 for each. It returns
// the leaves' NotAfter by file.
func checkExpiryMetrics(t *testing.T, url, dir, node string) map[string]time.Time {
	t.Helper()
	tls := filepath.Join(dir, "server", "tls")
	expiry := map[string]series{}
	chain := map[string]series{}
	expiring := map[string]series{}
	for _, c := range certs.CAs {
		file := filepath.Join(tls, c.CertFile)
		bundle := readBundle(t, file)
		ca := bundle[0]
		if !ca.IsCA || !strings.HasPrefix(ca.Subject.CommonName, c.CNPrefix+"@") {
			t.Fatalf("%s: %s is not the generated %s", file, ca.Subject, c.ID)
		}
		expiry[file] = series{map[string]string{"file": file, "subject": ca.Subject.String(), "usages": tableUsages(true, nil)}, float64(ca.NotAfter.Unix())}
		end := ca.NotAfter
		for _, b := range bundle[1:] {
			if b.NotAfter.Before(end) {
				end = b.NotAfter
			}
		}
		chain[file] = series{map[string]string{"file": file}, float64(end.Unix())}
		expiring[file] = series{map[string]string{"file": file}, 0}
	}
	leaves := map[string]time.Time{}
	for _, l := range certs.Select(certs.ServerNode, nil) {
		file := filepath.Join(tls, l.Name+".crt")
		c := readBundle(t, file)[0]
		if want := strings.ReplaceAll(l.CN, "{node}", node); c.Subject.CommonName != want {
			t.Fatalf("%s: CN %q, want the table's %q", file, c.Subject.CommonName, want)
		}
		expiry[file] = series{map[string]string{"file": file, "subject": c.Subject.String(), "usages": tableUsages(false, l.Usage)}, float64(c.NotAfter.Unix())}
		leaves[file] = c.NotAfter
	}
	fams := scrapeMetrics(t, url)
	checkFamily(t, fams, "kpki_certificate_expiration_seconds", dto.MetricType_GAUGE, "file", expiry)
	checkFamily(t, fams, "kpki_ca_chain_expiration_seconds", dto.MetricType_GAUGE, "file", chain)
	checkFamily(t, fams, "kpki_ca_expiring", dto.MetricType_GAUGE, "file", expiring)
	return leaves
}

// checkCountMetrics checks kpki_certificates_issued_total: kind "ca" once per CA of the
// table (generated at the first start), per kind of the table's server leaves their
// number times rounds, plus signed (by kind) for agents; and kpki_join_requests_total,
// by result, against joins (absent when empty).
func checkCountMetrics(t *testing.T, url string, rounds int, signed, joins map[string]float64) {
	t.Helper()
	want := map[string]series{"ca": {map[string]string{"kind": "ca"}, float64(len(certs.CAs))}}
	add := func(kind string, n float64) {
		s := want[kind]
		s.labels = map[string]string{"kind": kind}
		s.value += n
		want[kind] = s
	}
	for _, l := range certs.Select(certs.ServerNode, nil) {
		add(l.Kind, float64(rounds))
	}
	for kind, n := range signed {
		add(kind, n)
	}
	fams := scrapeMetrics(t, url)
	checkFamily(t, fams, "kpki_certificates_issued_total", dto.MetricType_COUNTER, "kind", want)
	if len(joins) == 0 {
		if f := fams["kpki_join_requests_total"]; f != nil {
			t.Errorf("kpki_join_requests_total exported with no request made: %v", f)
		}
	} else {
		wj := map[string]series{}
		for result, n := range joins {
			wj[result] = series{map[string]string{"result": result}, n}
		}
		checkFamily(t, fams, "kpki_join_requests_total", dto.MetricType_COUNTER, "result", wj)
	}
	checkFamily(t, fams, "kpki_restart_required", dto.MetricType_GAUGE, "", map[string]series{"": {map[string]string{}, 0}})
}

// signAgentLeaf asks the supervisor at base, with the agent token of the data dir dir,
// to sign the agent leaf l for node with node password pw (no node headers when node is
// ""), and returns the status of the answer.
func signAgentLeaf(t *testing.T, base, dir string, l certs.Leaf, node, pw string, c clock.Clock) int {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "server", "agent-token"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := token.Parse(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := api.FetchPinnedCA(t.Context(), base, tok, api.FetchOptions{Clock: c})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := api.NewClient(base, tr, tok.Username, tok.Password)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: node}}, key)
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	if node != "" {
		h.Set(api.HeaderNodeName, node)
		h.Set(api.HeaderNodePassword, pw)
	}
	rep, err := cl.Send(t.Context(), api.Request{Method: http.MethodPost, Path: api.SignPath(l.Name), Body: csr, ContentType: api.ContentTypeCSR, Header: h})
	if err != nil {
		t.Fatal(err)
	}
	return rep.Status
}

// TestExpiryMetricsScraped runs a server with its metrics listener and scrapes it over
// HTTP: the expiry gauges carry one series per certificate of the table, labelled as
// kpki labels them (absolute file, subject, usages) and valued at the NotAfter of the
// file on disk; after a renewal pass they follow the renewed files. The counters carry
// the kinds of the table and the results of real signing requests.
func TestExpiryMetricsScraped(t *testing.T) {
	dir := t.TempDir()
	fc := clock.NewFake(time.Now().Truncate(time.Second))
	cfg := testConfig(t, dir)
	cfg.MetricsAddress = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	cfg.CertValidityDays = 30
	cfg.RenewBeforeDays = 10
	cfg.RenewInterval = 10000 * time.Hour // the test runs the pass itself
	s := startServer(t, cfg, fc, &pki.Stats{})
	defer s.Stop()
	url := "http://" + cfg.MetricsAddress + "/metrics"

	first := checkExpiryMetrics(t, url, dir, cfg.NodeName)
	checkCountMetrics(t, url, 1, nil, nil)
	for file, end := range first {
		if want := fc.Now().Add(30 * 24 * time.Hour); end.Sub(want).Abs() > time.Hour {
			t.Errorf("%s expires %s, want 30 days from %s", file, end, fc.Now())
		}
	}

	// Signing requests of an agent (on the wall clock the client verifies the server
	// with): counted by result; the signed one by its table kind. The expiry gauges stay
	// those of the server's own files.
	agentLeaves := certs.Select(certs.AgentNode, nil)
	if len(agentLeaves) == 0 {
		t.Fatal("the table has no agent leaf")
	}
	l := agentLeaves[0]
	base := "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.SupervisorPort))
	for _, r := range []struct {
		node, pw string
		code     int
	}{
		{"worker-1", "password-of-worker-1", http.StatusOK},
		{"worker-1", "password-of-another-host", http.StatusForbidden},
		{"", "", http.StatusBadRequest},
	} {
		if code := signAgentLeaf(t, base, dir, l, r.node, r.pw, fc); code != r.code {
			t.Fatalf("sign %s for %q: %d, want %d", l.Name, r.node, code, r.code)
		}
	}
	signed, joins := map[string]float64{l.Kind: 1}, map[string]float64{"ok": 1, "forbidden": 1, "bad_request": 1}
	checkCountMetrics(t, url, 1, signed, joins)
	checkExpiryMetrics(t, url, dir, cfg.NodeName)

	// 21 days on, the 30-day leaves are inside the 10-day window.
	fc.Advance(21 * 24 * time.Hour)
	if err := s.RenewNow(); err != nil {
		t.Fatal(err)
	}
	renewed := checkExpiryMetrics(t, url, dir, cfg.NodeName)
	checkCountMetrics(t, url, 2, signed, joins)
	for file, end := range renewed {
		if !end.After(first[file]) {
			t.Errorf("%s: expiry %s after the renewal pass, not after the first %s", file, end, first[file])
		}
	}
}
