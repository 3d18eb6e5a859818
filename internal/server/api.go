package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/datastore"
	"github.com/kpki/kpki/internal/passwd"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/rotation"
	"github.com/kpki/kpki/internal/supervisor"
	"github.com/kpki/kpki/internal/token"
)

// maxRotateBody bounds a rotate-ca request: CA bundles and key files are small.
const maxRotateBody = 4 << 20

func (s *Server) registerAPI() {
	s.sup.Handle("PUT "+api.PathRotateCA, s.sup.Require(s.handleRotateCA, supervisor.RoleServer))
	s.sup.Handle("PUT "+api.PathTokenRotate, s.sup.Require(s.handleTokenRotate, supervisor.RoleServer))
}

// authenticate checks basic credentials, in constant time, against the passwd this
// server holds in memory (see creds); before it has one, nothing authenticates.
func (s *Server) authenticate(user, password string) (supervisor.Role, bool) {
	pw := s.creds.Load()
	if pw == nil {
		return "", false
	}
	return pw.Authenticate(user, password)
}

// useCreds makes pw the passwd this server authenticates with and its node entry the
// agent password of the agent-token file.
func (s *Server) useCreds(pw passwd.File) {
	s.creds.Store(&pw)
	if node, ok := pw.Find(passwd.AgentUser); ok {
		s.agentPassword = node.Password
	}
}

func decodeBody(r *http.Request, limit int64, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return fmt.Errorf("read request: %w", err)
	}
	if int64(len(body)) > limit {
		return fmt.Errorf("request body larger than %d bytes", limit)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("request body is not valid JSON: %w", err)
	}
	return nil
}

// handleRotateCA validates staged CA files against the datastore's record and, unless
// dry-run, stores the new record with a compare-and-swap. Disks are not changed: every
// server takes the new files at its next start.
func (s *Server) handleRotateCA(w http.ResponseWriter, r *http.Request) {
	force := r.URL.Query().Get("force") == "true"
	dryRun := r.URL.Query().Get("dry-run") == "true"
	var req api.RotateCARequest
	if err := decodeBody(r, maxRotateBody, &req); err != nil {
		s.sup.Error(w, r, http.StatusBadRequest, err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ctx := r.Context()
	rec, rev, err := s.currentRecord(ctx)
	if err != nil {
		s.datastoreError(w, r, http.StatusInternalServerError, err)
		return
	}
	now := s.clock.Now()
	res := rotation.Validate(rec, req.Files, now, force)
	if !res.OK() {
		s.sup.ErrorList(w, r, http.StatusBadRequest,
			fmt.Errorf("CA rotation refused; nothing was changed: %s", strings.Join(res.Errors, "; ")), res.Errors)
		return
	}
	out := api.RotateCAResponse{Result: *res, DryRun: dryRun}
	if res.TokensChange {
		out.ServerToken = token.Format(res.NewCAHash, "server", s.tok.Password)
		out.AgentToken = token.Format(res.NewCAHash, "node", s.agentPassword)
	}
	if dryRun {
		supervisor.JSON(w, out)
		return
	}
	next, err := rotation.Apply(rec, req.Files, now)
	if err != nil {
		s.sup.Error(w, r, http.StatusInternalServerError, err)
		return
	}
	newRev, err := s.storeRecord(ctx, s.bootstrapKey, rev, next)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, datastore.ErrConflict) {
			code = http.StatusConflict
			err = errors.New("the bootstrap data changed while this rotation was checked; nothing was written, run rotate-ca again")
		}
		s.datastoreError(w, r, code, err)
		return
	}
	s.bootstrapRev.Store(newRev)
	s.metrics.RestartRequired.Set(1)
	out.Saved = true
	caller := supervisor.CallerFrom(ctx)
	for _, c := range res.Changes {
		e := audit.Entry{Time: now.UTC(), Action: "rotate-ca", Actor: caller.User, RemoteAddr: r.RemoteAddr, File: c.File}
		if c.New != nil {
			e.Subject, e.Fingerprint, e.NotAfter = c.New.Subject, c.New.Fingerprint, c.New.NotAfter.Format("2006-01-02T15:04:05Z")
		}
		if c.Old != nil {
			e.OldFingerprint = c.Old.Fingerprint
		}
		if c.KeyCount > 0 {
			e.Detail = fmt.Sprintf("%d keys", c.KeyCount)
		}
		if force {
			e.Detail = strings.TrimSpace(e.Detail + " forced")
		}
		s.writeAudit(e)
	}
	s.log.Warn("new CA material saved to the datastore; restart kpki on all nodes, servers first, then agents",
		"files", len(res.Changes), "tokens-change", res.TokensChange)
	supervisor.JSON(w, out)
}

// storeRecord encrypts rec under the server password and compare-and-swaps it in.
func (s *Server) storeRecord(ctx context.Context, key string, rev int64, rec *bootstrap.Record) (int64, error) {
	plain, err := rec.Marshal()
	if err != nil {
		return 0, err
	}
	value, err := bootstrap.Encrypt(s.tok.Password, plain)
	if err != nil {
		return 0, err
	}
	return s.store.Update(ctx, key, []byte(value), rev)
}

// handleTokenRotate changes the server password: the record is re-encrypted under the
// new passphrase and moved to its new key in one transaction, then cred/passwd and the
// token files of this server are rewritten.
func (s *Server) handleTokenRotate(w http.ResponseWriter, r *http.Request) {
	var req api.TokenRotateRequest
	if err := decodeBody(r, 64<<10, &req); err != nil {
		s.sup.Error(w, r, http.StatusBadRequest, err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	newPW := ""
	if req.Token != "" {
		t, err := token.Parse(req.Token)
		if err != nil {
			s.sup.Error(w, r, http.StatusBadRequest, fmt.Errorf("new token: %w", err))
			return
		}
		newPW = t.Password
		if t.CAHash != "" {
			if h, _ := pki.CAHash(s.cas[certs.ServerCA].BundlePEM); h != t.CAHash {
				s.sup.Error(w, r, http.StatusBadRequest, fmt.Errorf("new token's CA hash %s is not this cluster's %s", t.CAHash, h))
				return
			}
		}
	} else {
		p, err := token.GeneratePassword()
		if err != nil {
			s.sup.Error(w, r, http.StatusInternalServerError, err)
			return
		}
		newPW = p
	}
	if newPW == s.tok.Password {
		s.sup.Error(w, r, http.StatusBadRequest, errors.New("the new token is the current one"))
		return
	}
	if cur := s.creds.Load(); cur != nil && cur.UsedByOthers(newPW) {
		s.sup.Error(w, r, http.StatusBadRequest, errNewIsAgentPassword)
		return
	}
	ctx := r.Context()
	rec, rev, err := s.currentRecord(ctx)
	if err != nil {
		s.datastoreError(w, r, http.StatusInternalServerError, err)
		return
	}
	pf, ok := rec.Get("PasswdFile")
	if !ok {
		s.sup.Error(w, r, http.StatusInternalServerError, errors.New("the bootstrap data in the datastore holds no PasswdFile, so the new token's passwd cannot be stored with it; nothing was changed: restart this server, which stores its cred/passwd there, and run token rotate again"))
		return
	}
	recPW, err := passwd.Parse(pf.Content)
	if err == nil {
		err = recPW.Validate()
	}
	if err != nil {
		s.sup.Error(w, r, http.StatusInternalServerError, fmt.Errorf("passwd in the datastore: %w; nothing was changed: restart this server to repair it, and run token rotate again", err))
		return
	}
	if recPW.UsedByOthers(newPW) {
		s.sup.Error(w, r, http.StatusBadRequest, errNewIsAgentPassword)
		return
	}
	now := s.clock.Now()
	newPasswd := recPW.WithPassword(passwd.ServerUser, newPW)
	content := newPasswd.Bytes()
	rec.Set("PasswdFile", bootstrap.File{Timestamp: now.UTC(), Content: content})
	plain, err := rec.Marshal()
	if err != nil {
		s.sup.Error(w, r, http.StatusInternalServerError, err)
		return
	}
	value, err := bootstrap.Encrypt(newPW, plain)
	if err != nil {
		s.sup.Error(w, r, http.StatusInternalServerError, err)
		return
	}
	oldKey, newKey := s.bootstrapKey, bootstrap.KeyName(newPW)
	if err := s.writePendingToken(newPW); err != nil {
		s.sup.Error(w, r, http.StatusInternalServerError, fmt.Errorf("nothing was changed: %w", err))
		return
	}
	newRev, err := s.store.Replace(ctx, oldKey, rev, newKey, []byte(value))
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, datastore.ErrConflict) {
			code = http.StatusConflict
			err = errors.New("the bootstrap data changed concurrently; nothing was written, try again")
			s.dropPendingToken()
		}
		s.datastoreError(w, r, code, err)
		return
	}
	// The record has moved: from now on this server answers to the new password only,
	// whatever happens to the files below.
	s.tok.Password, s.bootstrapKey = newPW, newKey
	s.bootstrapRev.Store(newRev)
	s.useCreds(newPasswd)
	var warnings []string
	if err := datadir.WriteFileWithTime(s.layout.PasswdFile(), content, 0o600, now); err != nil {
		warnings = append(warnings, fmt.Sprintf("%s was not written (%v); this server already uses the new token, and the file is written from the datastore at its next start", s.layout.PasswdFile(), err))
	}
	if err := s.writeDerived(); err != nil {
		warnings = append(warnings, fmt.Sprintf("the token files were not written (%v); keep the new token printed here: the next start of this server takes it from %s", err, s.pendingTokenFile()))
	} else {
		s.dropPendingToken()
	}
	for _, m := range warnings {
		s.log.Error("token rotated in the datastore, but "+m, "token-file", s.layout.TokenFile())
	}
	caller := supervisor.CallerFrom(ctx)
	s.writeAudit(audit.Entry{Time: now.UTC(), Action: "token-rotate", Actor: caller.User, RemoteAddr: r.RemoteAddr,
		Detail: "server token changed; bootstrap data moved from " + oldKey + " to " + newKey})
	s.log.Warn("server token rotated; other servers must be restarted with the new token", "token-file", s.layout.TokenFile())
	hash, _ := pki.CAHash(s.cas[certs.ServerCA].BundlePEM)
	supervisor.JSON(w, api.TokenRotateResponse{Token: token.Format(hash, passwd.ServerUser, newPW), Warnings: warnings})
}

// errNewIsAgentPassword refuses a new server token whose password agents hold.
var errNewIsAgentPassword = errors.New("the new server token's password is the agent password, which agents hold and which must never authenticate as server; choose another token; nothing was changed")

func (s *Server) writeAudit(e audit.Entry) {
	if err := s.audit.Write(e); err != nil {
		s.log.Warn("audit log write failed", "error", err)
	}
}

// currentRecord reads this server's bootstrap record, which must exist.
func (s *Server) currentRecord(ctx context.Context) (*bootstrap.Record, int64, error) {
	rec, rev, err := s.readRecord(ctx)
	if err == nil && rec == nil {
		err = errors.New("no bootstrap data for this server's token in the datastore")
	}
	return rec, rev, err
}
