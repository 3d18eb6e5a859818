// Package metrics defines kpki's Prometheus metrics on a registry of its own (no global
// state) and serves them in the Prometheus text format.
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kpki/kpki/internal/httplimit"
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

// httpServer is the http.Server Serve runs: /metrics, with the limits lim.
func (m *Metrics) httpServer(lim httplimit.Limits) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	return lim.Server(mux)
}

// Serve serves /metrics over plain HTTP on ln until ctx ends, with the limits lim
// (httplimit.Default for zero fields): a client that sends its request slowly, or
// never, is disconnected.
func (m *Metrics) Serve(ctx context.Context, ln net.Listener, lim httplimit.Limits) error {
	srv := m.httpServer(lim)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}
