package load

import (
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the outcome of a run.
type Report struct {
	Server string `json:"server,omitempty"`
	// CFSSL is the cfssl serve of the cfssl scenario.
	CFSSL       string `json:"cfssl,omitempty"`
	Cert        string `json:"cert"`
	Requests    int    `json:"requests_per_scenario"`
	Concurrency int    `json:"concurrency"`
	// Nodes is the number of registered nodes the renew scenario signs for.
	Nodes int `json:"renew_nodes,omitempty"`
	// Connections is "new" (one TLS connection per request) or "reused".
	Connections string `json:"connections"`
	// Protocol is the HTTP version the server answered with.
	Protocol string `json:"protocol,omitempty"`
	// RunID is in every node name of this run.
	RunID string `json:"run_id"`
	// Stopped is "duration" or "interrupted" when the run ended early, else empty.
	Stopped string `json:"stopped,omitempty"`
	// NotRun lists the scenarios the early stop left out.
	NotRun  []Scenario `json:"not_run,omitempty"`
	Results []Result   `json:"results"`
}

// Result is what one scenario measured.
type Result struct {
	Scenario Scenario `json:"scenario"`
	// Requests counts the answered requests: OK plus errors.
	Requests int `json:"requests"`
	OK       int `json:"ok"`
	// Errors counts failures by HTTP status, "transport" or "bad-reply".
	Errors map[string]int `json:"errors"`
	// FirstErrors holds the first message of each kind of failure.
	FirstErrors map[string]string `json:"first_errors,omitempty"`
	// Interrupted counts requests cut by the hard stop; they are in no other count.
	Interrupted int `json:"interrupted"`
	// Stopped is "requests" when every request was sent, else "duration" or "interrupted".
	Stopped        string  `json:"stopped"`
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	// Throughput is successful requests per second of the scenario's wall time.
	Throughput float64 `json:"throughput_rps"`
	// Latency is over successful requests, from sending to the last byte of the answer.
	Latency Latency `json:"latency_ms"`
	// CPUSeconds is the CPU time the in-process limit used in its timed part; 0 for
	// the scenarios sent over the network.
	CPUSeconds float64 `json:"cpu_seconds,omitempty"`
	// VsPing compares the scenario with ping's result of the same run.
	VsPing *Ratio `json:"vs_ping,omitempty"`
}

// Latency holds percentiles in milliseconds.
type Latency struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Ratio is a scenario's figures divided by ping's.
type Ratio struct {
	// P50 is the scenario's median latency over ping's: how many times slower.
	P50 float64 `json:"p50"`
	// Throughput is the scenario's throughput over ping's: the fraction it keeps.
	Throughput float64 `json:"throughput"`
}

// ErrorCount is the number of failed requests over all scenarios.
func (r *Report) ErrorCount() int {
	n := 0
	for _, res := range r.Results {
		for _, v := range res.Errors {
			n += v
		}
	}
	return n
}

// Result returns the result of scenario s.
func (r *Report) Result(s Scenario) (Result, bool) {
	for _, res := range r.Results {
		if res.Scenario == s {
			return res, true
		}
	}
	return Result{}, false
}

// compare fills VsPing of every other scenario when ping ran and succeeded.
func (r *Report) compare() {
	base, ok := r.Result(Ping)
	if !ok || base.OK == 0 || base.Latency.P50 <= 0 || base.Throughput <= 0 {
		return
	}
	for i := range r.Results {
		res := &r.Results[i]
		if res.Scenario == Ping || res.OK == 0 {
			continue
		}
		res.VsPing = &Ratio{
			P50:        res.Latency.P50 / base.Latency.P50,
			Throughput: res.Throughput / base.Throughput,
		}
	}
}

// percentile returns the nearest-rank p-th percentile of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

func summarize(lat []time.Duration) Latency {
	sorted := slices.Clone(lat)
	slices.Sort(sorted)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return Latency{
		P50: ms(percentile(sorted, 50)),
		P90: ms(percentile(sorted, 90)),
		P99: ms(percentile(sorted, 99)),
		Max: ms(percentile(sorted, 100)),
	}
}

// WriteText writes r as a table, then the errors.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	conns := "a new TLS connection per request"
	if r.Connections == "reused" {
		conns = "connections reused"
	}
	proto := ""
	if r.Protocol != "" {
		proto = ", " + r.Protocol
	}
	target := r.Server
	if r.CFSSL != "" {
		target = strings.TrimPrefix(target+" and cfssl "+r.CFSSL, " and ")
	}
	fmt.Fprintf(&b, "%s, %s, %d requests per scenario, concurrency %d, %s%s", target, r.Cert, r.Requests, r.Concurrency, conns, proto)
	if r.Nodes > 0 {
		fmt.Fprintf(&b, ", %d renew nodes", r.Nodes)
	}
	fmt.Fprintf(&b, ", run %s\n\n", r.RunID)

	ratios := false
	for _, res := range r.Results {
		ratios = ratios || res.VsPing != nil
	}
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := "scenario\trequests\tok\terrors\treq/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\t"
	if ratios {
		header += "p50 ÷ ping\treq/s ÷ ping\t"
	}
	fmt.Fprintln(tw, header)
	for _, res := range r.Results {
		line := fmt.Sprintf("%s\t%d\t%d\t%d\t%.1f\t%.2f\t%.2f\t%.2f\t%.2f\t",
			res.Scenario, res.Requests, res.OK, res.Requests-res.OK, res.Throughput,
			res.Latency.P50, res.Latency.P90, res.Latency.P99, res.Latency.Max)
		if ratios {
			if res.VsPing != nil {
				line += fmt.Sprintf("%.2f\t%.2f\t", res.VsPing.P50, res.VsPing.Throughput)
			} else {
				line += "\t\t"
			}
		}
		fmt.Fprintln(tw, line)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, res := range r.Results {
		kinds := make([]string, 0, len(res.Errors))
		for k := range res.Errors {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		for _, k := range kinds {
			fmt.Fprintf(&b, "%s: %d × %s, first: %s\n", res.Scenario, res.Errors[k], k, res.FirstErrors[k])
		}
		if res.Stopped != "requests" {
			fmt.Fprintf(&b, "%s: stopped by %s after %d of %d requests (%d cut in flight)\n",
				res.Scenario, res.Stopped, res.Requests, r.Requests, res.Interrupted)
		}
	}
	if len(r.NotRun) > 0 {
		names := make([]string, len(r.NotRun))
		for i, s := range r.NotRun {
			names[i] = string(s)
		}
		fmt.Fprintf(&b, "stopped by %s; not run: %s\n", r.Stopped, strings.Join(names, ", "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}
