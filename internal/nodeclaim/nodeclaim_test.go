package nodeclaim

import (
	"errors"
	"net"
	"strings"
	"testing"
)

// cluster is two servers as they register themselves: one on 10.0.0.1 with an extra node
// IP, --tls-san entries (a DNS name, a wildcard and an IP), the other on 127.0.0.2.
var cluster = []Server{
	{NodeName: "server-1", NodeIPs: []string{"10.0.0.1", "fd00::1"}, AdvertiseAddress: "10.0.0.1",
		TLSSANs:     []string{"api.example.com", "*.lb.example.com", "192.168.5.5", "API.Example.ORG."},
		ServiceCIDR: "10.43.0.0/16,fd00:43::/112", ClusterDomain: "cluster.local"},
	{NodeName: "server-2", NodeIPs: []string{"127.0.0.2"}, AdvertiseAddress: "172.16.0.2",
		ServiceCIDR: "10.43.0.0/16", ClusterDomain: "k8s.internal"},
}

func ips(s ...string) []net.IP {
	var out []net.IP
	for _, v := range s {
		ip := net.ParseIP(v)
		if ip == nil {
			panic("bad test IP " + v)
		}
		out = append(out, ip)
	}
	return out
}

func TestCheck(t *testing.T) {
	cases := []struct {
		name   string
		node   string
		ips    []net.IP
		reason string // "" when allowed; else a part of the error
	}{
		{"good agent claim", "worker-1", ips("10.0.0.50", "fd00::50"), ""},
		{"agent on loopback", "worker-2", ips("127.0.0.9"), ""},
		{"no IPs", "worker-3", nil, ""},
		{"name with kubernetes inside", "my-kubernetes-node", ips("10.0.0.51"), ""},
		{"name under another domain", "node.lb.example.com.other", nil, ""},
		{"deeper than a wildcard", "a.b.lb.example.com", nil, ""},

		{"server's node IP", "worker-1", ips("10.0.0.50", "fd00::1"), "node IP fd00::1 is the node IP of server server-1"},
		{"server's advertise address", "worker-1", ips("172.16.0.2"), "advertise address of server server-2"},
		{"server's loopback node IP", "worker-1", ips("127.0.0.2"), "node IP of server server-2"},
		{"IPv4-mapped server IP", "worker-1", ips("::ffff:10.0.0.1"), "node IP 10.0.0.1 is the advertise address of server server-1"},
		{"server's --tls-san IP", "worker-1", ips("192.168.5.5"), "--tls-san of server server-1"},
		{"server's node name", "server-2", nil, "node name server-2 is the node name of server server-2"},
		{"server's --tls-san name", "api.example.com", nil, "--tls-san api.example.com of server server-1"},
		{"server's --tls-san name, case and dot", "api.example.org", nil, "--tls-san api.example.org of server server-1"},
		{"name under a wildcard --tls-san", "x.lb.example.com", nil, "--tls-san *.lb.example.com of server server-1"},
		{"node name that is a server's IP", "10.0.0.1", nil, "node name 10.0.0.1 is the advertise address of server server-1"},
		{"node name in the service CIDR", "10.43.0.10", nil, "service CIDR 10.43.0.0/16"},

		{"kubernetes API service IP", "worker-1", ips("10.43.0.1"), "node IP 10.43.0.1 is in the service CIDR 10.43.0.0/16"},
		{"service CIDR end", "worker-1", ips("10.43.255.254"), "service CIDR 10.43.0.0/16"},
		{"IPv6 service CIDR", "worker-1", ips("fd00:43::a"), "service CIDR fd00:43::/112"},
		{"0.0.0.0", "worker-1", ips("0.0.0.0"), "node IP 0.0.0.0 is the unspecified address"},
		{"::", "worker-1", ips("::"), "node IP :: is the unspecified address"},
		{"224.0.0.1", "worker-1", ips("224.0.0.1"), "multicast"},
		{"ff02::1", "worker-1", ips("ff02::1"), "multicast"},
		{"169.254.1.1", "worker-1", ips("169.254.1.1"), "node IP 169.254.1.1 is a link-local address"},
		{"fe80::1", "worker-1", ips("fe80::1"), "node IP fe80::1 is a link-local address"},
		{"broadcast", "worker-1", ips("255.255.255.255"), "broadcast"},

		{"kubernetes", "kubernetes", nil, "Kubernetes API service"},
		{"kubernetes.default", "kubernetes.default", nil, "Kubernetes API service"},
		{"kubernetes.default.svc", "kubernetes.default.svc", nil, "Kubernetes API service"},
		{"kubernetes.default.svc.cluster.local", "kubernetes.default.svc.cluster.local", nil, "Kubernetes API service"},
		{"kubernetes.anything", "kubernetes.example.com", nil, "Kubernetes API service"},
		{"service name", "web.prod.svc.cluster.local", nil, "in-cluster service name (under svc.cluster.local)"},
		{"service name of the other server's domain", "web.prod.svc.k8s.internal", nil, "svc.k8s.internal"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Check(cluster, c.node, c.ips)
			if c.reason == "" {
				if err != nil {
					t.Fatalf("Check(%q, %v) = %v, want allowed", c.node, c.ips, err)
				}
				return
			}
			var r *Refused
			if !errors.As(err, &r) {
				t.Fatalf("Check(%q, %v) = %v, want a *Refused naming %q", c.node, c.ips, err, c.reason)
			}
			if !strings.Contains(err.Error(), c.reason) {
				t.Errorf("Check(%q, %v) = %q, want it to contain %q", c.node, c.ips, err, c.reason)
			}
		})
	}
}

// TestCheckWithoutServers shows that the rules no server provides still hold on their own.
func TestCheckWithoutServers(t *testing.T) {
	for _, ip := range []string{"0.0.0.0", "::", "224.0.0.1", "169.254.1.1", "fe80::1"} {
		if err := Check(nil, "worker", ips(ip)); err == nil {
			t.Errorf("%s allowed with no servers registered", ip)
		}
	}
	if err := Check(nil, "kubernetes.default.svc", nil); err == nil {
		t.Error("kubernetes.default.svc allowed with no servers registered")
	}
	if err := Check(nil, "worker", ips("10.43.0.1", "127.0.0.1")); err != nil {
		t.Errorf("with no servers (no service CIDR known) got %v", err)
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{"::ffff:10.0.0.1": "10.0.0.1", "10.0.0.1": "10.0.0.1", "FD00::0001": "fd00::1"} {
		if got := Normalize(net.ParseIP(in)); got != want {
			t.Errorf("Normalize(%s) = %s, want %s", in, got, want)
		}
	}
}
