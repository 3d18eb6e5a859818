package handlers

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datastore"
	"github.com/kpki/kpki/internal/passwd"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/rotation"
	"github.com/kpki/kpki/internal/server/record"
	"github.com/kpki/kpki/internal/supervisor"
	"github.com/kpki/kpki/internal/token"
)

// maxRotateBody bounds a rotate-ca request: CA bundles and key files are small.
const maxRotateBody = 4 << 20

// handleRotateCA validates staged CA files against the datastore's record and, unless
// dry-run, stores the new record with a compare-and-swap, keeping the CA files it
// replaces (rotation.Kept) in the same transaction. With rollback=true the kept files
// are what is validated (rotation.ValidateRollback) and stored, and the files they
// replace are kept in turn. The disks are changed by the live apply: this server's,
// asked here, and every other server's, which watch the record.
func (s *API) handleRotateCA(w http.ResponseWriter, r *http.Request) {
	force := r.URL.Query().Get("force") == "true"
	dryRun := r.URL.Query().Get("dry-run") == "true"
	rollback := r.URL.Query().Get(api.QueryRollback) == "true"
	var req api.RotateCARequest
	if err := decodeBody(r, maxRotateBody, &req); err != nil {
		s.Sup.Error(w, r, http.StatusBadRequest, err)
		return
	}
	if rollback && len(req.Files) > 0 {
		s.Sup.Error(w, r, http.StatusBadRequest, errors.New("a rollback takes no staged files: it restores the CA files the last rotate-ca replaced; nothing was changed"))
		return
	}
	ctx := r.Context()
	pw := s.Host.Password()
	rec, rev, err := record.Current(ctx, s.Store, pw)
	if err != nil {
		s.datastoreError(w, r, http.StatusInternalServerError, err)
		return
	}
	now := s.now()
	action, what := "rotate-ca", "rotation"
	var res *rotation.Result
	if rollback {
		action, what = "rotate-ca-rollback", "rollback"
		// Read after the record: kept files newer than the record read were written by
		// a change made since, which the compare-and-swap below would refuse as well.
		kept, keptRev, err := record.Previous(ctx, s.Store, pw)
		if err != nil {
			s.datastoreError(w, r, http.StatusInternalServerError, err)
			return
		}
		if keptRev > rev {
			s.Sup.Error(w, r, http.StatusConflict, errRollbackConflict)
			return
		}
		if kept == nil {
			s.Sup.Error(w, r, http.StatusBadRequest, errors.New("nothing to roll back: the datastore keeps no CA files replaced by a rotate-ca; nothing was changed"))
			return
		}
		req.Files = rotation.Staged(kept)
		res = rotation.ValidateRollback(rec, kept, now, force)
	} else {
		res = rotation.Validate(rec, req.Files, now, force)
	}
	if !res.OK() {
		s.Sup.ErrorList(w, r, http.StatusBadRequest,
			fmt.Errorf("CA %s refused; nothing was changed: %s", what, strings.Join(res.Errors, "; ")), res.Errors)
		return
	}
	out := api.RotateCAResponse{Result: *res, DryRun: dryRun}
	if res.TokensChange {
		out.ServerToken = token.Format(res.NewCAHash, passwd.ServerUser, pw)
		out.AgentToken = token.Format(res.NewCAHash, passwd.AgentUser, agentPassword(s.Host.Creds()))
	}
	if dryRun {
		supervisor.JSON(w, out)
		return
	}
	next, err := rotation.Apply(rec, req.Files, now)
	if err != nil {
		s.Sup.Error(w, r, http.StatusInternalServerError, err)
		return
	}
	done := s.Own.Begin()
	newRev, err := record.UpdateKeeping(ctx, s.Store, pw, rev, next, rotation.Kept(rec))
	done(newRev)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, datastore.ErrConflict) {
			code = http.StatusConflict
			err = errors.New("the bootstrap data changed while this rotation was checked; nothing was written, run rotate-ca again")
			if rollback {
				err = errRollbackConflict
			}
		}
		s.datastoreError(w, r, code, err)
		return
	}
	s.Host.RecordChanged()
	out.Saved = true
	caller := supervisor.CallerFrom(ctx)
	for _, c := range res.Changes {
		e := audit.Entry{Time: now.UTC(), Action: action, Actor: caller.User, RemoteAddr: r.RemoteAddr, File: c.File}
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
	s.Log.Info("new CA material saved to the datastore; every server applies it live",
		"files", len(res.Changes), "tokens-change", res.TokensChange, "forced", force)
	supervisor.JSON(w, out)
}

// handleTokenRotate changes the server password: the record is re-encrypted under the
// new passphrase and moved to its new key in one transaction, then cred/passwd and the
// token files of this server are rewritten.
func (s *API) handleTokenRotate(w http.ResponseWriter, r *http.Request) {
	var req api.TokenRotateRequest
	if err := decodeBody(r, 64<<10, &req); err != nil {
		s.Sup.Error(w, r, http.StatusBadRequest, err)
		return
	}
	if !s.tokenRotating.CompareAndSwap(false, true) {
		s.Sup.Error(w, r, http.StatusConflict, errors.New("another token rotation is under way on this server; nothing was changed, try again when it has finished"))
		return
	}
	defer s.tokenRotating.Store(false)
	curPW := s.Host.Password()
	cas := s.Host.CAs()
	newPW := ""
	if req.Token != "" {
		t, err := token.Parse(req.Token)
		if err != nil {
			s.Sup.Error(w, r, http.StatusBadRequest, fmt.Errorf("new token: %w", err))
			return
		}
		newPW = t.Password
		if t.CAHash != "" {
			if h, _ := pki.CAHash(cas[certs.ServerCA].BundlePEM); h != t.CAHash {
				s.Sup.Error(w, r, http.StatusBadRequest, fmt.Errorf("new token's CA hash %s is not this cluster's %s", t.CAHash, h))
				return
			}
		}
	} else {
		p, err := token.GeneratePassword()
		if err != nil {
			s.Sup.Error(w, r, http.StatusInternalServerError, err)
			return
		}
		newPW = p
	}
	if newPW == curPW {
		s.Sup.Error(w, r, http.StatusBadRequest, errors.New("the new token is the current one"))
		return
	}
	if cur := s.Host.Creds(); cur != nil && cur.UsedByOthers(newPW) {
		s.Sup.Error(w, r, http.StatusBadRequest, errNewIsAgentPassword)
		return
	}
	ctx := r.Context()
	rec, rev, err := record.Current(ctx, s.Store, curPW)
	if err != nil {
		s.datastoreError(w, r, http.StatusInternalServerError, err)
		return
	}
	// The kept CA files move with the record (read after it: see handleRotateCA).
	kept, _, err := record.Previous(ctx, s.Store, curPW)
	if err != nil {
		s.datastoreError(w, r, http.StatusInternalServerError, err)
		return
	}
	pf, ok := rec.Get(bootstrap.PasswdField)
	if !ok {
		s.Sup.Error(w, r, http.StatusInternalServerError, errors.New("the bootstrap data in the datastore holds no PasswdFile, so the new token's passwd cannot be stored with it; nothing was changed: restart this server, which stores its cred/passwd there, and run token rotate again"))
		return
	}
	recPW, err := passwd.Parse(pf.Content)
	if err == nil {
		err = recPW.Validate()
	}
	if err != nil {
		s.Sup.Error(w, r, http.StatusInternalServerError, fmt.Errorf("passwd in the datastore: %w; nothing was changed: restart this server to repair it, and run token rotate again", err))
		return
	}
	if recPW.UsedByOthers(newPW) {
		s.Sup.Error(w, r, http.StatusBadRequest, errNewIsAgentPassword)
		return
	}
	now := s.now()
	newPasswd := recPW.WithPassword(passwd.ServerUser, newPW)
	content := newPasswd.Bytes()
	rec.Set(bootstrap.PasswdField, bootstrap.File{Timestamp: now.UTC(), Content: content})
	oldKey, newKey := bootstrap.KeyName(curPW), bootstrap.KeyName(newPW)
	if err := s.Host.WritePendingToken(newPW); err != nil {
		s.Sup.Error(w, r, http.StatusInternalServerError, fmt.Errorf("nothing was changed: %w", err))
		return
	}
	done := s.Own.Begin()
	newRev, err := record.Move(ctx, s.Store, curPW, rev, newPW, rec, kept)
	if err != nil {
		done(0)
		code := http.StatusInternalServerError
		if errors.Is(err, datastore.ErrConflict) {
			code = http.StatusConflict
			err = errors.New("the bootstrap data changed concurrently; nothing was written, try again")
			s.Host.DropPendingToken()
		}
		s.datastoreError(w, r, code, err)
		return
	}
	// The record has moved: from now on this server answers to the new password only,
	// whatever happens to the files below.
	s.Host.TokenRotated(newPW, newPasswd)
	done(newRev)
	var warnings []string
	if err := s.Host.WritePasswd(content, now); err != nil {
		warnings = append(warnings, fmt.Sprintf("%s was not written (%v); this server already uses the new token, and the file is written from the datastore at its next start", s.Host.PasswdFile(), err))
	}
	if err := s.Host.WriteTokenFiles(); err != nil {
		warnings = append(warnings, fmt.Sprintf("the token files were not written (%v); keep the new token printed here: the next start of this server takes it from %s", err, s.Host.PendingTokenFile()))
	} else {
		s.Host.DropPendingToken()
	}
	for _, m := range warnings {
		s.Log.Error("token rotated in the datastore, but "+m, "token-file", s.Host.TokenFile())
	}
	caller := supervisor.CallerFrom(ctx)
	s.writeAudit(audit.Entry{Time: now.UTC(), Action: "token-rotate", Actor: caller.User, RemoteAddr: r.RemoteAddr,
		Detail: "server token changed; bootstrap data moved from " + oldKey + " to " + newKey})
	s.Log.Warn("server token rotated; other servers must be restarted with the new token", "token-file", s.Host.TokenFile())
	hash, _ := pki.CAHash(cas[certs.ServerCA].BundlePEM)
	supervisor.JSON(w, api.TokenRotateResponse{Token: token.Format(hash, passwd.ServerUser, newPW), Warnings: warnings})
}

// errRollbackConflict answers a rollback that a change of the record made meanwhile.
var errRollbackConflict = errors.New("the bootstrap data changed while this rollback was checked; nothing was written, run rotate-ca --rollback --dry-run to see which way a rollback goes now")

// errNewIsAgentPassword refuses a new server token whose password agents hold.
var errNewIsAgentPassword = errors.New("the new server token's password is the agent password, which agents hold and which must never authenticate as server; choose another token; nothing was changed")

// agentPassword is the node entry's password of creds, "" without one.
func agentPassword(creds *passwd.File) string {
	if creds == nil {
		return ""
	}
	e, _ := creds.Find(passwd.AgentUser)
	return e.Password
}
