package server

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/rollout"
)

// storedReport reads the report stored under node; ok is false when there is none.
func storedReport(t *testing.T, s *Server, node string) (rollout.Report, bool) {
	t.Helper()
	v, _, err := s.store.Get(context.Background(), rollout.Key(node))
	if err != nil {
		return rollout.Report{}, false
	}
	r, err := rollout.Parse(rollout.Key(node), v)
	if err != nil {
		t.Fatal(err)
	}
	return r, true
}

func TestServerRecordsItsStatusAndCountsGenerations(t *testing.T) {
	dir := t.TempDir()
	fc := clock.NewFake(time.Now().Truncate(time.Second))
	cfg := testConfig(t, dir)
	s := startServer(t, cfg, fc, nil)
	defer s.Stop()

	var own rollout.Report
	waitFor(t, func() bool { var ok bool; own, ok = storedReport(t, s, "node-a"); return ok })
	files := map[certs.CAID][]byte{}
	for _, c := range certs.CAs {
		b, err := os.ReadFile(filepath.Join(dir, "server", "tls", c.CertFile))
		if err != nil {
			t.Fatal(err)
		}
		files[c.ID] = b
	}
	cur, err := rollout.CurrentOf(files)
	if err != nil {
		t.Fatal(err)
	}
	if own.Role != rollout.RoleServer || own.Generation != cur.Generation || own.ServerGeneration != cur.ServerGeneration || !own.ReportedAt.Equal(fc.Now()) {
		t.Errorf("own status %+v, want generations %+v at %s", own, cur, fc.Now())
	}
	if want := len(certs.CAs) + len(certs.Select(certs.ServerNode, nil)); len(own.Certificates) != want {
		t.Errorf("%d certificates reported, want %d", len(own.Certificates), want)
	}
	for _, c := range own.Certificates {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(c.File)))
		if err != nil {
			t.Fatalf("%s: %v", c.File, err)
		}
		list, err := pki.ParseCerts(b)
		if err != nil || !list[0].NotAfter.Equal(c.NotAfter) {
			t.Errorf("%s: not_after %s, the file's certificate %v", c.File, c.NotAfter, err)
		}
	}

	// Reports stored by any server are counted by generation and role, as they change.
	gauge := s.Metrics().CAGenerationNodes
	waitFor(t, func() bool { return testutil.ToFloat64(gauge.WithLabelValues(cur.Generation, rollout.RoleServer)) == 1 })
	put := func(node, gen string) {
		b, _ := json.Marshal(rollout.Report{Node: node, Role: rollout.RoleAgent, Generation: gen, ReportedAt: fc.Now()})
		if err := s.store.Put(context.Background(), rollout.Key(node), b); err != nil {
			t.Fatal(err)
		}
	}
	old := "00000000000000aa"
	put("worker-1", old)
	put("worker-2", old)
	waitFor(t, func() bool { return testutil.ToFloat64(gauge.WithLabelValues(old, rollout.RoleAgent)) == 2 })
	put("worker-1", cur.Generation)
	waitFor(t, func() bool {
		return testutil.ToFloat64(gauge.WithLabelValues(old, rollout.RoleAgent)) == 1 &&
			testutil.ToFloat64(gauge.WithLabelValues(cur.Generation, rollout.RoleAgent)) == 1
	})
	if _, err := s.store.Client().Delete(context.Background(), rollout.Key("worker-2")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return testutil.CollectAndCount(gauge) == 2 })

	// A renewal pass records the status again.
	fc.Advance(time.Hour)
	if err := s.RenewNow(); err != nil {
		t.Fatal(err)
	}
	if again, _ := storedReport(t, s, "node-a"); !again.ReportedAt.Equal(fc.Now()) {
		t.Errorf("status after a renewal pass reported at %s, want %s", again.ReportedAt, fc.Now())
	}
}
