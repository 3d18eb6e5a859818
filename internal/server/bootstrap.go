package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/datastore"
	"github.com/kpki/kpki/internal/server/record"
	"github.com/kpki/kpki/internal/token"
)

// loadTokenFile takes the server password from <dd>/server/token when --token was not given.
func (s *Server) loadTokenFile() error {
	if s.tok.Password != "" {
		return nil
	}
	data, err := datadir.ReadOptional(s.layout.TokenFile())
	if err != nil || data == nil {
		return err
	}
	t, err := token.Parse(string(data))
	if err != nil {
		return fmt.Errorf("token file %s: %w", s.layout.TokenFile(), err)
	}
	s.tok = token.Token{Password: t.Password}
	s.tokenFromFile = true
	return nil
}

// reconcile makes the disk match the bootstrap record in the datastore, if there is
// one for this token. It returns whether a record was found and which files it wrote.
func (s *Server) reconcile(ctx context.Context) (bool, []string, error) {
	rec, rev, err := s.readRecord(ctx)
	if err != nil || rec == nil {
		return false, nil, err
	}
	changed, err := s.applyRecord(rec)
	if err != nil {
		return false, nil, err
	}
	s.own.Set(rev)
	return true, changed, nil
}

// applyRecord makes the disk match rec under the rules of SPEC §6 and returns the
// files it wrote.
func (s *Server) applyRecord(rec *bootstrap.Record) ([]string, error) {
	writes, disk, err := s.planRecord(rec)
	if err != nil {
		return nil, err
	}
	if _, err := s.classifyRecord(disk, rec); err != nil {
		return nil, err
	}
	return s.applyWrites(writes, true)
}

// planRecord returns the writes that make the disk match rec, and what the disk holds.
func (s *Server) planRecord(rec *bootstrap.Record) ([]bootstrap.Write, map[string]bootstrap.DiskFile, error) {
	disk, err := s.readDisk()
	if err != nil {
		return nil, nil, err
	}
	writes, err := bootstrap.Plan(s.cfg.DataDir, rec, disk)
	return writes, disk, err
}

// readDisk reads the files of the bootstrap record that exist on disk, keyed by
// bootstrap.FileSpec.Path.
func (s *Server) readDisk() (map[string]bootstrap.DiskFile, error) {
	disk := map[string]bootstrap.DiskFile{}
	for _, f := range bootstrap.Files {
		p := filepath.Join(s.cfg.DataDir, filepath.FromSlash(f.Path))
		st, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("stat %s: %w", p, err)
		}
		content, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", p, err)
		}
		disk[f.Path] = bootstrap.DiskFile{Exists: true, Content: content, ModTime: st.ModTime()}
	}
	return disk, nil
}

// applyWrites writes the files of writes as one group; warn logs each file it
// replaces (at start-up a differing file is a surprise, in a live apply it is the point).
func (s *Server) applyWrites(writes []bootstrap.Write, warn bool) ([]string, error) {
	var group []datadir.File
	var changed []string
	for _, w := range writes {
		if w.Overwrite && warn {
			s.log.Warn("replacing file with the datastore's copy", "file", w.Path)
		}
		group = append(group, datadir.File{Path: w.Path, Data: w.Content, Mode: w.Mode, ModTime: w.ModTime})
		changed = append(changed, w.Path)
	}
	if err := datadir.WriteGroup(group); err != nil {
		return nil, err
	}
	return changed, nil
}

// readRecord fetches and decrypts this token's bootstrap record; nil when there is none.
// At start-up, a token rotation interrupted before the token files were written is
// completed (adoptPendingToken).
func (s *Server) readRecord(ctx context.Context) (*bootstrap.Record, int64, error) {
	return record.Read(ctx, s.store, s.tok.Password, func(ctx context.Context) (string, error) {
		adopted, err := s.adoptPendingToken(ctx)
		if err != nil || !adopted {
			return "", err
		}
		return s.tok.Password, nil
	})
}

// currentRecord reads this server's bootstrap record, which must exist.
func (s *Server) currentRecord(ctx context.Context) (*bootstrap.Record, int64, error) {
	rec, rev, err := s.readRecord(ctx)
	if err == nil && rec == nil {
		err = errors.New("no bootstrap data for this server's token in the datastore")
	}
	return rec, rev, err
}

// recordFromDisk builds a bootstrap record from the files on disk; each Timestamp is
// the file's modification time.
func (s *Server) recordFromDisk() (*bootstrap.Record, error) {
	rec := bootstrap.NewRecord()
	for _, f := range bootstrap.Files {
		p := filepath.Join(s.cfg.DataDir, filepath.FromSlash(f.Path))
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("bootstrap file %s: %w", p, err)
		}
		content, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", p, err)
		}
		rec.Set(f.Field, bootstrap.File{Timestamp: st.ModTime().UTC(), Content: content})
	}
	return rec, nil
}

// saveRecord stores the first server's bootstrap data, create-only. When another first
// server won the race, this one adopts the winner's data.
func (s *Server) saveRecord(ctx context.Context) error {
	rec, err := s.recordFromDisk()
	if err != nil {
		return err
	}
	value, err := record.Seal(s.tok.Password, rec)
	if err != nil {
		return err
	}
	key := bootstrap.KeyName(s.tok.Password)
	keys, err := s.store.Keys(ctx, bootstrap.KeyPrefix)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if k != key {
			return record.ErrDifferentToken
		}
	}
	err = s.store.Create(ctx, key, value)
	if errors.Is(err, datastore.ErrExists) {
		return s.adoptRecord(ctx)
	}
	if err != nil {
		return err
	}
	_, rev, err := s.store.Get(ctx, key)
	if err != nil {
		return err
	}
	s.own.Set(rev)
	s.log.Info("saved bootstrap data to the datastore", "key", key)
	return nil
}

// adoptRecord replaces the CA material this server just generated with the record
// another server stored first.
func (s *Server) adoptRecord(ctx context.Context) error {
	rec, rev, err := s.readRecord(ctx)
	if err != nil {
		return err
	}
	if rec == nil {
		return errors.New("bootstrap data vanished while adopting it; restart to try again")
	}
	s.log.Warn("another server stored the cluster's bootstrap data first; adopting it")
	var writes []bootstrap.Write
	for _, f := range bootstrap.Files {
		v, ok := rec.Get(f.Field)
		if !ok {
			continue
		}
		writes = append(writes, bootstrap.Write{Field: f.Field, Path: filepath.Join(s.cfg.DataDir, filepath.FromSlash(f.Path)),
			Content: v.Content, Mode: f.Mode, ModTime: v.Timestamp})
	}
	if _, err := s.applyWrites(writes, true); err != nil {
		return err
	}
	s.own.Set(rev)
	return s.buildPKI("start-up")
}

// watchBootstrap notices changes of the bootstrap data made by another server (rotate-ca,
// a rollback, token rotation) and has the live apply converge to the record (see
// liveApplyLoop). The watch starts right after the revision this server read, so a
// change made in between is not missed; a change this server is making itself is
// recognised once its write has answered (record.Own), not by holding a lock across it:
// the handler that made it asks for the apply itself (RecordChanged).
func (s *Server) watchBootstrap(ctx context.Context) {
	if s.store == nil {
		return
	}
	from := s.own.Rev() + 1
	for ctx.Err() == nil {
		for ev := range s.store.WatchPrefix(ctx, bootstrap.KeyPrefix, from) {
			if !s.own.Mine(ctx, ev.Revision) {
				s.log.Info("the bootstrap data in the datastore changed; applying it", "key", ev.Key, "revision", ev.Revision)
				s.RecordChanged()
			}
		}
		if ctx.Err() != nil {
			return
		}
		// The watch ended (etcd restarted it, the member restarted, or the revision was
		// compacted): compare the record once more and watch again from now on.
		key, rev := bootstrap.KeyName(s.Password()), s.own.Rev()
		if _, cur, err := s.store.Get(ctx, key); (err == nil && cur != rev) || errors.Is(err, datastore.ErrNotFound) {
			s.RecordChanged()
		}
		from = 0
		if clock.Sleep(ctx, s.clock, time.Second) != nil {
			return
		}
	}
}

// flagRestart is the fallback when the record cannot be taken live.
func (s *Server) flagRestart(reason string, attrs ...any) {
	s.metrics.RestartRequired.Set(1)
	s.log.Warn("the bootstrap data in the datastore changed and this server could not take it live ("+reason+"); restart kpki to use it", attrs...)
}
