package cagen

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
)

const (
	serverPassword = "0123456789abcdef0123456789abcdef"
	agentPassword  = "fedcba9876543210fedcba9876543210"
)

func requireOpenSSL(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
}

// openssl runs the openssl CLI and returns its combined output.
func openssl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	return string(out), err
}

func mustOpenSSL(t *testing.T, args ...string) string {
	t.Helper()
	out, err := openssl(t, args...)
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	writeFile(t, to, readFile(t, from))
}

func parseCertsFile(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	c, err := pki.ParseCerts(readFile(t, path))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

func parseKeysFile(t *testing.T, path string) []crypto.Signer {
	t.Helper()
	k, err := pki.ParseKeys(readFile(t, path))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return k
}

// pemFile writes certs to a new temporary file and returns its path.
func pemFile(t *testing.T, certs ...*x509.Certificate) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "*.pem")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(pki.EncodeCerts(certs...)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// opensslVerify checks with `openssl verify` that the first certificate of certFile
// chains to a certificate of caFile through the certificates of untrusted (may be "").
func opensslVerify(t *testing.T, caFile, untrusted string, cert *x509.Certificate) {
	t.Helper()
	args := []string{"verify", "-CAfile", caFile}
	if untrusted != "" {
		args = append(args, "-untrusted", untrusted)
	}
	args = append(args, pemFile(t, cert))
	out, err := openssl(t, args...)
	if err != nil || !strings.Contains(out, ": OK") {
		t.Errorf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// opensslKeyMatches checks with openssl that the first key of keyFile is the key of
// the first certificate of certFile.
func opensslKeyMatches(t *testing.T, keyFile, certFile string) {
	t.Helper()
	fromKey := mustOpenSSL(t, "pkey", "-in", keyFile, "-pubout")
	fromCert := mustOpenSSL(t, "x509", "-in", certFile, "-noout", "-pubkey")
	if fromKey != fromCert {
		t.Errorf("public key of %s:\n%s\ndiffers from that of %s:\n%s", keyFile, fromKey, certFile, fromCert)
	}
}

// opensslIsCA checks with openssl that the first certificate of certFile says CA:TRUE.
func opensslIsCA(t *testing.T, certFile string) {
	t.Helper()
	out := mustOpenSSL(t, "x509", "-in", certFile, "-noout", "-ext", "basicConstraints")
	if !strings.Contains(out, "CA:TRUE") {
		t.Errorf("%s: basicConstraints %q, want CA:TRUE", certFile, strings.TrimSpace(out))
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// pemTypes lists the PEM block types of data.
func pemTypes(data []byte) []string {
	var types []string
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return types
		}
		types = append(types, b.Type)
	}
}

func samePublicKey(a, b crypto.Signer) bool {
	return pki.PublicKeysEqual(a.Public(), b.Public())
}

// checkServiceKey checks that path holds a new RSA-2048 PKCS#1 key followed by the
// keys of old, in order, and returns the new key.
func checkServiceKey(t *testing.T, path string, old []crypto.Signer) crypto.Signer {
	t.Helper()
	data := readFile(t, path)
	if types := pemTypes(data); len(types) == 0 || types[0] != pki.BlockRSAPrivateKey {
		t.Fatalf("%s: blocks %q, want an RSA PRIVATE KEY first", path, types)
	}
	keys := parseKeysFile(t, path)
	if len(keys) != len(old)+1 {
		t.Fatalf("%s holds %d keys, want a new one and the %d old ones", path, len(keys), len(old))
	}
	k, ok := keys[0].(*rsa.PrivateKey)
	if !ok || k.N.BitLen() != 2048 {
		t.Errorf("%s: first key is not RSA-2048", path)
	}
	for _, o := range old {
		if samePublicKey(keys[0], o) {
			t.Errorf("%s: the first key is an old one", path)
		}
	}
	for i, o := range old {
		if !samePublicKey(keys[i+1], o) {
			t.Errorf("%s: key %d is not old key %d", path, i+2, i+1)
		}
	}
	return keys[0]
}

// snapshot returns every file under dir with its content and mode.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) && p == dir {
				return filepath.SkipDir
			}
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			out[rel+"/"] = info.Mode().String()
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[rel] = info.Mode().String() + " " + string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameSnapshot(t *testing.T, before, after map[string]string) {
	t.Helper()
	var diff []string
	for k, v := range after {
		if w, ok := before[k]; !ok {
			diff = append(diff, "+"+k)
		} else if w != v {
			diff = append(diff, "~"+k)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			diff = append(diff, "-"+k)
		}
	}
	sort.Strings(diff)
	if len(diff) > 0 {
		t.Errorf("files changed: %s", strings.Join(diff, " "))
	}
}

// checkModes checks that every file under dir is 0600 and every directory 0700.
func checkModes(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if info.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, info.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// selfSignedDataDir makes a server data dir holding the five CAs as a kpki (or K3s)
// server creates them — one self-signed P-256 certificate each — with a service.key of
// two RSA keys and the server and agent token files.
func selfSignedDataDir(t *testing.T) string {
	t.Helper()
	dd := filepath.Join(t.TempDir(), "data")
	l := datadir.Layout{Root: dd}
	now := time.Now()
	iss := pki.NewIssuer(clock.Real{}, nil)
	for _, c := range certs.CAs {
		key, err := iss.NewECKey()
		if err != nil {
			t.Fatal(err)
		}
		// Named as when the cluster started, a while ago.
		cert, err := iss.SelfSignedCA(key, c.CNPrefix+"@"+strconv.FormatInt(now.Add(-time.Hour).Unix(), 10), certs.CAValidity)
		if err != nil {
			t.Fatal(err)
		}
		keyPEM, err := pki.EncodeKey(key)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, l.TLS(c.CertFile), pki.EncodeCert(cert))
		writeFile(t, l.TLS(c.KeyFile), keyPEM)
	}
	var svc bytes.Buffer
	for range 2 {
		k, err := iss.NewRSAKey(2048)
		if err != nil {
			t.Fatal(err)
		}
		p, err := pki.EncodeKey(k)
		if err != nil {
			t.Fatal(err)
		}
		svc.Write(p)
	}
	writeFile(t, l.TLS(certs.ServiceKeyFile), svc.Bytes())
	oldHash, err := pki.CAHash(readFile(t, l.TLS(certs.CA(certs.ServerCA).CertFile)))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, l.TokenFile(), []byte("K10"+oldHash+"::server:"+serverPassword+"\n"))
	writeFile(t, l.AgentTokenFile(), []byte("K10"+oldHash+"::node:"+agentPassword+"\n"))
	return dd
}
