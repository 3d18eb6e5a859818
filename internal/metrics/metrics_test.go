package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape fetches m's handler over HTTP and parses the Prometheus text answer.
func scrape(t *testing.T, m *Metrics) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	req, err := http.NewRequest(http.MethodGet, srv.URL+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type = %q, want Prometheus text", ct)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("answer is not Prometheus text: %v\n%s", err, body)
	}
	return fams, string(body)
}

func TestRegistryIsPrivate(t *testing.T) {
	a, b := New(), New()
	a.Issued.WithLabelValues("kubelet").Inc()
	a.RestartRequired.Set(1)

	famsB, _ := scrape(t, b)
	if _, ok := famsB["kpki_certificates_issued_total"]; ok {
		t.Error("a counter of one Metrics shows in another")
	}
	if v := famsB["kpki_restart_required"].GetMetric()[0].GetGauge().GetValue(); v != 0 {
		t.Errorf("second registry: kpki_restart_required = %v, want 0", v)
	}

	global, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range global {
		if strings.HasPrefix(f.GetName(), "kpki_") {
			t.Errorf("%s registered on the global registry", f.GetName())
		}
	}
	// Only kpki's own metrics: no Go runtime or process collectors.
	fams, _ := scrape(t, a)
	for name := range fams {
		if !strings.HasPrefix(name, "kpki_") {
			t.Errorf("unexpected metric %s on the kpki registry", name)
		}
	}
}
