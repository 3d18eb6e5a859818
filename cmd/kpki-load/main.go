// Command kpki-load sends a bounded load of agent requests to a kpki server on this
// machine and compares each scenario with GET /ping measured in the same run.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/kpki/kpki/internal/load"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := load.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
