package server

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestResolveReportsEveryProblemByFlag(t *testing.T) {
	c := Defaults()
	c.DataDir = ""
	c.SupervisorPort = 0
	c.EtcdPeerPort = c.EtcdClientPort
	c.CertValidityDays = 10
	c.RenewBeforeDays = 10
	c.CAWarnDays = -1
	c.NodeName = "Not A DNS Name!"
	c.BindAddress = "nowhere"
	c.AdvertiseAddress = "nope"
	c.ServiceCIDR = "10.43/x"
	c.ClusterDomain = ""
	c.TLSSANs = []string{" "}
	c.DatastoreEndpoint = "etcd:2379"
	c.Token, c.AgentToken = "same-secret", "same-secret"
	_, err := c.resolve()
	if err == nil {
		t.Fatal("resolve accepted a broken configuration")
	}
	for _, want := range []string{"--data-dir must not be empty", "--supervisor-port 0", "--renew-before-days 10", "--ca-warn-days -1",
		"--bind-address \"nowhere\"", "--advertise-address \"nope\"", "--service-cidr", "--cluster-domain must not be empty",
		"--tls-san must not be empty", "--datastore-endpoint \"etcd:2379\"", "--agent-token must differ from --token"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "--etcd-client-port and --etcd-peer-port must differ") {
		t.Error("equal etcd ports refused with an external datastore, which runs no member")
	}
	if strings.Contains(err.Error(), "same-secret") {
		t.Error("the error shows a token password")
	}
}

func TestResolveDerivesAddressesAndSANs(t *testing.T) {
	c := Defaults()
	c.DataDir = "relative/dd"
	c.NodeName = "Node-A"
	c.NodeIPs = []string{"10.0.0.7", "10.0.0.8"}
	c.TLSSANs = []string{"api.example", "10.0.0.7"}
	c.CertValidity, c.RenewBefore = 2*time.Hour, time.Hour
	c.RenewInterval = 0
	r, err := c.resolve()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c.DataDir, "/") || r.nodeName != "node-a" || r.advertise != "10.0.0.7" {
		t.Errorf("data dir %q, node %q, advertise %q", c.DataDir, r.nodeName, r.advertise)
	}
	want := []string{"api.example", "10.0.0.7", "127.0.0.1", "::1", "localhost", "node-a", "10.0.0.8", "10.43.0.1"}
	if !slices.Equal(r.sanList, want) {
		t.Errorf("SANs %v, want %v", r.sanList, want)
	}
	if r.validity != 2*time.Hour || r.renewBefore != time.Hour || c.RenewInterval != time.Hour {
		t.Errorf("validity %s, renew before %s, interval %s", r.validity, r.renewBefore, c.RenewInterval)
	}

	c = Defaults()
	c.BindAddress = "10.1.1.1"
	if r, err = c.resolve(); err != nil || r.advertise != "10.1.1.1" || len(r.nodeIPs) != 1 || r.nodeIPs[0].String() != "10.1.1.1" {
		t.Errorf("advertise from a specific bind address: %+v %v", r, err)
	}
	c = Defaults()
	c.CertValidity, c.RenewBefore = time.Hour, time.Hour
	if _, err := c.resolve(); err == nil || !strings.Contains(err.Error(), "renewal window 1h0m0s must be shorter") {
		t.Errorf("a renewal window as long as the validity: %v", err)
	}
}

func TestResolveRefusesDatastoreFilesKpkiWrites(t *testing.T) {
	dd := t.TempDir()
	tlsDir := filepath.Join(dd, "server", "tls")
	if err := os.MkdirAll(filepath.Join(tlsDir, "etcd"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tlsDir, "etcd", "server-ca.crt"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	// A symlink from outside into kpki's tls dir is refused like the file itself, and a
	// data dir reached through a symlink like the real one.
	if err := os.Symlink(filepath.Join(tlsDir, "etcd", "server-ca.crt"), filepath.Join(outside, "ca.crt")); err != nil {
		t.Fatal(err)
	}
	linkedDD := filepath.Join(outside, "dd-link")
	if err := os.Symlink(dd, linkedDD); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, dataDir, ca, cert, key string
		refused                      []string
	}{
		{"the etcd client leaf kpki issues", dd, "", filepath.Join(tlsDir, "etcd", "client.crt"), filepath.Join(tlsDir, "etcd", "client.key"),
			[]string{"--datastore-certfile", "--datastore-keyfile"}},
		{"a symlink into the tls dir", dd, filepath.Join(outside, "ca.crt"), "", "", []string{"--datastore-cafile"}},
		{"a file not yet written, under cred", dd, filepath.Join(dd, "server", "cred", "etcd-ca.crt"), "", "", []string{"--datastore-cafile"}},
		{"the data dir through a symlink", linkedDD, "", filepath.Join(dd, "server", "tls", "client.crt"), filepath.Join(dd, "server", "tls", "client.key"),
			[]string{"--datastore-certfile", "--datastore-keyfile"}},
		{"the operator's files", dd, filepath.Join(outside, "etcd-ca.crt"), filepath.Join(outside, "client.crt"), filepath.Join(dd, "etcd-client.key"), nil},
		{"a name that only starts like the tls dir", dd, tlsDir + "-etcd/ca.crt", "", "", nil},
	} {
		c := Defaults()
		c.DataDir = tc.dataDir
		c.DatastoreEndpoint = "https://127.0.0.1:2379"
		c.DatastoreCAFile, c.DatastoreCertFile, c.DatastoreKeyFile = tc.ca, tc.cert, tc.key
		_, err := c.resolve()
		if len(tc.refused) == 0 {
			if err != nil {
				t.Errorf("%s: refused: %v", tc.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		for _, flag := range []string{"--datastore-cafile", "--datastore-certfile", "--datastore-keyfile"} {
			if got, want := strings.Contains(err.Error(), flag+" "), slices.Contains(tc.refused, flag); got != want {
				t.Errorf("%s: %s named in the error: %v, want %v:\n%v", tc.name, flag, got, want, err)
			}
		}
		if !strings.Contains(err.Error(), "kpki rewrites") {
			t.Errorf("%s: the error does not say why: %v", tc.name, err)
		}
	}
	if entries, err := os.ReadDir(filepath.Join(tlsDir, "etcd")); err != nil || len(entries) != 1 {
		t.Errorf("the tls dir changed: %v %v", entries, err)
	}
}
