package datadir

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// predictableTokens makes tempToken return toks in turn (the last one for ever after).
func predictableTokens(t *testing.T, toks ...string) {
	t.Helper()
	old := tempToken
	i := 0
	tempToken = func() string {
		tok := toks[min(i, len(toks)-1)]
		i++
		return tok
	}
	t.Cleanup(func() { tempToken = old })
}

// plant puts at name a symlink to a victim file outside the data dir, and returns the
// victim's path.
func plant(t *testing.T, name string) string {
	t.Helper()
	victim := filepath.Join(t.TempDir(), "victim")
	put(t, victim, "victim", 0o644)
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, name); err != nil {
		t.Fatal(err)
	}
	return victim
}

func assertVictimUntouched(t *testing.T, victim, link string) {
	t.Helper()
	if got := readString(t, victim); got != "victim" {
		t.Errorf("the write went through the planted symlink: victim holds %q", got)
	}
	if perm(t, victim) != 0o644 {
		t.Errorf("the planted symlink's target was chmodded to %o", perm(t, victim))
	}
	if target, err := os.Readlink(link); err != nil || target != victim {
		t.Errorf("planted symlink now %q, %v", target, err)
	}
}

const plantedToken = "0123456789abcdef"

// TestPlantedTempSymlinkNotFollowed plants a symlink at the exact temp (or pending) name
// the next write will pick: the write does not follow it, takes another name, and
// succeeds.
func TestPlantedTempSymlinkNotFollowed(t *testing.T) {
	writes := []struct {
		name   string
		suffix string
		write  func(path string) error
	}{
		{"WriteFile", tmpSuffix, func(p string) error { return WriteFile(p, []byte("new key"), 0o600) }},
		{"WriteFileWithTime", tmpSuffix, func(p string) error { return WriteFileWithTime(p, []byte("new key"), 0o600, oldTime) }},
		{"WriteIfChanged", tmpSuffix, func(p string) error { _, err := WriteIfChanged(p, []byte("new key"), 0o600); return err }},
		{"WriteGroup", pendingSuffix, func(p string) error {
			return WriteGroup([]File{{Path: p, Data: []byte("new key"), Mode: 0o600}, {Path: p + ".crt", Data: []byte("new crt"), Mode: 0o600}})
		}},
	}
	for _, w := range writes {
		t.Run(w.name, func(t *testing.T) {
			root := t.TempDir()
			key := filepath.Join(root, "server", "tls", "server-ca.key")
			put(t, key, "old key", 0o600)
			put(t, key+".crt", "old crt", 0o600)
			link := tempPath(key, plantedToken, w.suffix)
			victim := plant(t, link)
			predictableTokens(t, plantedToken, "fedcba9876543210")
			if err := w.write(key); err != nil {
				t.Fatalf("write with a planted temp symlink: %v", err)
			}
			assertVictimUntouched(t, victim, link)
			if got := readString(t, key); got != "new key" {
				t.Errorf("key %q, want the new key", got)
			}
			if perm(t, key) != 0o600 {
				t.Errorf("key mode %o", perm(t, key))
			}
		})
	}

	t.Run("every candidate planted", func(t *testing.T) {
		root := t.TempDir()
		key := filepath.Join(root, "server", "tls", "client-ca.key")
		put(t, key, "old key", 0o600)
		link := tempPath(key, plantedToken, tmpSuffix)
		victim := plant(t, link)
		predictableTokens(t, plantedToken)
		err := WriteFile(key, []byte("new key"), 0o600)
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Fatalf("WriteFile = %v, want an error naming %s", err, key)
		}
		assertVictimUntouched(t, victim, link)
		if got := readString(t, key); got != "old key" {
			t.Errorf("key %q, want the old key kept", got)
		}
	})

	t.Run("planted pending symlink of the second file of a group", func(t *testing.T) {
		root := t.TempDir()
		key := filepath.Join(root, "server", "tls", "etcd", "peer-ca.key")
		crt := filepath.Join(root, "server", "tls", "etcd", "peer-ca.crt")
		put(t, key, "old key", 0o600)
		put(t, crt, "old crt", 0o600)
		link := tempPath(crt, plantedToken, pendingSuffix)
		victim := plant(t, link)
		// The key takes the first token; the certificate's first try is the planted name.
		predictableTokens(t, "1111111111111111", plantedToken, "2222222222222222")
		if err := WritePair(crt, []byte("new crt"), key, []byte("new key")); err != nil {
			t.Fatal(err)
		}
		assertVictimUntouched(t, victim, link)
		if readString(t, key) != "new key" || readString(t, crt) != "new crt" {
			t.Error("pair not written")
		}
	})
}

func TestTempNamesAreRandom(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		tok := tempToken()
		if !isToken(tok) {
			t.Fatalf("token %q is not %d hex characters", tok, 2*tokenBytes)
		}
		if seen[tok] {
			t.Fatalf("token %q drawn twice", tok)
		}
		seen[tok] = true
	}
}

// TestJournalNamesRandomPendingFiles: a committed journal names each pending file by its
// random token, Recover finds them, and an old-style journal line (a bare path) still
// means <path>.kpki-new.
func TestJournalNamesRandomPendingFiles(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "server", "tls")
	key := filepath.Join(dir, "a.key")
	crt := filepath.Join(dir, "a.crt")
	put(t, key, "old key", 0o600)
	put(t, crt, "old crt", 0o600)
	put(t, tempPath(key, "aaaaaaaaaaaaaaaa", pendingSuffix), "new key", 0o600)
	put(t, crt+pendingSuffix, "new crt", 0o600)
	// A stray pending file of the same key from an earlier, uncommitted write.
	put(t, tempPath(key, "bbbbbbbbbbbbbbbb", pendingSuffix), "stray key", 0o600)
	put(t, journalPath(key), "aaaaaaaaaaaaaaaa\t"+key+"\n"+crt+"\n", 0o600)
	if _, err := Recover(root); err != nil {
		t.Fatal(err)
	}
	if readString(t, key) != "new key" || readString(t, crt) != "new crt" {
		t.Errorf("key %q crt %q, want the journal's pending files", readString(t, key), readString(t, crt))
	}
	assertNoLeftovers(t, root)
}
