package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/datastore"
	"github.com/kpki/kpki/internal/httplimit"
	"github.com/kpki/kpki/internal/metrics"
	"github.com/kpki/kpki/internal/nodeauth"
	"github.com/kpki/kpki/internal/nodeclaim"
	"github.com/kpki/kpki/internal/passwd"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/sdnotify"
	"github.com/kpki/kpki/internal/server/record"
	"github.com/kpki/kpki/internal/supervisor"
	"github.com/kpki/kpki/internal/token"
)

// Options are the collaborators a server is given rather than configured with.
type Options struct {
	Log   *slog.Logger
	Clock clock.Clock
	Stats *pki.Stats
}

// Server is one kpki server process.
type Server struct {
	cfg    Config
	r      *resolved
	log    *slog.Logger
	clock  clock.Clock
	issuer *pki.Issuer
	layout datadir.Layout

	metrics *metrics.Metrics
	audit   *audit.Log
	sup     *supervisor.Supervisor

	lock      *datadir.FileLock
	supLn     net.Listener
	metricsLn net.Listener
	pprofLn   net.Listener

	store    *datastore.Store
	embedded *datastore.Embedded

	// pkiMu serializes changes of the PKI files once the server runs (renewer, token
	// rotate); stateMu guards tok and agentPassword then. Neither is held across a
	// datastore or network call.
	pkiMu   sync.Mutex
	stateMu sync.Mutex
	// live is the signing state: the loaded CAs and the supervisor's serving
	// certificate, replaced together (see setLive); a loaded state is never changed.
	live   atomic.Pointer[liveState]
	liveMu sync.Mutex
	tok    token.Token
	// tokenFromFile: the server password came from <dd>/server/token, not --token.
	tokenFromFile bool
	// rotating: this start follows `certificate rotate` (the force-restart marker).
	rotating      bool
	agentPassword string
	// own is the last revision of the bootstrap record this server read or wrote.
	own record.Own
	// firstStart is set while this server creates the cluster's bootstrap data.
	firstStart bool

	// applyCh asks the live apply to converge to the record (RecordChanged);
	// applyPending is set while a failed apply waits for its retry.
	applyCh      chan struct{}
	applyPending atomic.Bool
	// unfinished is what the last apply that wrote its files but failed after them
	// found; only the live apply loop uses it.
	unfinished *unfinishedApply
	// etcdCAsRunning are the etcd CA files the embedded member was started with.
	etcdCAsRunning map[string][]byte

	nodes *nodeauth.Registry

	// creds is the passwd this server authenticates with: the bootstrap record's,
	// switched with the record (settlePasswd, token rotate), not re-read from disk.
	creds atomic.Pointer[passwd.File]

	ready  atomic.Bool
	cancel context.CancelFunc
	wg     sync.WaitGroup
	fatal  chan error
}

// New validates cfg and returns a server ready to Start.
func New(cfg Config, opts Options) (*Server, error) {
	r, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	// resolve made the paths absolute.
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	s := &Server{
		cfg:     cfg,
		r:       r,
		log:     opts.Log,
		clock:   opts.Clock,
		issuer:  pki.NewIssuer(opts.Clock, opts.Stats),
		layout:  datadir.Layout{Root: cfg.DataDir},
		metrics: metrics.New(),
		fatal:   make(chan error, 1),
		applyCh: make(chan struct{}, 1),
	}
	s.audit = audit.Open(s.layout.AuditLog())
	if cfg.Token != "" {
		t, err := token.Parse(cfg.Token)
		if err != nil {
			return nil, fmt.Errorf("--token: %w", err)
		}
		s.tok = t
	}
	if cfg.AgentToken != "" {
		// Checked here; the agent password itself always comes from cred/passwd, which
		// only a first start creates with it (see ensurePasswd and settlePasswd).
		if _, err := token.Parse(cfg.AgentToken); err != nil {
			return nil, fmt.Errorf("--agent-token: %w", err)
		}
	}
	if cfg.ServerURL != "" && cfg.Token == "" {
		return nil, errors.New("--server needs --token: the cluster's server token")
	}
	return s, nil
}

// Metrics returns the server's metrics.
func (s *Server) Metrics() *metrics.Metrics { return s.metrics }

// SupervisorURL is the URL of the supervisor API.
func (s *Server) SupervisorURL() string {
	return "https://" + net.JoinHostPort(s.r.advertise, strconv.Itoa(s.cfg.SupervisorPort))
}

func (s *Server) embeddedEtcd() bool { return len(s.r.datastore) == 0 }

// Run starts the server and serves until ctx ends or a component fails.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Start(ctx); err != nil {
		return err
	}
	if _, err := sdnotify.Notify(sdnotify.Ready); err != nil {
		s.log.Warn("could not tell systemd the server is ready", "error", err)
	}
	var err error
	select {
	case <-ctx.Done():
		s.log.Info("kpki server stopping")
	case err = <-s.fatal:
	}
	_, _ = sdnotify.Notify(sdnotify.Stopping)
	s.Stop()
	return err
}

// Start runs the start-up sequence and launches the background work; it returns once
// the server is ready, or with the error that stopped it.
func (s *Server) Start(ctx context.Context) (err error) {
	if err := s.preflight(); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			s.release()
		}
	}()
	if err := datadir.MkdirAll(s.layout.Server()); err != nil {
		return fmt.Errorf("data dir %s cannot be written: %w", s.cfg.DataDir, err)
	}
	lock, err := datadir.Lock(s.layout.LockFile())
	if err != nil {
		if errors.Is(err, datadir.ErrLocked) {
			return fmt.Errorf("another kpki server is running with data dir %s (lock %s held); stop it first", s.cfg.DataDir, s.layout.LockFile())
		}
		return err
	}
	s.lock = lock
	if tightened, err := datadir.TightenDirs(s.layout.Server()); err != nil {
		return err
	} else if len(tightened) > 0 {
		s.log.Warn("directories holding keys were open to other users; kpki set them to 0700", "dirs", tightened)
	}
	if done, err := datadir.Recover(s.layout.Server()); err != nil {
		return err
	} else if len(done) > 0 {
		s.log.Warn("completed interrupted file replacements", "journals", done)
	}
	if err := s.loadTokenFile(); err != nil {
		return err
	}
	s.rotating = datadir.Exists(s.layout.ForceRestart())
	if err := s.startPKI(ctx); err != nil {
		return err
	}
	if err := s.settlePasswd(ctx); err != nil {
		return err
	}
	// The token files now hold the token the record is under: a recorded rotation is
	// finished, or never reached the datastore.
	s.DropPendingToken()
	s.nodes = &nodeauth.Registry{Store: s.store, Self: s.selfRecord(), Log: s.log, Clock: s.clock, Audit: s.writeAudit}
	if err := s.nodes.RegisterServer(ctx); err != nil {
		return err
	}
	if datadir.Exists(s.layout.ForceRestart()) {
		if err := os.Remove(s.layout.ForceRestart()); err != nil {
			return fmt.Errorf("remove %s: %w", s.layout.ForceRestart(), err)
		}
	}
	if err := s.loadServingCert(); err != nil {
		return err
	}
	s.sup = supervisor.New(supervisor.Config{Log: s.log, Clock: s.clock, CACerts: s.serverCABundle, Ready: s.readyCheck,
		Authenticate: s.authenticate, Certificate: s.servingCert})
	s.handlers().Register()

	bctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.goBackground(func() error { return s.sup.Serve(bctx, s.supLn) }, "supervisor")
	if s.metricsLn != nil {
		s.goBackground(func() error { return s.metrics.Serve(bctx, s.metricsLn, httplimit.Default()) }, "metrics")
	}
	if s.pprofLn != nil {
		s.goBackground(func() error { return servePprof(bctx, s.pprofLn) }, "pprof")
	}
	s.goBackground(func() error { s.renewLoop(bctx); return nil }, "renewer")
	s.goBackground(func() error { s.watchBootstrap(bctx); return nil }, "bootstrap watch")
	s.goBackground(func() error { s.liveApplyLoop(bctx); return nil }, "live apply")
	s.goBackground(func() error { s.nodes.WatchServers(bctx); return nil }, "server registry watch")
	s.goBackground(func() error { s.nodes.WatchNodes(bctx); return nil }, "node password watch")
	s.goBackground(func() error { s.runStatus(bctx); return nil }, "rollout status")
	if s.embedded != nil {
		e := s.embedded
		s.goBackground(func() error {
			select {
			case err := <-e.Err():
				return fmt.Errorf("embedded etcd: %w", err)
			case <-bctx.Done():
				return nil
			}
		}, "etcd")
	}
	s.ready.Store(true)
	s.log.Info("kpki server is ready", "token", s.layout.TokenFile(), "supervisor", s.SupervisorURL(), "data-dir", s.cfg.DataDir)
	return nil
}

func (s *Server) goBackground(f func() error, name string) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := f(); err != nil {
			s.log.Error("component failed", "component", name, "error", err)
			select {
			case s.fatal <- fmt.Errorf("%s: %w", name, err):
			default:
			}
		}
	}()
}

// Stop shuts everything down and releases the data dir.
func (s *Server) Stop() {
	s.ready.Store(false)
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	s.release()
}

func (s *Server) release() {
	s.audit.Close()
	if s.supLn != nil {
		s.supLn.Close()
	}
	if s.metricsLn != nil {
		s.metricsLn.Close()
	}
	if s.pprofLn != nil {
		s.pprofLn.Close()
	}
	if s.embedded != nil {
		s.embedded.Close()
		s.embedded = nil
	} else if s.store != nil {
		s.store.Close()
	}
	s.store = nil
	if s.lock != nil {
		s.lock.Unlock()
		s.lock = nil
	}
}

// preflight takes the listening sockets before anything is written, so that a port in
// use fails the start with nothing changed.
func (s *Server) preflight() error {
	bind := s.r.bind
	if bind == "" {
		bind = "0.0.0.0"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(bind, strconv.Itoa(s.cfg.SupervisorPort)))
	if err != nil {
		return fmt.Errorf("supervisor port %d on %s is not available: %w", s.cfg.SupervisorPort, bind, err)
	}
	s.supLn = ln
	if s.cfg.MetricsAddress != "" {
		ml, err := net.Listen("tcp", s.cfg.MetricsAddress)
		if err != nil {
			s.supLn.Close()
			return fmt.Errorf("metrics address %s is not available: %w", s.cfg.MetricsAddress, err)
		}
		s.metricsLn = ml
	}
	if s.cfg.PprofAddress != "" {
		pl, err := listenPprof(s.cfg.PprofAddress)
		if err != nil {
			s.release()
			return err
		}
		s.pprofLn = pl
	}
	if s.embeddedEtcd() {
		for _, p := range []struct {
			name string
			port int
		}{{"etcd client port", s.cfg.EtcdClientPort}, {"etcd peer port", s.cfg.EtcdPeerPort}} {
			l, err := net.Listen("tcp", net.JoinHostPort(bind, strconv.Itoa(p.port)))
			if err != nil {
				s.release()
				return fmt.Errorf("%s %d on %s is not available: %w", p.name, p.port, bind, err)
			}
			l.Close()
		}
	}
	return nil
}

func (s *Server) readyCheck(ctx context.Context) error {
	if !s.ready.Load() {
		return errors.New("server is starting")
	}
	st := s.store
	if st == nil {
		return errors.New("datastore is not open")
	}
	if err := st.Healthy(ctx, 3*time.Second); err != nil {
		return fmt.Errorf("datastore: %w", err)
	}
	return nil
}

func (s *Server) loadServingCert() error {
	crt, key := s.leafPaths(certs.ServerNode, "serving-supervisor")
	c, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		return fmt.Errorf("load supervisor certificate %s: %w", crt, err)
	}
	s.setLive(nil, &c)
	return nil
}

func (s *Server) servingCert() *tls.Certificate {
	if l := s.live.Load(); l != nil {
		return l.serving
	}
	return nil
}

// selfRecord is what this server owns.
func (s *Server) selfRecord() nodeclaim.Server {
	rec := nodeclaim.Server{NodeName: s.r.nodeName, AdvertiseAddress: s.r.advertise,
		TLSSANs: append([]string{}, s.cfg.TLSSANs...), ServiceCIDR: s.cfg.ServiceCIDR, ClusterDomain: s.cfg.ClusterDomain}
	for _, ip := range s.r.nodeIPs {
		rec.NodeIPs = append(rec.NodeIPs, ip.String())
	}
	return rec
}
