package rotation

import (
	"testing"
	"time"

	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/pki"
)

// rotated is the fixture's record after a cross-signed rotation of the server CA and a
// service.key that appends a new key to the current one.
func rotated(t *testing.T, f *fixture) *bootstrap.Record {
	t.Helper()
	bundle, key, _ := f.crossSigned(t)
	newSvc, err := f.iss.NewRSAKey(2048)
	if err != nil {
		t.Fatal(err)
	}
	staged := map[string][]byte{"ServerCA": bundle, "ServerCAKey": keyPEM(t, key), "ServiceKey": append(keyPEM(t, newSvc), f.svcPEM...)}
	if r := Validate(f.rec, staged, t0, false); !r.OK() {
		t.Fatalf("rotation refused: %v", r.Errors)
	}
	next, err := Apply(f.rec, staged, t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	return next
}

func TestRollbackOfACrossSignedRotation(t *testing.T) {
	f := newFixture(t)
	cur := rotated(t, f)
	kept := Kept(f.rec)
	if _, ok := kept.Get(bootstrap.PasswdField); ok {
		t.Error("Kept holds the passwd")
	}
	for _, field := range Fields() {
		if got, want := mustGet(t, kept, field), mustGet(t, f.rec, field); string(got.Content) != string(want.Content) || !got.Timestamp.Equal(want.Timestamp) {
			t.Errorf("Kept %s differs from the record", field)
		}
	}
	r := ValidateRollback(cur, kept, t0.Add(time.Hour), false)
	if !r.OK() {
		t.Fatalf("rollback refused: %v", r.Errors)
	}
	if !r.TokensChange || r.NewCAHash != f.oldHash {
		t.Errorf("rollback hashes %s -> %s (change %v); want back to %s", r.OldCAHash, r.NewCAHash, r.TokensChange, f.oldHash)
	}
	files := map[string]bool{}
	for _, c := range r.Changes {
		files[c.File] = true
	}
	for _, want := range []string{"tls/server-ca.crt", "tls/server-ca.key", "tls/service.key"} {
		if !files[want] {
			t.Errorf("rollback changes %v lack %s", files, want)
		}
	}
	if len(r.Changes) != 3 {
		t.Errorf("rollback changes %+v; want the three rotated files only", r.Changes)
	}
	back, err := Apply(cur, Staged(kept), t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range Fields() {
		if string(mustGet(t, back, field).Content) != string(mustGet(t, f.rec, field).Content) {
			t.Errorf("after the rollback %s is not the original", field)
		}
	}

	// Rolling back the rollback rolls forward again.
	fwd := ValidateRollback(back, Kept(cur), t0.Add(2*time.Hour), false)
	if !fwd.OK() {
		t.Fatalf("roll forward refused: %v", fwd.Errors)
	}
	if fwd.NewCAHash != r.OldCAHash {
		t.Errorf("roll forward to %s, want the rotated %s", fwd.NewCAHash, r.OldCAHash)
	}
}

func TestRollbackRefusals(t *testing.T) {
	f := newFixture(t)
	other := newRoot(t, f.iss, "unrelated-root")
	otherSub := newSub(t, f.iss, other, "unrelated-ca")
	unrelatedSvc, err := f.iss.NewRSAKey(2048)
	if err != nil {
		t.Fatal(err)
	}
	// A forced rotation to an unrelated root, and to an unrelated service key.
	staged := map[string][]byte{"ServerCA": pki.EncodeCerts(otherSub.cert, other.cert), "ServerCAKey": keyPEM(t, otherSub.key)}
	forced, err := Apply(f.rec, staged, t0)
	if err != nil {
		t.Fatal(err)
	}
	svcForced, err := Apply(f.rec, map[string][]byte{"ServiceKey": keyPEM(t, unrelatedSvc)}, t0)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name      string
		cur, kept *bootstrap.Record
		want      []string
	}{
		{"back from an unrelated root", forced, Kept(f.rec), []string{"tls/server-ca.crt", "kept CA does not chain to the current CA", "--force"}},
		{"back from an unrelated service key", svcForced, Kept(f.rec), []string{"tls/service.key", "tokens would stop verifying"}},
		{"nothing kept differs", f.rec, Kept(f.rec), []string{"nothing to roll back"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := ValidateRollback(c.cur, c.kept, t0.Add(time.Hour), false)
			if r.OK() || !hasError(r, c.want...) {
				t.Fatalf("errors %q, want one with %q", r.Errors, c.want)
			}
		})
	}
	// --force skips continuity only.
	for _, cur := range []*bootstrap.Record{forced, svcForced} {
		if r := ValidateRollback(cur, Kept(f.rec), t0.Add(time.Hour), true); !r.OK() {
			t.Errorf("forced rollback refused: %v", r.Errors)
		}
	}
	if r := ValidateRollback(f.rec, Kept(f.rec), t0, true); r.OK() {
		t.Error("a forced rollback to identical files was accepted")
	}
	// A kept CA that expired meanwhile is refused, with force too.
	late := f.server.cert.NotAfter.Add(time.Hour)
	if r := ValidateRollback(forced, Kept(f.rec), late, true); r.OK() || !hasError(r, "tls/server-ca.crt", "expired") {
		t.Errorf("rollback to an expired CA: %q", r.Errors)
	}
}
