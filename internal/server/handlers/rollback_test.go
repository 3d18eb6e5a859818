package handlers

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/rotation"
	"github.com/kpki/kpki/internal/server/record"
	"github.com/kpki/kpki/internal/token"
)

func mustKeyPEM(t *testing.T, keys ...crypto.Signer) []byte {
	t.Helper()
	var out []byte
	for _, k := range keys {
		b, err := pki.EncodeKey(k)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	return out
}

// fullRecord replaces the env's record with one holding every CA of the host, its key,
// a service.key and the passwd, and returns it.
func fullRecord(t *testing.T, e *env) *bootstrap.Record {
	t.Helper()
	now := e.clock.Now().UTC()
	rec := bootstrap.NewRecord()
	for _, c := range certs.CAs {
		ca := e.host.cas[c.ID]
		rec.Set(c.CertField, bootstrap.File{Timestamp: now, Content: ca.BundlePEM})
		rec.Set(c.KeyField, bootstrap.File{Timestamp: now, Content: mustKeyPEM(t, ca.Key)})
	}
	svc, err := e.api.Issuer.NewRSAKey(2048)
	if err != nil {
		t.Fatal(err)
	}
	rec.Set(certs.ServiceKeyField, bootstrap.File{Timestamp: now, Content: mustKeyPEM(t, svc)})
	rec.Set(bootstrap.PasswdField, bootstrap.File{Timestamp: now, Content: e.host.Creds().Bytes()})
	value, err := record.Seal(serverPW, rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.Put(context.Background(), bootstrap.KeyName(serverPW), value); err != nil {
		t.Fatal(err)
	}
	return rec
}

// crossSignedServerCA stages a new server CA under a new root cross-signed by the
// current one, and a service.key with a new key before the current one.
func crossSignedServerCA(t *testing.T, e *env, rec *bootstrap.Record) map[string][]byte {
	t.Helper()
	iss := e.api.Issuer
	old := e.host.cas[certs.ServerCA]
	rootKey, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	root, err := iss.SelfSignedCA(rootKey, "new-root", 2*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cross, err := iss.CrossSign(old, root, 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	subKey, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	sub, err := iss.SignCA(&pki.CA{Cert: root, Key: rootKey}, subKey.Public(), "new-server-ca", 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := iss.NewRSAKey(2048)
	if err != nil {
		t.Fatal(err)
	}
	cur, _ := rec.Get(certs.ServiceKeyField)
	return map[string][]byte{
		certs.CA(certs.ServerCA).CertField: pki.EncodeCerts(sub, root, cross, old.Cert),
		certs.CA(certs.ServerCA).KeyField:  mustKeyPEM(t, subKey),
		certs.ServiceKeyField:              append(mustKeyPEM(t, svc), cur.Content...),
	}
}

// rotateCA sends a rotate-ca request with query q (pw is the server password).
func (e *env) rotateCA(pw string, files map[string][]byte, q url.Values) (reply, api.RotateCAResponse) {
	e.t.Helper()
	body, err := json.Marshal(api.RotateCARequest{Files: files})
	if err != nil {
		e.t.Fatal(err)
	}
	path := api.PathRotateCA
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	r := e.must("PUT", path, "server", pw, body, nil)
	var out api.RotateCAResponse
	if r.code == http.StatusOK {
		if err := json.Unmarshal(r.body, &out); err != nil {
			e.t.Fatal(err)
		}
	}
	return r, out
}

var rollbackQuery = url.Values{api.QueryRollback: {"true"}}

func rollbackDryRun() url.Values {
	return url.Values{api.QueryRollback: {"true"}, "dry-run": {"true"}}
}

// sameRotated fails unless a and b hold the same files rotate-ca takes.
func sameRotated(t *testing.T, what string, a, b *bootstrap.Record) {
	t.Helper()
	for _, f := range rotation.Fields() {
		x, _ := a.Get(f)
		y, _ := b.Get(f)
		if !bytes.Equal(x.Content, y.Content) {
			t.Errorf("%s: %s differs", what, f)
		}
	}
}

func currentAndKept(t *testing.T, e *env, pw string) (*bootstrap.Record, int64, *bootstrap.Record) {
	t.Helper()
	rec, rev, err := record.Current(context.Background(), e.store, pw)
	if err != nil {
		t.Fatal(err)
	}
	kept, _, err := record.Previous(context.Background(), e.store, pw)
	if err != nil {
		t.Fatal(err)
	}
	return rec, rev, kept
}

// TestRotateCAKeepsAndRollbackRestores: rotate-ca keeps the files it replaced in the
// same transaction; a rollback dry run changes nothing; a rollback restores them (with
// the tokens of the old CA hash and an audit entry per file) and keeps the rotated
// ones, so that a second rollback rolls forward.
func TestRotateCAKeepsAndRollbackRestores(t *testing.T) {
	e := newEnv(t)
	orig := fullRecord(t, e)
	staged := crossSignedServerCA(t, e, orig)

	r, rot := e.rotateCA(serverPW, staged, nil)
	if r.code != http.StatusOK || !rot.Saved || !rot.TokensChange {
		t.Fatalf("rotate-ca: %d %s", r.code, r.body)
	}
	rotated, rotRev, kept := currentAndKept(t, e, serverPW)
	if kept == nil {
		t.Fatal("rotate-ca kept nothing")
	}
	sameRotated(t, "kept after rotate-ca", kept, orig)
	if _, ok := kept.Get(bootstrap.PasswdField); ok {
		t.Error("the kept record holds the passwd")
	}
	if _, mod, _ := e.store.Get(context.Background(), bootstrap.PreviousKeyName(serverPW)); mod != rotRev {
		t.Errorf("kept record written at %d, the record at %d: not one transaction", mod, rotRev)
	}

	// A dry run of the rollback reports the way back and writes nothing.
	before, _ := e.store.Value(bootstrap.KeyName(serverPW))
	keptBefore, _ := e.store.Value(bootstrap.PreviousKeyName(serverPW))
	updates := e.store.Calls("update")
	r, dry := e.rotateCA(serverPW, nil, rollbackDryRun())
	if r.code != http.StatusOK || !dry.DryRun || dry.Saved || !dry.TokensChange || dry.NewCAHash != rot.OldCAHash || dry.ServerToken == "" {
		t.Fatalf("rollback dry run: %d %s", r.code, r.body)
	}
	after, _ := e.store.Value(bootstrap.KeyName(serverPW))
	keptAfter, _ := e.store.Value(bootstrap.PreviousKeyName(serverPW))
	if !bytes.Equal(before, after) || !bytes.Equal(keptBefore, keptAfter) || e.store.Calls("update") != updates {
		t.Error("the rollback dry run wrote to the datastore")
	}

	auditBefore := len(e.auditEntries())
	r, back := e.rotateCA(serverPW, nil, rollbackQuery)
	if r.code != http.StatusOK || !back.Saved || !back.TokensChange || back.NewCAHash != rot.OldCAHash || back.OldCAHash != rot.NewCAHash {
		t.Fatalf("rollback: %d %s", r.code, r.body)
	}
	if tok, err := token.Parse(back.ServerToken); err != nil || tok.CAHash != rot.OldCAHash || tok.Password != serverPW {
		t.Errorf("rollback server token %v: want the original CA hash", err)
	}
	if tok, err := token.Parse(back.AgentToken); err != nil || tok.CAHash != rot.OldCAHash || tok.Password != agentPW {
		t.Errorf("rollback agent token %v: want the original CA hash", err)
	}
	restored, _, kept := currentAndKept(t, e, serverPW)
	sameRotated(t, "record after the rollback", restored, orig)
	sameRotated(t, "kept after the rollback", kept, rotated)
	if pf, _ := restored.Get(bootstrap.PasswdField); !bytes.Equal(pf.Content, e.host.Creds().Bytes()) {
		t.Error("the rollback changed the passwd")
	}
	entries := e.auditEntries()[auditBefore:]
	files := map[string]audit.Entry{}
	for _, en := range entries {
		if en.Action != "rotate-ca-rollback" || en.Actor != "server" {
			t.Errorf("audit entry %+v", en)
		}
		files[en.File] = en
	}
	if len(entries) != len(back.Changes) || len(files) != 3 {
		t.Errorf("%d audit entries for %d changed files: %+v", len(entries), len(back.Changes), entries)
	}
	if en := files["tls/server-ca.crt"]; en.Fingerprint == "" || en.OldFingerprint == "" || en.Fingerprint == en.OldFingerprint {
		t.Errorf("audit entry of server-ca.crt %+v", en)
	}
	for _, en := range entries {
		for _, secret := range []string{serverPW, agentPW, "PRIVATE KEY"} {
			if strings.Contains(en.Detail+en.Subject, secret) {
				t.Errorf("audit entry holds a secret: %+v", en)
			}
		}
	}

	// A second rollback rolls forward.
	r, fwd := e.rotateCA(serverPW, nil, rollbackQuery)
	if r.code != http.StatusOK || !fwd.Saved || fwd.NewCAHash != rot.NewCAHash {
		t.Fatalf("second rollback: %d %s", r.code, r.body)
	}
	forward, _, kept := currentAndKept(t, e, serverPW)
	sameRotated(t, "record after the second rollback", forward, rotated)
	sameRotated(t, "kept after the second rollback", kept, orig)
}

func TestRollbackRefusals(t *testing.T) {
	e := newEnv(t)
	orig := fullRecord(t, e)
	before, _ := e.store.Value(bootstrap.KeyName(serverPW))

	// Nothing kept: a clear error, nothing written.
	r, _ := e.rotateCA(serverPW, nil, rollbackQuery)
	if r.code != http.StatusBadRequest || !strings.Contains(r.err.Error, "nothing to roll back") || !strings.Contains(r.err.Error, "nothing was changed") {
		t.Errorf("rollback with nothing kept: %d %s", r.code, r.body)
	}
	r, _ = e.rotateCA(serverPW, crossSignedServerCA(t, e, orig), rollbackQuery)
	if r.code != http.StatusBadRequest || !strings.Contains(r.err.Error, "takes no staged files") {
		t.Errorf("rollback with files: %d %s", r.code, r.body)
	}
	if r, _ := e.rotateCA(agentPW, nil, rollbackQuery); r.code != http.StatusUnauthorized {
		t.Errorf("rollback with the agent password as server: %d", r.code)
	}
	if after, _ := e.store.Value(bootstrap.KeyName(serverPW)); !bytes.Equal(before, after) || e.store.Calls("update") != 0 {
		t.Error("a refused rollback wrote to the datastore")
	}
	if _, ok := e.store.Value(bootstrap.PreviousKeyName(serverPW)); ok {
		t.Error("a refused rollback kept a record")
	}

	// Kept files that the current CA does not lead back to (a forced rotation to an
	// unrelated root): refused without --force, accepted with it.
	other := newCA(t, e.api.Issuer, "unrelated-root")
	server := certs.CA(certs.ServerCA)
	forced := map[string][]byte{server.CertField: other.BundlePEM, server.KeyField: mustKeyPEM(t, other.Key)}
	if r, out := e.rotateCA(serverPW, forced, url.Values{"force": {"true"}}); r.code != http.StatusOK || !out.Saved {
		t.Fatalf("forced rotate-ca: %d %s", r.code, r.body)
	}
	before, _ = e.store.Value(bootstrap.KeyName(serverPW))
	r, _ = e.rotateCA(serverPW, nil, rollbackQuery)
	if r.code != http.StatusBadRequest || !strings.Contains(strings.Join(r.err.Errors, "\n"), "kept CA does not chain") {
		t.Errorf("rollback across unrelated roots: %d %s", r.code, r.body)
	}
	if after, _ := e.store.Value(bootstrap.KeyName(serverPW)); !bytes.Equal(before, after) {
		t.Error("a refused rollback changed the record")
	}
	r, out := e.rotateCA(serverPW, nil, url.Values{api.QueryRollback: {"true"}, "force": {"true"}})
	if r.code != http.StatusOK || !out.Saved {
		t.Fatalf("forced rollback: %d %s", r.code, r.body)
	}
	restored, _, _ := currentAndKept(t, e, serverPW)
	sameRotated(t, "after the forced rollback", restored, orig)
	for _, en := range e.auditEntries() {
		if en.Action == "rotate-ca-rollback" && !strings.Contains(en.Detail, "forced") {
			t.Errorf("forced rollback audit entry without \"forced\": %+v", en)
		}
	}
}

// TestRollbackConflictChangesNothing: a change of the record between the rollback's
// read and its write (another server's rotation) is a 409, and neither the record nor
// the kept files change.
func TestRollbackConflictChangesNothing(t *testing.T) {
	e := newEnv(t)
	orig := fullRecord(t, e)
	if r, _ := e.rotateCA(serverPW, crossSignedServerCA(t, e, orig), nil); r.code != http.StatusOK {
		t.Fatalf("rotate-ca: %d %s", r.code, r.body)
	}
	concurrent, _, _ := currentAndKept(t, e, serverPW)
	concurrent.Set(bootstrap.PasswdField, bootstrap.File{Timestamp: e.clock.Now().UTC(), Content: e.host.Creds().Bytes()})
	value, err := record.Seal(serverPW, concurrent)
	if err != nil {
		t.Fatal(err)
	}
	e.store.Hook("update", func(ctx context.Context, key string) error {
		return e.store.Put(ctx, key, value)
	})
	keptBefore, _ := e.store.Value(bootstrap.PreviousKeyName(serverPW))
	auditBefore := len(e.auditEntries())
	r, _ := e.rotateCA(serverPW, nil, rollbackQuery)
	if r.code != http.StatusConflict || !strings.Contains(r.err.Error, "changed while this rollback was checked; nothing was written") {
		t.Fatalf("rollback on a conflict: %d %s", r.code, r.body)
	}
	e.store.Hook("update", nil)
	if now, _ := e.store.Value(bootstrap.KeyName(serverPW)); !bytes.Equal(now, value) {
		t.Error("the record is not the concurrent writer's")
	}
	if keptAfter, _ := e.store.Value(bootstrap.PreviousKeyName(serverPW)); !bytes.Equal(keptBefore, keptAfter) {
		t.Error("the kept files changed on a conflict")
	}
	if n := len(e.auditEntries()) - auditBefore; n != 0 {
		t.Errorf("%d audit entries for a rollback that did not happen", n)
	}

	// Another rollback stored between this one's read of the record and its read of the
	// kept files: the kept files it reads are newer than the record it holds, and it
	// answers the conflict rather than comparing the two.
	first := true
	e.store.Hook("get", func(ctx context.Context, key string) error {
		if key != bootstrap.PreviousKeyName(serverPW) || !first {
			return nil
		}
		first = false
		rec, rev, kept := currentAndKept(t, e, serverPW)
		next, err := rotation.Apply(rec, rotation.Staged(kept), e.clock.Now())
		if err != nil {
			return err
		}
		_, err = record.UpdateKeeping(ctx, e.store, serverPW, rev, next, rotation.Kept(rec))
		return err
	})
	r, _ = e.rotateCA(serverPW, nil, rollbackQuery)
	e.store.Hook("get", nil)
	if r.code != http.StatusConflict || !strings.Contains(r.err.Error, "changed while this rollback was checked") {
		t.Fatalf("rollback racing another: %d %s", r.code, r.body)
	}
	rec, _, kept := currentAndKept(t, e, serverPW)
	sameRotated(t, "record after the other rollback", rec, orig)
	sameRotated(t, "kept after the other rollback", kept, concurrent)
}

// TestTokenRotateMovesTheKeptRecord: after a token rotation the kept files are under
// the new password's key, encrypted with it, nothing is left under the old one, and
// the rollback works with the new token.
func TestTokenRotateMovesTheKeptRecord(t *testing.T) {
	e := newEnv(t)
	orig := fullRecord(t, e)
	if r, _ := e.rotateCA(serverPW, crossSignedServerCA(t, e, orig), nil); r.code != http.StatusOK {
		t.Fatalf("rotate-ca: %d %s", r.code, r.body)
	}
	newPW := "new-server-password-0123456789ab"
	body, _ := json.Marshal(api.TokenRotateRequest{Token: newPW})
	if r := e.must("PUT", api.PathTokenRotate, "server", serverPW, body, nil); r.code != http.StatusOK {
		t.Fatalf("token rotate: %d %s", r.code, r.body)
	}
	if _, ok := e.store.Value(bootstrap.PreviousKeyName(serverPW)); ok {
		t.Error("the kept files are still under the old password's key")
	}
	value, ok := e.store.Value(bootstrap.PreviousKeyName(newPW))
	if !ok {
		t.Fatal("the kept files were not moved to the new password's key")
	}
	if _, err := bootstrap.Decrypt(serverPW, string(value)); err == nil {
		t.Error("the moved kept files still open with the old password")
	}
	_, _, kept := currentAndKept(t, e, newPW)
	sameRotated(t, "kept after the token rotation", kept, orig)
	r, out := e.rotateCA(newPW, nil, rollbackQuery)
	if r.code != http.StatusOK || !out.Saved {
		t.Fatalf("rollback after the token rotation: %d %s", r.code, r.body)
	}
	if tok, err := token.Parse(out.ServerToken); err != nil || tok.Password != newPW {
		t.Errorf("rollback's server token %v: want the new password", err)
	}
	restored, _, _ := currentAndKept(t, e, newPW)
	sameRotated(t, "record after the rollback", restored, orig)
}
