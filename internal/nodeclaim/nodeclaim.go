// Package nodeclaim decides what a node may claim when it asks the supervisor for a
// certificate: its node name (the kubelet's user system:node:<name> and a DNS name of
// its serving certificate) and its node IPs (IP names of that certificate). A node may not
// claim what belongs to the cluster's servers (their node names, node IPs, advertise
// addresses and --tls-san entries), the cluster's service addresses and names, or
// addresses that no single host owns. It holds no I/O: the servers are handed in.
package nodeclaim

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Server is what one server of the cluster owns. Each server registers its own at
// start-up; the JSON form is the datastore record.
type Server struct {
	NodeName         string   `json:"node-name"`
	NodeIPs          []string `json:"node-ips"`
	AdvertiseAddress string   `json:"advertise-address"`
	TLSSANs          []string `json:"tls-sans"`
	// ServiceCIDR is the server's --service-cidr, possibly a comma list (dual stack).
	ServiceCIDR   string `json:"service-cidr,omitempty"`
	ClusterDomain string `json:"cluster-domain,omitempty"`
}

// Refused is the error of a claim a node may not make.
type Refused struct {
	// Claim is the refused node name or IP address.
	Claim string
	// Reason says whose it is or why no node may have it.
	Reason string
}

func (e *Refused) Error() string { return e.Claim + " " + e.Reason }

// Check returns nil when a node may claim the node name name and the IP addresses ips,
// and a *Refused for the first claim it may not make. name must already be a valid
// lower-case DNS name; a name that reads as an IP address is also checked as one, since
// it becomes an IP name of the node's serving certificate.
func Check(servers []Server, name string, ips []net.IP) error {
	if err := checkName(servers, name); err != nil {
		return err
	}
	if ip, err := netip.ParseAddr(name); err == nil {
		if err := checkIP(servers, ip, "node name"); err != nil {
			return err
		}
	}
	for _, raw := range ips {
		ip, ok := netip.AddrFromSlice(raw)
		if !ok {
			return &Refused{Claim: "node IP " + raw.String(), Reason: "is not an IP address"}
		}
		if err := checkIP(servers, ip, "node IP"); err != nil {
			return err
		}
	}
	return nil
}

func checkName(servers []Server, name string) error {
	name = canonicalName(name)
	refuse := func(format string, a ...any) error {
		return &Refused{Claim: "node name " + name, Reason: fmt.Sprintf(format, a...)}
	}
	if name == "kubernetes" || strings.HasPrefix(name, "kubernetes.") {
		return refuse("is a name of the Kubernetes API service (kubernetes, kubernetes.default, kubernetes.default.svc[.<cluster-domain>])")
	}
	for _, s := range servers {
		if d := canonicalName(s.ClusterDomain); d != "" && strings.HasSuffix(name, ".svc."+d) {
			return refuse("is an in-cluster service name (under svc.%s)", d)
		}
	}
	for _, s := range servers {
		if canonicalName(s.NodeName) == name {
			return refuse("is the node name of server %s", s.NodeName)
		}
		for _, san := range s.TLSSANs {
			if _, err := netip.ParseAddr(strings.TrimSpace(san)); err == nil {
				continue
			}
			if san = canonicalName(san); san == "" {
				continue
			}
			if san == name || (strings.HasPrefix(san, "*.") && wildcardMatch(san[2:], name)) {
				return refuse("is the --tls-san %s of server %s", san, s.NodeName)
			}
		}
	}
	return nil
}

// wildcardMatch reports whether name is one label followed by suffix, as a certificate
// name *.<suffix> matches it.
func wildcardMatch(suffix, name string) bool {
	label, rest, ok := strings.Cut(name, ".")
	return ok && label != "" && rest == suffix
}

func canonicalName(n string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(n)), ".")
}

var broadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

func checkIP(servers []Server, ip netip.Addr, what string) error {
	ip = ip.Unmap()
	refuse := func(format string, a ...any) error {
		return &Refused{Claim: what + " " + ip.String(), Reason: fmt.Sprintf(format, a...)}
	}
	switch {
	case ip.IsUnspecified():
		return refuse("is the unspecified address; it names no host")
	case ip.IsMulticast():
		return refuse("is a multicast address; it names no single host")
	case ip.IsLinkLocalUnicast():
		return refuse("is a link-local address (169.254.0.0/16, fe80::/10); it is not unique in the cluster")
	case ip == broadcast:
		return refuse("is the broadcast address; it names no single host")
	}
	for _, s := range servers {
		for _, cidr := range strings.Split(s.ServiceCIDR, ",") {
			p, err := netip.ParsePrefix(strings.TrimSpace(cidr))
			if err == nil && p.Masked().Contains(ip) {
				return refuse("is in the service CIDR %s (cluster service addresses; the first one is the Kubernetes API)", p.Masked())
			}
		}
	}
	for _, s := range servers {
		owned := []struct{ kind, addr string }{{"advertise address", s.AdvertiseAddress}}
		for _, a := range s.NodeIPs {
			owned = append(owned, struct{ kind, addr string }{"node IP", a})
		}
		for _, a := range s.TLSSANs {
			owned = append(owned, struct{ kind, addr string }{"--tls-san", a})
		}
		for _, o := range owned {
			a, err := netip.ParseAddr(strings.TrimSpace(o.addr))
			if err == nil && a.Unmap() == ip {
				return refuse("is the %s of server %s", o.kind, s.NodeName)
			}
		}
	}
	return nil
}

// Normalize returns ip in its canonical form for comparisons and datastore keys: an
// IPv4-mapped IPv6 address becomes IPv4.
func Normalize(ip net.IP) string {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return ip.String()
	}
	return a.Unmap().String()
}
