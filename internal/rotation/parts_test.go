package rotation

import (
	"crypto"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/pki"
)

func TestContinuity(t *testing.T) {
	f := newFixture(t)
	now := t0.Add(time.Hour)
	old := []*x509.Certificate{f.server.cert}

	bundlePEM, _, _ := f.crossSigned(t)
	cross, err := pki.ParseCerts(bundlePEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := continuity(cross, old, now); err != nil {
		t.Errorf("cross-signed bundle: %v, want continuity", err)
	}

	if err := continuity(cross[:1], old, now); !errors.Is(err, errSingleCertificate) {
		t.Errorf("single certificate: %v, want errSingleCertificate", err)
	}

	// A new CA under a new root that the current CA never signed.
	root := newRoot(t, f.iss, "unrelated-root")
	sub := newSub(t, f.iss, root, "unrelated-ca")
	err = continuity([]*x509.Certificate{sub.cert, root.cert}, old, now)
	var be *breakError
	if !errors.As(err, &be) || be.Err == nil || !strings.Contains(err.Error(), "does not chain to the current CA") || !strings.Contains(err.Error(), "--force") {
		t.Errorf("unrelated root: %v, want a *breakError naming --force", err)
	}
	if errors.Unwrap(err) != be.Err {
		t.Error("breakError does not unwrap to its cause")
	}
}

func TestSharedKeys(t *testing.T) {
	iss := pki.NewIssuer(clock.NewFake(t0), nil)
	key := func() crypto.PublicKey {
		k, err := iss.NewECKey()
		if err != nil {
			t.Fatal(err)
		}
		return k.Public()
	}
	a, b, c := pair{"A", "AKey"}, pair{"B", "BKey"}, pair{"C", "CKey"}
	pairs := []pair{a, b, c}
	shared, other := key(), key()
	tests := []struct {
		name    string
		signing map[string]crypto.PublicKey
		rotated map[string]bool
		want    []clash
	}{
		{"distinct keys", map[string]crypto.PublicKey{"AKey": shared, "BKey": other, "CKey": key()}, map[string]bool{"AKey": true, "BKey": true}, nil},
		{"shared but neither rotated", map[string]crypto.PublicKey{"AKey": shared, "BKey": shared}, map[string]bool{"CKey": true}, nil},
		{"first rotated", map[string]crypto.PublicKey{"AKey": shared, "BKey": shared}, map[string]bool{"AKey": true}, []clash{{named: a, other: b}}},
		{"second rotated", map[string]crypto.PublicKey{"AKey": shared, "CKey": shared}, map[string]bool{"CKey": true}, []clash{{named: c, other: a}}},
		{"both rotated: the later is named", map[string]crypto.PublicKey{"AKey": shared, "BKey": shared}, map[string]bool{"AKey": true, "BKey": true}, []clash{{named: b, other: a}}},
		{"unknown key skipped", map[string]crypto.PublicKey{"AKey": shared, "BKey": nil, "CKey": other}, map[string]bool{"AKey": true, "BKey": true}, nil},
		{"three alike", map[string]crypto.PublicKey{"AKey": shared, "BKey": shared, "CKey": shared}, map[string]bool{"BKey": true},
			[]clash{{named: b, other: a}, {named: b, other: c}}},
	}
	for _, tc := range tests {
		if got := sharedKeys(pairs, tc.signing, tc.rotated); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestHoldsKey(t *testing.T) {
	iss := pki.NewIssuer(clock.NewFake(t0), nil)
	var keys []crypto.Signer
	for range 3 {
		k, err := iss.NewECKey()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	if !holdsKey(keys[:2], keys[1].Public()) {
		t.Error("the second key is not found")
	}
	if holdsKey(keys[:2], keys[2].Public()) || holdsKey(nil, keys[0].Public()) {
		t.Error("a key that is not there is found")
	}
}

func TestUnknownFields(t *testing.T) {
	got := unknownFields(map[string][]byte{"ServerCA": nil, "Zeta": nil, "PasswdFile": nil, "IPSECKey": nil, ServiceKey: nil})
	want := []string{"IPSECKey: not a file rotate-ca accepts", "PasswdFile: not a file rotate-ca accepts", "Zeta: not a file rotate-ca accepts"}
	if !slices.Equal(got, want) {
		t.Errorf("unknownFields = %q, want %q", got, want)
	}
	if got := unknownFields(map[string][]byte{"ETCDPeerCAKey": nil}); got != nil {
		t.Errorf("known field reported: %q", got)
	}
}
