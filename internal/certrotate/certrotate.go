// Package certrotate implements `kpki certificate rotate` (SPEC §5): with the node's
// kpki process stopped, back up the tls directory, delete the selected leaf
// certificates and keys, and leave a force-restart marker, so that the next start
// issues them afresh with new keys. CA files are never touched.
package certrotate

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
)

// ErrRunning is returned when the node's kpki process holds the data dir lock.
var ErrRunning = errors.New("kpki is running with this data dir; stop it first (for example `systemctl stop kpki`), then rotate, then start it")

// Plan is what a rotation will do.
type Plan struct {
	Backups []Backup
	Delete  []string
	Marker  string
}

// Backup copies Files (all of Source when Files is empty) from Source into Dir.
type Backup struct {
	Source string
	Dir    string
	Files  []string
}

// Options select what to rotate.
type Options struct {
	DataDir  string
	Services []string // kpki service names, already resolved; empty means every leaf
	Now      time.Time
}

// Build computes the plan from what exists in the data dir.
func Build(o Options) (*Plan, error) {
	l := datadir.Layout{Root: o.DataDir}
	stamp := strconv.FormatInt(o.Now.Unix(), 10)
	p := &Plan{Marker: l.ForceRestart()}
	isServer := isDir(l.TLS())
	isAgent := isDir(l.Agent())
	if !isServer && !isAgent {
		return nil, fmt.Errorf("%s holds no kpki server (%s) or agent (%s) certificates", o.DataDir, l.TLS(), l.Agent())
	}
	if isServer {
		var del []string
		for _, leaf := range certs.Select(certs.ServerNode, o.Services) {
			del = append(del, existing(l.TLS(leaf.Name+".crt"), l.TLS(leaf.Name+".key"))...)
		}
		if len(del) > 0 {
			p.Backups = append(p.Backups, Backup{Source: l.TLS(), Dir: uniqueDir(l.Server("tls-" + stamp))})
			p.Delete = append(p.Delete, del...)
		}
	}
	if isAgent {
		var del, rel []string
		for _, leaf := range certs.Select(certs.AgentNode, o.Services) {
			for _, f := range existing(l.Agent(leaf.Name+".crt"), l.Agent(leaf.Name+".key")) {
				del = append(del, f)
				rel = append(rel, filepath.Base(f))
			}
		}
		if len(del) > 0 {
			p.Backups = append(p.Backups, Backup{Source: l.Agent(), Dir: uniqueDir(l.Agent("tls-" + stamp)), Files: rel})
			p.Delete = append(p.Delete, del...)
		}
	}
	if len(p.Delete) == 0 {
		return nil, fmt.Errorf("no certificate of the selected services exists under %s", o.DataDir)
	}
	return p, nil
}

// Lock takes the data dir locks of the node's kpki processes, failing with ErrRunning
// when one is held. Lock files that do not exist are not created.
func Lock(dataDir string) (func(), error) {
	l := datadir.Layout{Root: dataDir}
	var held []*datadir.FileLock
	release := func() {
		for _, h := range held {
			h.Unlock()
		}
	}
	for _, path := range []string{l.LockFile(), l.Agent("kpki-agent.lock")} {
		if !datadir.Exists(path) {
			continue
		}
		lk, err := datadir.Lock(path)
		if errors.Is(err, datadir.ErrLocked) {
			release()
			return nil, fmt.Errorf("%w (lock %s is held)", ErrRunning, path)
		}
		if err != nil {
			release()
			return nil, err
		}
		held = append(held, lk)
	}
	return release, nil
}

// Print describes the plan.
func (p *Plan) Print(w io.Writer, dryRun bool) {
	pre := ""
	if dryRun {
		pre = "would "
	}
	for _, b := range p.Backups {
		if len(b.Files) == 0 {
			fmt.Fprintf(w, "%sback up %s to %s\n", pre, b.Source, b.Dir)
		} else {
			for _, f := range b.Files {
				fmt.Fprintf(w, "%sback up %s to %s\n", pre, filepath.Join(b.Source, f), filepath.Join(b.Dir, f))
			}
		}
	}
	for _, f := range p.Delete {
		fmt.Fprintf(w, "%sdelete %s\n", pre, f)
	}
	fmt.Fprintf(w, "%swrite %s\n", pre, p.Marker)
}

// Execute backs up, records the rotation in the audit log, deletes and marks.
func (p *Plan) Execute(log *audit.Log, actor string, now time.Time) error {
	for _, b := range p.Backups {
		if err := copyBackup(b); err != nil {
			os.RemoveAll(b.Dir)
			return fmt.Errorf("back up %s: %w (nothing was deleted)", b.Source, err)
		}
	}
	for _, f := range p.Delete {
		if filepath.Ext(f) == ".crt" {
			if data, err := os.ReadFile(f); err == nil {
				if list, err := pki.ParseCerts(data); err == nil {
					e := audit.CertEntry("rotate", actor, f, list[0], nil)
					e.OldFingerprint, e.Fingerprint = e.Fingerprint, ""
					e.Time = now.UTC()
					e.Detail = "deleted; re-issued with a new key at the next start"
					if err := log.Write(e); err != nil {
						return err
					}
				}
			}
		}
	}
	if err := datadir.WriteFile(p.Marker, nil, 0o600); err != nil {
		return err
	}
	for _, f := range p.Delete {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("delete %s: %w", f, err)
		}
	}
	return nil
}

func copyBackup(b Backup) error {
	if len(b.Files) > 0 {
		for _, f := range b.Files {
			if err := copyFile(filepath.Join(b.Source, f), filepath.Join(b.Dir, f)); err != nil {
				return err
			}
		}
		return nil
	}
	return filepath.WalkDir(b.Source, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(b.Source, p)
		if d.IsDir() {
			return datadir.MkdirAll(filepath.Join(b.Dir, rel))
		}
		if !d.Type().IsRegular() {
			return nil
		}
		return copyFile(p, filepath.Join(b.Dir, rel))
	})
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := datadir.WriteFile(dst, data, st.Mode().Perm()); err != nil {
		return err
	}
	return os.Chtimes(dst, st.ModTime(), st.ModTime())
}

func existing(paths ...string) []string {
	var out []string
	for _, p := range paths {
		if datadir.Exists(p) {
			out = append(out, p)
		}
	}
	return out
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func uniqueDir(base string) string {
	d := base
	for i := 1; datadir.Exists(d); i++ {
		d = base + "-" + strconv.Itoa(i)
	}
	return d
}
