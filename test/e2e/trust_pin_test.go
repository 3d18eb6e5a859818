package e2e

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The attacks of these tests: a fake supervisor on the network serves the cluster's real
// server CA chain (its /cacerts is public) with its own CA appended, and a TLS certificate
// from that CA. A node must anchor on the certificate its token names, keep only the chain
// to it, and verify every later connection against that anchor alone: the fake's handshake
// fails before the node sends its token or node password, and nothing changes on disk.

// seenRequest is what a fake supervisor received over TLS it terminated.
type seenRequest struct {
	Method, Path string
	Header       http.Header
	Body         []byte
}

// fakeSupervisor is an attacker's supervisor: it answers every path with body and
// records every request it reads.
type fakeSupervisor struct {
	URL   string
	Addr  string
	mu    sync.Mutex
	body  []byte
	seen  []seenRequest
	conns atomic.Int64 // TCP connections accepted
}

func startFakeSupervisor(t *testing.T, ip string, cert tls.Certificate, body []byte) *fakeSupervisor {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(freePort(t, ip))))
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSupervisor{Addr: ln.Addr().String(), URL: "https://" + ln.Addr().String(), body: body}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			f.mu.Lock()
			f.seen = append(f.seen, seenRequest{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: b})
			body := f.body
			f.mu.Unlock()
			w.Write(body)
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // the refused handshakes are the point
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				f.conns.Add(1)
			}
		},
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { srv.Close() })
	return f
}

func (f *fakeSupervisor) setBody(b []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.body = b
}

func (f *fakeSupervisor) requests() []seenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seenRequest(nil), f.seen...)
}

// assertNothingSecret checks that the fake read no request but unauthenticated GETs of
// /cacerts, and none of secrets anywhere in what it read.
func (f *fakeSupervisor) assertNothingSecret(t *testing.T, what string, secrets ...string) {
	t.Helper()
	for _, r := range f.requests() {
		if r.Header.Get("Authorization") != "" {
			t.Errorf("%s: the fake supervisor received an Authorization header with %s %s", what, r.Method, r.Path)
		}
		if r.Header.Get("Kpki-Node-Password") != "" {
			t.Errorf("%s: the fake supervisor received a node password with %s %s", what, r.Method, r.Path)
		}
		if r.Method != http.MethodGet || r.Path != "/cacerts" {
			t.Errorf("%s: the fake supervisor received %s %s", what, r.Method, r.Path)
		}
		var dump bytes.Buffer
		_ = r.Header.Write(&dump)
		dump.Write(r.Body)
		for _, s := range secrets {
			if s != "" && bytes.Contains(dump.Bytes(), []byte(s)) {
				t.Errorf("%s: the fake supervisor received a secret with %s %s", what, r.Method, r.Path)
			}
		}
	}
}

// attackerCA makes a self-signed CA with the subject of the cluster CA it imitates and a
// serving certificate from it for ip.
func attackerCA(t *testing.T, imitate *x509.Certificate, ip string) (*x509.Certificate, tls.Certificate) {
	t.Helper()
	newCert := func(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
		serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
		if err != nil {
			t.Fatal(err)
		}
		tmpl.SerialNumber = serial.Add(serial, big.NewInt(1))
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := newCert(&x509.Certificate{Subject: imitate.Subject, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}, nil, &caKey.PublicKey, caKey)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := newCert(&x509.Certificate{Subject: pkix.Name{CommonName: "kpki-supervisor"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP(ip)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		ca, &key.PublicKey, caKey)
	return ca, tls.Certificate{Certificate: [][]byte{leaf.Raw, ca.Raw}, PrivateKey: key, Leaf: leaf}
}

// switchProxy forwards TCP connections to a target that the test switches: the real
// supervisor (TLS passes through) or a fake one.
type switchProxy struct {
	Addr     string
	mu       sync.Mutex
	target   string
	accepted atomic.Int64
}

func startSwitchProxy(t *testing.T, ip, target string) *switchProxy {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(freePort(t, ip))))
	if err != nil {
		t.Fatal(err)
	}
	p := &switchProxy{Addr: ln.Addr().String(), target: target}
	var wg sync.WaitGroup
	var connMu sync.Mutex
	var open []net.Conn
	track := func(c net.Conn) {
		connMu.Lock()
		open = append(open, c)
		connMu.Unlock()
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.accepted.Add(1)
			p.mu.Lock()
			target := p.target
			p.mu.Unlock()
			up, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			track(c)
			track(up)
			wg.Add(2)
			go func() { defer wg.Done(); _, _ = io.Copy(up, c); up.Close() }()
			go func() { defer wg.Done(); _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		connMu.Lock()
		for _, c := range open {
			c.Close()
		}
		connMu.Unlock()
		wg.Wait()
	})
	return p
}

func (p *switchProxy) switchTo(target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = target
}

// chainCADataDir is a data dir for a first start with custom CAs from
// `kpki certificate generate-ca` under a root and intermediate of the test's: each
// <ca>.crt holds the CA, the intermediate and the root.
func chainCADataDir(t *testing.T) string {
	t.Helper()
	dd := filepath.Join(t.TempDir(), "server")
	tlsDir := filepath.Join(dd, "server", "tls")
	rootPEM, _, root, rootKey := selfSignedCAPEM(t, "e2e-root-ca")
	interPEM, interKey := issueUnder(t, root, rootKey, x509.Certificate{
		Subject: pkix.Name{CommonName: "e2e-intermediate-ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage:  x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(5, 0, 0),
	})
	writeFile(t, filepath.Join(tlsDir, "root-ca.pem"), rootPEM, 0o600)
	writeFile(t, filepath.Join(tlsDir, "intermediate-ca.pem"), interPEM, 0o600)
	writeFile(t, filepath.Join(tlsDir, "intermediate-ca.key"), interKey, 0o600)
	kpkiOK(t, "certificate", "generate-ca", "--data-dir", dd)
	if n := len(readCerts(t, filepath.Join(tlsDir, "server-ca.crt"))); n != 3 {
		t.Fatalf("generate-ca wrote a server-ca.crt of %d certificates, want CA, intermediate, root", n)
	}
	return dd
}

// agentArgsAt are the flags of an agent joining the supervisor at url.
func agentArgsAt(url, tok, dataDir, node string, apiPort int, extra ...string) []string {
	return append([]string{"agent", "--server", url, "--token", tok, "--data-dir", dataDir,
		"--node-name", node, "--api-server-port", strconv.Itoa(apiPort)}, extra...)
}

// TestTrustPinFakeSupervisor: a cluster whose server-ca.crt holds a chain; a fake
// supervisor serves that chain with its own CA appended and a TLS certificate of that
// CA. `kpki agent --once` (joined before, and fresh, with the secure and the short token)
// and a joining `kpki server` with the real tokens all fail; the fake read nothing but
// GET /cacerts, no credential, and the agent's data dir is unchanged.
func TestTrustPinFakeSupervisor(t *testing.T) {
	t.Parallel()
	s := startServer(t, chainCADataDir(t))
	s.WaitReady(t)
	realChain := readFile(t, filepath.Join(s.TLSDir(), "server-ca.crt"))
	chain := readCerts(t, filepath.Join(s.TLSDir(), "server-ca.crt"))
	agentTok := agentToken(t, s)
	serverTok := readTokenFile(t, s.DataDir, "token")
	if got, want := tokenCAHash(t, agentTok), derHash(chain[2]); got != want {
		t.Fatalf("agent token CA hash %s, want the root's %s", got, want)
	}

	// A joined agent, whose node password the fake must not get.
	dd := filepath.Join(t.TempDir(), "agent")
	agentOK(t, agentArgs(s, agentTok, dd)...)
	nodePW := strings.TrimSpace(string(readFile(t, filepath.Join(dd, "agent", "node-password"))))
	before := hashTree(t, dd)

	const fakeIP = "127.0.0.61"
	evil, evilServing := attackerCA(t, chain[0], fakeIP)
	body := append(append([]byte{}, realChain...), certsPEM(evil)...)
	fake := startFakeSupervisor(t, fakeIP, evilServing, body)
	secrets := []string{passphrase(agentTok), passphrase(serverTok), nodePW}

	for _, tc := range []struct {
		name, tok, dd string
	}{
		{"joined agent, secure token", agentTok, dd},
		{"new agent, secure token", agentTok, filepath.Join(t.TempDir(), "new")},
		{"new agent, short token", passphrase(agentTok), filepath.Join(t.TempDir(), "short")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			treeBefore := hashTree(t, tc.dd)
			conns := fake.conns.Load()
			r := runAgentOnce(t, agentArgsAt(fake.URL, tc.tok, tc.dd, agentNodeName, s.Ports.APIServer)...)
			assertFailure(t, r.code, r.stderr, "presented a certificate that the cluster CA did not sign")
			if fake.conns.Load()-conns < 2 {
				t.Errorf("the agent made %d connections to the fake, want GET /cacerts and the refused handshake", fake.conns.Load()-conns)
			}
			fake.assertNothingSecret(t, tc.name, secrets...)
			assertTreeUnchanged(t, tc.name, treeBefore, hashTree(t, tc.dd))
			for _, sec := range secrets {
				if strings.Contains(r.stderr, sec) {
					t.Error("the agent's log holds a secret")
				}
			}
		})
	}
	assertTreeUnchanged(t, "the joined agent", before, hashTree(t, dd))
	if got := readFile(t, filepath.Join(dd, "agent", "server-ca.crt")); !bytes.Equal(got, realChain) {
		t.Error("the joined agent's server-ca.crt is not the real chain")
	}

	t.Run("joining server", func(t *testing.T) {
		jdd := filepath.Join(t.TempDir(), "join")
		j := launch(t, serverSpec{dataDir: jdd, ip: "127.0.0.62",
			args: []string{"--node-name", "evil-join", "--server", fake.URL, "--token", serverTok}})
		code, stderr := j.Wait(t, failTimeout)
		assertFailure(t, code, stderr, "presented a certificate that the cluster CA did not sign")
		fake.assertNothingSecret(t, "joining server", secrets...)
		if files := nonDirs(hashTree(t, jdd)); len(files) != 0 {
			t.Errorf("the refused join wrote %s", strings.Join(files, ", "))
		}
		if strings.Contains(stderr, passphrase(serverTok)) {
			t.Error("the joining server's log holds the token password")
		}
	})
	if n := len(fake.requests()); n == 0 {
		t.Error("the fake supervisor saw no GET /cacerts: the attack was not performed")
	}
}

// TestTrustPinProxySwitch: an agent runs its loop through a proxy in front of a default
// cluster (one self-signed server CA). After the join the proxy switches to a fake that
// terminates TLS with its own CA and serves the real CA with that CA appended (the later
// pass of a running agent used to accept any bundle whose first certificate chains to the
// old one), or its CA first, or a leaf of the real CA first. Every later pass is refused
// at the handshake; the fake reads nothing; the files do not change. A restarted agent
// (--once) refuses the fake as well.
func TestTrustPinProxySwitch(t *testing.T) {
	t.Parallel()
	const proxyIP = "127.0.0.63"
	s := launch(t, serverSpec{dataDir: filepath.Join(t.TempDir(), "server"), args: []string{"--tls-san", proxyIP}})
	s.WaitReady(t)
	realAddr := net.JoinHostPort(s.IP, strconv.Itoa(s.Ports.Supervisor))
	proxy := startSwitchProxy(t, proxyIP, realAddr)
	proxyURL := "https://" + proxy.Addr
	realCA := readCerts(t, filepath.Join(s.TLSDir(), "server-ca.crt"))[0]
	agentTok := agentToken(t, s)

	dd := filepath.Join(t.TempDir(), "agent")
	args := agentArgsAt(proxyURL, agentTok, dd, agentNodeName, s.Ports.APIServer, "--renew-interval", "1s")
	p := startAgent(t, args...)
	kubeconfig := filepath.Join(dd, "agent", "kpkicontroller.kubeconfig")
	p.waitFor(t, "the join through the proxy", func() bool { _, err := os.Stat(kubeconfig); return err == nil })
	before := hashTree(t, dd)
	nodePW := strings.TrimSpace(string(readFile(t, filepath.Join(dd, "agent", "node-password"))))
	secrets := []string{passphrase(agentTok), nodePW}
	servingKubelet := readCerts(t, filepath.Join(dd, "agent", "serving-kubelet.crt"))[0]

	evil, evilServing := attackerCA(t, realCA, proxyIP)
	fake := startFakeSupervisor(t, "127.0.0.64", evilServing, nil)
	proxy.switchTo(fake.Addr)

	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"real CA, attacker's appended", certsPEM(realCA, evil)},
		{"attacker's CA first", certsPEM(evil, realCA)},
		{"a leaf of the real CA first", certsPEM(servingKubelet, realCA, evil)},
	} {
		fake.setBody(tc.body)
		conns := fake.conns.Load()
		failures := strings.Count(p.log(), "certificate pass failed")
		p.waitFor(t, "two passes refused by "+tc.name, func() bool {
			return fake.conns.Load()-conns >= 2 && strings.Count(p.log(), "certificate pass failed")-failures >= 2
		})
		fake.assertNothingSecret(t, tc.name, secrets...)
		assertTreeUnchanged(t, tc.name, before, hashTree(t, dd))
	}
	agentLog := p.log()
	if !strings.Contains(agentLog, "presented a certificate that the cluster CA did not sign") {
		t.Errorf("the running agent did not say why it refused the fake:\n%s", agentLog)
	}
	p.stop(t)
	for _, sec := range secrets {
		if strings.Contains(agentLog, sec) {
			t.Error("the agent's log holds a secret")
		}
	}

	// A restarted agent: its first contact reads the fake's /cacerts, whose first
	// certificate is the root the agent keeps (the token names it), so it resumes its
	// stored trust, and the fake's handshake fails before any credential is sent. Without
	// the stored trust, the token's legacy hash covers a one-certificate file and names
	// none of the appended body: refused at once.
	fake.setBody(certsPEM(realCA, evil))
	r := runAgentOnce(t, agentArgsAt(proxyURL, agentTok, dd, agentNodeName, s.Ports.APIServer)...)
	assertFailure(t, r.code, r.stderr, "presented a certificate that the cluster CA did not sign")
	fresh := filepath.Join(t.TempDir(), "fresh")
	r = runAgentOnce(t, agentArgsAt(proxyURL, agentTok, fresh, "fresh-agent", s.Ports.APIServer)...)
	assertFailure(t, r.code, r.stderr, "token CA hash does not match the Cluster CA certificate hash: "+tokenCAHash(t, agentTok))
	if _, err := os.Stat(fresh); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused first join left %s: %v", fresh, err)
	}
	fake.assertNothingSecret(t, "restarted agent", secrets...)
	assertTreeUnchanged(t, "restarted agent", before, hashTree(t, dd))
	if len(fake.requests()) == 0 {
		t.Error("the fake supervisor saw no request: the attack was not performed")
	}

	// Back to the real server: the agent passes again and changes nothing.
	proxy.switchTo(realAddr)
	agentOK(t, agentArgsAt(proxyURL, agentTok, dd, agentNodeName, s.Ports.APIServer)...)
	assertTreeUnchanged(t, "back to the real server", before, hashTree(t, dd))
}

// TestTrustPinForms joins agents with each form of the token's CA hash: the legacy hash of
// a one-certificate server-ca.crt; after a cross-signed rotation, the root hash that kpki
// prints, the first-certificate hash that K3s's rotate-default-ca-certs.sh prints, and the
// DER hash of the old root. Each agent keeps the chain from the served CA up to exactly
// the certificate its hash names; with the old root's, up to the new root it vouches for.
func TestTrustPinForms(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "kubectl")
	sdd := filepath.Join(t.TempDir(), "server")
	s := startServer(t, sdd)
	s.WaitReady(t)
	legacyTok := agentToken(t, s)
	oldFile := readFile(t, filepath.Join(s.TLSDir(), "server-ca.crt"))
	if got, want := tokenCAHash(t, legacyTok), fmt.Sprintf("%x", sha256.Sum256(oldFile)); got != want {
		t.Fatalf("agent token hash %s, want the legacy hash of the one-certificate file %s", got, want)
	}
	pw := passphrase(legacyTok)
	legacyDD := filepath.Join(t.TempDir(), "legacy")
	agentOK(t, agentArgs(s, legacyTok, legacyDD)...)
	assertAgentFiles(t, s, legacyDD)

	kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", sdd)
	assertRotateCASaved(t, rotateCA(t, s, filepath.Join(sdd, "server", "rotate-ca")))
	s = restartServer(t, s)
	bundle := readCerts(t, filepath.Join(s.TLSDir(), "server-ca.crt"))
	if len(bundle) != 4 {
		t.Fatalf("server-ca.crt after the rotation holds %d certificates, want 4", len(bundle))
	}
	newCA, newRoot, cross, oldRoot := bundle[0], bundle[1], bundle[2], bundle[3]
	if got := tokenCAHash(t, agentToken(t, s)); got != derHash(newRoot) {
		t.Fatalf("agent token after the rotation pins %s, want the new root's %s", got, derHash(newRoot))
	}

	for i, tc := range []struct {
		name, hash string
		keep       []*x509.Certificate
		// file is the agent's server-ca.crt when it is not keep: the old root, which the
		// token names, vouches for the new root (cross), which the agent moves to,
		// keeping the old root while it is served.
		file []*x509.Certificate
		// roots is what the agent stores of the roots it trusts.
		roots []*x509.Certificate
	}{
		{"root (kpki token show)", derHash(newRoot), []*x509.Certificate{newCA, newRoot}, nil, []*x509.Certificate{newRoot}},
		{"first certificate (rotate-default-ca-certs.sh)", derHash(newCA), []*x509.Certificate{newCA}, nil, []*x509.Certificate{newCA}},
		{"old root", derHash(oldRoot), []*x509.Certificate{newCA, newRoot}, []*x509.Certificate{newCA, newRoot, oldRoot},
			[]*x509.Certificate{oldRoot, cross, newRoot}},
	} {
		if tc.file == nil {
			tc.file = tc.keep
		}
		t.Run(tc.name, func(t *testing.T) {
			d := filepath.Join(t.TempDir(), "agent")
			r := agentOK(t, agentArgs(s, "K10"+tc.hash+"::node:"+pw, d, "--node-name", fmt.Sprintf("pin-form-%d", i))...)
			ad := filepath.Join(d, "agent")
			if got := readFile(t, filepath.Join(ad, "server-ca.crt")); !bytes.Equal(got, certsPEM(tc.file...)) {
				t.Errorf("server-ca.crt holds %d certificates, not the chain up to the pinned one (%d)", len(readCerts(t, filepath.Join(ad, "server-ca.crt"))), len(tc.file))
			}
			if !sameCerts(readCerts(t, filepath.Join(ad, "server-ca-roots.pem")), tc.roots) {
				t.Errorf("server-ca-roots.pem does not hold the %d certificates of the trusted roots", len(tc.roots))
			}
			serving := readCerts(t, filepath.Join(ad, "serving-kubelet.crt"))
			if !sameCerts(serving[1:], tc.keep) {
				t.Errorf("serving-kubelet.crt is not bundled with the kept chain")
			}
			roots := x509.NewCertPool()
			roots.AddCert(tc.keep[len(tc.keep)-1])
			inter := x509.NewCertPool()
			for _, c := range tc.keep[:len(tc.keep)-1] {
				inter.AddCert(c)
			}
			if _, err := serving[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				t.Errorf("serving-kubelet does not verify up to the pinned certificate: %v", err)
			}
			for file := range agentKubeconfigs {
				kc := kubectlConfig(t, filepath.Join(ad, file), true)
				if len(kc.Clusters) != 1 || !bytes.Equal(kc.Clusters[0].Cluster.CertificateAuthorityData, certsPEM(tc.file...)) {
					t.Errorf("%s does not trust exactly the kept chain", file)
				}
			}
			if strings.Contains(r.stderr, "level=WARN") && strings.Contains(r.stderr, "does not pin") {
				t.Errorf("a secure token warned about pinning:\n%s", r.stderr)
			}
		})
	}

	// The legacy token of before the rotation names no certificate of the new bundle.
	r := runAgentOnce(t, agentArgs(s, legacyTok, filepath.Join(t.TempDir(), "stale"), "--node-name", "pin-stale")...)
	assertFailure(t, r.code, r.stderr, fmt.Sprintf("token CA hash does not match the Cluster CA certificate hash: %s != %s",
		tokenCAHash(t, legacyTok), derHash(newRoot)))
}
