// Package server runs a kpki server: the start-up sequence (datastore, bootstrap
// reconcile, CAs, leaves, kubeconfigs, tokens), the embedded etcd member, the supervisor
// API, metrics and the background renewer. Decisions about certificates come from
// package certs, crypto from pki, file writes from datadir.
package server

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/node"
	"github.com/kpki/kpki/internal/token"
)

// Config is everything a server is told by flags, env and config file.
type Config struct {
	DataDir          string
	Token            string
	AgentToken       string
	ServerURL        string
	TLSSANs          []string
	NodeName         string
	NodeIPs          []string
	BindAddress      string
	AdvertiseAddress string
	SupervisorPort   int
	EtcdClientPort   int
	EtcdPeerPort     int
	APIServerPort    int

	DatastoreEndpoint string
	DatastoreCAFile   string
	DatastoreCertFile string
	DatastoreKeyFile  string

	ClusterCIDR   string
	ServiceCIDR   string
	ClusterDomain string

	CAValidityDays   int
	CertValidityDays int
	RenewBeforeDays  int
	// CAWarnDays is the CA warning window: a CA whose chain expires within it is
	// logged at start and on every renewal pass and flagged in kpki_ca_expiring.
	CAWarnDays    int
	RenewInterval time.Duration
	// CertValidity and RenewBefore, when set, override the day-based settings with a
	// finer duration; tests use them to watch live renewal happen in seconds.
	CertValidity time.Duration
	RenewBefore  time.Duration

	MetricsAddress  string
	WriteKubeconfig string

	// EtcdUnsafeNoFsync trades durability for speed; for tests only.
	EtcdUnsafeNoFsync bool

	// PprofAddress, when set, serves net/http/pprof there; it must be a loopback address.
	PprofAddress string
}

// Defaults returns the default configuration.
func Defaults() Config {
	return Config{
		DataDir:          datadir.DefaultRoot,
		SupervisorPort:   api.DefaultSupervisorPort,
		EtcdClientPort:   2379,
		EtcdPeerPort:     2380,
		APIServerPort:    6443,
		ServiceCIDR:      "10.43.0.0/16",
		ClusterCIDR:      "10.42.0.0/16",
		ClusterDomain:    "cluster.local",
		CAValidityDays:   3650,
		CertValidityDays: 365,
		RenewBeforeDays:  certs.DefaultRenewBeforeDays,
		CAWarnDays:       certs.DefaultCAWarnDays,
		RenewInterval:    time.Hour,
		MetricsAddress:   "127.0.0.1:9346",
	}
}

// resolved holds the values derived from Config once it is validated.
type resolved struct {
	nodeName    string
	nodeIPs     []net.IP
	bind        string
	advertise   string
	serviceIP   net.IP
	sanList     []string
	caValidity  time.Duration
	validity    time.Duration
	renewBefore time.Duration
	caWarn      time.Duration
	datastore   []string
}

// problems collects every configuration error, so that one start reports them all.
type problems []error

func (p *problems) add(format string, a ...any) { *p = append(*p, fmt.Errorf(format, a...)) }

// resolve validates c and fills in defaults that depend on the machine. Every problem
// is reported, each naming its flag.
func (c *Config) resolve() (*resolved, error) {
	r := &resolved{}
	var bad problems
	c.resolvePaths(&bad)
	c.checkPorts(&bad)
	c.resolveValidity(r, &bad)
	c.resolveNode(r, &bad)
	c.resolveNetwork(r, &bad)
	c.resolveDatastore(r, &bad)
	c.checkTokens(&bad)
	if len(bad) > 0 {
		return nil, errors.Join(bad...)
	}
	r.sanList = r.sans(c.TLSSANs)
	return r, nil
}

// resolvePaths makes the data dir and --write-kubeconfig absolute.
func (c *Config) resolvePaths(bad *problems) {
	if c.DataDir == "" {
		bad.add("--data-dir must not be empty")
	} else if abs, err := filepath.Abs(c.DataDir); err != nil {
		bad.add("--data-dir %s: %v", c.DataDir, err)
	} else {
		c.DataDir = abs
	}
	if c.WriteKubeconfig != "" {
		if abs, err := filepath.Abs(c.WriteKubeconfig); err == nil {
			c.WriteKubeconfig = abs
		}
	}
}

func (c *Config) checkPorts(bad *problems) {
	for name, p := range map[string]int{"--supervisor-port": c.SupervisorPort, "--etcd-client-port": c.EtcdClientPort,
		"--etcd-peer-port": c.EtcdPeerPort, "--api-server-port": c.APIServerPort} {
		if p < 1 || p > 65535 {
			bad.add("%s %d is not a port number (1-65535)", name, p)
		}
	}
	if c.DatastoreEndpoint == "" && c.EtcdClientPort == c.EtcdPeerPort {
		bad.add("--etcd-client-port and --etcd-peer-port must differ")
	}
}

// resolveValidity checks the validity and renewal settings and derives their durations.
func (c *Config) resolveValidity(r *resolved, bad *problems) {
	if c.CAValidityDays < 1 || c.CertValidityDays < 1 {
		bad.add("--ca-validity-days and --cert-validity-days must be at least 1")
	}
	if c.RenewBeforeDays < 0 || c.RenewBeforeDays >= c.CertValidityDays {
		bad.add("--renew-before-days %d must be at least 0 and less than --cert-validity-days %d", c.RenewBeforeDays, c.CertValidityDays)
	}
	if c.CAWarnDays < 0 {
		bad.add("--ca-warn-days %d must be at least 0", c.CAWarnDays)
	}
	r.caWarn = days(c.CAWarnDays)
	if c.RenewInterval <= 0 {
		c.RenewInterval = time.Hour
	}
	r.caValidity = days(c.CAValidityDays)
	r.validity = days(c.CertValidityDays)
	r.renewBefore = days(c.RenewBeforeDays)
	if c.CertValidity <= 0 && c.RenewBefore <= 0 {
		return
	}
	if c.CertValidity > 0 {
		r.validity = c.CertValidity
	}
	if c.RenewBefore > 0 {
		r.renewBefore = c.RenewBefore
	}
	if r.renewBefore >= r.validity {
		bad.add("the renewal window %s must be shorter than the certificate validity %s", r.renewBefore, r.validity)
	}
}

// resolveNode checks the node name and addresses and picks the advertise address: the
// flag, else the first node IP, else a specific bind address, else the machine's.
func (c *Config) resolveNode(r *resolved, bad *problems) {
	if n, err := node.Name(c.NodeName); err != nil {
		bad.add("%v", err)
	} else {
		r.nodeName = n
	}
	if ips, err := node.ParseIPs(c.NodeIPs); err != nil {
		bad.add("%v", err)
	} else {
		r.nodeIPs = ips
	}
	r.bind = c.BindAddress
	if r.bind != "" && net.ParseIP(r.bind) == nil {
		bad.add("--bind-address %q is not an IP address", r.bind)
	}
	r.advertise = c.AdvertiseAddress
	if r.advertise != "" && net.ParseIP(r.advertise) == nil {
		bad.add("--advertise-address %q is not an IP address", r.advertise)
	}
	if r.advertise == "" {
		switch {
		case len(r.nodeIPs) > 0:
			r.advertise = r.nodeIPs[0].String()
		case r.bind != "" && !net.ParseIP(r.bind).IsUnspecified():
			r.advertise = r.bind
		default:
			r.advertise = defaultIP()
		}
	}
	if len(r.nodeIPs) == 0 && net.ParseIP(r.advertise) != nil {
		r.nodeIPs = []net.IP{net.ParseIP(r.advertise)}
	}
}

// resolveNetwork checks the service CIDR (its first address is the kubernetes
// service's IP, a SAN), the cluster domain and --tls-san.
func (c *Config) resolveNetwork(r *resolved, bad *problems) {
	prefix, err := netip.ParsePrefix(strings.Split(c.ServiceCIDR, ",")[0])
	if err != nil {
		bad.add("--service-cidr %q: %v", c.ServiceCIDR, err)
	} else {
		r.serviceIP = net.IP(prefix.Masked().Addr().Next().AsSlice())
	}
	if c.ClusterDomain == "" {
		bad.add("--cluster-domain must not be empty")
	}
	for _, s := range c.TLSSANs {
		if strings.TrimSpace(s) == "" {
			bad.add("--tls-san must not be empty")
		}
	}
}

func (c *Config) resolveDatastore(r *resolved, bad *problems) {
	if c.DatastoreEndpoint == "" {
		return
	}
	for _, e := range strings.Split(c.DatastoreEndpoint, ",") {
		e = strings.TrimSpace(e)
		if !strings.HasPrefix(e, "https://") && !strings.HasPrefix(e, "http://") {
			bad.add("--datastore-endpoint %q must be an http:// or https:// URL", e)
		}
		r.datastore = append(r.datastore, e)
	}
	c.checkDatastoreFiles(bad)
}

// checkDatastoreFiles refuses external datastore TLS files that kpki writes itself: the
// files under the data dir's tls and cred directories are re-issued by renewals and CA
// rotations, so the client of an etcd kpki does not run would end up with certificates
// that etcd was never set up to trust. The external etcd's certificates are the
// operator's; kpki only reads them.
func (c *Config) checkDatastoreFiles(bad *problems) {
	if c.DataDir == "" {
		return
	}
	l := datadir.Layout{Root: c.DataDir}
	owned := []string{resolvedPath(l.TLS()), resolvedPath(l.Cred())}
	for _, f := range []struct{ flag, path string }{
		{"--datastore-cafile", c.DatastoreCAFile}, {"--datastore-certfile", c.DatastoreCertFile}, {"--datastore-keyfile", c.DatastoreKeyFile},
	} {
		if f.path == "" {
			continue
		}
		p := resolvedPath(f.path)
		for _, dir := range owned {
			if within(dir, p) {
				bad.add("%s %s is under %s, whose files kpki rewrites (renewals, CA rotations): give the external etcd's own certificate files, not kpki's", f.flag, f.path, dir)
				break
			}
		}
	}
}

// resolvedPath is p absolute and clean, with the symlinks of its longest existing prefix
// resolved: where a write through p would land.
func resolvedPath(p string) string {
	abs, err := filepath.Abs(p)
	if err != nil {
		return filepath.Clean(p)
	}
	var rest []string
	for dir := abs; ; dir = filepath.Dir(dir) {
		if target, err := filepath.EvalSymlinks(dir); err == nil {
			return filepath.Join(append([]string{target}, rest...)...)
		}
		if filepath.Dir(dir) == dir {
			return abs
		}
		rest = append([]string{filepath.Base(dir)}, rest...)
	}
}

// within reports whether p is dir or below it (both clean and absolute).
func within(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// checkTokens refuses an agent token whose password is the server token's.
func (c *Config) checkTokens(bad *problems) {
	if c.AgentToken == "" || c.Token == "" {
		return
	}
	at, aerr := token.Parse(c.AgentToken)
	st, serr := token.Parse(c.Token)
	if aerr == nil && serr == nil && at.Password == st.Password {
		bad.add("--agent-token must differ from --token: agents hold the agent token, and its password must never authenticate as server")
	}
}

// sans are the names and addresses of the serving certificates: --tls-san, the
// advertise address, loopback, the node name and IPs, the kubernetes service IP.
func (r *resolved) sans(extra []string) []string {
	san := append([]string{}, extra...)
	san = append(san, r.advertise, "127.0.0.1", "::1", "localhost", r.nodeName)
	for _, ip := range r.nodeIPs {
		san = append(san, ip.String())
	}
	if r.serviceIP != nil {
		san = append(san, r.serviceIP.String())
	}
	return dedupe(san)
}

// agentTokenPassword is the password of --agent-token, "" when none was given (New
// refuses one that does not parse).
func (c *Config) agentTokenPassword() string {
	if c.AgentToken == "" {
		return ""
	}
	t, err := token.Parse(c.AgentToken)
	if err != nil {
		return ""
	}
	return t.Password
}

func days(n int) time.Duration { return time.Duration(n) * 24 * time.Hour }

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		s = strings.TrimSpace(s)
		if s == "" || seen[s] {
			continue
		}
		seen[s] = true
		out = append(out, s)
	}
	return out
}

// defaultIP returns the first global unicast IPv4 address of the machine, or 127.0.0.1.
func defaultIP() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
				return n.IP.String()
			}
		}
	}
	return "127.0.0.1"
}
