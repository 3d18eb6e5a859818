package load

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/kpki/kpki/internal/api"
)

// Exit statuses of kpki-load.
const (
	ExitOK = 0
	// ExitFailed: the run could not start or stopped on a set-up error.
	ExitFailed = 1
	// ExitUsage: a flag is wrong or out of bounds.
	ExitUsage = 2
	// ExitRequestErrors: the run completed, and some requests failed.
	ExitRequestErrors = 3
)

const usage = `kpki-load drives a kpki server's supervisor the way a fleet of joining agents
does, and compares each scenario with GET ` + api.PathPing + ` measured in the same run.

Scenarios (run in the order given):
  ping   GET ` + api.PathPing + `: TLS and HTTP without PKI work, the baseline
  renew  --nodes registered nodes re-sign (registered before the timed run)
  join   every request is a node never seen before: registration, then signing
  cfssl  the same kind of CSR signed by a cfssl serve at --cfssl (plain HTTP), the peer
  storm  --agents whole agent joins, --concurrency at a time, as kpki agent --once joins:
         ` + api.PathCACerts + ` pinned with the token, the CA bundles, the four agent certificates
         (each agent with its own keys and node password). --server may list several
         servers (comma-separated); agent i starts with server i mod n and fails over to
         the next one. It runs alone.

Keys and CSRs are generated before the timed runs. Load is only sent to a loopback
address. Exit status: 0 ok, 1 failure, 2 bad flags, 3 some requests failed.

Usage:
  kpki-load --token-file <data-dir>/server/agent-token [flags]

Flags:
`

// Main runs kpki-load with args and returns its exit status.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("kpki-load", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	cfg := Config{}
	var tokenFile string
	var scenarios []string
	var jsonOut bool
	var servers []string
	var agents int
	fs.StringSliceVar(&servers, "server", []string{DefaultServer}, "supervisor URL; must be a loopback address or a name resolving only to loopback addresses (storm: several, comma-separated)")
	fs.IntVar(&agents, "agents", 1000, fmt.Sprintf("agents of the storm scenario (at most %d)", MaxAgents))
	fs.StringVar(&cfg.Token, "token", "", "agent token K10<ca-hash>::node:<password> (the CA is pinned with its hash)")
	fs.StringVar(&tokenFile, "token-file", "", "file holding the agent token, such as <data-dir>/server/agent-token")
	fs.IntVar(&cfg.Nodes, "nodes", DefaultNodes, "registered nodes the renew scenario signs for, each with its own node password")
	fs.IntVar(&cfg.Requests, "requests", DefaultRequests, fmt.Sprintf("timed requests per scenario, across all workers (at most %d)", MaxRequests))
	fs.IntVar(&cfg.Concurrency, "concurrency", DefaultConcurrency, "requests in flight")
	fs.DurationVar(&cfg.Duration, "duration", DefaultDuration, fmt.Sprintf("hard stop of the whole run, set-up included (at most %v)", MaxDuration))
	fs.StringSliceVar(&scenarios, "scenario", []string{"ping", "renew", "join"}, "scenarios to run, in order: ping, renew, join, cfssl")
	fs.StringVar(&cfg.Cert, "cert", DefaultCert, "agent certificate the signing scenarios ask for")
	fs.StringVar(&cfg.NamePrefix, "name-prefix", DefaultNamePrefix, "start of every node name; a random run id follows it")
	fs.BoolVar(&cfg.KeepAlive, "keep-alive", false, "reuse connections instead of one TLS connection per request")
	fs.StringVar(&cfg.CFSSL, "cfssl", "", "http://127.0.0.1:<port> of a cfssl serve, for the cfssl scenario")
	fs.BoolVar(&jsonOut, "json", false, "write the report as JSON")

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return ExitOK
		}
		return ExitUsage
	}
	fail := func(code int, err error) int {
		fmt.Fprintln(stderr, "kpki-load:", err)
		return code
	}
	if fs.NArg() > 0 {
		return fail(ExitUsage, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " ")))
	}
	storm := false
	for _, sc := range scenarios {
		for _, part := range strings.Split(sc, ",") {
			storm = storm || strings.TrimSpace(part) == string(StormScenario)
		}
	}
	if storm {
		if len(scenarios) != 1 || strings.Contains(scenarios[0], ",") {
			return fail(ExitUsage, errors.New("the storm scenario runs alone"))
		}
		tok, code := readToken(cfg.Token, tokenFile)
		if code != ExitOK {
			return fail(code, errors.New(tok))
		}
		return runStorm(ctx, StormConfig{Servers: servers, Token: tok, Agents: agents, Concurrency: cfg.Concurrency,
			Duration: cfg.Duration, NamePrefix: cfg.NamePrefix}, jsonOut, stdout, stderr)
	}
	if len(servers) != 1 {
		return fail(ExitUsage, errors.New("--server lists several servers: only the storm scenario takes more than one"))
	}
	cfg.Server = servers[0]
	var err error
	if cfg.Scenarios, err = ParseScenarios(scenarios); err != nil {
		return fail(ExitUsage, err)
	}
	if err := cfg.Validate(); err != nil {
		return fail(ExitUsage, err)
	}
	if cfg.needsKPKI() {
		if _, err := CheckServer(ctx, cfg.Server); err != nil {
			return fail(ExitUsage, err)
		}
		tok, code := readToken(cfg.Token, tokenFile)
		if code != ExitOK {
			return fail(code, errors.New(tok))
		}
		cfg.Token = tok
	}

	rep, err := Run(ctx, cfg, stderr)
	if err != nil {
		return fail(ExitFailed, err)
	}
	if jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		return fail(ExitFailed, err)
	}
	if rep.ErrorCount() > 0 {
		return ExitRequestErrors
	}
	return ExitOK
}

// readToken returns the agent token from --token or --token-file, or an error message
// and ExitUsage.
func readToken(tok, file string) (string, int) {
	switch {
	case tok != "" && file != "":
		return "give --token or --token-file, not both", ExitUsage
	case file != "":
		data, err := os.ReadFile(file)
		if err != nil {
			return "--token-file: " + err.Error(), ExitUsage
		}
		return strings.TrimSpace(string(data)), ExitOK
	case tok == "":
		return "--token or --token-file is required: the agent token, <data-dir>/server/agent-token", ExitUsage
	}
	return tok, ExitOK
}

// runStorm runs a storm and writes its report; a failed join is exit status 3.
func runStorm(ctx context.Context, cfg StormConfig, jsonOut bool, stdout, stderr io.Writer) int {
	rep, err := Storm(ctx, cfg, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "kpki-load:", err)
		return ExitUsage
	}
	if jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "kpki-load:", err)
		return ExitFailed
	}
	if rep.Failed > 0 {
		return ExitRequestErrors
	}
	return ExitOK
}
