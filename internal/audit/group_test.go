package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TestConcurrentWritersShareFsyncs checks that every entry of a burst of concurrent
// writers lands whole in the file, and that the burst needed fewer writes and fsyncs than
// entries.
func TestConcurrentWritersShareFsyncs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := Open(path)
	const writers, each = 16, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if err := l.Write(Entry{Action: "issue", Actor: fmt.Sprintf("w%d-%d", w, i)}); err != nil {
					errs <- err
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		seen[e.Actor] = true
	}
	if len(seen) != writers*each {
		t.Fatalf("%d distinct entries in the file, want %d", len(seen), writers*each)
	}
	if l.syncs >= writers*each {
		t.Errorf("%d fsyncs for %d entries: concurrent writers did not share them", l.syncs, writers*each)
	}
	if l.writes >= writers*each {
		t.Errorf("%d writes for %d entries: concurrent writers did not share them", l.writes, writers*each)
	}
	t.Logf("%d entries, %d writes, %d fsyncs", writers*each, l.writes, l.syncs)
}

func TestWriteAfterCloseReopens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := Open(path)
	for i := 0; i < 2; i++ {
		if err := l.Write(Entry{Action: "a"}); err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(splitLines(b)); n != 2 {
		t.Fatalf("%d lines, want 2", n)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
}

func splitLines(b []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}
