package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// leafSpec is one row of the SPEC §2 leaf table for a server.
type leafSpec struct {
	file   string // under <dd>/server/tls, without extension
	ca     string // signing CA file under <dd>/server/tls
	cn     string
	org    []string
	server bool // serverAuth EKU
	client bool // clientAuth EKU
	sans   []string
}

var kubernetesNames = []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}

// sanList is the SPEC §2 SAN-LIST for a server started by the harness with extra --tls-san names.
func sanList(ip string, tlsSANs ...string) []string {
	return append(slices.Clone(tlsSANs), ip, "127.0.0.1", "::1", "localhost", nodeName, "10.43.0.1")
}

// serverLeaves is the SPEC §2 table of the leaves a server issues under <dd>/server/tls.
func serverLeaves(ip string, tlsSANs ...string) []leafSpec {
	sl := sanList(ip, tlsSANs...)
	local := []string{"localhost", "127.0.0.1", "::1"}
	return []leafSpec{
		{file: "client-admin", ca: "client-ca.crt", cn: "system:admin", org: []string{"system:masters"}, client: true},
		{file: "client-supervisor", ca: "client-ca.crt", cn: "system:kpki-supervisor", org: []string{"system:masters"}, client: true},
		{file: "client-controller", ca: "client-ca.crt", cn: "system:kube-controller-manager", client: true},
		{file: "kube-controller-manager/kube-controller-manager", ca: "server-ca.crt", cn: "kube-controller-manager", server: true, sans: local},
		{file: "client-scheduler", ca: "client-ca.crt", cn: "system:kube-scheduler", client: true},
		{file: "kube-scheduler/kube-scheduler", ca: "server-ca.crt", cn: "kube-scheduler", server: true, sans: local},
		{file: "client-kube-apiserver", ca: "client-ca.crt", cn: "system:apiserver", org: []string{"system:masters"}, client: true},
		{file: "serving-kube-apiserver", ca: "server-ca.crt", cn: "kube-apiserver", server: true, sans: append(slices.Clone(kubernetesNames), sl...)},
		{file: "client-kpki-cloud-controller", ca: "client-ca.crt", cn: "kpki-cloud-controller-manager", client: true},
		{file: "client-kube-proxy", ca: "client-ca.crt", cn: "system:kube-proxy", client: true},
		{file: "client-kpki-controller", ca: "client-ca.crt", cn: "system:kpki-controller", client: true},
		{file: "client-auth-proxy", ca: "request-header-ca.crt", cn: "system:auth-proxy", client: true},
		{file: "etcd/client", ca: "etcd/server-ca.crt", cn: "etcd-client", client: true},
		{file: "etcd/server-client", ca: "etcd/server-ca.crt", cn: "etcd-server", server: true, client: true, sans: sl},
		{file: "etcd/peer-server-client", ca: "etcd/peer-ca.crt", cn: "etcd-peer", server: true, client: true, sans: sl},
		{file: "serving-supervisor", ca: "server-ca.crt", cn: "kpki", org: []string{"kpki"}, server: true, sans: append(slices.Clone(sl), kubernetesNames...)},
	}
}

var caFiles = []string{"server-ca", "client-ca", "request-header-ca", "etcd/server-ca", "etcd/peer-ca"}

// hasSAN reports whether c carries name as an IP SAN (when it parses as an IP) or a DNS SAN.
func hasSAN(c *x509.Certificate, name string) bool {
	if ip := net.ParseIP(name); ip != nil {
		return slices.ContainsFunc(c.IPAddresses, ip.Equal)
	}
	return slices.Contains(c.DNSNames, name)
}

// checkLeaf checks one leaf against its table row: the file holds the leaf followed by its CA
// file's certificates, subject, EKUs, key usage, SANs, a P-256 "EC PRIVATE KEY" that matches,
// validity, and `openssl verify` for each purpose.
func checkLeaf(t *testing.T, tlsDir string, l leafSpec) *x509.Certificate {
	t.Helper()
	crt := filepath.Join(tlsDir, l.file+".crt")
	certs := readCerts(t, crt)
	caCerts := readCerts(t, filepath.Join(tlsDir, l.ca))
	leaf := certs[0]
	if !sameCerts(certs[1:], caCerts) {
		t.Errorf("%s: the certificates after the leaf are not the bundle of %s", crt, l.ca)
	}
	if err := leaf.CheckSignatureFrom(caCerts[0]); err != nil {
		t.Errorf("%s: not signed by the first certificate of %s: %v", crt, l.ca, err)
	}
	if leaf.IsCA {
		t.Errorf("%s: leaf has CA:true", crt)
	}
	if leaf.Subject.CommonName != l.cn {
		t.Errorf("%s: CN %q, want %q", crt, leaf.Subject.CommonName, l.cn)
	}
	if !slices.Equal(sortedCopy(leaf.Subject.Organization), sortedCopy(l.org)) {
		t.Errorf("%s: O %q, want %q", crt, leaf.Subject.Organization, l.org)
	}
	var wantEKU []x509.ExtKeyUsage
	if l.server {
		wantEKU = append(wantEKU, x509.ExtKeyUsageServerAuth)
	}
	if l.client {
		wantEKU = append(wantEKU, x509.ExtKeyUsageClientAuth)
	}
	gotEKU := slices.Clone(leaf.ExtKeyUsage)
	slices.Sort(gotEKU)
	slices.Sort(wantEKU)
	if !slices.Equal(gotEKU, wantEKU) {
		t.Errorf("%s: extended key usages %v, want %v", crt, leaf.ExtKeyUsage, wantEKU)
	}
	if want := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment; leaf.KeyUsage&want != want {
		t.Errorf("%s: key usage %b lacks digitalSignature+keyEncipherment", crt, leaf.KeyUsage)
	}
	for _, san := range l.sans {
		if !hasSAN(leaf, san) {
			t.Errorf("%s: SAN %q missing (DNS %q, IP %v)", crt, san, leaf.DNSNames, leaf.IPAddresses)
		}
	}
	now := time.Now()
	if leaf.NotBefore.After(now) {
		t.Errorf("%s: NotBefore %v is in the future", crt, leaf.NotBefore)
	}
	if leaf.NotBefore.Before(caCerts[0].NotBefore) {
		t.Errorf("%s: NotBefore %v is before the CA's NotBefore %v", crt, leaf.NotBefore, caCerts[0].NotBefore)
	}
	if leaf.SerialNumber.Sign() <= 0 {
		t.Errorf("%s: serial %v is not positive", crt, leaf.SerialNumber)
	}
	keyFile := filepath.Join(tlsDir, l.file+".key")
	keys := readKeys(t, keyFile)
	if len(keys) != 1 {
		t.Errorf("%s: %d keys, want 1", keyFile, len(keys))
	}
	if keys[0].pemType != "EC PRIVATE KEY" {
		t.Errorf("%s: PEM type %q, want EC PRIVATE KEY", keyFile, keys[0].pemType)
	}
	if ec, ok := keys[0].signer.Public().(*ecdsa.PublicKey); !ok || ec.Curve != elliptic.P256() {
		t.Errorf("%s: not a P-256 key", keyFile)
	}
	if !keyMatches(leaf.PublicKey, keys[0].signer) {
		t.Errorf("%s does not match %s", keyFile, crt)
	}
	if l.server {
		opensslVerify(t, crt, "sslserver")
	}
	if l.client {
		opensslVerify(t, crt, "sslclient")
	}
	return leaf
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	if len(c) == 0 {
		return nil
	}
	return c
}
