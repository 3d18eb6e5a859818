package trust

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

const (
	day = 24 * time.Hour
	pw  = "0123456789abcdef0123456789abcdef"
)

// start is the fake clock's time when the fixtures are made.
var start = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

type fixture struct {
	t   testing.TB
	iss *pki.Issuer
}

func newFixture(t testing.TB) *fixture {
	return &fixture{t: t, iss: pki.NewIssuer(clock.NewFake(start), nil)}
}

func (f *fixture) root(cn string, validity time.Duration) *pki.CA {
	f.t.Helper()
	key, err := f.iss.NewECKey()
	if err != nil {
		f.t.Fatal(err)
	}
	c, err := f.iss.SelfSignedCA(key, cn, validity)
	if err != nil {
		f.t.Fatal(err)
	}
	return &pki.CA{Cert: c, Key: key, Bundle: []*x509.Certificate{c}}
}

func (f *fixture) under(parent *pki.CA, cn string, validity time.Duration) *pki.CA {
	f.t.Helper()
	key, err := f.iss.NewECKey()
	if err != nil {
		f.t.Fatal(err)
	}
	c, err := f.iss.SignCA(parent, key.Public(), cn, validity)
	if err != nil {
		f.t.Fatal(err)
	}
	return &pki.CA{Cert: c, Key: key, Bundle: append([]*x509.Certificate{c}, parent.Bundle...)}
}

func (f *fixture) leaf(ca *pki.CA) *x509.Certificate {
	f.t.Helper()
	key, err := f.iss.NewECKey()
	if err != nil {
		f.t.Fatal(err)
	}
	c, err := f.iss.SignLeaf(ca, key.Public(), pki.LeafProfile{
		CommonName: "kpki", IPs: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, 30*day)
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// crossSigned is what `kpki certificate cross-sign-ca` and rotate-default-ca-certs.sh
// stage for a CA whose current root is old: new CA + new root (self-signed) + new root
// cross-signed by old + old.
func (f *fixture) crossSigned(old *pki.CA) (bundle []*x509.Certificate, newCA, newRoot *pki.CA, cross *x509.Certificate) {
	f.t.Helper()
	newRoot = f.root("kpki-server-root@2", 20*365*day)
	cross, err := f.iss.CrossSign(old, newRoot.Cert, 20*365*day)
	if err != nil {
		f.t.Fatal(err)
	}
	newCA = f.under(newRoot, "kpki-server-ca@2", 10*365*day)
	return []*x509.Certificate{newCA.Cert, newRoot.Cert, cross, old.Cert}, newCA, newRoot, cross
}

func tok(t testing.TB, hash string) token.Token {
	t.Helper()
	if hash == "" {
		return token.Token{Password: pw}
	}
	tk, err := token.Parse(token.Format(hash, "node", pw))
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func names(list []*x509.Certificate) string {
	var s []string
	for _, c := range list {
		s = append(s, c.Subject.CommonName)
	}
	return "[" + strings.Join(s, " ") + "]"
}

// checkTrust asserts that tr anchors on anchor and keeps exactly chain.
func checkTrust(t *testing.T, tr *Trust, anchor *x509.Certificate, chain ...*x509.Certificate) {
	t.Helper()
	if !tr.Anchor.Equal(anchor) {
		t.Errorf("anchor %q, want %q", tr.Anchor.Subject.CommonName, anchor.Subject.CommonName)
	}
	if !SameCerts(tr.Chain, chain) {
		t.Errorf("chain %s, want %s", names(tr.Chain), names(chain))
	}
	if !bytes.Equal(tr.PEM, pki.EncodeCerts(chain...)) {
		t.Errorf("PEM is not the chain %s", names(chain))
	}
	if !tr.CA().Cert.Equal(chain[0]) {
		t.Errorf("CA() is %q, want the served CA %q", tr.CA().Cert.Subject.CommonName, chain[0].Subject.CommonName)
	}
	only := x509.NewCertPool()
	only.AddCert(anchor)
	if !tr.Pool().Equal(only) {
		t.Error("the pool holds more than the anchor")
	}
}

func TestPinForms(t *testing.T) {
	f := newFixture(t)
	single := f.root("kpki-server-ca@1", 10*365*day)
	singlePEM := pki.EncodeCert(single.Cert)
	root := f.root("custom-root", 20*365*day)
	inter := f.under(root, "custom-intermediate", 15*365*day)
	server := f.under(inter, "custom-server-ca", 10*365*day)
	chainPEM := pki.EncodeCerts(server.Bundle...) // server, intermediate, root: generate-ca's layout
	rotated, newCA, newRoot, cross := f.crossSigned(single)
	rotatedPEM := pki.EncodeCerts(rotated...)
	kpkiHash, err := pki.CAHash(rotatedPEM)
	if err != nil {
		t.Fatal(err)
	}
	if kpkiHash != Hash(newRoot.Cert.Raw) {
		t.Fatalf("pki.CAHash of a cross-signed bundle is not its new root's hash")
	}

	for _, tc := range []struct {
		name   string
		body   []byte
		pin    string
		anchor *x509.Certificate
		chain  []*x509.Certificate
	}{
		{"legacy: hash of the raw one-certificate file", singlePEM, Hash(singlePEM), single.Cert, []*x509.Certificate{single.Cert}},
		{"one certificate: hash of its DER", singlePEM, Hash(single.Cert.Raw), single.Cert, []*x509.Certificate{single.Cert}},
		{"chain: K3s root hash", chainPEM, Hash(root.Cert.Raw), root.Cert, server.Bundle},
		{"chain: first certificate", chainPEM, Hash(server.Cert.Raw), server.Cert, []*x509.Certificate{server.Cert}},
		{"chain: intermediate", chainPEM, Hash(inter.Cert.Raw), inter.Cert, []*x509.Certificate{server.Cert, inter.Cert}},
		{"cross-signed: old root (the token before the rotation)", rotatedPEM, Hash(single.Cert.Raw), single.Cert,
			[]*x509.Certificate{newCA.Cert, cross, single.Cert}},
		{"cross-signed: first certificate (rotate-default-ca-certs.sh's updated token)", rotatedPEM, Hash(newCA.Cert.Raw), newCA.Cert,
			[]*x509.Certificate{newCA.Cert}},
		{"cross-signed: new root (kpki token show)", rotatedPEM, kpkiHash, newRoot.Cert,
			[]*x509.Certificate{newCA.Cert, newRoot.Cert}},
		{"upper-case hash in the token", chainPEM, strings.ToUpper(Hash(root.Cert.Raw)), root.Cert, server.Bundle},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := Pin(tc.body, tok(t, tc.pin), start)
			if err != nil {
				t.Fatal(err)
			}
			if !tr.Pinned {
				t.Error("a secure token's trust is not marked pinned")
			}
			checkTrust(t, tr, tc.anchor, tc.chain...)
		})
	}
}

func TestPinShortTokenTrustsTheRootOnFirstUse(t *testing.T) {
	f := newFixture(t)
	root := f.root("custom-root", 20*365*day)
	server := f.under(root, "custom-server-ca", 10*365*day)
	attacker := f.root("attacker-ca", 365*day)
	body := pki.EncodeCerts(server.Cert, root.Cert, attacker.Cert)
	tr, err := Pin(body, tok(t, ""), start)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Pinned {
		t.Error("a short token's trust is marked pinned")
	}
	checkTrust(t, tr, root.Cert, server.Cert, root.Cert)
	if !SameCerts(tr.Served, []*x509.Certificate{server.Cert, root.Cert, attacker.Cert}) {
		t.Errorf("Served %s is not the body", names(tr.Served))
	}
}

// TestPinDropsAppendedCA serves the real chain with an attacker's CA appended: the
// attacker's CA is in nothing the node keeps, and a server certificate it signed does
// not verify against the trust.
func TestPinDropsAppendedCA(t *testing.T) {
	f := newFixture(t)
	single := f.root("kpki-server-ca@1", 10*365*day)
	root := f.root("custom-root", 20*365*day)
	server := f.under(root, "custom-server-ca", 10*365*day)
	attacker := f.root("attacker-ca", 365*day)
	attackerLeaf := f.leaf(attacker)
	realLeaf := f.leaf(server)

	chainBody := pki.EncodeCerts(server.Cert, root.Cert, attacker.Cert)
	for _, pin := range []string{Hash(root.Cert.Raw), Hash(server.Cert.Raw), ""} {
		tr, err := Pin(chainBody, tok(t, pin), start)
		if err != nil {
			t.Fatalf("pin %q: %v", pin, err)
		}
		for _, c := range tr.Chain {
			if c.Equal(attacker.Cert) {
				t.Errorf("pin %q: the appended CA is kept", pin)
			}
		}
		if bytes.Contains(tr.PEM, pki.EncodeCert(attacker.Cert)) {
			t.Errorf("pin %q: the appended CA is in the PEM the node writes", pin)
		}
		if _, err := attackerLeaf.Verify(x509.VerifyOptions{Roots: tr.Pool(), Intermediates: pool(chainBody), CurrentTime: start}); err == nil {
			t.Errorf("pin %q: a server certificate of the appended CA verifies against the trust", pin)
		}
		if _, err := realLeaf.Verify(x509.VerifyOptions{Roots: tr.Pool(), Intermediates: pool(pki.EncodeCerts(server.Bundle...)), CurrentTime: start}); err != nil {
			t.Errorf("pin %q: the real server certificate does not verify: %v", pin, err)
		}
	}

	// A one-certificate cluster with an appended CA: the legacy hash covers the raw
	// file of one certificate, so a two-certificate body does not match it.
	singlePEM := pki.EncodeCert(single.Cert)
	body := pki.EncodeCerts(single.Cert, attacker.Cert)
	_, err := Pin(body, tok(t, Hash(singlePEM)), start)
	want := fmt.Sprintf("token CA hash does not match the Cluster CA certificate hash: %s != %s", Hash(singlePEM), Hash(single.Cert.Raw))
	if err == nil || err.Error() != want || !errors.Is(err, token.ErrCAHashMismatch) {
		t.Errorf("legacy pin, appended CA: %v, want %q", err, want)
	}
	tr, err := Pin(body, tok(t, Hash(single.Cert.Raw)), start)
	if err != nil {
		t.Fatal(err)
	}
	checkTrust(t, tr, single.Cert, single.Cert)
}

func TestPinRefusals(t *testing.T) {
	f := newFixture(t)
	root := f.root("custom-root", 20*365*day)
	inter := f.under(root, "custom-intermediate", 15*365*day)
	server := f.under(inter, "custom-server-ca", 10*365*day)
	attacker := f.root("attacker-ca", 365*day)
	attackerCA := f.under(attacker, "kpki-server-ca", 365*day)
	chainPEM := pki.EncodeCerts(server.Bundle...)
	rootHash := Hash(root.Cert.Raw)
	other := Hash([]byte("another cluster"))

	for _, tc := range []struct {
		name string
		body []byte
		pin  string
		want error
		msg  string // exact message, when set
	}{
		{"hash of no certificate of the body", chainPEM, other, token.ErrCAHashMismatch,
			fmt.Sprintf("token CA hash does not match the Cluster CA certificate hash: %s != %s", other, rootHash)},
		{"hash of the raw file of a chain", chainPEM, Hash(chainPEM), token.ErrCAHashMismatch,
			fmt.Sprintf("token CA hash does not match the Cluster CA certificate hash: %s != %s", Hash(chainPEM), rootHash)},
		{"attacker's CA first, the real root appended", pki.EncodeCerts(attackerCA.Cert, attacker.Cert, root.Cert), rootHash, ErrNoChain, ""},
		{"attacker's CA first, short token is its own root", pki.EncodeCerts(attackerCA.Cert, root.Cert), "", ErrNotCA, ""},
		{"a leaf first", pki.EncodeCerts(append([]*x509.Certificate{f.leaf(server)}, server.Bundle...)...), rootHash, ErrNotCA, ""},
		{"not PEM", []byte("<html>hello</html>"), rootHash, ErrNotCA, ""},
		{"truncated PEM", chainPEM[:len(chainPEM)/2], rootHash, ErrNotCA, ""},
		{"the intermediate missing", pki.EncodeCerts(server.Cert, root.Cert), rootHash, ErrNoChain, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := Pin(tc.body, tok(t, tc.pin), start)
			if err == nil {
				t.Fatalf("Pin accepted %s", names(tr.Chain))
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("error %q is not %q", err, tc.want)
			}
			if tc.msg != "" && err.Error() != tc.msg {
				t.Errorf("error\n %q\nwant\n %q", err, tc.msg)
			}
		})
	}
}

func TestExpiredChainsRefused(t *testing.T) {
	f := newFixture(t)
	root := f.root("short-root", 10*day)
	server := f.under(root, "long-server-ca", 100*day) // outlives its root
	body := pki.EncodeCerts(server.Bundle...)
	hash := Hash(root.Cert.Raw)
	if _, err := Pin(body, tok(t, hash), start.Add(9*day)); err != nil {
		t.Fatalf("chain refused while valid: %v", err)
	}
	for _, at := range []time.Time{start.Add(11 * day), start.Add(101 * day), start.Add(-2 * day)} {
		if _, err := Pin(body, tok(t, hash), at); !errors.Is(err, ErrNoChain) {
			t.Errorf("Pin at %s: %v, want ErrNoChain", at, err)
		}
		if _, err := Pin(body, tok(t, ""), at); !errors.Is(err, ErrNoChain) {
			t.Errorf("Pin with a short token at %s: %v, want ErrNoChain", at, err)
		}
	}
	single := f.root("kpki-server-ca", 10*day)
	singlePEM := pki.EncodeCert(single.Cert)
	if _, err := Pin(singlePEM, tok(t, Hash(singlePEM)), start.Add(11*day)); !errors.Is(err, ErrNoChain) {
		t.Errorf("expired single CA: %v, want ErrNoChain", err)
	}

	tr, err := Pin(body, tok(t, hash), start)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Follow(body, tok(t, hash), start.Add(11*day)); !errors.Is(err, ErrUntrustedChange) {
		t.Errorf("Follow after the anchor expired: %v, want ErrUntrustedChange", err)
	}
}

// checkRoots asserts that tr trusts exactly roots, and its pool holds them alone.
func checkRoots(t *testing.T, tr *Trust, roots ...*x509.Certificate) {
	t.Helper()
	if !SameCerts(tr.Roots, roots) {
		t.Errorf("roots %s, want %s", names(tr.Roots), names(roots))
	}
	want := x509.NewCertPool()
	for _, r := range roots {
		want.AddCert(r)
	}
	if !tr.Pool().Equal(want) {
		t.Errorf("the pool is not the roots %s", names(roots))
	}
}

// followed is checkTrust for a trust that moved along a rotation: its anchor is the last
// certificate of chain and its roots are roots.
func followed(t *testing.T, tr *Trust, roots []*x509.Certificate, chain ...*x509.Certificate) {
	t.Helper()
	if !tr.Anchor.Equal(chain[len(chain)-1]) || !SameCerts(tr.Chain, chain) || !bytes.Equal(tr.PEM, pki.EncodeCerts(chain...)) {
		t.Errorf("anchor %q chain %s, want chain %s", tr.Anchor.Subject.CommonName, names(tr.Chain), names(chain))
	}
	checkRoots(t, tr, roots...)
}

// TestFollowCrossSignedRotation: a node follows a cross-signed rotation and moves to the
// new root, which the old one vouched for; the old root stays trusted.
func TestFollowCrossSignedRotation(t *testing.T) {
	f := newFixture(t)
	old := f.root("kpki-server-ca@1", 10*365*day)
	oldPEM := pki.EncodeCert(old.Cert)
	rotated, newCA, newRoot, cross := f.crossSigned(old)
	rotatedPEM := pki.EncodeCerts(rotated...)

	for _, pin := range []string{Hash(oldPEM), Hash(old.Cert.Raw), ""} {
		cur, err := Pin(oldPEM, tok(t, pin), start)
		if err != nil {
			t.Fatal(err)
		}
		next, err := cur.Follow(rotatedPEM, tok(t, pin), start.Add(day))
		if err != nil {
			t.Fatalf("pin %q: the cross-signed rotation is refused: %v", pin, err)
		}
		followed(t, next, []*x509.Certificate{old.Cert, newRoot.Cert}, newCA.Cert, newRoot.Cert)
		if !cur.Changed(next) {
			t.Error("Changed reports no change for a rotated CA")
		}
		if next.Pinned != cur.Pinned {
			t.Error("Follow changed Pinned")
		}
		if got, want := next.TrustedPEM(), pki.EncodeCerts(newCA.Cert, newRoot.Cert, old.Cert); !bytes.Equal(got, want) {
			t.Errorf("TrustedPEM is not the new chain and the old root")
		}
		if !bytes.Equal(next.Store(), pki.EncodeCerts(old.Cert, cross, newRoot.Cert)) {
			t.Error("Store is not the old root, the cross-signed certificate and the new root")
		}
		again, err := next.Follow(rotatedPEM, tok(t, pin), start.Add(2*day))
		if err != nil || next.Changed(again) {
			t.Errorf("the same bundle again: %v, changed %v", err, err == nil && next.Changed(again))
		}

		// Rollback: the old CA is served again, and followed; the new root stays.
		back, err := next.Follow(oldPEM, tok(t, pin), start.Add(3*day))
		if err != nil {
			t.Fatalf("pin %q: rollback refused: %v", pin, err)
		}
		followed(t, back, []*x509.Certificate{old.Cert, newRoot.Cert}, old.Cert)
		if !bytes.Equal(back.TrustedPEM(), oldPEM) {
			t.Error("after the rollback TrustedPEM is not the old CA alone")
		}
		// And forward again.
		if fwd, err := back.Follow(rotatedPEM, tok(t, pin), start.Add(4*day)); err != nil {
			t.Errorf("rotation after the rollback: %v", err)
		} else {
			followed(t, fwd, []*x509.Certificate{old.Cert, newRoot.Cert}, newCA.Cert, newRoot.Cert)
		}

		// The next cross-signed rotation drops the first root from the body: a node
		// that moved to the second root follows.
		second, ca3, root3, _ := f.crossSigned(newRoot)
		third, err := next.Follow(pki.EncodeCerts(second...), tok(t, pin), start.Add(5*day))
		if err != nil {
			t.Fatalf("pin %q: the second rotation is refused: %v", pin, err)
		}
		followed(t, third, []*x509.Certificate{old.Cert, newRoot.Cert, root3.Cert}, ca3.Cert, root3.Cert)
		// A node that had not moved (the anchor the old root alone) does not.
		if _, err := cur.Follow(pki.EncodeCerts(second...), tok(t, pin), start.Add(5*day)); !errors.Is(err, ErrUntrustedChange) {
			t.Errorf("the second rotation followed from the first root alone: %v", err)
		}
	}

	// Pinned on first contact with the old token of before the rotation (the legacy hash
	// of the one-certificate file), without stored trust: no match.
	_, err := Pin(rotatedPEM, tok(t, Hash(oldPEM)), start)
	want := fmt.Sprintf("token CA hash does not match the Cluster CA certificate hash: %s != %s", Hash(oldPEM), Hash(newRoot.Cert.Raw))
	if err == nil || err.Error() != want {
		t.Errorf("old legacy token after the rotation: %v, want %q", err, want)
	}

	// The token names the first certificate: that CA is the anchor, and a sibling of it
	// is not followed.
	cur, err := Pin(rotatedPEM, tok(t, Hash(newCA.Cert.Raw)), start)
	if err != nil {
		t.Fatal(err)
	}
	checkTrust(t, cur, newCA.Cert, newCA.Cert)
	if _, err := cur.Follow(pki.EncodeCerts(f.under(newRoot, "kpki-server-ca@3", 365*day).Bundle...), tok(t, Hash(newCA.Cert.Raw)), start); !errors.Is(err, ErrUntrustedChange) {
		t.Errorf("a sibling of the pinned first certificate: %v, want ErrUntrustedChange", err)
	}
}

// TestResume: a node restarted with the token it joined with resumes from the stored
// trust after a cross-signed rotation, and still refuses an unrelated root.
func TestResume(t *testing.T) {
	f := newFixture(t)
	old := f.root("kpki-server-ca@1", 10*365*day)
	oldPEM := pki.EncodeCert(old.Cert)
	rotated, newCA, newRoot, _ := f.crossSigned(old)
	rotatedPEM := pki.EncodeCerts(rotated...)
	second, ca3, root3, _ := f.crossSigned(newRoot)
	secondPEM := pki.EncodeCerts(second...)

	for _, pin := range []string{Hash(oldPEM), Hash(old.Cert.Raw)} {
		oldTok := tok(t, pin)
		joined, err := Resume(oldPEM, oldTok, nil, start)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(joined.Store(), oldPEM) {
			t.Error("the stored trust of a join is not the pinned root")
		}
		moved, err := joined.Follow(rotatedPEM, oldTok, start)
		if err != nil {
			t.Fatal(err)
		}
		stored, err := Load(moved.Store(), oldTok)
		if err != nil {
			t.Fatalf("pin %q: Load: %v", pin, err)
		}
		checkRoots(t, stored, old.Cert, newRoot.Cert)
		if !stored.Pinned || !stored.Anchor.Equal(newRoot.Cert) {
			t.Errorf("loaded trust: pinned %v anchor %q", stored.Pinned, stored.Anchor.Subject.CommonName)
		}

		// Down during the first rotation or the second: it catches up.
		for name, body := range map[string][]byte{"rotated": rotatedPEM, "rolled back": oldPEM} {
			if _, err := Resume(body, oldTok, stored, start.Add(day)); err != nil {
				t.Errorf("pin %q, %s: %v", pin, name, err)
			}
		}
		tr, err := Resume(secondPEM, oldTok, stored, start.Add(day))
		if err != nil {
			t.Fatalf("pin %q, second rotation: %v", pin, err)
		}
		followed(t, tr, []*x509.Certificate{old.Cert, newRoot.Cert, root3.Cert}, ca3.Cert, root3.Cert)
		if !tr.Pinned {
			t.Error("a resumed trust is not pinned")
		}

		// Without the stored trust the old token does not match the second body.
		if _, err := Resume(secondPEM, oldTok, nil, start); !errors.Is(err, token.ErrCAHashMismatch) {
			t.Errorf("pin %q, second rotation without stored trust: %v, want ErrCAHashMismatch", pin, err)
		}
		// An unrelated root is refused with the stored trust too, as Pin refuses it.
		forced := f.under(f.root("kpki-server-root@forced", 10*365*day), "kpki-server-ca@forced", 365*day)
		if _, err := Resume(pki.EncodeCerts(forced.Bundle...), oldTok, stored, start); !errors.Is(err, token.ErrCAHashMismatch) {
			t.Errorf("pin %q, forced root: %v, want ErrCAHashMismatch", pin, err)
		}
		// A first contact without stored trust moves along a rotation the body shows.
		fresh, err := Resume(rotatedPEM, tok(t, Hash(old.Cert.Raw)), nil, start)
		if err != nil {
			t.Fatal(err)
		}
		followed(t, fresh, []*x509.Certificate{old.Cert, newRoot.Cert}, newCA.Cert, newRoot.Cert)
	}

	// The new token names the new root: the stored trust starts there, the old root is
	// left out.
	moved, err := Resume(rotatedPEM, tok(t, Hash(old.Cert.Raw)), nil, start)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := Load(moved.Store(), tok(t, Hash(newRoot.Cert.Raw)))
	if err != nil {
		t.Fatal(err)
	}
	checkRoots(t, stored, newRoot.Cert)
}

func TestLoadRefusals(t *testing.T) {
	f := newFixture(t)
	old := f.root("kpki-server-ca@1", 10*365*day)
	_, _, newRoot, cross := f.crossSigned(old)
	other := f.root("other", 365*day)
	otherCross, err := f.iss.CrossSign(other, newRoot.Cert, 365*day)
	if err != nil {
		t.Fatal(err)
	}
	oldTok := tok(t, Hash(old.Cert.Raw))
	for _, tc := range []struct {
		name string
		data []byte
		tok  token.Token
	}{
		{"garbage", []byte("garbage"), oldTok},
		{"a short token", pki.EncodeCert(old.Cert), tok(t, "")},
		{"no root the token names", pki.EncodeCert(other.Cert), oldTok},
		{"an even count", pki.EncodeCerts(old.Cert, cross), oldTok},
		{"a pair that does not match", pki.EncodeCerts(old.Cert, cross, other.Cert), oldTok},
	} {
		if tr, err := Load(tc.data, tc.tok); !errors.Is(err, ErrBadStore) {
			t.Errorf("%s: %v, %v; want ErrBadStore", tc.name, tr, err)
		}
	}
	// A root vouched for by a certificate no held root signed is left out.
	tr, err := Load(pki.EncodeCerts(old.Cert, otherCross, newRoot.Cert), oldTok)
	if err != nil {
		t.Fatal(err)
	}
	checkRoots(t, tr, old.Cert)
}

// TestRootsBounded: a body that would add a root beyond MaxRoots adds none and is still
// followed through the roots held.
func TestRootsBounded(t *testing.T) {
	f := newFixture(t)
	root := f.root("kpki-server-ca@0", 10*365*day)
	tr, err := Pin(pki.EncodeCert(root.Cert), tok(t, Hash(root.Cert.Raw)), start)
	if err != nil {
		t.Fatal(err)
	}
	for i := range MaxRoots {
		bundle, _, next, _ := f.crossSigned(root)
		nt, err := tr.Follow(pki.EncodeCerts(bundle...), token.Token{}, start)
		if err != nil {
			t.Fatalf("rotation %d: %v", i, err)
		}
		tr, root = nt, next
	}
	if len(tr.Roots) != MaxRoots {
		t.Errorf("%d roots, want %d", len(tr.Roots), MaxRoots)
	}
	if _, err := Load(tr.Store(), tok(t, Hash(tr.Roots[0].Raw))); err != nil {
		t.Errorf("Load of %d roots: %v", MaxRoots, err)
	}
}

func TestFollowRefusals(t *testing.T) {
	f := newFixture(t)
	real := f.root("kpki-server-ca@1", 10*365*day)
	realPEM := pki.EncodeCert(real.Cert)
	attacker := f.root("attacker-ca", 365*day)
	attackerCA := f.under(attacker, "kpki-server-ca@1", 365*day)
	unrelated := f.root("kpki-server-ca@2", 10*365*day)

	for _, pin := range []string{Hash(realPEM), ""} {
		cur, err := Pin(realPEM, tok(t, pin), start)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			body []byte
			want error
		}{
			{"an unrelated new CA", pki.EncodeCert(unrelated.Cert), ErrUntrustedChange},
			{"the attacker's CA with the real one appended", pki.EncodeCerts(attackerCA.Cert, attacker.Cert, real.Cert), ErrUntrustedChange},
			{"a leaf chained to the old first certificate", pki.EncodeCerts(f.leaf(real), real.Cert), ErrNotCA},
			{"garbage", []byte("garbage"), ErrNotCA},
		} {
			if next, err := cur.Follow(tc.body, tok(t, pin), start); !errors.Is(err, tc.want) {
				t.Errorf("pin %q, %s: Follow = %v, %v; want %v", pin, tc.name, next, err, tc.want)
			}
		}

		// The real CA first, the attacker's appended: accepted, and the attacker's CA
		// dropped.
		next, err := cur.Follow(pki.EncodeCerts(real.Cert, attacker.Cert), tok(t, pin), start)
		if err != nil {
			t.Fatal(err)
		}
		checkTrust(t, next, real.Cert, real.Cert)
		if cur.Changed(next) {
			t.Error("an appended CA changed the trust")
		}
	}
}

// TestFollowNewToken: a node whose token names a certificate of the new bundle follows
// an unrelated CA change (the operator gave it the new token).
func TestFollowNewToken(t *testing.T) {
	f := newFixture(t)
	a := f.root("kpki-server-ca@1", 10*365*day)
	b := f.root("kpki-server-ca@2", 10*365*day)
	cur, err := Pin(pki.EncodeCert(a.Cert), tok(t, ""), start)
	if err != nil {
		t.Fatal(err)
	}
	bPEM := pki.EncodeCert(b.Cert)
	next, err := cur.Follow(bPEM, tok(t, Hash(bPEM)), start)
	if err != nil {
		t.Fatal(err)
	}
	checkTrust(t, next, b.Cert, b.Cert)
	if !next.Pinned {
		t.Error("the trust the token named is not marked pinned")
	}
	if _, err := cur.Follow(bPEM, tok(t, Hash(pki.EncodeCert(a.Cert))), start); !errors.Is(err, ErrUntrustedChange) {
		t.Errorf("a token naming the old CA: %v, want ErrUntrustedChange", err)
	}
}

func TestLocal(t *testing.T) {
	f := newFixture(t)
	old := f.root("kpki-server-ca@1", 10*365*day)
	rotated, newCA, newRoot, _ := f.crossSigned(old)
	tr, err := Local(pki.EncodeCerts(rotated...), start)
	if err != nil {
		t.Fatal(err)
	}
	if !tr.Anchor.Equal(newRoot.Cert) || !SameCerts(tr.Chain, []*x509.Certificate{newCA.Cert, newRoot.Cert}) {
		t.Errorf("anchor %q chain %s, want the new root and the chain to it", tr.Anchor.Subject.CommonName, names(tr.Chain))
	}
	// The old root the bundle keeps is trusted too: a supervisor still serving the chain
	// of before, in the middle of a live apply, verifies.
	if len(tr.Roots) != 2 || !tr.Roots[0].Equal(newRoot.Cert) || !tr.Roots[1].Equal(old.Cert) {
		t.Fatalf("roots %s, want the new root then the old one", subjects(tr.Roots))
	}
	if _, err := old.Cert.Verify(x509.VerifyOptions{Roots: tr.Pool(), CurrentTime: start}); err != nil {
		t.Errorf("the old root does not verify against the local trust: %v", err)
	}
	// A bundle of one CA alone trusts it alone.
	one, err := Local(pki.EncodeCert(old.Cert), start)
	if err != nil {
		t.Fatal(err)
	}
	checkTrust(t, one, old.Cert, old.Cert)
}

func pool(pemBytes []byte) *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(pemBytes)
	return p
}
