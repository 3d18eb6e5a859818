package audit

import (
	"encoding/json"
	"sync"
	"time"
)

// appendEntry appends e as json.Marshal encodes it, byte for byte, without reflection
// or the allocations of json.Marshal; ok is false when e needs json.Marshal (a time
// json.Marshal refuses), which then gives the error.
func appendEntry(b []byte, e Entry) ([]byte, bool) {
	if y := e.Time.Year(); y < 0 || y > 9999 {
		return b, false
	}
	b = append(b, `{"time":"`...)
	b = e.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","action":`...)
	b = appendString(b, e.Action)
	b = append(b, `,"actor":`...)
	b = appendString(b, e.Actor)
	b = appendField(b, `,"remote_addr":`, e.RemoteAddr)
	b = appendField(b, `,"file":`, e.File)
	b = appendField(b, `,"subject":`, e.Subject)
	b = appendField(b, `,"serial":`, e.Serial)
	b = appendField(b, `,"sha256_fingerprint":`, e.Fingerprint)
	b = appendField(b, `,"old_sha256_fingerprint":`, e.OldFingerprint)
	b = appendField(b, `,"not_after":`, e.NotAfter)
	b = appendField(b, `,"detail":`, e.Detail)
	return append(b, '}'), true
}

// appendField appends an omitempty string field.
func appendField(b []byte, key, v string) []byte {
	if v == "" {
		return b
	}
	return appendString(append(b, key...), v)
}

// appendString appends s as a JSON string the way encoding/json does. Printable ASCII
// that json.Marshal writes as it is (everything but '"', '\\' and the HTML characters
// '<', '>' and '&', which it escapes) is copied; any other string goes through
// json.Marshal, so that its escaping is the standard library's own.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// lineBuf holds the encoding of one entry while it is appended to the log.
var lineBuf = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}
