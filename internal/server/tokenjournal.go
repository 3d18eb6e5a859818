package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/datastore"
)

// A token rotation moves the bootstrap record to the key of the new password in one
// datastore transaction, then rewrites the token files. The new password is written to
// <dd>/server/token.rotating before that transaction and removed once the token files hold
// it, so that a crash in between cannot leave this server with a token file whose key no
// longer exists: the next start finds the record under the pending password, takes it,
// and rewrites the token files.

// PendingTokenFile records the password a token rotation is moving to.
func (s *Server) PendingTokenFile() string { return s.layout.TokenFile() + ".rotating" }

// WritePendingToken records pw as the password a token rotation is about to move to.
func (s *Server) WritePendingToken(pw string) error {
	return datadir.WriteFile(s.PendingTokenFile(), []byte(pw+"\n"), 0o600)
}

// DropPendingToken removes the record of a rotation that is finished or did not happen.
func (s *Server) DropPendingToken() {
	if err := os.Remove(s.PendingTokenFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("could not remove the record of a token rotation", "file", s.PendingTokenFile(), "error", err)
	}
}

// adoptPendingToken is called at start-up when the datastore holds no record under the
// token file's password. When a rotation was under way and the record is under its new
// password, this server takes that password (the token files are rewritten with it by
// the start-up) and reports true.
func (s *Server) adoptPendingToken(ctx context.Context) (bool, error) {
	if !s.tokenFromFile || s.ready.Load() {
		return false, nil
	}
	data, err := datadir.ReadOptional(s.PendingTokenFile())
	if err != nil || data == nil {
		return false, err
	}
	pw := strings.TrimSpace(string(data))
	if pw == "" || pw == s.tok.Password {
		return false, nil
	}
	value, _, err := s.store.Get(ctx, bootstrap.KeyName(pw))
	if errors.Is(err, datastore.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if _, err := bootstrap.Decrypt(pw, string(value)); err != nil {
		return false, fmt.Errorf("bootstrap data under the pending token of %s: %w", s.PendingTokenFile(), err)
	}
	s.log.Warn("completing a token rotation that was interrupted before the token files were written: taking the new token from the datastore",
		"token-file", s.layout.TokenFile(), "pending", s.PendingTokenFile())
	s.tok.Password = pw
	return true, nil
}
