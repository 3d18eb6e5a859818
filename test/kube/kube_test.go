package kube

import (
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

type identity struct {
	User   string
	Groups []string
}

// whoami asks the API server who the credentials of kubeconfig kc are.
func (c *cluster) whoami(kc string, extra ...string) (identity, error) {
	out, err := c.kubectl(kc, append(extra, "auth", "whoami", "-o", "json")...)
	if err != nil {
		return identity{}, err
	}
	var r struct {
		Status struct {
			UserInfo struct {
				Username string   `json:"username"`
				Groups   []string `json:"groups"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return identity{}, fmt.Errorf("whoami output %q: %w", out, err)
	}
	return identity{r.Status.UserInfo.Username, r.Status.UserInfo.Groups}, nil
}

func (c *cluster) expectIdentity(kc, user, group string, extra ...string) {
	c.t.Helper()
	id, err := c.whoami(kc, extra...)
	if err != nil {
		c.t.Fatalf("%s: %v", kc, err)
	}
	if id.User != user || (group != "" && !slices.Contains(id.Groups, group)) {
		c.t.Fatalf("%s authenticates as %s in %v, want %s in %s", kc, id.User, id.Groups, user, group)
	}
}

// writeKubeconfig writes a kubeconfig with file references; empty cert means none.
func writeKubeconfig(t *testing.T, path, server, ca, cert, key, token string) string {
	t.Helper()
	var user strings.Builder
	if cert != "" {
		fmt.Fprintf(&user, "    client-certificate: %s\n    client-key: %s\n", cert, key)
	}
	if token != "" {
		fmt.Fprintf(&user, "    token: %s\n", token)
	}
	if user.Len() == 0 {
		user.WriteString("    {}\n")
	}
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: %s
    certificate-authority: %s
contexts:
- name: c
  context:
    cluster: c
    user: u
current-context: c
users:
- name: u
  user:
%s`, server, ca, user.String())
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func firstCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	return readCertsFile(t, path)[0]
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestKubernetesOnKpkiPKI runs the control plane on one kpki server's files and walks
// identities, the Certificates API, service-account key rotation and CA rotation.
func TestKubernetesOnKpkiPKI(t *testing.T) {
	c := newCluster(t, "--etcd-unsafe-no-fsync")
	c.startKpki()
	c.startAPIServer()
	server := "https://" + c.apiAddr()

	t.Run("identities", func(t *testing.T) {
		c.t = t
		c.expectIdentity(c.cred("admin.kubeconfig"), "system:admin", "system:masters")
		c.expectIdentity(c.cred("controller.kubeconfig"), "system:kube-controller-manager", "")
		c.expectIdentity(c.cred("scheduler.kubeconfig"), "system:kube-scheduler", "")
		c.expectIdentity(c.cred("supervisor.kubeconfig"), "system:kpki-supervisor", "system:masters")

		// The node claims an address of its own: 127.0.0.1 is the server's, which no agent may claim.
		agentDir := filepath.Join(c.dir, "agent")
		tok := strings.TrimSpace(readFile(t, filepath.Join(c.dd, "server", "agent-token")))
		mustRun(t, bins.kpki, "agent", "--once", "--server", c.supervisorURL(), "--token", tok,
			"--data-dir", agentDir, "--node-name", "kube-node-1", "--node-ip", "127.0.0.51", "--api-server-port", itoa(c.api))
		c.expectIdentity(filepath.Join(agentDir, "agent", "kubelet.kubeconfig"), "system:node:kube-node-1", "system:nodes")
		c.expectIdentity(filepath.Join(agentDir, "agent", "kubeproxy.kubeconfig"), "system:kube-proxy", "")
	})

	t.Run("foreign client CA rejected", func(t *testing.T) {
		c.t = t
		d := t.TempDir()
		ca, caKey := filepath.Join(d, "ca.crt"), filepath.Join(d, "ca.key")
		mustRun(t, "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
			"-keyout", caKey, "-out", ca, "-days", "1", "-subj", "/CN=foreign-ca",
			"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
		key, csr, crt := filepath.Join(d, "u.key"), filepath.Join(d, "u.csr"), filepath.Join(d, "u.crt")
		mustRun(t, "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
			"-keyout", key, "-out", csr, "-subj", "/O=system:masters/CN=system:admin")
		ext := filepath.Join(d, "ext")
		if err := os.WriteFile(ext, []byte("extendedKeyUsage=clientAuth\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		mustRun(t, "openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", caKey, "-CAcreateserial",
			"-days", "1", "-out", crt, "-extfile", ext)
		kc := writeKubeconfig(t, filepath.Join(d, "kc"), server, c.tls("server-ca.crt"), crt, key, "")
		_, err := c.kubectl(kc, "get", "namespaces")
		if !unauthorized(err) {
			t.Fatalf("a client certificate from a foreign CA: %v, want 401 Unauthorized", err)
		}
	})

	t.Run("certificates API signs with client-ca", func(t *testing.T) {
		c.t = t
		c.startControllerManager(false)
		d := t.TempDir()
		crt, key := c.signedCSR(d, "e2e-user", "e2e-group")
		mustRun(t, "openssl", "verify", "-purpose", "sslclient", "-CAfile", c.tls("client-ca.crt"), crt)
		if got, want := firstCert(t, crt).Issuer.String(), firstCert(t, c.tls("client-ca.crt")).Subject.String(); got != want {
			t.Errorf("issued by %s, want %s", got, want)
		}
		kc := writeKubeconfig(t, filepath.Join(d, "kc"), server, c.tls("server-ca.crt"), crt, key, "")
		c.expectIdentity(kc, "e2e-user", "e2e-group")
	})

	t.Run("service-account key rotation", func(t *testing.T) {
		c.t = t
		d := t.TempDir()
		c.admin("create", "serviceaccount", "e2e-sa", "-n", "default")
		old := strings.TrimSpace(c.admin("create", "token", "e2e-sa", "-n", "default", "--duration", "2h"))
		tokenKC := func(tok string) string {
			return writeKubeconfig(t, filepath.Join(d, fmt.Sprintf("tok-%d", time.Now().UnixNano())), server, c.tls("server-ca.crt"), "", "", tok)
		}
		c.expectIdentity(tokenKC(old), "system:serviceaccount:default:e2e-sa", "")

		// The seed page's procedure: a new key, the current keys appended, rotate-ca.
		stage := filepath.Join(d, "stage1", "server")
		c.stageServiceKey(stage, true)
		c.rotateCA(stage)
		c.restartAll()
		c.expectIdentity(tokenKC(old), "system:serviceaccount:default:e2e-sa", "")
		fresh := strings.TrimSpace(c.admin("create", "token", "e2e-sa", "-n", "default", "--duration", "2h"))
		c.expectIdentity(tokenKC(fresh), "system:serviceaccount:default:e2e-sa", "")

		// A later rotation that keeps only the current signing key drops the original.
		stage2 := filepath.Join(d, "stage2", "server")
		c.stageServiceKey(stage2, false)
		c.rotateCA(stage2)
		c.restartAll()
		if _, err := c.whoami(tokenKC(old)); !unauthorized(err) {
			t.Fatalf("a token signed by the dropped key: %v, want Unauthorized", err)
		}
		c.expectIdentity(tokenKC(fresh), "system:serviceaccount:default:e2e-sa", "")
	})

	t.Run("CA rotation with cross-signed CAs", func(t *testing.T) {
		c.t = t
		d := t.TempDir()
		oldCrt, oldKey := filepath.Join(d, "old-admin.crt"), filepath.Join(d, "old-admin.key")
		copyFile(t, c.tls("client-admin.crt"), oldCrt)
		copyFile(t, c.tls("client-admin.key"), oldKey)
		oldIssuer := firstCert(t, oldCrt).Issuer.String()

		mustRun(t, bins.kpki, "certificate", "cross-sign-ca", "--data-dir", c.dd)
		c.rotateCA(filepath.Join(c.dd, "server", "rotate-ca"))
		c.restartAll()

		if got := firstCert(t, c.tls("client-admin.crt")).Issuer.String(); got == oldIssuer {
			t.Fatalf("client-admin.crt still issued by %s after the rotation", got)
		}
		c.expectIdentity(c.cred("admin.kubeconfig"), "system:admin", "system:masters")
		oldKC := writeKubeconfig(t, filepath.Join(d, "old.kubeconfig"), server, c.tls("server-ca.crt"), oldCrt, oldKey, "")
		c.expectIdentity(oldKC, "system:admin", "system:masters")
	})
}

// signedCSR makes a key and a CertificateSigningRequest for user in group (signer
// kubernetes.io/kube-apiserver-client), approves it, waits for kube-controller-manager to
// sign it and returns the files, in dir, of the certificate and its key.
func (c *cluster) signedCSR(dir, user, group string) (crt, key string) {
	c.t.Helper()
	t := c.t
	key, csr := filepath.Join(dir, user+".key"), filepath.Join(dir, user+".csr")
	mustRun(t, "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", key, "-out", csr, "-subj", "/O="+group+"/CN="+user)
	obj := fmt.Sprintf(`apiVersion: certificates.k8s.io/v1
kind: CertificateSigningRequest
metadata:
  name: %s
spec:
  request: %s
  signerName: kubernetes.io/kube-apiserver-client
  expirationSeconds: 3600
  usages: ["client auth"]
`, user, base64.StdEncoding.EncodeToString([]byte(readFile(t, csr))))
	manifest := filepath.Join(dir, user+".csr.yaml")
	if err := os.WriteFile(manifest, []byte(obj), 0o600); err != nil {
		t.Fatal(err)
	}
	c.admin("apply", "-f", manifest)
	c.admin("certificate", "approve", user)
	var issued string
	waitFor(t, "CSR "+user+" signed", 2*time.Minute, []*proc{c.kcm, c.apis}, func() error {
		out, err := c.kubectl(c.cred("admin.kubeconfig"), "get", "csr", user, "-o", "jsonpath={.status.certificate}")
		if err != nil {
			return err
		}
		if out == "" {
			return fmt.Errorf("not signed yet")
		}
		issued = out
		return nil
	})
	der, err := base64.StdEncoding.DecodeString(issued)
	if err != nil {
		t.Fatal(err)
	}
	crt = filepath.Join(dir, user+".crt")
	if err := os.WriteFile(crt, der, 0o600); err != nil {
		t.Fatal(err)
	}
	return crt, key
}

// stageServiceKey stages a new RSA key followed by the current keys (all of them when
// keepAll, else only the current signing key) in stage/tls/service.key.
func (c *cluster) stageServiceKey(stage string, keepAll bool) {
	c.t.Helper()
	if err := os.MkdirAll(filepath.Join(stage, "tls"), 0o700); err != nil {
		c.t.Fatal(err)
	}
	path := filepath.Join(stage, "tls", "service.key")
	mustRun(c.t, "openssl", "genrsa", "-traditional", "-out", path, "2048")
	current := readFile(c.t, c.tls("service.key"))
	if !keepAll {
		current = readFile(c.t, c.tls("service.current.key"))
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(current); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) rotateCA(path string) {
	c.t.Helper()
	out := mustRun(c.t, bins.kpki, "certificate", "rotate-ca", "--data-dir", c.dd, "--server", c.supervisorURL(), "--path", path)
	if !strings.Contains(out, "certificates saved to datastore") {
		c.t.Fatalf("rotate-ca said:\n%s", out)
	}
}

// restartAll restarts kpki (which takes the new material from the datastore), then
// kube-apiserver, as the seed page says: servers first.
func (c *cluster) restartAll() {
	c.t.Helper()
	c.stopAPIServer()
	c.stopKpki()
	c.startKpki()
	c.startAPIServer()
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestLiveRenewal shows kube-apiserver serving a certificate kpki renewed while both run.
func TestLiveRenewal(t *testing.T) {
	c := newCluster(t, "--etcd-unsafe-no-fsync", "--cert-validity", "2m", "--renew-before", "100s", "--renew-interval", "2s")
	c.startKpki()
	c.startAPIServer()
	first, err := servingCert(c.apiAddr(), c.tls("server-ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if fileSerial := firstCert(t, c.tls("serving-kube-apiserver.crt")).SerialNumber; fileSerial.Cmp(first.SerialNumber) != 0 && !first.NotAfter.Before(time.Now().Add(3*time.Minute)) {
		t.Logf("kube-apiserver started on serial %s, the file already holds %s", first.SerialNumber.Text(16), fileSerial.Text(16))
	}
	var renewed *x509.Certificate
	waitFor(t, "kube-apiserver serving a renewed certificate", 4*time.Minute, []*proc{c.kpki, c.apis}, func() error {
		cur, err := servingCert(c.apiAddr(), c.tls("server-ca.crt"))
		if err != nil {
			return err
		}
		onDisk := firstCert(t, c.tls("serving-kube-apiserver.crt"))
		if cur.SerialNumber.Cmp(first.SerialNumber) == 0 || cur.SerialNumber.Cmp(onDisk.SerialNumber) != 0 {
			return fmt.Errorf("serving serial %s, first %s, on disk %s", cur.SerialNumber.Text(16), first.SerialNumber.Text(16), onDisk.SerialNumber.Text(16))
		}
		renewed = cur
		return nil
	})
	if c.apis.exited() {
		t.Fatal("kube-apiserver restarted")
	}
	if !renewed.NotAfter.After(first.NotAfter) {
		t.Errorf("renewed certificate expires %s, not after the first one's %s", renewed.NotAfter, first.NotAfter)
	}
	if !renewed.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(first.PublicKey) {
		t.Error("renewal changed the serving key; it must keep it")
	}
	t.Logf("kube-apiserver serial %s -> %s without a restart", first.SerialNumber.Text(16), renewed.SerialNumber.Text(16))
}

// unauthorized reports whether a kubectl error is the API server's 401.
func unauthorized(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "Unauthorized") ||
		strings.Contains(err.Error(), "the server has asked for the client to provide credentials"))
}
