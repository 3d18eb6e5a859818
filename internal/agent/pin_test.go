package agent

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

// assertNoSecretSent fails when a request carried the token or a node password.
func assertNoSecretSent(t *testing.T, what string, rs []fakeRequest) {
	t.Helper()
	for _, r := range rs {
		if r.Authorized || r.Header.Get(api.HeaderNodePassword) != "" {
			t.Errorf("%s: %s %s sent credentials (authorization %v, node password %v)", what, r.Method, r.Path,
				r.Authorized, r.Header.Get(api.HeaderNodePassword) != "")
		}
		if r.Path != api.PathCACerts {
			t.Errorf("%s: %s %s reached a server the agent does not trust", what, r.Method, r.Path)
		}
	}
}

// chainedFixture is a cluster whose server CA is a chain: server CA, intermediate,
// root; its token pins the root.
func chainedFixture(t *testing.T) *fixture {
	fx := newFixture(t)
	root := fx.fake.selfSignedCA("root-ca")
	inter := fx.fake.signedCA(root, "intermediate-ca", root.Cert)
	fx.fake.setCAs(chainedCAs(fx.fake, root, inter))
	fx.cfg.Token = fx.fake.secureToken()
	return fx
}

// TestAppendedCARefusedOnFirstContact: a fake supervisor serves the cluster's real CA
// chain with its own CA appended and a serving certificate of that CA. With the token's
// pin (or a short token) the agent anchors on the cluster's root, so the handshake of
// its first authenticated request fails: only the unauthenticated /cacerts was sent.
func TestAppendedCARefusedOnFirstContact(t *testing.T) {
	for _, short := range []bool{false, true} {
		fx := chainedFixture(t)
		if short {
			fx.cfg.Token = agentPassword
		}
		real, _ := fx.fake.cas()
		attacker := fx.fake.selfSignedCA("attacker-ca")
		fx.fake.impersonate(append(append([]byte{}, real.BundlePEM...), attacker.BundlePEM...), attacker)
		a, _ := fx.agent()
		_, err := a.RunOnce(context.Background())
		if err == nil || !strings.Contains(err.Error(), "presented a certificate that the cluster CA did not sign") {
			t.Fatalf("short token %v: got %v, want the fake's certificate refused", short, err)
		}
		rs := fx.fake.takeRequests()
		if len(rs) != 1 {
			t.Errorf("short token %v: %d requests, want the one GET /cacerts", short, len(rs))
		}
		assertNoSecretSent(t, "first contact", rs)
		assertNothingWritten(t, fx.dd)
	}
}

// TestAttackerCARefusedOnLaterPass: after a join, the network switches the agent to a
// fake serving the real CA with the attacker's appended (or the attacker's CA first, or
// a leaf chained to the real CA first) and a serving certificate of the attacker's CA.
// The later /cacerts fetch is verified against the anchor: its handshake fails, nothing
// is sent and nothing changes.
func TestAttackerCARefusedOnLaterPass(t *testing.T) {
	fx := newFixture(t)
	a, _ := fx.join()
	real, _ := fx.fake.cas()
	attacker := fx.fake.selfSignedCA("attacker-ca")
	leaf, err := fx.fake.caIss.SignLeaf(real, attacker.Cert.PublicKey, pki.LeafProfile{CommonName: "node-2"}, 365*day)
	if err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, fx.dd)
	for name, body := range map[string][]byte{
		"appended":                  pki.EncodeCerts(real.Cert, attacker.Cert),
		"attacker first":            pki.EncodeCerts(attacker.Cert, real.Cert),
		"leaf of the real CA first": pki.EncodeCerts(leaf, real.Cert, attacker.Cert),
	} {
		fx.fake.impersonate(body, attacker)
		_, err := a.RunOnce(context.Background())
		if err == nil || !strings.Contains(err.Error(), "presented a certificate that the cluster CA did not sign") {
			t.Errorf("%s: got %v", name, err)
		}
		if rs := fx.fake.takeRequests(); len(rs) != 0 {
			t.Errorf("%s: %d requests reached the fake: %+v", name, len(rs), rs)
		}
		assertUnchanged(t, name, before, snapshot(t, fx.dd))
	}
	if !bytes.Equal(a.trust.PEM, real.BundlePEM) {
		t.Error("the agent's trust changed")
	}
}

// TestAppendedCADropped: the real server (its real serving certificate) serves its CA
// with another CA appended: the agent keeps only the chain to its anchor, in its files
// and in its trust.
func TestAppendedCADropped(t *testing.T) {
	fx := chainedFixture(t)
	a, _ := fx.join()
	real, _ := fx.fake.cas()
	before := snapshot(t, fx.dd)
	other := fx.fake.selfSignedCA("other-ca")
	body := append(append([]byte{}, real.BundlePEM...), other.BundlePEM...)
	serve := func(w http.ResponseWriter, _ *http.Request) { w.Write(body) }
	fx.fake.override(api.PathCACerts, serve)
	fx.fake.override(api.PathServerCA, serve)
	if _, err := a.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	assertUnchanged(t, "appended CA", before, snapshot(t, fx.dd))
	if !bytes.Equal(readFile(t, fx.path(serverCAFile)), real.BundlePEM) {
		t.Errorf("%s is not the real chain", serverCAFile)
	}
	for _, c := range a.trust.Chain {
		if c.Equal(other.Cert) {
			t.Error("the appended CA is in the agent's trust")
		}
	}

	// A restarted agent with the appended body keeps the real chain too.
	b, _ := fx.agent()
	if _, err := b.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	assertUnchanged(t, "appended CA, restarted agent", before, snapshot(t, fx.dd))
}

// TestPinForms joins with each form of the token's CA hash and checks what the agent
// keeps.
func TestPinForms(t *testing.T) {
	fx := chainedFixture(t)
	server, _ := fx.fake.cas()
	root := server.Bundle[len(server.Bundle)-1]
	for i, tc := range []struct {
		name, hash string
		chain      []byte
	}{
		{"root (K3s)", sha256Hex(root.Raw), server.BundlePEM},
		{"first certificate", sha256Hex(server.Cert.Raw), pki.EncodeCerts(server.Cert)},
	} {
		fx.cfg.Token = token.Format(tc.hash, "node", agentPassword)
		fx.cfg.DataDir = t.TempDir()
		fx.dd = fx.cfg.DataDir
		fx.cfg.NodeName = fmt.Sprintf("node-%d", i+10)
		a, _ := fx.agent()
		if _, err := a.RunOnce(context.Background()); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !bytes.Equal(readFile(t, fx.path(serverCAFile)), tc.chain) {
			t.Errorf("%s: %s is not the chain to the pinned certificate", tc.name, serverCAFile)
		}
	}

	single := newFixture(t)
	ca, _ := single.fake.cas()
	single.cfg.Token = token.Format(sha256Hex(ca.BundlePEM), "node", agentPassword)
	a, _ := single.agent()
	if _, err := a.RunOnce(context.Background()); err != nil {
		t.Fatalf("legacy hash of the one-certificate file: %v", err)
	}
}
