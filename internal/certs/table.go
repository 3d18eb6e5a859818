// Package certs holds THE table of every certificate a kpki cluster needs — CAs and
// leaves, with service name, files, signer, subject, SANs and usages — and the planner
// that compares one table row with what exists and decides whether to keep, renew or
// issue it. Start-up issuance, renewal, `certificate rotate --service`, `certificate
// check` and metrics all read this table; adding a certificate is adding one row.
// The package does no I/O.
package certs

import (
	"crypto/x509"
	"fmt"
	"net"
	"sort"
	"strings"

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

// CASpec describes one CA's files (relative to the server tls dir).
type CASpec struct {
	ID       CAID
	CertFile string
	KeyFile  string
	// CommonName prefix of a generated self-signed CA; "@<unix seconds>" follows.
	CNPrefix string
	// NoChainFile, when set, gets a copy of the first certificate of CertFile.
	NoChainFile string
}

// CAs is every cluster CA, in the order they are created and reported.
var CAs = []CASpec{
	{ID: ServerCA, CertFile: "server-ca.crt", KeyFile: "server-ca.key", CNPrefix: "kpki-server-ca", NoChainFile: "server-ca.nochain.crt"},
	{ID: ClientCA, CertFile: "client-ca.crt", KeyFile: "client-ca.key", CNPrefix: "kpki-client-ca", NoChainFile: "client-ca.nochain.crt"},
	{ID: RequestHeaderCA, CertFile: "request-header-ca.crt", KeyFile: "request-header-ca.key", CNPrefix: "kpki-request-header-ca"},
	{ID: ETCDServerCA, CertFile: "etcd/server-ca.crt", KeyFile: "etcd/server-ca.key", CNPrefix: "kpki-etcd-server-ca"},
	{ID: ETCDPeerCA, CertFile: "etcd/peer-ca.crt", KeyFile: "etcd/peer-ca.key", CNPrefix: "kpki-etcd-peer-ca"},
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

// NodeCAFiles lists the CA certificate files a node of kind n keeps, relative to its tls
// dir, in table order: on a server every CA's file and its nochain copy; on an agent
// the copies, under the same names, of the CAs that sign agent leaves (the server CA
// and the client CA).
func NodeCAFiles(n Node) []string {
	signs := map[CAID]bool{}
	for _, l := range Leaves {
		if l.Node == n {
			signs[l.Signer] = true
		}
	}
	var out []string
	for _, c := range CAs {
		if n == ServerNode {
			out = append(out, c.CertFile)
			if c.NoChainFile != "" {
				out = append(out, c.NoChainFile)
			}
		} else if signs[c.ID] {
			out = append(out, c.CertFile)
		}
	}
	return out
}

// ServiceKeyFile and ServiceCurrentKeyFile are the service-account key files.
const (
	ServiceKeyFile        = "service.key"
	ServiceCurrentKeyFile = "service.current.key"
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
