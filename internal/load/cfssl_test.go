package load

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestCheckCFSSL(t *testing.T) {
	ok := map[string]string{
		"http://127.0.0.1:8888":  "http://127.0.0.1:8888",
		"http://127.0.0.2:8888/": "http://127.0.0.2:8888",
		"http://[::1]:1":         "http://[::1]:1",
	}
	for in, want := range ok {
		if got, err := checkCFSSL(in); err != nil || got != want {
			t.Errorf("checkCFSSL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	refused := map[string]string{
		"http://10.0.0.1:8888":     "not a loopback IP address",
		"http://localhost:8888":    "not a loopback IP address",
		"https://127.0.0.1:8888":   "must look like",
		"http://127.0.0.1:8888/a":  "must look like",
		"http://u:p@127.0.0.1:888": "must look like",
	}
	for in, want := range refused {
		if _, err := checkCFSSL(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("checkCFSSL(%q) = %v, want an error containing %q", in, err, want)
		}
	}
	cfg := Config{Requests: 1, Concurrency: 1, Duration: time.Minute, Scenarios: []Scenario{CFSSL}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "needs --cfssl") {
		t.Errorf("cfssl scenario without --cfssl: %v", err)
	}
	if _, err := Run(context.Background(), Config{CFSSL: "http://192.0.2.1:8888", Requests: 1, Concurrency: 1,
		Duration: time.Minute, Scenarios: []Scenario{CFSSL}}, nil); err == nil || !strings.Contains(err.Error(), "not a loopback") {
		t.Errorf("Run against a non-loopback cfssl: %v", err)
	}
}

// TestLimit signs in process and counts every certificate.
func TestLimit(t *testing.T) {
	res, err := Limit(context.Background(), 40, 2, DefaultCert)
	if err != nil {
		t.Fatal(err)
	}
	if res.OK != 40 || res.Throughput <= 0 || res.Latency.P50 <= 0 {
		t.Errorf("limit: %d ok, %.1f/s, p50 %.3f ms", res.OK, res.Throughput, res.Latency.P50)
	}
	if _, err := Limit(context.Background(), 0, 2, DefaultCert); err == nil {
		t.Error("Limit with 0 requests succeeded")
	}
}
