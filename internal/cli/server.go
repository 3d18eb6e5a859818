package cli

import (
	"github.com/spf13/cobra"

	"github.com/kpki/kpki/internal/server"
)

func newServerCmd() *cobra.Command {
	cfg := server.Defaults()
	var tokenFile, agentTokenFile string
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a kpki server: create or join the cluster PKI, serve it, renew it",
		Args:  cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := applySources(cmd); err != nil {
				return err
			}
			if err := applyTokenFile(cmd, tokenFile, &cfg.Token); err != nil {
				return err
			}
			return applySecretFile(cmd, "agent-token", agentTokenFile, &cfg.AgentToken)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := server.New(cfg, server.Options{Log: newLogger(cmd)})
			if err != nil {
				return err
			}
			return s.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	dataDirFlag(cmd, &cfg.DataDir)
	configFlag(cmd)
	f.StringVarP(&cfg.Token, "token", "t", "", "cluster token (generated on the first server when empty)")
	tokenFileFlag(cmd, &tokenFile)
	f.StringVar(&cfg.AgentToken, "agent-token", "", "token agents join with (a distinct random password by default; never the server token's)")
	f.StringVar(&agentTokenFile, "agent-token-file", "", "file holding the agent token (surrounding whitespace ignored; env KPKI_AGENT_TOKEN_FILE); not with --agent-token")
	f.StringVarP(&cfg.ServerURL, "server", "s", "", "URL of an existing server to join")
	f.StringSliceVar(&cfg.TLSSANs, "tls-san", nil, "extra hostname or IP for the serving certificates (repeatable)")
	f.StringVar(&cfg.NodeName, "node-name", "", "node name (default: the hostname, lower-cased)")
	f.StringSliceVar(&cfg.NodeIPs, "node-ip", nil, "node IP address (repeatable)")
	f.StringVar(&cfg.BindAddress, "bind-address", "", "address to listen on (default: all)")
	f.StringVar(&cfg.AdvertiseAddress, "advertise-address", "", "address other nodes reach this server at")
	f.IntVar(&cfg.SupervisorPort, "supervisor-port", cfg.SupervisorPort, "supervisor API port")
	f.IntVar(&cfg.EtcdClientPort, "etcd-client-port", cfg.EtcdClientPort, "embedded etcd client port")
	f.IntVar(&cfg.EtcdPeerPort, "etcd-peer-port", cfg.EtcdPeerPort, "embedded etcd peer port")
	f.IntVar(&cfg.APIServerPort, "api-server-port", cfg.APIServerPort, "kube-apiserver port written into kubeconfigs")
	f.StringVar(&cfg.DatastoreEndpoint, "datastore-endpoint", "", "external etcd endpoints (comma-separated URLs); embedded etcd when empty")
	f.StringVar(&cfg.DatastoreCAFile, "datastore-cafile", "", "CA bundle of the external etcd")
	f.StringVar(&cfg.DatastoreCertFile, "datastore-certfile", "", "client certificate for the external etcd")
	f.StringVar(&cfg.DatastoreKeyFile, "datastore-keyfile", "", "client key for the external etcd")
	f.StringVar(&cfg.ClusterCIDR, "cluster-cidr", cfg.ClusterCIDR, "pod network CIDR")
	f.StringVar(&cfg.ServiceCIDR, "service-cidr", cfg.ServiceCIDR, "service network CIDR (its first IP is a SAN of the API server)")
	f.StringVar(&cfg.ClusterDomain, "cluster-domain", cfg.ClusterDomain, "cluster DNS domain")
	f.IntVar(&cfg.CAValidityDays, "ca-validity-days", cfg.CAValidityDays, "validity of generated CA certificates")
	f.IntVar(&cfg.CertValidityDays, "cert-validity-days", cfg.CertValidityDays, "validity of leaf certificates")
	f.IntVar(&cfg.RenewBeforeDays, "renew-before-days", cfg.RenewBeforeDays, "renew leaf certificates this many days before they expire")
	f.IntVar(&cfg.CAWarnDays, "ca-warn-days", cfg.CAWarnDays, "warn (log, metrics) when a CA certificate or its chain expires within this many days")
	f.DurationVar(&cfg.RenewInterval, "renew-interval", cfg.RenewInterval, "how often the running server checks for certificates to renew")
	f.StringVar(&cfg.MetricsAddress, "metrics-address", cfg.MetricsAddress, `address of the Prometheus metrics listener ("" disables it)`)
	f.StringVar(&cfg.WriteKubeconfig, "write-kubeconfig", "", "write an admin kubeconfig with embedded credentials to this path")
	f.BoolVar(&cfg.EtcdUnsafeNoFsync, "etcd-unsafe-no-fsync", false, "disable fsync in embedded etcd (tests only)")
	_ = f.MarkHidden("etcd-unsafe-no-fsync")
	f.DurationVar(&cfg.CertValidity, "cert-validity", 0, "leaf validity as a duration, overriding --cert-validity-days (tests)")
	f.DurationVar(&cfg.RenewBefore, "renew-before", 0, "renewal window as a duration, overriding --renew-before-days (tests)")
	_ = f.MarkHidden("cert-validity")
	_ = f.MarkHidden("renew-before")
	f.StringVar(&cfg.PprofAddress, "pprof-address", "", "serve Go profiles (net/http/pprof) on this loopback address, e.g. 127.0.0.1:6060 (profiling only)")
	_ = f.MarkHidden("pprof-address")
	return cmd
}
