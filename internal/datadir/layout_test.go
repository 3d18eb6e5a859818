package datadir

import "testing"

func TestLayout(t *testing.T) {
	l := Layout{Root: "/var/lib/kpki"}
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"Server()", l.Server(), "/var/lib/kpki/server"},
		{"Server(a, b)", l.Server("a", "b"), "/var/lib/kpki/server/a/b"},
		{"TLS()", l.TLS(), "/var/lib/kpki/server/tls"},
		{"TLS(server-ca.crt)", l.TLS("server-ca.crt"), "/var/lib/kpki/server/tls/server-ca.crt"},
		{"TLS(etcd/peer-ca.key)", l.TLS("etcd/peer-ca.key"), "/var/lib/kpki/server/tls/etcd/peer-ca.key"},
		{"TLS(etcd, peer-ca.key)", l.TLS("etcd", "peer-ca.key"), "/var/lib/kpki/server/tls/etcd/peer-ca.key"},
		{"Cred()", l.Cred(), "/var/lib/kpki/server/cred"},
		{"Cred(admin.kubeconfig)", l.Cred("admin.kubeconfig"), "/var/lib/kpki/server/cred/admin.kubeconfig"},
		{"Agent()", l.Agent(), "/var/lib/kpki/agent"},
		{"Agent(client-kubelet.crt)", l.Agent("client-kubelet.crt"), "/var/lib/kpki/agent/client-kubelet.crt"},
		{"TokenFile", l.TokenFile(), "/var/lib/kpki/server/token"},
		{"AgentTokenFile", l.AgentTokenFile(), "/var/lib/kpki/server/agent-token"},
		{"NodeTokenFile", l.NodeTokenFile(), "/var/lib/kpki/server/node-token"},
		{"PasswdFile", l.PasswdFile(), "/var/lib/kpki/server/cred/passwd"},
		{"LockFile", l.LockFile(), "/var/lib/kpki/server/kpki.lock"},
		{"AuditLog", l.AuditLog(), "/var/lib/kpki/server/audit.log"},
		{"EtcdDir", l.EtcdDir(), "/var/lib/kpki/server/db/etcd"},
		{"LogDir", l.LogDir(), "/var/lib/kpki/server/logs"},
		{"ForceRestart", l.ForceRestart(), "/var/lib/kpki/force-restart"},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s = %q, want %q", tc.name, tc.got, tc.want)
		}
	}

	rel := Layout{Root: "data/"}
	if got, want := rel.TLS("server-ca.crt"), "data/server/tls/server-ca.crt"; got != want {
		t.Errorf("relative root: TLS = %q, want %q", got, want)
	}
	if got, want := (Layout{Root: "/dd"}).Agent("..", "x"), "/dd/x"; got != want {
		t.Errorf("Agent(.., x) = %q, want cleaned %q", got, want)
	}
}
