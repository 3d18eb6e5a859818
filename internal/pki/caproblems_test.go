package pki

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"strings"
	"testing"
)

// TestCAProblemsListsEveryProblem: a CA that is wrong in three ways gets three problems,
// the key one tagged as such, and CheckCA reports the first.
func TestCAProblemsListsEveryProblem(t *testing.T) {
	iss, _, _ := newTestIssuer()
	root := newRootCA(t, iss, "root", tenYears)
	inter := newSubCA(t, iss, root, "inter", tenYears)
	other := mustECKey(t)
	k := mustECKey(t)
	notCA := createCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "leaf"}, NotBefore: testNow.Add(-day), NotAfter: testNow.Add(day),
		KeyUsage: x509.KeyUsageDigitalSignature}, inter.Cert, k.Public(), inter.Key)
	// Wrong key, not a CA, and the bundle lacks the root.
	ca := &CA{Cert: notCA, Key: other, Bundle: []*x509.Certificate{notCA, inter.Cert}}
	probs := CAProblems(ca, testNow)
	if len(probs) != 3 {
		t.Fatalf("problems %v, want 3", probs)
	}
	wants := []struct {
		key  bool
		text string
	}{{true, "key does not match"}, {false, "not a CA"}, {false, "chain does not verify"}}
	for i, w := range wants {
		if probs[i].Key != w.key || !strings.Contains(probs[i].Err.Error(), w.text) {
			t.Errorf("problem %d = %+v, want key=%v %q", i, probs[i], w.key, w.text)
		}
	}
	if err := CheckCA(ca, testNow); err == nil || err.Error() != probs[0].Err.Error() {
		t.Errorf("CheckCA = %v, want the first problem %v", err, probs[0].Err)
	}
	if p := CAProblems(root, testNow); len(p) != 0 {
		t.Errorf("a good root has problems %v", p)
	}
}
