package audit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSerialHexMatchesOpenssl compares SerialHex with what `openssl x509 -noout -serial`
// prints for the same certificate, for serials of odd and even hex length.
func TestSerialHexMatchesOpenssl(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatalf("openssl is required: %v", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	big16, _ := new(big.Int).SetString("0aBcDeF0123456789", 16)
	for _, serial := range []*big.Int{big.NewInt(0x1f), big.NewInt(0xabc), big.NewInt(0x1234), big16} {
		tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "serial"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), "c.pem")
		if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("openssl", "x509", "-noout", "-serial", "-in", f).Output()
		if err != nil {
			t.Fatal(err)
		}
		want := strings.TrimPrefix(strings.TrimSpace(string(out)), "serial=")
		if got := SerialHex(c); got != want {
			t.Errorf("serial %s: SerialHex = %s, openssl prints %s", serial.Text(16), got, want)
		}
	}
}
