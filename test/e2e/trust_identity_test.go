package e2e

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// identityEtcd returns a client of the embedded etcd of s, with the etcd client certificate
// of its data dir, closed at cleanup.
func identityEtcd(t *testing.T, s *kpkiServer) *clientv3.Client {
	t.Helper()
	tlsDir := s.TLSDir()
	cfg := tlsFromFiles(t, filepath.Join(tlsDir, "etcd", "server-ca.crt"),
		filepath.Join(tlsDir, "etcd", "client.crt"), filepath.Join(tlsDir, "etcd", "client.key"))
	endpoint := "https://" + net.JoinHostPort(s.IP, strconv.Itoa(s.Ports.EtcdClient))
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, TLS: cfg, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd client for %s: %v", endpoint, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// identityState is what a refused claim must leave as it was: both data dirs and every
// /bootstrap/ and /kpki/ key in etcd (values and revisions).
type identityState struct {
	trees []map[string]string
	keys  etcdSnapshot
}

func takeIdentityState(t *testing.T, cli *clientv3.Client, servers ...*kpkiServer) identityState {
	t.Helper()
	st := identityState{keys: etcdSnapshot{}}
	for _, s := range servers {
		st.trees = append(st.trees, hashTree(t, s.DataDir))
	}
	for _, p := range []string{"/bootstrap/", "/kpki/"} {
		for k, v := range snapshotPrefix(t, cli, p) {
			st.keys[k] = v
		}
	}
	return st
}

// waitServerRecords waits until s's etcd holds a /kpki/servers/ record for each name.
func waitServerRecords(t *testing.T, cli *clientv3.Client, names ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		snap := snapshotPrefix(t, cli, "/kpki/servers/")
		missing := 0
		for _, n := range names {
			if _, ok := snap["/kpki/servers/"+n]; !ok {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server records %v not all in etcd within 30s: %v", names, keyNames(snap))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type claim struct {
	name   string
	node   string
	ips    string
	reason string
}

// TestIdentityClaimsRefused runs two servers of one cluster (the second joined to the
// first) and, holding only the agent token, asks each for kubelet serving certificates
// claiming the servers' names and addresses, the service CIDR, addresses no single host
// owns and the kubernetes names. Every request is refused with 403 and the reason, audited
// and counted; nothing is issued, nothing is registered for the node, no file changes. A
// node's name cannot be a server's for client-kubelet either (system:node:<server>). An
// ordinary claim is signed, and a second node re-using its IP is signed with a warning.
func TestIdentityClaimsRefused(t *testing.T) {
	t.Parallel()
	ips := []string{"127.0.0.1", "127.0.0.2"}
	ports := haPorts(t, ips...)
	root := t.TempDir()
	metrics := net.JoinHostPort(loopback, strconv.Itoa(freePort(t, loopback)))
	s1 := launch(t, serverSpec{dataDir: filepath.Join(root, "s1"), ip: ips[0], ports: &ports, args: []string{
		"--node-name", "id-1", "--node-ip", "127.0.0.1,127.0.0.66", "--metrics-address", metrics,
		"--tls-san", "kpki-api.example.test", "--tls-san", "127.0.0.77", "--tls-san", "*.lb.example.test"}})
	s1.WaitReady(t)
	s2 := launch(t, serverSpec{dataDir: filepath.Join(root, "s2"), ip: ips[1], ports: &ports, args: []string{
		"--node-name", "id-2", "--server", s1.SupervisorURL(), "--token", haToken(t, s1), "--tls-san", "second-api.example.test"}})
	s2.WaitReady(t)
	cli := identityEtcd(t, s1)
	waitServerRecords(t, cli, "id-1", "id-2")
	pw := haAgentPassword(t, s1)
	const issued = "kpki_certificates_issued_total"

	claims := []claim{
		{"server 1 advertise address", "", "127.0.0.1", "127.0.0.1 is the advertise address of server id-1"},
		{"server 1 node IP", "", "127.0.0.66", "127.0.0.66 is the node IP of server id-1"},
		{"server 1 --tls-san IP", "", "127.0.0.77", "127.0.0.77 is the --tls-san of server id-1"},
		{"server 2 advertise address", "", "127.0.0.2", "127.0.0.2 is the advertise address of server id-2"},
		{"a good IP and a server's", "", "127.0.0.9,127.0.0.1", "127.0.0.1 is the advertise address of server id-1"},
		{"IPv4-mapped server address", "", "::ffff:127.0.0.1", "127.0.0.1 is the advertise address of server id-1"},
		{"kubernetes service IP", "", "10.43.0.1", "10.43.0.1 is in the service CIDR 10.43.0.0/16"},
		{"service CIDR", "", "10.43.200.7", "service CIDR 10.43.0.0/16"},
		{"0.0.0.0", "", "0.0.0.0", "0.0.0.0 is the unspecified address"},
		{"::", "", "::", ":: is the unspecified address"},
		{"multicast", "", "224.0.0.1", "224.0.0.1 is a multicast address"},
		{"link-local IPv4", "", "169.254.1.1", "169.254.1.1 is a link-local address"},
		{"link-local IPv6", "", "fe80::1", "fe80::1 is a link-local address"},
		{"server 1 node name", "id-1", "", "node name id-1 is the node name of server id-1"},
		{"server 2 node name", "id-2", "", "node name id-2 is the node name of server id-2"},
		{"server 1 --tls-san name", "kpki-api.example.test", "", "is the --tls-san kpki-api.example.test of server id-1"},
		{"server 2 --tls-san name", "second-api.example.test", "", "--tls-san second-api.example.test of server id-2"},
		{"name under a wildcard --tls-san", "x.lb.example.test", "", "--tls-san *.lb.example.test of server id-1"},
		{"node name that is a server's IP", "127.0.0.1", "", "node name 127.0.0.1 is the advertise address of server id-1"},
		{"kubernetes", "kubernetes", "", "Kubernetes API service"},
		{"kubernetes.default", "kubernetes.default", "", "Kubernetes API service"},
		{"kubernetes.default.svc", "kubernetes.default.svc", "", "Kubernetes API service"},
		{"kubernetes.default.svc.cluster.local", "kubernetes.default.svc.cluster.local", "", "Kubernetes API service"},
		{"kubernetes.*", "kubernetes.evil.example", "", "Kubernetes API service"},
	}
	before := takeIdentityState(t, cli, s1, s2)
	issuedBefore := metricSum(t, metrics, issued)
	var actors []string
	for i, c := range claims {
		for j, s := range []*kpkiServer{s1, s2} {
			node := c.node
			if node == "" {
				node = fmt.Sprintf("claim-%d", i)
			}
			actors = append(actors, node)
			hdr := map[string]string{"Kpki-Node-Name": node, "Kpki-Node-Password": randomHex(16)}
			if c.ips != "" {
				hdr["Kpki-Node-IP"] = c.ips
			}
			r := supRequest(t, s, http.MethodPost, "/v1-kpki/serving-kubelet.crt", "node", pw, hdr, ecCSR(t))
			msg := assertJSONError(t, s, r, http.StatusForbidden)
			if !strings.Contains(msg, c.reason) {
				t.Errorf("%s, server %d: error %q does not say %q", c.name, j+1, msg, c.reason)
			}
		}
	}
	// The kubelet client certificate names the node: system:node:<a server's name> is refused.
	for j, s := range []*kpkiServer{s1, s2} {
		hdr := map[string]string{"Kpki-Node-Name": "id-1", "Kpki-Node-Password": randomHex(16)}
		r := supRequest(t, s, http.MethodPost, "/v1-kpki/client-kubelet.crt", "node", pw, hdr, ecCSR(t))
		if msg := assertJSONError(t, s, r, http.StatusForbidden); !strings.Contains(msg, "node name id-1 is the node name of server id-1") {
			t.Errorf("client-kubelet for id-1 on server %d: %q", j+1, msg)
		}
	}

	after := takeIdentityState(t, cli, s1, s2)
	for i := range before.trees {
		assertTreeUnchanged(t, fmt.Sprintf("server %d after the refused claims", i+1), before.trees[i], after.trees[i])
	}
	if !reflect.DeepEqual(before.keys, after.keys) {
		t.Errorf("etcd changed: keys %v, before %v", keyNames(after.keys), keyNames(before.keys))
	}
	if n := metricSum(t, metrics, issued); n != issuedBefore {
		t.Errorf("%s on server 1 went from %v to %v", issued, issuedBefore, n)
	}
	refused1, refused2 := auditEntries(t, s1.DataDir), auditEntries(t, s2.DataDir)
	for _, a := range actors {
		for j, entries := range [][]map[string]any{refused1, refused2} {
			if n := countAudit(entries, "issue", a); n != 0 {
				t.Errorf("server %d audit.log has %d issue entries for %s", j+1, n, a)
			}
			if n := countAudit(entries, "node-claim-refused", a); n == 0 {
				t.Errorf("server %d audit.log has no node-claim-refused entry for %s", j+1, a)
			}
		}
	}
	for _, e := range refused1 {
		if e["action"] == "node-claim-refused" && e["actor"] == "claim-6" && !strings.Contains(fmt.Sprint(e["detail"]), "10.43.0.1") {
			t.Errorf("the audit entry does not give the reason: %v", e)
		}
	}

	// An ordinary claim is signed, on loopback too; another node re-using the IP later is
	// signed as well, with a warning and an audit entry naming the node that held it.
	good := func(node string) *x509.Certificate {
		hdr := map[string]string{"Kpki-Node-Name": node, "Kpki-Node-Password": randomHex(16), "Kpki-Node-IP": "127.0.0.9"}
		r := supRequest(t, s1, http.MethodPost, "/v1-kpki/serving-kubelet.crt", "node", pw, hdr, ecCSR(t))
		if r.code != http.StatusOK {
			t.Fatalf("a good claim by %s: HTTP %d %s", node, r.code, r.body)
		}
		list, err := parseCertsPEM(r.body)
		if err != nil {
			t.Fatal(err)
		}
		if !hasSAN(list[0], "127.0.0.9") || !hasSAN(list[0], node) {
			t.Errorf("%s: serving certificate SANs %v %v", node, list[0].DNSNames, list[0].IPAddresses)
		}
		return list[0]
	}
	good("worker-a")
	if strings.Contains(s1.Stderr(), "previous-node=worker-a") {
		t.Fatalf("a warning about re-use before any re-use:\n%s", s1.tail(20))
	}
	good("worker-b")
	if !strings.Contains(s1.Stderr(), "previous-node=worker-a") {
		t.Errorf("no warning naming worker-a when worker-b claimed its IP:\n%s", s1.tail(20))
	}
	if n := countAudit(auditEntries(t, s1.DataDir), "node-ip-reclaimed", "worker-b"); n != 1 {
		t.Errorf("%d node-ip-reclaimed audit entries for worker-b, want 1", n)
	}
	if v := snapshotPrefix(t, cli, "/kpki/node-ips/")["/kpki/node-ips/127.0.0.9"].value; v != "worker-b" {
		t.Errorf("/kpki/node-ips/127.0.0.9 = %q, want worker-b", v)
	}
}

// hugeRSACSR is a PKCS#10 request for an RSA public key with a modulus of bits bits and a
// signature of zeros: nobody holds such a key, and building it costs nothing.
func hugeRSACSR(t *testing.T, bits int) []byte {
	t.Helper()
	type spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	n := new(big.Int).Lsh(big.NewInt(1), uint(bits-1))
	n.Or(n, big.NewInt(1))
	pub, err := asn1.Marshal(struct {
		N *big.Int
		E int
	}{n, 65537})
	if err != nil {
		t.Fatal(err)
	}
	info, err := asn1.Marshal(struct {
		Version    int
		Subject    asn1.RawValue
		PublicKey  spki
		Attributes asn1.RawValue
	}{
		Subject: asn1.RawValue{FullBytes: []byte{0x30, 0}},
		PublicKey: spki{pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}, Parameters: asn1.NullRawValue},
			asn1.BitString{Bytes: pub, BitLength: 8 * len(pub)}},
		Attributes: asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: []byte{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, bits/8)
	der, err := asn1.Marshal(struct {
		Info      asn1.RawValue
		Algorithm pkix.AlgorithmIdentifier
		Signature asn1.BitString
	}{asn1.RawValue{FullBytes: info}, pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}, Parameters: asn1.NullRawValue},
		asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestIdentityCSRBounds sends CSRs whose keys or signatures the server must not sign for: a
// crafted 250000-bit RSA modulus (refused for its size, not after a signature check that
// took seconds), a 16384-bit one, SHA-1 and MD5 signatures, and a DSA key named as such.
func TestIdentityCSRBounds(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	dd := filepath.Join(t.TempDir(), "server")
	s := startServer(t, dd)
	s.WaitReady(t)
	pw := passphrase(agentToken(t, s))
	dir := t.TempDir()
	run(t, dir, nil, "openssl", "genrsa", "-out", "rsa.pem", "2048")
	run(t, dir, nil, "openssl", "req", "-new", "-key", "rsa.pem", "-sha1", "-outform", "DER", "-subj", "/CN=x", "-out", "sha1.der")
	run(t, dir, nil, "openssl", "req", "-new", "-key", "rsa.pem", "-md5", "-outform", "DER", "-subj", "/CN=x", "-out", "md5.der")
	run(t, dir, nil, "openssl", "req", "-new", "-key", "rsa.pem", "-sha256", "-outform", "DER", "-subj", "/CN=x", "-out", "sha256.der")

	cases := []struct {
		name, node, reason string
		body               []byte
	}{
		{"RSA 250000 bits", "csr-huge", "RSA key of 250000 bits is too large", hugeRSACSR(t, 250000)},
		{"RSA 16384 bits", "csr-16k", "RSA key of 16384 bits is too large", hugeRSACSR(t, 16384)},
		{"SHA-1 signature", "csr-sha1", "signature algorithm SHA1-RSA is not accepted", readFile(t, filepath.Join(dir, "sha1.der"))},
		{"MD5 signature", "csr-md5", "signature algorithm MD5-RSA is not accepted", readFile(t, filepath.Join(dir, "md5.der"))},
		{"DSA key", "csr-dsa", "key type DSA is not accepted", dsaCSR(t)},
	}
	before := hashTree(t, dd)
	cli := identityEtcd(t, s)
	passwords := snapshotPrefix(t, cli, "/kpki/node-passwords/")
	for _, c := range cases {
		hdr := map[string]string{"Kpki-Node-Name": c.node, "Kpki-Node-Password": randomHex(16)}
		start := time.Now()
		r := supRequest(t, s, http.MethodPost, "/v1-kpki/serving-kubelet.crt", "node", pw, hdr, c.body)
		took := time.Since(start)
		msg := assertJSONError(t, s, r, http.StatusBadRequest)
		t.Logf("%s (%d bytes): HTTP %d in %v: %s", c.name, len(c.body), r.code, took, msg)
		if !strings.Contains(msg, c.reason) {
			t.Errorf("%s: error %q does not say %q", c.name, msg, c.reason)
		}
		if strings.Contains(msg, "signature does not verify") {
			t.Errorf("%s: the signature was checked before the key was refused", c.name)
		}
		if n := countAudit(auditEntries(t, dd), "issue", c.node); n != 0 {
			t.Errorf("%s: %d issue entries", c.name, n)
		}
	}
	assertTreeUnchanged(t, "refused CSRs", before, hashTree(t, dd))
	if after := snapshotPrefix(t, cli, "/kpki/node-passwords/"); !reflect.DeepEqual(after, passwords) {
		t.Errorf("refused CSRs registered node names: %v, before %v", keyNames(after), keyNames(passwords))
	}
	// The same RSA key with a SHA-256 signature is signed: the refusal above is the hash.
	hdr := map[string]string{"Kpki-Node-Name": "csr-sha256", "Kpki-Node-Password": randomHex(16)}
	if r := supRequest(t, s, http.MethodPost, "/v1-kpki/serving-kubelet.crt", "node", pw, hdr, readFile(t, filepath.Join(dir, "sha256.der"))); r.code != http.StatusOK {
		t.Errorf("RSA 2048 SHA-256: HTTP %d %s", r.code, r.body)
	}
}

// TestIdentityAgentRefused runs real `kpki agent --once` processes that claim the server's
// address and the server's node name: each fails with one error line giving the reason and
// gets no certificate; the server issued nothing and its data dir did not change. Without
// --node-ip, an agent reaching the server over loopback claims no address and joins.
func TestIdentityAgentRefused(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "server")
	s := startServer(t, dd, "--node-name", "id-server")
	s.WaitReady(t)
	tok := agentToken(t, s)
	before := hashTree(t, dd)
	issued := issuedCount(s)

	cases := []struct {
		name   string
		extra  []string
		reason string
	}{
		{"--node-ip of the server", []string{"--node-ip", s.IP}, "node IP 127.0.0.1 is the advertise address of server id-server"},
		{"--node-ip in the service CIDR", []string{"--node-ip", "10.43.0.1"}, "node IP 10.43.0.1 is in the service CIDR"},
		{"--node-name of the server", []string{"--node-name", "id-server", "--node-ip", "127.0.0.9"}, "node name id-server is the node name of server id-server"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ad := filepath.Join(t.TempDir(), "agent")
			r := runAgentOnce(t, agentArgs(s, tok, ad, c.extra...)...)
			assertFailure(t, r.code, r.stderr, c.reason, "refused POST /v1-kpki/")
			for _, f := range nonDirs(hashTree(t, ad)) {
				if strings.HasSuffix(f, ".crt") && !strings.HasSuffix(f, "-ca.crt") || strings.HasSuffix(f, ".key") || strings.HasSuffix(f, ".kubeconfig") {
					t.Errorf("the refused agent wrote %s", f)
				}
			}
		})
	}
	if n := issuedCount(s) - issued; n != 0 {
		t.Errorf("the server issued %d certificates to refused agents", n)
	}
	for _, e := range auditEntries(t, dd) {
		if e["action"] == "issue" && (e["actor"] == agentNodeName || e["actor"] == "id-server") {
			t.Errorf("issue audit entry for a refused agent: %v", e)
		}
	}
	if n := countAudit(auditEntries(t, dd), "node-claim-refused", "id-server"); n == 0 {
		t.Error("no node-claim-refused audit entry for the agent claiming the server's name")
	}
	assertTreeUnchanged(t, "refused agents", before, hashTree(t, dd))

	ad := filepath.Join(t.TempDir(), "agent")
	agentOK(t, agentArgs(s, tok, ad)...)
	serving := readCerts(t, filepath.Join(ad, "agent", "serving-kubelet.crt"))[0]
	var got []string
	for _, ip := range serving.IPAddresses {
		got = append(got, ip.String())
	}
	if !slices.Equal(got, []string{"127.0.0.1"}) {
		t.Errorf("default agent serving-kubelet IP SANs %v, want only the profile's 127.0.0.1", got)
	}
}
