package cli

import (
	"github.com/spf13/cobra"

	"github.com/kpki/kpki/internal/agent"
)

func newAgentCmd() *cobra.Command {
	cfg := agent.Defaults()
	var once bool
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Join a kpki cluster as an agent and keep the node's certificates renewed",
		Long: `Checks the server's CA against the token's CA hash, then has the server sign the node's
certificates (kubelet client and serving, kube-proxy, kpki-controller) for keys generated on
this node, and writes them with the CA bundles and kubeconfigs under <data-dir>/agent. It then
checks every --renew-interval and renews certificates that expire within --renew-before-days,
keeping their keys. With --once it runs one pass and exits.`,
		Args: cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return applySources(cmd)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := agent.New(cfg, agent.Options{Log: newLogger(cmd.ErrOrStderr())})
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
	f.StringVarP(&cfg.ServerURL, "server", "s", "", "URL of a kpki server's supervisor, https://host:9345 (env KPKI_URL)")
	f.StringVarP(&cfg.Token, "token", "t", "", "join token: K10<ca-hash>::<user>:<password>, or a short token (no CA pinning)")
	f.StringVar(&cfg.NodeName, "node-name", "", "node name (default: the hostname, lower-cased)")
	f.StringSliceVar(&cfg.NodeIPs, "node-ip", nil, "node IP address, a SAN of the kubelet serving certificate (repeatable)")
	f.IntVar(&cfg.APIServerPort, "api-server-port", cfg.APIServerPort, "kube-apiserver port, on the --server host, written into the kubeconfigs")
	f.IntVar(&cfg.RenewBeforeDays, "renew-before-days", cfg.RenewBeforeDays, "renew certificates this many days before they expire")
	f.DurationVar(&cfg.RenewInterval, "renew-interval", cfg.RenewInterval, "how often the running agent checks for certificates to renew")
	f.BoolVar(&once, "once", false, "run one pass (join or renew) and exit")
	return cmd
}
