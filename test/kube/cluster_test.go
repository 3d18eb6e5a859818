package kube

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cluster is a kpki server plus the Kubernetes components running on its PKI.
type cluster struct {
	t        *testing.T
	root     *testing.T // owns the processes, which outlive subtests
	dir      string
	dd       string
	logs     string
	sup      int
	etcd     int
	etcdPeer int
	api      int
	kcmPort  int
	// kcmHolder is the holder of the kube-controller-manager lease once it was seen.
	kcmHolder string
	extra     []string
	kpki      *proc
	apis      *proc
	kcm       *proc
}

func newCluster(t *testing.T, kpkiArgs ...string) *cluster {
	dir := t.TempDir()
	c := &cluster{
		t: t, root: t, dir: dir, dd: filepath.Join(dir, "kpki"), logs: filepath.Join(dir, "logs"),
		sup: freePort(t), etcd: freePort(t), etcdPeer: freePort(t), api: freePort(t),
		extra: kpkiArgs,
	}
	if err := os.MkdirAll(c.logs, 0o755); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *cluster) tls(name string) string  { return filepath.Join(c.dd, "server", "tls", name) }
func (c *cluster) cred(name string) string { return filepath.Join(c.dd, "server", "cred", name) }
func (c *cluster) supervisorURL() string   { return "https://127.0.0.1:" + itoa(c.sup) }
func (c *cluster) apiAddr() string         { return "127.0.0.1:" + itoa(c.api) }

// startKpki starts (or restarts) the kpki server and waits until it is ready.
func (c *cluster) startKpki() {
	c.t.Helper()
	args := append([]string{"server", "--data-dir", c.dd, "--node-name", "kube-e2e",
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--supervisor-port", itoa(c.sup), "--etcd-client-port", itoa(c.etcd), "--etcd-peer-port", itoa(c.etcdPeer),
		"--api-server-port", itoa(c.api), "--metrics-address", ""}, c.extra...)
	c.kpki = start(c.root, "kpki", c.logs, bins.kpki, args...)
	waitFor(c.t, "kpki ready", 90*time.Second, []*proc{c.kpki}, func() error { return httpsOK(c.supervisorURL() + "/readyz") })
}

func (c *cluster) stopKpki() { c.kpki.stop() }

// startAPIServer starts kube-apiserver with kpki's files and waits for /readyz = ok.
func (c *cluster) startAPIServer() {
	c.t.Helper()
	scratch := filepath.Join(c.dir, "apiserver-certs")
	args := []string{
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
		"--secure-port=" + itoa(c.api),
		"--etcd-servers=https://127.0.0.1:" + itoa(c.etcd),
		"--etcd-cafile=" + c.tls("etcd/server-ca.crt"), "--etcd-certfile=" + c.tls("etcd/client.crt"), "--etcd-keyfile=" + c.tls("etcd/client.key"),
		"--tls-cert-file=" + c.tls("serving-kube-apiserver.crt"), "--tls-private-key-file=" + c.tls("serving-kube-apiserver.key"),
		"--client-ca-file=" + c.tls("client-ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + c.tls("service.key"),
		"--service-account-signing-key-file=" + c.tls("service.current.key"),
		"--service-cluster-ip-range=10.43.0.0/16",
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--cert-dir=" + scratch,
		"--kubelet-client-certificate=" + c.tls("client-kube-apiserver.crt"), "--kubelet-client-key=" + c.tls("client-kube-apiserver.key"),
		"--requestheader-client-ca-file=" + c.tls("request-header-ca.crt"), "--requestheader-allowed-names=system:auth-proxy",
		"--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + c.tls("client-auth-proxy.crt"), "--proxy-client-key-file=" + c.tls("client-auth-proxy.key"),
	}
	c.apis = start(c.root, "kube-apiserver", c.logs, bins.apiserver, args...)
	waitFor(c.t, "kube-apiserver /readyz", 3*time.Minute, []*proc{c.apis}, func() error {
		out, err := run("kubectl", "--kubeconfig", c.cred("admin.kubeconfig"), "get", "--raw", "/readyz")
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "ok" {
			return &unexpected{out}
		}
		return nil
	})
}

// stopAPIServer stops kube-apiserver; it drains open watches for a long time after
// SIGTERM, which a restart in a test need not wait for.
func (c *cluster) stopAPIServer() {
	c.apis.grace = 5 * time.Second
	c.apis.stop()
}

// startControllerManager runs the CSR signing controller with kpki's CA files, one
// signer per flag pair; with leaderElect it holds the kube-system/kube-controller-manager
// lease. The controller signs with system:controller:certificate-controller's rights,
// which its own user is given first.
func (c *cluster) startControllerManager(leaderElect bool) {
	c.t.Helper()
	c.admin("create", "clusterrolebinding", "kcm-csr-signing", "--clusterrole=system:controller:certificate-controller", "--user=system:kube-controller-manager")
	kc := c.cred("controller.kubeconfig")
	c.kcmPort = freePort(c.t)
	args := []string{
		"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
		"--leader-elect=" + strconv.FormatBool(leaderElect), "--controllers=csrsigning", "--bind-address=127.0.0.1", "--secure-port=" + itoa(c.kcmPort),
		"--cert-dir=" + filepath.Join(c.dir, "kcm-certs"),
		"--cluster-signing-kubelet-serving-cert-file=" + c.tls("server-ca.nochain.crt"),
		"--cluster-signing-kubelet-serving-key-file=" + c.tls("server-ca.key"),
		"--cluster-signing-legacy-unknown-cert-file=" + c.tls("server-ca.nochain.crt"),
		"--cluster-signing-legacy-unknown-key-file=" + c.tls("server-ca.key"),
		"--cluster-signing-kubelet-client-cert-file=" + c.tls("client-ca.nochain.crt"),
		"--cluster-signing-kubelet-client-key-file=" + c.tls("client-ca.key"),
		"--cluster-signing-kube-apiserver-client-cert-file=" + c.tls("client-ca.nochain.crt"),
		"--cluster-signing-kube-apiserver-client-key-file=" + c.tls("client-ca.key"),
	}
	c.kcm = start(c.root, "kube-controller-manager", c.logs, bins.controllerManager, args...)
}

// kubectl runs kubectl with kubeconfig kc.
func (c *cluster) kubectl(kc string, args ...string) (string, error) {
	return run("kubectl", append([]string{"--kubeconfig", kc}, args...)...)
}

func (c *cluster) admin(args ...string) string {
	c.t.Helper()
	out, err := c.kubectl(c.cred("admin.kubeconfig"), args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

type unexpected struct{ s string }

func (u *unexpected) Error() string { return "unexpected output: " + u.s }
