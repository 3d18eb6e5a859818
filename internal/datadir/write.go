package datadir

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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
	if err := writeSynced(path+tmpSuffix, data, mode); err != nil {
		return err
	}
	if err := os.Rename(path+tmpSuffix, path); err != nil {
		os.Remove(path + tmpSuffix)
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
	tmp := path + tmpSuffix
	if err := writeSynced(tmp, data, mode); err != nil {
		return err
	}
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
	cleanup := func() {
		for _, f := range files {
			os.Remove(f.Path + pendingSuffix)
		}
	}
	for _, f := range files {
		if err := MkdirAll(filepath.Dir(f.Path)); err != nil {
			return err
		}
		if err := writeSynced(f.Path+pendingSuffix, f.Data, f.Mode); err != nil {
			cleanup()
			return err
		}
		if !f.ModTime.IsZero() {
			if err := os.Chtimes(f.Path+pendingSuffix, f.ModTime, f.ModTime); err != nil {
				cleanup()
				return fmt.Errorf("set time of %s: %w", f.Path, err)
			}
		}
		dirs = appendUnique(dirs, filepath.Dir(f.Path))
	}
	for _, d := range dirs {
		if err := syncDir(d); err != nil {
			cleanup()
			return err
		}
	}
	var list strings.Builder
	for _, f := range files {
		list.WriteString(f.Path + "\n")
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
	for _, p := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if p == "" {
			continue
		}
		if err := os.Rename(p+pendingSuffix, p); err != nil && !errors.Is(err, fs.ErrNotExist) {
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

func writeSynced(path string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
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
