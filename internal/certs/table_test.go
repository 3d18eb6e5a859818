package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"net"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/pki"
)

var (
	eClient       = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	eServer       = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	eServerClient = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
)

// testParams are the node facts used to check every row's profile.
var testParams = Params{
	NodeName:      "node-1",
	NodeIPs:       []net.IP{net.ParseIP("10.0.0.5"), net.ParseIP("fd00::5")},
	ClusterDomain: "example.local",
	SANList:       []string{"kpki.example.com", "192.168.1.10", "127.0.0.1", "::1", "localhost", "node-1", "10.0.0.5", "10.43.0.1"},
}

func kubernetesFour(domain string) []string {
	return []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + domain}
}

// specRow is one leaf of the table in SPEC §2, written down independently of table.go.
type specRow struct {
	service string
	node    Node
	name    string // file name without extension, relative to the node's dir
	signer  string // the signing CA's .crt file, relative to <dd>/server/tls
	cn, o   string // "<node>" stands for the node name; o is "" or one organization
	sans    func(p Params) []string
	eku     []x509.ExtKeyUsage
}

func noSANs(Params) []string    { return nil }
func localSANs(Params) []string { return []string{"localhost", "127.0.0.1", "::1"} }
func sanList(p Params) []string { return p.SANList }
func apiSANs(p Params) []string { return append(kubernetesFour(p.ClusterDomain), p.SANList...) }
func kubeletSANs(p Params) []string {
	out := []string{p.NodeName, "localhost", "127.0.0.1"}
	for _, ip := range p.NodeIPs {
		out = append(out, ip.String())
	}
	return out
}

var specLeaves = []specRow{
	{"admin", ServerNode, "client-admin", "client-ca.crt", "system:admin", "system:masters", noSANs, eClient},
	{"supervisor", ServerNode, "client-supervisor", "client-ca.crt", "system:kpki-supervisor", "system:masters", noSANs, eClient},
	{"controller-manager", ServerNode, "client-controller", "client-ca.crt", "system:kube-controller-manager", "", noSANs, eClient},
	{"controller-manager", ServerNode, "kube-controller-manager/kube-controller-manager", "server-ca.crt", "kube-controller-manager", "", localSANs, eServer},
	{"scheduler", ServerNode, "client-scheduler", "client-ca.crt", "system:kube-scheduler", "", noSANs, eClient},
	{"scheduler", ServerNode, "kube-scheduler/kube-scheduler", "server-ca.crt", "kube-scheduler", "", localSANs, eServer},
	{"api-server", ServerNode, "client-kube-apiserver", "client-ca.crt", "system:apiserver", "system:masters", noSANs, eClient},
	{"api-server", ServerNode, "serving-kube-apiserver", "server-ca.crt", "kube-apiserver", "", apiSANs, eServer},
	{"cloud-controller", ServerNode, "client-kpki-cloud-controller", "client-ca.crt", "kpki-cloud-controller-manager", "", noSANs, eClient},
	{"kube-proxy", ServerNode, "client-kube-proxy", "client-ca.crt", "system:kube-proxy", "", noSANs, eClient},
	{"kpki-controller", ServerNode, "client-kpki-controller", "client-ca.crt", "system:kpki-controller", "", noSANs, eClient},
	{"auth-proxy", ServerNode, "client-auth-proxy", "request-header-ca.crt", "system:auth-proxy", "", noSANs, eClient},
	{"etcd", ServerNode, "etcd/client", "etcd/server-ca.crt", "etcd-client", "", noSANs, eClient},
	{"etcd", ServerNode, "etcd/server-client", "etcd/server-ca.crt", "etcd-server", "", sanList, eServerClient},
	{"etcd", ServerNode, "etcd/peer-server-client", "etcd/peer-ca.crt", "etcd-peer", "", sanList, eServerClient},
	{"kpki-server", ServerNode, "serving-supervisor", "server-ca.crt", "kpki", "kpki", apiSANs, eServer},
	{"kubelet", AgentNode, "client-kubelet", "client-ca.crt", "system:node:<node>", "system:nodes", noSANs, eClient},
	{"kubelet", AgentNode, "serving-kubelet", "server-ca.crt", "<node>", "", kubeletSANs, eServer},
	// SPEC §2 "Other files": the agent dir also holds the kube-proxy and kpki-controller client certs.
	{"kube-proxy", AgentNode, "client-kube-proxy", "client-ca.crt", "system:kube-proxy", "", noSANs, eClient},
	{"kpki-controller", AgentNode, "client-kpki-controller", "client-ca.crt", "system:kpki-controller", "", noSANs, eClient},
}

var specServices = []string{
	"admin", "api-server", "auth-proxy", "cloud-controller", "controller-manager", "etcd",
	"kpki-controller", "kpki-server", "kube-proxy", "kubelet", "scheduler", "supervisor",
}

// splitExpected sorts names into DNS names and IP strings with net.ParseIP.
func splitExpected(names []string) (dns, ips []string) {
	seen := map[string]bool{}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			if !seen["ip:"+ip.String()] {
				seen["ip:"+ip.String()] = true
				ips = append(ips, ip.String())
			}
			continue
		}
		if !seen["dns:"+n] {
			seen["dns:"+n] = true
			dns = append(dns, n)
		}
	}
	return dns, ips
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	sort.Strings(c)
	return c
}

func ipStrings(ips []net.IP) []string {
	var out []string
	for _, ip := range ips {
		out = append(out, ip.String())
	}
	return out
}

func findLeaf(n Node, name string) (Leaf, bool) {
	for _, l := range Leaves {
		if l.Node == n && l.Name == name {
			return l, true
		}
	}
	return Leaf{}, false
}

func TestLeavesMatchSpec(t *testing.T) {
	for _, row := range specLeaves {
		t.Run(row.name+"/"+map[Node]string{ServerNode: "server", AgentNode: "agent"}[row.node], func(t *testing.T) {
			l, ok := findLeaf(row.node, row.name)
			if !ok {
				t.Fatalf("no leaf %q for this node kind in the table", row.name)
			}
			if l.Service != row.service {
				t.Errorf("service %q, want %q", l.Service, row.service)
			}
			if got := CA(l.Signer).CertFile; got != row.signer {
				t.Errorf("signer %q (file %q), want %q", l.Signer, got, row.signer)
			}
			if l.Kind == "" {
				t.Error("empty metrics kind")
			}
			prof := l.Profile(testParams)
			if want := strings.ReplaceAll(row.cn, "<node>", testParams.NodeName); prof.CommonName != want {
				t.Errorf("CN %q, want %q", prof.CommonName, want)
			}
			var wantO []string
			if row.o != "" {
				wantO = []string{row.o}
			}
			if !slices.Equal(prof.Organization, wantO) {
				t.Errorf("O %q, want %q", prof.Organization, wantO)
			}
			if !slices.Equal(sortedUsages(prof.ExtKeyUsage), sortedUsages(row.eku)) {
				t.Errorf("EKU %v, want %v", prof.ExtKeyUsage, row.eku)
			}
			wantDNS, wantIPs := splitExpected(row.sans(testParams))
			if got := sortedCopy(prof.DNSNames); !slices.Equal(got, sortedCopy(wantDNS)) {
				t.Errorf("DNS SANs %q, want %q", prof.DNSNames, wantDNS)
			}
			if got := sortedCopy(ipStrings(prof.IPs)); !slices.Equal(got, sortedCopy(wantIPs)) {
				t.Errorf("IP SANs %q, want %q", ipStrings(prof.IPs), wantIPs)
			}
		})
	}
	if len(Leaves) != len(specLeaves) {
		t.Errorf("table has %d leaves, SPEC §2 has %d", len(Leaves), len(specLeaves))
	}
	seen := map[[2]string]bool{}
	for _, l := range Leaves {
		k := [2]string{map[Node]string{ServerNode: "server", AgentNode: "agent"}[l.Node], l.Name}
		if seen[k] {
			t.Errorf("leaf %v appears twice", k)
		}
		seen[k] = true
	}
}

func sortedUsages(u []x509.ExtKeyUsage) []x509.ExtKeyUsage {
	c := slices.Clone(u)
	slices.Sort(c)
	return c
}

func TestCAsMatchSpec(t *testing.T) {
	tests := []struct {
		id                    CAID
		crt, key, nochain     string
		certField, keyField   string
		cnPrefix              string
		rotate, etcd, onAgent bool
	}{
		{ServerCA, "server-ca.crt", "server-ca.key", "server-ca.nochain.crt", "ServerCA", "ServerCAKey", "kpki-server-ca", true, false, true},
		{ClientCA, "client-ca.crt", "client-ca.key", "client-ca.nochain.crt", "ClientCA", "ClientCAKey", "kpki-client-ca", true, false, true},
		{RequestHeaderCA, "request-header-ca.crt", "request-header-ca.key", "", "RequestHeaderCA", "RequestHeaderCAKey", "kpki-request-header-ca", true, false, false},
		{ETCDServerCA, "etcd/server-ca.crt", "etcd/server-ca.key", "", "ETCDServerCA", "ETCDServerCAKey", "kpki-etcd-server-ca", true, true, false},
		{ETCDPeerCA, "etcd/peer-ca.crt", "etcd/peer-ca.key", "", "ETCDPeerCA", "ETCDPeerCAKey", "kpki-etcd-peer-ca", true, true, false},
	}
	if len(CAs) != len(tests) {
		t.Fatalf("%d CAs, want %d", len(CAs), len(tests))
	}
	for i, tc := range tests {
		if CAs[i].ID != tc.id {
			t.Errorf("CAs[%d] is %q, want %q (creation order)", i, CAs[i].ID, tc.id)
		}
		c := CA(tc.id)
		if c.ID != tc.id || c.CertFile != tc.crt || c.KeyFile != tc.key || c.NoChainFile != tc.nochain || c.CNPrefix != tc.cnPrefix {
			t.Errorf("CA(%q) = %+v, want files %q %q nochain %q CN prefix %q", tc.id, c, tc.crt, tc.key, tc.nochain, tc.cnPrefix)
		}
		if c.CertField != tc.certField || c.KeyField != tc.keyField {
			t.Errorf("CA(%q): record fields %q %q, want %q %q", tc.id, c.CertField, c.KeyField, tc.certField, tc.keyField)
		}
		if c.Rotate != tc.rotate || c.Etcd != tc.etcd || c.Agent != tc.onAgent {
			t.Errorf("CA(%q): rotate %v etcd %v agent %v, want %v %v %v", tc.id, c.Rotate, c.Etcd, c.Agent, tc.rotate, tc.etcd, tc.onAgent)
		}
		// SPEC: generated CAs are P-256, valid 3650 days.
		if c.Key != KeyEC || c.Validity != 3650*24*time.Hour {
			t.Errorf("CA(%q): key %q validity %v, want EC for 3650 days", tc.id, c.Key, c.Validity)
		}
	}
	if ServiceKeyFile != "service.key" || ServiceCurrentKeyFile != "service.current.key" || ServiceKeyField != "ServiceKey" {
		t.Errorf("service key files %q %q field %q", ServiceKeyFile, ServiceCurrentKeyFile, ServiceKeyField)
	}
}

func TestKubeconfigsMatchSpec(t *testing.T) {
	type row struct {
		node       Node
		file, leaf string
	}
	want := []row{
		{ServerNode, "admin.kubeconfig", "client-admin"},
		{ServerNode, "supervisor.kubeconfig", "client-supervisor"},
		{ServerNode, "controller.kubeconfig", "client-controller"},
		{ServerNode, "scheduler.kubeconfig", "client-scheduler"},
		{ServerNode, "api-server.kubeconfig", "client-kube-apiserver"},
		{ServerNode, "cloud-controller.kubeconfig", "client-kpki-cloud-controller"},
		{AgentNode, "kubelet.kubeconfig", "client-kubelet"},
		{AgentNode, "kubeproxy.kubeconfig", "client-kube-proxy"},
		{AgentNode, "kpkicontroller.kubeconfig", "client-kpki-controller"},
	}
	var got []row
	for _, k := range Kubeconfigs {
		got = append(got, row{k.Node, k.File, k.Leaf})
		if k.CA != ServerCA {
			t.Errorf("%s trusts %s, want the server CA", k.File, k.CA)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("kubeconfigs %v, want %v", got, want)
	}
	var agent []string
	for _, k := range NodeKubeconfigs(AgentNode) {
		agent = append(agent, k.File)
	}
	if w := []string{"kubelet.kubeconfig", "kubeproxy.kubeconfig", "kpkicontroller.kubeconfig"}; !slices.Equal(agent, w) {
		t.Errorf("NodeKubeconfigs(AgentNode) = %q, want %q", agent, w)
	}
	if n := len(NodeKubeconfigs(ServerNode)); n != 6 {
		t.Errorf("NodeKubeconfigs(ServerNode) has %d rows, want 6", n)
	}
}

func TestCommonName(t *testing.T) {
	at := time.Date(2026, 1, 15, 10, 20, 30, 999, time.UTC)
	if got, want := CA(ETCDPeerCA).CommonName(at), "kpki-etcd-peer-ca@1768472430"; got != want {
		t.Errorf("CommonName = %q, want %q", got, want)
	}
	if got := StampedName("x", time.Unix(0, 0)); got != "x@0" {
		t.Errorf("StampedName at the epoch = %q", got)
	}
}

func TestKeyTypeNewKey(t *testing.T) {
	iss := pki.NewIssuer(clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), nil)
	k, err := KeyEC.NewKey(iss)
	if err != nil {
		t.Fatal(err)
	}
	if ec, ok := k.(*ecdsa.PrivateKey); !ok || ec.Curve != elliptic.P256() {
		t.Errorf("KeyEC made %T, want a P-256 ECDSA key", k)
	}
	if k, err := KeyType("DSA").NewKey(iss); err == nil || k != nil || !strings.Contains(err.Error(), `"DSA"`) {
		t.Errorf("unknown key type: %v, %v; want an error naming it", k, err)
	}
}

func TestNodeCAFiles(t *testing.T) {
	server := []string{"server-ca.crt", "server-ca.nochain.crt", "client-ca.crt", "client-ca.nochain.crt",
		"request-header-ca.crt", "etcd/server-ca.crt", "etcd/peer-ca.crt"}
	if got := NodeCAFiles(ServerNode); !slices.Equal(got, server) {
		t.Errorf("server CA files %q, want %q", got, server)
	}
	// The agent writes server-ca.crt and client-ca.crt.
	if got, want := NodeCAFiles(AgentNode), []string{"server-ca.crt", "client-ca.crt"}; !slices.Equal(got, want) {
		t.Errorf("agent CA files %q, want %q", got, want)
	}
}

func TestCAUnknownPanics(t *testing.T) {
	defer func() {
		r := recover()
		if r == nil || !strings.Contains(r.(string), "nope-ca") {
			t.Errorf("CA(unknown) recovered %v, want a panic naming it", r)
		}
	}()
	CA("nope-ca")
}

func TestServices(t *testing.T) {
	got := Services()
	if !slices.Equal(got, specServices) {
		t.Errorf("Services() = %q, want %q", got, specServices)
	}
	for _, row := range specLeaves {
		if !slices.Contains(got, row.service) {
			t.Errorf("service %q of SPEC §2 missing", row.service)
		}
	}
}

func TestResolveServices(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		want    []string
		wantErr string
	}{
		{"none", nil, nil, ""},
		{"every name", specServices, specServices, ""},
		{"rke2-server", []string{"rke2-server"}, []string{"kpki-server"}, ""},
		{"k3s-server", []string{"k3s-server"}, []string{"kpki-server"}, ""},
		{"rke2-controller", []string{"rke2-controller"}, []string{"kpki-controller"}, ""},
		{"k3s-controller", []string{"k3s-controller"}, []string{"kpki-controller"}, ""},
		{"seed page example", []string{"admin", "etcd"}, []string{"admin", "etcd"}, ""},
		{"order kept, duplicates and aliases folded", []string{"etcd", "rke2-server", "admin", "kpki-server", "etcd"}, []string{"etcd", "kpki-server", "admin"}, ""},
		{"blanks and spaces", []string{" kubelet ", "", "  "}, []string{"kubelet"}, ""},
		{"unknown", []string{"admin", "kube-apiserver"}, nil, "service kube-apiserver is not recognized"},
		{"unknown, trimmed", []string{" nope "}, nil, "service nope is not recognized"},
		{"case matters", []string{"Admin"}, nil, "service Admin is not recognized"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolveServices(tc.in)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("ResolveServices(%q) = %q, want an error", tc.in, got)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %q does not contain %q", err, tc.wantErr)
				}
				for _, s := range specServices {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not list the valid service %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("ResolveServices(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestSelect(t *testing.T) {
	names := func(ls []Leaf) []string {
		var out []string
		for _, l := range ls {
			out = append(out, l.Name)
		}
		return out
	}
	var allServer []string
	for _, r := range specLeaves {
		if r.node == ServerNode {
			allServer = append(allServer, r.name)
		}
	}
	tests := []struct {
		name     string
		node     Node
		services []string
		want     []string
	}{
		{"server, all", ServerNode, nil, allServer},
		{"agent, all", AgentNode, nil, []string{"client-kubelet", "serving-kubelet", "client-kube-proxy", "client-kpki-controller"}},
		{"server etcd", ServerNode, []string{"etcd"}, []string{"etcd/client", "etcd/server-client", "etcd/peer-server-client"}},
		{"server api-server + admin", ServerNode, []string{"api-server", "admin"}, []string{"client-admin", "client-kube-apiserver", "serving-kube-apiserver"}},
		{"server kpki-server", ServerNode, []string{"kpki-server"}, []string{"serving-supervisor"}},
		{"agent kubelet", AgentNode, []string{"kubelet"}, []string{"client-kubelet", "serving-kubelet"}},
		{"agent kube-proxy", AgentNode, []string{"kube-proxy"}, []string{"client-kube-proxy"}},
		{"server kubelet: none", ServerNode, []string{"kubelet"}, nil},
		{"agent admin: none", AgentNode, []string{"admin"}, nil},
		{"unknown: none", ServerNode, []string{"nope"}, nil},
	}
	for _, tc := range tests {
		got := names(Select(tc.node, tc.services))
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: Select = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestProfileSANSets(t *testing.T) {
	p := Params{
		NodeName:      "worker-7",
		NodeIPs:       []net.IP{net.ParseIP("10.1.2.3"), net.ParseIP("2001:db8::7")},
		ClusterDomain: "cluster.local",
		SANList:       []string{"api.example.com", "10.1.2.3", "127.0.0.1", "::1", "localhost", "worker-7", "10.43.0.1"},
	}
	tests := []struct {
		set     SANSet
		cn      string
		wantCN  string
		wantDNS []string
		wantIPs []string
	}{
		{NoSANs, "system:admin", "system:admin", nil, nil},
		{LocalSANs, "kube-scheduler", "kube-scheduler", []string{"localhost"}, []string{"127.0.0.1", "::1"}},
		{NodeSANs, "etcd-server", "etcd-server", []string{"api.example.com", "localhost", "worker-7"}, []string{"10.1.2.3", "127.0.0.1", "::1", "10.43.0.1"}},
		{APIServerSAN, "kube-apiserver", "kube-apiserver",
			[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "api.example.com", "localhost", "worker-7"},
			[]string{"10.1.2.3", "127.0.0.1", "::1", "10.43.0.1"}},
		{KubeletSANs, "{node}", "worker-7", []string{"worker-7", "localhost"}, []string{"127.0.0.1", "10.1.2.3", "2001:db8::7"}},
	}
	for _, tc := range tests {
		l := Leaf{CN: tc.cn, Org: []string{"o1", "o2"}, SANs: tc.set, Usage: eServerClient}
		prof := l.Profile(p)
		if prof.CommonName != tc.wantCN {
			t.Errorf("set %d: CN %q, want %q", tc.set, prof.CommonName, tc.wantCN)
		}
		if !slices.Equal(prof.Organization, []string{"o1", "o2"}) {
			t.Errorf("set %d: O %q", tc.set, prof.Organization)
		}
		if !slices.Equal(prof.ExtKeyUsage, eServerClient) {
			t.Errorf("set %d: EKU %v", tc.set, prof.ExtKeyUsage)
		}
		if !slices.Equal(prof.DNSNames, tc.wantDNS) {
			t.Errorf("set %d: DNS %q, want %q", tc.set, prof.DNSNames, tc.wantDNS)
		}
		if got := ipStrings(prof.IPs); !slices.Equal(got, tc.wantIPs) {
			t.Errorf("set %d: IPs %q, want %q", tc.set, got, tc.wantIPs)
		}
	}
}

func TestProfileNodeSubstitution(t *testing.T) {
	tests := []struct {
		cn, node, want string
	}{
		{"system:node:{node}", "worker-1", "system:node:worker-1"},
		{"{node}", "worker-1", "worker-1"},
		{"system:admin", "worker-1", "system:admin"},
		{"{node}-{node}", "a", "a-a"},
	}
	for _, tc := range tests {
		if got := (Leaf{CN: tc.cn}).Profile(Params{NodeName: tc.node}).CommonName; got != tc.want {
			t.Errorf("CN %q with node %q = %q, want %q", tc.cn, tc.node, got, tc.want)
		}
	}
	// A node named by an IP gets it once, as an IP SAN.
	prof := Leaf{CN: "{node}", SANs: KubeletSANs}.Profile(Params{NodeName: "10.0.0.9", NodeIPs: []net.IP{net.ParseIP("10.0.0.9")}})
	if !slices.Equal(prof.DNSNames, []string{"localhost"}) || !slices.Equal(ipStrings(prof.IPs), []string{"10.0.0.9", "127.0.0.1"}) {
		t.Errorf("node named by IP: DNS %q IPs %q", prof.DNSNames, ipStrings(prof.IPs))
	}
}

func TestKubernetesNames(t *testing.T) {
	tests := []struct {
		domain string
		want   []string
	}{
		{"cluster.local", []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}},
		{"corp.example", []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.corp.example"}},
	}
	for _, tc := range tests {
		if got := KubernetesNames(tc.domain); !slices.Equal(got, tc.want) {
			t.Errorf("KubernetesNames(%q) = %q, want %q", tc.domain, got, tc.want)
		}
	}
}

func TestSplitSANs(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		wantDNS []string
		wantIPs []string
	}{
		{"nil", nil, nil, nil},
		{"blanks", []string{"", "  ", "\t"}, nil, nil},
		{"mixed, order kept", []string{"b.example", "10.0.0.2", "a.example", "::1", "10.0.0.1"}, []string{"b.example", "a.example"}, []string{"10.0.0.2", "::1", "10.0.0.1"}},
		{"spaces trimmed", []string{" host ", " 10.0.0.1 "}, []string{"host"}, []string{"10.0.0.1"}},
		{"DNS duplicates, case-insensitive, first kept", []string{"Host.Example", "host.example", "HOST.EXAMPLE"}, []string{"Host.Example"}, nil},
		{"IP duplicates in other spellings", []string{"::1", "0:0:0:0:0:0:0:1", "10.0.0.1", "::ffff:10.0.0.1"}, nil, []string{"::1", "10.0.0.1"}},
		{"IPv6", []string{"2001:DB8::1"}, nil, []string{"2001:db8::1"}},
		{"not an IP: leading zeros", []string{"010.0.0.1"}, []string{"010.0.0.1"}, nil},
		{"CIDR is a name, not an IP", []string{"10.43.0.0/16"}, []string{"10.43.0.0/16"}, nil},
		{"wildcard", []string{"*.example.com"}, []string{"*.example.com"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dns, ips := SplitSANs(tc.in)
			if !slices.Equal(dns, tc.wantDNS) {
				t.Errorf("DNS %q, want %q", dns, tc.wantDNS)
			}
			if got := ipStrings(ips); !slices.Equal(got, tc.wantIPs) {
				t.Errorf("IPs %q, want %q", got, tc.wantIPs)
			}
		})
	}
}
