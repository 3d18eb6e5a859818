package kube

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLiveCARotation rotates the cluster CAs to cross-signed ones (cross-sign-ca, rotate-ca)
// and back (rotate-ca --rollback) under a running kpki server, kube-apiserver and
// kube-controller-manager, none of which is restarted. kube-apiserver reloads
// --tls-cert-file/--tls-private-key-file and --client-ca-file when the files change, and
// kube-controller-manager its --cluster-signing-* files; kpki must rewrite them live.
func TestLiveCARotation(t *testing.T) {
	metrics := freePort(t)
	c := newCluster(t, "--etcd-unsafe-no-fsync", "--metrics-address", "127.0.0.1:"+itoa(metrics))
	c.startKpki()
	c.startAPIServer()
	c.startControllerManager(true)
	procs := []*proc{c.kpki, c.apis, c.kcm}
	c.waitControllerManager(time.Now())
	ids := processIDs(t, procs)
	d := t.TempDir()

	// A client that took its files before the rotation: trust, certificate and key.
	before := c.keepAdmin(filepath.Join(d, "before"))
	c.expectIdentity(before, "system:admin", "system:masters")
	cur := c.caSet()
	mustRun(t, bins.kpki, "certificate", "cross-sign-ca", "--data-dir", c.dd)
	staged := caSetIn(t, filepath.Join(c.dd, "server", "rotate-ca", "tls"))
	for _, ca := range []struct {
		name      string
		old, next []*x509.Certificate
	}{{"server-ca", cur.server, staged.server}, {"client-ca", cur.client, staged.client}} {
		if len(ca.next) != 4 || !ca.next[3].Equal(ca.old[len(ca.old)-1]) || ca.next[0].Equal(ca.old[0]) {
			t.Fatalf("cross-sign-ca staged %s with %d certificates; want new CA, new root, new root cross-signed, current root", ca.name, len(ca.next))
		}
	}

	t.Run("rotate-ca applied live", func(t *testing.T) {
		c.t = t
		applied := time.Now()
		c.rotateCA(filepath.Join(c.dd, "server", "rotate-ca"))
		// Served under the new server CA and verified against the new root alone.
		c.waitLive(staged, staged.server[1], nil)
		c.checkLive(liveCheck{dir: d, phase: "rotated", applied: applied, want: staged, root: staged.server[1], ids: ids, metricsPort: metrics})
		// A client still on its old files (old trust anchor, certificate from the old
		// client CA) keeps working: the cross-signed root links the new chain to its anchor,
		// and client-ca.crt keeps the old root.
		c.expectIdentity(before, "system:admin", "system:masters")
	})
	if t.Failed() {
		return
	}

	// A client that took its files during the rotation.
	during := c.keepAdmin(filepath.Join(d, "during"))
	oldRoot := cur.server[len(cur.server)-1]
	t.Run("rotate-ca --rollback applied live", func(t *testing.T) {
		c.t = t
		applied := time.Now()
		// Not logged: the output holds the join tokens.
		out := mustRun(t, bins.kpki, "certificate", "rotate-ca", "--rollback", "--data-dir", c.dd, "--server", c.supervisorURL())
		if !strings.Contains(out, "restored to the datastore") {
			t.Fatalf("rotate-ca --rollback does not say the kept CA files were restored (%d bytes of output)", len(out))
		}
		// Served under the old server CA again, verified against the old root alone and no
		// longer against the new root alone.
		c.waitLive(cur, oldRoot, staged.server[1])
		c.checkLive(liveCheck{dir: d, phase: "rolled-back", applied: applied, want: cur, root: oldRoot, ids: ids, metricsPort: metrics})
		// The client that took the rotated files keeps working: its bundle holds the old
		// root, and the chain its certificate carries reaches the old root through the
		// cross-signed one.
		c.expectIdentity(during, "system:admin", "system:masters")
		c.expectIdentity(before, "system:admin", "system:masters")
	})
}

// caSet is the server and client CA bundles a rotation changes, as kpki writes them.
type caSet struct{ server, client []*x509.Certificate }

func (c *cluster) caSet() caSet { return caSetIn(c.t, filepath.Join(c.dd, "server", "tls")) }

func caSetIn(t *testing.T, dir string) caSet {
	t.Helper()
	return caSet{readCertsFile(t, filepath.Join(dir, "server-ca.crt")), readCertsFile(t, filepath.Join(dir, "client-ca.crt"))}
}

// keepAdmin copies the admin credentials and the server CA bundle into dir and returns a
// kubeconfig that uses the copies.
func (c *cluster) keepAdmin(dir string) string {
	c.t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		c.t.Fatal(err)
	}
	for _, f := range []string{"server-ca.crt", "client-admin.crt", "client-admin.key"} {
		copyFile(c.t, c.tls(f), filepath.Join(dir, f))
	}
	return writeKubeconfig(c.t, filepath.Join(dir, "admin.kubeconfig"), "https://"+c.apiAddr(),
		filepath.Join(dir, "server-ca.crt"), filepath.Join(dir, "client-admin.crt"), filepath.Join(dir, "client-admin.key"), "")
}

// waitLive waits until kpki has written the CA set want and re-issued the admin and
// kube-apiserver certificates under it, admin.kubeconfig authenticates, and kube-apiserver
// serves a certificate issued by want's server CA that verifies against root alone and,
// unless other is nil, not against other alone. No process may exit meanwhile.
func (c *cluster) waitLive(want caSet, root, other *x509.Certificate) {
	c.t.Helper()
	waitFor(c.t, "the CA set applied live", 3*time.Minute, []*proc{c.kpki, c.apis, c.kcm}, func() error {
		got := c.caSet()
		if !sameCerts(got.server, want.server) || !sameCerts(got.client, want.client) {
			return errors.New("server-ca.crt and client-ca.crt are not the expected bundles yet")
		}
		if err := issuedBy(readCertsFile(c.t, c.tls("client-admin.crt"))[0], want.client[0]); err != nil {
			return fmt.Errorf("client-admin.crt: %w", err)
		}
		if err := issuedBy(readCertsFile(c.t, c.tls("serving-kube-apiserver.crt"))[0], want.server[0]); err != nil {
			return fmt.Errorf("serving-kube-apiserver.crt: %w", err)
		}
		chain, err := servedChain(c.apiAddr())
		if err != nil {
			return err
		}
		if err := issuedBy(chain[0], want.server[0]); err != nil {
			return fmt.Errorf("kube-apiserver serves a certificate not yet reloaded: %w", err)
		}
		if err := verifyChain(chain, root); err != nil {
			return fmt.Errorf("kube-apiserver's chain against %s alone: %w", root.Subject, err)
		}
		if other != nil && verifyChain(chain, other) == nil {
			return fmt.Errorf("kube-apiserver's chain verifies against %s alone too", other.Subject)
		}
		// kube-apiserver reloads client-ca.crt on its own schedule; the re-issued admin
		// certificate authenticates once it has. Its etcd client reconnects to the embedded
		// member kpki restarted with its new certificates; /healthz checks etcd.
		if _, err := c.whoami(c.cred("admin.kubeconfig")); err != nil {
			return err
		}
		out, err := c.kubectl(c.cred("admin.kubeconfig"), "get", "--raw", "/healthz")
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "ok" {
			return &unexpected{out}
		}
		return nil
	})
}

// liveCheck is what checkLive checks after a CA change made at applied: want is the CA
// set now in force, root the trust anchor of its server CA, ids the processes that must
// still run.
type liveCheck struct {
	dir, phase  string
	applied     time.Time
	want        caSet
	root        *x509.Certificate
	ids         map[string]procID
	metricsPort int
}

// checkLive checks the cluster after a CA change: the processes are the same and running,
// kpki reports no restart needed, admin.kubeconfig reads and writes through kube-apiserver
// to etcd (and works with the root alone as trust anchor), and kube-controller-manager kept
// its lease and signs with the client CA in force.
func (c *cluster) checkLive(l liveCheck) {
	c.t.Helper()
	t := c.t
	c.expectIdentity(c.cred("admin.kubeconfig"), "system:admin", "system:masters")
	if out := strings.TrimSpace(c.admin("get", "--raw", "/healthz")); out != "ok" {
		t.Errorf("/healthz with admin.kubeconfig: %q", out)
	}
	if out := c.admin("get", "namespaces", "-o", "name"); !strings.Contains(out, "namespace/kube-system") {
		t.Errorf("kubectl get namespaces: %q", out)
	}
	c.admin("create", "configmap", "live-"+l.phase, "-n", "default", "--from-literal=phase="+l.phase)

	dir := filepath.Join(l.dir, l.phase)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	anchor := filepath.Join(dir, "root.crt")
	if err := os.WriteFile(anchor, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: l.root.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	kc := writeKubeconfig(t, filepath.Join(dir, "admin.kubeconfig"), "https://"+c.apiAddr(), anchor, c.tls("client-admin.crt"), c.tls("client-admin.key"), "")
	c.expectIdentity(kc, "system:admin", "system:masters")

	// kube-controller-manager: healthy, the same holder renewed its lease after the
	// change, and a new CertificateSigningRequest is signed by the current client CA.
	c.waitControllerManager(l.applied)
	crt, _ := c.signedCSR(dir, "live-"+l.phase, "e2e-group")
	if err := issuedBy(readCertsFile(t, crt)[0], l.want.client[0]); err != nil {
		t.Errorf("kube-controller-manager signed the CSR after the change: %v", err)
	}

	if got := processIDs(t, []*proc{c.kpki, c.apis, c.kcm}); len(got) != len(l.ids) {
		t.Errorf("processes %v, want %v", got, l.ids)
	} else {
		for name, id := range l.ids {
			if got[name] != id {
				t.Errorf("%s is process %+v, was %+v: restarted", name, got[name], id)
			}
		}
	}
	if v, err := metricValue("http://127.0.0.1:"+itoa(l.metricsPort)+"/metrics", "kpki_restart_required"); err != nil || v != "0" {
		t.Errorf("kpki_restart_required = %q (%v), want 0", v, err)
	}
}

// waitControllerManager waits until kube-controller-manager's /healthz is ok and it holds
// the kube-system/kube-controller-manager lease, renewed after since by the holder that
// held it before (none the first time).
func (c *cluster) waitControllerManager(since time.Time) {
	c.t.Helper()
	waitFor(c.t, "kube-controller-manager healthy and renewing its lease", 2*time.Minute, []*proc{c.kcm, c.apis}, func() error {
		if err := httpsOK("https://127.0.0.1:" + itoa(c.kcmPort) + "/healthz"); err != nil {
			return err
		}
		out, err := c.kubectl(c.cred("admin.kubeconfig"), "get", "lease", "-n", "kube-system", "kube-controller-manager",
			"-o", "jsonpath={.spec.holderIdentity} {.spec.renewTime}")
		if err != nil {
			return err
		}
		holder, renew, ok := strings.Cut(strings.TrimSpace(out), " ")
		if !ok || holder == "" {
			return fmt.Errorf("lease: %q", out)
		}
		if c.kcmHolder != "" && holder != c.kcmHolder {
			return fmt.Errorf("lease held by %s, was %s", holder, c.kcmHolder)
		}
		at, err := time.Parse(time.RFC3339Nano, renew)
		if err != nil {
			return err
		}
		if !at.After(since) {
			return fmt.Errorf("lease renewed at %s, not after %s", at, since)
		}
		c.kcmHolder = holder
		return nil
	})
}

// procID names a process: its pid and its start time in clock ticks since boot, which
// tell a restarted process from the same one.
type procID struct {
	PID   int
	Start string
}

func processIDs(t *testing.T, procs []*proc) map[string]procID {
	t.Helper()
	ids := map[string]procID{}
	for _, p := range procs {
		if p.exited() {
			t.Errorf("%s exited: %v\n%s", p.name, p.err, tail(p.log, 40))
			continue
		}
		pid := p.cmd.Process.Pid
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Errorf("%s: %v", p.name, err)
			continue
		}
		// Fields after the command name in parentheses; starttime is field 22 of stat.
		rest := string(b[bytes.LastIndexByte(b, ')')+1:])
		f := strings.Fields(rest)
		if len(f) < 20 {
			t.Fatalf("/proc/%d/stat: %q", pid, b)
		}
		ids[p.name] = procID{pid, f[19]}
	}
	return ids
}

func readCertsFile(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	rest, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		crt, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, crt)
	}
	if len(out) == 0 {
		t.Fatalf("%s holds no certificate", path)
	}
	return out
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// issuedBy reports whether leaf was signed by ca.
func issuedBy(leaf, ca *x509.Certificate) error {
	if err := leaf.CheckSignatureFrom(ca); err != nil {
		return fmt.Errorf("%s is issued by %s, not by %s: %w", leaf.Subject, leaf.Issuer, ca.Subject, err)
	}
	return nil
}

// servedChain returns the certificates a TLS server at addr presents, unverified.
func servedChain(addr string) ([]*x509.Certificate, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates, nil
}

// verifyChain verifies a served chain for 127.0.0.1 against root as the only anchor.
func verifyChain(chain []*x509.Certificate, root *x509.Certificate) error {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: "127.0.0.1", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err
}

// metricValue returns the value of an unlabelled metric from a Prometheus text page.
func metricValue(url, name string) (string, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("%s not on %s", name, url)
}
