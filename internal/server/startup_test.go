package server

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestStartupPlans(t *testing.T) {
	for _, c := range []struct {
		sit  situation
		want []step
	}{
		{situation{}, []step{stepFirstCAs, stepBuildPKI, stepStartEtcd, stepReconcile, stepSaveRecord, stepReplan}},
		{situation{join: true}, []step{stepJoin, stepReconcile, stepRequireRecord}},
		{situation{member: true}, []step{stepReconcileLocal, stepCheckCAFiles, stepBuildPKI, stepStartEtcd, stepReconcile, stepSaveRecord, stepReplan}},
		// A member on disk is a restart, whatever --server says: it does not join again.
		{situation{member: true, join: true}, []step{stepReconcileLocal, stepCheckCAFiles, stepBuildPKI, stepStartEtcd, stepReconcile, stepSaveRecord, stepReplan}},
		{situation{external: true}, []step{stepConnect, stepReconcile, stepFirstCAs, stepBuildPKI, stepSaveRecord}},
		{situation{external: true, join: true, member: true}, []step{stepConnect, stepReconcile, stepFirstCAs, stepBuildPKI, stepSaveRecord}},
	} {
		if got := startupPlan(c.sit); !slices.Equal(got, c.want) {
			t.Errorf("%s: plan\n%s\nwant\n%s", c.sit, strings.Join(asStrings(got), "\n"), strings.Join(asStrings(c.want), "\n"))
		}
	}
}

// TestStartupPlanOrder checks the rules every plan keeps (SPEC §6, the datastore wins):
// where a record may already exist, the disk is reconciled from it before any leaf is
// planned or signed; CAs are generated only where no record can have been read yet
// or after a reconcile found none; a record is stored only after the PKI is built and
// the datastore was read; the etcd member starts only with its certificates built.
func TestStartupPlanOrder(t *testing.T) {
	for _, sit := range []situation{{}, {join: true}, {member: true}, {external: true}} {
		plan := startupPlan(sit)
		at := func(s step) int { return slices.Index(plan, s) }
		if len(plan) == 0 {
			t.Fatalf("%s: empty plan", sit)
		}
		if sit.member || sit.external {
			first := at(stepReconcile)
			if at(stepReconcileLocal) >= 0 {
				first = at(stepReconcileLocal)
			}
			if first < 0 || at(stepBuildPKI) < first {
				t.Errorf("%s: the PKI is built (%d) before the disk is reconciled (%d)", sit, at(stepBuildPKI), first)
			}
			if at(stepFirstCAs) >= 0 && at(stepFirstCAs) < at(stepReconcile) {
				t.Errorf("%s: CAs may be generated before the datastore was read", sit)
			}
		}
		if sit.member && at(stepFirstCAs) >= 0 {
			t.Errorf("%s: a restart may generate CAs", sit)
		}
		if i := at(stepSaveRecord); i >= 0 && (i < at(stepBuildPKI) || i < at(stepReconcile)) {
			t.Errorf("%s: the record is stored before the PKI is built and the datastore read", sit)
		}
		if i := at(stepStartEtcd); i >= 0 && i < at(stepBuildPKI) {
			t.Errorf("%s: etcd starts before its certificates are built", sit)
		}
		seen := map[step]bool{}
		for _, s := range plan {
			if seen[s] {
				t.Errorf("%s: step %q twice", sit, s)
			}
			seen[s] = true
		}
	}
}

func TestSituationFromConfigAndDataDir(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	s, err := New(cfg, Options{Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	if sit, err := s.situation(); err != nil || sit != (situation{}) {
		t.Errorf("empty data dir: %+v %v", sit, err)
	}
	if err := os.MkdirAll(filepath.Join(s.layout.EtcdDir(), "member"), 0o700); err != nil {
		t.Fatal(err)
	}
	if sit, err := s.situation(); err != nil || sit != (situation{member: true}) {
		t.Errorf("with a member: %+v %v", sit, err)
	}
	cfg.ServerURL, cfg.Token = "https://127.0.0.1:9345", "K10"+strings.Repeat("ab", 32)+"::server:secret"
	if s, err = New(cfg, Options{Log: quietLog()}); err != nil {
		t.Fatal(err)
	}
	if sit, err := s.situation(); err != nil || sit != (situation{join: true, member: true}) {
		t.Errorf("with a member and --server: %+v %v", sit, err)
	}
	cfg = testConfig(t, t.TempDir())
	cfg.DatastoreEndpoint = "https://127.0.0.1:2379"
	if s, err = New(cfg, Options{Log: quietLog()}); err != nil {
		t.Fatal(err)
	}
	if sit, err := s.situation(); err != nil || sit != (situation{external: true}) {
		t.Errorf("external datastore: %+v %v", sit, err)
	}
}

func asStrings(steps []step) []string {
	out := make([]string, len(steps))
	for i, s := range steps {
		out[i] = string(s)
	}
	return out
}
