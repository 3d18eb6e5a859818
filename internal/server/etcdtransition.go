package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/rotation"
)

// An etcd CA transition takes the embedded members of a cluster from etcd CAs to new
// ones that are a new root (rotate-ca --force): members under the old and the new roots
// do not trust each other, so no member may present a certificate under the new root
// before every member trusts it, nor drop the old root before every member presents the
// new one. Each server takes its member through three phases, each a restart under the
// cluster's etcd restart lock (one member at a time):
//
//  1. trust the old and the new roots, keep presenting the certificates under the old CAs;
//  2. once every member has reached 1: present certificates under the new CAs (its etcd
//     leaves are re-issued), still trusting both;
//  3. once every member has reached 2: trust the new roots only.
//
// Each server publishes the phase its member reached under transitionPrefix; its own
// progress and what it needs until the end (the old CAs, the trust bundles of both) are
// kept in the transition dir, so that a crash or a restart resumes where it stopped.

const (
	// transitionPrefix/<id>/<member name> holds the phase the member has reached.
	transitionPrefix = "/kpki/etcd-transition/"
	// transitionWait bounds the wait for the other members to reach a phase.
	transitionWait = 10 * time.Minute
	transitionPoll = time.Second
	transitionLast = 3
	// transitionStateFile marks a transition in progress; it is written last.
	transitionStateFile = "state.json"
)

// etcdTransition is the state of this member's transition.
type etcdTransition struct {
	// ID names the transition: a hash of the new etcd CA certificates.
	ID string `json:"id"`
	// Phase is the phase this member has started (its work is redone on resume).
	Phase int `json:"phase"`
}

func (s *Server) transitionDir() string { return s.layout.TLS("etcd", "transition") }

// transitionFile is the path of name in the transition dir.
func (s *Server) transitionFile(name string) string {
	return filepath.Join(s.transitionDir(), name)
}

// trustFile is the transition's trust bundle (old and new roots) for an etcd CA.
func (s *Server) trustFile(c certs.CASpec) string {
	return s.transitionFile("trust-" + filepath.Base(c.CertFile))
}

// oldCAFiles are the transition's copies of an etcd CA's old certificate and key.
func (s *Server) oldCAFiles(c certs.CASpec) (string, string) {
	return s.transitionFile("old-" + filepath.Base(c.CertFile)), s.transitionFile("old-" + filepath.Base(c.KeyFile))
}

// loadTransition reads the transition in progress; nil when there is none.
func (s *Server) loadTransition() (*etcdTransition, error) {
	data, err := datadir.ReadOptional(s.transitionFile(transitionStateFile))
	if err != nil || data == nil {
		return nil, err
	}
	var t etcdTransition
	if err := json.Unmarshal(data, &t); err != nil {
		return nil, fmt.Errorf("etcd CA transition state %s: %w", s.transitionFile(transitionStateFile), err)
	}
	if t.ID == "" || t.Phase < 0 || t.Phase > transitionLast {
		return nil, fmt.Errorf("etcd CA transition state %s: bad id or phase %d", s.transitionFile(transitionStateFile), t.Phase)
	}
	return &t, nil
}

// saveTransition writes the state atomically.
func (s *Server) saveTransition(t *etcdTransition) error {
	data, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return datadir.WriteFile(s.transitionFile(transitionStateFile), append(data, '\n'), 0o600)
}

// activeTransition is the transition in progress, nil when none (or its state cannot
// be read, which is logged).
func (s *Server) activeTransition() *etcdTransition {
	t, err := s.loadTransition()
	if err != nil {
		s.log.Error("cannot read the etcd CA transition state", "error", err)
		return nil
	}
	return t
}

// etcdRootBroken reports whether c breaks the continuity of an etcd CA.
func etcdRootBroken(c rotation.Continuity) bool {
	for _, id := range c.Broken {
		if certs.CA(id).Etcd {
			return true
		}
	}
	return false
}

// diskPath is the bootstrap.FileSpec.Path of a file of the server tls dir.
func diskPath(tlsFile string) string {
	return path.Join(bootstrap.TLSDir, tlsFile)
}

// etcdCAsOnDisk reports whether disk holds every etcd CA with its key: a transition
// starts from the CAs a member runs with, never from none.
func (s *Server) etcdCAsOnDisk(disk map[string]bootstrap.DiskFile) bool {
	for _, c := range certs.CAs {
		if c.Etcd && (len(disk[diskPath(c.CertFile)].Content) == 0 || len(disk[diskPath(c.KeyFile)].Content) == 0) {
			return false
		}
	}
	return true
}

// beginEtcdTransition prepares the transition to rec's etcd CAs, before the files on
// disk (disk, keyed by bootstrap.FileSpec.Path) are replaced: the old CAs are copied,
// and the trust bundles hold every certificate of the old and the new CA bundles. A
// transition already in progress is restarted from phase 0 towards rec, trusting
// everything it trusted too.
func (s *Server) beginEtcdTransition(disk map[string]bootstrap.DiskFile, rec *bootstrap.Record) error {
	prev, err := s.loadTransition()
	if err != nil {
		return err
	}
	if err := datadir.MkdirAll(s.transitionDir()); err != nil {
		return err
	}
	var id bytes.Buffer
	for _, c := range certs.CAs {
		if !c.Etcd {
			continue
		}
		next, _ := rec.Get(c.CertField)
		id.Write(next.Content)
		old := disk[diskPath(c.CertFile)].Content
		oldKey := disk[diskPath(c.KeyFile)].Content
		if len(old) == 0 || len(oldKey) == 0 {
			return fmt.Errorf("etcd CA transition: the current %s or its key is missing", c.CertFile)
		}
		trust := [][]byte{old, next.Content}
		if prev != nil {
			kept, err := datadir.ReadOptional(s.trustFile(c))
			if err != nil {
				return err
			}
			trust = append(trust, kept)
		}
		bundle, err := unionPEM(trust...)
		if err != nil {
			return fmt.Errorf("etcd CA transition: trust bundle for %s: %w", c.CertFile, err)
		}
		if err := datadir.WriteFile(s.trustFile(c), bundle, 0o600); err != nil {
			return err
		}
		// The old CAs sign nothing new; they are what the etcd leaves stay under until
		// phase 2. A transition that had not reached it keeps its own old CAs.
		if prev == nil || prev.Phase >= 2 {
			crt, key := s.oldCAFiles(c)
			if err := datadir.WriteFile(crt, old, 0o600); err != nil {
				return err
			}
			if err := datadir.WriteFile(key, oldKey, 0o600); err != nil {
				return err
			}
		}
	}
	sum := sha256.Sum256(id.Bytes())
	t := &etcdTransition{ID: hex.EncodeToString(sum[:8]), Phase: 0}
	s.log.Warn("the etcd CAs are a new root: the embedded members move to it in three restarts each, one member at a time (trust both roots, present the new certificates, trust the new root only)",
		"transition", t.ID)
	return s.saveTransition(t)
}

// unionPEM is every distinct certificate of the PEM bundles, in order.
func unionPEM(bundles ...[]byte) ([]byte, error) {
	var out []byte
	var seen [][]byte
	for _, b := range bundles {
		if len(b) == 0 {
			continue
		}
		list, err := pki.ParseCerts(b)
		if err != nil {
			return nil, err
		}
		for _, c := range list {
			if slices.ContainsFunc(seen, func(r []byte) bool { return bytes.Equal(r, c.Raw) }) {
				continue
			}
			seen = append(seen, c.Raw)
			out = append(out, pki.EncodeCert(c)...)
		}
	}
	return out, nil
}

// etcdTrust is the trusted CA files the embedded member is to run with: the
// transition's bundles until its last phase, the CA files otherwise.
func (s *Server) etcdTrust() (serverCA, peerCA string) {
	serverCA = s.layout.TLS(certs.CA(certs.ETCDServerCA).CertFile)
	peerCA = s.layout.TLS(certs.CA(certs.ETCDPeerCA).CertFile)
	if t := s.activeTransition(); t != nil && t.Phase < transitionLast {
		return s.trustFile(certs.CA(certs.ETCDServerCA)), s.trustFile(certs.CA(certs.ETCDPeerCA))
	}
	return serverCA, peerCA
}

// leafSigners is cas with, while a transition has not reached phase 2, the old etcd
// CAs in place of the new ones: the member's leaves stay under them until then.
func (s *Server) leafSigners(cas map[certs.CAID]*pki.CA) (map[certs.CAID]*pki.CA, error) {
	t := s.activeTransition()
	if t == nil || t.Phase >= 2 {
		return cas, nil
	}
	out := make(map[certs.CAID]*pki.CA, len(cas))
	for id, ca := range cas {
		out[id] = ca
	}
	for _, c := range certs.CAs {
		if !c.Etcd {
			continue
		}
		crt, key := s.oldCAFiles(c)
		ca, err := readCAFiles(crt, key)
		if err != nil {
			return nil, fmt.Errorf("etcd CA transition: old %s: %w", c.CertFile, err)
		}
		out[c.ID] = ca
	}
	return out, nil
}

// readCAFiles reads a CA certificate bundle and its key.
func readCAFiles(crt, key string) (*pki.CA, error) {
	certPEM, err := os.ReadFile(crt)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(key)
	if err != nil {
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	ca, err := pki.LoadCA(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA %s (key %s): %w", crt, key, err)
	}
	return ca, nil
}

// runEtcdTransition takes this member through the remaining phases of t.
func (s *Server) runEtcdTransition(ctx context.Context, t *etcdTransition) error {
	for p := max(t.Phase, 1); p <= transitionLast; p++ {
		if p > t.Phase && p >= 2 {
			if err := s.waitMembersAt(ctx, t.ID, p-1); err != nil {
				return err
			}
		}
		if err := s.transitionPhase(ctx, t, p); err != nil {
			return err
		}
	}
	if err := os.Remove(s.transitionFile(transitionStateFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.RemoveAll(s.transitionDir()); err != nil {
		s.log.Warn("could not remove the etcd CA transition dir", "dir", s.transitionDir(), "error", err)
	}
	s.etcdCAsRunning = s.etcdCAFiles()
	s.log.Info("embedded etcd moved to the new etcd CAs; it trusts the new root only", "transition", t.ID)
	return nil
}

// transitionPhase does phase p under the cluster's etcd restart lock: records it,
// re-issues the etcd leaves (phase 2), restarts the member with the phase's trust, waits
// for it to serve the cluster and publishes the phase.
func (s *Server) transitionPhase(ctx context.Context, t *etcdTransition, p int) error {
	what := fmt.Sprintf("etcd CA transition phase %d", p)
	release, err := s.lockRestart(ctx, what)
	if err != nil {
		return err
	}
	defer release()
	t.Phase = p
	if err := s.saveTransition(t); err != nil {
		return err
	}
	if p == 2 {
		s.pkiMu.Lock()
		_, err := s.ensureLeavesUnder("ca-rotation", s.caSet())
		s.pkiMu.Unlock()
		if err != nil {
			return err
		}
	}
	s.embedded.SetTrust(s.etcdTrust())
	if err := s.restartMember(ctx, func() {}, "restarting embedded etcd for the etcd CA transition", "transition", t.ID, "phase", p); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := s.store.Put(ctx, transitionPrefix+t.ID+"/"+s.r.nodeName, []byte(strconv.Itoa(p))); err != nil {
		return fmt.Errorf("%s: publish: %w", what, err)
	}
	s.log.Info("embedded etcd reached the etcd CA transition phase", "transition", t.ID, "phase", p)
	return nil
}

// waitMembersAt waits until every member of the etcd cluster has published phase p or
// a later one, for at most transitionWait.
func (s *Server) waitMembersAt(ctx context.Context, id string, p int) error {
	var (
		lastLog time.Time
		pending []string
		err     error
	)
	ok, cerr := s.pollFor(ctx, transitionWait, transitionPoll, func() bool {
		pending, err = s.membersBelow(ctx, id, p)
		if err == nil && len(pending) == 0 {
			return true
		}
		if now := s.clock.Now(); now.Sub(lastLog) >= 30*time.Second {
			s.log.Info("waiting for the other etcd members to reach the etcd CA transition phase", "transition", id, "phase", p, "pending", pending, "error", err)
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
		return fmt.Errorf("etcd CA transition: waiting for every member to reach phase %d: %w", p, err)
	}
	return fmt.Errorf("etcd CA transition: members %s have not reached phase %d after %s", strings.Join(pending, ", "), p, transitionWait)
}

// membersBelow lists the members that have not published phase p (or a later one).
func (s *Server) membersBelow(ctx context.Context, id string, p int) ([]string, error) {
	list, err := s.etcdMemberList(ctx, 5*time.Second)
	if err != nil {
		return nil, err
	}
	kvs, _, err := s.store.GetPrefix(ctx, transitionPrefix+id+"/")
	if err != nil {
		return nil, err
	}
	reached := map[string]int{}
	for _, kv := range kvs {
		n, err := strconv.Atoi(string(kv.Value))
		if err == nil {
			reached[strings.TrimPrefix(kv.Key, transitionPrefix+id+"/")] = n
		}
	}
	var pending []string
	for _, m := range list {
		if n, ok := reached[m.Name]; !ok || n < p {
			pending = append(pending, memberLabel(m))
		}
	}
	return pending, nil
}
