package audit

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// TestAppendEntryMatchesJSONMarshal checks that the hand-written encoding is json.Marshal's,
// byte for byte, for every field empty or set and for strings that need escaping.
func TestAppendEntryMatchesJSONMarshal(t *testing.T) {
	strs := []string{"", "issue", "node-1", "127.0.0.1:4321", "CN=system:node:a,O=system:nodes",
		`quote " and \ backslash`, "<script>&amp;</script>", "tab\tnew\nline\r\x00\x1f\x7f",
		"ünïcødé ✓", "bad utf-8 \xff\xfe", "line sep \u2028 para \u2029", "\b\f"}
	times := []time.Time{{}, time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC),
		time.Date(2026, 12, 2, 8, 0, 0, 123456789, time.UTC), time.Date(2026, 1, 2, 3, 4, 5, 6000, time.FixedZone("x", 3600+1800))}
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func() string {
		if rng.IntN(3) == 0 {
			return ""
		}
		return strs[rng.IntN(len(strs))]
	}
	for i := 0; i < 5000; i++ {
		e := Entry{Time: times[rng.IntN(len(times))], Action: pick(), Actor: pick(), RemoteAddr: pick(), File: pick(),
			Subject: pick(), Serial: pick(), Fingerprint: pick(), OldFingerprint: pick(), NotAfter: pick(), Detail: pick()}
		if i < len(strs) { // every string in every field at least once
			s := strs[i]
			e = Entry{Time: times[i%len(times)], Action: s, Actor: s, RemoteAddr: s, File: s, Subject: s, Serial: s,
				Fingerprint: s, OldFingerprint: s, NotAfter: s, Detail: s}
		}
		want, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := appendEntry([]byte("prefix"), e)
		if !ok || !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Fatalf("entry %+v:\n got %s (ok %v)\nwant prefix%s", e, got, ok, want)
		}
	}
}

// TestWriteRefusesTimeJSONRefuses checks that an entry json.Marshal cannot encode is
// refused with its error and nothing is written.
func TestWriteRefusesTimeJSONRefuses(t *testing.T) {
	dir := t.TempDir()
	l := Open(dir + "/audit.log")
	err := l.Write(Entry{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), Action: "issue"})
	if err == nil || !strings.Contains(err.Error(), "year") {
		t.Fatalf("Write of a year-10000 entry: %v, want json.Marshal's error", err)
	}
	if l.appended != 0 {
		t.Fatalf("%d lines appended after a refused entry", l.appended)
	}
}
