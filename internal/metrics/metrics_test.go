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

func labelsOf(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// sample is one expected series.
type sample struct {
	labels map[string]string
	value  float64
}

func TestHandlerServesMetrics(t *testing.T) {
	tests := []struct {
		name   string
		update func(m *Metrics)
		want   map[string][]sample // family name -> series; families not listed must be absent
		types  map[string]dto.MetricType
	}{
		{
			name:   "fresh registry",
			update: func(*Metrics) {},
			want:   map[string][]sample{"kpki_restart_required": {{labels: map[string]string{}, value: 0}}},
		},
		{
			name: "every metric set",
			update: func(m *Metrics) {
				m.CertExpiry.WithLabelValues("/var/lib/kpki/server/tls/server-ca.crt", "CN=kpki-server-ca@1", "CA").Set(1.8e9)
				m.CertExpiry.WithLabelValues("/var/lib/kpki/server/tls/client-admin.crt", "CN=system:admin,O=system:masters", "ClientAuth").Set(1.7e9)
				m.Issued.WithLabelValues("client-kubelet").Inc()
				m.Issued.WithLabelValues("client-kubelet").Inc()
				m.Issued.WithLabelValues("serving-kubelet").Add(3)
				m.JoinRequests.WithLabelValues("ok").Inc()
				m.JoinRequests.WithLabelValues("unauthorized").Add(2)
				m.RestartRequired.Set(1)
				m.CAChainExpiry.WithLabelValues("/var/lib/kpki/server/tls/server-ca.crt").Set(1.8e9)
				m.CAExpiring.WithLabelValues("/var/lib/kpki/server/tls/server-ca.crt").Set(1)
				m.CAExpiring.WithLabelValues("/var/lib/kpki/server/tls/client-ca.crt").Set(0)
			},
			want: map[string][]sample{
				"kpki_certificate_expiration_seconds": {
					{labels: map[string]string{"file": "/var/lib/kpki/server/tls/client-admin.crt", "subject": "CN=system:admin,O=system:masters", "usages": "ClientAuth"}, value: 1.7e9},
					{labels: map[string]string{"file": "/var/lib/kpki/server/tls/server-ca.crt", "subject": "CN=kpki-server-ca@1", "usages": "CA"}, value: 1.8e9},
				},
				"kpki_certificates_issued_total": {
					{labels: map[string]string{"kind": "client-kubelet"}, value: 2},
					{labels: map[string]string{"kind": "serving-kubelet"}, value: 3},
				},
				"kpki_join_requests_total": {
					{labels: map[string]string{"result": "ok"}, value: 1},
					{labels: map[string]string{"result": "unauthorized"}, value: 2},
				},
				"kpki_restart_required": {{labels: map[string]string{}, value: 1}},
				"kpki_ca_chain_expiration_seconds": {
					{labels: map[string]string{"file": "/var/lib/kpki/server/tls/server-ca.crt"}, value: 1.8e9},
				},
				"kpki_ca_expiring": {
					{labels: map[string]string{"file": "/var/lib/kpki/server/tls/client-ca.crt"}, value: 0},
					{labels: map[string]string{"file": "/var/lib/kpki/server/tls/server-ca.crt"}, value: 1},
				},
			},
		},
		{
			name: "expiry gauges reset",
			update: func(m *Metrics) {
				m.CertExpiry.WithLabelValues("a.crt", "CN=a", "ServerAuth").Set(1)
				m.CertExpiry.Reset()
				m.CertExpiry.WithLabelValues("b.crt", "CN=b", "ServerAuth").Set(2)
			},
			want: map[string][]sample{
				"kpki_certificate_expiration_seconds": {{labels: map[string]string{"file": "b.crt", "subject": "CN=b", "usages": "ServerAuth"}, value: 2}},
				"kpki_restart_required":               {{labels: map[string]string{}, value: 0}},
			},
		},
	}
	types := map[string]dto.MetricType{
		"kpki_certificate_expiration_seconds": dto.MetricType_GAUGE,
		"kpki_certificates_issued_total":      dto.MetricType_COUNTER,
		"kpki_join_requests_total":            dto.MetricType_COUNTER,
		"kpki_restart_required":               dto.MetricType_GAUGE,
		"kpki_ca_chain_expiration_seconds":    dto.MetricType_GAUGE,
		"kpki_ca_expiring":                    dto.MetricType_GAUGE,
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := New()
			tc.update(m)
			fams, text := scrape(t, m)
			if len(fams) != len(tc.want) {
				t.Errorf("%d metric families, want %d:\n%s", len(fams), len(tc.want), text)
			}
			for name, want := range tc.want {
				fam, ok := fams[name]
				if !ok {
					t.Errorf("%s missing:\n%s", name, text)
					continue
				}
				if fam.GetType() != types[name] {
					t.Errorf("%s type %v, want %v", name, fam.GetType(), types[name])
				}
				if fam.GetHelp() == "" {
					t.Errorf("%s has no help text", name)
				}
				if len(fam.GetMetric()) != len(want) {
					t.Errorf("%s: %d series, want %d:\n%s", name, len(fam.GetMetric()), len(want), text)
					continue
				}
				for i, s := range want {
					got := fam.GetMetric()[i]
					gl := labelsOf(got)
					if len(gl) != len(s.labels) {
						t.Errorf("%s series %d labels %v, want %v", name, i, gl, s.labels)
					}
					for k, v := range s.labels {
						if gl[k] != v {
							t.Errorf("%s series %d label %s = %q, want %q", name, i, k, gl[k], v)
						}
					}
					var value float64
					switch fam.GetType() {
					case dto.MetricType_COUNTER:
						value = got.GetCounter().GetValue()
					case dto.MetricType_GAUGE:
						value = got.GetGauge().GetValue()
					}
					if value != s.value {
						t.Errorf("%s series %d value %v, want %v", name, i, value, s.value)
					}
				}
			}
		})
	}
}

func TestRegistryIsPrivate(t *testing.T) {
	a, b := New(), New()
	a.Issued.WithLabelValues("client-kubelet").Inc()
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

func TestLabelCardinality(t *testing.T) {
	tests := []struct {
		name   string
		labels func(m *Metrics) error
	}{
		{name: "expiry needs file, subject, usages", labels: func(m *Metrics) error {
			_, err := m.CertExpiry.GetMetricWithLabelValues("f", "s")
			return err
		}},
		{name: "CA expiring needs file only", labels: func(m *Metrics) error {
			_, err := m.CAExpiring.GetMetricWithLabelValues("f", "s")
			return err
		}},
		{name: "issued needs kind", labels: func(m *Metrics) error {
			_, err := m.Issued.GetMetricWith(prometheus.Labels{"result": "ok"})
			return err
		}},
		{name: "join requests need result", labels: func(m *Metrics) error {
			_, err := m.JoinRequests.GetMetricWith(prometheus.Labels{"kind": "x"})
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.labels(New()); err == nil {
				t.Error("wrong labels accepted")
			}
		})
	}
}
