package bootstrap

import (
	"bytes"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// sameJSON reports whether a and b hold the same JSON value (numbers compared as
// written, not as float64).
func sameJSON(a, b []byte) bool {
	decode := func(b []byte) (any, bool) {
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			return nil, false
		}
		return v, true
	}
	x, ok1 := decode(a)
	y, ok2 := decode(b)
	return ok1 && ok2 && reflect.DeepEqual(x, y)
}

// FuzzParseRecord checks the bootstrap record parser on arbitrary plaintexts: it never
// panics; a record it accepts marshals, and the marshalled form parses to the same
// record and marshals to the same bytes; every field it does not know comes back with
// the same JSON value, and no field is lost or added.
func FuzzParseRecord(f *testing.F) {
	f.Add(readFixtureTB(f, "plaintext.json"))
	for _, s := range []string{
		`{}`, `null`, `[]`, `"x"`, `1`, ``, `{`,
		`{"ServerCA":{"Timestamp":"2026-01-15T10:20:30.123456789Z","Content":"YQ=="}}`,
		`{"ServerCA":{"Timestamp":"2026-01-15T10:20:30+05:30","Content":null}}`,
		`{"ServerCA":{}}`,
		`{"ServerCA":null}`,
		`{"ServerCA":"x"}`,
		`{"ServerCA":[1]}`,
		`{"ServerCA":{"Timestamp":"yesterday"}}`,
		`{"ServerCA":{"Content":"not base64"}}`,
		`{"ServerCA":{"timestamp":"2026-01-15T10:20:30Z","CONTENT":"YQ==","Extra":1}}`,
		`{"serverca":{"Timestamp":1}}`,
		`{"ServerCA":{"Content":"YQ=="},"ServerCA":{"Content":"Yg=="}}`,
		`{"IPSECKey":{"Timestamp":"2026-01-15T10:20:30Z","Content":""},"EncryptionConfig":[1,2.50,1e400,"<&>"]}`,
		`{"Unknown":{"nested":{"deep":[null,true,false,-0,"\u00e9\ud83d\ude00"]}}}`,
		"{\"K\xff\":1}",
		` { "PasswdFile" : { "Timestamp" : "0001-01-01T00:00:00Z" , "Content" : "" } } `,
		`{"ServiceKey":{"Timestamp":"9999-12-31T23:59:59.999999999-23:59","Content":"AA=="}}`,
	} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRecord(data)
		if err != nil {
			if r != nil {
				t.Fatal("ParseRecord returned a record with its error")
			}
			if !strings.HasPrefix(err.Error(), "parse bootstrap record: ") {
				t.Fatalf("error %q does not say what failed", err)
			}
			return
		}
		enc, err := r.Marshal()
		if err != nil {
			t.Fatalf("a parsed record does not marshal: %v", err)
		}
		r2, err := ParseRecord(enc)
		if err != nil {
			t.Fatalf("marshalled record %q does not parse: %v", enc, err)
		}
		enc2, err := r2.Marshal()
		if err != nil {
			t.Fatalf("re-parsed record does not marshal: %v", err)
		}
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("marshal is not stable:\n%s\n%s", enc, enc2)
		}
		for _, spec := range Files {
			a, okA := r.Get(spec.Field)
			b, okB := r2.Get(spec.Field)
			if okA != okB || !a.Timestamp.Equal(b.Timestamp) || !bytes.Equal(a.Content, b.Content) {
				t.Fatalf("field %s changed through marshal: %v %+v, then %v %+v", spec.Field, okA, a, okB, b)
			}
		}

		var in, out map[string]json.RawMessage
		if err := json.Unmarshal(data, &in); err != nil {
			t.Fatalf("input parsed as a record but not as a JSON object: %v", err)
		}
		if err := json.Unmarshal(enc, &out); err != nil {
			t.Fatalf("marshalled record is not a JSON object: %v", err)
		}
		inKeys, outKeys := mapKeys(in), mapKeys(out)
		if !slices.Equal(inKeys, outKeys) {
			t.Fatalf("fields %q became %q", inKeys, outKeys)
		}
		for name, raw := range in {
			if knownField(name) {
				if _, ok := r.Get(name); !ok {
					t.Fatalf("known field %s parsed but cannot be read", name)
				}
				continue
			}
			if _, ok := r.Get(name); ok {
				t.Fatalf("unknown field %s is readable with Get", name)
			}
			if !sameJSON(raw, out[name]) {
				t.Fatalf("unknown field %s = %s came back as %s", name, raw, out[name])
			}
		}
	})
}

func mapKeys(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
