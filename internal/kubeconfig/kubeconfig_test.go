package kubeconfig

import (
	"bytes"
	stdcontext "context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const wantFiles = `apiVersion: v1
clusters:
- cluster:
    certificate-authority: /var/lib/kpki/server/tls/server-ca.crt
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: default
  user:
    client-certificate: /var/lib/kpki/server/tls/client-admin.crt
    client-key: /var/lib/kpki/server/tls/client-admin.key
`

const wantData = `apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: Q0EgUEVN
    server: https://10.0.0.1:16443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: default
  user:
    client-certificate-data: Q0VSVCBQRU0=
    client-key-data: S0VZIFBFTQ==
`

func TestRenderFilesGolden(t *testing.T) {
	got, err := RenderFiles(Files{
		Server:         "https://127.0.0.1:6443",
		CAFile:         "/var/lib/kpki/server/tls/server-ca.crt",
		ClientCertFile: "/var/lib/kpki/server/tls/client-admin.crt",
		ClientKeyFile:  "/var/lib/kpki/server/tls/client-admin.key",
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != wantFiles {
		t.Errorf("RenderFiles =\n%s\nwant\n%s", got, wantFiles)
	}
}

func TestRenderDataGolden(t *testing.T) {
	got, err := RenderData(Data{Server: "https://10.0.0.1:16443", CA: []byte("CA PEM"), ClientCert: []byte("CERT PEM"), ClientKey: []byte("KEY PEM")})
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != wantData {
		t.Errorf("RenderData =\n%s\nwant\n%s", got, wantData)
	}
}

func TestRenderDeterministic(t *testing.T) {
	f := Files{Server: "https://127.0.0.1:6443", CAFile: "/a/ca.crt", ClientCertFile: "/a/c.crt", ClientKeyFile: "/a/c.key"}
	d := Data{Server: "https://127.0.0.1:6443", CA: []byte("a"), ClientCert: []byte("b"), ClientKey: []byte("c")}
	tests := []struct {
		name   string
		render func() ([]byte, error)
	}{
		{"files", func() ([]byte, error) { return RenderFiles(f) }},
		{"data", func() ([]byte, error) { return RenderData(d) }},
	}
	for _, tc := range tests {
		first, err := tc.render()
		if err != nil {
			t.Fatal(err)
		}
		for range 20 {
			again, err := tc.render()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(first, again) {
				t.Fatalf("%s: output changed between two renders:\n%s\n---\n%s", tc.name, first, again)
			}
		}
	}
}

func TestRenderDifferences(t *testing.T) {
	base := Files{Server: "https://127.0.0.1:6443", CAFile: "/a/ca.crt", ClientCertFile: "/a/c.crt", ClientKeyFile: "/a/c.key"}
	b0, _ := RenderFiles(base)
	tests := []struct {
		name string
		mod  func(f *Files)
		want string
	}{
		{"port", func(f *Files) { f.Server = "https://127.0.0.1:7443" }, "server: https://127.0.0.1:7443"},
		{"ca", func(f *Files) { f.CAFile = "/b/ca.crt" }, "certificate-authority: /b/ca.crt"},
		{"cert", func(f *Files) { f.ClientCertFile = "/b/c.crt" }, "client-certificate: /b/c.crt"},
		{"key", func(f *Files) { f.ClientKeyFile = "/b/c.key" }, "client-key: /b/c.key"},
	}
	for _, tc := range tests {
		f := base
		tc.mod(&f)
		b, err := RenderFiles(f)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(b, b0) || !strings.Contains(string(b), tc.want) {
			t.Errorf("%s: output does not reflect the change (want %q):\n%s", tc.name, tc.want, b)
		}
	}
	// A file kubeconfig carries no *-data keys, a data kubeconfig no file keys.
	d, _ := RenderData(Data{Server: "https://x:1", CA: []byte("a"), ClientCert: []byte("b"), ClientKey: []byte("c")})
	for _, k := range []string{"certificate-authority-data", "client-certificate-data", "client-key-data"} {
		if strings.Contains(string(b0), k) {
			t.Errorf("file kubeconfig has %s", k)
		}
	}
	for _, k := range []string{"certificate-authority:", "client-certificate:", "client-key:"} {
		if strings.Contains(string(d), k) {
			t.Errorf("data kubeconfig has %s", k)
		}
	}
}

// pkiFiles is a CA, a serving cert for 127.0.0.1 and a client cert, as PEM.
type pkiFiles struct {
	caPEM, serverCert, serverKey, clientCert, clientKey []byte
}

func makePKI(t *testing.T) pkiFiles {
	t.Helper()
	now := time.Now()
	newKey := func() (*ecdsa.PrivateKey, []byte) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return k, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	}
	sign := func(tmpl, parent *x509.Certificate, pub any, key *ecdsa.PrivateKey) ([]byte, *x509.Certificate) {
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), c
	}
	caKey, _ := newKey()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test-ca"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	var p pkiFiles
	var ca *x509.Certificate
	p.caPEM, ca = sign(caTmpl, caTmpl, caKey.Public(), caKey)
	sk, skPEM := newKey()
	p.serverCert, _ = sign(&x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, ca, sk.Public(), caKey)
	p.serverKey = skPEM
	ck, ckPEM := newKey()
	p.clientCert, _ = sign(&x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "system:admin", Organization: []string{"system:masters"}}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, ca, ck.Public(), caKey)
	p.clientKey = ckPEM
	return p
}

func kubectl(t *testing.T, kubeconfig string, args ...string) []byte {
	t.Helper()
	bin, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not installed")
	}
	ctx, cancel := stdcontext.WithTimeout(stdcontext.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "KUBECONFIG=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// viewed is the part of `kubectl config view -o json` the tests look at.
type viewed struct {
	Clusters []struct {
		Name    string
		Cluster map[string]string
	}
	Users []struct {
		Name string
		User map[string]string
	}
	Contexts []struct {
		Name    string
		Context map[string]string
	}
	CurrentContext string `json:"current-context"`
}

func view(t *testing.T, kubeconfig string, raw bool) viewed {
	t.Helper()
	args := []string{"config", "view", "-o", "json"}
	if raw {
		args = append(args, "--raw")
	}
	var v viewed
	out := kubectl(t, kubeconfig, args...)
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("kubectl output is not JSON: %v\n%s", err, out)
	}
	if len(v.Clusters) != 1 || len(v.Users) != 1 || len(v.Contexts) != 1 {
		t.Fatalf("kubectl saw %d clusters, %d users, %d contexts; want one each:\n%s", len(v.Clusters), len(v.Users), len(v.Contexts), out)
	}
	if v.CurrentContext != "default" || v.Contexts[0].Name != "default" || v.Contexts[0].Context["cluster"] != "default" || v.Contexts[0].Context["user"] != "default" {
		t.Errorf("context not wired: %s", out)
	}
	return v
}

func TestRenderFilesLoadsInKubectl(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data dir: #1")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	f := Files{
		Server:         "https://127.0.0.1:6443",
		CAFile:         filepath.Join(dir, "server-ca.crt"),
		ClientCertFile: filepath.Join(dir, "client-admin.crt"),
		ClientKeyFile:  filepath.Join(dir, "client-admin.key"),
	}
	b, err := RenderFiles(f)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "admin.kubeconfig")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, raw := range []bool{false, true} {
		v := view(t, path, raw)
		c, u := v.Clusters[0].Cluster, v.Users[0].User
		if c["server"] != f.Server || c["certificate-authority"] != f.CAFile {
			t.Errorf("raw=%v: cluster %v, want server %q CA %q", raw, c, f.Server, f.CAFile)
		}
		if u["client-certificate"] != f.ClientCertFile || u["client-key"] != f.ClientKeyFile {
			t.Errorf("raw=%v: user %v, want cert %q key %q", raw, u, f.ClientCertFile, f.ClientKeyFile)
		}
	}
}

func TestRenderDataLoadsInKubectl(t *testing.T) {
	p := makePKI(t)
	d := Data{Server: "https://127.0.0.1:6443", CA: p.caPEM, ClientCert: p.clientCert, ClientKey: p.clientKey}
	b, err := RenderData(d)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}

	v := view(t, path, false)
	if got := v.Clusters[0].Cluster["server"]; got != d.Server {
		t.Errorf("server %q, want %q", got, d.Server)
	}
	for k, val := range v.Users[0].User {
		if strings.Contains(val, "PRIVATE KEY") || strings.Contains(val, base64.StdEncoding.EncodeToString(p.clientKey)[:20]) {
			t.Errorf("config view without --raw shows the key in %s", k)
		}
	}

	v = view(t, path, true)
	decode := func(what, s string) []byte {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatalf("%s: %q is not base64: %v", what, s, err)
		}
		return b
	}
	checks := []struct {
		what string
		got  string
		want []byte
	}{
		{"certificate-authority-data", v.Clusters[0].Cluster["certificate-authority-data"], d.CA},
		{"client-certificate-data", v.Users[0].User["client-certificate-data"], d.ClientCert},
		{"client-key-data", v.Users[0].User["client-key-data"], d.ClientKey},
	}
	for _, c := range checks {
		if got := decode(c.what, c.got); !bytes.Equal(got, c.want) {
			t.Errorf("%s decodes to\n%s\nwant\n%s", c.what, got, c.want)
		}
	}
}

// TestKubeconfigsAuthenticate has kubectl call a TLS server with each kind of
// kubeconfig: it must verify the server with the CA and present the client cert.
func TestKubeconfigsAuthenticate(t *testing.T) {
	if _, err := exec.LookPath("kubectl"); err != nil {
		t.Skip("kubectl not installed")
	}
	p := makePKI(t)
	serverPair, err := tls.X509KeyPair(p.serverCert, p.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.caPEM)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) == 0 {
			http.Error(w, "no client certificate", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"cn": r.TLS.PeerCertificates[0].Subject.CommonName, "path": r.URL.Path})
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverPair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	srv.StartTLS()
	defer srv.Close()

	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	filesKC, err := RenderFiles(Files{Server: srv.URL, CAFile: write("ca.crt", p.caPEM), ClientCertFile: write("c.crt", p.clientCert), ClientKeyFile: write("c.key", p.clientKey)})
	if err != nil {
		t.Fatal(err)
	}
	dataKC, err := RenderData(Data{Server: srv.URL, CA: p.caPEM, ClientCert: p.clientCert, ClientKey: p.clientKey})
	if err != nil {
		t.Fatal(err)
	}
	for name, kc := range map[string][]byte{"files": filesKC, "data": dataKC} {
		out := kubectl(t, write(name+".kubeconfig", kc), "get", "--raw", "/kpki-test", "--request-timeout=30s")
		var got map[string]string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%s: reply %q: %v", name, out, err)
		}
		if got["cn"] != "system:admin" || got["path"] != "/kpki-test" {
			t.Errorf("%s: server saw %v, want client CN system:admin on /kpki-test", name, got)
		}
	}
}
