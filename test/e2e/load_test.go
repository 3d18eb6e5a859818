package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/agent"
	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/load"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

// loadLog sends kpki-load's progress lines to the test log.
type loadLog struct{ t *testing.T }

func (w loadLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// loadSignAs posts a fresh CSR for node with node password pw, authenticated with tok,
// over TLS verified against the server's server-ca.crt, and returns the status.
func loadSignAs(t *testing.T, s *kpkiServer, tok token.Token, node, pw string) int {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := agent.BuildCSR(key, pki.LeafProfile{CommonName: "system:node:" + node})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, s.SupervisorURL()+api.SignPath(load.DefaultCert), bytes.NewReader(csr))
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(tok.Username, tok.Password)
	req.Header.Set("Content-Type", api.ContentTypeCSR)
	req.Header.Set(api.HeaderNodeName, node)
	req.Header.Set(api.HeaderNodePassword, pw)
	cfg, err := s.clientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// TestLoad runs kpki-load (package internal/load, which cmd/kpki-load runs) against a
// real kpki server: every scenario completes with correct certificates, the JSON report,
// refused tokens, and a cancelled run. Every run is bounded by its request count.
func TestLoad(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "data")
	s := startServer(t, dd)
	s.WaitReady(t)
	agentToken := readTokenFile(t, dd, "agent-token")

	t.Run("scenarios", func(t *testing.T) { loadScenarios(t, s, agentToken) })
	t.Run("main json", func(t *testing.T) { loadMainJSON(t, s) })
	t.Run("refuses a bad token", func(t *testing.T) { loadRefusesBadToken(t, s, agentToken) })
	t.Run("stops when cancelled", func(t *testing.T) { loadStopsWhenCancelled(t, s, agentToken) })
	s.Stop(t)
}

// loadScenarios runs ping, renew and join: every request succeeds, every issued
// certificate verifies against client-ca.crt, is for the CSR's key and names the node,
// and each join registered its own node name.
func loadScenarios(t *testing.T, s *kpkiServer, agentToken string) {
	const requests, nodes = 40, 5
	var mu sync.Mutex
	issued := map[load.Scenario][]load.Issued{}
	cfg := load.Config{
		Server:      s.SupervisorURL(),
		Token:       agentToken,
		Nodes:       nodes,
		Requests:    requests,
		Concurrency: 4,
		Duration:    5 * time.Minute,
		Scenarios:   []load.Scenario{load.Ping, load.Renew, load.Join},
		OnIssued: func(i load.Issued) {
			mu.Lock()
			issued[i.Scenario] = append(issued[i.Scenario], i)
			mu.Unlock()
		},
	}
	rep, err := load.Run(context.Background(), cfg, loadLog{t})
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", text.String())

	if rep.Stopped != "" || len(rep.NotRun) > 0 || len(rep.Results) != 3 {
		t.Fatalf("run stopped early (%q, not run %v) or has %d results", rep.Stopped, rep.NotRun, len(rep.Results))
	}
	for _, res := range rep.Results {
		if res.Requests != requests || res.OK != requests || len(res.Errors) != 0 || res.Interrupted != 0 || res.Stopped != "requests" {
			t.Errorf("%s: %d requests, %d ok, errors %v (%v), %d interrupted, stopped by %q; want %d ok and nothing else",
				res.Scenario, res.Requests, res.OK, res.Errors, res.FirstErrors, res.Interrupted, res.Stopped, requests)
		}
		if (res.Scenario == load.Ping) != (res.VsPing == nil) {
			t.Errorf("%s: ratio to ping %+v", res.Scenario, res.VsPing)
		}
	}
	if rep.ErrorCount() != 0 {
		t.Errorf("ErrorCount() = %d", rep.ErrorCount())
	}

	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(readFile(t, filepath.Join(s.TLSDir(), "client-ca.crt"))) {
		t.Fatal("client-ca.crt holds no certificate")
	}
	for _, sc := range []load.Scenario{load.Renew, load.Join} {
		if len(issued[sc]) != requests {
			t.Errorf("%s: %d certificates handed to OnIssued, want %d", sc, len(issued[sc]), requests)
		}
		for _, is := range issued[sc] {
			list, err := pki.ParseCerts(is.Reply)
			if err != nil {
				t.Fatalf("%s %s: reply: %v", sc, is.Node, err)
			}
			leaf := list[0]
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("%s %s: certificate does not verify against client-ca.crt: %v", sc, is.Node, err)
			}
			csr, err := x509.ParseCertificateRequest(is.CSR)
			if err != nil {
				t.Fatal(err)
			}
			if !pki.PublicKeysEqual(csr.PublicKey, leaf.PublicKey) {
				t.Errorf("%s %s: certificate is not for the CSR's key", sc, is.Node)
			}
			if want := "system:node:" + is.Node; leaf.Subject.CommonName != want {
				t.Errorf("%s: CN %q, want %q", sc, leaf.Subject.CommonName, want)
			}
		}
	}

	names := func(sc load.Scenario) map[string]bool {
		set := map[string]bool{}
		for _, is := range issued[sc] {
			set[is.Node] = true
		}
		return set
	}
	if got := len(names(load.Renew)); got != nodes {
		t.Errorf("renew signed for %d distinct nodes, want %d", got, nodes)
	}
	// Each join request registered its own node name: another node password for any of
	// them is refused.
	joined := names(load.Join)
	if len(joined) != requests {
		t.Fatalf("join used %d distinct node names for %d requests", len(joined), requests)
	}
	tok, err := token.Parse(cfg.Token)
	if err != nil {
		t.Fatal(err)
	}
	for name := range joined {
		if !strings.HasPrefix(name, load.DefaultNamePrefix+"-"+rep.RunID+"-join-") {
			t.Errorf("join node name %q does not carry the run id %s", name, rep.RunID)
		}
		other, err := token.GeneratePassword()
		if err != nil {
			t.Fatal(err)
		}
		if code := loadSignAs(t, s, tok, name, other); code != http.StatusForbidden {
			t.Errorf("node %s with another node password: %d, want 403 (registered by the join run)", name, code)
		}
	}
}

// loadMainJSON runs the command line with --json: the report is JSON with the ratios to
// ping.
func loadMainJSON(t *testing.T, s *kpkiServer) {
	tokenFile := filepath.Join(s.DataDir, "server", "agent-token")
	var stdout, stderr bytes.Buffer
	code := load.Main(context.Background(), []string{
		"--server", s.SupervisorURL(), "--token-file", tokenFile, "--scenario", "ping,join",
		"--requests", "10", "--concurrency", "3", "--keep-alive", "--json",
	}, &stdout, &stderr)
	t.Logf("stderr:\n%s", stderr.String())
	if code != load.ExitOK {
		t.Fatalf("exit %d, want 0", code)
	}
	var rep load.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("stdout is not a JSON report: %v\n%s", err, stdout.String())
	}
	if rep.Connections != "reused" || rep.Nodes != 0 || len(rep.Results) != 2 {
		t.Fatalf("report: %+v", rep)
	}
	join := rep.Results[1]
	if join.Scenario != load.Join || join.OK != 10 || join.VsPing == nil || join.VsPing.P50 <= 0 || join.VsPing.Throughput <= 0 {
		t.Errorf("join result: %+v", join)
	}
	for _, key := range []string{`"throughput_rps"`, `"p50"`, `"p99"`, `"vs_ping"`, `"errors": {}`} {
		if !strings.Contains(stdout.String(), key) {
			t.Errorf("JSON report has no %s:\n%s", key, stdout.String())
		}
	}
}

// loadRefusesBadToken: a token of another CA, a wrong password or a malformed token stops
// the run before any certificate is issued, with one clear error.
func loadRefusesBadToken(t *testing.T, s *kpkiServer, agentToken string) {
	good, err := token.Parse(agentToken)
	if err != nil {
		t.Fatal(err)
	}
	other := sha256.Sum256([]byte("another cluster"))
	cases := map[string]struct {
		tok  string
		want string
	}{
		"wrong CA hash":  {token.Format(hex.EncodeToString(other[:]), good.Username, good.Password), "token CA hash does not match the Cluster CA certificate hash"},
		"wrong password": {token.Format(good.CAHash, good.Username, "0123456789abcdef0123456789abcdef"), "refused the token's credentials"},
		"short token":    {good.Password, "must be a secure agent token"},
		"not a token":    {"K10abc::node:pw", "invalid token CA hash length"},
	}
	for name, tc := range cases {
		issued := 0
		cfg := load.Config{Server: s.SupervisorURL(), Token: tc.tok, Nodes: 2, Requests: 5, Concurrency: 1, Duration: time.Minute,
			Scenarios: []load.Scenario{load.Ping, load.Renew, load.Join}, OnIssued: func(load.Issued) { issued++ }}
		rep, err := load.Run(context.Background(), cfg, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Run = %v, want an error containing %q", name, err, tc.want)
		}
		if rep != nil || issued != 0 {
			t.Errorf("%s: a refused token still ran (%d certificates issued)", name, issued)
		}
	}
}

// loadStopsWhenCancelled ends the context at the first issued certificate: the run stops
// sending, reports what it measured and names the scenarios it did not run.
func loadStopsWhenCancelled(t *testing.T, s *kpkiServer, agentToken string) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	issued := 0
	cfg := load.Config{Server: s.SupervisorURL(), Token: agentToken, Nodes: 2, Requests: 500, Concurrency: 2, Duration: 5 * time.Minute,
		Scenarios: []load.Scenario{load.Join, load.Renew, load.Ping},
		OnIssued: func(load.Issued) {
			mu.Lock()
			issued++
			mu.Unlock()
			cancel()
		}}
	rep, err := load.Run(ctx, cfg, loadLog{t})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Stopped != "interrupted" || len(rep.Results) != 1 || len(rep.NotRun) != 2 || rep.NotRun[0] != load.Renew {
		t.Fatalf("stopped %q, %d results, not run %v; want interrupted during join", rep.Stopped, len(rep.Results), rep.NotRun)
	}
	join := rep.Results[0]
	if join.Stopped != "interrupted" || join.OK < 1 || join.OK > cfg.Concurrency || join.OK != issued || len(join.Errors) != 0 {
		t.Errorf("join: stopped %q, %d ok (%d issued), errors %v; want interrupted after at most %d", join.Stopped, join.OK, issued, join.Errors, cfg.Concurrency)
	}
	var out bytes.Buffer
	if err := rep.WriteText(&out); err != nil || !strings.Contains(out.String(), "not run: renew, ping") {
		t.Errorf("text report: %v\n%s", err, out.String())
	}

	cfg.OnIssued = func(load.Issued) { t.Error("a certificate was issued with an ended context") }
	if _, err := load.Run(ctx, cfg, nil); err == nil {
		t.Error("Run with an ended context succeeded")
	}
}
