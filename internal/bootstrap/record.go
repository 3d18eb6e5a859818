package bootstrap

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"slices"
	"time"

	"github.com/kpki/kpki/internal/certs"
)

// File is one file held in the bootstrap record. Its JSON form is
// {"Timestamp": RFC 3339 with nanoseconds, "Content": standard base64}.
type File struct {
	Timestamp time.Time
	Content   []byte
}

// FileSpec maps a record field to its path relative to the data dir.
type FileSpec struct {
	Field string
	Path  string // slash-separated, relative to the data dir
	Mode  os.FileMode
}

// PasswdField is the record field of <dd>/server/cred/passwd.
const PasswdField = "PasswdFile"

// TLSDir is the server tls dir, relative to the data dir, slash-separated.
const TLSDir = "server/tls"

// Files lists the record fields kpki knows, in the order they are reconciled
// and reported: each CA's certificate and key (the certs.CAs table), the
// service-account keys, the passwd file.
var Files = files()

func files() []FileSpec {
	var out []FileSpec
	for _, c := range certs.CAs {
		out = append(out,
			FileSpec{c.CertField, path.Join(TLSDir, c.CertFile), 0o600},
			FileSpec{c.KeyField, path.Join(TLSDir, c.KeyFile), 0o600})
	}
	return append(out,
		FileSpec{certs.ServiceKeyField, path.Join(TLSDir, certs.ServiceKeyFile), 0o600},
		FileSpec{PasswdField, "server/cred/passwd", 0o600})
}

// knownField reports whether field is one of Files.
func knownField(field string) bool {
	return slices.ContainsFunc(Files, func(s FileSpec) bool { return s.Field == field })
}

// Record is the plaintext of a bootstrap value: a JSON object mapping field
// names to files. Fields kpki does not know (such as K3s's IPSECKey or
// EncryptionConfig) are kept verbatim and written back by Marshal.
type Record struct {
	known   map[string]File
	unknown map[string]json.RawMessage
}

// NewRecord returns an empty record.
func NewRecord() *Record {
	return &Record{known: map[string]File{}, unknown: map[string]json.RawMessage{}}
}

// ParseRecord parses a decrypted bootstrap value. Every field listed in Files
// must be a {"Timestamp", "Content"} object; any other field is kept as raw
// JSON whatever its shape.
func ParseRecord(plaintext []byte) (*Record, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(plaintext, &fields); err != nil {
		return nil, fmt.Errorf("parse bootstrap record: %w", err)
	}
	if fields == nil {
		return nil, fmt.Errorf("parse bootstrap record: not a JSON object")
	}
	r := NewRecord()
	for name, raw := range fields {
		if !knownField(name) {
			r.unknown[name] = raw
			continue
		}
		if trimmed := bytes.TrimSpace(raw); len(trimmed) == 0 || trimmed[0] != '{' {
			return nil, fmt.Errorf("parse bootstrap record: field %s is not an object", name)
		}
		var f File
		if err := json.Unmarshal(raw, &f); err != nil {
			return nil, fmt.Errorf("parse bootstrap record: field %s: %w", name, err)
		}
		r.known[name] = f
	}
	return r, nil
}

// Marshal returns the record as a JSON object with its keys sorted, the
// encoding RKE2/K3s produce for the same data.
func (r *Record) Marshal() ([]byte, error) {
	out := make(map[string]json.RawMessage, len(r.known)+len(r.unknown))
	for name, raw := range r.unknown {
		out[name] = raw
	}
	for name, f := range r.known {
		b, err := json.Marshal(f)
		if err != nil {
			return nil, fmt.Errorf("marshal bootstrap record: field %s: %w", name, err)
		}
		out[name] = b
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("marshal bootstrap record: %w", err)
	}
	return b, nil
}

// Get returns a field stored with Set or parsed as one of Files. Fields kept
// verbatim from another writer are not returned.
func (r *Record) Get(field string) (File, bool) {
	if r == nil {
		return File{}, false
	}
	f, ok := r.known[field]
	if !ok {
		return File{}, false
	}
	return File{Timestamp: f.Timestamp, Content: bytes.Clone(f.Content)}, true
}

// Set stores f under field, replacing any earlier value of that field.
func (r *Record) Set(field string, f File) {
	if r.known == nil {
		r.known = map[string]File{}
	}
	delete(r.unknown, field)
	r.known[field] = File{Timestamp: f.Timestamp, Content: bytes.Clone(f.Content)}
}
