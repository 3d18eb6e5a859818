package rotation

import (
	"slices"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/pki"
)

// applied is f's record with staged applied.
func applied(t *testing.T, f *fixture, staged map[string][]byte) *bootstrap.Record {
	t.Helper()
	next, err := Apply(f.rec, staged, t0)
	if err != nil {
		t.Fatal(err)
	}
	return next
}

func TestClassifyCrossSignedIsContinuous(t *testing.T) {
	f := newFixture(t)
	bundle, key, _ := f.crossSigned(t)
	next := applied(t, f, map[string][]byte{"ServerCA": bundle, "ServerCAKey": keyPEM(t, key)})
	c := Classify(f.rec, next, t0.Add(time.Hour))
	if !slices.Equal(c.Changed, []certs.CAID{certs.ServerCA}) || len(c.Broken) != 0 || c.Disruptive() {
		t.Errorf("cross-signed server CA: %+v, want server-ca changed, continuous", c)
	}
	if !c.TokensChange || c.OldCAHash != f.oldHash || c.NewCAHash == f.oldHash {
		t.Errorf("token hashes %s -> %s (change %v)", c.OldCAHash, c.NewCAHash, c.TokensChange)
	}
	// Putting the previous record back over it keeps continuity too: the new bundle
	// holds the old root.
	back := Classify(next, f.rec, t0.Add(time.Hour))
	if !slices.Equal(back.Changed, []certs.CAID{certs.ServerCA}) || back.Disruptive() {
		t.Errorf("the previous record put back: %+v, want continuous", back)
	}
}

func TestClassifySameRootIsContinuous(t *testing.T) {
	iss := newFixture(t).iss
	root := newRoot(t, iss, "root")
	old := newSub(t, iss, root, "etcd-server-ca-1")
	next := newSub(t, iss, root, "etcd-server-ca-2")
	field, keyField := certs.CA(certs.ETCDServerCA).CertField, certs.CA(certs.ETCDServerCA).KeyField
	a, b := bootstrap.NewRecord(), bootstrap.NewRecord()
	a.Set(field, bootstrap.File{Content: pki.EncodeCerts(old.cert, root.cert)})
	a.Set(keyField, bootstrap.File{Content: keyPEM(t, old.key)})
	b.Set(field, bootstrap.File{Content: pki.EncodeCerts(next.cert, root.cert)})
	b.Set(keyField, bootstrap.File{Content: keyPEM(t, next.key)})
	c := Classify(a, b, t0.Add(time.Hour))
	if !slices.Equal(c.Changed, []certs.CAID{certs.ETCDServerCA}) || c.Disruptive() || c.TokensChange {
		t.Errorf("same root: %+v", c)
	}
}

func TestClassifyForcedNewRootIsDisruptive(t *testing.T) {
	f := newFixture(t)
	other := newRoot(t, f.iss, "unrelated-root")
	newSvc, _ := f.iss.NewRSAKey(2048)
	next := applied(t, f, map[string][]byte{"ClientCA": pki.EncodeCert(other.cert), "ClientCAKey": keyPEM(t, other.key), "ServiceKey": keyPEM(t, newSvc)})
	c := Classify(f.rec, next, t0.Add(time.Hour))
	if !slices.Equal(c.Broken, []certs.CAID{certs.ClientCA}) || !c.Disruptive() {
		t.Errorf("new client root: %+v, want client-ca broken", c)
	}
	if !c.ServiceKey || !c.ServiceKeyBroken {
		t.Errorf("a service.key without the current key: %+v, want changed and broken", c)
	}
	if c.TokensChange {
		t.Error("the client CA does not carry the token hash")
	}
}

func TestClassifyNothingChanged(t *testing.T) {
	f := newFixture(t)
	svc, _ := f.iss.NewRSAKey(2048)
	next := applied(t, f, map[string][]byte{"ServiceKey": append(keyPEM(t, svc), f.svcPEM...)})
	c := Classify(f.rec, next, t0)
	if c.CAsChanged() || c.Disruptive() || !c.ServiceKey || c.ServiceKeyBroken || c.TokensChange {
		t.Errorf("service.key that keeps the current key: %+v", c)
	}
	if c := Classify(f.rec, f.rec, t0); c.CAsChanged() || c.ServiceKey || c.TokensChange {
		t.Errorf("same record: %+v", c)
	}
}
