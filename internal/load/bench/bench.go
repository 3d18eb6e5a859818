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
	"slices"
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
	// Rounds is the number of times every measurement is taken, in turn.
	Rounds int
	// ServerArgs are added to `kpki server`.
	ServerArgs []string
}

// Line is one measurement of a benchmark run.
type Line struct {
	Round  int
	Name   string
	Result load.Result
	// CPUPerCert is the CPU time (ms) the signing process used per certificate signed:
	// cfssl's or the kpki server's, or the benchmark's own for the limit.
	CPUPerCert float64
}

// Bench starts cfssl serve and a kpki server, then runs Rounds rounds of every
// measurement in turn (limit, cfssl, kpki renew, kpki join; keep-alive, then a new
// connection per request), so that the load of the machine weighs on all of them alike.
// It writes the table of medians to out; progress gets one line a measurement. It fails
// when a request failed.
func Bench(ctx context.Context, o Options, out, progress io.Writer) ([]Line, error) {
	if o.Workers == 0 {
		o.Workers = runtime.NumCPU()
	}
	if o.Rounds < 1 {
		o.Rounds = 1
	}
	dir := o.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "kpki-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	cf, err := startCFSSL(ctx, dir, o.CFSSL)
	if err != nil {
		return nil, err
	}
	defer cf.stop()
	p, err := portsOn("127.0.0.1")
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "kpki-bench: cfssl serve at %s; starting kpki server on 127.0.0.1:%d\n", cf.url, p.supervisor)
	srv, err := startServer(ctx, dir, o.Kpki, "127.0.0.1", "bench", p, nil, o.ServerArgs...)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	tok, err := srv.agentToken()
	if err != nil {
		return nil, err
	}

	var lines []Line
	add := func(round int, name string, res load.Result, cpu float64) {
		perCert := 0.0
		if res.OK > 0 {
			perCert = cpu * 1000 / float64(res.OK)
		}
		lines = append(lines, Line{Round: round, Name: name, Result: res, CPUPerCert: perCert})
		fmt.Fprintf(progress, "kpki-bench: round %d: %s: %.0f certs/s, p50 %.2f ms, %.3f CPU ms per cert, %d errors\n",
			round, name, res.Throughput, res.Latency.P50, perCert, res.Requests-res.OK)
	}
	// cpu measures the CPU time of pid over f.
	cpu := func(pid int, f func() error) (float64, error) {
		before, err := cpuSeconds(pid)
		if err != nil {
			return 0, err
		}
		if err := f(); err != nil {
			return 0, err
		}
		after, err := cpuSeconds(pid)
		return after - before, err
	}
	for round := 1; round <= o.Rounds; round++ {
		lim, err := load.Limit(ctx, o.Requests, o.Workers, load.DefaultCert)
		if err != nil {
			return nil, err
		}
		add(round, fmt.Sprintf("limit: CSR check + sign, %d workers", o.Workers), lim, lim.CPUSeconds)
		for _, keep := range []bool{true, false} {
			var rep *load.Report
			used, err := cpu(cf.pid(), func() (err error) {
				rep, err = load.Run(ctx, load.Config{CFSSL: cf.url, Requests: o.Requests, Concurrency: o.Concurrency,
					Duration: load.MaxDuration, Scenarios: []load.Scenario{load.CFSSL}, KeepAlive: keep}, io.Discard)
				return err
			})
			if err != nil {
				return nil, err
			}
			add(round, "cfssl serve, "+conns(keep), rep.Results[0], used)
			for _, sc := range []load.Scenario{load.Renew, load.Join} {
				used, err := cpu(srv.pid(), func() (err error) {
					rep, err = load.Run(ctx, load.Config{Server: srv.url(), Token: tok, Nodes: load.DefaultNodes, Requests: o.Requests,
						Concurrency: o.Concurrency, Duration: load.MaxDuration, Scenarios: []load.Scenario{sc}, KeepAlive: keep}, io.Discard)
					return err
				})
				if err != nil {
					return nil, err
				}
				add(round, fmt.Sprintf("kpki %s, %s", sc, conns(keep)), rep.Results[0], used)
			}
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

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// writeTable prints, for every measurement, the median over the rounds of its
// throughput and of its ratios to cfssl with keep-alive and to the limit, each ratio
// taken within its round; then the ratios of every round.
func writeTable(out io.Writer, lines []Line, o Options) {
	type agg struct {
		tput, vsCFSSL, vsLimit, p50, p99, cpu []float64
		errors                                int
	}
	var names []string
	by := map[string]*agg{}
	limit, cfssl := map[int]float64{}, map[int]float64{}
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l.Name, "limit"):
			limit[l.Round] = l.Result.Throughput
		case l.Name == "cfssl serve, keep-alive":
			cfssl[l.Round] = l.Result.Throughput
		}
	}
	for _, l := range lines {
		a := by[l.Name]
		if a == nil {
			a = &agg{}
			by[l.Name] = a
			names = append(names, l.Name)
		}
		r := l.Result
		a.tput = append(a.tput, r.Throughput)
		a.vsCFSSL = append(a.vsCFSSL, r.Throughput/cfssl[l.Round])
		a.vsLimit = append(a.vsLimit, r.Throughput/limit[l.Round])
		a.p50 = append(a.p50, r.Latency.P50)
		a.p99 = append(a.p99, r.Latency.P99)
		a.cpu = append(a.cpu, l.CPUPerCert)
		a.errors += r.Requests - r.OK
	}
	fmt.Fprintf(out, "%d requests per measurement, concurrency %d over the network, %d CPUs, %d rounds (medians), %s\n\n",
		o.Requests, o.Concurrency, runtime.NumCPU(), o.Rounds, time.Now().UTC().Format(time.RFC3339))
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "measurement\tcerts/s\t÷ cfssl\t÷ limit\tp50 ms\tp99 ms\tCPU ms/cert\terrors\tper round ÷ cfssl\t")
	for _, n := range names {
		a := by[n]
		var rounds []string
		for _, v := range a.vsCFSSL {
			rounds = append(rounds, strconv.FormatFloat(v, 'f', 2, 64))
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%.3f\t%d\t%s\t\n", n, median(a.tput), median(a.vsCFSSL), median(a.vsLimit),
			median(a.p50), median(a.p99), median(a.cpu), a.errors, strings.Join(rounds, " "))
	}
	tw.Flush()
	fmt.Fprintln(out, "\nCPU ms/cert: CPU time of the signing process per certificate: cfssl serve's, the kpki server's (renew includes registering its 100 nodes), the limit's own timed part.")
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
