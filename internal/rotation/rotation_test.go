package rotation

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/pki"
)

var t0 = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

type ca struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newRoot(t *testing.T, iss *pki.Issuer, cn string) ca {
	t.Helper()
	k, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	c, err := iss.SelfSignedCA(k, cn, 10*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca{c, k}
}

func newSub(t *testing.T, iss *pki.Issuer, parent ca, cn string) ca {
	t.Helper()
	k, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	c, err := iss.SignCA(&pki.CA{Cert: parent.cert, Key: parent.key}, k.Public(), cn, 5*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca{c, k}
}

func keyPEM(t *testing.T, keys ...crypto.Signer) []byte {
	t.Helper()
	var out []byte
	for _, k := range keys {
		b, err := pki.EncodeKey(k)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	return out
}

// fixture is a record with five self-signed CAs and a service key.
type fixture struct {
	iss     *pki.Issuer
	rec     *bootstrap.Record
	server  ca
	svcKey  crypto.Signer
	svcPEM  []byte
	oldHash string
}

func newFixture(t *testing.T) *fixture {
	iss := pki.NewIssuer(clock.NewFake(t0), nil)
	f := &fixture{iss: iss, rec: bootstrap.NewRecord()}
	for _, p := range caPairs {
		r := newRoot(t, iss, p.cert)
		if p.cert == "ServerCA" {
			f.server = r
		}
		f.rec.Set(p.cert, bootstrap.File{Timestamp: t0, Content: pki.EncodeCert(r.cert)})
		f.rec.Set(p.key, bootstrap.File{Timestamp: t0, Content: keyPEM(t, r.key)})
	}
	k, err := iss.NewRSAKey(2048)
	if err != nil {
		t.Fatal(err)
	}
	f.svcKey, f.svcPEM = k, keyPEM(t, k)
	f.rec.Set(ServiceKey, bootstrap.File{Timestamp: t0, Content: f.svcPEM})
	f.oldHash, _ = pki.CAHash(pki.EncodeCert(f.server.cert))
	return f
}

// crossSigned returns a new server CA bundle under a new root cross-signed by the old CA.
func (f *fixture) crossSigned(t *testing.T) (bundle []byte, key crypto.Signer, newRootCert *x509.Certificate) {
	root := newRoot(t, f.iss, "new-root")
	cross, err := f.iss.CrossSign(&pki.CA{Cert: f.server.cert, Key: f.server.key}, root.cert, 5*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sub := newSub(t, f.iss, root, "new-server-ca")
	return pki.EncodeCerts(sub.cert, root.cert, cross, f.server.cert), sub.key, root.cert
}

func hasError(r *Result, parts ...string) bool {
	for _, e := range r.Errors {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(e, p)
		}
		if ok {
			return true
		}
	}
	return false
}

func TestCrossSignedRotationAccepted(t *testing.T) {
	f := newFixture(t)
	bundle, key, root := f.crossSigned(t)
	staged := map[string][]byte{"ServerCA": bundle, "ServerCAKey": keyPEM(t, key)}
	r := Validate(f.rec, staged, t0.Add(time.Hour), false)
	if !r.OK() {
		t.Fatalf("rejected: %v", r.Errors)
	}
	sum := sha256.Sum256(root.Raw)
	wantHash := hex.EncodeToString(sum[:])
	if h, _ := pki.CAHash(bundle); h != wantHash {
		t.Fatalf("hash of the bundle is not the new root's")
	}
	if !r.TokensChange || r.NewCAHash != wantHash || r.OldCAHash != f.oldHash {
		t.Errorf("hashes: old %s new %s change %v; want new %s", r.OldCAHash, r.NewCAHash, r.TokensChange, wantHash)
	}
	if len(r.Changes) != 2 || r.Changes[0].File != "tls/server-ca.crt" || r.Changes[0].Old == nil || r.Changes[0].New.Subject != "CN=new-server-ca" {
		t.Errorf("changes: %+v", r.Changes)
	}
}

func TestSameRootRotationKeepsHash(t *testing.T) {
	iss := pki.NewIssuer(clock.NewFake(t0), nil)
	root := newRoot(t, iss, "root")
	inter := newSub(t, iss, root, "intermediate")
	old := newSub(t, iss, inter, "server-ca-1")
	rec := bootstrap.NewRecord()
	rec.Set("ServerCA", bootstrap.File{Timestamp: t0, Content: pki.EncodeCerts(old.cert, inter.cert, root.cert)})
	rec.Set("ServerCAKey", bootstrap.File{Timestamp: t0, Content: keyPEM(t, old.key)})
	next := newSub(t, iss, inter, "server-ca-2")
	staged := map[string][]byte{"ServerCA": pki.EncodeCerts(next.cert, inter.cert, root.cert), "ServerCAKey": keyPEM(t, next.key)}
	r := Validate(rec, staged, t0.Add(time.Hour), false)
	if !r.OK() {
		t.Fatalf("rejected: %v", r.Errors)
	}
	if r.TokensChange {
		t.Errorf("same root changed the token hash %s -> %s", r.OldCAHash, r.NewCAHash)
	}
}

func TestRefusals(t *testing.T) {
	f := newFixture(t)
	bundle, key, _ := f.crossSigned(t)
	other := newRoot(t, f.iss, "unrelated-root")
	otherSub := newSub(t, f.iss, other, "unrelated-ca")
	lone := newRoot(t, f.iss, "lone")
	notCA, err := f.iss.SignLeaf(&pki.CA{Cert: other.cert, Key: other.key}, otherSub.key.Public(), pki.LeafProfile{CommonName: "leaf"}, time.Hour*24)
	if err != nil {
		t.Fatal(err)
	}
	newSvc, _ := f.iss.NewRSAKey(2048)
	cases := []struct {
		name   string
		staged map[string][]byte
		force  bool
		want   []string // substrings of one error
	}{
		{"lone self-signed CA", map[string][]byte{"ServerCA": pki.EncodeCert(lone.cert), "ServerCAKey": keyPEM(t, lone.key)}, false,
			[]string{"tls/server-ca.crt", "single certificate"}},
		{"key does not match", map[string][]byte{"ServerCA": bundle, "ServerCAKey": keyPEM(t, other.key)}, false,
			[]string{"tls/server-ca.key", "does not match"}},
		{"key does not match even with force", map[string][]byte{"ServerCA": bundle, "ServerCAKey": keyPEM(t, other.key)}, true,
			[]string{"tls/server-ca.key", "does not match"}},
		{"chain to another root", map[string][]byte{"ClientCA": pki.EncodeCerts(otherSub.cert, other.cert), "ClientCAKey": keyPEM(t, otherSub.key)}, false,
			[]string{"tls/client-ca.crt", "does not chain to the current CA"}},
		{"service key without the old key", map[string][]byte{"ServiceKey": keyPEM(t, newSvc)}, false,
			[]string{"tls/service.key", "current service-account signing key"}},
		{"truncated PEM", map[string][]byte{"ServerCA": bundle[:len(bundle)/2], "ServerCAKey": keyPEM(t, key)}, true,
			[]string{"tls/server-ca.crt"}},
		{"not a CA", map[string][]byte{"ServerCA": pki.EncodeCerts(notCA, other.cert), "ServerCAKey": keyPEM(t, otherSub.key)}, true,
			[]string{"tls/server-ca.crt", "not a CA"}},
		{"nothing changes", map[string][]byte{"ServiceKey": f.svcPEM}, false, []string{"nothing to rotate"}},
		{"unknown field", map[string][]byte{"PasswdFile": []byte("x,server,server,kpki:server\n")}, false, []string{"PasswdFile", "not a file rotate-ca accepts"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := Validate(f.rec, c.staged, t0.Add(time.Hour), c.force)
			if r.OK() {
				t.Fatal("accepted")
			}
			if !hasError(r, c.want...) {
				t.Errorf("errors %q lack %q", r.Errors, c.want)
			}
		})
	}
}

func TestAllFailuresReportedTogether(t *testing.T) {
	f := newFixture(t)
	lone := newRoot(t, f.iss, "lone")
	newSvc, _ := f.iss.NewRSAKey(2048)
	r := Validate(f.rec, map[string][]byte{
		"ServerCA": pki.EncodeCert(lone.cert), "ServerCAKey": keyPEM(t, lone.key),
		"ServiceKey": keyPEM(t, newSvc),
	}, t0, false)
	if len(r.Errors) != 2 {
		t.Fatalf("want 2 errors, got %q", r.Errors)
	}
}

func TestForceSkipsContinuityChecks(t *testing.T) {
	f := newFixture(t)
	other := newRoot(t, f.iss, "unrelated-root")
	sub := newSub(t, f.iss, other, "unrelated-ca")
	newSvc, _ := f.iss.NewRSAKey(2048)
	staged := map[string][]byte{
		"ServerCA": pki.EncodeCerts(sub.cert, other.cert), "ServerCAKey": keyPEM(t, sub.key),
		"ServiceKey": keyPEM(t, newSvc),
	}
	if r := Validate(f.rec, staged, t0, false); r.OK() {
		t.Fatal("accepted without force")
	}
	r := Validate(f.rec, staged, t0, true)
	if !r.OK() {
		t.Fatalf("rejected with force: %v", r.Errors)
	}
	if !r.TokensChange {
		t.Error("a new root must change the tokens")
	}
}

func TestServiceKeyKeepingOldAccepted(t *testing.T) {
	f := newFixture(t)
	newSvc, _ := f.iss.NewRSAKey(2048)
	staged := map[string][]byte{"ServiceKey": append(keyPEM(t, newSvc), f.svcPEM...)}
	r := Validate(f.rec, staged, t0, false)
	if !r.OK() {
		t.Fatalf("rejected: %v", r.Errors)
	}
	if r.TokensChange || len(r.Changes) != 1 || r.Changes[0].KeyCount != 2 {
		t.Errorf("result %+v", r)
	}
}

func TestApplyStampsChangedFieldsWithNow(t *testing.T) {
	f := newFixture(t)
	newSvc, _ := f.iss.NewRSAKey(2048)
	content := append(keyPEM(t, newSvc), f.svcPEM...)
	now := t0.Add(72 * time.Hour)
	next, err := Apply(f.rec, map[string][]byte{"ServiceKey": content, "ServerCA": mustGet(t, f.rec, "ServerCA").Content}, now)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, next, "ServiceKey"); string(got.Content) != string(content) || !got.Timestamp.Equal(now) {
		t.Errorf("ServiceKey = %v at %v", len(got.Content), got.Timestamp)
	}
	if got := mustGet(t, next, "ServerCA"); !got.Timestamp.Equal(t0) {
		t.Errorf("unchanged ServerCA restamped: %v", got.Timestamp)
	}
	if got := mustGet(t, f.rec, "ServiceKey"); string(got.Content) != string(f.svcPEM) {
		t.Error("Apply changed the current record")
	}
}

func mustGet(t *testing.T, r *bootstrap.Record, field string) bootstrap.File {
	t.Helper()
	f, ok := r.Get(field)
	if !ok {
		t.Fatalf("%s missing", field)
	}
	return f
}

func TestStagedPaths(t *testing.T) {
	want := map[string]string{"ServerCA": "tls/server-ca.crt", "ETCDPeerCAKey": "tls/etcd/peer-ca.key", "ServiceKey": "tls/service.key", "PasswdFile": ""}
	for f, p := range want {
		if got := StagedPath(f); got != p {
			t.Errorf("StagedPath(%s) = %q, want %q", f, got, p)
		}
	}
	if n := len(Fields()); n != 11 {
		t.Errorf("%d fields, want 11", n)
	}
}

// selfSigned makes a self-signed certificate from tmpl for a new key, valid from nb to na.
func selfSigned(t *testing.T, iss *pki.Issuer, tmpl x509.Certificate, nb, na time.Time) ca {
	t.Helper()
	k, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	return signWith(t, tmpl, nb, na, k, nil)
}

// signWith signs tmpl for key by parent (self-signed when parent is nil).
func signWith(t *testing.T, tmpl x509.Certificate, nb, na time.Time, key crypto.Signer, parent *ca) ca {
	t.Helper()
	serial, err := pki.NewSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = serial, nb, na
	issuer, signer := &tmpl, key
	if parent != nil {
		issuer, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return ca{c, key}
}

var caTemplate = x509.Certificate{
	Subject:               pkix.Name{CommonName: "forced-ca"},
	BasicConstraintsValid: true,
	IsCA:                  true,
	KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
}

// TestForceNeverSkipsCAChecks stages, with --force, CAs the server would refuse at start
// and CAs that share a key with another CA: each is refused with the file named, and for
// every case whose CA pki.CheckCA refuses, Validate refuses too.
func TestForceNeverSkipsCAChecks(t *testing.T) {
	f := newFixture(t)
	now := t0.Add(time.Hour)
	year := 365 * 24 * time.Hour
	expired := selfSigned(t, f.iss, caTemplate, t0.Add(-2*year), t0.Add(-year))
	notYet := selfSigned(t, f.iss, caTemplate, t0.Add(year), t0.Add(2*year))
	leafTmpl := x509.Certificate{Subject: pkix.Name{CommonName: "not-a-ca"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true}
	leaf := selfSigned(t, f.iss, leafTmpl, t0, t0.Add(year))
	usageTmpl := caTemplate
	usageTmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	wrongUsage := selfSigned(t, f.iss, usageTmpl, t0, t0.Add(year))
	root := newRoot(t, f.iss, "forced-root")
	sub := newSub(t, f.iss, root, "forced-sub")
	good := newRoot(t, f.iss, "forced-good")
	other := newRoot(t, f.iss, "unrelated")

	clientKey, err := pki.ParseKey(mustGet(t, f.rec, "ClientCAKey").Content)
	if err != nil {
		t.Fatal(err)
	}
	sharesClient := signWith(t, caTemplate, t0, t0.Add(year), clientKey, nil)
	twinKey, err := f.iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	twinA := signWith(t, caTemplate, t0, t0.Add(year), twinKey, nil)
	twinB := signWith(t, caTemplate, t0, t0.Add(year), twinKey, nil)

	pair := func(certField string, c ca) map[string][]byte {
		return map[string][]byte{certField: pki.EncodeCert(c.cert), certField + "Key": keyPEM(t, c.key)}
	}
	cases := []struct {
		name   string
		staged map[string][]byte
		want   []string
	}{
		{"expired", pair("ServerCA", expired), []string{"tls/server-ca.crt", "expired on"}},
		{"not yet valid", pair("ClientCA", notYet), []string{"tls/client-ca.crt", "not valid before"}},
		{"not a CA", pair("RequestHeaderCA", leaf), []string{"tls/request-header-ca.crt", "not a CA"}},
		{"self-signed without keyCertSign", pair("ETCDServerCA", wrongUsage), []string{"tls/etcd/server-ca.crt", "keyCertSign"}},
		{"key does not match", map[string][]byte{"ETCDPeerCA": pki.EncodeCert(good.cert), "ETCDPeerCAKey": keyPEM(t, other.key)},
			[]string{"tls/etcd/peer-ca.key", "does not match"}},
		{"chain without its root", map[string][]byte{"ServerCA": pki.EncodeCert(sub.cert), "ServerCAKey": keyPEM(t, sub.key)},
			[]string{"tls/server-ca.crt", "chain does not verify"}},
		{"chain to a root not in the file", map[string][]byte{"ServerCA": pki.EncodeCerts(sub.cert, other.cert), "ServerCAKey": keyPEM(t, sub.key)},
			[]string{"tls/server-ca.crt", "chain does not verify"}},
		{"server-ca with the key of the kept client-ca", pair("ServerCA", sharesClient),
			[]string{"tls/server-ca.key", "the same key as tls/client-ca.key"}},
		{"two staged CAs with one key", map[string][]byte{
			"ServerCA": pki.EncodeCert(twinA.cert), "ServerCAKey": keyPEM(t, twinKey),
			"ETCDPeerCA": pki.EncodeCert(twinB.cert), "ETCDPeerCAKey": keyPEM(t, twinKey),
		}, []string{"tls/etcd/peer-ca.key", "the same key as tls/server-ca.key"}},
		{"new key of the kept request-header cert is client-ca's", map[string][]byte{"RequestHeaderCAKey": keyPEM(t, clientKey)},
			[]string{"tls/request-header-ca.key", "the same key as tls/client-ca.key"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, force := range []bool{true, false} {
				r := Validate(f.rec, c.staged, now, force)
				if r.OK() {
					t.Fatalf("force=%v: accepted", force)
				}
				if !hasError(r, c.want...) {
					t.Errorf("force=%v: errors %q lack %q", force, r.Errors, c.want)
				}
			}
		})
	}

	t.Run("a forced CA that CheckCA refuses is refused", func(t *testing.T) {
		for _, c := range cases {
			for _, p := range caPairs {
				crt, ok := c.staged[p.cert]
				if !ok {
					continue
				}
				keyFile, ok := c.staged[p.key]
				if !ok {
					keyFile = mustGet(t, f.rec, p.key).Content
				}
				loaded, err := pki.LoadCA(crt, keyFile)
				if err == nil && pki.CheckCA(loaded, now) == nil {
					continue
				}
				if r := Validate(f.rec, map[string][]byte{p.cert: crt, p.key: keyFile}, now, true); r.OK() {
					t.Errorf("%s: %s accepted with force although the server refuses it at start", c.name, p.cert)
				}
			}
		}
	})

	t.Run("every failure reported together", func(t *testing.T) {
		staged := map[string][]byte{}
		for _, m := range []map[string][]byte{pair("ServerCA", expired), pair("ClientCA", leaf), pair("ETCDServerCA", wrongUsage)} {
			for k, v := range m {
				staged[k] = v
			}
		}
		r := Validate(f.rec, staged, now, true)
		for _, want := range [][]string{{"tls/server-ca.crt", "expired"}, {"tls/client-ca.crt", "not a CA"}, {"tls/etcd/server-ca.crt", "keyCertSign"}} {
			if !hasError(r, want...) {
				t.Errorf("errors %q lack %q", r.Errors, want)
			}
		}
	})

	t.Run("a valid forced CA is accepted", func(t *testing.T) {
		if r := Validate(f.rec, pair("ServerCA", good), now, true); !r.OK() {
			t.Fatalf("rejected: %q", r.Errors)
		}
		if r := Validate(f.rec, map[string][]byte{"ServerCA": pki.EncodeCerts(sub.cert, root.cert), "ServerCAKey": keyPEM(t, sub.key)}, now, true); !r.OK() {
			t.Fatalf("chain with its root rejected: %q", r.Errors)
		}
	})
}

// TestSharedKeysAlreadyInRecord: two kept CAs that already share a key do not block the
// rotation of something else (the server ran with them), but a staged CA joining them does.
func TestSharedKeysAlreadyInRecord(t *testing.T) {
	f := newFixture(t)
	f.rec.Set("RequestHeaderCAKey", mustGet(t, f.rec, "ClientCAKey"))
	shared, err := pki.ParseKey(mustGet(t, f.rec, "ClientCAKey").Content)
	if err != nil {
		t.Fatal(err)
	}
	f.rec.Set("RequestHeaderCA", bootstrap.File{Timestamp: t0,
		Content: pki.EncodeCert(signWith(t, caTemplate, t0, t0.Add(time.Hour*24*365), shared, nil).cert)})
	newSvc, _ := f.iss.NewRSAKey(2048)
	if r := Validate(f.rec, map[string][]byte{"ServiceKey": append(keyPEM(t, newSvc), f.svcPEM...)}, t0, false); !r.OK() {
		t.Fatalf("rejected: %q", r.Errors)
	}
	joins := signWith(t, caTemplate, t0, t0.Add(time.Hour*24*365), shared, nil)
	r := Validate(f.rec, map[string][]byte{"ETCDPeerCA": pki.EncodeCert(joins.cert), "ETCDPeerCAKey": keyPEM(t, shared)}, t0, true)
	if !hasError(r, "tls/etcd/peer-ca.key", "the same key as tls/client-ca.key") || !hasError(r, "tls/etcd/peer-ca.key", "the same key as tls/request-header-ca.key") {
		t.Errorf("errors %q", r.Errors)
	}
}
