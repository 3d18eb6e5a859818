package agent

import (
	"crypto/x509"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/pki"
)

func TestBuildCSR(t *testing.T) {
	iss := pki.NewIssuer(clock.Real{}, nil)
	key, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := BuildCSR(key, pki.LeafProfile{CommonName: "node-1", Organization: []string{"system:nodes"},
		DNSNames: []string{"node-1", "localhost"}, IPs: []net.IP{net.ParseIP("10.0.0.5")}})
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Errorf("CSR signature: %v", err)
	}
	if !pki.PublicKeysEqual(key.Public(), csr.PublicKey) || csr.Subject.CommonName != "node-1" ||
		!slices.Equal(csr.Subject.Organization, []string{"system:nodes"}) || !slices.Equal(csr.DNSNames, []string{"node-1", "localhost"}) ||
		len(csr.IPAddresses) != 1 || !csr.IPAddresses[0].Equal(net.ParseIP("10.0.0.5")) {
		t.Errorf("CSR %+v", csr)
	}
}

func TestCheckReply(t *testing.T) {
	iss := pki.NewIssuer(clock.Real{}, nil)
	newCA := func(cn string) *pki.CA {
		k, err := iss.NewECKey()
		if err != nil {
			t.Fatal(err)
		}
		c, err := iss.SelfSignedCA(k, cn, 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return &pki.CA{Cert: c, Key: k, Bundle: []*x509.Certificate{c}, BundlePEM: pki.EncodeCert(c)}
	}
	ca, other := newCA("client-ca"), newCA("client-ca")
	key, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	prof := pki.LeafProfile{CommonName: "system:kube-proxy", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	sign := func(ca *pki.CA, pub any) []byte {
		c, err := iss.SignLeaf(ca, pub, prof, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return append(pki.EncodeCert(c), ca.BundlePEM...)
	}
	if leaf, err := CheckReply(sign(ca, key.Public()), key.Public(), ca); err != nil || leaf.Subject.CommonName != prof.CommonName {
		t.Errorf("good reply: %v", err)
	}
	for _, tc := range []struct {
		name string
		body []byte
		want string
	}{
		{"not PEM", []byte("<html>"), "not a PEM certificate"},
		{"another key", sign(ca, otherKey.Public()), "not for the key in the request"},
		{"another CA with the same name", sign(other, key.Public()), "not signed by the cluster CA"},
		{"a CA first", ca.BundlePEM, "is a CA, not a leaf"},
	} {
		if _, err := CheckReply(tc.body, key.Public(), ca); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}
