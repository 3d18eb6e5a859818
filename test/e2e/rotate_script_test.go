package e2e

import (
	"crypto/rsa"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// checkStagedRotation checks what a cross-signing tool (testdata/rotate-default-ca.sh or
// `kpki certificate cross-sign-ca`), whose output is out, staged in <dd>/server/rotate-ca,
// beyond the certificate chains rotateCrossSigned checks: the output gives the rotate-ca
// command; service.key holds a new RSA-2048 PKCS#1 key followed by every key of the
// current service.key, in order; the new roots are named apart from the current ones.
func checkStagedRotation(t *testing.T, dd, name, out string) {
	t.Helper()
	stage := filepath.Join(dd, "server", "rotate-ca")
	if want := "certificate rotate-ca --path=" + stage; !strings.Contains(out, want) {
		t.Errorf("%s: the output does not give the command %q:\n%s", name, want, out)
	}
	current := readKeys(t, filepath.Join(dd, "server", "tls", "service.key"))
	staged := readKeys(t, filepath.Join(stage, "tls", "service.key"))
	if len(staged) != len(current)+1 {
		t.Fatalf("%s: staged service.key holds %d keys, want a new one and the %d current ones", name, len(staged), len(current))
	}
	if k, ok := staged[0].signer.(*rsa.PrivateKey); !ok || k.N.BitLen() != 2048 || staged[0].pemType != "RSA PRIVATE KEY" {
		t.Errorf("%s: the first key of the staged service.key is not an RSA-2048 PKCS#1 key (%s)", name, staged[0].pemType)
	}
	for i, c := range current {
		if keyMatches(staged[0].signer.Public(), c.signer) {
			t.Errorf("%s: the new service-account key is current key %d", name, i+1)
		}
		if !keyMatches(staged[i+1].signer.Public(), c.signer) {
			t.Errorf("%s: staged service.key key %d is not current key %d", name, i+2, i+1)
		}
	}
	for _, ca := range caFiles {
		live := readCerts(t, filepath.Join(dd, "server", "tls", ca+".crt"))
		bundle := readCerts(t, filepath.Join(stage, "tls", ca+".crt"))
		if len(bundle) < 2 {
			continue // rotateCrossSigned reports the shape
		}
		for _, c := range live {
			if selfSigned(c) && c.Subject.String() == bundle[1].Subject.String() {
				t.Errorf("%s: %s: the new root is named %s like a current root", name, ca, c.Subject)
			}
		}
	}
}

// stagedFileExists reports whether <dd>/server/rotate-ca/tls/rel exists.
func stagedFileExists(t *testing.T, dd, rel string) bool {
	t.Helper()
	_, err := os.Stat(filepath.Join(dd, "server", "rotate-ca", "tls", rel))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return err == nil
}
