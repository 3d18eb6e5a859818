package bootstrap

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// NewerThreshold is how far a disk file's modification time may be ahead of
// the record's Timestamp before the file is taken to be newer than the
// datastore rather than stale.
const NewerThreshold = 3 * time.Second

// DiskFile is what a data dir holds at one FileSpec.Path.
type DiskFile struct {
	Exists  bool
	Content []byte
	ModTime time.Time
}

// Write is one file Plan asks the caller to write: Content at Path with
// permissions Mode, then its modification time set to ModTime. Overwrite is
// true when the file exists with other content; the caller logs a warning
// naming Path.
type Write struct {
	Field     string
	Path      string
	Content   []byte
	Mode      os.FileMode
	ModTime   time.Time
	Overwrite bool
}

// NewerError reports disk files that differ from the record and are
// NewerThreshold or more newer than it. Nothing may be written when Plan
// returns it.
type NewerError struct {
	Paths []string
}

func (e *NewerError) Error() string {
	return strings.Join(e.Paths, ", ") +
		" newer than datastore and could cause a cluster outage. Remove the file(s) from disk and restart to be recreated from datastore."
}

// Plan compares the datastore record with what is on disk (disk keyed by
// FileSpec.Path; a missing key means the file does not exist) and returns the
// writes, in Files order, that make the disk match the record. The datastore
// wins: a missing file is written, a differing file is overwritten, an
// identical file and a field absent from the record are left alone. When any
// differing file is NewerThreshold or more newer than the record's Timestamp,
// Plan returns a *NewerError naming every such file and no writes.
func Plan(dataDir string, rec *Record, disk map[string]DiskFile) ([]Write, error) {
	var writes []Write
	var newer []string
	for _, spec := range Files {
		f, ok := rec.Get(spec.Field)
		if !ok {
			continue
		}
		path := filepath.Join(dataDir, filepath.FromSlash(spec.Path))
		d := disk[spec.Path]
		if d.Exists && bytes.Equal(d.Content, f.Content) {
			continue
		}
		if d.Exists && d.ModTime.Sub(f.Timestamp) >= NewerThreshold {
			newer = append(newer, path)
			continue
		}
		writes = append(writes, Write{
			Field:     spec.Field,
			Path:      path,
			Content:   f.Content,
			Mode:      spec.Mode,
			ModTime:   f.Timestamp,
			Overwrite: d.Exists,
		})
	}
	if len(newer) > 0 {
		return nil, &NewerError{Paths: newer}
	}
	return writes, nil
}
