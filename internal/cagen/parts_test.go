package cagen

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/token"
)

// TestInputProblems lists, for every combination of provided root-ca.pem, root-ca.key,
// intermediate-ca.pem and intermediate-ca.key, the refusal GenerateCA meets first when
// the files that are there are usable (0: it goes ahead).
func TestInputProblems(t *testing.T) {
	tests := []struct {
		set  inputSet
		want InputProblem
	}{
		{inputSet{}, 0},
		{inputSet{IntermediateKey: true}, IntermediateWithoutRoot},
		{inputSet{Intermediate: true}, IntermediateWithoutRoot},
		{inputSet{Intermediate: true, IntermediateKey: true}, IntermediateWithoutRoot},
		{inputSet{RootKey: true}, RootKeyWithoutCert},
		{inputSet{RootKey: true, IntermediateKey: true}, RootKeyWithoutCert},
		{inputSet{RootKey: true, Intermediate: true}, RootKeyWithoutCert},
		{inputSet{RootKey: true, Intermediate: true, IntermediateKey: true}, RootKeyWithoutCert},
		{inputSet{Root: true}, IntermediateWithoutRootKey},
		{inputSet{Root: true, IntermediateKey: true}, IntermediateKeyWithoutCert},
		{inputSet{Root: true, Intermediate: true}, IntermediateCertWithoutKey},
		{inputSet{Root: true, Intermediate: true, IntermediateKey: true}, 0},
		{inputSet{Root: true, RootKey: true}, 0},
		{inputSet{Root: true, RootKey: true, IntermediateKey: true}, IntermediateKeyWithoutCert},
		{inputSet{Root: true, RootKey: true, Intermediate: true}, IntermediateCertWithoutKey},
		{inputSet{Root: true, RootKey: true, Intermediate: true, IntermediateKey: true}, 0},
	}
	for _, tc := range tests {
		got := rootInputProblem(tc.set)
		if got == 0 {
			got = intermediateInputProblem(tc.set)
		}
		if got != tc.want {
			t.Errorf("%+v: problem %d, want %d", tc.set, got, tc.want)
		}
	}
}

func TestInputErrorNamesFiles(t *testing.T) {
	dir := filepath.Join("in", "dir")
	in := func(name string) string { return filepath.Join(dir, name) }
	tests := []struct {
		p    InputProblem
		want []string
	}{
		{RootKeyWithoutCert, []string{in(RootKeyFile) + " exists without its certificate " + in(RootCertFile)}},
		{IntermediateWithoutRoot, []string{"an intermediate CA (" + in(IntermediateCertFile) + ")", "without the root certificate " + in(RootCertFile)}},
		{IntermediateKeyWithoutCert, []string{in(IntermediateKeyFile) + " exists without its certificate " + in(IntermediateCertFile)}},
		{IntermediateWithoutRootKey, []string{"without the root key " + in(RootKeyFile), in(IntermediateCertFile), in(IntermediateKeyFile)}},
		{IntermediateCertWithoutKey, []string{in(IntermediateCertFile) + " exists without its key " + in(IntermediateKeyFile)}},
	}
	seen := map[string]bool{}
	for _, tc := range tests {
		msg := (&InputError{Problem: tc.p, Dir: dir}).Error()
		for _, w := range tc.want {
			if !strings.Contains(msg, w) {
				t.Errorf("problem %d: %q does not say %q", tc.p, msg, w)
			}
		}
		if seen[msg] || strings.Contains(msg, "\n") {
			t.Errorf("problem %d: message %q repeated or on several lines", tc.p, msg)
		}
		seen[msg] = true
	}
}

// TestGenerateCAInputErrorTyped checks that GenerateCAFrom's refusal is an *InputError
// a caller can match, and that it writes nothing.
func TestGenerateCAInputErrorTyped(t *testing.T) {
	t.Parallel()
	in, out := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(in, IntermediateKeyFile), []byte("not read"))
	before := snapshot(t, out)
	_, err := GenerateCAFrom(in, out, clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), io.Discard)
	var ie *InputError
	if !errors.As(err, &ie) || ie.Problem != IntermediateWithoutRoot || ie.Dir != in {
		t.Fatalf("error %v, want an *InputError IntermediateWithoutRoot for %s", err, in)
	}
	sameSnapshot(t, before, snapshot(t, out))
}

func TestExistingCAFiles(t *testing.T) {
	dir := t.TempDir()
	if got := existingCAFiles(dir); got != nil {
		t.Errorf("empty dir: %q", got)
	}
	last := certs.CAs[len(certs.CAs)-1]
	for _, f := range []string{last.KeyFile, certs.CAs[0].CertFile, certs.ServiceKeyFile, RootCertFile} {
		writeFile(t, filepath.Join(dir, f), []byte("x"))
	}
	if got, want := existingCAFiles(dir), []string{certs.CAs[0].CertFile, last.KeyFile}; !slices.Equal(got, want) {
		t.Errorf("existingCAFiles = %q, want %q (table order, CA files only)", got, want)
	}
}

func TestOffClusterFiles(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{IntermediateKeyFile, RootKeyFile, IntermediateCertFile, RootCertFile, "server-ca.crt", "root-ca.pem.bak"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for _, p := range offClusterFiles(dir) {
		got = append(got, filepath.Base(p))
	}
	if want := []string{RootKeyFile, RootCertFile, "root-ca.pem.bak", IntermediateKeyFile, IntermediateCertFile}; !slices.Equal(got, want) {
		t.Errorf("offClusterFiles = %q, want %q", got, want)
	}
}

func TestTokenPasswords(t *testing.T) {
	l := datadir.Layout{Root: t.TempDir()}
	hash := strings.Repeat("ab", 32)
	writeFile(t, l.TokenFile(), []byte(token.Format(hash, "server", "server-secret")+"\n"))
	if _, _, err := tokenPasswords(l); err == nil || !strings.Contains(err.Error(), l.AgentTokenFile()+" does not exist") ||
		!strings.Contains(err.Error(), "is "+l.Root+" a kpki server data dir?") {
		t.Errorf("no agent token: %v", err)
	}
	writeFile(t, l.AgentTokenFile(), []byte(token.Format(hash, "node", "agent-secret")+"\n"))
	server, agent, err := tokenPasswords(l)
	if err != nil || server != "server-secret" || agent != "agent-secret" {
		t.Errorf("tokenPasswords = %q, %q, %v", server, agent, err)
	}
}
