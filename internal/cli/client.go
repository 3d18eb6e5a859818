package cli

import (
	"fmt"
	"net"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/token"
	"github.com/kpki/kpki/internal/trust"
)

// DefaultServerURL is the supervisor the client subcommands talk to by default.
var DefaultServerURL = "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(api.DefaultSupervisorPort))

// serverURLFlag registers --server and, hidden, the server's --supervisor-port,
// --bind-address and --advertise-address, which a client command reads from the
// server's config file (or env) to find the local supervisor; see localServerURL.
func serverURLFlag(cmd *cobra.Command, p *string) {
	f := cmd.Flags()
	f.StringVarP(p, "server", "s", DefaultServerURL, "URL of the kpki server's supervisor (env KPKI_URL); default: the supervisor-port and bind-address (or advertise-address) of the config file, on 127.0.0.1 when no address is set")
	f.Int("supervisor-port", api.DefaultSupervisorPort, "the server's supervisor port, used when --server is not given")
	f.String("bind-address", "", "the server's bind address, used when --server is not given")
	f.String("advertise-address", "", "the server's advertise address, used when --server is not given and no bind address is set")
	for _, n := range []string{"supervisor-port", "bind-address", "advertise-address"} {
		_ = f.MarkHidden(n)
	}
}

// localServerURL returns --server when it was given (flag, KPKI_URL, KPKI_SERVER or the
// config file's server:), else https://<addr>:<supervisor-port> where addr is the
// bind address, else the advertise address, else 127.0.0.1. A bind address of 0.0.0.0
// or :: (all addresses) is reached on the loopback address.
func localServerURL(cmd *cobra.Command, server string) (string, error) {
	f := cmd.Flags()
	if sf := f.Lookup("server"); sf == nil || sf.Changed {
		return server, nil
	}
	port, err := f.GetInt("supervisor-port")
	if err != nil {
		return "", err
	}
	if port < 1 || port > 65535 {
		return "", fmt.Errorf("supervisor-port %d must be between 1 and 65535", port)
	}
	bind, _ := f.GetString("bind-address")
	adv, _ := f.GetString("advertise-address")
	return localSupervisorURL(bind, adv, port), nil
}

// localSupervisorURL is the URL a command on a server's host reaches that server's
// supervisor at: its bind address (loopback when it binds every address), else its
// advertise address, else 127.0.0.1.
func localSupervisorURL(bind, adv string, port int) string {
	host := "127.0.0.1"
	switch {
	case bind != "":
		host = bind
		if ip := net.ParseIP(bind); ip != nil && ip.IsUnspecified() {
			host = "127.0.0.1"
			if ip.To4() == nil {
				host = "::1"
			}
		}
	case adv != "":
		host = adv
	}
	return "https://" + net.JoinHostPort(host, strconv.Itoa(port))
}

// serverClient authenticates as `server` with the token of <dataDir>/server/token and
// verifies the server against the server CA of that data dir: the root its first
// certificate reaches is the only anchor (trust.Local).
func serverClient(dataDir, url string) (*api.Client, error) {
	l := datadir.Layout{Root: dataDir}
	raw, err := os.ReadFile(l.TokenFile())
	if err != nil {
		return nil, fmt.Errorf("read the server token: %w (is %s a kpki server data dir?)", err, dataDir)
	}
	t, err := token.Parse(string(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l.TokenFile(), err)
	}
	ca, err := os.ReadFile(l.TLS(certs.CA(certs.ServerCA).CertFile))
	if err != nil {
		return nil, fmt.Errorf("read the server CA: %w", err)
	}
	tr, err := trust.Local(ca, clock.Real{}.Now())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l.TLS(certs.CA(certs.ServerCA).CertFile), err)
	}
	return api.NewClient(url, tr, "server", t.Password)
}
