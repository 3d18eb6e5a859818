// Package metrics defines kpki's Prometheus metrics on a registry of its own (no global
// state) and serves them in the Prometheus text format.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics is the set of kpki metrics.
type Metrics struct {
	Registry        *prometheus.Registry
	CertExpiry      *prometheus.GaugeVec
	CAChainExpiry   *prometheus.GaugeVec
	CAExpiring      *prometheus.GaugeVec
	Issued          *prometheus.CounterVec
	JoinRequests    *prometheus.CounterVec
	RestartRequired prometheus.Gauge
}

// New creates and registers the metrics.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		CertExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kpki_certificate_expiration_seconds",
			Help: "Expiry of each certificate kpki manages, as Unix time in seconds.",
		}, []string{"file", "subject", "usages"}),
		CAChainExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kpki_ca_chain_expiration_seconds",
			Help: "Earliest expiry, as Unix time in seconds, of each CA file's signing chain (the CA and its bundle up to the root): no leaf it signs outlives it.",
		}, []string{"file"}),
		CAExpiring: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kpki_ca_expiring",
			Help: "1 when the CA file's signing chain expires within the CA warning window (--ca-warn-days), else 0.",
		}, []string{"file"}),
		Issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpki_certificates_issued_total",
			Help: "Certificates issued or renewed, by kind.",
		}, []string{"kind"}),
		JoinRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpki_join_requests_total",
			Help: "Node join and certificate requests, by result.",
		}, []string{"result"}),
		RestartRequired: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kpki_restart_required",
			Help: "1 when the CA material in the datastore changed and this server must be restarted to use it.",
		}),
	}
	m.Registry.MustRegister(m.CertExpiry, m.CAChainExpiry, m.CAExpiring, m.Issued, m.JoinRequests, m.RestartRequired)
	return m
}

// Handler serves the registry.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}
