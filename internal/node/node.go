// Package node owns a node's identity as kpki sees it: its name, a lower-case DNS name
// that defaults to the hostname, and its IP addresses. Servers and agents validate
// their own flags with it, and the supervisor validates what nodes claim.
package node

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// ValidName reports whether n is a lower-case DNS name: labels of 1 to 63 characters
// out of a-z, 0-9 and '-', neither starting nor ending with '-', joined by dots, at
// most 253 characters in all. It runs for every signing request, so it is a loop over
// the bytes rather than a regular expression.
func ValidName(n string) bool {
	if n == "" || len(n) > 253 {
		return false
	}
	start := 0
	for i := 0; i <= len(n); i++ {
		if i < len(n) && n[i] != '.' {
			c := n[i]
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
				return false
			}
			continue
		}
		label := n[start:i]
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		start = i + 1
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
