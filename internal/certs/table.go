// Package certs holds THE tables of a kpki cluster's PKI: every CA (files, bootstrap
// record fields, generator settings, its role in rotate-ca, etcd and agents), every
// leaf (service name, files, signer, subject, SANs and usages) and every kubeconfig
// (file, client leaf, CA), and the planner that compares one leaf row with what exists
// and decides whether to keep, renew or issue it. Start-up issuance, renewal, the
// bootstrap record, the CA generators, rotate-ca, agents, `certificate rotate
// --service`, `certificate check` and metrics all read these tables; adding a CA, a
// certificate or a kubeconfig is adding one row. The package does no I/O.
package certs

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/pki"
)

// CAID names one of the cluster's certificate authorities.
type CAID string

// The cluster CAs.
const (
	ServerCA        CAID = "server-ca"
	ClientCA        CAID = "client-ca"
	RequestHeaderCA CAID = "request-header-ca"
	ETCDServerCA    CAID = "etcd/server-ca"
	ETCDPeerCA      CAID = "etcd/peer-ca"
)

// KeyType names the kind of key a generated CA gets.
type KeyType string

// Key types.
const (
	// KeyEC is an ECDSA key on the P-256 curve.
	KeyEC KeyType = "EC"
)

// NewKey makes a key of type k with iss.
func (k KeyType) NewKey(iss *pki.Issuer) (crypto.Signer, error) {
	switch k {
	case KeyEC:
		return iss.NewECKey()
	}
	return nil, fmt.Errorf("unknown key type %q", string(k))
}

// CAValidity is the lifetime of a generated cluster CA: 3650 days.
const CAValidity = 3650 * 24 * time.Hour

// CASpec is one row of the CA table: everything the packages that create, store,
// rotate, distribute and check a CA need to know of it.
type CASpec struct {
	ID CAID
	// CertFile and KeyFile are the CA's files, relative to the server tls dir. An agent
	// keeps its copy of CertFile under the same name in its own dir.
	CertFile string
	KeyFile  string
	// CertField and KeyField are the bootstrap record fields (SPEC §6) that hold
	// CertFile and KeyFile.
	CertField string
	KeyField  string

	// CNPrefix is the common-name prefix of a generated CA; "@<unix seconds>" follows
	// (CommonName).
	CNPrefix string
	// Key is the type of key a generated CA gets.
	Key KeyType
	// Validity is the lifetime of a CA made by generate-ca or cross-sign-ca (a server
	// generating its self-signed CAs takes --ca-validity-days).
	Validity time.Duration

	// NoChainFile, when set, gets a copy of the first certificate of CertFile.
	NoChainFile string
	// Rotate marks the CAs whose files `certificate rotate-ca` accepts and checks.
	Rotate bool
	// Etcd marks the CAs of the embedded etcd: a change of one restarts the member.
	Etcd bool
	// Agent marks the CAs an agent keeps a copy of: those that sign agent leaves.
	Agent bool
}

// CAs is every cluster CA, in the order they are created and reported.
var CAs = []CASpec{
	{ID: ServerCA, CertFile: "server-ca.crt", KeyFile: "server-ca.key", CertField: "ServerCA", KeyField: "ServerCAKey",
		CNPrefix: "kpki-server-ca", Key: KeyEC, Validity: CAValidity, NoChainFile: "server-ca.nochain.crt", Rotate: true, Agent: true},
	{ID: ClientCA, CertFile: "client-ca.crt", KeyFile: "client-ca.key", CertField: "ClientCA", KeyField: "ClientCAKey",
		CNPrefix: "kpki-client-ca", Key: KeyEC, Validity: CAValidity, NoChainFile: "client-ca.nochain.crt", Rotate: true, Agent: true},
	{ID: RequestHeaderCA, CertFile: "request-header-ca.crt", KeyFile: "request-header-ca.key", CertField: "RequestHeaderCA", KeyField: "RequestHeaderCAKey",
		CNPrefix: "kpki-request-header-ca", Key: KeyEC, Validity: CAValidity, Rotate: true},
	{ID: ETCDServerCA, CertFile: "etcd/server-ca.crt", KeyFile: "etcd/server-ca.key", CertField: "ETCDServerCA", KeyField: "ETCDServerCAKey",
		CNPrefix: "kpki-etcd-server-ca", Key: KeyEC, Validity: CAValidity, Rotate: true, Etcd: true},
	{ID: ETCDPeerCA, CertFile: "etcd/peer-ca.crt", KeyFile: "etcd/peer-ca.key", CertField: "ETCDPeerCA", KeyField: "ETCDPeerCAKey",
		CNPrefix: "kpki-etcd-peer-ca", Key: KeyEC, Validity: CAValidity, Rotate: true, Etcd: true},
}

// CA returns the spec of id.
func CA(id CAID) CASpec {
	for _, c := range CAs {
		if c.ID == id {
			return c
		}
	}
	panic(fmt.Sprintf("unknown CA %q", id))
}

// StampedName returns "<name>@<unix seconds of at>", the common-name form of every
// CA kpki generates.
func StampedName(name string, at time.Time) string {
	return name + "@" + strconv.FormatInt(at.Unix(), 10)
}

// CommonName is the common name of the CA generated at time at.
func (c CASpec) CommonName(at time.Time) string { return StampedName(c.CNPrefix, at) }

// NodeCAFiles lists the CA certificate files a node of kind n keeps, relative to its tls
// dir, in table order: on a server every CA's file and its nochain copy; on an agent
// the copies, under the same names, of the CAs marked Agent.
func NodeCAFiles(n Node) []string {
	var out []string
	for _, c := range CAs {
		if n == ServerNode {
			out = append(out, c.CertFile)
			if c.NoChainFile != "" {
				out = append(out, c.NoChainFile)
			}
		} else if c.Agent {
			out = append(out, c.CertFile)
		}
	}
	return out
}

// Kubeconfig is one row of the kubeconfig table: a file a node writes that points at
// the local kube-apiserver and authenticates with one of the node's client leaves.
type Kubeconfig struct {
	Node Node
	// File is the file name, in <dd>/server/cred on a server and <dd>/agent on an agent.
	File string
	// Leaf is the Name of the client leaf (of the same Node) it uses.
	Leaf string
	// CA is the CA whose certificate file (on an agent, its copy) it trusts.
	CA CAID
}

// Kubeconfigs is the kubeconfig table.
var Kubeconfigs = []Kubeconfig{
	{Node: ServerNode, File: "admin.kubeconfig", Leaf: "client-admin", CA: ServerCA},
	{Node: ServerNode, File: "supervisor.kubeconfig", Leaf: "client-supervisor", CA: ServerCA},
	{Node: ServerNode, File: "controller.kubeconfig", Leaf: "client-controller", CA: ServerCA},
	{Node: ServerNode, File: "scheduler.kubeconfig", Leaf: "client-scheduler", CA: ServerCA},
	{Node: ServerNode, File: "api-server.kubeconfig", Leaf: "client-kube-apiserver", CA: ServerCA},
	{Node: ServerNode, File: "cloud-controller.kubeconfig", Leaf: "client-kpki-cloud-controller", CA: ServerCA},

	{Node: AgentNode, File: "kubelet.kubeconfig", Leaf: "client-kubelet", CA: ServerCA},
	{Node: AgentNode, File: "kubeproxy.kubeconfig", Leaf: "client-kube-proxy", CA: ServerCA},
	{Node: AgentNode, File: "kpkicontroller.kubeconfig", Leaf: "client-kpki-controller", CA: ServerCA},
}

// NodeKubeconfigs returns the kubeconfigs a node of kind n writes, in table order.
func NodeKubeconfigs(n Node) []Kubeconfig {
	var out []Kubeconfig
	for _, k := range Kubeconfigs {
		if k.Node == n {
			out = append(out, k)
		}
	}
	return out
}

// ServiceKeyFile and ServiceCurrentKeyFile are the service-account key files;
// ServiceKeyField is the bootstrap record field that holds ServiceKeyFile.
const (
	ServiceKeyFile        = "service.key"
	ServiceCurrentKeyFile = "service.current.key"
	ServiceKeyField       = "ServiceKey"
)

// Node says which kind of node holds a leaf.
type Node int

// Node kinds.
const (
	ServerNode Node = iota
	AgentNode
)

// SANSet says which subject alternative names a leaf carries.
type SANSet int

// SAN sets.
const (
	NoSANs       SANSet = iota
	LocalSANs           // localhost, 127.0.0.1, ::1
	NodeSANs            // the server's SAN-LIST
	APIServerSAN        // the kubernetes* names plus SAN-LIST
	KubeletSANs         // node name, localhost, 127.0.0.1, node IPs
)

var (
	client       = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	server       = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	serverClient = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	masters      = []string{"system:masters"}
)

// Leaf is one row of the certificate table.
type Leaf struct {
	// Service is the name given to `certificate rotate --service` and `check --service`.
	Service string
	// Name is the file name without extension, relative to the node's tls dir
	// (<dd>/server/tls for servers, <dd>/agent for agents).
	Name   string
	Node   Node
	Signer CAID
	// CN may hold "{node}", replaced by the node name.
	CN    string
	Org   []string
	SANs  SANSet
	Usage []x509.ExtKeyUsage
	// Kind labels the issued-certificates metric.
	Kind string
}

// Leaves is the certificate table.
var Leaves = []Leaf{
	{Service: "admin", Name: "client-admin", Signer: ClientCA, CN: "system:admin", Org: masters, Usage: client, Kind: "client"},
	{Service: "supervisor", Name: "client-supervisor", Signer: ClientCA, CN: "system:kpki-supervisor", Org: masters, Usage: client, Kind: "client"},
	{Service: "controller-manager", Name: "client-controller", Signer: ClientCA, CN: "system:kube-controller-manager", Usage: client, Kind: "client"},
	{Service: "controller-manager", Name: "kube-controller-manager/kube-controller-manager", Signer: ServerCA, CN: "kube-controller-manager", SANs: LocalSANs, Usage: server, Kind: "serving"},
	{Service: "scheduler", Name: "client-scheduler", Signer: ClientCA, CN: "system:kube-scheduler", Usage: client, Kind: "client"},
	{Service: "scheduler", Name: "kube-scheduler/kube-scheduler", Signer: ServerCA, CN: "kube-scheduler", SANs: LocalSANs, Usage: server, Kind: "serving"},
	{Service: "api-server", Name: "client-kube-apiserver", Signer: ClientCA, CN: "system:apiserver", Org: masters, Usage: client, Kind: "client"},
	{Service: "api-server", Name: "serving-kube-apiserver", Signer: ServerCA, CN: "kube-apiserver", SANs: APIServerSAN, Usage: server, Kind: "serving"},
	{Service: "cloud-controller", Name: "client-kpki-cloud-controller", Signer: ClientCA, CN: "kpki-cloud-controller-manager", Usage: client, Kind: "client"},
	{Service: "kube-proxy", Name: "client-kube-proxy", Signer: ClientCA, CN: "system:kube-proxy", Usage: client, Kind: "client"},
	{Service: "kpki-controller", Name: "client-kpki-controller", Signer: ClientCA, CN: "system:kpki-controller", Usage: client, Kind: "client"},
	{Service: "auth-proxy", Name: "client-auth-proxy", Signer: RequestHeaderCA, CN: "system:auth-proxy", Usage: client, Kind: "client"},
	{Service: "etcd", Name: "etcd/client", Signer: ETCDServerCA, CN: "etcd-client", Usage: client, Kind: "etcd"},
	{Service: "etcd", Name: "etcd/server-client", Signer: ETCDServerCA, CN: "etcd-server", SANs: NodeSANs, Usage: serverClient, Kind: "etcd"},
	{Service: "etcd", Name: "etcd/peer-server-client", Signer: ETCDPeerCA, CN: "etcd-peer", SANs: NodeSANs, Usage: serverClient, Kind: "etcd"},
	{Service: "kpki-server", Name: "serving-supervisor", Signer: ServerCA, CN: "kpki", Org: []string{"kpki"}, SANs: APIServerSAN, Usage: server, Kind: "serving"},

	{Service: "kubelet", Name: "client-kubelet", Node: AgentNode, Signer: ClientCA, CN: "system:node:{node}", Org: []string{"system:nodes"}, Usage: client, Kind: "kubelet"},
	{Service: "kubelet", Name: "serving-kubelet", Node: AgentNode, Signer: ServerCA, CN: "{node}", SANs: KubeletSANs, Usage: server, Kind: "kubelet"},
	{Service: "kube-proxy", Name: "client-kube-proxy", Node: AgentNode, Signer: ClientCA, CN: "system:kube-proxy", Usage: client, Kind: "client"},
	{Service: "kpki-controller", Name: "client-kpki-controller", Node: AgentNode, Signer: ClientCA, CN: "system:kpki-controller", Usage: client, Kind: "client"},
}

// aliases maps names copied from RKE2/K3s docs to kpki service names.
var aliases = map[string]string{
	"rke2-server":     "kpki-server",
	"k3s-server":      "kpki-server",
	"rke2-controller": "kpki-controller",
	"k3s-controller":  "kpki-controller",
}

// Services lists every valid service name, sorted.
func Services() []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range Leaves {
		if !seen[l.Service] {
			seen[l.Service] = true
			out = append(out, l.Service)
		}
	}
	sort.Strings(out)
	return out
}

// ResolveServices turns user-given service names (aliases allowed) into kpki service
// names. An unknown name is an error listing the valid ones.
func ResolveServices(names []string) ([]string, error) {
	valid := map[string]bool{}
	for _, s := range Services() {
		valid[s] = true
	}
	var out []string
	seen := map[string]bool{}
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if a, ok := aliases[n]; ok {
			n = a
		}
		if !valid[n] {
			return nil, fmt.Errorf("service %s is not recognized; valid services: %s", n, strings.Join(Services(), ", "))
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out, nil
}

// Select returns the leaves of node kind n whose service is in services (all of them
// when services is empty).
func Select(n Node, services []string) []Leaf {
	want := map[string]bool{}
	for _, s := range services {
		want[s] = true
	}
	var out []Leaf
	for _, l := range Leaves {
		if l.Node == n && (len(services) == 0 || want[l.Service]) {
			out = append(out, l)
		}
	}
	return out
}

// Params are the node facts a leaf's profile depends on.
type Params struct {
	NodeName      string
	NodeIPs       []net.IP
	ClusterDomain string
	// SANList is the server SAN-LIST (SPEC §2), already deduplicated.
	SANList []string
}

// Profile returns what the leaf must say for this node.
func (l Leaf) Profile(p Params) pki.LeafProfile {
	prof := pki.LeafProfile{
		CommonName:   strings.ReplaceAll(l.CN, "{node}", p.NodeName),
		Organization: l.Org,
		ExtKeyUsage:  l.Usage,
	}
	var names []string
	switch l.SANs {
	case LocalSANs:
		names = []string{"localhost", "127.0.0.1", "::1"}
	case NodeSANs:
		names = p.SANList
	case APIServerSAN:
		names = append(KubernetesNames(p.ClusterDomain), p.SANList...)
	case KubeletSANs:
		names = []string{p.NodeName, "localhost", "127.0.0.1"}
		for _, ip := range p.NodeIPs {
			names = append(names, ip.String())
		}
	}
	prof.DNSNames, prof.IPs = SplitSANs(names)
	return prof
}

// KubernetesNames are the in-cluster DNS names of the API server.
func KubernetesNames(clusterDomain string) []string {
	return []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + clusterDomain}
}

// SplitSANs sorts names into IPs (those that parse as one) and DNS names, dropping
// duplicates and keeping the first-seen order.
func SplitSANs(names []string) (dns []string, ips []net.IP) {
	seen := map[string]bool{}
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if ip := net.ParseIP(n); ip != nil {
			key := "ip:" + ip.String()
			if !seen[key] {
				seen[key] = true
				ips = append(ips, ip)
			}
			continue
		}
		key := "dns:" + strings.ToLower(n)
		if !seen[key] {
			seen[key] = true
			dns = append(dns, n)
		}
	}
	return dns, ips
}
