package cagen

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
)

// liveCA is a CA's current files, read before a cross-signing.
type liveCA struct {
	crtPath string
	bundle  []*x509.Certificate
	keys    []crypto.Signer
}

func readLive(t *testing.T, dd string) map[certs.CAID]liveCA {
	t.Helper()
	l := datadir.Layout{Root: dd}
	out := map[certs.CAID]liveCA{}
	for _, c := range certs.CAs {
		// Keep a copy: the live files may be replaced later in the test.
		crt := filepath.Join(t.TempDir(), "old.crt")
		copyFile(t, l.TLS(c.CertFile), crt)
		out[c.ID] = liveCA{crtPath: crt, bundle: parseCertsFile(t, crt), keys: parseKeysFile(t, l.TLS(c.KeyFile))}
	}
	return out
}

// checkCrossSigned checks the rotate-ca/tls output of a cross-signing of the CAs in
// old: for each CA, the bundle is new CA + new root + cross-signed new root + current
// root, the key file is new CA key + new root key, and with openssl the new CA
// verifies with the old CA file as the only trust anchor. It returns the new hash.
func checkCrossSigned(t *testing.T, stageTLS string, old map[certs.CAID]liveCA) string {
	t.Helper()
	now := time.Now()
	for _, c := range certs.CAs {
		o := old[c.ID]
		crt, key := filepath.Join(stageTLS, c.CertFile), filepath.Join(stageTLS, c.KeyFile)
		bundle := parseCertsFile(t, crt)
		keys := parseKeysFile(t, key)
		if len(bundle) != 4 || len(keys) != 2 {
			t.Fatalf("%s holds %d certificates and %s %d keys, want 4 and 2", crt, len(bundle), key, len(keys))
		}
		ca, self, cross, cur := bundle[0], bundle[1], bundle[2], bundle[3]
		wantCur := o.bundle[0]
		if len(o.bundle) > 1 {
			wantCur = o.bundle[1]
		}
		if !cur.Equal(wantCur) {
			t.Errorf("%s: last certificate %q is not the current root %q", crt, cur.Subject, wantCur.Subject)
		}
		if !pki.IsSelfSigned(self) || !bytes.Equal(self.RawSubject, cross.RawSubject) || !pki.PublicKeysEqual(self.PublicKey, cross.PublicKey) {
			t.Errorf("%s: certificates 2 and 3 are not one root, self-signed then cross-signed", crt)
		}
		if err := cross.CheckSignatureFrom(cur); err != nil {
			t.Errorf("%s: certificate 3 is not signed by the current root: %v", crt, err)
		}
		if err := ca.CheckSignatureFrom(self); err != nil {
			t.Errorf("%s: the new CA is not signed by the new root: %v", crt, err)
		}
		wantCN := strings.TrimSuffix(c.CNPrefix, "-ca") + "-root@"
		if !strings.Contains(self.Subject.CommonName, "-root@") || !strings.HasPrefix(self.Subject.CommonName, wantCN) {
			t.Errorf("%s: new root CN %q, want %s<time>", crt, self.Subject.CommonName, wantCN)
		}
		if !strings.HasPrefix(ca.Subject.CommonName, c.CNPrefix+"@") {
			t.Errorf("%s: new CA CN %q, want %s@<time>", crt, ca.Subject.CommonName, c.CNPrefix)
		}
		if !pki.KeyMatchesCert(keys[0], ca) || !pki.KeyMatchesCert(keys[1], self) {
			t.Errorf("%s: keys are not the new CA key and the new root key", key)
		}
		for i, k := range keys {
			if _, ok := k.(*ecdsa.PrivateKey); !ok {
				t.Errorf("%s: key %d is %T, want ECDSA", key, i+1, k)
			}
		}
		if types := pemTypes(readFile(t, key)); len(types) != 2 || types[0] != pki.BlockECPrivateKey || types[1] != pki.BlockECPrivateKey {
			t.Errorf("%s: blocks %q, want two EC PRIVATE KEY", key, types)
		}
		for _, k := range o.keys {
			if samePublicKey(k, keys[0]) || samePublicKey(k, keys[1]) {
				t.Errorf("%s reuses a current key", key)
			}
		}

		// The chain of trust from the old CA: new CA → cross-signed new root → old root.
		opensslVerify(t, o.crtPath, crossUntrusted(t, bundle), ca)
		goVerifyFromOld(t, o.bundle, bundle, now)
		opensslKeyMatches(t, key, crt)
		opensslIsCA(t, crt)
		// What a server does when it loads the staged files.
		loaded, err := pki.LoadCA(readFile(t, crt), readFile(t, key))
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.CheckCA(loaded, now); err != nil {
			t.Errorf("%s: a server would refuse it: %v", crt, err)
		}
	}
	serverCrt := filepath.Join(stageTLS, "server-ca.crt")
	hash, err := pki.CAHash(readFile(t, serverCrt))
	if err != nil {
		t.Fatal(err)
	}
	if want := sha256Hex(parseCertsFile(t, serverCrt)[1].Raw); hash != want {
		t.Errorf("CAHash(new server-ca.crt) = %s, want sha256 of the new self-signed root %s", hash, want)
	}
	return hash
}

// crossUntrusted writes the certificates of a cross-signed bundle but the first to a
// file for `openssl verify -untrusted`, the cross-signed root before the self-signed
// one: OpenSSL takes the first untrusted issuer that fits and does not backtrack from
// an untrusted self-signed certificate to another issuer of the same name, so with the
// self-signed new root first it stops there ("self-signed certificate in certificate
// chain") instead of following the cross-signature to the old root.
func crossUntrusted(t *testing.T, bundle []*x509.Certificate) string {
	t.Helper()
	return pemFile(t, append([]*x509.Certificate{bundle[2], bundle[1]}, bundle[3:]...)...)
}

// goVerifyFromOld checks with crypto/x509, as a rotate-ca validator would, that the
// first certificate of bundle chains, through the other certificates of bundle in any
// order, to a certificate of the old bundle, with only the old bundle trusted.
func goVerifyFromOld(t *testing.T, old, bundle []*x509.Certificate, now time.Time) {
	t.Helper()
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range old {
		roots.AddCert(c)
	}
	for _, c := range bundle[1:] {
		inter.AddCert(c)
	}
	chains, err := bundle[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		t.Errorf("new CA %q does not verify against the old CA file: %v", bundle[0].Subject, err)
		return
	}
	for _, ch := range chains {
		if len(ch) != 3 || !ch[1].Equal(bundle[2]) {
			t.Errorf("unexpected chain of %d certificates from the new CA to the old CA file", len(ch))
		}
	}
}

// promote copies a staged rotate-ca/tls into the live tls dir, as a restart after
// rotate-ca does.
func promote(t *testing.T, dd string) {
	t.Helper()
	l := datadir.Layout{Root: dd}
	for _, c := range certs.CAs {
		for _, f := range []string{c.CertFile, c.KeyFile} {
			copyFile(t, l.Server(RotateCADir, "tls", f), l.TLS(f))
		}
	}
	copyFile(t, l.Server(RotateCADir, "tls", certs.ServiceKeyFile), l.TLS(certs.ServiceKeyFile))
}

var tokenLine = regexp.MustCompile(`(?m)^Updated (server|agent) token: +(\S+)$`)

func checkTokens(t *testing.T, out, hash string) {
	t.Helper()
	got := map[string]string{}
	for _, m := range tokenLine.FindAllStringSubmatch(out, -1) {
		got[m[1]] = m[2]
	}
	want := map[string]string{
		"server": "K10" + hash + "::server:" + serverPassword,
		"agent":  "K10" + hash + "::node:" + agentPassword,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s token printed %q, want %q\n%s", k, got[k], v, out)
		}
	}
}

func TestCrossSignCA(t *testing.T) {
	t.Parallel()
	requireOpenSSL(t)
	dd := selfSignedDataDir(t)
	l := datadir.Layout{Root: dd}
	old := readLive(t, dd)
	oldSvc := parseKeysFile(t, l.TLS(certs.ServiceKeyFile))
	liveBefore := snapshot(t, l.TLS())

	var out bytes.Buffer
	res, err := CrossSignCA(dd, clock.Real{}, &out)
	if err != nil {
		t.Fatalf("CrossSignCA: %v", err)
	}
	stageTLS := l.Server(RotateCADir, "tls")
	if res.Dir != l.Server(RotateCADir) || res.Replaced {
		t.Errorf("Dir=%s Replaced=%v", res.Dir, res.Replaced)
	}
	hash := checkCrossSigned(t, stageTLS, old)
	if res.CAHash != hash {
		t.Errorf("result hash %s, want %s", res.CAHash, hash)
	}
	checkTokens(t, out.String(), hash)
	if res.ServerToken != "K10"+hash+"::server:"+serverPassword || res.AgentToken != "K10"+hash+"::node:"+agentPassword {
		t.Errorf("result tokens %q %q", res.ServerToken, res.AgentToken)
	}
	wantCmd := "kpki certificate rotate-ca --path=" + l.Server(RotateCADir)
	if !strings.Contains(out.String(), wantCmd) {
		t.Errorf("output does not give %q:\n%s", wantCmd, out.String())
	}
	if strings.Contains(out.String(), "PRIVATE KEY") {
		t.Error("output contains key material")
	}
	checkServiceKey(t, filepath.Join(stageTLS, certs.ServiceKeyFile), oldSvc)
	checkModes(t, l.Server(RotateCADir))
	sameSnapshot(t, liveBefore, snapshot(t, l.TLS()))
	if len(res.Files) != 11 {
		t.Errorf("wrote %d files, want 11", len(res.Files))
	}
}

// TestCrossSignCATwice cross-signs on top of an earlier cross-signing that was loaded:
// the current root is then the second certificate and key of each CA's files.
func TestCrossSignCATwice(t *testing.T) {
	t.Parallel()
	requireOpenSSL(t)
	dd := selfSignedDataDir(t)
	l := datadir.Layout{Root: dd}
	if _, err := CrossSignCA(dd, clock.Real{}, io.Discard); err != nil {
		t.Fatal(err)
	}
	promote(t, dd)
	first := readLive(t, dd)
	firstSvc := parseKeysFile(t, l.TLS(certs.ServiceKeyFile))
	// A stray file in the earlier staging dir goes with it.
	stray := l.Server(RotateCADir, "tls", "stray")
	writeFile(t, stray, []byte("x"))

	var out bytes.Buffer
	res, err := CrossSignCA(dd, clock.Real{}, &out)
	if err != nil {
		t.Fatalf("second CrossSignCA: %v", err)
	}
	if !res.Replaced || !strings.Contains(out.String(), "Replacing the earlier "+l.Server(RotateCADir)) {
		t.Errorf("Replaced=%v; output does not say the earlier dir is replaced:\n%s", res.Replaced, out.String())
	}
	if datadir.Exists(stray) {
		t.Error("the earlier rotate-ca dir was not replaced")
	}
	stageTLS := l.Server(RotateCADir, "tls")
	hash := checkCrossSigned(t, stageTLS, first)
	checkTokens(t, out.String(), hash)
	for _, c := range certs.CAs {
		bundle := parseCertsFile(t, filepath.Join(stageTLS, c.CertFile))
		// Also with only the first run's self-signed root trusted.
		opensslVerify(t, pemFile(t, first[c.ID].bundle[1]), crossUntrusted(t, bundle), bundle[0])
	}
	svc := parseKeysFile(t, filepath.Join(stageTLS, certs.ServiceKeyFile))
	checkServiceKey(t, filepath.Join(stageTLS, certs.ServiceKeyFile), firstSvc)
	if len(svc) != 4 {
		t.Errorf("service.key holds %d keys, want the 2 original ones and one per rotation", len(svc))
	}
}

func TestCrossSignCARefuses(t *testing.T) {
	t.Parallel()
	custom := generated(t)
	tests := []struct {
		name    string
		change  func(t *testing.T, dd string)
		wantErr []string
	}{
		{
			name: "custom CA chain with a single key",
			change: func(t *testing.T, dd string) {
				for _, c := range certs.CAs {
					for _, f := range []string{c.CertFile, c.KeyFile} {
						copyFile(t, filepath.Join(custom, f), datadir.Layout{Root: dd}.TLS(f))
					}
				}
			},
			wantErr: []string{"server-ca.crt holds a chain of 3 certificates but", "server-ca.key holds a single key", "generate-ca"},
		},
		{
			name: "key does not match",
			change: func(t *testing.T, dd string) {
				l := datadir.Layout{Root: dd}
				copyFile(t, l.TLS("client-ca.key"), l.TLS("server-ca.key"))
			},
			wantErr: []string{"key 1 of", "server-ca.key does not match certificate 1 of", "server-ca.crt"},
		},
		{
			name: "missing CA",
			change: func(t *testing.T, dd string) {
				os.Remove(datadir.Layout{Root: dd}.TLS("etcd/peer-ca.crt"))
			},
			wantErr: []string{"etcd/peer-ca.crt does not exist"},
		},
		{
			name: "missing agent token",
			change: func(t *testing.T, dd string) {
				os.Remove(datadir.Layout{Root: dd}.AgentTokenFile())
			},
			wantErr: []string{"agent-token does not exist"},
		},
		{
			name: "corrupt token",
			change: func(t *testing.T, dd string) {
				writeFile(t, datadir.Layout{Root: dd}.TokenFile(), []byte("K10abc::server:x\n"))
			},
			wantErr: []string{"invalid token CA hash length"},
		},
		{
			name: "missing service.key",
			change: func(t *testing.T, dd string) {
				os.Remove(datadir.Layout{Root: dd}.TLS(certs.ServiceKeyFile))
			},
			wantErr: []string{"service.key does not exist"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dd := selfSignedDataDir(t)
			tc.change(t, dd)
			before := snapshot(t, dd)
			_, err := CrossSignCA(dd, clock.Real{}, io.Discard)
			if err == nil {
				t.Fatal("CrossSignCA succeeded, want an error")
			}
			for _, s := range tc.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			if strings.Contains(err.Error(), serverPassword) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one clean line without secrets: %q", err)
			}
			sameSnapshot(t, before, snapshot(t, dd))
		})
	}
}

func TestGenerateServiceKey(t *testing.T) {
	t.Parallel()
	dd := selfSignedDataDir(t)
	l := datadir.Layout{Root: dd}
	old := parseKeysFile(t, l.TLS(certs.ServiceKeyFile))
	liveBefore := snapshot(t, l.TLS())
	stage := filepath.Join(t.TempDir(), "opt", "kpki", "server")
	var out bytes.Buffer
	dst, err := GenerateServiceKey(dd, stage, clock.Real{}, &out)
	if err != nil {
		t.Fatalf("GenerateServiceKey: %v", err)
	}
	if want := filepath.Join(stage, "tls", "service.key"); dst != want {
		t.Errorf("wrote %s, want %s", dst, want)
	}
	first := checkServiceKey(t, dst, old)
	checkModes(t, stage)
	sameSnapshot(t, liveBefore, snapshot(t, l.TLS()))
	if !strings.Contains(out.String(), "kpki certificate rotate-ca --path="+stage) {
		t.Errorf("output does not give the rotate-ca command:\n%s", out.String())
	}

	// Again: the staged file is replaced, the live keys still follow a new key.
	out.Reset()
	if _, err := GenerateServiceKey(dd, stage, clock.Real{}, &out); err != nil {
		t.Fatal(err)
	}
	again := checkServiceKey(t, dst, old)
	if samePublicKey(first, again) {
		t.Error("the second run did not make a new key")
	}
	if !strings.Contains(out.String(), "Replacing the earlier") {
		t.Errorf("output does not say the staged file is replaced:\n%s", out.String())
	}

	t.Run("refuses the live dir", func(t *testing.T) {
		before := snapshot(t, dd)
		_, err := GenerateServiceKey(dd, l.Server(), clock.Real{}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "is the live service-account key file") {
			t.Errorf("error %v, want a refusal to write the live file", err)
		}
		sameSnapshot(t, before, snapshot(t, dd))
	})
	t.Run("no current key", func(t *testing.T) {
		empty := t.TempDir()
		stage := filepath.Join(t.TempDir(), "stage")
		_, err := GenerateServiceKey(empty, stage, clock.Real{}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "service.key does not exist") {
			t.Errorf("error %v, want a missing current key", err)
		}
		if datadir.Exists(stage) {
			t.Error("the staging dir was created")
		}
	})
}
