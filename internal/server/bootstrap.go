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
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/datastore"
	"github.com/kpki/kpki/internal/token"
)

// ErrDifferentToken is the refusal when the datastore holds another token's bootstrap data.
var ErrDifferentToken = errors.New("bootstrap data already found and encrypted with different token")

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
	s.bootstrapRev.Store(rev)
	return true, changed, nil
}

// applyRecord makes the disk match rec under the rules of SPEC §6 and returns the
// files it wrote.
func (s *Server) applyRecord(rec *bootstrap.Record) ([]string, error) {
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
	writes, err := bootstrap.Plan(s.cfg.DataDir, rec, disk)
	if err != nil {
		return nil, err
	}
	return s.applyWrites(writes)
}

func (s *Server) applyWrites(writes []bootstrap.Write) ([]string, error) {
	var group []datadir.File
	var changed []string
	for _, w := range writes {
		if w.Overwrite {
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
func (s *Server) readRecord(ctx context.Context) (*bootstrap.Record, int64, error) {
	pw := s.tok.Password
	if pw == "" {
		keys, err := s.store.Keys(ctx, bootstrap.KeyPrefix)
		if err != nil {
			return nil, 0, err
		}
		if len(keys) > 0 {
			return nil, 0, fmt.Errorf("%w: the datastore already holds a cluster's bootstrap data; start with that cluster's --token", ErrDifferentToken)
		}
		return nil, 0, nil
	}
	key := bootstrap.KeyName(pw)
	s.bootstrapKey = key
	value, rev, err := s.store.Get(ctx, key)
	if errors.Is(err, datastore.ErrNotFound) {
		if adopted, err := s.adoptPendingToken(ctx); err != nil || adopted {
			if err != nil {
				return nil, 0, err
			}
			return s.readRecord(ctx)
		}
		keys, err := s.store.Keys(ctx, bootstrap.KeyPrefix)
		if err != nil {
			return nil, 0, err
		}
		if len(keys) > 0 {
			return nil, 0, ErrDifferentToken
		}
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	plain, err := bootstrap.Decrypt(pw, string(value))
	if errors.Is(err, bootstrap.ErrWrongPassphrase) {
		return nil, 0, ErrDifferentToken
	}
	if err != nil {
		return nil, 0, fmt.Errorf("bootstrap data at %s: %w", key, err)
	}
	rec, err := bootstrap.ParseRecord(plain)
	if err != nil {
		return nil, 0, fmt.Errorf("bootstrap data at %s: %w", key, err)
	}
	return rec, rev, nil
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
	plain, err := rec.Marshal()
	if err != nil {
		return err
	}
	value, err := bootstrap.Encrypt(s.tok.Password, plain)
	if err != nil {
		return err
	}
	key := bootstrap.KeyName(s.tok.Password)
	s.bootstrapKey = key
	keys, err := s.store.Keys(ctx, bootstrap.KeyPrefix)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if k != key {
			return ErrDifferentToken
		}
	}
	err = s.store.Create(ctx, key, []byte(value))
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
	s.bootstrapRev.Store(rev)
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
	if _, err := s.applyWrites(writes); err != nil {
		return err
	}
	s.bootstrapRev.Store(rev)
	return s.buildPKI("start-up")
}

// watchBootstrap notices changes of the bootstrap data made by another server (rotate-ca,
// token rotation): this server keeps running with its current files and says that a
// restart is needed. The watch starts right after the revision this server read, so a
// change made in between is not missed; changes this server made itself are recorded in
// bootstrapRev under s.mu before the watch can compare them.
func (s *Server) watchBootstrap(ctx context.Context) {
	if s.store == nil {
		return
	}
	from := s.bootstrapRev.Load() + 1
	for ctx.Err() == nil {
		for ev := range s.store.WatchPrefix(ctx, bootstrap.KeyPrefix, from) {
			s.mu.Lock()
			own := ev.Revision <= s.bootstrapRev.Load()
			s.mu.Unlock()
			if !own {
				s.flagRestart(ev.Key)
			}
		}
		if ctx.Err() != nil {
			return
		}
		// The watch ended (etcd restarted it, or the revision was compacted): compare the
		// record once more and watch again from now on.
		s.mu.Lock()
		key, rev := s.bootstrapKey, s.bootstrapRev.Load()
		s.mu.Unlock()
		if _, cur, err := s.store.Get(ctx, key); err == nil && cur != rev {
			s.flagRestart(key)
		} else if errors.Is(err, datastore.ErrNotFound) {
			s.flagRestart(key)
		}
		from = 0
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (s *Server) flagRestart(key string) {
	s.metrics.RestartRequired.Set(1)
	s.log.Warn("the bootstrap data in the datastore changed; restart kpki to use the new CA material", "key", key)
}
