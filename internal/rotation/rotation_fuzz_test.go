package rotation

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/pki"
)

// fuzzNow lies within the validity of the K3s fixture's CAs.
var fuzzNow = time.Date(2027, 6, 1, 12, 0, 0, 0, time.UTC)

// k3sRecord is the K3s-made bootstrap record of internal/bootstrap's fixture.
func k3sRecord(tb testing.TB) *bootstrap.Record {
	tb.Helper()
	plain, err := os.ReadFile(filepath.Join("..", "bootstrap", "testdata", "k3s-bootstrap", "plaintext.json"))
	if err != nil {
		tb.Fatal(err)
	}
	rec, err := bootstrap.ParseRecord(plain)
	if err != nil {
		tb.Fatal(err)
	}
	return rec
}

// fieldIndex returns the position of field in Fields().
func fieldIndex(tb testing.TB, field string) uint8 {
	i := slices.Index(Fields(), field)
	if i < 0 {
		tb.Fatalf("%s is not a rotate-ca field", field)
	}
	return uint8(i)
}

// noSecondField in a fuzz input stages a single file.
const noSecondField = 0xff

// stagedFromInput maps a fuzz input to staged files: field selectors index Fields(),
// and a second selector of 128 or more (or the first field again) stages one file.
func stagedFromInput(field1 uint8, data1 []byte, field2 uint8, data2 []byte) map[string][]byte {
	fields := Fields()
	staged := map[string][]byte{fields[int(field1)%len(fields)]: data1}
	if field2 < 128 {
		if f2 := fields[int(field2)%len(fields)]; f2 != fields[int(field1)%len(fields)] {
			staged[f2] = data2
		}
	}
	return staged
}

// partner returns the key field of a CA certificate field and the reverse; "" for
// ServiceKey.
func partner(field string) string {
	for _, p := range caPairs {
		switch field {
		case p.cert:
			return p.key
		case p.key:
			return p.cert
		}
	}
	return ""
}

var fuzzBeginLine = regexp.MustCompile(`-----BEGIN ([^\n]*)`)

// quotesKey reports whether msg holds 12 or more consecutive characters of the base64
// or hex of a private key block of any of files, other than text also found on a
// BEGIN line (a block type an error may name).
func quotesKey(msg string, files ...[]byte) bool {
	var secret, begins strings.Builder
	for _, data := range files {
		rest := data
		for {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if strings.HasSuffix(b.Type, "PRIVATE KEY") {
				secret.WriteString(base64.StdEncoding.EncodeToString(b.Bytes) + "\n" + hex.EncodeToString(b.Bytes) + "\n")
			}
		}
		for _, m := range fuzzBeginLine.FindAllSubmatch(data, -1) {
			begins.Write(m[1])
			begins.WriteByte('\n')
		}
	}
	s, bl := secret.String(), begins.String()
	for i := 0; i+12 <= len(msg); i++ {
		if w := msg[i : i+12]; strings.Contains(s, w) && !strings.Contains(bl, w) {
			return true
		}
	}
	return false
}

// FuzzValidateStaged checks the rotate-ca validation of staged files against the
// K3s-made record at a time when its CAs are valid: arbitrary bytes in one or two
// staged fields never make Validate panic; an accepted rotation has only staged files
// that parse and pass the checks the rotation promises (key matches certificate, CA
// certificate valid now, chain to the current CA or --force, service-account key kept
// or --force), and Apply turns it into a record holding exactly those files; a
// refused one says why, naming the staged file or its key or certificate, on one line,
// without key material.
func FuzzValidateStaged(f *testing.F) {
	current := k3sRecord(f)
	get := func(field string) []byte {
		file, ok := current.Get(field)
		if !ok {
			f.Fatalf("fixture record has no %s", field)
		}
		return file.Content
	}
	iss := pki.NewIssuer(clock.NewFake(fuzzNow), nil)
	must := func(c *x509.Certificate, err error) *x509.Certificate {
		f.Helper()
		if err != nil {
			f.Fatal(err)
		}
		return c
	}
	loadCA := func(p pair) *pki.CA {
		ca, err := pki.LoadCA(get(p.cert), get(p.key))
		if err != nil {
			f.Fatal(err)
		}
		return ca
	}
	encodeKeys := func(keys ...crypto.Signer) []byte {
		var out []byte
		for _, k := range keys {
			b, err := pki.EncodeKey(k)
			if err != nil {
				f.Fatal(err)
			}
			out = append(out, b...)
		}
		return out
	}
	newKey := func() crypto.Signer {
		k, err := iss.NewECKey()
		if err != nil {
			f.Fatal(err)
		}
		return k
	}
	server := loadCA(caPairs[0])
	const years = 5 * 365 * 24 * time.Hour

	type seed struct {
		field1 string
		data1  []byte
		field2 string
		data2  []byte
		force  bool
		ok     bool // the seed is a rotation Validate accepts
	}
	var seeds []seed
	// A server CA with the current key, signed by the current CA.
	renamed := must(iss.SignCA(server, server.Key.Public(), "kpki-server-ca@1800000000", years))
	seeds = append(seeds, seed{field1: "ServerCA", data1: pki.EncodeCerts(renamed, server.Cert), ok: true})
	// A new root cross-signed by the old CA, and a new server CA under it.
	rootKey, subKey := newKey(), newKey()
	root := must(iss.SelfSignedCA(rootKey, "kpki-server-ca-root@1800000000", years))
	sub := must(iss.SignCA(&pki.CA{Cert: root, Key: rootKey}, subKey.Public(), "kpki-server-ca@1800000001", years))
	crossBundle := pki.EncodeCerts(sub, root, must(iss.CrossSign(server, root, years)), server.Cert)
	seeds = append(seeds, seed{field1: "ServerCA", data1: crossBundle, field2: "ServerCAKey", data2: encodeKeys(subKey), ok: true})
	// The same without the cross-signed copy: refused, accepted with force.
	seeds = append(seeds, seed{field1: "ServerCA", data1: pki.EncodeCerts(sub, root), field2: "ServerCAKey", data2: encodeKeys(subKey)})
	seeds = append(seeds, seed{field1: "ServerCA", data1: pki.EncodeCerts(sub, root), field2: "ServerCAKey", data2: encodeKeys(subKey), force: true, ok: true})
	// The new key without its certificate.
	seeds = append(seeds, seed{field1: "ServerCAKey", data1: encodeKeys(subKey)})
	// A new service-account key with the current one appended, and without it.
	svcKey, err := iss.NewRSAKey(2048)
	if err != nil {
		f.Fatal(err)
	}
	seeds = append(seeds, seed{field1: ServiceKey, data1: append(encodeKeys(svcKey), get(ServiceKey)...), ok: true})
	seeds = append(seeds, seed{field1: ServiceKey, data1: encodeKeys(svcKey)})
	seeds = append(seeds, seed{field1: ServiceKey, data1: encodeKeys(svcKey), force: true, ok: true})
	// The current client CA key followed by another key.
	seeds = append(seeds, seed{field1: "ClientCAKey", data1: append(bytes.Clone(get("ClientCAKey")), encodeKeys(newKey())...), ok: true})
	// The etcd peer CA re-issued alone with its key: accepted only with force.
	peer := loadCA(caPairs[4])
	peerNew := pki.EncodeCert(must(iss.SelfSignedCA(peer.Key, "etcd-peer-ca@1800000000", years)))
	seeds = append(seeds, seed{field1: "ETCDPeerCA", data1: peerNew})
	seeds = append(seeds, seed{field1: "ETCDPeerCA", data1: peerNew, force: true, ok: true})
	// Another CA's certificate, an expired one, an end of file cut off, garbage.
	seeds = append(seeds, seed{field1: "RequestHeaderCA", data1: get("ClientCA"), force: true})
	expired := must(pki.NewIssuer(clock.NewFake(fuzzNow.Add(-2*years)), nil).SelfSignedCA(server.Key, "old", years))
	seeds = append(seeds, seed{field1: "ServerCA", data1: pki.EncodeCert(expired), force: true})
	seeds = append(seeds, seed{field1: "ETCDServerCA", data1: get("ETCDServerCA")[:100]})
	seeds = append(seeds, seed{field1: "ETCDServerCAKey", data1: []byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"), field2: "ETCDServerCA", data2: []byte("not pem")})
	// Every current file unchanged.
	for _, field := range Fields() {
		seeds = append(seeds, seed{field1: field, data1: get(field)})
	}
	for _, s := range seeds {
		f2 := uint8(noSecondField)
		if s.field2 != "" {
			f2 = fieldIndex(f, s.field2)
		}
		if r := Validate(current, stagedFromInput(fieldIndex(f, s.field1), s.data1, f2, s.data2), fuzzNow, s.force); r.OK() != s.ok {
			f.Fatalf("seed %s+%s force=%v: OK = %v, want %v (errors %q)", s.field1, s.field2, s.force, r.OK(), s.ok, r.Errors)
		}
		f.Add(fieldIndex(f, s.field1), s.data1, f2, s.data2, s.force)
	}

	f.Fuzz(func(t *testing.T, field1 uint8, data1 []byte, field2 uint8, data2 []byte, force bool) {
		staged := stagedFromInput(field1, data1, field2, data2)
		r := Validate(current, staged, fuzzNow, force)
		if _, err := json.Marshal(r); err != nil {
			t.Fatalf("result does not encode as JSON: %v", err)
		}
		cur := func(field string) []byte {
			file, _ := current.Get(field)
			return file.Content
		}
		// The file a field holds after the rotation: the staged one, or the current.
		after := func(field string) []byte {
			if b, ok := staged[field]; ok {
				return b
			}
			return cur(field)
		}
		changed := map[string]bool{}
		for field, b := range staged {
			if !bytes.Equal(b, cur(field)) {
				changed[field] = true
			}
		}

		if !r.OK() {
			var files [][]byte
			for _, field := range Fields() {
				files = append(files, after(field), cur(field))
			}
			for _, e := range r.Errors {
				if strings.ContainsAny(e, "\n\r") {
					t.Fatalf("error %q is not one line", e)
				}
				if quotesKey(e, files...) {
					t.Fatalf("error %q quotes key material", e)
				}
				named := strings.HasPrefix(e, "nothing to rotate")
				for field := range staged {
					for _, f := range []string{field, partner(field)} {
						named = named || f != "" && strings.HasPrefix(e, StagedPath(f)+": ")
					}
				}
				if !named {
					t.Fatalf("error %q does not start with the staged file (or its certificate or key) it is about", e)
				}
			}
			if len(changed) == 0 && !slices.ContainsFunc(r.Errors, func(e string) bool { return strings.HasPrefix(e, "nothing to rotate") }) {
				t.Fatalf("nothing changed, yet the errors are %q", r.Errors)
			}
			return
		}

		// Accepted: every changed file parses and passes the promised checks.
		if len(changed) == 0 {
			t.Fatal("a rotation that changes nothing was accepted")
		}
		for field := range changed {
			if field == ServiceKey {
				keys, err := pki.ParseKeys(staged[field])
				if err != nil {
					t.Fatalf("accepted %s does not parse: %v", StagedPath(field), err)
				}
				if old, err := pki.ParseKeys(cur(field)); err == nil && !force &&
					!slices.ContainsFunc(keys, func(k crypto.Signer) bool { return pki.PublicKeysEqual(k.Public(), old[0].Public()) }) {
					t.Fatal("accepted service.key drops the current signing key without --force")
				}
				continue
			}
			certField, keyField := field, partner(field)
			if strings.HasSuffix(field, "Key") {
				certField, keyField = partner(field), field
			}
			bundle, err := pki.ParseCerts(after(certField))
			if err != nil {
				t.Fatalf("accepted rotation of %s: %s does not parse: %v", StagedPath(field), StagedPath(certField), err)
			}
			keys, err := pki.ParseKeys(after(keyField))
			if err != nil {
				t.Fatalf("accepted rotation of %s: %s does not parse: %v", StagedPath(field), StagedPath(keyField), err)
			}
			if !pki.KeyMatchesCert(keys[0], bundle[0]) {
				t.Fatalf("accepted rotation of %s: key does not match certificate", StagedPath(field))
			}
			if err := pki.CheckCACert(bundle[0], fuzzNow); err != nil {
				t.Fatalf("accepted rotation of %s: %v", StagedPath(field), err)
			}
			if !force && changed[certField] {
				old, err := pki.ParseCerts(cur(certField))
				if err != nil {
					t.Fatal(err)
				}
				if len(bundle) < 2 || pki.ChainsTo(bundle, old, fuzzNow) != nil {
					t.Fatalf("accepted %s does not chain to the current CA", StagedPath(certField))
				}
			}
		}
		if changed["ServerCA"] {
			if h, err := pki.CAHash(staged["ServerCA"]); err == nil && r.NewCAHash != h {
				t.Fatalf("NewCAHash = %s, the staged server CA hashes to %s", r.NewCAHash, h)
			}
		}
		if r.TokensChange != (r.NewCAHash != r.OldCAHash) {
			t.Fatal("TokensChange disagrees with the hashes")
		}

		next, err := Apply(current, staged, fuzzNow)
		if err != nil {
			t.Fatalf("Apply of an accepted rotation: %v", err)
		}
		plain, err := next.Marshal()
		if err != nil {
			t.Fatalf("rotated record does not marshal: %v", err)
		}
		reparsed, err := bootstrap.ParseRecord(plain)
		if err != nil {
			t.Fatalf("rotated record does not parse: %v", err)
		}
		for _, spec := range bootstrap.Files {
			got, _ := reparsed.Get(spec.Field)
			old, _ := current.Get(spec.Field)
			if changed[spec.Field] {
				if !bytes.Equal(got.Content, staged[spec.Field]) || !got.Timestamp.Equal(fuzzNow) {
					t.Fatalf("rotated record: %s is not the staged file stamped now", spec.Field)
				}
			} else if !bytes.Equal(got.Content, old.Content) || !got.Timestamp.Equal(old.Timestamp) {
				t.Fatalf("rotated record: unchanged %s differs", spec.Field)
			}
		}
		var before, afterFields map[string]json.RawMessage
		oldPlain, _ := current.Marshal()
		if json.Unmarshal(oldPlain, &before) != nil || json.Unmarshal(plain, &afterFields) != nil {
			t.Fatal("records are not JSON objects")
		}
		if !bytes.Equal(before["IPSECKey"], afterFields["IPSECKey"]) || len(before) != len(afterFields) {
			t.Fatal("rotation lost or added a field the record holds for another writer")
		}
	})
}
