package server

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/kpki/kpki/internal/datastore"
)

// situation is what a start finds before it touches the datastore: it decides the
// start-up plan.
type situation struct {
	// external: --datastore-endpoint names an etcd this server does not run.
	external bool
	// join: --server names a server of the cluster to join.
	join bool
	// member: the data dir holds an embedded etcd member (after an interrupted first
	// start without data was discarded).
	member bool
}

func (s situation) String() string {
	switch {
	case s.external:
		return "external datastore"
	case s.member:
		return "restart of an embedded etcd member"
	case s.join:
		return "joining server"
	}
	return "first server"
}

// step is one step of the start-up of the datastore and the PKI. Steps marked "when no
// record" are skipped once a bootstrap record was found.
type step string

const (
	stepConnect        step = "connect to the external datastore"
	stepReconcile      step = "reconcile the disk from the bootstrap record in the datastore"
	stepFirstCAs       step = "when no record: use a complete custom CA set on disk or generate the CAs"
	stepBuildPKI       step = "load the CAs, bring the leaves and derived files up to date"
	stepSaveRecord     step = "when no record: store the bootstrap record create-only (a loser of the race adopts the winner's)"
	stepJoin           step = "join: pin the CA, fetch the record from --server, write it, issue the leaves, add and start the etcd member"
	stepRequireRecord  step = "the joined cluster must hold the record for this token"
	stepReconcileLocal step = "reconcile the disk from the record in this server's own etcd member, read-only, before anything is planned"
	stepCheckCAFiles   step = "refuse missing CA files the record could not restore"
	stepStartEtcd      step = "start the embedded etcd member with its listeners"
	stepReplan         step = "when the cluster's record was newer: re-plan the leaves and restart etcd if its certificates changed"
)

// startupPlan is the ordered start-up of the datastore and the PKI for a situation. It
// decides nothing at run time but what the "when no record" steps say.
func startupPlan(sit situation) []step {
	switch {
	case sit.external:
		return []step{stepConnect, stepReconcile, stepFirstCAs, stepBuildPKI, stepSaveRecord}
	case sit.member:
		return []step{stepReconcileLocal, stepCheckCAFiles, stepBuildPKI, stepStartEtcd, stepReconcile, stepSaveRecord, stepReplan}
	case sit.join:
		return []step{stepJoin, stepReconcile, stepRequireRecord}
	}
	return []step{stepFirstCAs, stepBuildPKI, stepStartEtcd, stepReconcile, stepSaveRecord, stepReplan}
}

// startState is what the steps found so far.
type startState struct {
	// found: a bootstrap record for this token was read (by the last reconcile).
	found bool
	// changed are the files the last reconcile wrote.
	changed []string
}

// situation looks at the configuration and the data dir; an embedded member whose
// first start was interrupted before it wrote anything is discarded first.
func (s *Server) situation() (situation, error) {
	if !s.embeddedEtcd() {
		return situation{external: true}, nil
	}
	if s.cfg.ServerURL == "" {
		gone, err := datastore.DiscardUnbootstrapped(s.layout.EtcdDir())
		if err != nil {
			return situation{}, err
		}
		if gone {
			s.log.Warn("removed an embedded etcd member whose first start was interrupted before it wrote anything; starting it anew", "dir", s.layout.EtcdDir())
		}
	}
	return situation{join: s.cfg.ServerURL != "", member: s.hasEtcdMember()}, nil
}

// startPKI brings the datastore and the PKI on disk to the state the cluster needs,
// following startupPlan. It runs before anything serves: no lock is needed.
func (s *Server) startPKI(ctx context.Context) error {
	sit, err := s.situation()
	if err != nil {
		return err
	}
	st := &startState{}
	for _, step := range startupPlan(sit) {
		if err := s.runStep(ctx, step, st); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) runStep(ctx context.Context, st step, state *startState) error {
	var err error
	switch st {
	case stepConnect:
		err = s.connectExternal(ctx)
	case stepReconcile:
		state.found, state.changed, err = s.reconcile(ctx)
	case stepFirstCAs:
		if !state.found {
			s.firstStart = true
			err = s.initCAs()
		}
	case stepBuildPKI:
		err = s.buildPKI("start-up")
	case stepSaveRecord:
		if !state.found {
			err = s.saveRecord(ctx)
		}
	case stepJoin:
		err = s.joinCluster(ctx)
	case stepRequireRecord:
		if !state.found {
			err = errors.New("joined the etcd cluster but found no bootstrap data for this token in it")
		}
	case stepReconcileLocal:
		state.found, err = s.reconcileLocal(ctx)
	case stepCheckCAFiles:
		err = s.checkCAFiles(state.found)
	case stepStartEtcd:
		err = s.startEtcd(ctx)
	case stepReplan:
		if state.found && len(state.changed) > 0 {
			err = s.replan(ctx)
		}
	default:
		err = fmt.Errorf("unknown start-up step %q", st)
	}
	return err
}

// checkCAFiles refuses a restart whose CA files are missing and were not restored from
// the member's record.
func (s *Server) checkCAFiles(found bool) error {
	missing := s.missingCAFiles()
	if len(missing) == 0 {
		return nil
	}
	if found {
		return fmt.Errorf("CA files are missing (%s) and the bootstrap data in this server's etcd member does not hold them: restore them from a backup",
			strings.Join(missing, ", "))
	}
	return fmt.Errorf("etcd data exists in %s but holds no bootstrap data for this token, and CA files are missing (%s): start with the cluster's token, restore the files from a backup, or remove %s to start a new cluster",
		s.layout.EtcdDir(), strings.Join(missing, ", "), s.layout.EtcdDir())
}

// replan brings the leaves up to date with CAs the cluster's record changed and
// restarts the embedded member when its own certificates changed with them.
func (s *Server) replan(ctx context.Context) error {
	etcdBefore := s.etcdCertFingerprint()
	if err := s.buildPKI("start-up"); err != nil {
		return err
	}
	if s.etcdCertFingerprint() == etcdBefore {
		return nil
	}
	s.log.Info("etcd certificates changed with the CAs from the datastore; restarting embedded etcd")
	s.embedded.Close()
	s.embedded, s.store = nil, nil
	return s.startEtcd(ctx)
}
