// Command kpki-bench runs kpki's benchmarks against their peers in one invocation (see
// docs/performance.md): `kpki-bench bench` and `kpki-bench storm`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/kpki/kpki/internal/load/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := bench.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
