package datadir

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// DirMode is the mode of every directory kpki creates.
const DirMode = 0o700

const (
	tmpSuffix     = ".kpki-tmp"
	pendingSuffix = ".kpki-new"
	journalPrefix = ".kpki-pair-"
)

// MkdirAll creates dir and its parents with mode 0700.
func MkdirAll(dir string) error {
	if err := os.MkdirAll(dir, DirMode); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	return nil
}

// WriteFile atomically replaces path with data and mode.
func WriteFile(path string, data []byte, mode fs.FileMode) error {
	if err := MkdirAll(filepath.Dir(path)); err != nil {
		return err
	}
	tok, err := writeTemp(path, tmpSuffix, data, mode)
	if err != nil {
		return err
	}
	tmp := tempPath(path, tok, tmpSuffix)
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

// WriteIfChanged writes path only when its content differs from data (and fixes its
// mode when only that differs). It reports whether the content was written.
func WriteIfChanged(path string, data []byte, mode fs.FileMode) (bool, error) {
	old, err := os.ReadFile(path)
	if err == nil && bytes.Equal(old, data) {
		if st, err := os.Stat(path); err == nil && st.Mode().Perm() != mode {
			if err := os.Chmod(path, mode); err != nil {
				return false, fmt.Errorf("chmod %s: %w", path, err)
			}
		}
		return false, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	return true, WriteFile(path, data, mode)
}

// WriteFileWithTime writes path atomically and sets its modification time.
func WriteFileWithTime(path string, data []byte, mode fs.FileMode, mtime time.Time) error {
	if err := MkdirAll(filepath.Dir(path)); err != nil {
		return err
	}
	tok, err := writeTemp(path, tmpSuffix, data, mode)
	if err != nil {
		return err
	}
	tmp := tempPath(path, tok, tmpSuffix)
	if err := os.Chtimes(tmp, mtime, mtime); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("set time of %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

// ReadOptional reads path, returning nil (no error) when it does not exist.
func ReadOptional(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

// Exists reports whether path exists (any error other than "not found" counts as existing,
// so that callers go on to read it and report the real problem).
func Exists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

// File is one file of a group written by WriteGroup.
type File struct {
	Path string
	Data []byte
	Mode fs.FileMode
	// ModTime, when set, becomes the file's modification time.
	ModTime time.Time
}

// WritePair replaces a certificate and its key together. When key is nil only the
// certificate is replaced (its key is unchanged, so a plain atomic write is enough).
func WritePair(certPath string, cert []byte, keyPath string, key []byte) error {
	if key == nil {
		return WriteFile(certPath, cert, 0o600)
	}
	if !Exists(certPath) && !Exists(keyPath) {
		// Nothing to pair wrongly: a crash after the key and before the certificate
		// leaves a key alone, which is re-used when the certificate is issued again.
		if err := WriteFile(keyPath, key, 0o600); err != nil {
			return err
		}
		return WriteFile(certPath, cert, 0o600)
	}
	return WriteGroup([]File{{Path: keyPath, Data: key, Mode: 0o600}, {Path: certPath, Data: cert, Mode: 0o600}})
}

// WriteGroup replaces several files as one: each new file is written aside, a journal
// naming them is committed, then they are renamed into place. Recover completes an
// interrupted group, so after a crash the group is either all old or all new — a
// certificate is never left next to a key it does not match.
func WriteGroup(files []File) error {
	if len(files) == 0 {
		return nil
	}
	var dirs []string
	pending := make([]string, len(files))
	cleanup := func() {
		for _, p := range pending {
			if p != "" {
				os.Remove(p)
			}
		}
	}
	var list strings.Builder
	for i, f := range files {
		if err := MkdirAll(filepath.Dir(f.Path)); err != nil {
			cleanup()
			return err
		}
		tok, err := writeTemp(f.Path, pendingSuffix, f.Data, f.Mode)
		if err != nil {
			cleanup()
			return err
		}
		p := tempPath(f.Path, tok, pendingSuffix)
		pending[i] = p
		if !f.ModTime.IsZero() {
			if err := os.Chtimes(p, f.ModTime, f.ModTime); err != nil {
				cleanup()
				return fmt.Errorf("set time of %s: %w", f.Path, err)
			}
		}
		dirs = appendUnique(dirs, filepath.Dir(f.Path))
		list.WriteString(tok + "\t" + f.Path + "\n")
	}
	for _, d := range dirs {
		if err := syncDir(d); err != nil {
			cleanup()
			return err
		}
	}
	journal := journalPath(files[0].Path)
	if err := WriteFile(journal, []byte(list.String()), 0o600); err != nil {
		cleanup()
		return err
	}
	return completeGroup(journal)
}

// completeGroup renames the pending files a committed journal names into place.
func completeGroup(journal string) error {
	b, err := os.ReadFile(journal)
	if err != nil {
		return fmt.Errorf("read journal %s: %w", journal, err)
	}
	var dirs []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		pend, p := journalEntry(line)
		if err := os.Rename(pend, p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("write %s: %w", p, err)
		}
		dirs = appendUnique(dirs, filepath.Dir(p))
	}
	for _, d := range dirs {
		if err := syncDir(d); err != nil {
			return err
		}
	}
	if err := os.Remove(journal); err != nil {
		return fmt.Errorf("remove journal %s: %w", journal, err)
	}
	return syncDir(filepath.Dir(journal))
}

// journalEntry parses a journal line "<token>\t<path>": the pending file of path is
// <path>.<token>.kpki-new. A line that is only a path (as written before pending files had
// random names) means <path>.kpki-new.
func journalEntry(line string) (pending, path string) {
	if tok, p, ok := strings.Cut(line, "\t"); ok && isToken(tok) {
		return tempPath(p, tok, pendingSuffix), p
	}
	return line + pendingSuffix, line
}

func isToken(s string) bool {
	if len(s) != 2*tokenBytes {
		return false
	}
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return true
}

func journalPath(certPath string) string {
	return filepath.Join(filepath.Dir(certPath), journalPrefix+filepath.Base(certPath))
}

// Recover finishes or discards interrupted writes under root: committed journals are
// completed, uncommitted pending files and temp files are removed. It returns the
// journals it completed.
func Recover(root string) ([]string, error) {
	var completed []string
	var journals, strays []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			if p != root && (d.Name() == "db" || d.Name() == "logs") {
				return filepath.SkipDir
			}
			return nil
		}
		name := d.Name()
		switch {
		case strings.HasPrefix(name, journalPrefix) && !strings.HasSuffix(name, tmpSuffix):
			journals = append(journals, p)
		case strings.HasSuffix(name, tmpSuffix), strings.HasSuffix(name, pendingSuffix):
			strays = append(strays, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", root, err)
	}
	for _, j := range journals {
		if err := completeGroup(j); err != nil {
			return nil, err
		}
		completed = append(completed, j)
	}
	for _, s := range strays {
		if err := os.Remove(s); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove %s: %w", s, err)
		}
	}
	return completed, nil
}

func appendUnique(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

// tokenBytes is the size of the random part of a temp or pending file name.
const tokenBytes = 8

// tempToken returns the random part of a new temp file name (tests replace it to make
// names predictable).
var tempToken = func() string {
	var b [tokenBytes]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// tempAttempts bounds how many names createTemp tries.
const tempAttempts = 8

// tempPath is the name of the temp file of path with the random part tok.
func tempPath(path, tok, suffix string) string { return path + "." + tok + suffix }

// createTemp creates a new file tempPath(path, <random>, suffix) next to path, with
// O_CREATE|O_EXCL|O_NOFOLLOW: whatever already has that name, a file or a symlink planted
// to redirect a key write elsewhere, is never opened; another name is tried instead. It
// returns the file and the random part of its name.
func createTemp(path, suffix string, mode fs.FileMode) (*os.File, string, error) {
	var err error
	for range tempAttempts {
		tok := tempToken()
		var f *os.File
		f, err = os.OpenFile(tempPath(path, tok, suffix), os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, mode)
		if err == nil {
			return f, tok, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	return nil, "", fmt.Errorf("write %s: create a temporary file: %w", path, err)
}

// writeTemp writes data with mode to a new temp file next to path (see createTemp),
// synced, and returns the random part of its name.
func writeTemp(path, suffix string, data []byte, mode fs.FileMode) (string, error) {
	f, tok, err := createTemp(path, suffix, mode)
	if err != nil {
		return "", err
	}
	name := f.Name()
	fail := func(what string, err error) (string, error) {
		f.Close()
		os.Remove(name)
		return "", fmt.Errorf("%s %s: %w", what, path, err)
	}
	if err := f.Chmod(mode); err != nil {
		return fail("write", err)
	}
	if _, err := f.Write(data); err != nil {
		return fail("write", err)
	}
	if err := f.Sync(); err != nil {
		return fail("sync", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(name)
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return tok, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// TightenDirs sets mode 0700 on every directory under root (root included) that is
// more open, except the etcd data and logs, and returns those it changed. Directories an
// operator made by hand (mkdir -p for custom CA files) are usually 0755.
func TightenDirs(root string) ([]string, error) {
	var changed []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if p != root && (d.Name() == "db" || d.Name() == "logs") {
			return filepath.SkipDir
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(p, DirMode); err != nil {
				return fmt.Errorf("chmod %s: %w", p, err)
			}
			changed = append(changed, p)
		}
		return nil
	})
	return changed, err
}
