// Package agent is the node side of joining a kpki cluster: it pins the cluster CA with
// the join token, has the supervisor sign the node's certificates (kubelet client and
// serving, kube-proxy, kpki-controller) for keys generated on the node, writes them with
// their kubeconfigs under <data-dir>/agent, and renews them before they expire. Private
// keys never leave the node; the server decides what each certificate says. It owns no
// certificate rules of its own: the certs table and planner decide what is due.
package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/httplimit"
	"github.com/kpki/kpki/internal/metrics"
	"github.com/kpki/kpki/internal/node"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/sdnotify"
	"github.com/kpki/kpki/internal/token"
	"github.com/kpki/kpki/internal/trust"
)

// DefaultUser is the basic-auth user when the token names none.
const DefaultUser = "node"

// Files under <data-dir>/agent that are not rows of the certs tables (leaves, CA
// copies, kubeconfigs).
const (
	NodePasswordFile = "node-password"
	LockFile         = "kpki-agent.lock"
	// TrustFile holds the server CA roots the agent trusts and the cross-signed
	// certificates that vouched for the later ones (trust.Store).
	TrustFile = "server-ca-roots.pem"
)

// Config is what `kpki agent` is given.
type Config struct {
	// ServerURL is the supervisor, https://host:port, or several supervisors separated
	// by commas: a pass that fails with a transient error moves on to the next one.
	ServerURL string
	// Token is a secure token K10<hash>::<user>:<password> or a short token (a password).
	Token   string
	DataDir string
	// NodeName defaults to the hostname; it is lower-cased.
	NodeName string
	// NodeIPs are IP addresses, each entry possibly a comma-separated list.
	NodeIPs []string
	// APIServerPort is the kube-apiserver port written into the kubeconfigs, on the host
	// of the first ServerURL.
	APIServerPort   int
	RenewBeforeDays int
	RenewInterval   time.Duration
	// CACheckInterval is how often Run, between passes, fetches the server's CAs over
	// the channel it trusts and compares them with its copies on disk; a difference runs
	// a pass at once. 0: no check, a CA rotation is noticed on the next pass. At most
	// RenewInterval.
	CACheckInterval time.Duration
	// RetryDeadline bounds how long one pass is repeated after transient failures
	// (a server unreachable or answering 5xx, a timeout), with growing waits and moving
	// through the server URLs. 0: every server is tried once, without waiting.
	RetryDeadline time.Duration
	// MetricsAddress is where Run serves Prometheus metrics (host:port, plain HTTP at
	// /metrics); "" serves none. RunOnce never serves them.
	MetricsAddress string
}

// Defaults returns the default configuration.
func Defaults() Config {
	return Config{
		DataDir:         datadir.DefaultRoot,
		APIServerPort:   6443,
		RenewBeforeDays: certs.DefaultRenewBeforeDays,
		RenewInterval:   time.Hour,
		CACheckInterval: 5 * time.Minute,
	}
}

// Options are the agent's collaborators.
type Options struct {
	Log   *slog.Logger // nil: discard
	Clock clock.Clock  // nil: the wall clock
	// Transport is cloned for every connection the agent makes (proxy, dialer,
	// timeouts); its TLS settings are replaced. nil: a clone of http.DefaultTransport.
	Transport *http.Transport
	// OnPass, when set, is called by Run after every pass.
	OnPass func(Result, error)
}

// Result says what one pass changed.
type Result struct {
	// Issued are certificate files signed for a new key.
	Issued []string
	// Renewed are certificate files signed again for their existing key.
	Renewed []string
	// Rebundled are certificate files whose CA bundle was rewritten; nothing was signed.
	Rebundled []string
	// Written is every file whose content changed, certificates and keys included.
	Written []string
}

// Signed reports how many certificates the server signed in the pass.
func (r Result) Signed() int { return len(r.Issued) + len(r.Renewed) }

// Agent joins a cluster and keeps the node's certificates current.
type Agent struct {
	cfg         Config
	log         *slog.Logger
	clock       clock.Clock
	issuer      *pki.Issuer
	transport   *http.Transport
	onPass      func(Result, error)
	tok         token.Token
	user        string
	servers     []*url.URL
	cur         int      // index in servers of the server the next pass starts on
	base        *url.URL // the server of the current attempt
	apiServer   string
	layout      datadir.Layout
	nodeName    string
	nodeIPs     []net.IP
	renewBefore time.Duration

	lock *datadir.FileLock
	// trust is the server CA trust of the last pass of this process: later passes verify
	// the server against its roots and accept a changed CA only when it chains to one of
	// them (or the token names it). nil until the first pass has pinned or resumed it.
	trust       *trust.Trust
	warnedShort bool
	// checkFailing is set from a failed CA check to the next one that succeeds: one
	// warning per streak of failures.
	checkFailing bool

	sleep  func(ctx context.Context, d time.Duration) error
	jitter func(d time.Duration) time.Duration

	metrics *metrics.Agent
}

// ParseServerURL checks that s is https://host[:port] (a trailing slash allowed) and
// returns it reduced to scheme and host.
func ParseServerURL(s string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil || u.Scheme != "https" || u.Hostname() == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("--server %q must look like https://host:port", s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("--server %q: port %q is not a port number (1-65535)", s, p)
		}
	}
	return &url.URL{Scheme: "https", Host: u.Host}, nil
}

// New validates cfg. It reads nothing from disk and contacts nothing.
func New(cfg Config, opts Options) (*Agent, error) {
	a := &Agent{cfg: cfg, log: opts.Log, clock: opts.Clock, onPass: opts.OnPass, jitter: jitter, metrics: metrics.NewAgent()}
	if a.log == nil {
		a.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if a.clock == nil {
		a.clock = clock.Real{}
	}
	a.sleep = func(ctx context.Context, d time.Duration) error { return clock.Sleep(ctx, a.clock, d) }
	a.issuer = pki.NewIssuer(a.clock, nil)
	if opts.Transport != nil {
		a.transport = opts.Transport.Clone()
	} else {
		a.transport = http.DefaultTransport.(*http.Transport).Clone()
	}

	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	seen := map[string]bool{}
	for _, s := range strings.Split(cfg.ServerURL, ",") {
		if strings.TrimSpace(s) == "" {
			continue
		}
		if u, err := ParseServerURL(s); err != nil {
			errs = append(errs, err)
		} else if !seen[u.String()] {
			seen[u.String()] = true
			a.servers = append(a.servers, u)
		}
	}
	if len(a.servers) == 0 && len(errs) == 0 {
		bad("--server is required: the URL of a kpki server, https://host:%d", api.DefaultSupervisorPort)
	} else if len(a.servers) > 0 {
		a.base = a.servers[0]
	}
	if strings.TrimSpace(cfg.Token) == "" {
		bad("--token is required")
	} else if t, err := token.Parse(cfg.Token); err != nil {
		bad("--token: %w", err)
	} else {
		a.tok = t
		a.user = t.Username
		if a.user == "" {
			a.user = DefaultUser
		}
	}
	if cfg.DataDir == "" {
		bad("--data-dir must not be empty")
	} else if abs, err := filepath.Abs(cfg.DataDir); err != nil {
		bad("--data-dir %s: %v", cfg.DataDir, err)
	} else {
		a.layout = datadir.Layout{Root: abs}
	}
	if n, err := node.Name(cfg.NodeName); err != nil {
		bad("%v", err)
	} else {
		a.nodeName = n
	}
	if ips, err := node.ParseIPs(cfg.NodeIPs); err != nil {
		bad("%v", err)
	} else {
		a.nodeIPs = ips
	}
	if cfg.APIServerPort < 1 || cfg.APIServerPort > 65535 {
		bad("--api-server-port %d is not a port number (1-65535)", cfg.APIServerPort)
	}
	if cfg.RenewBeforeDays < 0 {
		bad("--renew-before-days %d must not be negative", cfg.RenewBeforeDays)
	}
	if cfg.RenewInterval <= 0 {
		bad("--renew-interval %s must be positive", cfg.RenewInterval)
	}
	switch {
	case cfg.CACheckInterval < 0:
		bad("--ca-check-interval %s must not be negative (0 turns the CA check off)", cfg.CACheckInterval)
	case cfg.RenewInterval > 0 && cfg.CACheckInterval > cfg.RenewInterval:
		bad("--ca-check-interval %s must not be longer than --renew-interval %s (0 turns the CA check off)", cfg.CACheckInterval, cfg.RenewInterval)
	}
	if cfg.RetryDeadline < 0 {
		bad("--retry-deadline %s must not be negative", cfg.RetryDeadline)
	}
	if cfg.MetricsAddress != "" {
		if _, port, err := net.SplitHostPort(cfg.MetricsAddress); err != nil {
			bad("--metrics-address %q must be host:port: %v", cfg.MetricsAddress, err)
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			bad("--metrics-address %q: port %q is not a port number", cfg.MetricsAddress, port)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	a.renewBefore = time.Duration(cfg.RenewBeforeDays) * 24 * time.Hour
	a.apiServer = "https://" + net.JoinHostPort(a.base.Hostname(), strconv.Itoa(cfg.APIServerPort))
	if len(a.nodeIPs) == 0 {
		a.nodeIPs = defaultNodeIPs(routeIP(a.base))
	}
	return a, nil
}

// NodeName is the node name the agent registers.
func (a *Agent) NodeName() string { return a.nodeName }

// serverList is the server URLs, comma-separated.
func (a *Agent) serverList() string {
	names := make([]string, len(a.servers))
	for i, u := range a.servers {
		names[i] = u.String()
	}
	return strings.Join(names, ",")
}

// retryMin is the first delay before retrying a failed pass; it doubles up to the renew
// interval.
const retryMin = 10 * time.Second

// Run runs a pass at once and then one every renew interval until ctx ends, when it
// returns nil. Between passes that succeeded it checks the server's CAs every CA check
// interval and runs the next pass at once when they changed (checkCA). A pass that
// fails with a transient error is repeated up to the retry deadline; a pass that still
// failed is logged and run again, first after 10 s and then after doubling delays up to
// the renew interval. Only a lock held by another process ends Run with an error.
func (a *Agent) Run(ctx context.Context) error {
	defer a.release()
	if err := a.lockIfPresent(); err != nil {
		return err
	}
	stopMetrics, err := a.serveMetrics(ctx)
	if err != nil {
		return err
	}
	defer stopMetrics()
	a.log.Info("kpki agent starting", "server", a.serverList(), "node", a.nodeName, "data-dir", a.layout.Agent())
	retry := time.Duration(0)
	ready := false
	for {
		res, err := a.passWithRetry(ctx)
		if ctx.Err() != nil {
			a.stopping()
			return nil
		}
		a.recordPass(res, err)
		if err == nil && !ready {
			ready = true
			if _, err := sdnotify.Notify(sdnotify.Ready); err != nil {
				a.log.Warn("could not tell systemd the agent is ready", "error", err)
			}
		}
		if a.onPass != nil {
			a.onPass(res, err)
		}
		wait := a.cfg.RenewInterval
		if err != nil {
			if errors.Is(err, datadir.ErrLocked) {
				return err
			}
			retry = min(max(2*retry, retryMin), a.cfg.RenewInterval)
			wait = retry
			a.log.Error("certificate pass failed; will retry", "error", err, "retry-in", wait)
		} else {
			retry = 0
		}
		// After a failed pass the retries follow the CA; checks run between passes that
		// succeeded.
		if !a.waitNextPass(ctx, wait, err == nil) {
			a.stopping()
			return nil
		}
	}
}

// stopping logs the shutdown and tells systemd about it.
func (a *Agent) stopping() {
	a.log.Info("kpki agent stopping")
	_, _ = sdnotify.Notify(sdnotify.Stopping)
}

// RunOnce runs one pass: join the cluster or renew what is due. A pass that fails with
// a transient error is repeated up to the retry deadline.
func (a *Agent) RunOnce(ctx context.Context) (Result, error) {
	defer a.release()
	if err := a.lockIfPresent(); err != nil {
		return Result{}, err
	}
	res, err := a.passWithRetry(ctx)
	if err != nil && ctx.Err() != nil {
		return res, fmt.Errorf("interrupted before the pass completed: %w", err)
	}
	a.recordPass(res, err)
	return res, err
}

// serveMetrics starts the metrics listener when a metrics address is set; the
// function it returns stops it and waits for it.
func (a *Agent) serveMetrics(ctx context.Context) (func(), error) {
	if a.cfg.MetricsAddress == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", a.cfg.MetricsAddress)
	if err != nil {
		return nil, fmt.Errorf("metrics address %s is not available: %w", a.cfg.MetricsAddress, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.metrics.Serve(ctx, ln, httplimit.Default()); err != nil {
			a.log.Error("metrics listener failed", "address", a.cfg.MetricsAddress, "error", err)
		}
	}()
	a.log.Info("serving metrics", "address", "http://"+ln.Addr().String()+"/metrics")
	return func() { cancel(); <-done }, nil
}

// recordPass updates the metrics after a pass: its result, what the server signed, and
// the expiry of every certificate file of the node as it now is on disk.
func (a *Agent) recordPass(res Result, err error) {
	m := a.metrics
	if err != nil {
		m.Passes.WithLabelValues("error").Inc()
	} else {
		m.Passes.WithLabelValues("ok").Inc()
		m.LastSuccess.Set(float64(a.clock.Now().Unix()))
	}
	switch {
	case err == nil:
		m.CAUntrusted.Set(0)
	case errors.Is(err, ErrCAUntrusted):
		m.CAUntrusted.Set(1)
		var roots []*x509.Certificate
		if a.trust != nil {
			roots = a.trust.Roots
		}
		a.log.Error("the server presents a CA this agent does not trust: its certificates are kept and no new root is trusted. "+
			"If the cluster CA was replaced without a cross-signed root (rotate-ca --force), give this agent the cluster's current agent token "+
			"(kpki token show on a server) and restart it",
			"server", a.base.String(), "trusted-roots", rootNames(roots), "error", err)
	}
	if a.trust != nil {
		m.TrustedRoots.Set(float64(len(a.trust.Roots)))
	}
	m.Signed.WithLabelValues("issue").Add(float64(len(res.Issued)))
	m.Signed.WithLabelValues("renew").Add(float64(len(res.Renewed)))
	m.CertExpiry.Reset()
	for _, f := range a.certFiles() {
		if c := datadir.FirstCert(f); c != nil {
			metrics.SetCertExpiry(m.CertExpiry, f, c)
		}
	}
}

// lockIfPresent takes the agent lock when the agent directory already exists; a first
// join takes it just before its first write, so that a join refused early leaves
// nothing on disk.
func (a *Agent) lockIfPresent() error {
	if datadir.Exists(a.layout.Agent()) {
		return a.takeLock()
	}
	return nil
}

func (a *Agent) takeLock() error {
	if a.lock != nil {
		return nil
	}
	path := a.layout.Agent(LockFile)
	l, err := datadir.Lock(path)
	if errors.Is(err, datadir.ErrLocked) {
		return fmt.Errorf("another kpki process (a running agent or `kpki certificate rotate`) holds the agent lock: %w", err)
	}
	if err != nil {
		return err
	}
	a.lock = l
	if done, err := datadir.Recover(a.layout.Agent()); err != nil {
		return err
	} else if len(done) > 0 {
		a.log.Info("completed interrupted certificate writes", "journals", done)
	}
	return nil
}

func (a *Agent) release() {
	if a.lock != nil {
		a.lock.Unlock()
		a.lock = nil
	}
}

// leafFiles returns the certificate and key paths of an agent leaf.
func (a *Agent) leafFiles(l certs.Leaf) (crt, key string) {
	return a.layout.Agent(l.Name + ".crt"), a.layout.Agent(l.Name + ".key")
}

// defaultNodeIPs is what the agent claims without --node-ip: the address it reaches the
// server from, when that address can name this host to others. A loopback address
// cannot (and the kubelet serving certificate carries 127.0.0.1 anyway), nor can a
// link-local one; the server refuses the latter and a loopback address of its own, so
// the agent claims none of them.
func defaultNodeIPs(route net.IP) []net.IP {
	if route == nil || !route.IsGlobalUnicast() {
		return nil
	}
	return []net.IP{route}
}

// routeIP is the local address this node uses to reach the server, the default node IP
// (K3s takes the same). Connecting a UDP socket only picks the route: nothing is sent.
func routeIP(server *url.URL) net.IP {
	port := server.Port()
	if port == "" {
		port = "443"
	}
	conn, err := net.Dial("udp", net.JoinHostPort(server.Hostname(), port))
	if err != nil {
		return nil
	}
	defer conn.Close()
	if a, ok := conn.LocalAddr().(*net.UDPAddr); ok {
		return a.IP
	}
	return nil
}
