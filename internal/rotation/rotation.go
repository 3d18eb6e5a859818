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
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/pki"
)

// pair is a CA's certificate and key fields in the bootstrap record.
type pair struct{ cert, key string }

var caPairs = []pair{
	{"ServerCA", "ServerCAKey"},
	{"ClientCA", "ClientCAKey"},
	{"RequestHeaderCA", "RequestHeaderCAKey"},
	{"ETCDServerCA", "ETCDServerCAKey"},
	{"ETCDPeerCA", "ETCDPeerCAKey"},
}

// ServiceKey is the record field of the service-account keys.
const ServiceKey = "ServiceKey"

// StagedPath is where a field's file lives in a staging dir laid out as a server dir
// (tls/server-ca.crt, tls/etcd/peer-ca.key, tls/service.key, ...); "" for fields that
// rotate-ca does not take.
func StagedPath(field string) string {
	for _, f := range bootstrap.Files {
		if f.Field == field && strings.HasPrefix(f.Path, "server/tls/") {
			return strings.TrimPrefix(f.Path, "server/")
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
// within the file), and no two of the five CAs of the resulting record may share a key.
// With force, only the continuity checks are skipped: a changed CA must chain to the CA
// it replaces (so it must hold its chain), and a new service.key must keep the current
// signing key.
func Validate(current *bootstrap.Record, staged map[string][]byte, now time.Time, force bool) *Result {
	r := &Result{}
	fail := func(field, format string, a ...any) {
		r.Errors = append(r.Errors, StagedPath(field)+": "+fmt.Sprintf(format, a...))
	}
	for field := range staged {
		if StagedPath(field) == "" {
			r.Errors = append(r.Errors, fmt.Sprintf("%s: not a file rotate-ca accepts", field))
		}
	}
	cur := func(field string) []byte {
		f, _ := current.Get(field)
		return f.Content
	}
	changed := func(field string) bool {
		b, ok := staged[field]
		return ok && string(b) != string(cur(field))
	}
	for _, f := range Fields() {
		if _, ok := staged[f]; ok && !changed(f) {
			r.Unchanged = append(r.Unchanged, StagedPath(f))
		}
	}

	// signing is the public half of each CA's signing key in the resulting record.
	signing := map[string]crypto.PublicKey{}
	rotated := map[string]bool{}
	for _, p := range caPairs {
		if !changed(p.cert) && !changed(p.key) {
			if k, err := pki.ParseKey(cur(p.key)); err == nil {
				signing[p.key] = k.Public()
			}
			continue
		}
		rotated[p.key] = true
		certPEM, keyPEM := cur(p.cert), cur(p.key)
		if changed(p.cert) {
			certPEM = staged[p.cert]
		}
		if changed(p.key) {
			keyPEM = staged[p.key]
		}
		oldBundle, _ := pki.ParseCerts(cur(p.cert))
		newBundle, err := pki.ParseCerts(certPEM)
		if err != nil {
			fail(p.cert, "%v", err)
			continue
		}
		keys, err := pki.ParseKeys(keyPEM)
		if err != nil {
			fail(p.key, "%v", err)
			continue
		}
		signing[p.key] = keys[0].Public()
		ch := Change{Field: p.cert, File: StagedPath(p.cert), New: summarize(newBundle[0])}
		if len(oldBundle) > 0 {
			ch.Old = summarize(oldBundle[0])
		}
		r.Changes = append(r.Changes, ch)
		if changed(p.key) {
			r.Changes = append(r.Changes, Change{Field: p.key, File: StagedPath(p.key), KeyCount: len(keys)})
		}
		ca := &pki.CA{Cert: newBundle[0], Key: keys[0], Bundle: newBundle, BundlePEM: certPEM}
		for _, prob := range pki.CAProblems(ca, now) {
			if prob.Key {
				fail(p.key, "the first key does not match the first certificate of %s", StagedPath(p.cert))
			} else {
				fail(p.cert, "%v", prob.Err)
			}
		}
		if force || !changed(p.cert) {
			continue
		}
		if len(newBundle) == 1 {
			fail(p.cert, "the new CA file holds a single certificate; it must include its intermediate and root certificates")
			continue
		}
		if err := pki.ChainsTo(newBundle, oldBundle, now); err != nil {
			fail(p.cert, "the new CA does not chain to the current CA (%v); a new root needs a certificate cross-signed by the current one, or --force (disruptive)", err)
		}
	}
	for i, a := range caPairs {
		for _, b := range caPairs[i+1:] {
			ka, kb := signing[a.key], signing[b.key]
			if ka == nil || kb == nil || !(rotated[a.key] || rotated[b.key]) || !pki.PublicKeysEqual(ka, kb) {
				continue
			}
			named, other := b, a
			if !rotated[b.key] {
				named, other = a, b
			}
			fail(named.key, "the same key as %s: every CA must have a key of its own", StagedPath(other.key))
		}
	}

	if changed(ServiceKey) {
		keys, err := pki.ParseKeys(staged[ServiceKey])
		if err != nil {
			fail(ServiceKey, "%v", err)
		} else {
			r.Changes = append(r.Changes, Change{Field: ServiceKey, File: StagedPath(ServiceKey), KeyCount: len(keys)})
			if old, err := pki.ParseKeys(cur(ServiceKey)); err == nil && !force {
				found := false
				for _, k := range keys {
					if pki.PublicKeysEqual(k.Public(), old[0].Public()) {
						found = true
					}
				}
				if !found {
					fail(ServiceKey, "the new file does not contain the current service-account signing key (the first key of the current service.key); append it so that existing tokens stay valid, or use --force")
				}
			}
		}
	}

	r.OldCAHash, _ = pki.CAHash(cur("ServerCA"))
	r.NewCAHash = r.OldCAHash
	if changed("ServerCA") {
		if h, err := pki.CAHash(staged["ServerCA"]); err == nil {
			r.NewCAHash = h
		} else if r.OK() {
			fail("ServerCA", "cannot compute the token CA hash: %v", err)
		}
	}
	r.TokensChange = r.NewCAHash != r.OldCAHash
	if len(r.Changes) == 0 && len(r.Errors) == 0 {
		r.Errors = append(r.Errors, "nothing to rotate: every staged file is identical to the current one")
	}
	return r
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
