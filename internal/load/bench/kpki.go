package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ports are a kpki server's ports; the servers of one cluster use the same ports on
// their own loopback addresses.
type ports struct {
	supervisor, etcdClient, etcdPeer, apiServer int
}

// portsOn returns ports free on every one of ips.
func portsOn(ips ...string) (ports, error) {
	var p ports
	for _, dst := range []*int{&p.supervisor, &p.etcdClient, &p.etcdPeer, &p.apiServer} {
		found := false
		for range 50 {
			port, err := freePort(ips[0])
			if err != nil {
				return p, err
			}
			ok := true
			for _, ip := range ips[1:] {
				if l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port))); err != nil {
					ok = false
				} else {
					l.Close()
				}
			}
			if ok && port != p.supervisor && port != p.etcdClient && port != p.etcdPeer {
				*dst, found = port, true
				break
			}
		}
		if !found {
			return p, fmt.Errorf("no port free on all of %s", strings.Join(ips, ", "))
		}
	}
	return p, nil
}

// server is one kpki server process.
type server struct {
	*proc
	ip      string
	ports   ports
	dataDir string
}

// url is the server's supervisor URL.
func (s *server) url() string {
	return "https://" + net.JoinHostPort(s.ip, strconv.Itoa(s.ports.supervisor))
}

func (s *server) agentToken() (string, error) {
	b, err := os.ReadFile(filepath.Join(s.dataDir, "server", "agent-token"))
	return strings.TrimSpace(string(b)), err
}

func (s *server) serverToken() (string, error) {
	b, err := os.ReadFile(filepath.Join(s.dataDir, "server", "token"))
	return strings.TrimSpace(string(b)), err
}

// startServer starts `kpki server` on ip with its data dir under dir and waits until it
// is ready. join, when not nil, is the server the new one joins with its server token.
func startServer(ctx context.Context, dir, bin, ip, name string, p ports, join *server, extra ...string) (*server, error) {
	s := &server{ip: ip, ports: p, dataDir: filepath.Join(dir, name)}
	args := []string{"server", "--data-dir", s.dataDir, "--bind-address", ip, "--advertise-address", ip,
		"--node-name", name, "--metrics-address", "",
		"--supervisor-port", strconv.Itoa(p.supervisor), "--etcd-client-port", strconv.Itoa(p.etcdClient),
		"--etcd-peer-port", strconv.Itoa(p.etcdPeer), "--api-server-port", strconv.Itoa(p.apiServer)}
	if join != nil {
		tok, err := join.serverToken()
		if err != nil {
			return nil, err
		}
		args = append(args, "--server", join.url(), "--token", tok)
	}
	for _, a := range extra {
		args = append(args, strings.ReplaceAll(a, "{ip}", ip))
	}
	pr, err := start(dir, name, bin, args...)
	if err != nil {
		return nil, err
	}
	s.proc = pr
	if err := pr.waitLog(ctx, "kpki server is ready", 120*time.Second); err != nil {
		pr.kill()
		return nil, err
	}
	return s, nil
}
