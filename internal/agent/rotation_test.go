package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

// rotation is a cross-signed rotation of the fake's server CA, as cross-sign-ca and
// rotate-default-ca-certs.sh make it: a new root, the same root cross-signed by the
// current one, a new CA under the new root served with new root, cross-signed root and
// the current root.
type rotation struct {
	old, root, server, client *pki.CA
	cross                     *x509.Certificate
}

func (fx *fixture) crossSign(old *pki.CA) rotation {
	fx.t.Helper()
	root := fx.fake.selfSignedCA("kpki-server-root")
	cross, err := fx.fake.caIss.CrossSign(old, root.Cert, 10*365*day)
	if err != nil {
		fx.t.Fatal(err)
	}
	return rotation{old: old, root: root, cross: cross,
		server: fx.fake.signedCA(root, "kpki-server-ca", root.Cert, cross, old.Cert),
		client: fx.fake.selfSignedCA("kpki-client-ca")}
}

func (fx *fixture) apply(r rotation) { fx.fake.setCAs(r.server, r.client) }

// joinThenRotate joins with an agent that then stops, and cross-signs and applies a
// rotation of the server CA it joined under.
func (fx *fixture) joinThenRotate() (*pki.CA, rotation) {
	fx.t.Helper()
	fx.join()
	old, _ := fx.fake.cas()
	r := fx.crossSign(old)
	fx.apply(r)
	return old, r
}

// assertUnder checks that every leaf is signed by the CAs the fake now serves and that
// serving-kubelet.crt carries serverChain after its leaf.
func (fx *fixture) assertUnder(what string, serverChain []*x509.Certificate) {
	t := fx.t
	t.Helper()
	server, client := fx.fake.cas()
	for _, l := range agentLeaves() {
		ca := client
		if l.Signer == certs.ServerCA {
			ca = server
		}
		list := readCerts(t, fx.path(l.Name+".crt"))
		if err := list[0].CheckSignatureFrom(ca.Cert); err != nil {
			t.Errorf("%s: %s is not signed by the current %s: %v", what, l.Name, l.Signer, err)
		}
		if l.Signer == certs.ServerCA && !slicesEqualCerts(list[1:], serverChain) {
			t.Errorf("%s: %s carries %d certificates after its leaf, want the chain of %d", what, l.Name, len(list)-1, len(serverChain))
		}
	}
}

func slicesEqualCerts(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}

// TestCrossSignedCARotation: a running agent follows a cross-signed rotation without a
// restart or a new token: it renews its leaves under the new CAs, writes the new chain
// (and the old root, still served) as its server CA and moves to the new root, stored
// on disk. Restarted with the token it joined with, it resumes; it follows the next
// rotation, which no longer serves the first root, running or restarted.
func TestCrossSignedCARotation(t *testing.T) {
	fx := newFixture(t)
	a, buf := fx.join()
	oldServer, _ := fx.fake.cas()
	if got := readFile(t, fx.path(TrustFile)); !bytes.Equal(got, oldServer.BundlePEM) {
		t.Errorf("%s after the join is not the pinned root", TrustFile)
	}
	r := fx.crossSign(oldServer)
	fx.apply(r)

	res, err := a.RunOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Renewed) != 4 {
		t.Errorf("renewed %v, want 4", res.Renewed)
	}
	for _, want := range []string{"the cluster CA changed", "now also trusting the new root"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("%q not logged:\n%s", want, buf)
		}
	}
	if got, want := readFile(t, fx.path(serverCAFile)), pki.EncodeCerts(r.server.Cert, r.root.Cert, oldServer.Cert); !bytes.Equal(got, want) {
		t.Errorf("%s holds %d certificates, want new CA, new root, old root", serverCAFile, len(readCerts(t, fx.path(serverCAFile))))
	}
	fx.assertUnder("running agent", []*x509.Certificate{r.server.Cert, r.root.Cert})
	if got, want := readFile(t, fx.path(TrustFile)), pki.EncodeCerts(oldServer.Cert, r.cross, r.root.Cert); !bytes.Equal(got, want) {
		t.Errorf("%s is not old root, cross-signed root, new root", TrustFile)
	}
	if n := testutil.ToFloat64(a.metrics.TrustedRoots); n != 2 {
		t.Errorf("kpki_agent_trusted_roots %v, want 2", n)
	}
	for _, k := range agentKubeconfigs {
		if !bytes.Contains(readFile(t, fx.path(k.File)), []byte(fx.path(serverCAFile))) {
			t.Errorf("%s does not name %s", k.File, serverCAFile)
		}
	}

	// Restarted with the old token: the stored trust resumes, nothing is signed or
	// written.
	before := snapshot(t, fx.dd)
	b, _ := fx.agent()
	if res, err := b.RunOnce(context.Background()); err != nil || res.Signed() != 0 || len(res.Written) != 0 {
		t.Fatalf("restart with the old token: %+v, %v; want nothing to do", res, err)
	}
	assertUnchanged(t, "restart with the old token", before, snapshot(t, fx.dd))

	// The next rotation: the first root is no longer served. The running agent and a
	// restarted one follow it.
	r2 := fx.crossSign(r.root)
	fx.apply(r2)
	if _, err := a.RunOnce(context.Background()); err != nil {
		t.Fatalf("second rotation, running agent: %v", err)
	}
	fx.assertUnder("second rotation", []*x509.Certificate{r2.server.Cert, r2.root.Cert})
	if got, want := readFile(t, fx.path(TrustFile)), pki.EncodeCerts(oldServer.Cert, r.cross, r.root.Cert, r2.cross, r2.root.Cert); !bytes.Equal(got, want) {
		t.Errorf("%s after the second rotation holds %d certificates, want 5", TrustFile, len(readCerts(t, fx.path(TrustFile))))
	}
	c, _ := fx.agent()
	if res, err := c.RunOnce(context.Background()); err != nil || res.Signed() != 0 {
		t.Fatalf("second rotation, restarted with the old token: %+v, %v", res, err)
	}

	// Without the stored trust the old token no longer matches.
	if err := os.Remove(fx.path(TrustFile)); err != nil {
		t.Fatal(err)
	}
	d, _ := fx.agent()
	_, err = d.RunOnce(context.Background())
	newHash, _ := pki.CAHash(r2.server.BundlePEM)
	oldTok, _ := token.Parse(fx.cfg.Token)
	want := fmt.Sprintf("token CA hash does not match the Cluster CA certificate hash: %s != %s", oldTok.CAHash, newHash)
	if err == nil || err.Error() != want || !errors.Is(err, ErrCAUntrusted) {
		t.Errorf("old token without stored trust: %v, want %q", err, want)
	}
}

// TestNewTokenAfterRotation: with the new token (the new root's hash, or the first
// certificate's, what rotate-default-ca-certs.sh prints) the agent keeps the chain to the
// certificate the token names, and the stored trust starts there.
func TestNewTokenAfterRotation(t *testing.T) {
	fx := newFixture(t)
	_, r := fx.joinThenRotate()
	newHash, _ := pki.CAHash(r.server.BundlePEM)
	for _, tc := range []struct {
		hash         string
		chain, store []byte
	}{
		{newHash, pki.EncodeCerts(r.server.Cert, r.root.Cert), pki.EncodeCerts(r.root.Cert)},
		{sha256Hex(r.server.Cert.Raw), pki.EncodeCerts(r.server.Cert), pki.EncodeCerts(r.server.Cert)},
	} {
		fx.cfg.Token = token.Format(tc.hash, "node", agentPassword)
		c, _ := fx.agent()
		if _, err := c.RunOnce(context.Background()); err != nil {
			t.Fatalf("new token %s: %v", tc.hash, err)
		}
		if !bytes.Equal(readFile(t, fx.path(serverCAFile)), tc.chain) {
			t.Errorf("new token %s: %s is not the chain to the certificate it names", tc.hash, serverCAFile)
		}
		if !bytes.Equal(readFile(t, fx.path(TrustFile)), tc.store) {
			t.Errorf("new token %s: %s is not the certificate it names", tc.hash, TrustFile)
		}
	}
}

// TestAgentDownDuringRotation: an agent stopped before a cross-signed rotation catches
// up when it starts again with the token it joined with.
func TestAgentDownDuringRotation(t *testing.T) {
	fx := newFixture(t)
	oldServer, r := fx.joinThenRotate()
	b, _ := fx.agent()
	res, err := b.RunOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Renewed) != 4 {
		t.Errorf("renewed %v, want 4", res.Renewed)
	}
	fx.assertUnder("after the restart", []*x509.Certificate{r.server.Cert, r.root.Cert})
	if got, want := readFile(t, fx.path(TrustFile)), pki.EncodeCerts(oldServer.Cert, r.cross, r.root.Cert); !bytes.Equal(got, want) {
		t.Errorf("%s is not old root, cross-signed root, new root", TrustFile)
	}
}

// TestRollback: the server goes back to the CA of before a cross-signed rotation
// (rotate-ca --rollback): the running agent, which still trusts the old root, follows
// and renews under it; restarted with its token, it resumes; forward again works.
func TestRollback(t *testing.T) {
	fx := newFixture(t)
	a, _ := fx.join()
	oldServer, oldClient := fx.fake.cas()
	r := fx.crossSign(oldServer)
	fx.apply(r)
	if _, err := a.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	stored := readFile(t, fx.path(TrustFile))

	fx.fake.setCAs(oldServer, oldClient)
	res, err := a.RunOnce(context.Background())
	if err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if len(res.Renewed) != 4 {
		t.Errorf("rollback renewed %v, want 4", res.Renewed)
	}
	if !bytes.Equal(readFile(t, fx.path(serverCAFile)), oldServer.BundlePEM) {
		t.Errorf("%s after the rollback is not the old CA", serverCAFile)
	}
	fx.assertUnder("rollback", []*x509.Certificate{oldServer.Cert})
	if !bytes.Equal(readFile(t, fx.path(TrustFile)), stored) {
		t.Errorf("%s changed with the rollback; the new root must stay trusted", TrustFile)
	}
	b, _ := fx.agent()
	if res, err := b.RunOnce(context.Background()); err != nil || res.Signed() != 0 {
		t.Fatalf("restart after the rollback: %+v, %v", res, err)
	}
	fx.apply(r)
	if res, err := b.RunOnce(context.Background()); err != nil || len(res.Renewed) != 4 {
		t.Fatalf("forward again: %+v, %v", res, err)
	}
	fx.assertUnder("forward again", []*x509.Certificate{r.server.Cert, r.root.Cert})
}

// TestForcedRootRefused: the server moves to an unrelated root (rotate-ca --force) and
// keeps serving with its old certificate, then restarts with one of the new root. The
// agent refuses in both cases, running and restarted with its token: nothing changes on
// disk, no root is added, the refusal is logged with the way out and exposed in the
// metrics. A rollback clears it.
func TestForcedRootRefused(t *testing.T) {
	fx := newFixture(t)
	a, buf := fx.join()
	oldServer, oldClient := fx.fake.cas()
	before := snapshot(t, fx.dd)
	forcedRoot := fx.fake.selfSignedCA("kpki-server-root")
	forced := fx.fake.signedCA(forcedRoot, "kpki-server-ca", forcedRoot.Cert)

	// Served over the old serving certificate: /cacerts refused.
	fx.fake.impersonate(forced.BundlePEM, oldServer)
	_, err := a.RunOnce(context.Background())
	if !errors.Is(err, ErrCAUntrusted) || !strings.Contains(err.Error(), "kpki token show") {
		t.Fatalf("forced root, old serving certificate: %v, want ErrCAUntrusted and the way out", err)
	}
	if rs := signingRequests(fx.fake.takeRequests()); len(rs) != 0 {
		t.Errorf("%d signing requests to a server whose CA is refused", len(rs))
	}
	assertUnchanged(t, "forced root, old serving certificate", before, snapshot(t, fx.dd))
	if n := testutil.ToFloat64(a.metrics.CAUntrusted); n != 1 {
		t.Errorf("kpki_agent_ca_untrusted %v, want 1", n)
	}
	if !strings.Contains(buf.String(), "give this agent the cluster's current agent token") {
		t.Errorf("the refusal does not say what to do:\n%s", buf)
	}

	// Restarted with a serving certificate of the new root.
	fx.fake.override(api.PathCACerts, nil)
	fx.fake.override(api.PathServerCA, nil)
	fx.fake.setCAs(forced, fx.fake.selfSignedCA("kpki-client-ca"))
	for name, ag := range map[string]*Agent{"running": a, "restarted": func() *Agent { b, _ := fx.agent(); return b }()} {
		_, err := ag.RunOnce(context.Background())
		if !errors.Is(err, ErrCAUntrusted) {
			t.Errorf("forced root, %s agent: %v, want ErrCAUntrusted", name, err)
		}
		assertUnchanged(t, "forced root, "+name, before, snapshot(t, fx.dd))
		if n := testutil.ToFloat64(ag.metrics.CAUntrusted); n != 1 {
			t.Errorf("%s: kpki_agent_ca_untrusted %v, want 1", name, n)
		}
	}
	if len(a.trust.Roots) != 1 || !a.trust.Roots[0].Equal(oldServer.Cert) {
		t.Errorf("the running agent trusts %d roots after the refusals, want the old one alone", len(a.trust.Roots))
	}

	fx.fake.setCAs(oldServer, oldClient)
	if _, err := a.RunOnce(context.Background()); err != nil {
		t.Fatalf("rollback after the forced root: %v", err)
	}
	if n := testutil.ToFloat64(a.metrics.CAUntrusted); n != 0 {
		t.Errorf("kpki_agent_ca_untrusted %v after a verified pass, want 0", n)
	}
}

// TestUnusableStoredTrust: stored trust that is not what the agent writes, or that the
// token does not name, is logged and set aside; the token pins the CA.
func TestUnusableStoredTrust(t *testing.T) {
	fx := newFixture(t)
	fx.join()
	server, _ := fx.fake.cas()
	other := fx.fake.selfSignedCA("other")
	for name, data := range map[string][]byte{
		"garbage":           []byte("garbage"),
		"another cluster's": other.BundlePEM,
	} {
		if err := os.WriteFile(fx.path(TrustFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		b, buf := fx.agent()
		if _, err := b.RunOnce(context.Background()); err != nil {
			t.Fatalf("%s stored trust: %v", name, err)
		}
		if !strings.Contains(buf.String(), "not using the stored trust") {
			t.Errorf("%s stored trust: not logged:\n%s", name, buf)
		}
		if !bytes.Equal(readFile(t, fx.path(TrustFile)), server.BundlePEM) {
			t.Errorf("%s stored trust: not replaced by the pinned root", name)
		}
	}
}
