// Package node owns a node's identity as kpki sees it: its name, a lower-case DNS name
// that defaults to the hostname, and its IP addresses. Servers and agents validate
// their own flags with it, and the supervisor validates what nodes claim.
package node

import (
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
)

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName reports whether n is a lower-case DNS name.
func ValidName(n string) bool {
	if n == "" || len(n) > 253 {
		return false
	}
	for _, l := range strings.Split(n, ".") {
		if !dnsLabel.MatchString(l) {
			return false
		}
	}
	return true
}

// Name returns the node name for a --node-name value: lower-cased, the hostname when
// empty, and checked.
func Name(given string) (string, error) {
	n := strings.ToLower(strings.TrimSpace(given))
	if n == "" {
		h, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("cannot read the hostname for the node name: %v; set --node-name", err)
		}
		n = strings.ToLower(h)
	}
	if !ValidName(n) {
		return "", fmt.Errorf("node name %q is not a valid DNS name (lower-case letters, digits, '-' and '.'); set --node-name", n)
	}
	return n, nil
}

// ParseIPs parses --node-ip values, each possibly a comma list.
func ParseIPs(values []string) ([]net.IP, error) {
	var ips []net.IP
	var bad []string
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			part = strings.TrimSpace(part)
			ip := net.ParseIP(part)
			if ip == nil {
				bad = append(bad, fmt.Sprintf("%q", part))
				continue
			}
			ips = append(ips, ip)
		}
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("--node-ip %s is not an IP address", strings.Join(bad, ", "))
	}
	return ips, nil
}
