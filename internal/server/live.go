package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datastore"
	"github.com/kpki/kpki/internal/membership"
	"github.com/kpki/kpki/internal/passwd"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/rotation"
	"github.com/kpki/kpki/internal/server/record"
)

// Live apply of a changed bootstrap record. Whatever changed the record (rotate-ca on
// this server or another one, a rollback, a record restored by hand), a running server
// converges to it: the CA files from the record (written as one journalled group, as at
// start-up), every leaf the planner finds signed by a CA that is no longer the current
// one re-issued, the derived files rewritten, and the signing state (CAs and serving
// certificate) swapped as one. The embedded etcd member is restarted in process when
// its CAs changed, one server of the cluster at a time. A failure leaves every file old
// or new (each write is atomic), sets kpki_restart_required and is retried; a restart
// converges the same way (start-up's reconcile and re-plan).

const (
	// liveRetryInterval and liveRetries bound the retries of a failed apply; the
	// renewer's passes retry it too while it is pending, and the next change of the
	// record starts again.
	liveRetryInterval = 10 * time.Second
	liveRetries       = 5

	// etcdRestartLock is the lock (under datastore.LockPrefix) one server holds while
	// its embedded member restarts: the cluster loses at most one member at a time.
	etcdRestartLock = "etcd-restart"
	// etcdLockTTL outlives a member restart; a holder that died frees the lock after it.
	etcdLockTTL = 2 * time.Minute
	// etcdLockWait is how long a server waits for the others' restarts.
	etcdLockWait = 10 * time.Minute
	etcdLockPoll = 500 * time.Millisecond
	// etcdQuorumWait bounds the wait, holding the lock, for the other members to serve
	// before this one restarts; well within the lock's lease, which is not renewed.
	etcdQuorumWait = 45 * time.Second
	// etcdHealthWait bounds the wait for the restarted member to serve the cluster.
	etcdHealthWait = time.Minute
)

// errRecordGone: the datastore holds no record for this server's password any more
// (the token was rotated on another server). Only a restart with the new token can
// read it.
var errRecordGone = errors.New("no bootstrap data for this server's token in the datastore (was the token rotated on another server?)")

// liveState is what the supervisor and the signing handlers read: the loaded CAs and
// the serving certificate, replaced together.
type liveState struct {
	cas     map[certs.CAID]*pki.CA
	serving *tls.Certificate
}

// setLive replaces the CAs, the serving certificate or both (nil keeps the current
// one) with one pointer swap: a request sees the old pair or the new pair.
func (s *Server) setLive(cas map[certs.CAID]*pki.CA, serving *tls.Certificate) {
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	var next liveState
	if cur := s.live.Load(); cur != nil {
		next = *cur
	}
	if cas != nil {
		next.cas = cas
	}
	if serving != nil {
		next.serving = serving
	}
	s.live.Store(&next)
}

// RecordChanged asks the live apply to converge to the record in the datastore. It
// returns at once; applies run one at a time, and requests made while one runs are
// folded into one more.
func (s *Server) RecordChanged() {
	select {
	case s.applyCh <- struct{}{}:
	default:
	}
}

// liveDecision is what applying a new record asks of the running server beyond its
// files: decided by decideLive from the record's continuity and the etcd member.
type liveDecision struct {
	// restartEtcd: the embedded member runs with CA files other than those now on
	// disk and must restart to use them.
	restartEtcd bool
	// disruptive: the new CA set breaks continuity (see rotation.Continuity).
	disruptive bool
}

// decideLive decides on a continuity and the etcd CA files the running member was
// started with (running) and those now on disk (onDisk), by CA file name. Only an
// embedded member is ever restarted, and only when one of its CAs (certs.CASpec.Etcd)
// differs: leaf renewals alone never restart it.
func decideLive(c rotation.Continuity, embedded bool, running, onDisk map[string][]byte) liveDecision {
	d := liveDecision{disruptive: c.Disruptive()}
	if !embedded {
		return d
	}
	for _, spec := range certs.CAs {
		if spec.Etcd && !bytes.Equal(running[spec.CertFile], onDisk[spec.CertFile]) {
			d.restartEtcd = true
		}
	}
	return d
}

// etcdCAFiles reads the embedded etcd's CA certificate files.
func (s *Server) etcdCAFiles() map[string][]byte {
	out := map[string][]byte{}
	for _, c := range certs.CAs {
		if c.Etcd {
			data, _ := os.ReadFile(s.layout.TLS(c.CertFile))
			out[c.CertFile] = data
		}
	}
	return out
}

// disruptionAdvice says what clients must do after a CA set that breaks continuity.
func disruptionAdvice(c rotation.Continuity) string {
	var parts []string
	for _, id := range c.Broken {
		switch id {
		case certs.ETCDServerCA:
			parts = append(parts, "the embedded etcd members move to the new etcd root one at a time without losing quorum; kube-apiserver reads --etcd-cafile only at start: restart it once its server has applied the new set")
		case certs.ServerCA:
			parts = append(parts, "agents and clients no longer trust the servers' certificates: every agent must re-join with the new agent token (kpki token, or the agent-token file), and kubeconfigs must be taken anew")
		case certs.ClientCA:
			parts = append(parts, "client certificates signed by the old client CA are refused: agents re-join to get new ones, users take the new admin kubeconfig")
		default:
			parts = append(parts, fmt.Sprintf("certificates signed by the old %s are no longer trusted", id))
		}
	}
	if c.ServiceKeyBroken {
		parts = append(parts, "service-account tokens signed with the old key are refused until they are issued again")
	}
	if c.TokensChange {
		parts = append(parts, "the join tokens changed (new CA hash "+c.NewCAHash+"): give the new tokens to every node that joins")
	}
	return strings.Join(parts, "; ")
}

// liveApplyLoop runs the applies RecordChanged asks for, one at a time, and retries a
// failed one liveRetries times, every liveRetryInterval.
func (s *Server) liveApplyLoop(ctx context.Context) {
	var retry clock.Ticker
	attempts := 0
	stopRetry := func() {
		if retry != nil {
			retry.Stop()
			retry = nil
		}
	}
	defer stopRetry()
	if s.activeTransition() != nil {
		// An etcd CA transition this server had not finished: resume it.
		s.RecordChanged()
	}
	for {
		var retryC <-chan time.Time
		if retry != nil {
			retryC = retry.C()
		}
		select {
		case <-ctx.Done():
			return
		case <-s.applyCh:
			attempts = 0
		case <-retryC:
		}
		err := s.applyLive(ctx)
		switch {
		case err == nil:
			stopRetry()
			continue
		case ctx.Err() != nil:
			return
		case errors.Is(err, errRecordGone):
			stopRetry()
			s.applyPending.Store(false)
			s.flagRestart(err.Error())
			continue
		}
		attempts++
		s.metrics.LiveApply.WithLabelValues("failed").Inc()
		s.metrics.RestartRequired.Set(1)
		s.applyPending.Store(true)
		if attempts < liveRetries {
			s.log.Error("applying the new bootstrap data failed; every file is either old or new; retrying", "error", err,
				"attempt", attempts, "retry-in", liveRetryInterval)
			if retry == nil {
				retry = s.clock.NewTicker(liveRetryInterval)
			}
			continue
		}
		stopRetry()
		s.log.Error("applying the new bootstrap data failed again; the renewer retries on each pass, the next change of the record starts anew, and a restart of kpki converges",
			"error", err, "attempts", attempts)
	}
}

// unfinishedApply is what an apply found that wrote its files and failed after them
// (an etcd restart): its retry reports it.
type unfinishedApply struct {
	cont    rotation.Continuity
	changed []string
}

// applyLive converges this running server to the record in the datastore.
func (s *Server) applyLive(ctx context.Context) error {
	rec, rev, err := record.Read(ctx, s.store, s.Password(), nil)
	if errors.Is(err, record.ErrDifferentToken) || (err == nil && rec == nil) {
		return errRecordGone
	}
	if err != nil {
		return err
	}
	d, cont, changed, err := s.applyFiles(rec)
	if err != nil {
		return err
	}
	if u := s.unfinished; u != nil && !cont.CAsChanged() && !cont.ServiceKey {
		// The retry of an apply that failed after writing its files finds them written:
		// what changed, and whether it breaks continuity, is what the first attempt found.
		cont, changed = u.cont, append(u.changed, changed...)
		d.disruptive = cont.Disruptive()
	}
	s.unfinished = &unfinishedApply{cont: cont, changed: changed}
	s.own.Set(rev)
	if t := s.activeTransition(); t != nil && s.embedded != nil {
		d.restartEtcd = true
		if err := s.runEtcdTransition(ctx, t); err != nil {
			return err
		}
	} else if d.restartEtcd {
		if err := s.restartEtcd(ctx); err != nil {
			return err
		}
	}
	s.unfinished = nil
	s.applyPending.Store(false)
	s.metrics.RestartRequired.Set(0)
	if len(changed) == 0 && !d.restartEtcd {
		return nil
	}
	s.metrics.LiveApply.WithLabelValues("ok").Inc()
	s.reportStatus()
	attrs := []any{"revision", rev, "cas", cont.Changed, "service-key", cont.ServiceKey, "files", len(changed),
		"etcd-restarted", d.restartEtcd, "tokens-change", cont.TokensChange}
	if d.disruptive {
		s.metrics.CADisruptive.Set(1)
		s.log.Warn("applied a new CA set that breaks continuity (a new root, rotate-ca --force): disruptive; "+disruptionAdvice(cont),
			append(attrs, "broken", cont.Broken)...)
		return nil
	}
	if cont.CAsChanged() || cont.ServiceKey {
		s.metrics.CADisruptive.Set(0)
	}
	s.log.Info("applied the new bootstrap data live; no restart needed", attrs...)
	return nil
}

// applyFiles writes rec's files, brings every leaf and derived file up to date under
// its CAs and swaps the signing state; it returns what else is to be done, how the new
// set relates to the one on disk before, and the files it changed.
func (s *Server) applyFiles(rec *bootstrap.Record) (liveDecision, rotation.Continuity, []string, error) {
	s.pkiMu.Lock()
	defer s.pkiMu.Unlock()
	writes, disk, err := s.planRecord(rec)
	if err != nil {
		return liveDecision{}, rotation.Continuity{}, nil, err
	}
	cont, err := s.classifyRecord(disk, rec)
	if err != nil {
		return liveDecision{}, cont, nil, err
	}
	changed, err := s.applyWrites(writes, false)
	if err != nil {
		return liveDecision{}, cont, nil, err
	}
	if len(changed) > 0 {
		s.log.Info("wrote the bootstrap data's files", "files", changed)
	}
	s.takeRecordPasswd(writes)
	cas, err := s.readCAs()
	if err != nil {
		return liveDecision{}, cont, changed, err
	}
	if err := s.ensureServiceKey(); err != nil {
		return liveDecision{}, cont, changed, err
	}
	leaves, err := s.ensureLeavesUnder("ca-rotation", cas)
	if err != nil {
		return liveDecision{}, cont, changed, err
	}
	changed = append(changed, leaves...)
	if err := s.writeDerivedUnder(cas); err != nil {
		return liveDecision{}, cont, changed, err
	}
	crt, key := s.leafPaths(certs.ServerNode, "serving-supervisor")
	serving, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		return liveDecision{}, cont, changed, fmt.Errorf("load supervisor certificate %s: %w", crt, err)
	}
	s.setLive(cas, &serving)
	s.updateExpiryMetrics()
	return decideLive(cont, s.embedded != nil, s.etcdCAsRunning, s.etcdCAFiles()), cont, changed, nil
}

// classifyRecord relates rec's CA set to the one on disk (disk, from planRecord) and,
// when the embedded members' CAs become a new root in a cluster of more than one member,
// prepares the etcd CA transition before any file is replaced. A lone member has no
// peer to keep trusting: it restarts once under the new CAs.
func (s *Server) classifyRecord(disk map[string]bootstrap.DiskFile, rec *bootstrap.Record) (rotation.Continuity, error) {
	cont := rotation.Classify(diskRecord(disk), rec, s.clock.Now())
	if s.cfg.DatastoreEndpoint != "" || !etcdRootBroken(cont) || !s.etcdCAsOnDisk(disk) || s.etcdMembers() == 1 {
		return cont, nil
	}
	return cont, s.beginEtcdTransition(disk, rec)
}

// etcdMembers is the size of the embedded etcd cluster; 0 when it is not known (no
// member running yet, or no answer).
func (s *Server) etcdMembers() int {
	if s.embedded == nil || s.store == nil {
		return 0
	}
	list, err := s.etcdMemberList(context.Background(), 5*time.Second)
	if err != nil {
		return 0
	}
	return len(list)
}

// takeRecordPasswd makes a passwd file the apply wrote (another server repaired it in
// the record) the credentials this server authenticates with; one that does not
// validate is left to the server repairing it.
func (s *Server) takeRecordPasswd(writes []bootstrap.Write) {
	for _, w := range writes {
		if w.Field != bootstrap.PasswdField {
			continue
		}
		pw, err := passwd.Parse(w.Content)
		if err == nil {
			err = pw.Validate()
		}
		if err != nil {
			s.log.Warn("the bootstrap data's passwd does not validate; keeping the credentials in use", "error", err)
			return
		}
		s.useCreds(pw)
	}
}

// diskRecord is the record the files on disk make (timestamps left out).
func diskRecord(disk map[string]bootstrap.DiskFile) *bootstrap.Record {
	rec := bootstrap.NewRecord()
	for _, f := range bootstrap.Files {
		if d, ok := disk[f.Path]; ok {
			rec.Set(f.Field, bootstrap.File{Content: d.Content})
		}
	}
	return rec
}

// restartEtcd restarts the embedded member with its new certificates while holding
// the cluster's etcd restart lock, and releases it once the member serves again.
func (s *Server) restartEtcd(ctx context.Context) error {
	release, err := s.lockRestart(ctx, "etcd CAs changed")
	if err != nil {
		return err
	}
	defer release()
	if err := s.restartMember(ctx, func() { s.etcdCAsRunning = s.etcdCAFiles() },
		"restarting embedded etcd with its new certificates", "lock", datastore.LockPrefix+etcdRestartLock); err != nil {
		return err
	}
	// Logged before the lock is released: the next server's restart starts after it.
	s.log.Info("embedded etcd restarted with its new certificates and is healthy")
	return nil
}

// lockRestart takes the cluster's etcd restart lock, held while one member restarts;
// release frees it. what says why, in the error.
func (s *Server) lockRestart(ctx context.Context, what string) (release func(), err error) {
	lock, err := s.store.Lock(ctx, etcdRestartLock, s.r.nodeName, etcdLockTTL, etcdLockWait, etcdLockPoll, s.clock)
	if err != nil {
		return nil, fmt.Errorf("%s: the etcd restart lock was not taken: %w", what, err)
	}
	return func() {
		// Bounded: a member that did not come back cannot take the release, and the lock
		// then ends with its lease.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := lock.Unlock(uctx); err != nil {
			s.log.Warn("could not release the etcd restart lock; it ends with its lease", "lock", lock.Key, "ttl", etcdLockTTL, "error", err)
		}
	}, nil
}

// restartMember restarts the embedded member in process, holding the restart lock:
// once the other members serving are a quorum without it, it logs msg (with attrs),
// restarts the member, calls restarted, and waits until the member serves the cluster.
func (s *Server) restartMember(ctx context.Context, restarted func(), msg string, attrs ...any) error {
	if err := s.waitQuorumWithoutMe(ctx); err != nil {
		return err
	}
	s.log.Info(msg, attrs...)
	if err := s.embedded.Restart(ctx); err != nil {
		return err
	}
	restarted()
	if err := s.waitEtcdHealthy(ctx); err != nil {
		return fmt.Errorf("embedded etcd restarted but does not serve the cluster: %w", err)
	}
	return nil
}

// pollFor calls try every poll until it reports true, for at most wait on the
// server's clock. It reports whether try did; an error only when ctx ended.
func (s *Server) pollFor(ctx context.Context, wait, poll time.Duration, try func() bool) (bool, error) {
	deadline := s.clock.Now().Add(wait)
	for {
		if try() {
			return true, nil
		}
		if !s.clock.Now().Before(deadline) {
			return false, nil
		}
		if err := clock.Sleep(ctx, s.clock, poll); err != nil {
			return false, err
		}
	}
}

// waitEtcdHealthy polls the datastore through the restarted member until it answers
// with a leader, for at most etcdHealthWait.
func (s *Server) waitEtcdHealthy(ctx context.Context) error {
	var err error
	if _, cerr := s.pollFor(ctx, etcdHealthWait, etcdLockPoll, func() bool {
		err = s.store.Healthy(ctx, 3*time.Second)
		return err == nil
	}); cerr != nil {
		return cerr
	}
	return err
}

// waitQuorumWithoutMe waits, for at most etcdQuorumWait, until the other members that
// serve are a quorum of the cluster on their own: restarting this member then leaves the
// cluster a leader. A cluster of one member has no such quorum; its restart is the
// outage it cannot avoid.
func (s *Server) waitQuorumWithoutMe(ctx context.Context) error {
	var (
		lastLog time.Time
		down    []string
		err     error
	)
	ok, cerr := s.pollFor(ctx, etcdQuorumWait, etcdLockPoll, func() bool {
		var serving, members int
		serving, down, members, err = s.peersServing(ctx, 3*time.Second)
		if err == nil && (members <= 1 || serving >= members/2+1) {
			return true
		}
		if now := s.clock.Now(); now.Sub(lastLog) >= 15*time.Second {
			s.log.Warn("waiting for the other etcd members before restarting this one: without it the cluster would have no quorum", "not-serving", down, "error", err)
			lastLog = now
		}
		return false
	})
	switch {
	case cerr != nil:
		return cerr
	case ok:
		return nil
	case err != nil:
		return fmt.Errorf("embedded etcd not restarted: the other members' state is unknown: %w", err)
	}
	return fmt.Errorf("embedded etcd not restarted: without it the cluster would have no quorum (members not serving: %s)", strings.Join(down, ", "))
}

// etcdMemberList is the members of the embedded etcd cluster, asked for at most timeout.
func (s *Server) etcdMemberList(ctx context.Context, timeout time.Duration) ([]membership.Member, error) {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return membership.List(cctx, s.store.Client())
}

// memberLabel names a member in logs and errors: its name, or its peer URLs until it
// has started.
func memberLabel(m membership.Member) string {
	if m.Name != "" {
		return m.Name
	}
	return strings.Join(m.PeerURLs, ",") + " (not started)"
}

// peersServing counts the other members of the cluster that answer a status request
// within timeout, and returns the labels of those that do not, and the cluster's size.
func (s *Server) peersServing(ctx context.Context, timeout time.Duration) (serving int, down []string, members int, err error) {
	list, err := s.etcdMemberList(ctx, timeout)
	if err != nil {
		return 0, nil, 0, err
	}
	cli := s.store.Client()
	for _, m := range list {
		if m.Name == s.r.nodeName {
			continue
		}
		ok := false
		for _, u := range m.ClientURLs {
			sctx, cancel := context.WithTimeout(ctx, timeout)
			_, serr := cli.Status(sctx, u)
			cancel()
			if serr == nil {
				ok = true
				break
			}
		}
		if ok {
			serving++
		} else {
			down = append(down, memberLabel(m))
		}
	}
	return serving, down, len(list), nil
}
