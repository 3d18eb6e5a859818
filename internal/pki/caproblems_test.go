package pki

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"strings"
	"testing"
)

// TestCAProblemsListsEveryProblem: a CA with a wrong key and a chain lacking its root gets
// both problems, the key one tagged as such, and CheckCA reports the first; a certificate
// that is not a CA gets that problem, and no chain problem that would only repeat it.
func TestCAProblemsListsEveryProblem(t *testing.T) {
	iss, _, _ := newTestIssuer()
	root := newRootCA(t, iss, "root", tenYears)
	inter := newSubCA(t, iss, root, "inter", tenYears)
	ca := newSubCA(t, iss, inter, "ca", tenYears)
	other := mustECKey(t)
	k := mustECKey(t)
	notCA := createCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "leaf"}, NotBefore: testNow.Add(-day), NotAfter: testNow.Add(day),
		KeyUsage: x509.KeyUsageDigitalSignature}, inter.Cert, k.Public(), inter.Key)

	for _, tc := range []struct {
		name string
		ca   *CA
		want []CAProblem
	}{
		{"wrong key and no root", &CA{Cert: ca.Cert, Key: other, Bundle: []*x509.Certificate{ca.Cert, inter.Cert}},
			[]CAProblem{{Key: true, Err: errors.New("key does not match")}, {Err: errors.New("chain does not verify")}}},
		{"wrong key and not a CA", &CA{Cert: notCA, Key: other, Bundle: []*x509.Certificate{notCA, inter.Cert}},
			[]CAProblem{{Key: true, Err: errors.New("key does not match")}, {Err: errors.New("not a CA")}}},
		{"expired", ca, []CAProblem{{Err: errors.New("expired on")}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := testNow
			if tc.name == "expired" {
				now = testNow.Add(2 * tenYears)
			}
			probs := CAProblems(tc.ca, now)
			if len(probs) != len(tc.want) {
				t.Fatalf("problems %v, want %d", probs, len(tc.want))
			}
			for i, w := range tc.want {
				if probs[i].Key != w.Key || !strings.Contains(probs[i].Err.Error(), w.Err.Error()) {
					t.Errorf("problem %d = %+v, want key=%v %q", i, probs[i], w.Key, w.Err)
				}
			}
			if err := CheckCA(tc.ca, now); err == nil || err.Error() != probs[0].Err.Error() {
				t.Errorf("CheckCA = %v, want the first problem %v", err, probs[0].Err)
			}
		})
	}
	if p := CAProblems(ca, testNow); len(p) != 0 {
		t.Errorf("a good CA has problems %v", p)
	}
}
