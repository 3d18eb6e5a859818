// Package audit writes kpki's audit log: one JSON object a line for every issuance,
// renewal, rotation, CA rotation and token rotation. Entries carry subjects, serials and
// fingerprints, never keys, passwords or tokens.
package audit

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

// Log appends entries to a file. Concurrent writers share fsyncs (group commit): each
// Write returns once its own line is durable, and one fsync makes durable every line
// appended before it, so a burst of issuances does not queue on one fsync each.
type Log struct {
	mu       sync.Mutex
	cond     *sync.Cond
	path     string
	f        *os.File
	appended int64 // lines written to the file
	synced   int64 // lines known durable
	syncing  bool
	syncs    int64 // fsyncs done, for tests
}

// Open returns a log appending to path (created 0600 on first write).
func Open(path string) *Log {
	l := &Log{path: path}
	l.cond = sync.NewCond(&l.mu)
	return l
}

// Path is the log file's path.
func (l *Log) Path() string { return l.path }

// Write appends e and returns once it is on disk.
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
	if l.f == nil {
		if err := os.MkdirAll(filepath.Dir(l.path), 0o700); err != nil {
			return fmt.Errorf("audit log: %w", err)
		}
		f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("audit log: %w", err)
		}
		l.f = f
	}
	if _, err := l.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	l.appended++
	mine := l.appended
	for l.synced < mine {
		if l.syncing {
			l.cond.Wait()
			continue
		}
		if l.f == nil {
			return errors.New("audit log: closed before the entry was synced")
		}
		l.syncing = true
		target, f := l.appended, l.f
		l.mu.Unlock()
		err := f.Sync()
		l.mu.Lock()
		l.syncs++
		l.syncing = false
		l.cond.Broadcast()
		if err != nil {
			return fmt.Errorf("audit log: %w", err)
		}
		if target > l.synced {
			l.synced = target
		}
	}
	return nil
}

// Close closes the file; a later Write opens it again.
func (l *Log) Close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.syncing {
		l.cond.Wait()
	}
	if l.f == nil {
		return nil
	}
	err := l.f.Sync()
	if err == nil {
		l.synced = l.appended
	}
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	l.f = nil
	l.cond.Broadcast()
	return err
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
		Serial:         SerialHex(c),
		Fingerprint:    Fingerprint(c),
		OldFingerprint: Fingerprint(old),
		NotAfter:       c.NotAfter.UTC().Format(time.RFC3339),
	}
}

// SerialHex is a certificate's serial number the way `openssl x509 -noout -serial` prints
// it: upper-case hex, an even number of digits.
func SerialHex(c *x509.Certificate) string {
	h := strings.ToUpper(c.SerialNumber.Text(16))
	if len(h)%2 == 1 {
		h = "0" + h
	}
	return h
}
