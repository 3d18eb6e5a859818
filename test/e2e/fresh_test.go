package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestServerFreshStart starts a server on an empty data dir and checks everything SPEC §2/§3
// says a first start produces, with openssl, kubectl and an etcd client.
func TestServerFreshStart(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "kubectl")
	dd := filepath.Join(t.TempDir(), "data")
	adminKC := filepath.Join(t.TempDir(), "admin.kubeconfig")
	start := time.Now()
	s := startServer(t, dd, "--write-kubeconfig", adminKC)
	s.WaitReady(t)
	tlsDir := s.TLSDir()
	serverDir := filepath.Join(dd, "server")

	t.Run("files and modes", func(t *testing.T) {
		var want []string
		for _, l := range serverLeaves(s.IP) {
			want = append(want, "tls/"+l.file+".crt", "tls/"+l.file+".key")
		}
		for _, ca := range caFiles {
			want = append(want, "tls/"+ca+".crt", "tls/"+ca+".key")
		}
		want = append(want, "tls/server-ca.nochain.crt", "tls/client-ca.nochain.crt",
			"tls/service.key", "tls/service.current.key", "cred/passwd", "token", "agent-token", "node-token")
		for _, kc := range []string{"admin", "supervisor", "controller", "scheduler", "api-server", "cloud-controller"} {
			want = append(want, "cred/"+kc+".kubeconfig")
		}
		for _, f := range want {
			info, err := os.Stat(filepath.Join(serverDir, f))
			if err != nil {
				t.Errorf("missing %s: %v", f, err)
				continue
			}
			if !info.Mode().IsRegular() {
				t.Errorf("%s is not a regular file (%v)", f, info.Mode())
			}
		}
		// Every key file is 0600 and every directory holding one is 0700.
		keyDirs := map[string]bool{}
		err := filepath.WalkDir(tlsDir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !strings.HasSuffix(p, ".key") {
				return nil
			}
			keyDirs[filepath.Dir(p)] = true
			if m := fileMode(t, p).Perm(); m != 0o600 {
				t.Errorf("%s: mode %v, want 0600", p, m)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{"", "etcd", "kube-controller-manager", "kube-scheduler"} {
			if !keyDirs[filepath.Join(tlsDir, d)] {
				t.Errorf("no key file found in %s", filepath.Join(tlsDir, d))
			}
		}
		for d := range keyDirs {
			if m := fileMode(t, d).Perm(); m != 0o700 {
				t.Errorf("%s holds keys and has mode %v, want 0700", d, m)
			}
		}
		if m := fileMode(t, filepath.Join(serverDir, "token")).Perm(); m != 0o600 {
			t.Errorf("token: mode %v, want 0600", m)
		}
		for _, f := range []string{"agent-token", "node-token", "cred/passwd"} {
			if m := fileMode(t, filepath.Join(serverDir, f)).Perm(); m&0o077 != 0 {
				t.Errorf("%s holds a password and is readable by group or others: %v", f, m)
			}
		}
	})

	t.Run("CAs", func(t *testing.T) {
		cnRE := regexp.MustCompile(`^kpki-[a-z-]+-ca@([0-9]+)$`)
		for _, ca := range caFiles {
			crt := filepath.Join(tlsDir, ca+".crt")
			certs := readCerts(t, crt)
			if len(certs) != 1 {
				t.Errorf("%s: %d certificates, want one self-signed CA", crt, len(certs))
			}
			c := certs[0]
			if err := c.CheckSignatureFrom(c); err != nil {
				t.Errorf("%s: not self-signed: %v", crt, err)
			}
			m := cnRE.FindStringSubmatch(c.Subject.CommonName)
			if m == nil {
				t.Errorf("%s: CN %q does not match kpki-<name>-ca@<unix seconds>", crt, c.Subject.CommonName)
			} else if secs, _ := strconv.ParseInt(m[1], 10, 64); secs < start.Add(-time.Minute).Unix() || secs > time.Now().Unix()+60 {
				t.Errorf("%s: CN %q: the seconds are not the time of the start", crt, c.Subject.CommonName)
			}
			switch ca {
			case "server-ca", "client-ca", "request-header-ca":
				if !strings.HasPrefix(c.Subject.CommonName, "kpki-"+ca+"@") {
					t.Errorf("%s: CN %q, want kpki-%s@<unix seconds>", crt, c.Subject.CommonName, ca)
				}
			}
			if !c.IsCA || !c.BasicConstraintsValid {
				t.Errorf("%s: not CA:true", crt)
			}
			if want := x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment; c.KeyUsage&want != want {
				t.Errorf("%s: key usage %b lacks certSign+digitalSignature+keyEncipherment", crt, c.KeyUsage)
			}
			if nb := c.NotBefore; nb.Before(start.Add(-time.Hour-5*time.Minute)) || nb.After(time.Now().Add(-time.Hour+5*time.Minute)) {
				t.Errorf("%s: NotBefore %v, want about one hour before the start (%v)", crt, nb, start)
			}
			if na, want := c.NotAfter, start.AddDate(0, 0, 3650); na.Before(want.Add(-26*time.Hour)) || na.After(want.Add(26*time.Hour)) {
				t.Errorf("%s: NotAfter %v, want about %v (10 years)", crt, na, want)
			}
			keyFile := filepath.Join(tlsDir, ca+".key")
			keys := readKeys(t, keyFile)
			if keys[0].pemType != "EC PRIVATE KEY" {
				t.Errorf("%s: PEM type %q, want EC PRIVATE KEY", keyFile, keys[0].pemType)
			}
			if ec, ok := keys[0].signer.Public().(*ecdsa.PublicKey); !ok || ec.Curve != elliptic.P256() {
				t.Errorf("%s: not a P-256 key", keyFile)
			}
			if !keyMatches(c.PublicKey, keys[0].signer) {
				t.Errorf("%s does not match %s", keyFile, crt)
			}
		}
		for _, ca := range []string{"server-ca", "client-ca"} {
			nochain := readCerts(t, filepath.Join(tlsDir, ca+".nochain.crt"))
			full := readCerts(t, filepath.Join(tlsDir, ca+".crt"))
			if len(nochain) != 1 || !nochain[0].Equal(full[0]) {
				t.Errorf("%s.nochain.crt is not the first certificate of %s.crt", ca, ca)
			}
		}
	})

	t.Run("leaves", func(t *testing.T) {
		for _, l := range serverLeaves(s.IP) {
			leaf := checkLeaf(t, tlsDir, l)
			if na, want := leaf.NotAfter, start.AddDate(0, 0, 365); na.Before(want.Add(-26*time.Hour)) || na.After(want.Add(26*time.Hour)) {
				t.Errorf("%s: NotAfter %v, want about %v (365 days)", l.file, na, want)
			}
		}
	})

	t.Run("service keys", func(t *testing.T) {
		keys := readKeys(t, filepath.Join(tlsDir, "service.key"))
		rk, ok := keys[0].signer.(*rsa.PrivateKey)
		if keys[0].pemType != "RSA PRIVATE KEY" || !ok || rk.N.BitLen() != 2048 {
			t.Errorf("service.key: first key is %s %T, want an RSA-2048 PKCS#1 key", keys[0].pemType, keys[0].signer)
		}
		cur := readKeys(t, filepath.Join(tlsDir, "service.current.key"))
		if len(cur) != 1 || !keyMatches(cur[0].signer.Public(), keys[0].signer) {
			t.Errorf("service.current.key is not the first key of service.key")
		}
	})

	t.Run("kubeconfigs", func(t *testing.T) {
		clientCert := map[string]string{
			"admin":            "client-admin",
			"supervisor":       "client-supervisor",
			"controller":       "client-controller",
			"scheduler":        "client-scheduler",
			"api-server":       "client-kube-apiserver",
			"cloud-controller": "client-kpki-cloud-controller",
		}
		wantServer := fmt.Sprintf("https://127.0.0.1:%d", s.Ports.APIServer)
		for name, leaf := range clientCert {
			path := filepath.Join(serverDir, "cred", name+".kubeconfig")
			kubectlView(t, path)
			kc := kubectlConfig(t, path, true)
			if len(kc.Clusters) != 1 || len(kc.Users) != 1 {
				t.Errorf("%s: %d clusters and %d users, want one of each", path, len(kc.Clusters), len(kc.Users))
				continue
			}
			if got := kc.Clusters[0].Cluster.Server; got != wantServer {
				t.Errorf("%s: server %q, want %q", path, got, wantServer)
			}
			if got := kc.Clusters[0].Cluster.CertificateAuthorityData; !bytes.Equal(got, readFile(t, filepath.Join(tlsDir, "server-ca.crt"))) {
				t.Errorf("%s: certificate-authority does not hold server-ca.crt", path)
			}
			if got := kc.Users[0].User.ClientCertificateData; !bytes.Equal(got, readFile(t, filepath.Join(tlsDir, leaf+".crt"))) {
				t.Errorf("%s: client-certificate is not %s.crt", path, leaf)
			}
			if got := kc.Users[0].User.ClientKeyData; !bytes.Equal(got, readFile(t, filepath.Join(tlsDir, leaf+".key"))) {
				t.Errorf("%s: client-key is not %s.key", path, leaf)
			}
			if kc.CurrentContext == "" {
				t.Errorf("%s: no current-context", path)
			}
		}
	})

	t.Run("write-kubeconfig", func(t *testing.T) {
		if m := fileMode(t, adminKC).Perm(); m != 0o600 {
			t.Errorf("%s: mode %v, want 0600", adminKC, m)
		}
		kubectlView(t, adminKC)
		kc := kubectlConfig(t, adminKC, false)
		if len(kc.Clusters) != 1 || len(kc.Users) != 1 {
			t.Fatalf("%d clusters and %d users, want one of each", len(kc.Clusters), len(kc.Users))
		}
		cl, u := kc.Clusters[0].Cluster, kc.Users[0].User
		if cl.CertificateAuthority != "" || u.ClientCertificate != "" || u.ClientKey != "" {
			t.Errorf("kubeconfig refers to files (%q, %q, %q), want embedded data", cl.CertificateAuthority, u.ClientCertificate, u.ClientKey)
		}
		if want := fmt.Sprintf("https://127.0.0.1:%d", s.Ports.APIServer); cl.Server != want {
			t.Errorf("server %q, want %q", cl.Server, want)
		}
		caCerts, err := parseCertsPEM(cl.CertificateAuthorityData)
		if err != nil || !sameCerts(caCerts, readCerts(t, filepath.Join(tlsDir, "server-ca.crt"))) {
			t.Errorf("certificate-authority-data is not server-ca.crt (%v)", err)
		}
		certs, err := parseCertsPEM(u.ClientCertificateData)
		if err != nil {
			t.Fatalf("client-certificate-data: %v", err)
		}
		admin := readCerts(t, filepath.Join(tlsDir, "client-admin.crt"))
		if !certs[0].Equal(admin[0]) {
			t.Errorf("client-certificate-data is not the client-admin certificate")
		}
		keys, err := parseKeysPEM(u.ClientKeyData)
		if err != nil || !keyMatches(certs[0].PublicKey, keys[0].signer) {
			t.Errorf("client-key-data does not match the client certificate (%v)", err)
		}
	})

	var serverPW string
	t.Run("tokens and passwd", func(t *testing.T) {
		token := strings.TrimSpace(string(readFile(t, filepath.Join(serverDir, "token"))))
		m := serverTokenRE.FindStringSubmatch(token)
		if m == nil {
			t.Fatalf("token %q is not K10<64 hex>::server:<password>", redact(token))
		}
		serverPW = m[2]
		sum := sha256.Sum256(readFile(t, filepath.Join(tlsDir, "server-ca.crt")))
		if m[1] != hex.EncodeToString(sum[:]) {
			t.Errorf("token CA hash %s, want sha256(server-ca.crt) %x", m[1], sum)
		}
		if !bytes.Equal(readFile(t, filepath.Join(serverDir, "node-token")), readFile(t, filepath.Join(serverDir, "token"))) {
			t.Errorf("node-token differs from token")
		}
		agent := strings.TrimSpace(string(readFile(t, filepath.Join(serverDir, "agent-token"))))
		am := agentTokenRE.FindStringSubmatch(agent)
		if am == nil {
			t.Fatalf("agent-token %q is not K10<64 hex>::node:<password>", redact(agent))
		}
		if am[1] != m[1] {
			t.Errorf("agent-token CA hash %s differs from the token's %s", am[1], m[1])
		}
		passwd := strings.Split(strings.TrimSpace(string(readFile(t, filepath.Join(serverDir, "cred", "passwd")))), "\n")
		for _, want := range []string{serverPW + ",server,server,kpki:server", am[2] + ",node,node,kpki:agent"} {
			found := false
			for _, l := range passwd {
				found = found || strings.TrimSpace(l) == want
			}
			if !found {
				_, rest, _ := strings.Cut(want, ",")
				t.Errorf("cred/passwd has no line <password>,%s with the token's password", rest)
			}
		}
	})

	t.Run("supervisor endpoints", func(t *testing.T) {
		code, body := s.MustGet(t, "/ping")
		if code != 200 || strings.TrimSpace(string(body)) != "pong" {
			t.Errorf("GET /ping: %d %q, want 200 pong", code, body)
		}
		code, body = s.MustGet(t, "/cacerts")
		if code != 200 || !bytes.Equal(body, readFile(t, filepath.Join(tlsDir, "server-ca.crt"))) {
			t.Errorf("GET /cacerts: %d, body is not the bytes of server-ca.crt", code)
		}
		chain := s.ServedChain(t, "")
		want := readCerts(t, filepath.Join(tlsDir, "serving-supervisor.crt"))
		if !chain[0].Equal(want[0]) {
			t.Errorf("served certificate %q (serial %v) is not the first certificate of serving-supervisor.crt (serial %v)",
				chain[0].Subject, chain[0].SerialNumber, want[0].SerialNumber)
		}
	})

	etcdURL := "https://" + net.JoinHostPort(s.IP, strconv.Itoa(s.Ports.EtcdClient))
	t.Run("bootstrap record in embedded etcd", func(t *testing.T) {
		if serverPW == "" {
			t.Skip("no token password (see the tokens subtest)")
		}
		cfg := tlsFromFiles(t, filepath.Join(tlsDir, "etcd", "server-ca.crt"),
			filepath.Join(tlsDir, "etcd", "client.crt"), filepath.Join(tlsDir, "etcd", "client.key"))
		cli := etcdClient(t, etcdURL, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		key := bootstrapKey(serverPW)
		resp, err := cli.Get(ctx, key)
		if err != nil {
			t.Fatalf("etcd get %s: %v", key, err)
		}
		if len(resp.Kvs) != 1 {
			t.Fatalf("etcd has no key %s", key)
		}
		plain, err := decryptBootstrap(serverPW, string(resp.Kvs[0].Value))
		if err != nil {
			t.Fatalf("decrypt %s with the token password: %v", key, err)
		}
		var record map[string]bootstrapEntry
		if err := json.Unmarshal(plain, &record); err != nil {
			t.Fatalf("bootstrap plaintext is not the JSON object of SPEC §6: %v", err)
		}
		for field, file := range bootstrapFiles {
			e, ok := record[field]
			if !ok {
				t.Errorf("bootstrap record has no %s", field)
				continue
			}
			if _, err := time.Parse(time.RFC3339Nano, e.Timestamp); err != nil {
				t.Errorf("%s.Timestamp %q: %v", field, e.Timestamp, err)
			}
			if !bytes.Equal(e.Content, readFile(t, filepath.Join(serverDir, file))) {
				t.Errorf("%s.Content differs from %s", field, file)
			}
		}
	})

	t.Run("embedded etcd rejects a client without certificate", func(t *testing.T) {
		pool := tlsFromFiles(t, filepath.Join(tlsDir, "etcd", "server-ca.crt"), "", "")
		// A TLS handshake plus a read shows whether the server demands a client certificate.
		d := &net.Dialer{Timeout: 5 * time.Second}
		conn, err := tls.DialWithDialer(d, "tcp", net.JoinHostPort(s.IP, strconv.Itoa(s.Ports.EtcdClient)),
			&tls.Config{RootCAs: pool.RootCAs, ServerName: s.IP, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
		if err == nil {
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		var verr *tls.CertificateVerificationError
		switch {
		case err == nil:
			t.Errorf("TLS without a client certificate was accepted")
		case errors.As(err, &verr):
			t.Errorf("the embedded etcd's certificate does not verify with etcd/server-ca.crt: %v", err)
		case !strings.Contains(err.Error(), "certificate required") && !strings.Contains(err.Error(), "bad certificate") &&
			!strings.Contains(err.Error(), "handshake failure"):
			t.Errorf("TLS without a client certificate: got %v, want the server to demand a client certificate", err)
		}
		cli := etcdClient(t, etcdURL, pool)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := cli.Get(ctx, "/bootstrap/", clientv3.WithPrefix()); err == nil {
			t.Errorf("etcd Get without a client certificate succeeded")
		}
	})

	s.Stop(t)

	t.Run("logs", func(t *testing.T) {
		out := s.Stderr() + s.Stdout()
		if serverPW != "" && strings.Contains(out, serverPW) {
			t.Errorf("the server printed the token password")
		}
		if strings.Contains(out, "PRIVATE KEY") {
			t.Errorf("the server printed a private key")
		}
		if !strings.Contains(out, filepath.Join(serverDir, "token")) {
			t.Errorf("no log line names the token file %s", filepath.Join(serverDir, "token"))
		}
		if !strings.Contains(out, s.SupervisorURL()) {
			t.Errorf("no log line names the supervisor URL %s", s.SupervisorURL())
		}
	})
}

// redact hides a token's password in failure messages.
func redact(s string) string {
	if i := strings.LastIndex(s, ":"); i >= 0 && i+1 < len(s) {
		return s[:i+1] + "<redacted>"
	}
	return "<redacted>"
}
