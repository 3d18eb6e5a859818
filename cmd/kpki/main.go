// Command kpki manages the PKI of a Kubernetes cluster.
package main

import (
	"os"

	"github.com/kpki/kpki/internal/cli"
)

func main() {
	os.Exit(cli.Execute(os.Args[1:], os.Stdout, os.Stderr))
}
