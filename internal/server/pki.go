package server

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/certapply"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/datastore"
	"github.com/kpki/kpki/internal/metrics"
	"github.com/kpki/kpki/internal/passwd"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/server/record"
	"github.com/kpki/kpki/internal/token"
)

// connectExternal opens the external datastore.
func (s *Server) connectExternal(ctx context.Context) error {
	st, err := datastore.Connect(ctx, s.r.datastore, datastore.ClientTLS{
		CAFile: s.cfg.DatastoreCAFile, CertFile: s.cfg.DatastoreCertFile, KeyFile: s.cfg.DatastoreKeyFile,
	}, 15*time.Second)
	if err != nil {
		return err
	}
	s.store = st
	return nil
}

func (s *Server) startEtcd(ctx context.Context) error { return s.startEtcdMember(ctx, false, "") }

// reconcileLocal makes the disk match the bootstrap record held by this server's own etcd
// member before anything is planned or signed, so that CA files or a service.key that are
// missing come back and files that differ are refused or replaced as SPEC §6 says. The
// member is started with no listener and needs no certificate file (see
// datastore.StartLocal); its read is serializable, from its own copy of the data. A member
// of a multi-member cluster may have missed a change made while it was down: the record is
// read again from the cluster once the member has rejoined. It returns whether a record was
// found.
func (s *Server) reconcileLocal(ctx context.Context) (bool, error) {
	local, err := datastore.StartLocal(ctx, s.etcdConfig())
	if errors.Is(err, datastore.ErrNoLocalData) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer local.Close()
	s.store = local.Store
	defer func() { s.store = nil }()
	if s.tok.Password == "" {
		// Without --token and token file, the server password in cred/passwd is the token
		// (ensurePasswd takes it the same way).
		if data, err := datadir.ReadOptional(s.layout.PasswdFile()); err == nil && data != nil {
			if pw, err := passwd.Parse(data); err == nil {
				if srv, ok := pw.Find("server"); ok {
					s.tok.Password = srv.Password
				}
			}
		}
	}
	rec, _, err := s.readRecord(ctx)
	if errors.Is(err, record.ErrDifferentToken) && local.Members > 1 && len(s.missingCAFiles()) == 0 {
		// The record may have moved to this token's key (token rotate) while this member
		// was down; the cluster answers once the member has rejoined.
		s.log.Info("this etcd member holds no bootstrap data for the token; reading it from the cluster once the member has rejoined")
		return false, nil
	}
	if err != nil || rec == nil {
		return false, err
	}
	changed, err := s.applyRecord(rec)
	if err != nil {
		return false, err
	}
	if len(changed) > 0 {
		s.log.Info("restored files from the bootstrap data in this server's etcd member", "files", changed)
	}
	return true, nil
}

// etcdConfig describes this server's embedded etcd member.
func (s *Server) etcdConfig() datastore.EmbeddedConfig {
	crt, key := s.leafPaths(certs.ServerNode, "etcd/server-client")
	pcrt, pkey := s.leafPaths(certs.ServerNode, "etcd/peer-server-client")
	ccrt, ckey := s.leafPaths(certs.ServerNode, "etcd/client")
	serverCA, peerCA := s.etcdTrust()
	return datastore.EmbeddedConfig{
		Name:          s.r.nodeName,
		DataDir:       s.layout.EtcdDir(),
		LogFile:       filepath.Join(s.layout.LogDir(), "etcd.log"),
		BindAddress:   s.r.bind,
		Advertise:     s.r.advertise,
		ClientPort:    s.cfg.EtcdClientPort,
		PeerPort:      s.cfg.EtcdPeerPort,
		ServerCert:    crt,
		ServerKey:     key,
		ServerCA:      serverCA,
		PeerCert:      pcrt,
		PeerKey:       pkey,
		PeerCA:        peerCA,
		ClientCert:    ccrt,
		ClientKey:     ckey,
		UnsafeNoFsync: s.cfg.EtcdUnsafeNoFsync,
		LogLevel:      s.etcdLogLevel(),
	}
}

// etcdLogLevel is the embedded member's log level: info when kpki logs at debug
// (--debug), warn otherwise.
func (s *Server) etcdLogLevel() string {
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		return "info"
	}
	return "warn"
}

// startEtcdMember starts the embedded member; join starts it into an existing cluster
// whose members are listed in initial.
func (s *Server) startEtcdMember(ctx context.Context, join bool, initial string) error {
	cfg := s.etcdConfig()
	cfg.JoinExisting, cfg.InitialPeers = join, initial
	e, err := datastore.StartEmbedded(ctx, cfg)
	if err != nil {
		return err
	}
	s.embedded = e
	s.store = e.Store
	s.etcdCAsRunning = s.etcdCAFiles()
	return nil
}

func (s *Server) etcdCertFingerprint() string {
	var b strings.Builder
	for _, n := range []string{"etcd/server-client", "etcd/peer-server-client", "etcd/client"} {
		crt, _ := s.leafPaths(certs.ServerNode, n)
		data, _ := os.ReadFile(crt)
		b.Write(data)
	}
	for _, c := range certs.CAs {
		if c.Etcd {
			data, _ := os.ReadFile(s.layout.TLS(c.CertFile))
			b.Write(data)
		}
	}
	return b.String()
}

// buildPKI loads the CAs and brings every leaf and derived file up to date.
func (s *Server) buildPKI(actor string) error {
	if err := s.loadCAs(); err != nil {
		return err
	}
	if err := s.ensureServiceKey(); err != nil {
		return err
	}
	if err := s.ensurePasswd(); err != nil {
		return err
	}
	if _, err := s.ensureLeaves(actor); err != nil {
		return err
	}
	return s.writeDerived()
}

func (s *Server) caPaths(c certs.CASpec) (string, string) {
	return s.layout.TLS(c.CertFile), s.layout.TLS(c.KeyFile)
}

func (s *Server) leafPaths(n certs.Node, name string) (string, string) {
	base := s.layout.TLS(name)
	if n == certs.AgentNode {
		base = s.layout.Agent(name)
	}
	return base + ".crt", base + ".key"
}

func (s *Server) missingCAFiles() []string {
	var missing []string
	for _, c := range certs.CAs {
		crt, key := s.caPaths(c)
		for _, p := range []string{crt, key} {
			if !datadir.Exists(p) {
				missing = append(missing, p)
			}
		}
	}
	return missing
}

// initCAs is the first server's CA step: use a complete custom set found on disk,
// generate all CAs when none is there, refuse a partial set.
func (s *Server) initCAs() error {
	missing := s.missingCAFiles()
	switch {
	case len(missing) == 0:
		s.log.Info("using CA certificates found on disk", "dir", s.layout.TLS())
		return nil
	case len(missing) < 2*len(certs.CAs):
		return fmt.Errorf("incomplete custom CA set in %s: missing %s (provide every CA file, or none to have kpki generate them)",
			s.layout.TLS(), strings.Join(missing, ", "))
	}
	// All CAs are written as one group: a crash leaves all of them or none, never the
	// partial set a restart would refuse as an incomplete custom CA set.
	now := s.clock.Now()
	type generated struct {
		file string
		cert *x509.Certificate
	}
	var files []datadir.File
	var made []generated
	for _, c := range certs.CAs {
		key, err := c.Key.NewKey(s.issuer)
		if err != nil {
			return fmt.Errorf("generate %s key: %w", c.ID, err)
		}
		cert, err := s.issuer.SelfSignedCA(key, c.CommonName(now), s.r.caValidity)
		if err != nil {
			return err
		}
		keyPEM, err := pki.EncodeKey(key)
		if err != nil {
			return err
		}
		crt, kf := s.caPaths(c)
		files = append(files, datadir.File{Path: kf, Data: keyPEM, Mode: 0o600}, datadir.File{Path: crt, Data: pki.EncodeCert(cert), Mode: 0o600})
		made = append(made, generated{crt, cert})
	}
	if err := datadir.WriteGroup(files); err != nil {
		return err
	}
	for _, g := range made {
		s.metrics.Issued.WithLabelValues("ca").Inc()
		s.auditCert("generate-ca", "kpki", g.file, g.cert, nil)
		s.log.Info("generated self-signed CA", "file", g.file, "subject", g.cert.Subject.String(), "expires", g.cert.NotAfter)
	}
	return nil
}

// loadCAs reads and validates every CA on disk and makes them the loaded CAs.
func (s *Server) loadCAs() error {
	cas, err := s.readCAs()
	if err != nil {
		return err
	}
	s.setLive(cas, nil)
	return nil
}

// readCAs reads and validates every CA on disk.
func (s *Server) readCAs() (map[certs.CAID]*pki.CA, error) {
	cas := map[certs.CAID]*pki.CA{}
	now := s.clock.Now()
	for _, c := range certs.CAs {
		crt, kf := s.caPaths(c)
		ca, err := readCAFiles(crt, kf)
		if err != nil {
			return nil, err
		}
		if err := pki.CheckCA(ca, now); err != nil {
			if !pki.KeyMatchesCert(ca.Key, ca.Cert) {
				return nil, fmt.Errorf("CA %s: key %s does not match the certificate", crt, kf)
			}
			return nil, fmt.Errorf("CA %s: %w", crt, err)
		}
		cas[c.ID] = ca
	}
	return cas, nil
}

func (s *Server) ensureServiceKey() error {
	path := s.layout.TLS(certs.ServiceKeyFile)
	data, err := datadir.ReadOptional(path)
	if err != nil {
		return err
	}
	if data == nil {
		key, err := s.issuer.NewRSAKey(2048)
		if err != nil {
			return fmt.Errorf("generate service-account key: %w", err)
		}
		if data, err = pki.EncodeKey(key); err != nil {
			return err
		}
		if err := datadir.WriteFile(path, data, 0o600); err != nil {
			return err
		}
		s.log.Info("generated service-account key", "file", path)
	}
	first, err := pki.FirstKeyPEM(data)
	if err != nil {
		return fmt.Errorf("service-account key %s: %w", path, err)
	}
	_, err = datadir.WriteIfChanged(s.layout.TLS(certs.ServiceCurrentKeyFile), first, 0o600)
	return err
}

// ensurePasswd reads cred/passwd for the server password (when no token was given) and
// the agent password of the agent-token file. Only the cluster's first server creates
// it, with a distinct random agent password (or --agent-token's); any other server
// takes the bootstrap record's copy (reconcile writes it, settlePasswd checks it once
// the datastore is open), never inventing an agent password the cluster does not know.
func (s *Server) ensurePasswd() error {
	path := s.layout.PasswdFile()
	data, err := datadir.ReadOptional(path)
	if err != nil {
		return err
	}
	var pw passwd.File
	if data != nil {
		if pw, err = passwd.Parse(data); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if node, ok := pw.Find(passwd.AgentUser); ok {
			s.agentPassword = node.Password
		}
		srv, hasServer := pw.Find(passwd.ServerUser)
		if hasServer {
			if s.tok.Password == "" {
				s.tok.Password = srv.Password
			} else if srv.Password != s.tok.Password {
				if s.firstStart {
					return fmt.Errorf("the token does not match the server password in %s; use the cluster's token, or `kpki token rotate` to change it", path)
				}
				// The token was rotated on another server: the datastore, which only this
				// token can open, brings the new passwd file.
				s.log.Warn("the token differs from the server password on disk; taking passwd from the datastore", "file", path)
				return nil
			}
		}
		if _, hasNode := pw.Find(passwd.AgentUser); hasServer && hasNode {
			return nil
		}
	}
	if !s.firstStart {
		return nil
	}
	if s.tok.Password == "" {
		p, err := token.GeneratePassword()
		if err != nil {
			return err
		}
		s.tok.Password = p
	}
	agent, err := s.newAgentPassword()
	if err != nil {
		return err
	}
	prefix := pw.RolePrefix()
	pw = pw.WithUser(passwd.ServerUser, prefix+":server", s.tok.Password).WithUser(passwd.AgentUser, prefix+":agent", agent)
	if err := datadir.WriteFile(path, pw.Bytes(), 0o600); err != nil {
		return err
	}
	s.agentPassword = agent
	return nil
}

// ensureLeaves plans and applies every server leaf under the loaded CAs; it returns the
// files it changed.
func (s *Server) ensureLeaves(actor string) ([]string, error) {
	return s.ensureLeavesUnder(actor, s.caSet())
}

// ensureLeavesUnder plans and applies every server leaf under cas.
func (s *Server) ensureLeavesUnder(actor string, cas map[certs.CAID]*pki.CA) ([]string, error) {
	cas, err := s.leafSigners(cas)
	if err != nil {
		return nil, err
	}
	var changed []string
	app := s.applier()
	params := s.params()
	for _, l := range certs.Select(certs.ServerNode, nil) {
		crt, kf := s.leafPaths(l.Node, l.Name)
		ca := cas[l.Signer]
		leaf := certapply.Leaf{Row: l, Want: l.Profile(params), CA: ca, CertFile: crt, KeyFile: kf, Actor: actor}
		if s.rotating {
			leaf.MissingReason = "removed by `kpki certificate rotate`"
		}
		out, err := app.Apply(context.Background(), leaf, func(_ context.Context, key crypto.Signer, want pki.LeafProfile) (*x509.Certificate, error) {
			return s.issuer.SignLeaf(ca, key.Public(), want, s.r.validity)
		})
		if err != nil {
			return nil, err
		}
		if len(out.Written) > 0 {
			changed = append(changed, crt)
		}
	}
	s.updateExpiryMetrics()
	return changed, nil
}

// applier applies the planner's decisions for this server's leaves.
func (s *Server) applier() *certapply.Applier {
	return &certapply.Applier{Issuer: s.issuer, Log: s.log, Clock: s.clock, RenewBefore: s.r.renewBefore, Audit: s.writeAudit, Metrics: s.metrics}
}

func (s *Server) params() certs.Params {
	return certs.Params{
		NodeName:      s.r.nodeName,
		NodeIPs:       s.r.nodeIPs,
		ClusterDomain: s.cfg.ClusterDomain,
		SANList:       s.r.sanList,
	}
}

func (s *Server) auditCert(action, actor, file string, c, old *x509.Certificate) {
	e := audit.CertEntry(action, actor, file, c, old)
	e.Time = s.clock.Now().UTC()
	s.writeAudit(e)
}

func (s *Server) updateExpiryMetrics() {
	s.updateCAExpiryMetrics()
	s.metrics.CertExpiry.Reset()
	for _, file := range s.certFiles() {
		if c := datadir.FirstCert(file); c != nil {
			s.metrics.CertExpiry.WithLabelValues(file, c.Subject.String(), metrics.Usages(c)).Set(float64(c.NotAfter.Unix()))
		}
	}
}

// certFiles are this server's CA files, then its leaves.
func (s *Server) certFiles() []string {
	var files []string
	for _, c := range certs.CAs {
		crt, _ := s.caPaths(c)
		files = append(files, crt)
	}
	for _, l := range certs.Select(certs.ServerNode, nil) {
		crt, _ := s.leafPaths(l.Node, l.Name)
		files = append(files, crt)
	}
	return files
}

func (s *Server) serverCABundle() []byte {
	if ca := s.caSet()[certs.ServerCA]; ca != nil {
		return ca.BundlePEM
	}
	return nil
}

// caSet returns the loaded CAs (nil before loadCAs).
func (s *Server) caSet() map[certs.CAID]*pki.CA {
	if l := s.live.Load(); l != nil {
		return l.cas
	}
	return nil
}
