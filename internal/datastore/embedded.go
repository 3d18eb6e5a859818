package datastore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc"
)

// EmbeddedConfig describes the embedded etcd member of a server.
type EmbeddedConfig struct {
	Name          string
	DataDir       string
	LogFile       string
	BindAddress   string
	Advertise     string
	ClientPort    int
	PeerPort      int
	ServerCert    string
	ServerKey     string
	ServerCA      string
	PeerCert      string
	PeerKey       string
	PeerCA        string
	ClientCert    string // used by kpki itself to talk to the member
	ClientKey     string
	InitialPeers  string // "name=https://ip:port,..." for a member joining a cluster
	JoinExisting  bool
	UnsafeNoFsync bool
	StartTimeout  time.Duration
	// LogLevel is etcd's log level (its log file); "warn" when empty.
	LogLevel string

	// sharedHTTP serves etcd's HTTP endpoints on the client port too (gRPC then goes
	// through net/http's HTTP/2 server), as kpki did before; for the benchmark that
	// compares the two.
	sharedHTTP bool
}

// Embedded is a running embedded etcd member and a client connected to it. The member
// can be restarted in place (Restart): the Store stays the same value, its client is
// replaced.
type Embedded struct {
	*Store
	cfg EmbeddedConfig

	mu     sync.Mutex
	member *member
	// errc carries the fatal errors of the running member; never closed.
	errc chan error
}

// member is one run of the embedded etcd; stopped is set before kpki stops it, so that
// what it reports while stopping is not taken for a failure.
type member struct {
	etcd    *embed.Etcd
	grpc    *grpcServers
	stopped atomic.Bool
}

// grpcServers are the gRPC servers etcd made for the member's client listeners.
type grpcServers struct {
	mu   sync.Mutex
	list []*grpc.Server
}

func (g *grpcServers) add(s *grpc.Server) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.list = append(g.list, s)
}

// stop closes every connection of the servers at once. etcd's own close stops a gRPC
// server that serves the client port natively gracefully, waiting up to its request
// timeout (7 s) for the open watch streams of other clients (kube-apiserver's) to end;
// the member would be down for that long on every restart and shutdown.
func (g *grpcServers) stop() {
	g.mu.Lock()
	list := g.list
	g.mu.Unlock()
	for _, s := range list {
		s.Stop()
	}
}

func hostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// ClientURL is the URL other processes use to reach the member.
func (c EmbeddedConfig) ClientURL() string {
	return "https://" + hostPort(c.Advertise, c.ClientPort)
}

// PeerURL is the member's advertised peer URL.
func (c EmbeddedConfig) PeerURL() string {
	return "https://" + hostPort(c.Advertise, c.PeerPort)
}

// CheckDatabase opens the member's database read-only to find corruption before etcd
// itself does (etcd panics on a database it cannot open). Opening reads only the meta
// pages; a file cut short after them would make etcd fault on the missing pages, which
// kills the process, so the file must also hold every page the meta page counts.
func CheckDatabase(dataDir string) error {
	db := filepath.Join(dataDir, "member", "snap", "db")
	fi, err := os.Stat(db)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("etcd database %s: %w", db, err)
	}
	b, err := bolt.Open(db, 0o600, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
	if err != nil {
		return fmt.Errorf("etcd database %s cannot be opened: %w", db, err)
	}
	err = b.View(func(tx *bolt.Tx) error {
		if tx.Size() > fi.Size() {
			return fmt.Errorf("the file is truncated: %d bytes, its pages need %d", fi.Size(), tx.Size())
		}
		return nil
	})
	if cerr := b.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("etcd database %s cannot be opened: %w", db, err)
	}
	return nil
}

// httpLoopback is the loopback address etcd's HTTP endpoints listen on: the bind
// address when it is a loopback address itself, 127.0.0.1 otherwise.
func httpLoopback(bind string) string {
	if ip := net.ParseIP(bind); ip != nil && ip.IsLoopback() {
		return bind
	}
	return "127.0.0.1"
}

// embedConfig is the etcd configuration of the member with its TLS listeners.
func (c EmbeddedConfig) embedConfig() (*embed.Config, error) {
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = c.DataDir
	bind := c.BindAddress
	if bind == "" {
		bind = "0.0.0.0"
	}
	lc, _ := url.Parse("https://" + hostPort(bind, c.ClientPort))
	lp, _ := url.Parse("https://" + hostPort(bind, c.PeerPort))
	ac, _ := url.Parse(c.ClientURL())
	ap, _ := url.Parse(c.PeerURL())
	cfg.ListenClientUrls = []url.URL{*lc}
	// etcd's HTTP endpoints (health, version, metrics) on a port of their own, so that the
	// client port serves gRPC natively rather than through net/http's HTTP/2 server; kpki
	// and kube-apiserver speak only gRPC to it. Loopback, an ephemeral port: nothing of
	// kpki uses them.
	if !c.sharedHTTP {
		lh, _ := url.Parse("https://" + hostPort(httpLoopback(bind), 0))
		cfg.ListenClientHttpUrls = []url.URL{*lh}
	}
	cfg.ListenPeerUrls = []url.URL{*lp}
	cfg.AdvertiseClientUrls = []url.URL{*ac}
	cfg.AdvertisePeerUrls = []url.URL{*ap}
	cfg.ListenMetricsUrls = nil
	cfg.InitialCluster = c.Name + "=" + c.PeerURL()
	cfg.ClusterState = embed.ClusterStateFlagNew
	if c.JoinExisting {
		cfg.InitialCluster = c.InitialPeers
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	cfg.InitialClusterToken = "kpki"
	cfg.ClientTLSInfo.CertFile = c.ServerCert
	cfg.ClientTLSInfo.KeyFile = c.ServerKey
	cfg.ClientTLSInfo.TrustedCAFile = c.ServerCA
	cfg.ClientTLSInfo.ClientCertAuth = true
	cfg.PeerTLSInfo.CertFile = c.PeerCert
	cfg.PeerTLSInfo.KeyFile = c.PeerKey
	cfg.PeerTLSInfo.TrustedCAFile = c.PeerCA
	cfg.PeerTLSInfo.ClientCertAuth = true
	cfg.UnsafeNoFsync = c.UnsafeNoFsync
	cfg.LogLevel = "warn"
	if c.LogLevel != "" {
		cfg.LogLevel = c.LogLevel
	}
	if c.LogFile != "" {
		if err := os.MkdirAll(filepath.Dir(c.LogFile), 0o700); err != nil {
			return nil, fmt.Errorf("create log dir: %w", err)
		}
		cfg.LogOutputs = []string{c.LogFile}
	}
	return cfg, nil
}

// StartEmbedded starts the member and waits until it serves, then connects to it.
func StartEmbedded(ctx context.Context, c EmbeddedConfig) (*Embedded, error) {
	m, err := startMember(ctx, c)
	if err != nil {
		return nil, err
	}
	st, err := Connect(ctx, []string{c.ClientURL()}, c.clientTLS(), 10*time.Second)
	if err != nil {
		m.stop()
		return nil, err
	}
	e := &Embedded{Store: st, cfg: c, errc: make(chan error, 1)}
	e.watch(m)
	return e, nil
}

func (c EmbeddedConfig) clientTLS() ClientTLS {
	return ClientTLS{CAFile: c.ServerCA, CertFile: c.ClientCert, KeyFile: c.ClientKey}
}

// startMember starts etcd with the member's configuration and waits until it serves.
func startMember(ctx context.Context, c EmbeddedConfig) (*member, error) {
	if err := CheckDatabase(c.DataDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create etcd data dir %s: %w", c.DataDir, err)
	}
	cfg, err := c.embedConfig()
	if err != nil {
		return nil, err
	}
	grpcs := &grpcServers{}
	cfg.ServiceRegister = grpcs.add
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd (data %s): %w", c.DataDir, err)
	}
	timeout := c.StartTimeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd failed (log %s): %w", c.LogFile, err)
	case <-time.After(timeout):
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("embedded etcd not ready after %s (log %s)", timeout, c.LogFile)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	return &member{etcd: e, grpc: grpcs}, nil
}

// stop stops the member once; a second call does nothing.
func (m *member) stop() {
	if m.stopped.CompareAndSwap(false, true) {
		m.grpc.stop()
		m.etcd.Close()
	}
}

// watch makes m the running member and passes on its fatal errors.
func (e *Embedded) watch(m *member) {
	e.mu.Lock()
	e.member = m
	e.mu.Unlock()
	go func() {
		for err := range m.etcd.Err() {
			if err == nil || m.stopped.Load() {
				continue
			}
			select {
			case e.errc <- err:
			default:
			}
		}
	}()
}

// SetTrust sets the trusted CA files the member is restarted with (Restart) and kpki's
// client checks the member with: the client port's (serverCA) and the peers' (peerCA).
func (e *Embedded) SetTrust(serverCA, peerCA string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cfg.ServerCA, e.cfg.PeerCA = serverCA, peerCA
}

// Restart stops the member and starts it again from its data dir, with the certificate
// files as they are now (the same paths, new contents), then reconnects the Store with
// the new client certificate. The member keeps its identity and data: to the cluster it
// is a member that was down for a moment. When the member cannot be started again, the
// error is also reported on Err: the server cannot go on without its datastore.
func (e *Embedded) Restart(ctx context.Context) error {
	e.mu.Lock()
	old, cfg := e.member, e.cfg
	e.mu.Unlock()
	old.stop()
	m, err := startMember(ctx, cfg)
	if err != nil {
		err = fmt.Errorf("restart embedded etcd: %w", err)
		select {
		case e.errc <- err:
		default:
		}
		return err
	}
	e.watch(m)
	if err := e.Store.reconnect(ctx, cfg.clientTLS(), 10*time.Second); err != nil {
		return fmt.Errorf("reconnect to the restarted embedded etcd: %w", err)
	}
	return nil
}

// Close disconnects and stops the member.
func (e *Embedded) Close() error {
	err := e.Store.Close()
	e.mu.Lock()
	m := e.member
	e.mu.Unlock()
	m.stop()
	return err
}

// Err reports a fatal error of the running member.
func (e *Embedded) Err() <-chan error { return e.errc }

// running is the etcd of the running member.
func (e *Embedded) running() *embed.Etcd {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.member.etcd
}
