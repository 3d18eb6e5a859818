package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/pki"
)

var planNow = time.Date(2026, time.June, 1, 12, 0, 0, 0, time.UTC)

const (
	day         = 24 * time.Hour
	renewBefore = 90 * day
	leafLife    = 365 * day
)

type planFixture struct {
	t     *testing.T
	fc    *clock.Fake
	iss   *pki.Issuer
	ca    *pki.CA // the current CA: an intermediate under a root, bundle = CA + root
	root  *pki.CA
	other *pki.CA // another CA
	twin  *pki.CA // another CA with the same subject as ca
	want  pki.LeafProfile
	key   *ecdsa.PrivateKey
}

func newPlanFixture(t *testing.T) *planFixture {
	t.Helper()
	f := &planFixture{t: t, fc: clock.NewFake(planNow.Add(-30 * day))}
	f.iss = pki.NewIssuer(f.fc, nil)
	f.root = f.selfSigned("root")
	f.ca = f.sub(f.root, "kpki-server-ca@1")
	f.other = f.selfSigned("kpki-other-ca@2")
	f.twin = f.selfSigned("kpki-server-ca@1")
	f.fc.Set(planNow)
	f.want = pki.LeafProfile{
		CommonName:   "kube-apiserver",
		Organization: []string{"o1", "o2"},
		DNSNames:     []string{"kubernetes", "kubernetes.default"},
		IPs:          []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.43.0.1")},
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	f.key = f.newKey()
	return f
}

func (f *planFixture) newKey() *ecdsa.PrivateKey {
	k, err := f.iss.NewECKey()
	if err != nil {
		f.t.Fatal(err)
	}
	return k
}

func (f *planFixture) selfSigned(cn string) *pki.CA {
	k := f.newKey()
	c, err := f.iss.SelfSignedCA(k, cn, 10*365*day)
	if err != nil {
		f.t.Fatal(err)
	}
	return &pki.CA{Cert: c, Key: k, Bundle: []*x509.Certificate{c}, BundlePEM: pki.EncodeCert(c)}
}

func (f *planFixture) sub(parent *pki.CA, cn string) *pki.CA {
	k := f.newKey()
	c, err := f.iss.SignCA(parent, k.Public(), cn, 10*365*day)
	if err != nil {
		f.t.Fatal(err)
	}
	b := append([]*x509.Certificate{c}, parent.Bundle...)
	return &pki.CA{Cert: c, Key: k, Bundle: b, BundlePEM: pki.EncodeCerts(b...)}
}

// leaf issues a certificate for the fixture key at time at (notAfter = at + life).
func (f *planFixture) leaf(ca *pki.CA, p pki.LeafProfile, at time.Time, life time.Duration) *x509.Certificate {
	f.fc.Set(at)
	defer f.fc.Set(planNow)
	c, err := f.iss.SignLeaf(ca, f.key.Public(), p, life)
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// file is the .crt file for a leaf issued by ca, as kpki writes it.
func (f *planFixture) file(c *x509.Certificate, ca *pki.CA) []byte { return BuildCertFile(c, ca) }

// good is an up-to-date leaf issued ten days ago.
func (f *planFixture) good() *x509.Certificate {
	return f.leaf(f.ca, f.want, planNow.Add(-10*day), leafLife)
}

func (f *planFixture) keyPEM(k crypto.Signer) []byte {
	b, err := pki.EncodeKey(k)
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

func (f *planFixture) with(mod func(p *pki.LeafProfile)) pki.LeafProfile {
	p := f.want
	p.Organization = slices.Clone(p.Organization)
	p.DNSNames = slices.Clone(p.DNSNames)
	p.IPs = slices.Clone(p.IPs)
	p.ExtKeyUsage = slices.Clone(p.ExtKeyUsage)
	mod(&p)
	return p
}

func TestPlan(t *testing.T) {
	f := newPlanFixture(t)
	otherKey := f.newKey()
	keyPEM := f.keyPEM(f.key)
	pol := Policy{Now: planNow, RenewBefore: renewBefore}

	good := f.good()
	// exact issues a leaf whose NotAfter is notAfter.
	exact := func(notAfter time.Time) *x509.Certificate {
		return f.leaf(f.ca, f.want, notAfter.Add(-leafLife), leafLife)
	}
	expired := f.leaf(f.ca, f.want, planNow.Add(-400*day), leafLife)
	atNotAfter := exact(planNow)
	inWindow := exact(planNow.Add(30 * day))
	atEdge := exact(planNow.Add(renewBefore))
	pastEdge := exact(planNow.Add(renewBefore + time.Second))
	notYet := f.leaf(f.ca, f.want, planNow.Add(2*time.Hour), leafLife)
	byOther := f.leaf(f.other, f.want, planNow.Add(-10*day), leafLife)
	byTwin := f.leaf(f.twin, f.want, planNow.Add(-10*day), leafLife)
	cnChanged := f.leaf(f.ca, f.with(func(p *pki.LeafProfile) { p.CommonName = "kube-apiserver-old" }), planNow.Add(-10*day), leafLife)
	oChanged := f.leaf(f.ca, f.with(func(p *pki.LeafProfile) { p.Organization = []string{"o1", "o3"} }), planNow.Add(-10*day), leafLife)
	oMissing := f.leaf(f.ca, f.with(func(p *pki.LeafProfile) { p.Organization = nil }), planNow.Add(-10*day), leafLife)
	oExtra := f.leaf(f.ca, f.with(func(p *pki.LeafProfile) { p.Organization = []string{"o1", "o2", "o3"} }), planNow.Add(-10*day), leafLife)
	oReordered := f.leaf(f.ca, f.with(func(p *pki.LeafProfile) { p.Organization = []string{"o2", "o1"} }), planNow.Add(-10*day), leafLife)
	ekuServer := f.leaf(f.ca, f.with(func(p *pki.LeafProfile) { p.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }), planNow.Add(-10*day), leafLife)
	ekuReordered := f.leaf(f.ca, f.with(func(p *pki.LeafProfile) {
		p.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
	}), planNow.Add(-10*day), leafLife)
	dnsMissing := f.leaf(f.ca, f.with(func(p *pki.LeafProfile) { p.DNSNames = []string{"kubernetes"} }), planNow.Add(-10*day), leafLife)
	ipMissing := f.leaf(f.ca, f.with(func(p *pki.LeafProfile) { p.IPs = p.IPs[:1] }), planNow.Add(-10*day), leafLife)
	extraSANs := f.leaf(f.ca, f.with(func(p *pki.LeafProfile) {
		p.DNSNames = append(p.DNSNames, "extra.example.com")
		p.IPs = append(p.IPs, net.ParseIP("192.0.2.7"))
	}), planNow.Add(-10*day), leafLife)
	sanCase := f.leaf(f.ca, f.with(func(p *pki.LeafProfile) { p.DNSNames = []string{"KUBERNETES", "Kubernetes.Default"} }), planNow.Add(-10*day), leafLife)

	// The CA file before it gained its root: the leaf file still carries only the CA.
	oldBundle := &pki.CA{Cert: f.ca.Cert, Key: f.ca.Key, Bundle: f.ca.Bundle[:1], BundlePEM: pki.EncodeCert(f.ca.Cert)}

	type keyWant int
	const (
		noKey keyWant = iota
		fileKey
	)
	tests := []struct {
		name       string
		want       pki.LeafProfile // zero means f.want
		ex         Existing
		pol        Policy
		action     Action
		reason     string
		key        keyWant
		keyIs      crypto.Signer // the key Decision.Key must equal, when key == fileKey
		cert       *x509.Certificate
		wantCorrup string
	}{
		{name: "certificate and key missing", ex: Existing{}, action: Issue, reason: "certificate and key missing"},
		{name: "key only", ex: Existing{KeyPEM: keyPEM}, action: Renew, reason: "certificate missing", key: fileKey, keyIs: f.key},
		{name: "certificate only", ex: Existing{CertPEM: f.file(good, f.ca)}, action: Issue, reason: "key missing", cert: good},
		{name: "up to date", ex: Existing{CertPEM: f.file(good, f.ca), KeyPEM: keyPEM}, action: Keep, key: fileKey, keyIs: f.key, cert: good},
		{name: "key does not match", ex: Existing{CertPEM: f.file(good, f.ca), KeyPEM: f.keyPEM(otherKey)}, action: Renew, reason: "certificate does not match its key", key: fileKey, keyIs: otherKey, cert: good},
		{name: "expired", ex: Existing{CertPEM: f.file(expired, f.ca), KeyPEM: keyPEM}, action: Renew, reason: "expired on " + expired.NotAfter.Format(time.RFC3339), key: fileKey, keyIs: f.key, cert: expired},
		{name: "expires this very second", ex: Existing{CertPEM: f.file(atNotAfter, f.ca), KeyPEM: keyPEM}, action: Renew, reason: "expired on " + planNow.Format(time.RFC3339), key: fileKey, keyIs: f.key, cert: atNotAfter},
		{name: "inside the renew window", ex: Existing{CertPEM: f.file(inWindow, f.ca), KeyPEM: keyPEM}, action: Renew, reason: "expires on " + planNow.Add(30*day).Format(time.RFC3339) + ", within the renewal window", key: fileKey, keyIs: f.key, cert: inWindow},
		{name: "exactly at the renew window's edge", ex: Existing{CertPEM: f.file(atEdge, f.ca), KeyPEM: keyPEM}, action: Renew, reason: "within the renewal window", key: fileKey, keyIs: f.key, cert: atEdge},
		{name: "one second before the renew window", ex: Existing{CertPEM: f.file(pastEdge, f.ca), KeyPEM: keyPEM}, action: Keep, key: fileKey, keyIs: f.key, cert: pastEdge},
		{name: "no renew window, one second left", ex: Existing{CertPEM: f.file(exact(planNow.Add(time.Second)), f.ca), KeyPEM: keyPEM}, pol: Policy{Now: planNow}, action: Keep, key: fileKey, keyIs: f.key},
		{name: "not yet valid", ex: Existing{CertPEM: f.file(notYet, f.ca), KeyPEM: keyPEM}, action: Renew, reason: "not valid before " + planNow.Add(time.Hour).Format(time.RFC3339), key: fileKey, keyIs: f.key, cert: notYet},
		{name: "signed by another CA", ex: Existing{CertPEM: f.file(byOther, f.other), KeyPEM: keyPEM}, action: Renew, reason: "not signed by the current CA", key: fileKey, keyIs: f.key, cert: byOther},
		{name: "signed by another CA with the same name", ex: Existing{CertPEM: f.file(byTwin, f.twin), KeyPEM: keyPEM}, action: Renew, reason: "not signed by the current CA", key: fileKey, keyIs: f.key, cert: byTwin},
		{name: "CN changed", ex: Existing{CertPEM: f.file(cnChanged, f.ca), KeyPEM: keyPEM}, action: Renew, reason: "subject differs from the profile", key: fileKey, keyIs: f.key},
		{name: "O changed", ex: Existing{CertPEM: f.file(oChanged, f.ca), KeyPEM: keyPEM}, action: Renew, reason: "subject differs from the profile", key: fileKey, keyIs: f.key},
		{name: "O missing", ex: Existing{CertPEM: f.file(oMissing, f.ca), KeyPEM: keyPEM}, action: Renew, reason: "subject differs from the profile", key: fileKey, keyIs: f.key},
		{name: "O extra", ex: Existing{CertPEM: f.file(oExtra, f.ca), KeyPEM: keyPEM}, action: Renew, reason: "subject differs from the profile", key: fileKey, keyIs: f.key},
		{name: "O in another order", ex: Existing{CertPEM: f.file(oReordered, f.ca), KeyPEM: keyPEM}, action: Keep, key: fileKey, keyIs: f.key},
		{name: "profile drops O", want: f.with(func(p *pki.LeafProfile) { p.Organization = nil }), ex: Existing{CertPEM: f.file(good, f.ca), KeyPEM: keyPEM}, action: Renew, reason: "subject differs from the profile", key: fileKey, keyIs: f.key},
		{name: "EKU changed", ex: Existing{CertPEM: f.file(ekuServer, f.ca), KeyPEM: keyPEM}, action: Renew, reason: "extended key usage differs from the profile", key: fileKey, keyIs: f.key},
		{name: "EKU in another order", ex: Existing{CertPEM: f.file(ekuReordered, f.ca), KeyPEM: keyPEM}, action: Keep, key: fileKey, keyIs: f.key},
		{name: "DNS SAN missing", ex: Existing{CertPEM: f.file(dnsMissing, f.ca), KeyPEM: keyPEM}, action: Renew, reason: "missing SANs [kubernetes.default]", key: fileKey, keyIs: f.key},
		{name: "IP SAN missing", ex: Existing{CertPEM: f.file(ipMissing, f.ca), KeyPEM: keyPEM}, action: Renew, reason: "missing SANs [10.43.0.1]", key: fileKey, keyIs: f.key},
		{name: "profile gains a SAN", want: f.with(func(p *pki.LeafProfile) { p.DNSNames = append(p.DNSNames, "new.example.com") }), ex: Existing{CertPEM: f.file(good, f.ca), KeyPEM: keyPEM}, action: Renew, reason: "missing SANs [new.example.com]", key: fileKey, keyIs: f.key},
		{name: "extra SANs", ex: Existing{CertPEM: f.file(extraSANs, f.ca), KeyPEM: keyPEM}, action: Keep, key: fileKey, keyIs: f.key, cert: extraSANs},
		{name: "DNS SANs in another case", ex: Existing{CertPEM: f.file(sanCase, f.ca), KeyPEM: keyPEM}, action: Keep, key: fileKey, keyIs: f.key},
		{name: "CA bundle in the file changed", ex: Existing{CertPEM: f.file(good, oldBundle), KeyPEM: keyPEM}, action: Rebundle, reason: "CA bundle changed", key: fileKey, keyIs: f.key, cert: good},
		{name: "leaf without its bundle", ex: Existing{CertPEM: pki.EncodeCert(good), KeyPEM: keyPEM}, action: Rebundle, reason: "CA bundle changed", key: fileKey, keyIs: f.key, cert: good},
		{name: "bundle with CRLF line ends", ex: Existing{CertPEM: bytes.ReplaceAll(f.file(good, f.ca), []byte("\n"), []byte("\r\n")), KeyPEM: keyPEM}, action: Rebundle, reason: "CA bundle changed", key: fileKey, keyIs: f.key},
		{name: "key file with a second key", ex: Existing{CertPEM: f.file(good, f.ca), KeyPEM: append(append([]byte(nil), keyPEM...), f.keyPEM(otherKey)...)}, action: Keep, key: fileKey, keyIs: f.key},
		{name: "corrupt certificate", ex: Existing{CertPEM: []byte("garbage"), KeyPEM: keyPEM}, wantCorrup: "certificate"},
		{name: "empty certificate file", ex: Existing{CertPEM: []byte{}, KeyPEM: keyPEM}, wantCorrup: "certificate"},
		{name: "truncated certificate", ex: Existing{CertPEM: f.file(good, f.ca)[:200], KeyPEM: keyPEM}, wantCorrup: "certificate"},
		{name: "corrupt certificate, key missing", ex: Existing{CertPEM: []byte("garbage")}, wantCorrup: "certificate"},
		{name: "corrupt key", ex: Existing{CertPEM: f.file(good, f.ca), KeyPEM: []byte("garbage")}, wantCorrup: "key"},
		{name: "empty key file", ex: Existing{CertPEM: f.file(good, f.ca), KeyPEM: []byte{}}, wantCorrup: "key"},
		{name: "corrupt key, certificate missing", ex: Existing{KeyPEM: keyPEM[:60]}, wantCorrup: "key"},
		{name: "certificate in the key file", ex: Existing{CertPEM: f.file(good, f.ca), KeyPEM: f.file(good, f.ca)}, wantCorrup: "key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.want
			if want.CommonName == "" {
				want = f.want
			}
			p := tc.pol
			if p.Now.IsZero() {
				p = pol
			}
			d, err := Plan(want, tc.ex, f.ca, p)
			if tc.wantCorrup != "" {
				var ce *CorruptError
				if !errors.As(err, &ce) {
					t.Fatalf("Plan = %v, %v; want a *CorruptError", d.Action, err)
				}
				if ce.What != tc.wantCorrup {
					t.Errorf("CorruptError.What = %q, want %q", ce.What, tc.wantCorrup)
				}
				if !strings.HasPrefix(err.Error(), "corrupt "+tc.wantCorrup+": ") {
					t.Errorf("error %q, want prefix %q", err, "corrupt "+tc.wantCorrup+": ")
				}
				if errors.Unwrap(err) == nil {
					t.Error("CorruptError does not unwrap to the parse error")
				}
				return
			}
			if err != nil {
				t.Fatalf("Plan: %v", err)
			}
			if d.Action != tc.action {
				t.Errorf("Action = %v (%q), want %v", d.Action, d.Reason, tc.action)
			}
			if tc.reason == "" && d.Reason != "" {
				t.Errorf("Reason = %q, want none", d.Reason)
			}
			if !strings.Contains(d.Reason, tc.reason) {
				t.Errorf("Reason = %q, want it to contain %q", d.Reason, tc.reason)
			}
			switch tc.key {
			case noKey:
				if d.Key != nil {
					t.Errorf("Key = %T, want nil (a new key is needed)", d.Key)
				}
			case fileKey:
				type eq interface{ Equal(crypto.PrivateKey) bool }
				if k, ok := d.Key.(eq); !ok || !k.Equal(tc.keyIs) {
					t.Errorf("Key is not the key of the key file")
				}
			}
			if tc.cert != nil && (d.Cert == nil || !d.Cert.Equal(tc.cert)) {
				t.Errorf("Cert is not the leaf of the file")
			}
			if tc.ex.CertPEM == nil && d.Cert != nil {
				t.Error("Cert set although the file is missing")
			}
		})
	}
}

func TestPlanCorruptErrorWrapsParseError(t *testing.T) {
	f := newPlanFixture(t)
	_, err := Plan(f.want, Existing{CertPEM: []byte("  \n")}, f.ca, Policy{Now: planNow})
	if !errors.Is(err, pki.ErrNoPEM) {
		t.Errorf("err = %v, want it to wrap pki.ErrNoPEM", err)
	}
	ce := &CorruptError{What: "key", Err: errors.New("boom")}
	if got := ce.Error(); got != "corrupt key: boom" {
		t.Errorf("Error() = %q", got)
	}
}

// TestPlanRenewalIsAFixedPoint checks that what Plan asks for, once done, is kept.
func TestPlanRenewalIsAFixedPoint(t *testing.T) {
	f := newPlanFixture(t)
	pol := Policy{Now: planNow, RenewBefore: renewBefore}
	keyPEM := f.keyPEM(f.key)
	stale := f.leaf(f.other, f.with(func(p *pki.LeafProfile) { p.CommonName = "old" }), planNow.Add(-300*day), leafLife)
	d, err := Plan(f.want, Existing{CertPEM: f.file(stale, f.other), KeyPEM: keyPEM}, f.ca, pol)
	if err != nil || d.Action != Renew {
		t.Fatalf("Plan = %v %q, %v; want renew", d.Action, d.Reason, err)
	}
	c, err := f.iss.SignLeaf(f.ca, d.Key.Public(), f.want, leafLife)
	if err != nil {
		t.Fatal(err)
	}
	d, err = Plan(f.want, Existing{CertPEM: BuildCertFile(c, f.ca), KeyPEM: keyPEM}, f.ca, pol)
	if err != nil || d.Action != Keep {
		t.Fatalf("after renewal Plan = %v %q, %v; want keep", d.Action, d.Reason, err)
	}
}

func TestActionString(t *testing.T) {
	tests := []struct {
		a    Action
		want string
	}{
		{Keep, "keep"}, {Rebundle, "rebundle"}, {Renew, "renew"}, {Issue, "issue"},
	}
	for _, tc := range tests {
		if got := tc.a.String(); got != tc.want {
			t.Errorf("%d.String() = %q, want %q", tc.a, got, tc.want)
		}
	}
	if !(Keep < Rebundle && Rebundle < Renew && Renew < Issue) {
		t.Error("actions are not ordered from cheapest to most expensive")
	}
}

func TestBuildCertFile(t *testing.T) {
	f := newPlanFixture(t)
	leaf := f.good()
	noNL := bytes.TrimRight(f.ca.BundlePEM, "\n")
	tests := []struct {
		name      string
		bundlePEM []byte
		want      []byte
		certs     int
	}{
		{"chain bundle", f.ca.BundlePEM, append(pki.EncodeCert(leaf), f.ca.BundlePEM...), 3},
		{"bundle without final newline", noNL, append(append(pki.EncodeCert(leaf), noNL...), '\n'), 3},
		{"single-cert bundle", f.root.BundlePEM, append(pki.EncodeCert(leaf), f.root.BundlePEM...), 2},
		{"empty bundle", nil, pki.EncodeCert(leaf), 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			orig := slices.Clone(tc.bundlePEM)
			ca := &pki.CA{Cert: f.ca.Cert, BundlePEM: tc.bundlePEM}
			got := BuildCertFile(leaf, ca)
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("BuildCertFile =\n%s\nwant\n%s", got, tc.want)
			}
			if !bytes.Equal(ca.BundlePEM, orig) {
				t.Error("BuildCertFile modified the CA's bundle")
			}
			certs, err := pki.ParseCerts(got)
			if err != nil {
				t.Fatal(err)
			}
			if len(certs) != tc.certs || !certs[0].Equal(leaf) {
				t.Errorf("file holds %d certificates (first %q), want %d starting with the leaf", len(certs), certs[0].Subject, tc.certs)
			}
		})
	}
}

func TestMissingSANs(t *testing.T) {
	f := newPlanFixture(t)
	have := f.leaf(f.ca, pki.LeafProfile{
		CommonName: "x",
		DNSNames:   []string{"a.example", "B.example"},
		IPs:        []net.IP{net.ParseIP("10.0.0.1"), net.ParseIP("::1")},
	}, planNow, leafLife)
	tests := []struct {
		name string
		dns  []string
		ips  []string
		want []string
	}{
		{"nothing required", nil, nil, nil},
		{"all present", []string{"a.example", "b.example"}, []string{"10.0.0.1", "::1"}, nil},
		{"16-byte IPv4 matches", nil, []string{"::ffff:10.0.0.1"}, nil},
		{"DNS missing", []string{"a.example", "c.example"}, nil, []string{"c.example"}},
		{"IP missing", nil, []string{"10.0.0.2", "::1", "::2"}, []string{"10.0.0.2", "::2"}},
		{"DNS before IPs", []string{"z.example"}, []string{"10.9.9.9"}, []string{"z.example", "10.9.9.9"}},
		{"an IP SAN does not satisfy a DNS name", []string{"10.0.0.1"}, nil, []string{"10.0.0.1"}},
	}
	for _, tc := range tests {
		want := pki.LeafProfile{DNSNames: tc.dns}
		for _, s := range tc.ips {
			want.IPs = append(want.IPs, net.ParseIP(s))
		}
		if got := MissingSANs(have, want); !slices.Equal(got, tc.want) {
			t.Errorf("%s: MissingSANs = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// shortChain is a CA whose chain expires 20 days after planNow: a ten-year intermediate
// under a root made 30 days before planNow with 50 days of validity.
func (f *planFixture) shortChain() (ca, root *pki.CA) {
	f.fc.Set(planNow.Add(-30 * day))
	defer f.fc.Set(planNow)
	k := f.newKey()
	c, err := f.iss.SelfSignedCA(k, "short-root", 50*day)
	if err != nil {
		f.t.Fatal(err)
	}
	root = &pki.CA{Cert: c, Key: k, Bundle: []*x509.Certificate{c}, BundlePEM: pki.EncodeCert(c)}
	return f.sub(root, "kpki-server-ca@3"), root
}

// uncapped is a leaf for the fixture key signed by ca with a NotAfter past ca's chain,
// as kpki signed them before leaves were capped.
func (f *planFixture) uncapped(ca *pki.CA, p pki.LeafProfile, notAfter time.Time) *x509.Certificate {
	serial, err := pki.NewSerial()
	if err != nil {
		f.t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: p.CommonName, Organization: p.Organization},
		NotBefore: planNow.Add(-10 * day), NotAfter: notAfter, ExtKeyUsage: p.ExtKeyUsage,
		DNSNames: p.DNSNames, IPAddresses: p.IPs, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, f.key.Public(), ca.Key)
	if err != nil {
		f.t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// TestPlanCappedByCA covers leaves whose lifetime is bounded by their CA's chain.
func TestPlanCappedByCA(t *testing.T) {
	f := newPlanFixture(t)
	ca, root := f.shortChain()
	chainEnd := root.Cert.NotAfter
	keyPEM := f.keyPEM(f.key)
	pol := Policy{Now: planNow, RenewBefore: renewBefore}
	afterEnd := Policy{Now: chainEnd, RenewBefore: renewBefore}

	capped := f.leaf(ca, f.want, planNow.Add(-day), leafLife)
	if !capped.NotAfter.Equal(chainEnd) {
		t.Fatalf("fixture: leaf NotAfter %s, want the chain's end %s", capped.NotAfter, chainEnd)
	}
	cappedNoSAN := f.leaf(ca, f.with(func(p *pki.LeafProfile) { p.DNSNames = p.DNSNames[:1] }), planNow.Add(-day), leafLife)
	cappedOtherCN := f.leaf(ca, f.with(func(p *pki.LeafProfile) { p.CommonName = "old" }), planNow.Add(-day), leafLife)
	justBefore := f.leaf(ca, f.want, chainEnd.Add(-time.Second-leafLife), leafLife)
	outlives := f.uncapped(ca, f.want, planNow.Add(390*day))
	outlivesOtherCA := f.uncapped(f.other, f.want, planNow.Add(390*day))
	// The same leaf kept by a CA whose chain has another end: a longer chain makes it
	// renewable again, as after rotate-ca.
	longCA := f.ca

	tests := []struct {
		name   string
		ex     Existing
		ca     *pki.CA
		pol    Policy
		action Action
		reason []string
	}{
		{"capped, inside the renewal window: kept", Existing{CertPEM: f.file(capped, ca), KeyPEM: keyPEM}, ca, pol, Keep,
			[]string{"within the renewal window", "not renewed", `"CN=short-root"`, "rotate the CA"}},
		{"capped, outside a shorter window: kept without a reason", Existing{CertPEM: f.file(capped, ca), KeyPEM: keyPEM}, ca, Policy{Now: planNow, RenewBefore: 10 * day}, Keep, nil},
		{"capped one second short of the chain: renewed", Existing{CertPEM: f.file(justBefore, ca), KeyPEM: keyPEM}, ca, pol, Renew,
			[]string{"within the renewal window"}},
		{"capped but missing a SAN: renewed", Existing{CertPEM: f.file(cappedNoSAN, ca), KeyPEM: keyPEM}, ca, pol, Renew, []string{"missing SANs [kubernetes.default]"}},
		{"capped but subject changed: renewed", Existing{CertPEM: f.file(cappedOtherCN, ca), KeyPEM: keyPEM}, ca, pol, Renew, []string{"subject differs"}},
		{"capped, bundle changed: rebundled", Existing{CertPEM: pki.EncodeCert(capped), KeyPEM: keyPEM}, ca, pol, Rebundle, []string{"CA bundle changed"}},
		{"capped, key replaced: renewed", Existing{CertPEM: f.file(capped, ca), KeyPEM: f.keyPEM(f.newKey())}, ca, pol, Renew, []string{"does not match its key"}},
		{"outlives its CA chain: renewed", Existing{CertPEM: f.file(outlives, ca), KeyPEM: keyPEM}, ca, pol, Renew,
			[]string{"after its CA chain (" + chainEnd.Format(time.RFC3339) + ")"}},
		{"outlives the new CA's chain, signed by another: renewed", Existing{CertPEM: f.file(outlivesOtherCA, f.other), KeyPEM: keyPEM}, ca, pol, Renew, []string{"after its CA chain"}},
		{"capped by the old CA, CA rotated to a longer one: renewed", Existing{CertPEM: f.file(capped, ca), KeyPEM: keyPEM}, longCA, pol, Renew, []string{"within the renewal window"}},
		{"chain expired, leaf expired with it: kept", Existing{CertPEM: f.file(capped, ca), KeyPEM: keyPEM}, ca, afterEnd, Keep,
			[]string{"expired on " + chainEnd.Format(time.RFC3339), `CA certificate "CN=short-root" expired`, "until the CA is rotated"}},
		{"chain expired, leaf wrong too: kept", Existing{CertPEM: f.file(cappedNoSAN, ca), KeyPEM: keyPEM}, ca, afterEnd, Keep, []string{"not renewed", "until the CA is rotated"}},
		{"chain expired, files missing: issue (the signer refuses)", Existing{}, ca, afterEnd, Issue, []string{"certificate and key missing"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Plan(f.want, tc.ex, tc.ca, tc.pol)
			if err != nil {
				t.Fatal(err)
			}
			if d.Action != tc.action {
				t.Errorf("Action = %v (%q), want %v", d.Action, d.Reason, tc.action)
			}
			if len(tc.reason) == 0 && d.Reason != "" {
				t.Errorf("Reason = %q, want none", d.Reason)
			}
			for _, r := range tc.reason {
				if !strings.Contains(d.Reason, r) {
					t.Errorf("Reason = %q, want it to contain %q", d.Reason, r)
				}
			}
		})
	}
}

// TestPlanRenewalLoopUnderShortCA runs the renewer's decision hourly, on a fake clock,
// for a leaf under a CA whose chain ends 20 days after the first pass: the first pass
// brings the over-long leaf down to the chain's end, and no pass after it signs
// anything, neither inside the renewal window nor once the CA has expired. After the CA
// is rotated to a longer one the next pass renews once, and then nothing again.
func TestPlanRenewalLoopUnderShortCA(t *testing.T) {
	f := newPlanFixture(t)
	ca, root := f.shortChain()
	keyPEM := f.keyPEM(f.key)
	file := f.file(f.uncapped(ca, f.want, planNow.Add(390*day)), ca)
	st := &pki.Stats{}
	iss := pki.NewIssuer(f.fc, st)

	pass := func(ca *pki.CA) Decision {
		t.Helper()
		d, err := Plan(f.want, Existing{CertPEM: file, KeyPEM: keyPEM}, ca, Policy{Now: f.fc.Now(), RenewBefore: renewBefore})
		if err != nil {
			t.Fatalf("pass at %s: %v", f.fc.Now(), err)
		}
		switch d.Action {
		case Renew, Issue:
			c, err := iss.SignLeaf(ca, d.Key.Public(), f.want, leafLife)
			if err != nil {
				t.Fatalf("pass at %s: %s: %v", f.fc.Now(), d.Reason, err)
			}
			file = BuildCertFile(c, ca)
		case Rebundle:
			file = BuildCertFile(d.Cert, ca)
		}
		return d
	}

	f.fc.Set(planNow)
	if d := pass(ca); d.Action != Renew {
		t.Fatalf("first pass: %v %q, want renew", d.Action, d.Reason)
	}
	if got := parseFirst(t, file).NotAfter; !got.Equal(root.Cert.NotAfter) {
		t.Fatalf("renewed leaf NotAfter %s, want the chain's end %s", got, root.Cert.NotAfter)
	}
	const passes = 30 * 24 // thirty days of hourly passes, ten past the CA's expiry
	kept := map[string]int{}
	for i := 1; i <= passes; i++ {
		f.fc.Set(planNow.Add(time.Duration(i) * time.Hour))
		d := pass(ca)
		if d.Action != Keep {
			t.Fatalf("pass %d at %s: %v %q, want keep", i, f.fc.Now(), d.Action, d.Reason)
		}
		switch {
		case strings.Contains(d.Reason, "until the CA is rotated"):
			kept["chain expired"]++
		case strings.Contains(d.Reason, "not renewed"):
			kept["capped"]++
		}
	}
	if got := st.Signatures.Load(); got != 1 {
		t.Errorf("%d signatures over %d passes, want only the first pass's", got, passes+1)
	}
	// 20 days minus the first hour capped in its window, then 10 days expired with the CA.
	if kept["capped"] != 20*24-1 || kept["chain expired"] != 10*24+1 {
		t.Errorf("kept passes %v, want 479 capped and 241 after the chain's end", kept)
	}

	// The operator rotates the CA (a fresh ten-year chain) before the leaf expires.
	f.fc.Set(planNow.Add(19 * day))
	rotated := f.selfSigned("kpki-server-ca@4")
	if d := pass(rotated); d.Action != Renew {
		t.Fatalf("after the rotation: %v %q, want renew", d.Action, d.Reason)
	}
	for i := 1; i <= 48; i++ {
		f.fc.Set(planNow.Add(19*day + time.Duration(i)*time.Hour))
		if d := pass(rotated); d.Action != Keep || d.Reason != "" {
			t.Fatalf("pass %d after the rotation: %v %q, want keep", i, d.Action, d.Reason)
		}
	}
	if got := parseFirst(t, file).NotAfter; !got.Equal(planNow.Add(19*day + leafLife)) {
		t.Errorf("leaf under the rotated CA expires %s, want a full validity", got)
	}
	if got := st.Signatures.Load(); got != 2 {
		t.Errorf("%d signatures, want 2 (the first pass and the one after the rotation)", got)
	}
}

func parseFirst(t *testing.T, file []byte) *x509.Certificate {
	t.Helper()
	cs, err := pki.ParseCerts(file)
	if err != nil {
		t.Fatal(err)
	}
	return cs[0]
}

func TestDrift(t *testing.T) {
	f := newPlanFixture(t)
	good := f.good()
	tests := []struct {
		name string
		leaf *x509.Certificate
		want pki.LeafProfile
		ca   *pki.CA
		now  time.Time
		say  string
	}{
		{"up to date", good, f.want, f.ca, planNow, ""},
		{"not valid yet", good, f.want, f.ca, good.NotBefore.Add(-time.Second), "not valid before"},
		{"other CA", good, f.want, f.other, planNow, "not signed by the current CA"},
		{"same-subject CA", good, f.want, f.twin, planNow, "not signed by the current CA"},
		{"other CN", good, f.with(func(p *pki.LeafProfile) { p.CommonName = "x" }), f.ca, planNow, "subject differs"},
		{"organizations reordered", good, f.with(func(p *pki.LeafProfile) { p.Organization = []string{"o2", "o1"} }), f.ca, planNow, ""},
		{"other usage", good, f.with(func(p *pki.LeafProfile) { p.ExtKeyUsage = p.ExtKeyUsage[:1] }), f.ca, planNow, "extended key usage differs"},
		{"new SAN", good, f.with(func(p *pki.LeafProfile) { p.IPs = append(p.IPs, net.ParseIP("10.0.0.9")) }), f.ca, planNow, "missing SANs [10.0.0.9]"},
	}
	for _, tc := range tests {
		got := drift(tc.leaf, tc.want, tc.ca, tc.now)
		if (tc.say == "") != (got == "") || !strings.Contains(got, tc.say) {
			t.Errorf("%s: drift %q, want %q", tc.name, got, tc.say)
		}
	}
}
