package certcheck

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
)

// t0 is when the fixtures are issued: CAs and leaves are valid from t0-1h.
var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

const (
	day          = 24 * time.Hour
	caValidity   = 3650 * day
	leafValidity = 365 * day
	renewWindow  = 90 * day
)

// fixture is a data dir populated the way a kpki server and/or agent lays it out.
type fixture struct {
	t   *testing.T
	dir string
	l   datadir.Layout
	iss *pki.Issuer
	cas map[certs.CAID]*pki.CA
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{t: t, dir: dir, l: datadir.Layout{Root: dir}, iss: pki.NewIssuer(clock.NewFake(t0), nil), cas: map[certs.CAID]*pki.CA{}}
	for _, spec := range certs.CAs {
		key, err := f.iss.NewECKey()
		if err != nil {
			t.Fatal(err)
		}
		cert, err := f.iss.SelfSignedCA(key, fmt.Sprintf("%s@%d", spec.CNPrefix, t0.Unix()), caValidity)
		if err != nil {
			t.Fatal(err)
		}
		pemBytes := pki.EncodeCert(cert)
		f.cas[spec.ID] = &pki.CA{Cert: cert, Key: key, Bundle: []*x509.Certificate{cert}, BundlePEM: pemBytes}
	}
	return f
}

func (f *fixture) write(path string, data []byte) {
	f.t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) leafFile(leaf certs.Leaf) []byte {
	f.t.Helper()
	ca := f.cas[leaf.Signer]
	key, err := f.iss.NewECKey()
	if err != nil {
		f.t.Fatal(err)
	}
	prof := leaf.Profile(certs.Params{NodeName: "node1", ClusterDomain: "cluster.local", SANList: []string{"127.0.0.1", "localhost"}})
	cert, err := f.iss.SignLeaf(ca, key.Public(), prof, leafValidity)
	if err != nil {
		f.t.Fatal(err)
	}
	return certs.BuildCertFile(cert, ca)
}

// server writes every server CA file (with the nochain copies) and every server leaf.
func (f *fixture) server() *fixture {
	for _, spec := range certs.CAs {
		pemBytes := f.cas[spec.ID].BundlePEM
		f.write(f.l.TLS(filepath.FromSlash(spec.CertFile)), pemBytes)
		if spec.NoChainFile != "" {
			f.write(f.l.TLS(spec.NoChainFile), pemBytes)
		}
	}
	for _, leaf := range certs.Select(certs.ServerNode, nil) {
		f.write(f.l.TLS(filepath.FromSlash(leaf.Name+".crt")), f.leafFile(leaf))
	}
	return f
}

// agent writes the agent's copies of server-ca and client-ca and every agent leaf.
func (f *fixture) agent() *fixture {
	for _, id := range []certs.CAID{certs.ServerCA, certs.ClientCA} {
		f.write(f.l.Agent(certs.CA(id).CertFile), f.cas[id].BundlePEM)
	}
	for _, leaf := range certs.Select(certs.AgentNode, nil) {
		f.write(f.l.Agent(leaf.Name+".crt"), f.leafFile(leaf))
	}
	return f
}

// serverCertCount counts the certificates a full server dir holds: one per CA file and
// two (leaf, CA) per leaf file.
func serverCertCount() int {
	n := 0
	for _, spec := range certs.CAs {
		n++
		if spec.NoChainFile != "" {
			n++
		}
	}
	return n + 2*len(certs.Select(certs.ServerNode, nil))
}

func leafNamed(t *testing.T, name string) certs.Leaf {
	t.Helper()
	for _, l := range certs.Leaves {
		if l.Name == name {
			return l
		}
	}
	t.Fatalf("no leaf %s in the table", name)
	return certs.Leaf{}
}
