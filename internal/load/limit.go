package load

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/csrcheck"
	"github.com/kpki/kpki/internal/pki"
)

// Limit is the in-process limit of signing on this machine: workers goroutines check
// requests CSRs (csrcheck.Check, as the server does) and sign a leaf of cert for each
// with a P-256 CA, with no network, no datastore and no audit. Keys and CSRs are made
// before the timed part.
func Limit(ctx context.Context, requests, workers int, cert string) (Result, error) {
	if requests < 1 || requests > MaxRequests {
		return Result{}, fmt.Errorf("limit: %d requests is out of bounds: between 1 and %d", requests, MaxRequests)
	}
	if workers < 1 || workers > MaxConcurrency {
		return Result{}, fmt.Errorf("limit: %d workers is out of bounds: between 1 and %d", workers, MaxConcurrency)
	}
	leaf, err := agentLeaf(cert)
	if err != nil {
		return Result{}, err
	}
	issuer := pki.NewIssuer(nil, nil)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Result{}, err
	}
	caCert, err := issuer.SelfSignedCA(key, "kpki-load-limit-ca", 24*time.Hour)
	if err != nil {
		return Result{}, err
	}
	ca := &pki.CA{Cert: caCert, Key: key, Bundle: []*x509.Certificate{caCert}}
	r := &runner{cfg: Config{NamePrefix: DefaultNamePrefix}, leaf: leaf}
	nodes, err := r.makeNodes(ctx, "limit", Join, requests)
	if err != nil {
		return Result{}, err
	}
	var next atomic.Int64
	lat := make([][]time.Duration, workers)
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	cpu0 := selfCPU()
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= requests || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				csr, err := csrcheck.Check(nodes[i].csr)
				if err == nil {
					_, err = issuer.SignLeaf(ca, csr.PublicKey, leaf.Profile(certs.Params{NodeName: nodes[i].name}), time.Hour)
				}
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := selfCPU() - cpu0
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		return Result{}, fmt.Errorf("limit: %w", firstErr)
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) != requests {
		return Result{}, errors.New("limit: not every request was signed")
	}
	res := Result{Scenario: "limit", Requests: requests, OK: requests, Errors: map[string]int{}, Stopped: "requests",
		ElapsedSeconds: elapsed.Seconds(), Latency: summarize(all), CPUSeconds: cpu.Seconds()}
	res.Throughput = float64(requests) / elapsed.Seconds()
	return res, nil
}

// selfCPU is the CPU time (user and system) this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
