package load

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

func TestStormRefusals(t *testing.T) {
	tok := "K10" + strings.Repeat("0", 64) + "::node:pw"
	base := StormConfig{Servers: []string{"https://127.0.0.1:9345"}, Token: tok, Agents: 10, Concurrency: 2, Duration: time.Minute}
	cases := []struct {
		edit func(*StormConfig)
		want string
	}{
		{func(c *StormConfig) { c.Agents = MaxAgents + 1 }, "agents is out of bounds"},
		{func(c *StormConfig) { c.Agents = 0 }, "agents is out of bounds"},
		{func(c *StormConfig) { c.Concurrency = 0 }, "concurrency 0 is out of bounds"},
		{func(c *StormConfig) { c.Duration = MaxDuration + time.Second }, "duration 10m1s is out of bounds"},
		{func(c *StormConfig) { c.Servers = nil }, "no server"},
		{func(c *StormConfig) { c.Servers = append(c.Servers, "https://192.0.2.1:9345") }, "is not a loopback address"},
		{func(c *StormConfig) { c.Token = "node:pw" }, "secure agent token"},
		{func(c *StormConfig) { c.NamePrefix = "Bad_Prefix" }, "does not make valid node names"},
	}
	for _, tc := range cases {
		c := base
		c.Servers = append([]string{}, base.Servers...)
		tc.edit(&c)
		if _, err := Storm(context.Background(), c, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Storm = %v, want an error containing %q", err, tc.want)
		}
	}
	var stderr bytes.Buffer
	if code := Main(context.Background(), []string{"--scenario", "storm,ping", "--token", tok}, io.Discard, &stderr); code != ExitUsage ||
		!strings.Contains(stderr.String(), "runs alone") {
		t.Errorf("storm with another scenario: exit %d, %q", code, stderr.String())
	}
	stderr.Reset()
	if code := Main(context.Background(), []string{"--scenario", "renew", "--server", "https://127.0.0.1:1,https://127.0.0.2:1", "--token", tok}, io.Discard, &stderr); code != ExitUsage ||
		!strings.Contains(stderr.String(), "only the storm scenario") {
		t.Errorf("two servers for renew: exit %d, %q", code, stderr.String())
	}
}
