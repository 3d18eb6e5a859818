package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const k3sFixture = "testdata/k3s-bootstrap"

type etcdSnapshot map[string]struct {
	value       string
	modRevision int64
}

func snapshotPrefix(t *testing.T, cli *clientv3.Client, prefix string) etcdSnapshot {
	t.Helper()
	snap, err := getPrefix(cli, prefix)
	if err != nil {
		t.Fatalf("etcd get %s*: %v", prefix, err)
	}
	return snap
}

// getPrefix reads every key under prefix with its value and revision.
func getPrefix(cli *clientv3.Client, prefix string) (etcdSnapshot, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	snap := etcdSnapshot{}
	for _, kv := range resp.Kvs {
		snap[string(kv.Key)] = struct {
			value       string
			modRevision int64
		}{string(kv.Value), kv.ModRevision}
	}
	return snap, nil
}

// TestServerAdoptsK3sBootstrapRecord puts a bootstrap record written the K3s way into a Debian
// etcd and starts kpki on it as an external datastore: the record's files must land on disk
// byte for byte with the record's timestamps, and any other token must be refused without
// writing anything. K3s gives agents the server password; kpki replaces the agent entry of
// the record's passwd by a distinct password (compare-and-swap on the same key, every other
// field kept as K3s wrote it, unknown ones included) so that its agent token is no server token.
func TestServerAdoptsK3sBootstrapRecord(t *testing.T) {
	t.Parallel()
	token := strings.TrimSpace(string(readFile(t, filepath.Join(k3sFixture, "token"))))
	etcdKey := strings.TrimSpace(string(readFile(t, filepath.Join(k3sFixture, "etcd-key"))))
	value := readFile(t, filepath.Join(k3sFixture, "value"))
	pass := passphrase(token)
	m := serverTokenRE.FindStringSubmatch(token)
	if m == nil {
		t.Fatalf("fixture token is not a secure server token")
	}
	caHashPart := m[1]

	// The fixture and this test's decryption agree (so a mismatch later is the product's).
	if got := bootstrapKey(pass); got != etcdKey {
		t.Fatalf("bootstrapKey(fixture password) = %s, fixture etcd-key is %s", got, etcdKey)
	}
	plain, err := decryptBootstrap(pass, string(value))
	if err != nil {
		t.Fatalf("decrypt fixture value: %v", err)
	}
	var gotRec, wantRec map[string]bootstrapEntry
	if err := json.Unmarshal(plain, &gotRec); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(readFile(t, filepath.Join(k3sFixture, "plaintext.json")), &wantRec); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotRec, wantRec) {
		t.Fatalf("decrypted fixture value differs from plaintext.json")
	}

	for _, variant := range []struct {
		name string
		tls  bool
	}{{"plain http", false}, {"mutual TLS", true}} {
		t.Run(variant.name, func(t *testing.T) {
			t.Parallel()
			e := startEtcd(t, variant.tls)
			cli := e.Client(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := cli.Put(ctx, etcdKey, string(value)); err != nil {
				t.Fatalf("put fixture record: %v", err)
			}
			datastore := []string{"--datastore-endpoint", e.Endpoint}
			if variant.tls {
				datastore = append(datastore, "--datastore-cafile", e.CAFile, "--datastore-certfile", e.CertFile, "--datastore-keyfile", e.KeyFile)
			}

			dd := filepath.Join(t.TempDir(), "data")
			s := startServer(t, dd, append([]string{"--token", token}, datastore...)...)
			s.WaitReady(t)
			serverDir := filepath.Join(dd, "server")

			// The record after the start: the same single key, every field but PasswdFile
			// as K3s wrote it, and PasswdFile with a distinct agent password.
			record := snapshotPrefix(t, cli, "/bootstrap/")
			if len(record) != 1 || record[etcdKey].value == "" {
				t.Fatalf("the bootstrap keys after the start are %d, want only %s", len(record), etcdKey)
			}
			after, err := decryptBootstrap(pass, record[etcdKey].value)
			if err != nil {
				t.Fatalf("the record after the start does not decrypt with the fixture token: %v", err)
			}
			var afterRec map[string]bootstrapEntry
			if err := json.Unmarshal(after, &afterRec); err != nil {
				t.Fatal(err)
			}
			for field, e := range wantRec {
				if field != "PasswdFile" && !reflect.DeepEqual(afterRec[field], e) {
					t.Errorf("the start changed %s in the K3s record", field)
				}
			}
			agentTok := strings.TrimSpace(string(readFile(t, filepath.Join(serverDir, "agent-token"))))
			am := agentTokenRE.FindStringSubmatch(agentTok)
			if am == nil || am[1] != caHashPart || am[2] == pass {
				t.Fatalf("agent-token is not K10<the fixture hash>::node:<a password other than the server's>")
			}
			fixturePasswd := strings.Split(strings.TrimSpace(string(readFile(t, filepath.Join(k3sFixture, "cred", "passwd")))), "\n")
			wantPasswd := fixturePasswd[0] + "\n" + am[2] + ",node,node,k3s:agent\n"
			if fixturePasswd[0] != pass+",server,server,k3s:server" || fixturePasswd[1] != pass+",node,node,k3s:agent" {
				t.Fatalf("the fixture passwd is not K3s's server and node entries with the token password")
			}
			if got := string(afterRec["PasswdFile"].Content); got != wantPasswd {
				t.Errorf("the record's PasswdFile after the start is not the K3s server entry and a distinct k3s:agent entry")
			}
			if !strings.Contains(s.Stderr(), "agent password was the server password") {
				t.Errorf("the server did not warn that it replaced the agent password")
			}
			wantRecord := map[string]bootstrapEntry{}
			for field, e := range wantRec {
				wantRecord[field] = e
			}
			wantRecord["PasswdFile"] = afterRec["PasswdFile"]

			for field, rel := range bootstrapFiles {
				fixture := readFile(t, filepath.Join(k3sFixture, rel))
				if field == "PasswdFile" {
					fixture = []byte(wantPasswd)
				}
				got := filepath.Join(serverDir, rel)
				data, err := os.ReadFile(got)
				if err != nil {
					t.Errorf("%s (record field %s): %v", rel, field, err)
					continue
				}
				if !bytes.Equal(data, fixture) {
					t.Errorf("%s differs from the record's %s", got, field)
				}
				info, err := os.Stat(got)
				if err != nil {
					t.Fatal(err)
				}
				if info.Mode().Perm() != 0o600 {
					t.Errorf("%s: mode %v, want 0600", got, info.Mode().Perm())
				}
				ts, err := time.Parse(time.RFC3339Nano, wantRecord[field].Timestamp)
				if err != nil {
					t.Fatal(err)
				}
				if !info.ModTime().Equal(ts) {
					t.Errorf("%s: mtime %v, want the record Timestamp %v", got, info.ModTime().UTC().Format(time.RFC3339Nano), ts.Format(time.RFC3339Nano))
				}
			}
			fixtureCA := readCerts(t, filepath.Join(k3sFixture, "tls", "server-ca.crt"))
			sup := readCerts(t, filepath.Join(s.TLSDir(), "serving-supervisor.crt"))
			if len(sup) < 2 || !sup[1].Equal(fixtureCA[0]) {
				t.Errorf("serving-supervisor.crt is not followed by the record's server CA")
			}
			if err := sup[0].CheckSignatureFrom(fixtureCA[0]); err != nil {
				t.Errorf("serving-supervisor.crt is not signed by the record's server CA: %v", err)
			}
			if served := s.ServedChain(t, ""); !served[0].Equal(sup[0]) {
				t.Errorf("the supervisor does not serve serving-supervisor.crt")
			}
			if code, body := s.MustGet(t, "/cacerts"); code != 200 || !bytes.Equal(body, readFile(t, filepath.Join(k3sFixture, "tls", "server-ca.crt"))) {
				t.Errorf("GET /cacerts: %d, body is not the record's server-ca.crt", code)
			}
			if got := strings.TrimSpace(string(readFile(t, filepath.Join(serverDir, "token")))); got != token {
				t.Errorf("token file %q, want the fixture token", redact(got))
			}
			if listening(s.IP, s.Ports.EtcdClient) {
				t.Errorf("something listens on the etcd client port %d although an external datastore is configured", s.Ports.EtcdClient)
			}
			s.Stop(t)

			if stopped := snapshotPrefix(t, cli, "/bootstrap/"); !reflect.DeepEqual(stopped, record) {
				t.Errorf("the bootstrap keys changed after the server was ready: %d keys", len(stopped))
			}
			for _, wrong := range []struct{ name, token string }{
				{"same CA hash, wrong password", "K10" + caHashPart + "::server:wrongpassword"},
				{"bare wrong password", "wrongpassword"},
			} {
				t.Run(wrong.name, func(t *testing.T) {
					dd2 := filepath.Join(t.TempDir(), "data")
					s2 := startServer(t, dd2, append([]string{"--token", wrong.token}, datastore...)...)
					code, stderr := s2.Wait(t, failTimeout)
					assertFailure(t, code, stderr, "bootstrap data already found and encrypted with different token")
					if files := nonDirs(hashTree(t, dd2)); len(files) != 0 {
						t.Errorf("a refused start wrote files into the data dir: %s", strings.Join(files, ", "))
					}
					if after := snapshotPrefix(t, cli, "/bootstrap/"); !reflect.DeepEqual(after, record) {
						t.Errorf("the bootstrap keys in etcd changed after a refused start: %d keys, want the single unchanged %s", len(after), etcdKey)
					}
				})
			}
		})
	}
}
