package bench

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/load"
)

// TestCFSSLScenario signs through a real cfssl serve and checks that what the scenario
// counted as signed is: the kpki-load answer check sees a certificate of cfssl's CA.
func TestCFSSLScenario(t *testing.T) {
	bin, err := exec.LookPath("cfssl")
	if err != nil {
		t.Skip("cfssl is not installed")
	}
	dir := t.TempDir()
	cf, err := startCFSSL(context.Background(), dir, bin)
	if err != nil {
		t.Fatal(err)
	}
	defer cf.kill()
	rep, err := load.Run(context.Background(), load.Config{CFSSL: cf.url, Requests: 20, Concurrency: 4,
		Duration: time.Minute, Scenarios: []load.Scenario{load.CFSSL}, KeepAlive: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res := rep.Results[0]; res.OK != 20 || len(res.Errors) != 0 {
		t.Fatalf("cfssl: %d ok, errors %v %v", res.OK, res.Errors, res.FirstErrors)
	}

	// The same check fails against a server that does not sign.
	caPEM, err := os.ReadFile(filepath.Join(dir, "cfssl", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := pem.Decode(caPEM); b == nil {
		t.Fatal("no CA written")
	} else if _, err := x509.ParseCertificate(b.Bytes); err != nil {
		t.Fatal(err)
	}
	cf.kill()
	rep, err = load.Run(context.Background(), load.Config{CFSSL: cf.url, Requests: 3, Concurrency: 1,
		Duration: time.Minute, Scenarios: []load.Scenario{load.CFSSL}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res := rep.Results[0]; res.OK != 0 || res.Errors["transport"] != 3 {
		t.Errorf("stopped cfssl: %d ok, errors %v", res.OK, res.Errors)
	}
}
