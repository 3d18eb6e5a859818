// Package rotation validates a CA rotation (SPEC §10): staged CA certificates, keys and
// service-account keys are checked against the current bootstrap record, every problem
// is collected, and the new record is built. It is pure: no files, no datastore; the
// server applies the result with a compare-and-swap.
package rotation

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/pki"
)

// pair is a CA's certificate and key fields in the bootstrap record.
type pair struct{ cert, key string }

// caPairs are the CAs rotate-ca checks (those marked Rotate in certs.CAs), in table
// order.
var caPairs = rotatedPairs()

func rotatedPairs() []pair {
	var out []pair
	for _, c := range certs.CAs {
		if c.Rotate {
			out = append(out, pair{c.CertField, c.KeyField})
		}
	}
	return out
}

// ServiceKey is the record field of the service-account keys.
const ServiceKey = certs.ServiceKeyField

// tokenCA is the record field of the CA whose hash join tokens pin.
var tokenCA = certs.CA(certs.ServerCA).CertField

// accepted reports whether rotate-ca takes field: a certificate or key of a CA it
// checks, or the service-account keys.
func accepted(field string) bool {
	return field == ServiceKey || slices.ContainsFunc(caPairs, func(p pair) bool { return field == p.cert || field == p.key })
}

// StagedPath is where a field's file lives in a staging dir laid out as a server dir
// (tls/ followed by the file's name in the server tls dir, as in certs.CAs); "" for
// fields that rotate-ca does not take.
func StagedPath(field string) string {
	if !accepted(field) {
		return ""
	}
	for _, f := range bootstrap.Files {
		if rest, ok := strings.CutPrefix(f.Path, bootstrap.TLSDir+"/"); ok && f.Field == field {
			return path.Join("tls", rest)
		}
	}
	return ""
}

// Fields lists the record fields rotate-ca accepts, in record order.
func Fields() []string {
	var out []string
	for _, f := range bootstrap.Files {
		if StagedPath(f.Field) != "" {
			out = append(out, f.Field)
		}
	}
	return out
}

// CertSummary describes the first certificate of a file.
type CertSummary struct {
	Subject     string    `json:"subject"`
	Issuer      string    `json:"issuer"`
	Fingerprint string    `json:"sha256_fingerprint"`
	NotAfter    time.Time `json:"not_after"`
}

// Change describes one staged file that differs from the record.
type Change struct {
	Field string       `json:"field"`
	File  string       `json:"file"`
	Old   *CertSummary `json:"old,omitempty"`
	New   *CertSummary `json:"new,omitempty"`
	// KeyCount is set for service.key: how many keys the new file holds.
	KeyCount int `json:"key_count,omitempty"`
}

// Result is the outcome of a validation.
type Result struct {
	Changes []Change `json:"changes"`
	// Errors are every failed check, each prefixed by the staged file it concerns.
	Errors       []string `json:"errors,omitempty"`
	OldCAHash    string   `json:"old_ca_hash"`
	NewCAHash    string   `json:"new_ca_hash"`
	TokensChange bool     `json:"tokens_change"`
	// Unchanged lists staged files identical to the record.
	Unchanged []string `json:"unchanged,omitempty"`
}

// OK reports whether every check passed.
func (r *Result) OK() bool { return len(r.Errors) == 0 }

// Validate checks the staged files against the current record at time now. Every
// changed CA must pass what the server checks of a CA file at start (pki.CAProblems:
// parsing, key/certificate agreement, CA:TRUE with keyCertSign, validity, the chain
// within the file), and no two of the CAs of the resulting record may share a key.
// With force, only the continuity checks are skipped: a changed CA must chain to the CA
// it replaces (so it must hold its chain), and a new service.key must keep the current
// signing key.
func Validate(current *bootstrap.Record, staged map[string][]byte, now time.Time, force bool) *Result {
	return validate(&validation{current: current, staged: staged, now: now, force: force, r: &Result{}})
}

// ValidateRollback checks going back from current to kept, the record a rotate-ca (or
// an earlier rollback) replaced, at time now: the files of kept (Staged) are checked
// as a rotation to them is, but for continuity. Going back must be a continuity the
// current cluster accepts: each changed CA must chain to the current CA file, which
// holds the kept root when the current CA was cross-signed by it, or shares its root;
// a kept CA file may hold a single certificate (the self-signed root it was). The kept
// service.key must hold the current signing key (existing tokens stay valid), or the
// current service.key the kept signing key (tokens signed after the rollback are
// accepted everywhere). With force, continuity is not checked.
func ValidateRollback(current, kept *bootstrap.Record, now time.Time, force bool) *Result {
	return validate(&validation{current: current, staged: Staged(kept), now: now, force: force, rollback: true, r: &Result{}})
}

// Staged returns the files of rec that rotate-ca takes, keyed by field, as a staging
// dir would give them.
func Staged(rec *bootstrap.Record) map[string][]byte {
	out := map[string][]byte{}
	for _, f := range Fields() {
		if v, ok := rec.Get(f); ok {
			out[f] = v.Content
		}
	}
	return out
}

// Kept returns the part of rec that the datastore keeps for a rollback when rec is
// replaced: the files rotate-ca takes, with their timestamps. The passwd and any field
// rotate-ca does not change are not kept: a rollback does not restore them.
func Kept(rec *bootstrap.Record) *bootstrap.Record {
	out := bootstrap.NewRecord()
	for _, f := range Fields() {
		if v, ok := rec.Get(f); ok {
			out.Set(f, v)
		}
	}
	return out
}

func validate(v *validation) *Result {
	staged := v.staged
	v.r.Errors = unknownFields(staged)
	v.r.Unchanged = v.unchanged()
	signing := map[string]crypto.PublicKey{}
	rotated := map[string]bool{}
	for _, p := range caPairs {
		signing[p.key], rotated[p.key] = v.checkCA(p)
	}
	for _, c := range sharedKeys(caPairs, signing, rotated) {
		v.fail(c.named.key, "the same key as %s: every CA must have a key of its own", StagedPath(c.other.key))
	}
	v.checkServiceKey()
	v.tokenHashes()
	if len(v.r.Changes) == 0 && len(v.r.Errors) == 0 {
		if v.rollback {
			v.r.Errors = append(v.r.Errors, "nothing to roll back: every kept file is identical to the current one")
		} else {
			v.r.Errors = append(v.r.Errors, "nothing to rotate: every staged file is identical to the current one")
		}
	}
	return v.r
}

// validation is the state of one Validate call.
type validation struct {
	current *bootstrap.Record
	staged  map[string][]byte
	now     time.Time
	force   bool
	// rollback: staged holds the kept record's files (ValidateRollback).
	rollback bool
	r        *Result
}

// fail records a failed check of field's staged file.
func (v *validation) fail(field, format string, a ...any) {
	v.r.Errors = append(v.r.Errors, StagedPath(field)+": "+fmt.Sprintf(format, a...))
}

// cur returns field's content in the current record.
func (v *validation) cur(field string) []byte {
	f, _ := v.current.Get(field)
	return f.Content
}

// changed reports whether field is staged with a content other than the current one.
func (v *validation) changed(field string) bool {
	b, ok := v.staged[field]
	return ok && string(b) != string(v.cur(field))
}

// next returns field's content in the resulting record.
func (v *validation) next(field string) []byte {
	if v.changed(field) {
		return v.staged[field]
	}
	return v.cur(field)
}

// unknownFields lists, sorted, an error for each staged field rotate-ca does not take.
func unknownFields(staged map[string][]byte) []string {
	var out []string
	for field := range staged {
		if StagedPath(field) == "" {
			out = append(out, fmt.Sprintf("%s: not a file rotate-ca accepts", field))
		}
	}
	slices.Sort(out)
	return out
}

// unchanged lists the staged paths of the staged files identical to the current ones.
func (v *validation) unchanged() []string {
	var out []string
	for _, f := range Fields() {
		if _, ok := v.staged[f]; ok && !v.changed(f) {
			out = append(out, StagedPath(f))
		}
	}
	return out
}

// checkCA checks the CA p of the resulting record when either of its files changes,
// records its changes, and returns the public half of its signing key (nil when that
// cannot be told) and whether it changes.
func (v *validation) checkCA(p pair) (crypto.PublicKey, bool) {
	if !v.changed(p.cert) && !v.changed(p.key) {
		k, err := pki.ParseKey(v.cur(p.key))
		if err != nil {
			return nil, false
		}
		return k.Public(), false
	}
	certPEM := v.next(p.cert)
	oldBundle, _ := pki.ParseCerts(v.cur(p.cert))
	newBundle, err := pki.ParseCerts(certPEM)
	if err != nil {
		v.fail(p.cert, "%v", err)
		return nil, true
	}
	keys, err := pki.ParseKeys(v.next(p.key))
	if err != nil {
		v.fail(p.key, "%v", err)
		return nil, true
	}
	ch := Change{Field: p.cert, File: StagedPath(p.cert), New: summarize(newBundle[0])}
	if len(oldBundle) > 0 {
		ch.Old = summarize(oldBundle[0])
	}
	v.r.Changes = append(v.r.Changes, ch)
	if v.changed(p.key) {
		v.r.Changes = append(v.r.Changes, Change{Field: p.key, File: StagedPath(p.key), KeyCount: len(keys)})
	}
	ca := &pki.CA{Cert: newBundle[0], Key: keys[0], Bundle: newBundle, BundlePEM: certPEM}
	for _, prob := range pki.CAProblems(ca, v.now) {
		if prob.Key {
			v.fail(p.key, "the first key does not match the first certificate of %s", StagedPath(p.cert))
		} else {
			v.fail(p.cert, "%v", prob.Err)
		}
	}
	if !v.force && v.changed(p.cert) {
		check := continuity
		if v.rollback {
			check = rollbackContinuity
		}
		if err := check(newBundle, oldBundle, v.now); err != nil {
			v.fail(p.cert, "%v", err)
		}
	}
	return keys[0].Public(), true
}

// errSingleCertificate is continuity's answer for a new CA file without its chain.
var errSingleCertificate = errors.New("the new CA file holds a single certificate; it must include its intermediate and root certificates")

// breakError is continuity's answer for a new CA that does not chain to the current one.
type breakError struct{ Err error }

func (e *breakError) Error() string {
	return fmt.Sprintf("the new CA does not chain to the current CA (%v); a new root needs a certificate cross-signed by the current one, or --force (disruptive)", e.Err)
}

func (e *breakError) Unwrap() error { return e.Err }

// continuity checks that the new CA bundle holds its chain and chains, at now, to the
// current bundle: errSingleCertificate or a *breakError when it does not.
func continuity(newBundle, oldBundle []*x509.Certificate, now time.Time) error {
	if len(newBundle) == 1 {
		return errSingleCertificate
	}
	if err := pki.ChainsTo(newBundle, oldBundle, now); err != nil {
		return &breakError{Err: err}
	}
	return nil
}

// rollbackError is rollbackContinuity's answer for a kept CA the current one does not
// lead back to.
type rollbackError struct{ Err error }

func (e *rollbackError) Error() string {
	return fmt.Sprintf("the kept CA does not chain to the current CA file (%v): the current CA was not cross-signed by the kept root and does not share it, so nodes holding the current CA would not trust certificates of the kept one; use --force (disruptive)", e.Err)
}

func (e *rollbackError) Unwrap() error { return e.Err }

// rollbackContinuity checks that the kept CA bundle chains, at now, to the current
// bundle: true when the current bundle holds the kept root (a cross-signed rotation
// being undone) or the kept CA's issuer (the same root). A kept single certificate is
// fine: it is what the cluster ran before.
func rollbackContinuity(keptBundle, currentBundle []*x509.Certificate, now time.Time) error {
	if err := pki.ChainsTo(keptBundle, currentBundle, now); err != nil {
		return &rollbackError{Err: err}
	}
	return nil
}

// clash is two CAs of the resulting record with the same signing key; named is the one
// the error is reported on (a rotated one).
type clash struct{ named, other pair }

// sharedKeys returns every pair of CAs, at least one of them rotated, whose signing
// keys (signing, by key field) are the same; CAs whose key is unknown are skipped.
func sharedKeys(pairs []pair, signing map[string]crypto.PublicKey, rotated map[string]bool) []clash {
	var out []clash
	for i, a := range pairs {
		for _, b := range pairs[i+1:] {
			ka, kb := signing[a.key], signing[b.key]
			if ka == nil || kb == nil || !(rotated[a.key] || rotated[b.key]) || !pki.PublicKeysEqual(ka, kb) {
				continue
			}
			if rotated[b.key] {
				out = append(out, clash{named: b, other: a})
			} else {
				out = append(out, clash{named: a, other: b})
			}
		}
	}
	return out
}

// checkServiceKey checks a changed service.key: it parses and, unless forced, holds the
// current signing key (the first key of the current file).
func (v *validation) checkServiceKey() {
	if !v.changed(ServiceKey) {
		return
	}
	keys, err := pki.ParseKeys(v.staged[ServiceKey])
	if err != nil {
		v.fail(ServiceKey, "%v", err)
		return
	}
	v.r.Changes = append(v.r.Changes, Change{Field: ServiceKey, File: StagedPath(ServiceKey), KeyCount: len(keys)})
	if v.force {
		return
	}
	old, err := pki.ParseKeys(v.cur(ServiceKey))
	if err != nil {
		return
	}
	if v.rollback {
		if !holdsKey(keys, old[0].Public()) && !holdsKey(old, keys[0].Public()) {
			v.fail(ServiceKey, "the kept file does not contain the current service-account signing key, nor does the current file contain the kept signing key: tokens would stop verifying; use --force")
		}
		return
	}
	if !holdsKey(keys, old[0].Public()) {
		v.fail(ServiceKey, "the new file does not contain the current service-account signing key (the first key of the current service.key); append it so that existing tokens stay valid, or use --force")
	}
}

// holdsKey reports whether one of keys has the public key pub.
func holdsKey(keys []crypto.Signer, pub crypto.PublicKey) bool {
	return slices.ContainsFunc(keys, func(k crypto.Signer) bool { return pki.PublicKeysEqual(k.Public(), pub) })
}

// tokenHashes sets the token CA hashes of the current and the resulting record.
func (v *validation) tokenHashes() {
	v.r.OldCAHash, _ = pki.CAHash(v.cur(tokenCA))
	v.r.NewCAHash = v.r.OldCAHash
	if v.changed(tokenCA) {
		if h, err := pki.CAHash(v.staged[tokenCA]); err == nil {
			v.r.NewCAHash = h
		} else if v.r.OK() {
			v.fail(tokenCA, "cannot compute the token CA hash: %v", err)
		}
	}
	v.r.TokensChange = v.r.NewCAHash != v.r.OldCAHash
}

// Apply returns a copy of current with the changed staged files set, each stamped with
// now (not the staged file's time, so that a restart never takes the live files for
// newer ones).
func Apply(current *bootstrap.Record, staged map[string][]byte, now time.Time) (*bootstrap.Record, error) {
	plain, err := current.Marshal()
	if err != nil {
		return nil, err
	}
	next, err := bootstrap.ParseRecord(plain)
	if err != nil {
		return nil, err
	}
	for field, content := range staged {
		if old, ok := current.Get(field); ok && string(old.Content) == string(content) {
			continue
		}
		next.Set(field, bootstrap.File{Timestamp: now.UTC(), Content: content})
	}
	return next, nil
}

func summarize(c *x509.Certificate) *CertSummary {
	sum := sha256.Sum256(c.Raw)
	return &CertSummary{
		Subject:     c.Subject.String(),
		Issuer:      c.Issuer.String(),
		Fingerprint: hex.EncodeToString(sum[:]),
		NotAfter:    c.NotAfter.UTC(),
	}
}

// ReadStaged is how a caller maps a staging dir to fields: for each field it asks read
// for the file at the field's path (joined to dir with "/"); read returns nil, nil when
// the file does not exist.
func ReadStaged(dir string, read func(path string) ([]byte, error)) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, f := range Fields() {
		b, err := read(path.Join(dir, StagedPath(f)))
		if err != nil {
			return nil, err
		}
		if b != nil {
			out[f] = b
		}
	}
	return out, nil
}
