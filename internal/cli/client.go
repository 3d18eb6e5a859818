package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/token"
	"github.com/kpki/kpki/internal/trust"
)

// DefaultServerURL is the supervisor the client subcommands talk to by default.
const DefaultServerURL = "https://127.0.0.1:9345"

func serverURLFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVarP(p, "server", "s", DefaultServerURL, "URL of the kpki server's supervisor (env KPKI_URL)")
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
