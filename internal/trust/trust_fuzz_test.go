package trust

import (
	"bytes"
	"crypto/x509"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/pki"
)

// fuzzPool is the certificates FuzzFollow builds bodies and stored files from: the
// root a node pinned, a cross-signed rotation from it (and a second one from there), a
// CA under each, and what an attacker without a trusted key can make: its own root, a copy
// of the new root signed by it, a self-signed root with the new root's subject and another
// key, and CAs under them.
type fuzzPool struct {
	certs   []*x509.Certificate
	pinned  *x509.Certificate
	trusted map[string]bool // DER of the roots a node may come to trust from pinned
}

func newFuzzPool(t testing.TB) *fuzzPool {
	f := newFixture(t)
	root0 := f.root("kpki-server-ca@1", 10*365*day)
	_, ca1, root1, cross1 := f.crossSigned(root0)
	_, ca2, root2, cross2 := f.crossSigned(root1)
	attacker := f.root("attacker", 10*365*day)
	fakeCross, err := f.iss.CrossSign(attacker, root1.Cert, 10*365*day)
	if err != nil {
		t.Fatal(err)
	}
	imposter := f.root(root1.Cert.Subject.CommonName, 10*365*day)
	return &fuzzPool{
		certs: []*x509.Certificate{root0.Cert, root1.Cert, cross1, ca1.Cert, root2.Cert, cross2, ca2.Cert,
			attacker.Cert, fakeCross, imposter.Cert, f.under(attacker, "kpki-server-ca@x", 365*day).Cert,
			f.under(imposter, "kpki-server-ca@y", 365*day).Cert},
		pinned:  root0.Cert,
		trusted: map[string]bool{string(root0.Cert.Raw): true, string(root1.Cert.Raw): true, string(root2.Cert.Raw): true},
	}
}

// pick turns bytes into certificates of the pool, at most 12.
func (p *fuzzPool) pick(b []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for i, c := range b {
		if i == 12 {
			break
		}
		out = append(out, p.certs[int(c)%len(p.certs)])
	}
	return out
}

// checkRootsVouched fails unless every root of tr after the first has the subject and
// key of its link, and the link is signed by an earlier root.
func checkRootsVouched(t *testing.T, tr *Trust) {
	t.Helper()
	if len(tr.links) != len(tr.Roots)-1 {
		t.Fatalf("%d links for %d roots", len(tr.links), len(tr.Roots))
	}
	for i, r := range tr.Roots[1:] {
		link := tr.links[i]
		if !isTwin(link, r) {
			t.Fatalf("root %d is not the twin of its link", i+1)
		}
		signed := false
		for _, e := range tr.Roots[:i+1] {
			signed = signed || (bytes.Equal(link.RawIssuer, e.RawSubject) && link.CheckSignatureFrom(e) == nil)
		}
		if !signed {
			t.Fatalf("the link of root %d is signed by no earlier root", i+1)
		}
	}
}

// FuzzFollow: bodies and stored files made of a pinned root, cross-signed rotations from
// it and what an attacker can make. Load, Resume and Follow never panic; whatever they
// accept trusts only roots the pinned one vouched for, through links signed by an
// earlier root, keeps its earlier roots, and its chain runs from the body's first
// certificate to one of its roots; Store and Load give back the same roots.
func FuzzFollow(f *testing.F) {
	f.Add([]byte{0}, []byte{3, 1, 2, 0}, []byte{0})
	f.Add([]byte{0, 2, 1}, []byte{6, 4, 5, 1}, []byte{0, 2, 1, 5, 4})
	f.Add([]byte{0}, []byte{10, 7, 8, 0}, []byte{0, 8, 1})
	f.Add([]byte{0}, []byte{11, 9, 2, 0}, []byte{0, 2, 9})
	pool := newFuzzPool(f)
	tok := tok(f, Hash(pool.pinned.Raw))
	now := start.Add(time.Hour)
	f.Fuzz(func(t *testing.T, first, body, stored []byte) {
		if len(first) == 0 || len(body) == 0 {
			return
		}
		cur, err := Resume(pki.EncodeCerts(pool.pick(first)...), tok, nil, now)
		if err != nil {
			return
		}
		check := func(what string, tr, before *Trust, body []*x509.Certificate) {
			t.Helper()
			if !tr.Chain[0].Equal(body[0]) || !tr.Anchor.Equal(tr.Chain[len(tr.Chain)-1]) || !tr.trusts(tr.Anchor) {
				t.Fatalf("%s: the chain does not run from the body's first certificate to a root", what)
			}
			for _, r := range tr.Roots {
				if !pool.trusted[string(r.Raw)] {
					t.Fatalf("%s: trusts %q, which the pinned root never vouched for", what, r.Subject.CommonName)
				}
			}
			checkRootsVouched(t, tr)
			if before != nil && !SameCerts(tr.Roots[:len(before.Roots)], before.Roots) {
				t.Fatalf("%s: earlier roots dropped", what)
			}
			back, err := Load(tr.Store(), tok)
			if err != nil || !SameCerts(back.Roots, tr.Roots) {
				t.Fatalf("%s: Store and Load: %v", what, err)
			}
		}
		check("first contact", cur, nil, pool.pick(first))
		list := pool.pick(body)
		if next, err := cur.Follow(pki.EncodeCerts(list...), tok, now); err == nil {
			check("follow", next, cur, list)
		}
		if st, err := Load(pki.EncodeCerts(pool.pick(stored)...), tok); err == nil {
			if !st.Roots[0].Equal(pool.pinned) {
				t.Fatal("Load started from a root the token does not name")
			}
			checkRootsVouched(t, st)
			if tr, err := Resume(pki.EncodeCerts(list...), tok, st, now); err == nil {
				check("resume", tr, nil, list)
			}
		}
	})
}
