// Package bench runs kpki's benchmarks against their peers in one invocation: the
// in-process limit of CSR checking and signing, a `cfssl serve` signing the same kind of
// CSR, and a kpki server (renew and join, with and without keep-alive); and the join
// storm of whole agents against three servers, one of them killed on the way.
// Every process it starts listens on 127.0.0.0/8 and is stopped when it returns.
package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kpki/kpki/internal/load"
	"github.com/kpki/kpki/internal/pki"
)

// Options of a benchmark run.
type Options struct {
	// Kpki and CFSSL are the binaries to run.
	Kpki, CFSSL string
	// Dir holds the data dirs and logs; a temporary directory when empty.
	Dir string
	// Requests per measurement, Concurrency of the network measurements, Workers of the
	// in-process limit (the number of CPUs when 0).
	Requests, Concurrency, Workers int
	// ServerArgs are added to `kpki server`.
	ServerArgs []string
}

// Line is one measurement of a benchmark run.
type Line struct {
	Name   string
	Result load.Result
}

// Bench runs every measurement once, in turn, and writes the table to out; progress
// gets one line a step. It fails when a measurement had failed requests.
func Bench(ctx context.Context, o Options, out, progress io.Writer) ([]Line, error) {
	if o.Workers == 0 {
		o.Workers = runtime.NumCPU()
	}
	dir := o.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "kpki-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	var lines []Line
	add := func(name string, res load.Result) {
		lines = append(lines, Line{Name: name, Result: res})
		fmt.Fprintf(progress, "kpki-bench: %s: %.0f certs/s, p50 %.2f ms, %d errors\n", name, res.Throughput, res.Latency.P50, res.Requests-res.OK)
	}

	fmt.Fprintf(progress, "kpki-bench: in-process limit, %d workers, %d CSRs\n", o.Workers, o.Requests)
	lim, err := load.Limit(ctx, o.Requests, o.Workers, load.DefaultCert)
	if err != nil {
		return nil, err
	}
	add(fmt.Sprintf("limit: CSR check + sign, %d workers", o.Workers), lim)

	cf, err := startCFSSL(ctx, dir, o.CFSSL)
	if err != nil {
		return nil, err
	}
	for _, keep := range []bool{true, false} {
		rep, err := load.Run(ctx, load.Config{CFSSL: cf.url, Requests: o.Requests, Concurrency: o.Concurrency,
			Duration: load.MaxDuration, Scenarios: []load.Scenario{load.CFSSL}, KeepAlive: keep}, progress)
		if err != nil {
			cf.stop()
			return nil, err
		}
		add("cfssl serve, "+conns(keep), rep.Results[0])
	}
	cf.stop()

	p, err := portsOn("127.0.0.1")
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "kpki-bench: starting kpki server on 127.0.0.1:%d\n", p.supervisor)
	srv, err := startServer(ctx, dir, o.Kpki, "127.0.0.1", "bench", p, nil, o.ServerArgs...)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	tok, err := srv.agentToken()
	if err != nil {
		return nil, err
	}
	for _, keep := range []bool{true, false} {
		rep, err := load.Run(ctx, load.Config{Server: srv.url(), Token: tok, Nodes: load.DefaultNodes, Requests: o.Requests,
			Concurrency: o.Concurrency, Duration: load.MaxDuration, Scenarios: []load.Scenario{load.Renew, load.Join}, KeepAlive: keep}, progress)
		if err != nil {
			return nil, err
		}
		for _, res := range rep.Results {
			add(fmt.Sprintf("kpki %s, %s", res.Scenario, conns(keep)), res)
		}
	}
	writeTable(out, lines, o)
	failed := 0
	for _, l := range lines {
		failed += l.Result.Requests - l.Result.OK + l.Result.Interrupted
	}
	if failed > 0 {
		return lines, fmt.Errorf("%d requests failed", failed)
	}
	return lines, nil
}

func conns(keep bool) string {
	if keep {
		return "keep-alive"
	}
	return "new connection per request"
}

// writeTable prints every line with its ratio to the cfssl keep-alive line and to the
// limit.
func writeTable(out io.Writer, lines []Line, o Options) {
	var limit, cfssl float64
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l.Name, "limit"):
			limit = l.Result.Throughput
		case l.Name == "cfssl serve, keep-alive":
			cfssl = l.Result.Throughput
		}
	}
	fmt.Fprintf(out, "%d requests each, concurrency %d over the network, %d CPUs, %s\n\n", o.Requests, o.Concurrency, runtime.NumCPU(), time.Now().UTC().Format(time.RFC3339))
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "measurement\tcerts/s\t÷ cfssl\t÷ limit\tp50 ms\tp99 ms\terrors\t")
	ratio := func(a, b float64) string {
		if b <= 0 {
			return "-"
		}
		return strconv.FormatFloat(a/b, 'f', 2, 64)
	}
	for _, l := range lines {
		r := l.Result
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%.2f\t%.2f\t%d\t\n", l.Name, r.Throughput, ratio(r.Throughput, cfssl), ratio(r.Throughput, limit),
			r.Latency.P50, r.Latency.P99, r.Requests-r.OK)
	}
	tw.Flush()
}

// cfsslServe is a running cfssl serve.
type cfsslServe struct {
	*proc
	url string
}

// startCFSSL writes a P-256 CA and starts `cfssl serve` with it on 127.0.0.1.
func startCFSSL(ctx context.Context, dir, bin string) (*cfsslServe, error) {
	if bin == "" {
		return nil, errors.New("no cfssl binary: install golang-cfssl or give --cfssl")
	}
	caDir := filepath.Join(dir, "cfssl")
	if err := os.MkdirAll(caDir, 0o700); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	ca, err := pki.NewIssuer(nil, nil).SelfSignedCA(key, "kpki-bench-cfssl-ca", 30*24*time.Hour)
	if err != nil {
		return nil, err
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return nil, err
	}
	caFile, keyFile := filepath.Join(caDir, "ca.pem"), filepath.Join(caDir, "ca-key.pem")
	if err := os.WriteFile(caFile, pki.EncodeCert(ca), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return nil, err
	}
	port, err := freePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	pr, err := start(dir, "cfssl", bin, "serve", "-address", "127.0.0.1", "-port", strconv.Itoa(port), "-ca", caFile, "-ca-key", keyFile)
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := pr.waitPort(ctx, addr, 30*time.Second); err != nil {
		pr.kill()
		return nil, err
	}
	return &cfsslServe{proc: pr, url: "http://" + addr}, nil
}
