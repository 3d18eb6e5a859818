// Package load drives a running kpki supervisor the way a fleet of joining agents does and
// measures it against a baseline taken in the same run: GET /ping (TLS and HTTP without
// PKI work), re-signing for registered nodes, and first-time joins (node registration in
// the datastore, then signing). It only ever sends load to a loopback address.
package load

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certs"
	nodeid "github.com/kpki/kpki/internal/node"
)

// Scenario is one kind of request sent in a timed run.
type Scenario string

// Scenarios.
const (
	// Ping is GET /ping: the cost of TLS and HTTP without PKI work, the baseline.
	Ping Scenario = "ping"
	// Renew re-signs for a fixed set of nodes registered before the timed run.
	Renew Scenario = "renew"
	// Join signs for a node name never seen before: registration, then signing.
	Join Scenario = "join"
)

// Bounds of a run.
const (
	MaxRequests    = 100000
	MaxDuration    = 10 * time.Minute
	MaxConcurrency = 1000
)

// DefaultServer is the supervisor kpki-load sends to by default.
var DefaultServer = "https://127.0.0.1:" + strconv.Itoa(api.DefaultSupervisorPort)

// Defaults of the kpki-load flags.
const (
	DefaultNodes       = 100
	DefaultRequests    = 1000
	DefaultConcurrency = 8
	DefaultDuration    = 5 * time.Minute
	DefaultCert        = "client-kubelet"
	DefaultNamePrefix  = "kpki-load"
)

// Config describes a run.
type Config struct {
	// Server is the supervisor's URL; its host must be or resolve to loopback addresses only.
	Server string
	// Token is an agent token, K10<ca-hash>::node:<password>; the CA is pinned with it.
	Token string
	// Nodes is the number of registered nodes the renew scenario re-signs for.
	Nodes int
	// Requests is the number of timed requests of each scenario, across all workers.
	Requests int
	// Concurrency is the number of requests in flight.
	Concurrency int
	// Duration is the hard stop of the whole run, set-up included.
	Duration time.Duration
	// Scenarios run in this order.
	Scenarios []Scenario
	// Cert is the agent leaf the signing scenarios ask for (client-kubelet, ...).
	Cert string
	// NamePrefix starts every node name; a random run id follows it.
	NamePrefix string
	// KeepAlive reuses connections; by default every request opens its own TLS
	// connection, as a fleet of distinct hosts does.
	KeepAlive bool
	// CFSSL is the http://127.0.0.1:port URL of a `cfssl serve` the cfssl scenario signs
	// with; its host must be a loopback IP address.
	CFSSL string
	// OnIssued, when set, is called with every certificate issued in a timed request,
	// after its latency is recorded. It is called from several goroutines at once.
	OnIssued func(Issued)
}

// Issued is a signing request answered with 200.
type Issued struct {
	Scenario Scenario
	Node     string
	// CSR is the DER request that was sent.
	CSR []byte
	// Reply is the body of the answer: PEM leaf, then the CA bundle.
	Reply []byte
}

// ParseScenarios parses a comma-separated list such as "ping,renew,join".
func ParseScenarios(list []string) ([]Scenario, error) {
	var out []Scenario
	seen := map[Scenario]bool{}
	for _, item := range list {
		for _, s := range strings.Split(item, ",") {
			s = strings.TrimSpace(strings.ToLower(s))
			if s == "" {
				continue
			}
			sc := Scenario(s)
			switch sc {
			case Ping, Renew, Join, CFSSL:
			default:
				return nil, fmt.Errorf("unknown scenario %q: use ping, renew, join or cfssl", s)
			}
			if seen[sc] {
				return nil, fmt.Errorf("scenario %q is listed twice", s)
			}
			seen[sc] = true
			out = append(out, sc)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no scenario: use --scenario ping,renew,join or a part of it")
	}
	return out, nil
}

// agentLeaf returns the row of the certificate table for an agent leaf name.
func agentLeaf(name string) (certs.Leaf, error) {
	var names []string
	for _, l := range certs.Select(certs.AgentNode, nil) {
		if l.Name == name {
			return l, nil
		}
		names = append(names, l.Name)
	}
	return certs.Leaf{}, fmt.Errorf("--cert %q is not an agent certificate: use one of %s", name, strings.Join(names, ", "))
}

// needsKPKI reports whether a scenario of c is sent to the kpki server.
func (c *Config) needsKPKI() bool {
	for _, s := range c.Scenarios {
		if s != CFSSL {
			return true
		}
	}
	return false
}

// Validate checks the bounds of c and fills defaults for empty Cert and NamePrefix.
func (c *Config) Validate() error {
	if c.Requests < 1 || c.Requests > MaxRequests {
		return fmt.Errorf("--requests %d is out of bounds: between 1 and %d", c.Requests, MaxRequests)
	}
	if c.Duration <= 0 || c.Duration > MaxDuration {
		return fmt.Errorf("--duration %v is out of bounds: more than 0 and at most %v", c.Duration, MaxDuration)
	}
	if c.Concurrency < 1 || c.Concurrency > MaxConcurrency {
		return fmt.Errorf("--concurrency %d is out of bounds: between 1 and %d", c.Concurrency, MaxConcurrency)
	}
	if len(c.Scenarios) == 0 {
		return errors.New("no scenario: use --scenario ping,renew,join or a part of it")
	}
	for _, s := range c.Scenarios {
		if s == Renew && (c.Nodes < 1 || c.Nodes > MaxRequests) {
			return fmt.Errorf("--nodes %d is out of bounds: between 1 and %d", c.Nodes, MaxRequests)
		}
		if s == CFSSL {
			if c.CFSSL == "" {
				return errors.New("the cfssl scenario needs --cfssl http://127.0.0.1:<port>, the address of a cfssl serve")
			}
			if _, err := checkCFSSL(c.CFSSL); err != nil {
				return err
			}
		}
	}
	if c.Cert == "" {
		c.Cert = DefaultCert
	}
	if _, err := agentLeaf(c.Cert); err != nil {
		return err
	}
	if c.NamePrefix == "" {
		c.NamePrefix = DefaultNamePrefix
	}
	if longest := nodeName(c.NamePrefix, "00000000", Renew, MaxRequests); !nodeid.ValidName(longest) {
		return fmt.Errorf("--name-prefix %q does not make valid node names such as %q: use lower-case letters, digits and dashes", c.NamePrefix, longest)
	}
	return nil
}

// nodeName is the name of the i-th node of a scenario.
func nodeName(prefix, runID string, s Scenario, i int) string {
	return fmt.Sprintf("%s-%s-%s-%d", prefix, runID, s, i)
}

// target is the checked supervisor address.
type target struct {
	// base is the URL as given, without a trailing slash: it names the host for TLS.
	base string
	// host is the URL's host name or IP, the TLS server name.
	host string
	// addrs are the loopback IPs and port connections go to, IPv4 first.
	addrs []string
}

// pinnedBase is base with the first loopback IP in place of the host name.
func (t target) pinnedBase() string { return "https://" + t.addrs[0] }

// CheckServer parses an https://host:port URL and makes sure that host is, or resolves
// only to, loopback addresses. It connects to nothing; a host name is looked up with the
// system resolver.
func CheckServer(ctx context.Context, server string) (target, error) {
	u, err := url.Parse(server)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return target{}, fmt.Errorf("--server %q must look like %s", server, DefaultServer)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = strconv.Itoa(api.DefaultSupervisorPort)
	}
	refuse := func(what string) error {
		return fmt.Errorf("--server %s: %s; kpki-load only sends load to this machine (127.0.0.0/8, ::1 or a name that resolves only to them)", server, what)
	}
	var ips []net.IP
	if ip := net.ParseIP(host); ip != nil {
		ips = []net.IP{ip}
	} else {
		addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
		if err != nil {
			return target{}, refuse(fmt.Sprintf("cannot resolve %s (%v)", host, err))
		}
		for _, a := range addrs {
			ips = append(ips, a.IP)
		}
		if len(ips) == 0 {
			return target{}, refuse(host + " resolves to no address")
		}
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			if ip.String() == host {
				return target{}, refuse(host + " is not a loopback address")
			}
			return target{}, refuse(fmt.Sprintf("%s resolves to %s, which is not a loopback address", host, ip))
		}
	}
	t := target{base: "https://" + net.JoinHostPort(host, port), host: host}
	for _, v4 := range []bool{true, false} {
		for _, ip := range ips {
			if (ip.To4() != nil) == v4 {
				t.addrs = append(t.addrs, net.JoinHostPort(ip.String(), port))
			}
		}
	}
	return t, nil
}
