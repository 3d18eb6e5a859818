package certs_test

import (
	"crypto/x509"
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/rotation"
)

// k3sFixture is a bootstrap record and the data dir it was made from by K3s.
const k3sFixture = "../bootstrap/testdata/k3s-bootstrap"

// k3sOnlyFields are fields of K3s's record that kpki keeps verbatim without knowing them.
var k3sOnlyFields = []string{"IPSECKey"}

// TestCATableConsistent checks the rows of certs.CAs against each other and against
// the leaf table: no two rows share an ID, a file or a record field, the names follow
// the RKE2/K3s conventions, and the roles agree with the leaves each CA signs.
func TestCATableConsistent(t *testing.T) {
	files := map[string]string{certs.ServiceKeyFile: "service key", certs.ServiceCurrentKeyFile: "service key"}
	fields := map[string]string{certs.ServiceKeyField: "service key", bootstrap.PasswdField: "passwd"}
	ids := map[certs.CAID]bool{}
	prefixes := map[string]bool{}
	claim := func(seen map[string]string, name, owner string) {
		if name == "" {
			return
		}
		if other, ok := seen[name]; ok {
			t.Errorf("%s: %q is also used by %s", owner, name, other)
		}
		seen[name] = owner
	}
	for _, c := range certs.CAs {
		owner := string(c.ID)
		if ids[c.ID] {
			t.Errorf("CA %s appears twice", c.ID)
		}
		ids[c.ID] = true
		claim(files, c.CertFile, owner)
		claim(files, c.KeyFile, owner)
		claim(files, c.NoChainFile, owner)
		claim(fields, c.CertField, owner)
		claim(fields, c.KeyField, owner)
		if prefixes[c.CNPrefix] || c.CNPrefix == "" {
			t.Errorf("%s: CN prefix %q empty or not unique", c.ID, c.CNPrefix)
		}
		prefixes[c.CNPrefix] = true

		base := strings.TrimSuffix(c.CertFile, ".crt")
		if c.CertFile != string(c.ID)+".crt" || c.KeyFile != base+".key" {
			t.Errorf("%s: files %q %q, want <id>.crt and <id>.key", c.ID, c.CertFile, c.KeyFile)
		}
		if c.NoChainFile != "" && c.NoChainFile != base+".nochain.crt" {
			t.Errorf("%s: nochain file %q, want %s.nochain.crt", c.ID, c.NoChainFile, base)
		}
		if c.CertField == "" || c.KeyField != c.CertField+"Key" {
			t.Errorf("%s: record fields %q %q, want X and XKey", c.ID, c.CertField, c.KeyField)
		}
		if c.Validity <= 0 {
			t.Errorf("%s: validity %v", c.ID, c.Validity)
		}
	}

	// The roles follow from the leaves: agents keep exactly the CAs that sign agent
	// leaves, and the etcd CAs are exactly those that sign etcd leaves.
	agentSigners, etcdSigners := map[certs.CAID]bool{}, map[certs.CAID]bool{}
	for _, l := range certs.Leaves {
		if !ids[l.Signer] {
			t.Errorf("leaf %s: signer %s is not in the CA table", l.Name, l.Signer)
		}
		if l.Node == certs.AgentNode {
			agentSigners[l.Signer] = true
		}
		if l.Kind == "etcd" {
			etcdSigners[l.Signer] = true
		}
	}
	for _, c := range certs.CAs {
		if c.Agent != agentSigners[c.ID] {
			t.Errorf("%s: Agent %v, but it signs agent leaves: %v", c.ID, c.Agent, agentSigners[c.ID])
		}
		if c.Etcd != etcdSigners[c.ID] {
			t.Errorf("%s: Etcd %v, but it signs etcd leaves: %v", c.ID, c.Etcd, etcdSigners[c.ID])
		}
	}
	// Join tokens pin the server CA, which rotate-ca must therefore handle.
	if !certs.CA(certs.ServerCA).Rotate || !certs.CA(certs.ServerCA).Agent {
		t.Error("the server CA is not rotated by rotate-ca or not kept by agents")
	}
}

// TestKubeconfigTableConsistent checks that every kubeconfig names a client leaf of
// its node and a CA that node keeps.
func TestKubeconfigTableConsistent(t *testing.T) {
	seen := map[string]bool{}
	for _, k := range certs.Kubeconfigs {
		key := string(rune('0'+k.Node)) + k.File
		if seen[key] || !strings.HasSuffix(k.File, ".kubeconfig") || strings.Contains(k.File, "/") {
			t.Errorf("kubeconfig %s: duplicate, or not a plain <name>.kubeconfig", k.File)
		}
		seen[key] = true
		i := slices.IndexFunc(certs.Select(k.Node, nil), func(l certs.Leaf) bool { return l.Name == k.Leaf })
		if i < 0 {
			t.Errorf("kubeconfig %s: no leaf %s on its node", k.File, k.Leaf)
			continue
		}
		if l := certs.Select(k.Node, nil)[i]; !slices.Contains(l.Usage, x509.ExtKeyUsageClientAuth) {
			t.Errorf("kubeconfig %s: leaf %s is not a client certificate", k.File, k.Leaf)
		}
		if !slices.Contains(certs.NodeCAFiles(k.Node), certs.CA(k.CA).CertFile) {
			t.Errorf("kubeconfig %s: its node does not keep %s", k.File, certs.CA(k.CA).CertFile)
		}
	}
}

// TestRecordFieldsFromTable checks what bootstrap and rotation derive from the table
// against a record K3s wrote: bootstrap.Files holds exactly the fixture's fields (less
// those only K3s knows), each at the path where the fixture keeps its file, and
// rotate-ca takes the CA files and the service keys, in record order.
func TestRecordFieldsFromTable(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(k3sFixture, "plaintext.json"))
	if err != nil {
		t.Fatal(err)
	}
	var record map[string]json.RawMessage
	if err := json.Unmarshal(raw, &record); err != nil {
		t.Fatal(err)
	}
	var want []string
	for f := range record {
		if !slices.Contains(k3sOnlyFields, f) {
			want = append(want, f)
		}
	}
	var got []string
	for _, f := range bootstrap.Files {
		got = append(got, f.Field)
		// The fixture dir is laid out as <dd>/server.
		rel, ok := strings.CutPrefix(f.Path, "server/")
		if !ok {
			t.Errorf("%s: path %q is not under server/", f.Field, f.Path)
			continue
		}
		if _, err := os.Stat(filepath.Join(k3sFixture, filepath.FromSlash(rel))); err != nil {
			t.Errorf("%s: K3s has no file at %s: %v", f.Field, rel, err)
		}
	}
	slices.Sort(want)
	if g := slices.Sorted(slices.Values(got)); !slices.Equal(g, want) {
		t.Errorf("bootstrap.Files fields %q, want the K3s record's %q", g, want)
	}

	// Record order: each CA's certificate then key, in table order, then the rest.
	var caFields []string
	var rotated []string
	for _, c := range certs.CAs {
		caFields = append(caFields, c.CertField, c.KeyField)
		if c.Rotate {
			rotated = append(rotated, c.CertField, c.KeyField)
		}
		for _, p := range []struct{ field, file string }{{c.CertField, c.CertFile}, {c.KeyField, c.KeyFile}} {
			i := slices.IndexFunc(bootstrap.Files, func(f bootstrap.FileSpec) bool { return f.Field == p.field })
			if i < 0 || bootstrap.Files[i].Path != path.Join(bootstrap.TLSDir, p.file) {
				t.Errorf("%s: not in bootstrap.Files at %s/%s", p.field, bootstrap.TLSDir, p.file)
			}
			if got, want := rotation.StagedPath(p.field), path.Join("tls", p.file); c.Rotate && got != want {
				t.Errorf("rotation.StagedPath(%s) = %q, want %q", p.field, got, want)
			}
		}
	}
	if !slices.Equal(got[:len(caFields)], caFields) {
		t.Errorf("bootstrap.Files starts %q, want the CA fields in table order %q", got[:len(caFields)], caFields)
	}
	if want := append(rotated, certs.ServiceKeyField); !slices.Equal(rotation.Fields(), want) {
		t.Errorf("rotation.Fields() = %q, want %q", rotation.Fields(), want)
	}
	if p := rotation.StagedPath(bootstrap.PasswdField); p != "" {
		t.Errorf("rotate-ca takes the passwd file (%q)", p)
	}
}
