package load

import (
	"context"
	"crypto"
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpki/kpki/internal/agent"
	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certs"
	nodeid "github.com/kpki/kpki/internal/node"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
	"github.com/kpki/kpki/internal/trust"
)

// StormScenario is the name of the storm in kpki-load's --scenario.
const StormScenario Scenario = "storm"

// Bounds of a storm.
const (
	MaxAgents = 20000
	// StormAttempts bounds the tries of one agent's join, across the servers.
	StormAttempts = 12
)

// StormConfig describes a join storm: Agents whole agent joins, Concurrency at a time,
// each the way `kpki agent --once` joins: GET /cacerts pinned with the token (package
// trust), the server and client CA bundles over the verified connection, then one
// signing request per agent certificate with the agent's own key and node password (the
// first registers the node). Each agent claims its own node IP.
type StormConfig struct {
	// Servers are supervisor URLs; each must be, or resolve only to, loopback addresses.
	// Agent i starts with server i mod len(Servers) and, when it fails for a reason that
	// may pass (no answer, 5xx, 429), goes on with the next one.
	Servers []string
	// Token is the agent token K10<ca-hash>::node:<password>.
	Token       string
	Agents      int
	Concurrency int
	// Duration is the hard stop of the whole storm, key generation included.
	Duration   time.Duration
	NamePrefix string
	// OnJoined, when set, is called with the number of agents joined so far after each
	// join. It is called from several goroutines at once.
	OnJoined func(joined int)
}

// StormReport is the outcome of a storm.
type StormReport struct {
	Servers     []string `json:"servers"`
	Agents      int      `json:"agents"`
	Concurrency int      `json:"concurrency"`
	RunID       string   `json:"run_id"`
	Joined      int      `json:"joined"`
	Failed      int      `json:"failed"`
	// Failures counts failed joins by the kind of their last error; FirstFailures holds
	// the first message of each kind.
	Failures      map[string]int    `json:"failures,omitempty"`
	FirstFailures map[string]string `json:"first_failures,omitempty"`
	// Retries counts attempts that failed and were tried again, by kind.
	Retries map[string]int `json:"retries,omitempty"`
	// JoinedVia counts successful joins by the server that finished them.
	JoinedVia map[string]int `json:"joined_via"`
	// Certificates is the number of certificates signed and checked.
	Certificates   int     `json:"certificates"`
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	JoinsPerSecond float64 `json:"joins_per_second"`
	// Latency is over joined agents, from the first attempt to the last certificate.
	Latency Latency `json:"latency_ms"`
	// Stopped is "duration" or "interrupted" when the storm ended early.
	Stopped string `json:"stopped,omitempty"`
}

// stormAgent is one simulated agent with its keys and CSRs, made before the storm.
type stormAgent struct {
	name     string
	password string
	ip       net.IP
	keys     []crypto.Signer
	csrs     [][]byte
}

// stormError is a failed attempt: kind names it in the report, transient says whether
// another attempt may pass.
type stormError struct {
	kind      string
	transient bool
	err       error
}

func (e *stormError) Error() string { return e.err.Error() }

// agentIP is the node IP of agent i, in 10.200.0.0/16; no traffic goes to it.
func agentIP(i int) net.IP {
	return net.IPv4(10, 200, byte(i/250), byte(i%250+1))
}

// Storm runs a join storm and reports it. Failed joins are in the report, not an error;
// the error is a storm that could not start.
func Storm(ctx context.Context, cfg StormConfig, progress io.Writer) (*StormReport, error) {
	if progress == nil {
		progress = io.Discard
	}
	switch {
	case len(cfg.Servers) == 0:
		return nil, errors.New("storm: no server")
	case cfg.Agents < 1 || cfg.Agents > MaxAgents:
		return nil, fmt.Errorf("storm: %d agents is out of bounds: between 1 and %d", cfg.Agents, MaxAgents)
	case cfg.Concurrency < 1 || cfg.Concurrency > MaxConcurrency:
		return nil, fmt.Errorf("storm: concurrency %d is out of bounds: between 1 and %d", cfg.Concurrency, MaxConcurrency)
	case cfg.Duration <= 0 || cfg.Duration > MaxDuration:
		return nil, fmt.Errorf("storm: duration %v is out of bounds: more than 0 and at most %v", cfg.Duration, MaxDuration)
	}
	if cfg.NamePrefix == "" {
		cfg.NamePrefix = "kpki-storm"
	}
	var targets []target
	for _, s := range cfg.Servers {
		t, err := CheckServer(ctx, s)
		if err != nil {
			return nil, err
		}
		targets = append(targets, t)
	}
	tok, err := token.Parse(cfg.Token)
	if err != nil {
		return nil, fmt.Errorf("--token: %w", err)
	}
	if !tok.Secure() {
		return nil, errors.New("the storm needs a secure agent token, K10<ca-hash>::node:<password>: every agent pins the cluster CA with its hash")
	}
	user := tok.Username
	if user == "" {
		user = agent.DefaultUser
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	runID := hex.EncodeToString(b[:])
	if n := fmt.Sprintf("%s-%s-%d", cfg.NamePrefix, runID, MaxAgents); !nodeid.ValidName(n) {
		return nil, fmt.Errorf("name prefix %q does not make valid node names such as %q", cfg.NamePrefix, n)
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	leaves := certs.Select(certs.AgentNode, nil)
	start := time.Now()
	agents, err := makeStormAgents(ctx, cfg, runID, leaves)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "kpki-load: storm: %d agents, %d keys and CSRs each, in %v\n", len(agents), len(leaves), time.Since(start).Round(time.Millisecond))

	rep := &StormReport{Servers: cfg.Servers, Agents: cfg.Agents, Concurrency: cfg.Concurrency, RunID: runID,
		Failures: map[string]int{}, FirstFailures: map[string]string{}, Retries: map[string]int{}, JoinedVia: map[string]int{}}
	var mu sync.Mutex
	var lat []time.Duration
	var joined atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	start = time.Now()
	// Every 10 s, the joins of the last 10 s: how the rate holds up as the cluster fills.
	tickDone := make(chan struct{})
	go func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		last := int64(0)
		for {
			select {
			case <-tickDone:
				return
			case <-t.C:
				n := joined.Load()
				fmt.Fprintf(progress, "kpki-load: storm: %3.0f s: %d joined, %.1f joins/s over the last 10 s\n", time.Since(start).Seconds(), n, float64(n-last)/10)
				last = n
			}
		}
	}()
	for range min(cfg.Concurrency, cfg.Agents) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(agents) || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				via, retries, err := joinAgent(ctx, targets, i%len(targets), tok, user, agents[i], leaves)
				d := time.Since(t0)
				mu.Lock()
				for k, v := range retries {
					rep.Retries[k] += v
				}
				if err != nil {
					var se *stormError
					kind := "error"
					if errors.As(err, &se) {
						kind = se.kind
					}
					if ctx.Err() != nil {
						kind = "stopped"
					}
					rep.Failed++
					rep.Failures[kind]++
					if _, ok := rep.FirstFailures[kind]; !ok {
						rep.FirstFailures[kind] = fmt.Sprintf("agent %s: %v", agents[i].name, err)
					}
					mu.Unlock()
					continue
				}
				rep.Joined++
				rep.Certificates += len(leaves)
				rep.JoinedVia[targets[via].base]++
				lat = append(lat, d)
				mu.Unlock()
				n := int(joined.Add(1))
				if cfg.OnJoined != nil {
					cfg.OnJoined(n)
				}
			}
		})
	}
	wg.Wait()
	close(tickDone)
	elapsed := time.Since(start)
	rep.ElapsedSeconds = elapsed.Seconds()
	rep.JoinsPerSecond = float64(rep.Joined) / elapsed.Seconds()
	rep.Latency = summarize(lat)
	rep.Stopped = stopReason(ctx)
	// Agents never started count as failed: a storm is a join of every one.
	if notRun := cfg.Agents - rep.Joined - rep.Failed; notRun > 0 {
		rep.Failed += notRun
		rep.Failures["not-started"] += notRun
	}
	return rep, nil
}

// makeStormAgents generates every agent's node password, keys and CSRs on every CPU.
func makeStormAgents(ctx context.Context, cfg StormConfig, runID string, leaves []certs.Leaf) ([]stormAgent, error) {
	agents := make([]stormAgent, cfg.Agents)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(agents) {
					return
				}
				if err := ctx.Err(); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				a, err := makeStormAgent(fmt.Sprintf("%s-%s-%d", cfg.NamePrefix, runID, i), agentIP(i), leaves)
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				agents[i] = a
			}
		})
	}
	wg.Wait()
	return agents, firstErr
}

func makeStormAgent(name string, ip net.IP, leaves []certs.Leaf) (stormAgent, error) {
	pw, err := token.GeneratePassword()
	if err != nil {
		return stormAgent{}, err
	}
	a := stormAgent{name: name, password: pw, ip: ip}
	params := certs.Params{NodeName: name, NodeIPs: []net.IP{ip}}
	for _, l := range leaves {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return stormAgent{}, err
		}
		csr, err := agent.BuildCSR(key, l.Profile(params))
		if err != nil {
			return stormAgent{}, err
		}
		a.keys = append(a.keys, key)
		a.csrs = append(a.csrs, csr)
	}
	return a, nil
}

// joinAgent joins one agent, starting with server first and going on with the next
// server after a failure that may pass, at most StormAttempts times. It returns the
// index of the server that finished the join and the failed attempts by kind.
func joinAgent(ctx context.Context, targets []target, first int, tok token.Token, user string, a stormAgent, leaves []certs.Leaf) (int, map[string]int, error) {
	retries := map[string]int{}
	var err error
	for attempt := range StormAttempts {
		srv := (first + attempt) % len(targets)
		err = joinOnce(ctx, targets[srv], tok, user, a, leaves)
		if err == nil {
			return srv, retries, nil
		}
		var se *stormError
		if !errors.As(err, &se) || !se.transient || ctx.Err() != nil {
			return srv, retries, err
		}
		retries[se.kind]++
		// Every server once at once, then a pause growing to 2 s, as the agent does.
		if (attempt+1)%len(targets) == 0 {
			pause := min(time.Duration(attempt+1)*200*time.Millisecond, 2*time.Second)
			select {
			case <-ctx.Done():
				return srv, retries, err
			case <-time.After(pause):
			}
		}
	}
	return first, retries, fmt.Errorf("gave up after %d attempts: %w", StormAttempts, err)
}

// stormTransport dials only tgt's checked loopback addresses and keeps its connections
// to itself: each agent is a host of its own.
func stormTransport(tgt target) *http.Transport {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var last error
			for _, addr := range tgt.addrs {
				c, err := dialer.DialContext(ctx, "tcp", addr)
				if err == nil {
					return c, nil
				}
				last = err
			}
			return nil, last
		},
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 1,
	}
}

// joinOnce is one attempt of an agent's join against one server.
func joinOnce(ctx context.Context, tgt target, tok token.Token, user string, a stormAgent, leaves []certs.Leaf) error {
	transient := func(kind string, err error) error { return &stormError{kind: kind, transient: true, err: err} }
	tr := stormTransport(tgt)
	defer tr.CloseIdleConnections()
	pinned, err := api.FetchPinnedCA(ctx, tgt.base, tok, api.FetchOptions{Transport: tr})
	if err != nil {
		var se *api.StatusError
		if errors.As(err, &se) && se.Code >= 500 {
			return transient(strconv.Itoa(se.Code), err)
		}
		if strings.Contains(err.Error(), "cannot reach") {
			return transient("transport", err)
		}
		return &stormError{kind: "cacerts", err: err}
	}
	c, err := api.New(api.Config{URL: tgt.base, Trust: pinned, User: user, Password: tok.Password, Transport: tr, Timeout: 30 * time.Second})
	if err != nil {
		return &stormError{kind: "client", err: err}
	}
	defer c.Close()
	send := func(r api.Request) (api.Reply, error) {
		rep, err := c.Send(ctx, r)
		switch {
		case err != nil:
			return rep, transient("transport", err)
		case rep.Status == http.StatusOK:
			return rep, nil
		case rep.Status >= 500 || rep.Status == http.StatusTooManyRequests:
			return rep, transient(strconv.Itoa(rep.Status), fmt.Errorf("%s %s: %s", r.Method, r.Path, rep.StatusError()))
		}
		return rep, &stormError{kind: strconv.Itoa(rep.Status), err: fmt.Errorf("%s %s: %s", r.Method, r.Path, rep.StatusError())}
	}
	bundle := func(path string) (*pki.CA, error) {
		rep, err := send(api.Request{Method: http.MethodGet, Path: path})
		if err != nil {
			return nil, err
		}
		list, err := pki.ParseCerts(rep.Body)
		if err != nil || !list[0].IsCA {
			return nil, &stormError{kind: "bad-reply", err: fmt.Errorf("GET %s did not answer a CA bundle", path)}
		}
		return &pki.CA{Cert: list[0], Bundle: list, BundlePEM: rep.Body}, nil
	}
	serverCA, err := bundle(api.PathServerCA)
	if err != nil {
		return err
	}
	if !trust.SameCerts(serverCA.Bundle, pinned.Served) {
		return &stormError{kind: "bad-reply", err: fmt.Errorf("%s and %s differ", api.PathCACerts, api.PathServerCA)}
	}
	clientCA, err := bundle(api.PathClientCA)
	if err != nil {
		return err
	}
	cas := map[certs.CAID]*pki.CA{certs.ServerCA: pinned.CA(), certs.ClientCA: clientCA}
	h := http.Header{}
	h.Set(api.HeaderNodeName, a.name)
	h.Set(api.HeaderNodePassword, a.password)
	h.Set(api.HeaderNodeIP, a.ip.String())
	for i, l := range leaves {
		rep, err := send(api.Request{Method: http.MethodPost, Path: api.SignPath(l.Name), Body: a.csrs[i], ContentType: api.ContentTypeCSR, Header: h})
		if err != nil {
			return err
		}
		ca := cas[l.Signer]
		if ca == nil {
			return &stormError{kind: "bad-reply", err: fmt.Errorf("%s: signer %s is not a CA the agent fetches", l.Name, l.Signer)}
		}
		leaf, err := agent.CheckReply(rep.Body, a.keys[i].Public(), ca)
		if err != nil {
			return &stormError{kind: "bad-reply", err: fmt.Errorf("POST %s: %w", api.SignPath(l.Name), err)}
		}
		if want := l.Profile(certs.Params{NodeName: a.name, NodeIPs: []net.IP{a.ip}}); leaf.Subject.CommonName != want.CommonName {
			return &stormError{kind: "bad-reply", err: fmt.Errorf("POST %s: the certificate is for %q, not %q", api.SignPath(l.Name), leaf.Subject.CommonName, want.CommonName)}
		}
	}
	return nil
}

// WriteText writes the storm report.
func (r *StormReport) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "storm of %d agents, %d at a time, against %s, run %s\n", r.Agents, r.Concurrency, strings.Join(r.Servers, " "), r.RunID)
	fmt.Fprintf(&b, "joined %d, failed %d, %d certificates, %.1f s, %.1f joins/s, p50 %.0f ms, p99 %.0f ms, max %.0f ms\n",
		r.Joined, r.Failed, r.Certificates, r.ElapsedSeconds, r.JoinsPerSecond, r.Latency.P50, r.Latency.P99, r.Latency.Max)
	for _, s := range r.Servers {
		t, err := CheckServer(context.Background(), s)
		base := s
		if err == nil {
			base = t.base
		}
		fmt.Fprintf(&b, "  finished on %s: %d\n", base, r.JoinedVia[base])
	}
	for _, k := range sortedKeys(r.Retries) {
		fmt.Fprintf(&b, "  retried after %s: %d\n", k, r.Retries[k])
	}
	for _, k := range sortedKeys(r.Failures) {
		fmt.Fprintf(&b, "  failed (%s): %d, first: %s\n", k, r.Failures[k], r.FirstFailures[k])
	}
	if r.Stopped != "" {
		fmt.Fprintf(&b, "  stopped by %s\n", r.Stopped)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
