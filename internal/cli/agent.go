package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kpki/kpki/internal/agent"
	"github.com/kpki/kpki/internal/api"
)

func newAgentCmd() *cobra.Command {
	cfg := agent.Defaults()
	cfg.RetryDeadline = 2 * time.Minute
	var once bool
	var tokenFile string
	var servers []string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Join a kpki cluster as an agent and keep the node's certificates renewed",
		Long: `Checks the server's CA against the token's CA hash, then has the server sign the node's
certificates (kubelet client and serving, kube-proxy, kpki-controller) for keys generated on
this node, and writes them with the CA bundles and kubeconfigs under <data-dir>/agent. It then
checks every --renew-interval and renews certificates that expire within --renew-before-days,
keeping their keys. Between passes it fetches the server's CAs every --ca-check-interval over
the connection it trusts and, when they differ from its copies (a CA rotation), runs a pass at
once. With --once it runs one pass and exits.

A pass that fails because the server cannot be reached, answers 5xx (for instance 503
"datastore unavailable (no quorum)") or times out is repeated with growing waits for up to
--retry-deadline; given several --server URLs, each retry goes to the next one. Refusals
(a wrong token, a CA that does not match the token's hash) are not repeated.`,
		Args: cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := applySources(cmd); err != nil {
				return err
			}
			return applyTokenFile(cmd, tokenFile, &cfg.Token)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.ServerURL = strings.Join(servers, ",")
			if !cmd.Flags().Changed("ca-check-interval") && cfg.CACheckInterval > cfg.RenewInterval {
				cfg.CACheckInterval = 0 // every pass checks the CAs already, more often
			}
			a, err := agent.New(cfg, agent.Options{Log: newLogger(cmd)})
			if err != nil {
				return err
			}
			if once {
				_, err := a.RunOnce(cmd.Context())
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	dataDirFlag(cmd, &cfg.DataDir)
	configFlag(cmd)
	f.StringSliceVarP(&servers, "server", "s", nil, fmt.Sprintf("URL of a kpki server's supervisor, https://host:%d (env KPKI_URL); repeat it or give a comma-separated list to fail over between servers", api.DefaultSupervisorPort))
	f.StringVarP(&cfg.Token, "token", "t", "", "join token: K10<ca-hash>::<user>:<password>, or a short token (no CA pinning)")
	tokenFileFlag(cmd, &tokenFile)
	f.StringVar(&cfg.NodeName, "node-name", "", "node name (default: the hostname, lower-cased)")
	f.StringSliceVar(&cfg.NodeIPs, "node-ip", nil, "node IP address, a SAN of the kubelet serving certificate (repeatable)")
	f.IntVar(&cfg.APIServerPort, "api-server-port", cfg.APIServerPort, "kube-apiserver port, on the --server host, written into the kubeconfigs")
	f.IntVar(&cfg.RenewBeforeDays, "renew-before-days", cfg.RenewBeforeDays, "renew certificates this many days before they expire")
	f.DurationVar(&cfg.RenewInterval, "renew-interval", cfg.RenewInterval, "how often the running agent checks for certificates to renew")
	f.DurationVar(&cfg.CACheckInterval, "ca-check-interval", cfg.CACheckInterval, "how often the running agent checks between passes whether the server's CAs changed (a CA rotation), running a pass at once when they did; 0: off; at most --renew-interval (not given: off when --renew-interval is shorter)")
	f.DurationVar(&cfg.RetryDeadline, "retry-deadline", cfg.RetryDeadline, "how long a pass that fails with a transient error (server unreachable, 5xx, timeout) is repeated; 0: try each server once")
	f.BoolVar(&once, "once", false, "run one pass (join or renew) and exit")
	f.StringVar(&cfg.MetricsAddress, "metrics-address", "", `serve Prometheus metrics (the node's certificate expiry, passes, signed certificates) over plain HTTP at http://<host:port>/metrics; "" (the default) serves none; --once serves none either`)
	return cmd
}
