// Package audit writes kpki's audit log: one JSON object a line for every issuance,
// renewal, rotation, CA rotation and token rotation. Entries carry subjects, serials and
// fingerprints, never keys, passwords or tokens.
package audit

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Entry is one audit record.
type Entry struct {
	Time           time.Time `json:"time"`
	Action         string    `json:"action"`
	Actor          string    `json:"actor"`
	RemoteAddr     string    `json:"remote_addr,omitempty"`
	File           string    `json:"file,omitempty"`
	Subject        string    `json:"subject,omitempty"`
	Serial         string    `json:"serial,omitempty"`
	Fingerprint    string    `json:"sha256_fingerprint,omitempty"`
	OldFingerprint string    `json:"old_sha256_fingerprint,omitempty"`
	NotAfter       string    `json:"not_after,omitempty"`
	Detail         string    `json:"detail,omitempty"`
}

// Log appends entries to a file.
type Log struct {
	mu   sync.Mutex
	path string
}

// Open returns a log appending to path (created 0600 on first write).
func Open(path string) *Log { return &Log{path: path} }

// Path is the log file's path.
func (l *Log) Path() string { return l.path }

// Write appends e.
func (l *Log) Write(e Entry) error {
	if l == nil {
		return nil
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(l.path), 0o700); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("audit log: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("audit log: %w", err)
	}
	return f.Close()
}

// Fingerprint is the SHA-256 of a certificate's DER, hex.
func Fingerprint(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	s := sha256.Sum256(c.Raw)
	return hex.EncodeToString(s[:])
}

// CertEntry fills the certificate fields of an entry.
func CertEntry(action, actor, file string, c, old *x509.Certificate) Entry {
	return Entry{
		Action:         action,
		Actor:          actor,
		File:           file,
		Subject:        c.Subject.String(),
		Serial:         c.SerialNumber.Text(16),
		Fingerprint:    Fingerprint(c),
		OldFingerprint: Fingerprint(old),
		NotAfter:       c.NotAfter.UTC().Format(time.RFC3339),
	}
}
