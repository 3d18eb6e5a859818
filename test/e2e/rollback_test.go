package e2e

import (
	"bytes"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// keptPrefix is where the datastore keeps the CA files a rotate-ca replaced.
const keptPrefix = "/kpki/bootstrap-previous/"

// rotatedFiles maps the bootstrap fields rotate-ca takes to their paths under <dd>/server.
func rotatedFiles() map[string]string {
	out := map[string]string{}
	for field, rel := range bootstrapFiles {
		if field != "PasswdFile" {
			out[field] = rel
		}
	}
	return out
}

// filesUnder reads every rotated file under dir (a server dir or a staging dir), by field.
func filesUnder(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for field, rel := range rotatedFiles() {
		out[field] = readFile(t, filepath.Join(dir, rel))
	}
	return out
}

// assertRecordFiles checks that rec holds want (by field) for every rotated file.
func assertRecordFiles(t *testing.T, what string, rec bootstrapRecord, want map[string][]byte) {
	t.Helper()
	for field, content := range want {
		if !bytes.Equal(rec[field].Content, content) {
			t.Errorf("%s: %s differs", what, field)
		}
	}
}

// keptRecord decrypts the kept record of s with the password of its token file.
func keptRecord(t *testing.T, s *kpkiServer) bootstrapRecord {
	t.Helper()
	pass := passphrase(readTokenFile(t, s.DataDir, "token"))
	key := keptPrefix + strings.TrimPrefix(bootstrapKey(pass), "/bootstrap/")
	kept := embeddedPrefix(t, s, keptPrefix)
	v, ok := kept[key]
	if !ok || len(kept) != 1 {
		t.Fatalf("kept keys %v, want %s alone", keyNames(kept), key)
	}
	rec := decodeRecord(t, pass, v.value)
	if _, ok := rec["PasswdFile"]; ok {
		t.Error("the kept record holds the passwd")
	}
	return rec
}

// assertDiskFiles checks that the server dir of dd holds want (by field).
func assertDiskFiles(t *testing.T, what, dd string, want map[string][]byte) {
	t.Helper()
	for field, content := range want {
		if !bytes.Equal(readFile(t, filepath.Join(dd, "server", rotatedFiles()[field])), content) {
			t.Errorf("%s: %s on disk differs", what, rotatedFiles()[field])
		}
	}
}

// TestRotateCARollback runs the real binary through rotate-ca and rotate-ca --rollback on
// the embedded etcd: with nothing kept the rollback fails and changes nothing; rotate-ca
// keeps the files it replaced; a rollback dry run changes nothing; the rollback restores
// the original CA files (in the datastore, and on disk after a restart) and prints the
// original tokens; a second rollback rolls forward; concurrent rollbacks that lose the
// compare-and-swap fail with the conflict and change nothing.
func TestRotateCARollback(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "data")
	s := startServer(t, dd)
	s.WaitReady(t)
	orig := filesUnder(t, filepath.Join(dd, "server"))
	origServer, origAgent := readTokenFile(t, dd, "token"), readTokenFile(t, dd, "agent-token")
	rollback := func(flags ...string) cmdResult {
		t.Helper()
		return runKpki(t, nil, append([]string{"certificate", "rotate-ca", "--rollback", "--server", s.SupervisorURL(), "--data-dir", dd}, flags...)...)
	}

	t.Run("nothing kept", func(t *testing.T) {
		b := takeBaseline(t, s)
		assertRefused(t, rollback(), anyOf("nothing to roll back"))
		assertRefused(t, rollback("--path", dd), anyOf("takes no --path"))
		b.assertUnchanged(t, s, "rotate-ca --rollback with nothing kept")
		if kept := embeddedPrefix(t, s, keptPrefix); len(kept) != 0 {
			t.Errorf("kept keys %v after a refused rollback", keyNames(kept))
		}
	})

	kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", dd)
	stage := filepath.Join(dd, "server", "rotate-ca")
	rotated := filesUnder(t, stage)
	assertRotateCASaved(t, rotateCA(t, s, stage))
	s = applyRotation(t, s)
	rec, _ := currentRecord(t, s)
	assertRecordFiles(t, "record after rotate-ca", rec, rotated)
	assertRecordFiles(t, "kept after rotate-ca", keptRecord(t, s), orig)

	t.Run("dry run", func(t *testing.T) {
		b := takeBaseline(t, s)
		kept := embeddedPrefix(t, s, keptPrefix)
		r := rollback("--dry-run")
		if r.code != 0 || !strings.Contains(r.stdout, "dry run: every check passed; nothing was written") ||
			!strings.Contains(r.stdout, "tokens would change: CA hash ") || !strings.Contains(r.stdout, "-> "+tokenCAHash(t, origServer)) ||
			!strings.Contains(r.stdout, "would change: tls/server-ca.crt") {
			t.Fatalf("rotate-ca --rollback --dry-run:\n%s", r)
		}
		b.assertUnchanged(t, s, "rotate-ca --rollback --dry-run")
		if after := embeddedPrefix(t, s, keptPrefix); !reflect.DeepEqual(after, kept) {
			t.Errorf("the dry run changed the kept files: %v, before %v", keyNames(after), keyNames(kept))
		}
	})

	auditBefore := len(auditEntries(t, dd))
	r := rollback("-o", "json")
	if r.code != 0 {
		t.Fatalf("rotate-ca --rollback -o json:\n%s", r)
	}
	var back rotateCAJSON
	decodeStrict(t, "rotate-ca --rollback -o json", r.stdout, &back)
	if back.DryRun || !back.Saved || !back.TokensChange || back.NewCAHash != tokenCAHash(t, origServer) ||
		back.ServerToken != origServer || back.AgentToken != origAgent || len(back.NotStaged) != 0 {
		t.Errorf("rollback object %+v; want the original tokens back", back)
	}
	rolled := 0
	for _, e := range auditEntries(t, dd)[auditBefore:] {
		if e["action"] == "rotate-ca-rollback" && e["actor"] == "server" {
			rolled++
		}
	}
	if rolled != len(back.Changes) || rolled != len(orig) {
		t.Errorf("%d rotate-ca-rollback audit entries for %d changes of %d files", rolled, len(back.Changes), len(orig))
	}
	rec, _ = currentRecord(t, s)
	assertRecordFiles(t, "record after the rollback", rec, orig)
	assertRecordFiles(t, "kept after the rollback", keptRecord(t, s), rotated)
	s = applyRotation(t, s)
	assertDiskFiles(t, "after the rollback, applied live", dd, orig)
	if tok := readTokenFile(t, dd, "token"); tok != origServer {
		t.Errorf("server token after the rollback, applied live, carries %s, want the original %s", tokenCAHash(t, tok), tokenCAHash(t, origServer))
	}

	// A second rollback rolls forward.
	r = rollback()
	if r.code != 0 || !strings.Contains(r.stdout, "kept CA files restored to the datastore") || !strings.Contains(r.stdout, "server token: K10") {
		t.Fatalf("second rollback:\n%s", r)
	}
	s = applyRotation(t, s)
	assertDiskFiles(t, "after the second rollback, applied live", dd, rotated)
	assertRecordFiles(t, "kept after the second rollback", keptRecord(t, s), orig)

	t.Run("concurrent rollbacks", func(t *testing.T) {
		// Rollbacks started together read the same revision; one writes, the others lose
		// the compare-and-swap. Each success flips the record between the two sets.
		const rounds, together = 6, 6
		state := rotated
		other := func(m map[string][]byte) map[string][]byte {
			if reflect.DeepEqual(m, orig) {
				return rotated
			}
			return orig
		}
		conflicts := 0
		for round := 0; round < rounds && conflicts == 0; round++ {
			results := make([]cmdResult, together)
			var wg sync.WaitGroup
			for i := range together {
				wg.Go(func() { results[i] = rollback("-o", "json") })
			}
			wg.Wait()
			for _, r := range results {
				switch {
				case r.code == 0:
					state = other(state)
				case strings.Contains(r.stderr, "changed while this rollback was checked; nothing was written"):
					conflicts++
				default:
					t.Errorf("a concurrent rollback failed otherwise:\n%s", r)
				}
			}
			rec, _ := currentRecord(t, s)
			assertRecordFiles(t, "record after concurrent rollbacks", rec, state)
			assertRecordFiles(t, "kept after concurrent rollbacks", keptRecord(t, s), other(state))
		}
		if conflicts == 0 {
			t.Errorf("%d rounds of %d concurrent rollbacks and not one compare-and-swap conflict", rounds, together)
		}
	})
	s.Stop(t)
}
