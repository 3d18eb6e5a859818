package server

import (
	"strings"
	"testing"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/rotation"
)

func TestDecideLiveRestartsEtcdOnlyForItsCAs(t *testing.T) {
	etcdServer, etcdPeer := certs.CA(certs.ETCDServerCA).CertFile, certs.CA(certs.ETCDPeerCA).CertFile
	running := map[string][]byte{etcdServer: []byte("a"), etcdPeer: []byte("b")}
	for _, tc := range []struct {
		name     string
		embedded bool
		onDisk   map[string][]byte
		want     bool
	}{
		{"same etcd CAs", true, map[string][]byte{etcdServer: []byte("a"), etcdPeer: []byte("b")}, false},
		{"etcd server CA changed", true, map[string][]byte{etcdServer: []byte("A"), etcdPeer: []byte("b")}, true},
		{"etcd peer CA changed", true, map[string][]byte{etcdServer: []byte("a"), etcdPeer: []byte("B")}, true},
		{"external datastore, etcd CAs changed", false, map[string][]byte{etcdServer: []byte("A"), etcdPeer: []byte("B")}, false},
		{"other CAs only", true, map[string][]byte{etcdServer: []byte("a"), etcdPeer: []byte("b"), certs.CA(certs.ServerCA).CertFile: []byte("x")}, false},
	} {
		cont := rotation.Continuity{Changed: []certs.CAID{certs.ServerCA, certs.ETCDServerCA}}
		if d := decideLive(cont, tc.embedded, running, tc.onDisk); d.restartEtcd != tc.want {
			t.Errorf("%s: restart etcd %v, want %v", tc.name, d.restartEtcd, tc.want)
		}
	}
}

func TestDecideLiveDisruption(t *testing.T) {
	if d := decideLive(rotation.Continuity{Changed: []certs.CAID{certs.ServerCA}}, true, nil, nil); d.disruptive {
		t.Error("a continuous rotation is called disruptive")
	}
	c := rotation.Continuity{Changed: []certs.CAID{certs.ServerCA}, Broken: []certs.CAID{certs.ServerCA}, TokensChange: true, NewCAHash: "abc"}
	if d := decideLive(c, false, nil, nil); !d.disruptive {
		t.Error("a new server root is not called disruptive")
	}
	advice := disruptionAdvice(c)
	for _, want := range []string{"re-join", "new agent token", "abc"} {
		if !strings.Contains(advice, want) {
			t.Errorf("advice %q lacks %q", advice, want)
		}
	}
	if a := disruptionAdvice(rotation.Continuity{ServiceKey: true, ServiceKeyBroken: true}); !strings.Contains(a, "service-account tokens") {
		t.Errorf("advice for a service key that drops the current one: %q", a)
	}
}
