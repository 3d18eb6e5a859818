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

// Log appends entries to a file. Concurrent writers share writes and fsyncs (group
// commit): each Write returns once its own line is durable; the lines appended while a
// write and fsync are under way wait in memory and go to the file together, in one write
// and one fsync, so a burst of issuances does not queue on one fsync each.
type Log struct {
	mu       sync.Mutex
	cond     *sync.Cond
	path     string
	f        *os.File
	pending  []byte // lines of cur, not yet written to the file
	spare    []byte // the buffer of the last batch written, reused
	cur      *batch // the lines in pending
	syncing  bool   // a batch is being written and synced
	appended int64  // lines accepted, for tests
	syncs    int64  // fsyncs done, for tests
	writes   int64  // writes to the file, for tests
}

// batch is lines written to the file and fsynced together.
type batch struct {
	done bool
	err  error
}

// Open returns a log appending to path (created 0600 on first write).
func Open(path string) *Log {
	l := &Log{path: path, cur: &batch{}}
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
	bp := lineBuf.Get().(*[]byte)
	defer lineBuf.Put(bp)
	line, ok := appendEntry((*bp)[:0], e)
	if !ok {
		var err error
		if line, err = json.Marshal(e); err != nil {
			return err
		}
	}
	*bp = line[:0]
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
	l.pending = append(append(l.pending, line...), '\n')
	l.appended++
	mine := l.cur
	for !mine.done {
		if l.syncing {
			l.cond.Wait()
			continue
		}
		// No batch is under way, so mine is the one in pending: write it.
		l.flushLocked(true)
	}
	if mine.err != nil {
		return fmt.Errorf("audit log: %w", mine.err)
	}
	return nil
}

// flushLocked writes pending to the file and fsyncs it, as one batch, and tells its
// writers. It is called with l.mu held and no batch under way; unlock says whether it
// releases l.mu meanwhile.
func (l *Log) flushLocked(unlock bool) {
	b, buf, f := l.cur, l.pending, l.f
	l.cur, l.pending = &batch{}, l.spare[:0]
	l.syncing = true
	if unlock {
		l.mu.Unlock()
	}
	var err error
	wrote, synced := false, false
	if f == nil {
		err = errors.New("closed before the entry was synced")
	} else {
		if len(buf) > 0 {
			_, err = f.Write(buf)
			wrote = true
		}
		if err == nil {
			err = f.Sync()
			synced = true
		}
	}
	if unlock {
		l.mu.Lock()
	}
	if wrote {
		l.writes++
	}
	if synced {
		l.syncs++
	}
	l.spare = buf[:0]
	l.syncing = false
	b.done, b.err = true, err
	l.cond.Broadcast()
}

// Close writes and syncs what is pending and closes the file; a later Write opens it
// again.
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
	b := l.cur
	l.flushLocked(false)
	err := b.err
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	l.f = nil
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
