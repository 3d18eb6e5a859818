package load

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpki/kpki/internal/agent"
	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
	"github.com/kpki/kpki/internal/trust"
)

const (
	requestTimeout = 60 * time.Second
	maxReply       = 1 << 20
	pemCertPrefix  = "-----BEGIN CERTIFICATE-----"
)

// node is one simulated agent: its name, its node password and the CSR it sends.
type node struct {
	name     string
	password string
	csr      []byte
}

// runner holds what the scenarios share.
type runner struct {
	cfg    Config
	tgt    target
	user   string
	pw     string
	leaf   certs.Leaf
	client *http.Client
	// proto is the protocol of the first successful answer.
	proto     string
	protoOnce sync.Once
	join      []node
	renew     []node
	cfsslCSRs []node
	trust     *trust.Trust
	// cfssl is the checked base URL of the cfssl serve, cfsslHTTP its client.
	cfssl     string
	cfsslHTTP *http.Client
}

// Run checks cfg, pins the cluster CA with the token, generates every key, registers the
// renew nodes, then runs each scenario in turn. It stops at cfg.Duration (set-up
// included) or when ctx ends, and reports what it measured until then. progress, when
// not nil, receives one line per set-up step.
func Run(ctx context.Context, cfg Config, progress io.Writer) (*Report, error) {
	if progress == nil {
		progress = io.Discard
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	leaf, _ := agentLeaf(cfg.Cert)
	r := &runner{cfg: cfg, leaf: leaf}
	for _, s := range cfg.Scenarios {
		if s == CFSSL {
			r.cfssl, _ = checkCFSSL(cfg.CFSSL)
			r.cfsslHTTP = cfsslClient(cfg)
			defer r.cfsslHTTP.CloseIdleConnections()
		}
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	if cfg.needsKPKI() {
		if err := r.connect(ctx); err != nil {
			return nil, err
		}
		defer r.client.CloseIdleConnections()
	}

	rep := &Report{
		Server:      r.tgt.base,
		CFSSL:       r.cfssl,
		Cert:        cfg.Cert,
		Requests:    cfg.Requests,
		Concurrency: cfg.Concurrency,
		Connections: "new",
	}
	if cfg.KeepAlive {
		rep.Connections = "reused"
	}
	if err := r.prepare(ctx, progress, rep); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("stopped before the first timed request (--duration %v or interrupted): %w", cfg.Duration, err)
		}
		return nil, err
	}

	for i, s := range cfg.Scenarios {
		if ctx.Err() != nil {
			rep.NotRun = cfg.Scenarios[i:]
			break
		}
		fmt.Fprintf(progress, "kpki-load: %s: %d requests, concurrency %d\n", s, cfg.Requests, cfg.Concurrency)
		rep.Results = append(rep.Results, r.timed(ctx, s))
	}
	for _, res := range rep.Results {
		if res.Stopped != "requests" {
			rep.Stopped = res.Stopped
		}
	}
	if len(rep.NotRun) > 0 {
		rep.Stopped = stopReason(ctx)
	}
	rep.Protocol = r.proto
	rep.compare()
	return rep, nil
}

// connect checks the server address and the token, pins the cluster CA with the token and
// checks the token's credentials.
func (r *runner) connect(ctx context.Context) error {
	tgt, err := CheckServer(ctx, r.cfg.Server)
	if err != nil {
		return err
	}
	tok, err := token.Parse(r.cfg.Token)
	if err != nil {
		return fmt.Errorf("--token: %w", err)
	}
	if !tok.Secure() {
		return errors.New("--token must be a secure agent token, K10<ca-hash>::node:<password>: kpki-load pins the cluster CA with its hash")
	}
	r.tgt, r.user, r.pw = tgt, tok.Username, tok.Password
	if r.user == "" {
		r.user = agent.DefaultUser
	}
	// The CA is fetched from the checked loopback address; every later connection is
	// verified against the anchor the token names, for the URL's host name.
	tr, err := api.FetchPinnedCA(ctx, tgt.pinnedBase(), tok, api.FetchOptions{})
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("stopped while fetching %s%s: %w", tgt.pinnedBase(), api.PathCACerts, err)
		}
		return err
	}
	r.trust = tr
	r.client = newClient(tgt, tr, r.cfg)
	if err := r.checkCredentials(ctx); err != nil {
		r.client.CloseIdleConnections()
		return err
	}
	return nil
}

// stopReason names why ctx ended, or "" while it is live.
func stopReason(ctx context.Context) string {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return "duration"
	case ctx.Err() != nil:
		return "interrupted"
	}
	return ""
}

func newClient(tgt target, ca *trust.Trust, cfg Config) *http.Client {
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	tr := &http.Transport{
		// Every connection goes to the checked loopback addresses, whatever the URL says.
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var last error
			for _, a := range tgt.addrs {
				c, err := dialer.DialContext(ctx, "tcp", a)
				if err == nil {
					return c, nil
				}
				last = err
			}
			return nil, last
		},
		TLSClientConfig:     ca.TLSConfig(tgt.host),
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   true,
		DisableKeepAlives:   !cfg.KeepAlive,
		MaxIdleConnsPerHost: cfg.Concurrency,
	}
	return &http.Client{
		Transport: tr,
		Timeout:   requestTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// answer is a response read in full.
type answer struct {
	status int
	body   []byte
	proto  string
}

func (r *runner) do(c *http.Client, req *http.Request) (answer, error) {
	resp, err := c.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return answer{}, err
	}
	return answer{status: resp.StatusCode, body: body, proto: resp.Proto}, nil
}

func (r *runner) ping(ctx context.Context, c *http.Client) (answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.tgt.base+api.PathPing, nil)
	if err != nil {
		return answer{}, err
	}
	return r.do(c, req)
}

func (r *runner) sign(ctx context.Context, c *http.Client, n node) (answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.tgt.base+api.SignPath(r.leaf.Name), bytes.NewReader(n.csr))
	if err != nil {
		return answer{}, err
	}
	req.SetBasicAuth(r.user, r.pw)
	req.Header.Set(api.HeaderContentType, api.ContentTypeCSR)
	req.Header.Set(api.HeaderNodeName, n.name)
	req.Header.Set(api.HeaderNodePassword, n.password)
	return r.do(c, req)
}

// checkCredentials fetches the signing CA's bundle with the token's credentials, so that
// a refused token is one clear error rather than a run of 401s.
func (r *runner) checkCredentials(ctx context.Context) error {
	path := api.PathClientCA
	if r.leaf.Signer == certs.ServerCA {
		path = api.PathServerCA
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.tgt.base+path, nil)
	if err != nil {
		return err
	}
	req.SetBasicAuth(r.user, r.pw)
	a, err := r.do(r.client, req)
	if err != nil {
		return fmt.Errorf("GET %s%s: %w", r.tgt.base, path, err)
	}
	if a.status == http.StatusUnauthorized {
		return fmt.Errorf("the server at %s refused the token's credentials: %s", r.tgt.base, errorText(a))
	}
	if a.status != http.StatusOK {
		return fmt.Errorf("GET %s%s answered %s", r.tgt.base, path, errorText(a))
	}
	if _, err := pki.ParseCerts(a.body); err != nil {
		return fmt.Errorf("GET %s%s did not answer with certificates: %v", r.tgt.base, path, err)
	}
	return nil
}

// errorText is the status and the server's message of a failed answer.
func errorText(a answer) string {
	msg := strings.TrimSpace(string(a.body))
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	return strings.TrimSpace(fmt.Sprintf("%d %s %s", a.status, http.StatusText(a.status), msg))
}

// prepare generates every key and CSR, then registers the renew nodes. Nothing of it is
// timed.
func (r *runner) prepare(ctx context.Context, progress io.Writer, rep *Report) error {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	runID := hex.EncodeToString(b[:])
	rep.RunID = runID
	var want []Scenario
	for _, s := range r.cfg.Scenarios {
		switch s {
		case Join:
			want = append(want, Join)
		case Renew:
			want = append(want, Renew)
			rep.Nodes = r.cfg.Nodes
		case CFSSL:
			want = append(want, CFSSL)
		}
	}
	for _, s := range want {
		count := r.cfg.Requests
		if s == Renew {
			count = r.cfg.Nodes
		}
		start := time.Now()
		nodes, err := r.makeNodes(ctx, runID, s, count)
		if err != nil {
			return err
		}
		fmt.Fprintf(progress, "kpki-load: %s: %d keys and CSRs for nodes %s-%s-%s-* in %v\n",
			s, count, r.cfg.NamePrefix, runID, s, time.Since(start).Round(time.Millisecond))
		switch s {
		case Join:
			r.join = nodes
		case Renew:
			r.renew = nodes
		case CFSSL:
			r.cfsslCSRs = nodes
		}
	}
	if r.renew != nil {
		start := time.Now()
		if err := r.register(ctx, r.renew); err != nil {
			return fmt.Errorf("register the %d renew nodes: %w", len(r.renew), err)
		}
		fmt.Fprintf(progress, "kpki-load: renew: registered %d nodes in %v\n", len(r.renew), time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// makeNodes generates count nodes, each with its own key, node password and CSR, on
// every CPU.
func (r *runner) makeNodes(ctx context.Context, runID string, s Scenario, count int) ([]node, error) {
	nodes := make([]node, count)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= count {
					return
				}
				if err := ctx.Err(); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				n, err := r.makeNode(nodeName(r.cfg.NamePrefix, runID, s, i))
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				nodes[i] = n
			}
		})
	}
	wg.Wait()
	return nodes, firstErr
}

func (r *runner) makeNode(name string) (node, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return node{}, err
	}
	pw, err := token.GeneratePassword()
	if err != nil {
		return node{}, err
	}
	csr, err := agent.BuildCSR(key, r.leaf.Profile(certs.Params{NodeName: name}))
	if err != nil {
		return node{}, err
	}
	return node{name: name, password: pw, csr: csr}, nil
}

// register signs once for every node, which stores its node password.
func (r *runner) register(ctx context.Context, nodes []node) error {
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range min(r.cfg.Concurrency, len(nodes)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(nodes) || ctx.Err() != nil {
					return
				}
				a, err := r.sign(ctx, r.client, nodes[i])
				if err == nil && a.status != http.StatusOK {
					err = errors.New(errorText(a))
				}
				if err != nil {
					once.Do(func() { firstErr = fmt.Errorf("node %s: %w", nodes[i].name, err) })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

// workerClient is the client of one worker of scenario s: with keep-alive a client of
// its own, which keeps one connection; else the shared one, which keeps none.
func (r *runner) workerClient(s Scenario) *http.Client {
	switch {
	case s == CFSSL && r.cfg.KeepAlive:
		return cfsslClient(r.cfg)
	case s == CFSSL:
		return r.cfsslHTTP
	case r.cfg.KeepAlive:
		return newClient(r.tgt, r.trust, r.cfg)
	}
	return r.client
}

// tally is one worker's share of a timed run.
type tally struct {
	latencies   []time.Duration
	errors      map[string]int
	first       map[string]string
	interrupted int
	issued      int
	// client is the worker's own: with keep-alive, each worker holds its connection,
	// as each agent of a fleet does.
	client *http.Client
}

func (t *tally) fail(kind, msg string) {
	t.errors[kind]++
	if _, ok := t.first[kind]; !ok {
		t.first[kind] = msg
	}
}

// timed runs cfg.Requests requests of scenario s with cfg.Concurrency workers.
func (r *runner) timed(ctx context.Context, s Scenario) Result {
	total := r.cfg.Requests
	var next atomic.Int64
	tallies := make([]*tally, min(r.cfg.Concurrency, total))
	start := time.Now()
	var wg sync.WaitGroup
	for w := range tallies {
		t := &tally{errors: map[string]int{}, first: map[string]string{}, client: r.workerClient(s)}
		tallies[w] = t
		defer t.client.CloseIdleConnections()
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= total || ctx.Err() != nil {
					return
				}
				t.issued++
				r.one(ctx, s, i, t)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)

	res := Result{Scenario: s, Errors: map[string]int{}, FirstErrors: map[string]string{}}
	var lat []time.Duration
	issued := 0
	for _, t := range tallies {
		lat = append(lat, t.latencies...)
		issued += t.issued
		res.Interrupted += t.interrupted
		for k, v := range t.errors {
			res.Errors[k] += v
			res.Requests += v
		}
		for k, v := range t.first {
			if _, ok := res.FirstErrors[k]; !ok {
				res.FirstErrors[k] = v
			}
		}
	}
	res.OK = len(lat)
	res.Requests += res.OK
	res.Stopped = "requests"
	if issued < total || res.Interrupted > 0 {
		res.Stopped = stopReason(ctx)
	}
	res.ElapsedSeconds = elapsed.Seconds()
	if elapsed > 0 {
		res.Throughput = float64(res.OK) / elapsed.Seconds()
	}
	res.Latency = summarize(lat)
	return res
}

// one sends request i of scenario s and records its outcome in t.
func (r *runner) one(ctx context.Context, s Scenario, i int, t *tally) {
	var n node
	start := time.Now()
	var a answer
	var err error
	switch s {
	case Ping:
		a, err = r.ping(ctx, t.client)
	case Renew:
		n = r.renew[i%len(r.renew)]
		a, err = r.sign(ctx, t.client, n)
	case Join:
		n = r.join[i]
		a, err = r.sign(ctx, t.client, n)
	case CFSSL:
		n = r.cfsslCSRs[i]
		a, err = r.cfsslSign(ctx, t.client, n)
	}
	d := time.Since(start)
	switch {
	case err != nil && ctx.Err() != nil:
		t.interrupted++
		return
	case err != nil:
		t.fail("transport", err.Error())
		return
	case a.status != http.StatusOK:
		t.fail(strconv.Itoa(a.status), errorText(a))
		return
	case s == Ping && string(a.body) != "pong":
		t.fail("bad-reply", fmt.Sprintf("GET %s answered %q, not pong", api.PathPing, truncate(a.body)))
		return
	case s != Ping && !bytes.HasPrefix(a.body, []byte(pemCertPrefix)):
		t.fail("bad-reply", fmt.Sprintf("the signing answer is not a PEM certificate: %q", truncate(a.body)))
		return
	}
	r.protoOnce.Do(func() { r.proto = a.proto })
	t.latencies = append(t.latencies, d)
	if s != Ping && s != CFSSL && r.cfg.OnIssued != nil {
		r.cfg.OnIssued(Issued{Scenario: s, Node: n.name, CSR: n.csr, Reply: a.body})
	}
}

func truncate(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "…"
	}
	return string(b)
}
