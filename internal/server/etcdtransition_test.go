package server

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/pki"
)

// offlinePKI is a server with its whole PKI built in a temp dir, no datastore.
func offlinePKI(t *testing.T) *Server {
	t.Helper()
	s := newOffline(t, t.TempDir(), clock.Real{}, nil)
	if err := s.initCAs(); err != nil {
		t.Fatal(err)
	}
	if err := s.buildPKI("test"); err != nil {
		t.Fatal(err)
	}
	return s
}

func leafIssuer(t *testing.T, s *Server, name string) *x509.Certificate {
	t.Helper()
	crt, _ := s.leafPaths(certs.ServerNode, name)
	data, err := os.ReadFile(crt)
	if err != nil {
		t.Fatal(err)
	}
	list, err := pki.ParseCerts(data)
	if err != nil {
		t.Fatal(err)
	}
	return list[0]
}

// newerRecord is the record of disk's files, stamped an hour from now (a record newer
// than the files on disk, as a rotate-ca makes).
func newerRecord(disk map[string]bootstrap.DiskFile) *bootstrap.Record {
	rec := bootstrap.NewRecord()
	for _, f := range bootstrap.Files {
		if d, ok := disk[f.Path]; ok {
			rec.Set(f.Field, bootstrap.File{Content: d.Content, Timestamp: time.Now().Add(time.Hour)})
		}
	}
	return rec
}

// TestEtcdTransitionKeepsEtcdLeavesUntilPhase2 takes a server's files to an unrelated CA
// set as a live apply does: the transition is prepared before the files change, its trust
// bundles hold the old and the new etcd roots, the etcd leaves stay under the old etcd CAs
// (every other leaf is re-issued) until phase 2, when they are re-issued under the new ones.
func TestEtcdTransitionKeepsEtcdLeavesUntilPhase2(t *testing.T) {
	s := offlinePKI(t)
	next := offlinePKI(t)
	nextDisk, err := next.readDisk()
	if err != nil {
		t.Fatal(err)
	}
	rec := newerRecord(nextDisk)

	// The same set again, or an external datastore, makes no transition.
	disk, _ := s.readDisk()
	if _, err := s.classifyRecord(disk, diskRecord(disk)); err != nil || s.activeTransition() != nil {
		t.Fatalf("the same CA set started a transition (%v)", err)
	}
	ext := newOffline(t, s.cfg.DataDir, clock.Real{}, nil)
	ext.cfg.DatastoreEndpoint = "https://127.0.0.1:2379"
	if _, err := ext.classifyRecord(disk, rec); err != nil || ext.activeTransition() != nil {
		t.Fatalf("an external datastore started a transition (%v)", err)
	}

	oldEtcdCA := map[certs.CAID][]byte{}
	for _, c := range certs.CAs {
		if c.Etcd {
			oldEtcdCA[c.ID], _ = os.ReadFile(s.layout.TLS(c.CertFile))
		}
	}
	writes, disk, err := s.planRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	cont, err := s.classifyRecord(disk, rec)
	if err != nil {
		t.Fatal(err)
	}
	if !etcdRootBroken(cont) {
		t.Fatalf("an unrelated CA set keeps the etcd continuity: %+v", cont)
	}
	tr := s.activeTransition()
	if tr == nil || tr.Phase != 0 || tr.ID == "" {
		t.Fatalf("transition %+v, want one at phase 0", tr)
	}
	if st, err := os.Stat(s.transitionDir()); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("transition dir: %v %v", st, err)
	}
	if serverCA, _ := s.etcdTrust(); serverCA != s.trustFile(certs.CA(certs.ETCDServerCA)) {
		t.Errorf("the member would trust %s during the transition", serverCA)
	}
	for _, c := range certs.CAs {
		if !c.Etcd {
			continue
		}
		data, err := os.ReadFile(s.trustFile(c))
		if err != nil {
			t.Fatal(err)
		}
		trust, _ := pki.ParseCerts(data)
		oldCert, _ := pki.ParseCerts(oldEtcdCA[c.ID])
		newCert, _ := pki.ParseCerts(nextDisk[diskPath(c.CertFile)].Content)
		if len(trust) != 2 || !trust[0].Equal(oldCert[0]) || !trust[1].Equal(newCert[0]) {
			t.Errorf("trust bundle for %s holds %d certificates, want the old and the new root", c.CertFile, len(trust))
		}
		crt, key := s.oldCAFiles(c)
		for _, f := range []string{crt, key} {
			if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
				t.Errorf("%s: %v %v", f, st, err)
			}
		}
	}

	if _, err := s.applyWrites(writes, false); err != nil {
		t.Fatal(err)
	}
	cas, err := s.readCAs()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ensureLeavesUnder("test", cas); err != nil {
		t.Fatal(err)
	}
	newCAs, _ := next.readCAs()
	oldPeer, _ := pki.ParseCerts(oldEtcdCA[certs.ETCDPeerCA])
	if err := leafIssuer(t, s, "etcd/peer-server-client").CheckSignatureFrom(oldPeer[0]); err != nil {
		t.Errorf("the peer certificate left the old etcd peer CA before phase 2: %v", err)
	}
	if err := leafIssuer(t, s, "serving-supervisor").CheckSignatureFrom(newCAs[certs.ServerCA].Cert); err != nil {
		t.Errorf("the supervisor certificate was not re-issued under the new server CA: %v", err)
	}

	// A second forced set during the transition keeps the old CAs and trusts all three.
	third := offlinePKI(t)
	thirdDisk, _ := third.readDisk()
	tr.Phase = 1
	if err := s.saveTransition(tr); err != nil {
		t.Fatal(err)
	}
	disk, _ = s.readDisk()
	if _, err := s.classifyRecord(disk, diskRecord(thirdDisk)); err != nil {
		t.Fatal(err)
	}
	if tr2 := s.activeTransition(); tr2 == nil || tr2.Phase != 0 || tr2.ID == tr.ID {
		t.Errorf("transition after a second set: %+v (first %+v)", tr2, tr)
	}
	peerTrust, _ := os.ReadFile(s.trustFile(certs.CA(certs.ETCDPeerCA)))
	if list, _ := pki.ParseCerts(peerTrust); len(list) != 3 {
		t.Errorf("peer trust holds %d certificates after a second set, want 3", len(list))
	}
	oldCopy, _ := s.oldCAFiles(certs.CA(certs.ETCDPeerCA))
	if data, _ := os.ReadFile(oldCopy); !bytes.Equal(data, oldEtcdCA[certs.ETCDPeerCA]) {
		t.Error("a second set replaced the old etcd peer CA the leaves are still under")
	}
	tr.Phase = 1
	_ = s.saveTransition(tr)

	tr.Phase = 2
	if err := s.saveTransition(tr); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ensureLeavesUnder("test", cas); err != nil {
		t.Fatal(err)
	}
	if err := leafIssuer(t, s, "etcd/peer-server-client").CheckSignatureFrom(newCAs[certs.ETCDPeerCA].Cert); err != nil {
		t.Errorf("phase 2 did not re-issue the peer certificate under the new etcd peer CA: %v", err)
	}

	// A state file that does not parse is an error, not a transition.
	if err := os.WriteFile(filepath.Join(s.transitionDir(), transitionStateFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.loadTransition(); err == nil {
		t.Error("a corrupt transition state was accepted")
	}
}
