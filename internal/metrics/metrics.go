// Package metrics defines kpki's Prometheus metrics on a registry of its own (no global
// state) and serves them in the Prometheus text format.
package metrics

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"strings"
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
	// LiveApply counts the server's live applies of a changed bootstrap record, by
	// result; CADisruptive is 1 while the CA set last applied live broke continuity.
	LiveApply    *prometheus.CounterVec
	CADisruptive prometheus.Gauge
	// CAGenerationNodes counts the nodes whose last status report holds each CA
	// generation, by role.
	CAGenerationNodes *prometheus.GaugeVec
}

// New creates and registers the metrics.
func New() *Metrics {
	m := &Metrics{
		Registry:   prometheus.NewRegistry(),
		CertExpiry: newCertExpiry(),
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
			Help: "1 when the CA material in the datastore changed and this server could not take it live: it must be restarted to use it.",
		}),
		LiveApply: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpki_bootstrap_live_apply_total",
			Help: "Live applies of a changed bootstrap record (CA rotation) by this server, by result (ok, failed).",
		}, []string{"result"}),
		CADisruptive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kpki_ca_rotation_disruptive",
			Help: "1 when the CA set this server last applied live is a new root or service-account key set that breaks continuity (rotate-ca --force): clients need the new token and agents must re-join.",
		}),
		CAGenerationNodes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kpki_ca_generation_nodes",
			Help: "Nodes whose last status report holds the CA generation, by role (server or agent); kpki certificate rotate-ca --status lists them.",
		}, []string{"generation", "role"}),
	}
	m.Registry.MustRegister(m.CertExpiry, m.CAChainExpiry, m.CAExpiring, m.Issued, m.JoinRequests, m.RestartRequired, m.LiveApply, m.CADisruptive, m.CAGenerationNodes)
	return m
}

// newCertExpiry is kpki_certificate_expiration_seconds, of the server and of the agent
// alike.
func newCertExpiry() *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kpki_certificate_expiration_seconds",
		Help: "Expiry of each certificate kpki manages, as Unix time in seconds.",
	}, []string{"file", "subject", "usages"})
}

// SetCertExpiry records the expiry of c, the first certificate of file, in g (a
// kpki_certificate_expiration_seconds vector).
func SetCertExpiry(g *prometheus.GaugeVec, file string, c *x509.Certificate) {
	g.WithLabelValues(file, c.Subject.String(), Usages(c)).Set(float64(c.NotAfter.Unix()))
}

// Usages is the usages label of a certificate: "ca" for a CA, then "server" and
// "client" for its extended key usages, comma-separated.
func Usages(c *x509.Certificate) string {
	var u []string
	if c.IsCA {
		u = append(u, "ca")
	}
	for _, e := range c.ExtKeyUsage {
		switch e {
		case x509.ExtKeyUsageServerAuth:
			u = append(u, "server")
		case x509.ExtKeyUsageClientAuth:
			u = append(u, "client")
		}
	}
	return strings.Join(u, ",")
}

// Results of an agent's CA check, the values of kpki_agent_ca_checks_total's result
// label.
const (
	CACheckUnchanged = "unchanged"
	CACheckChanged   = "changed"
	CACheckFailed    = "failed"
)

// Agent is the set of metrics of `kpki agent --metrics-address`.
type Agent struct {
	Registry *prometheus.Registry
	// CertExpiry holds the node's certificates (its four leaves and the two CA
	// bundles), as the server's kpki_certificate_expiration_seconds holds its own.
	CertExpiry *prometheus.GaugeVec
	// Signed counts the certificates the server signed for the agent, by action:
	// "issue" (a new key) or "renew" (the key kept).
	Signed *prometheus.CounterVec
	// Passes counts certificate passes by result, "ok" or "error".
	Passes *prometheus.CounterVec
	// LastSuccess is the Unix time of the last pass that succeeded.
	LastSuccess prometheus.Gauge
	// CAUntrusted is 1 while the server presents a CA the agent does not trust.
	CAUntrusted prometheus.Gauge
	// TrustedRoots counts the server CA roots the agent trusts.
	TrustedRoots prometheus.Gauge
	// CAChecks counts the checks of the server's CAs between passes, by result:
	// "unchanged", "changed" (a pass ran at once) or "failed".
	CAChecks *prometheus.CounterVec
}

// NewAgent creates and registers the agent's metrics.
func NewAgent() *Agent {
	m := &Agent{
		Registry:   prometheus.NewRegistry(),
		CertExpiry: newCertExpiry(),
		Signed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpki_agent_certificates_signed_total",
			Help: "Certificates the server signed for this agent, by action: issue (a new key) or renew (the key kept).",
		}, []string{"action"}),
		Passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpki_agent_passes_total",
			Help: "Certificate passes (join or renew) of this agent, by result: ok or error.",
		}, []string{"result"}),
		LastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kpki_agent_last_success_timestamp_seconds",
			Help: "Unix time of this agent's last successful certificate pass.",
		}),
		CAUntrusted: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kpki_agent_ca_untrusted",
			Help: "1 while the server presents a CA that chains to no root this agent trusts (a CA replaced with rotate-ca --force): the agent keeps its certificates and needs the cluster's current token and a restart. 0 after a pass that verified the server.",
		}),
		TrustedRoots: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kpki_agent_trusted_roots",
			Help: "Server CA roots this agent trusts: the one its token pinned and each added by a cross-signed rotation.",
		}),
		CAChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kpki_agent_ca_checks_total",
			Help: "Checks of the server's CAs between certificate passes (every --ca-check-interval), by result: unchanged, changed (a pass ran at once) or failed.",
		}, []string{"result"}),
	}
	for _, a := range []string{"issue", "renew"} {
		m.Signed.WithLabelValues(a)
	}
	for _, r := range []string{"ok", "error"} {
		m.Passes.WithLabelValues(r)
	}
	for _, r := range []string{CACheckUnchanged, CACheckChanged, CACheckFailed} {
		m.CAChecks.WithLabelValues(r)
	}
	m.Registry.MustRegister(m.CertExpiry, m.Signed, m.Passes, m.LastSuccess, m.CAUntrusted, m.TrustedRoots, m.CAChecks)
	return m
}

// Serve serves the agent's /metrics as Metrics.Serve does the server's.
func (m *Agent) Serve(ctx context.Context, ln net.Listener, lim httplimit.Limits) error {
	return serve(ctx, ln, httpServer(m.Registry, lim))
}

// Handler serves the registry.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}

// httpServer is the http.Server Serve runs: /metrics, with the limits lim.
func (m *Metrics) httpServer(lim httplimit.Limits) *http.Server {
	return httpServer(m.Registry, lim)
}

func httpServer(reg *prometheus.Registry, lim httplimit.Limits) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return lim.Server(mux)
}

// Serve serves /metrics over plain HTTP on ln until ctx ends, with the limits lim
// (httplimit.Default for zero fields): a client that sends its request slowly, or
// never, is disconnected.
func (m *Metrics) Serve(ctx context.Context, ln net.Listener, lim httplimit.Limits) error {
	return serve(ctx, ln, m.httpServer(lim))
}

func serve(ctx context.Context, ln net.Listener, srv *http.Server) error {
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
