package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"time"

	"github.com/spf13/pflag"

	"github.com/kpki/kpki/internal/load"
)

const usage = `kpki-bench runs kpki's benchmarks with their peers in the same invocation.

  kpki-bench bench --kpki ./kpki [--cfssl cfssl] [--requests N] [--concurrency C]
      the in-process limit (CSR check + sign on every CPU), cfssl serve signing the
      same P-256 CSRs, and a kpki server: renew and join, with and without keep-alive;
      each as a ratio to cfssl and to the limit

  kpki-bench storm --kpki ./kpki [--agents 500,1000,2000,5000] [--concurrency C]
      for each size, three servers on 127.0.0.1/.2/.3 (embedded etcd cluster) and a
      storm of whole agent joins; the first server is killed when a third have joined
      and the agents fail over to the survivors. Joins/s, p50/p99, total time, and the
      survivors' RSS and etcd db size per joined node

Everything runs on 127.0.0.0/8 and is stopped at the end. Exit status: 0 ok, 1 failure,
2 bad flags.

Flags:
`

// Main runs kpki-bench with args and returns its exit status.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "bench" && args[0] != "storm") {
		fmt.Fprint(stderr, usage)
		return 2
	}
	mode := args[0]
	fs := pflag.NewFlagSet("kpki-bench "+mode, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	var o Options
	var so StormOptions
	var timeout time.Duration
	fs.StringVar(&o.Kpki, "kpki", "./kpki", "kpki binary")
	fs.StringVar(&o.Dir, "dir", "", "directory of the data dirs and logs (kept); a temporary one, removed, when empty")
	fs.StringSliceVar(&o.ServerArgs, "server-arg", nil, "extra argument of kpki server (repeatable); {ip} stands for the server's address, e.g. --server-arg=--pprof-address={ip}:6060")
	fs.DurationVar(&timeout, "timeout", 20*time.Minute, "hard stop of the whole run")
	if mode == "bench" {
		fs.StringVar(&o.CFSSL, "cfssl", "cfssl", "cfssl binary")
		fs.IntVar(&o.Requests, "requests", 10000, fmt.Sprintf("requests per measurement (at most %d)", load.MaxRequests))
		fs.IntVar(&o.Concurrency, "concurrency", 16, "requests in flight over the network")
		fs.IntVar(&o.Workers, "workers", 0, "workers of the in-process limit; 0: one per CPU")
		fs.IntVar(&o.Rounds, "rounds", 3, "rounds of every measurement, taken in turn; the table gives medians")
	} else {
		fs.IntSliceVar(&so.Agents, "agents", []int{5000}, fmt.Sprintf("storm sizes, run in turn, each against a new cluster (each at most %d)", load.MaxAgents))
		fs.IntVar(&so.Concurrency, "concurrency", 64, "agents joining at once")
		fs.BoolVar(&so.Kill, "kill", true, "kill the first server when a third of the agents have joined")
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return 2
	}
	if timeout <= 0 || timeout > time.Hour {
		fmt.Fprintln(stderr, "kpki-bench: --timeout must be more than 0 and at most 1h")
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var err error
	if mode == "bench" {
		if p, lerr := exec.LookPath(o.CFSSL); lerr == nil {
			o.CFSSL = p
		} else {
			fmt.Fprintf(stderr, "kpki-bench: cfssl binary %q: %v (Debian: apt-get install golang-cfssl)\n", o.CFSSL, lerr)
			return 2
		}
		_, err = Bench(ctx, o, stdout, stderr)
	} else {
		so.Kpki, so.Dir, so.ServerArgs = o.Kpki, o.Dir, o.ServerArgs
		_, err = Storm(ctx, so, stdout, stderr)
	}
	if err != nil {
		fmt.Fprintln(stderr, "kpki-bench:", err)
		return 1
	}
	return 0
}
