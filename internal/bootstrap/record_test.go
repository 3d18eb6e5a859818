package bootstrap

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestRecordRoundTripPreservesUnknown(t *testing.T) {
	in := readFixture(t, "plaintext.json")
	var asMap map[string]json.RawMessage
	if err := json.Unmarshal(in, &asMap); err != nil {
		t.Fatal(err)
	}
	// Unknown fields need not be File-shaped.
	asMap["EncryptionConfig"] = json.RawMessage(`"ZW5jcnlwdGlvbg=="`)
	asMap["FutureField"] = json.RawMessage(`{"nested": [1, 2.5, null, true], "x": {"y": "z"}}`)
	in, err := json.Marshal(asMap)
	if err != nil {
		t.Fatal(err)
	}

	rec, err := ParseRecord(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := rec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	rec2, err := ParseRecord(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, spec := range Files {
		a, _ := rec.Get(spec.Field)
		b, ok := rec2.Get(spec.Field)
		if !ok || !a.Timestamp.Equal(b.Timestamp) || !bytes.Equal(a.Content, b.Content) {
			t.Errorf("%s changed across Marshal/ParseRecord", spec.Field)
		}
	}
	var outMap map[string]json.RawMessage
	if err := json.Unmarshal(out, &outMap); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"IPSECKey", "EncryptionConfig", "FutureField"} {
		if !jsonEqual(t, outMap[name], asMap[name]) {
			t.Errorf("%s: got %s, want %s", name, outMap[name], asMap[name])
		}
		if _, ok := rec2.Get(name); ok {
			t.Errorf("Get(%s) reports a field kpki does not know", name)
		}
	}
	if got := string(outMap["IPSECKey"]); got != `{"Timestamp":"2026-01-15T10:20:30.123456789Z","Content":""}` {
		t.Errorf("IPSECKey re-marshalled as %s", got)
	}
	if len(outMap) != len(asMap) {
		t.Errorf("Marshal wrote %d fields, want %d", len(outMap), len(asMap))
	}
}

// TestMarshalMatchesGoMap checks Marshal against the encoding RKE2/K3s use:
// json.Marshal of map[string]struct{Timestamp time.Time; Content []byte}.
func TestMarshalMatchesGoMap(t *testing.T) {
	type k3sFile struct {
		Timestamp time.Time
		Content   []byte
	}
	var want map[string]k3sFile
	if err := json.Unmarshal(readFixture(t, "plaintext.json"), &want); err != nil {
		t.Fatal(err)
	}
	wantJSON, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := ParseRecord(readFixture(t, "plaintext.json"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := rec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, wantJSON) {
		t.Fatalf("Marshal differs from Go map encoding:\n got %.200s\nwant %.200s", got, wantJSON)
	}
}

func TestRecordTimestampNanoseconds(t *testing.T) {
	zone := time.FixedZone("X", 5*3600+30*60)
	tests := []time.Time{
		time.Date(2026, 1, 15, 10, 20, 30, 123456789, time.UTC),
		time.Date(2026, 1, 15, 10, 20, 30, 1, time.UTC),
		time.Date(2026, 1, 15, 10, 20, 30, 123456789, zone),
		time.Date(2026, 1, 15, 10, 20, 30, 0, time.UTC),
		time.Now(),
	}
	for _, ts := range tests {
		rec := NewRecord()
		rec.Set("ServerCA", File{Timestamp: ts, Content: []byte("pem")})
		b, err := rec.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if want := ts.Format(time.RFC3339Nano); !strings.Contains(string(b), `"Timestamp":"`+want+`"`) {
			t.Errorf("Marshal = %s, want Timestamp %s", b, want)
		}
		back, err := ParseRecord(b)
		if err != nil {
			t.Fatal(err)
		}
		f, ok := back.Get("ServerCA")
		if !ok || !f.Timestamp.Equal(ts) || string(f.Content) != "pem" {
			t.Errorf("round trip of %v gave %v %q", ts, f.Timestamp, f.Content)
		}
	}
}

func TestRecordMarshalSortedKeys(t *testing.T) {
	rec := NewRecord()
	ts := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, name := range []string{"ServiceKey", "ClientCA", "ServerCA"} {
		rec.Set(name, File{Timestamp: ts, Content: []byte(name)})
	}
	rec.unknown["IPSECKey"] = json.RawMessage(`{"Timestamp":"2026-01-01T00:00:00Z","Content":""}`)
	b, err := rec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"ClientCA":{"Timestamp":"2026-01-01T00:00:00Z","Content":"Q2xpZW50Q0E="},` +
		`"IPSECKey":{"Timestamp":"2026-01-01T00:00:00Z","Content":""},` +
		`"ServerCA":{"Timestamp":"2026-01-01T00:00:00Z","Content":"U2VydmVyQ0E="},` +
		`"ServiceKey":{"Timestamp":"2026-01-01T00:00:00Z","Content":"U2VydmljZUtleQ=="}}`
	if string(b) != want {
		t.Fatalf("Marshal =\n%s\nwant\n%s", b, want)
	}
}

func TestRecordSetGet(t *testing.T) {
	rec, err := ParseRecord(readFixture(t, "plaintext.json"))
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Date(2027, 2, 3, 4, 5, 6, 7, time.UTC)
	content := []byte("new")
	rec.Set("ServerCA", File{Timestamp: ts, Content: content})
	content[0] = 'X'
	f, ok := rec.Get("ServerCA")
	if !ok || !f.Timestamp.Equal(ts) || string(f.Content) != "new" {
		t.Fatalf("Get after Set = %v %q, %v", f.Timestamp, f.Content, ok)
	}
	f.Content[0] = 'Y'
	if f2, _ := rec.Get("ServerCA"); string(f2.Content) != "new" {
		t.Fatal("Get returned the record's own slice")
	}

	// Setting a field kept verbatim replaces the verbatim copy.
	rec.Set("IPSECKey", File{Timestamp: ts, Content: []byte("k")})
	b, err := rec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if got := string(m["IPSECKey"]); got != `{"Timestamp":"2027-02-03T04:05:06.000000007Z","Content":"aw=="}` {
		t.Fatalf("IPSECKey = %s", got)
	}

	if _, ok := NewRecord().Get("ServerCA"); ok {
		t.Fatal("empty record has ServerCA")
	}
	var nilRec *Record
	if _, ok := nilRec.Get("ServerCA"); ok {
		t.Fatal("nil record has ServerCA")
	}
	var zero Record
	zero.Set("ServerCA", File{Content: []byte("x")})
	if _, err := zero.Marshal(); err != nil {
		t.Fatal(err)
	}
}

func TestParseRecordErrors(t *testing.T) {
	tests := []struct {
		name, in, wantMsg string
	}{
		{"not json", `not json`, "parse bootstrap record"},
		{"empty", ``, "parse bootstrap record"},
		{"null", `null`, "not a JSON object"},
		{"array", `[1,2]`, "parse bootstrap record"},
		{"known field is a string", `{"ServerCA":"AAAA"}`, "field ServerCA is not an object"},
		{"known field is null", `{"ServerCAKey":null}`, "field ServerCAKey is not an object"},
		{"bad base64 content", `{"ClientCA":{"Timestamp":"2026-01-15T10:20:30Z","Content":"!!"}}`, "field ClientCA"},
		{"bad timestamp", `{"PasswdFile":{"Timestamp":"yesterday","Content":""}}`, "field PasswdFile"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRecord([]byte(tc.in))
			if err == nil {
				t.Fatal("ParseRecord succeeded")
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("error %q does not contain %q", err, tc.wantMsg)
			}
		})
	}
}

func TestParseRecordEmptyObject(t *testing.T) {
	rec, err := ParseRecord([]byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	b, err := rec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{}` {
		t.Fatalf("Marshal = %s", b)
	}
}

func TestFilesTable(t *testing.T) {
	seenField := map[string]bool{}
	seenPath := map[string]bool{}
	for _, spec := range Files {
		if spec.Mode != 0o600 {
			t.Errorf("%s: mode %v, want 0600", spec.Field, spec.Mode)
		}
		if seenField[spec.Field] || seenPath[spec.Path] {
			t.Errorf("%s: duplicate field or path", spec.Field)
		}
		seenField[spec.Field], seenPath[spec.Path] = true, true
	}
	if len(Files) != 12 {
		t.Errorf("Files has %d entries, want 12", len(Files))
	}
}
