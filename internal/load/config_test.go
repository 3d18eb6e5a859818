package load

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestCheckServer(t *testing.T) {
	ok := map[string]string{
		"https://127.0.0.1:9345":        "127.0.0.1:9345",
		"https://127.0.0.1:9345/":       "127.0.0.1:9345",
		"https://127.1.2.3:1":           "127.1.2.3:1",
		"https://[::1]:9345":            "[::1]:9345",
		"https://127.0.0.1":             "127.0.0.1:9345",
		"https://[::ffff:127.0.0.1]:80": "127.0.0.1:80",
	}
	for in, want := range ok {
		tgt, err := CheckServer(context.Background(), in)
		if err != nil {
			t.Errorf("CheckServer(%q): %v", in, err)
			continue
		}
		if tgt.addrs[0] != want {
			t.Errorf("CheckServer(%q) dials %v, want %s first", in, tgt.addrs, want)
		}
	}
	refused := map[string]string{
		"https://10.0.0.1:9345":        "not a loopback address",
		"https://0.0.0.0:9345":         "not a loopback address",
		"https://[::]:9345":            "not a loopback address",
		"https://192.0.2.1:9345":       "not a loopback address",
		"https://[::ffff:8.8.8.8]:443": "not a loopback address",
		"http://127.0.0.1:9345":        "must look like",
		"127.0.0.1:9345":               "must look like",
		"https://127.0.0.1:9345/v1":    "must look like",
		"https://u:p@127.0.0.1:9345":   "must look like",
		"https://127.0.0.1:9345/?a=b":  "must look like",
	}
	for in, want := range refused {
		_, err := CheckServer(context.Background(), in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckServer(%q) = %v, want an error containing %q", in, err, want)
		}
	}
}

func TestValidateBounds(t *testing.T) {
	base := func() Config {
		return Config{Server: DefaultServer, Nodes: 10, Requests: 10, Concurrency: 2, Duration: time.Minute,
			Scenarios: []Scenario{Ping, Renew, Join}}
	}
	c := base()
	if err := c.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	if c.Cert != DefaultCert || c.NamePrefix != DefaultNamePrefix {
		t.Errorf("defaults not filled: cert %q, prefix %q", c.Cert, c.NamePrefix)
	}
	cases := []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.Requests = MaxRequests + 1 }, "--requests 100001 is out of bounds"},
		{func(c *Config) { c.Requests = 0 }, "--requests 0 is out of bounds"},
		{func(c *Config) { c.Duration = MaxDuration + time.Second }, "--duration 10m1s is out of bounds"},
		{func(c *Config) { c.Duration = 0 }, "--duration 0s is out of bounds"},
		{func(c *Config) { c.Concurrency = 0 }, "--concurrency 0 is out of bounds"},
		{func(c *Config) { c.Concurrency = MaxConcurrency + 1 }, "--concurrency 1001 is out of bounds"},
		{func(c *Config) { c.Nodes = 0 }, "--nodes 0 is out of bounds"},
		{func(c *Config) { c.Scenarios = nil }, "no scenario"},
		{func(c *Config) { c.Cert = "serving-kube-apiserver" }, "not an agent certificate"},
		{func(c *Config) { c.NamePrefix = "Load_" }, "does not make valid node names"},
	}
	for _, tc := range cases {
		c := base()
		tc.edit(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
		}
	}
	c = base()
	c.Scenarios, c.Nodes = []Scenario{Ping, Join}, 0
	if err := c.Validate(); err != nil {
		t.Errorf("--nodes matters only to renew, got %v", err)
	}
}

func TestParseScenarios(t *testing.T) {
	got, err := ParseScenarios([]string{"ping,renew", "JOIN"})
	if err != nil || len(got) != 3 || got[0] != Ping || got[1] != Renew || got[2] != Join {
		t.Fatalf("ParseScenarios = %v, %v", got, err)
	}
	for _, bad := range [][]string{{"ping,ping"}, {"sign"}, {""}, nil} {
		if _, err := ParseScenarios(bad); err == nil {
			t.Errorf("ParseScenarios(%q) accepted", bad)
		}
	}
}

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := 100; i >= 1; i-- {
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	l := summarize(lat)
	if l.P50 != 50 || l.P90 != 90 || l.P99 != 99 || l.Max != 100 {
		t.Errorf("summarize(1..100 ms) = %+v", l)
	}
	if l := summarize([]time.Duration{3 * time.Millisecond}); l.P50 != 3 || l.Max != 3 {
		t.Errorf("summarize of one = %+v", l)
	}
	if l := summarize(nil); l != (Latency{}) {
		t.Errorf("summarize(nil) = %+v", l)
	}
}

func TestCompare(t *testing.T) {
	r := &Report{Results: []Result{
		{Scenario: Ping, OK: 10, Throughput: 1000, Latency: Latency{P50: 2}},
		{Scenario: Renew, OK: 10, Throughput: 500, Latency: Latency{P50: 3}},
		{Scenario: Join, OK: 0},
	}}
	r.compare()
	if v := r.Results[1].VsPing; v == nil || v.P50 != 1.5 || v.Throughput != 0.5 {
		t.Errorf("renew vs ping = %+v, want p50 1.5, throughput 0.5", v)
	}
	if r.Results[0].VsPing != nil || r.Results[2].VsPing != nil {
		t.Error("ping itself and a scenario without success have no ratio")
	}
	var out bytes.Buffer
	if err := r.WriteText(&out); err != nil || !strings.Contains(out.String(), "p50 ÷ ping") {
		t.Errorf("WriteText: %v\n%s", err, out.String())
	}
}

func TestMainRefusesBeforeConnecting(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--server", "https://192.0.2.1:9345", "--token", "x"}, "not a loopback address"},
		{[]string{"--requests", "100001", "--token", "x"}, "--requests 100001 is out of bounds"},
		{[]string{"--duration", "11m", "--token", "x"}, "--duration 11m0s is out of bounds"},
		{[]string{"--scenario", "ping,sign", "--token", "x"}, `unknown scenario "sign"`},
		{[]string{"--server", "https://127.0.0.1:1"}, "--token or --token-file is required"},
	}
	for _, tc := range cases {
		var stdout, stderr bytes.Buffer
		code := Main(context.Background(), tc.args, &stdout, &stderr)
		if code != ExitUsage || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("kpki-load %s: exit %d, stderr %q; want exit %d and %q", strings.Join(tc.args, " "), code, stderr.String(), ExitUsage, tc.want)
		}
		if stdout.Len() != 0 {
			t.Errorf("kpki-load %s wrote to stdout: %q", strings.Join(tc.args, " "), stdout.String())
		}
	}
}
