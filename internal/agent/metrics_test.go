package agent

import (
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/testport"
)

// scrape fetches the Prometheus text of url and returns every sample by its name and
// labels as printed ("kpki_agent_passes_total{result=\"ok\"}").
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	out := map[string]float64{}
	for _, l := range strings.Split(string(body), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndex(l, " ")
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", l, err)
		}
		out[l[:i]] = v
	}
	return out
}

var expiryLine = regexp.MustCompile(`^kpki_certificate_expiration_seconds\{file="([^"]+)",subject="([^"]*)",usages="([^"]*)"\}$`)

// expiries returns the expiry samples by file.
func expiries(t *testing.T, samples map[string]float64) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for k, v := range samples {
		if m := expiryLine.FindStringSubmatch(k); m != nil {
			out[m[1]] = v
		}
	}
	return out
}

// TestAgentMetrics: with a metrics address the running agent serves the expiry of each
// of its certificate files (as their NotAfter on disk), the certificates the server
// signed by action, and its passes by result; renewals move both.
func TestAgentMetrics(t *testing.T) {
	fx := newFixture(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testport.Free(t)))
	fx.cfg.MetricsAddress = addr
	url := "http://" + addr + "/metrics"
	a, _ := fx.agent()
	passes, stopLoop := fx.runLoop(a)
	stopped := false
	stop := func() error { stopped = true; return stopLoop() }
	defer func() {
		if !stopped {
			_ = stop()
		}
	}()
	if p := nextPass(t, passes); p.err != nil || len(p.res.Issued) != 4 {
		t.Fatalf("first pass: %+v", p)
	}
	files := []string{fx.path(serverCAFile), fx.path(clientCAFile)}
	for _, l := range agentLeaves() {
		files = append(files, fx.path(l.Name+".crt"))
	}
	lastOK := fx.clock.Now()
	check := func(what string, issued, renewed, ok, failed float64) {
		t.Helper()
		s := scrape(t, url)
		exp := expiries(t, s)
		if len(exp) != len(files) {
			t.Errorf("%s: expiry of %d files, want %d: %v", what, len(exp), len(files), exp)
		}
		for _, f := range files {
			c := readCerts(t, f)[0]
			if got, want := exp[f], float64(c.NotAfter.Unix()); got != want {
				t.Errorf("%s: %s expiry %v, want its NotAfter %v (%s)", what, f, got, want, c.NotAfter)
			}
		}
		for k, want := range map[string]float64{
			`kpki_agent_certificates_signed_total{action="issue"}`: issued,
			`kpki_agent_certificates_signed_total{action="renew"}`: renewed,
			`kpki_agent_passes_total{result="ok"}`:                 ok,
			`kpki_agent_passes_total{result="error"}`:              failed,
		} {
			if got, has := s[k]; !has || got != want {
				t.Errorf("%s: %s = %v (present %v), want %v", what, k, got, has, want)
			}
		}
		if got := s["kpki_agent_last_success_timestamp_seconds"]; got != float64(lastOK.Unix()) {
			t.Errorf("%s: last success %v, want %v", what, got, lastOK.Unix())
		}
	}
	check("after the join", 4, 0, 1, 0)

	// Inside the renewal window: four renewals, the new expiries.
	waitTicker(t, fx.clock)
	fx.clock.Advance(276 * day)
	if p := nextPass(t, passes); p.err != nil || len(p.res.Renewed) != 4 {
		t.Fatalf("pass in the window: %+v", p)
	}
	lastOK = fx.clock.Now()
	check("after the renewals", 4, 4, 2, 0)

	// A failed pass counts as an error and leaves the expiries as they are on disk.
	fx.fake.failWith(api.PathClientCA, http.StatusForbidden, "no")
	waitTicker(t, fx.clock)
	fx.clock.Advance(time.Hour)
	if p := nextPass(t, passes); p.err == nil {
		t.Fatalf("pass against a refusing server succeeded: %+v", p)
	}
	check("after a failed pass", 4, 4, 2, 1)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(url); err == nil {
		t.Error("the metrics listener still answers after Run returned")
	}
}

func TestAgentMetricsAddressRefused(t *testing.T) {
	fx := newFixture(t)
	for _, bad := range []string{"nonsense", "127.0.0.1:99999"} {
		fx.cfg.MetricsAddress = bad
		if _, err := New(fx.cfg, Options{}); err == nil || !strings.Contains(err.Error(), "--metrics-address") {
			t.Errorf("New with --metrics-address %q: %v", bad, err)
		}
	}
	// An address in use: Run fails at once, naming it, and writes nothing.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fx.cfg.MetricsAddress = ln.Addr().String()
	a, _ := fx.agent()
	done := make(chan error, 1)
	go func() { done <- a.Run(t.Context()) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "metrics address "+ln.Addr().String()+" is not available") {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not fail on a taken metrics address")
	}
	assertNothingWritten(t, fx.dd)
}
