package datastore

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/testport"
	bolt "go.etcd.io/bbolt"
)

// etcdCerts are the files of a test etcd CA and its leaves.
type etcdCerts struct {
	CA, ServerCert, ServerKey, PeerCert, PeerKey, ClientCert, ClientKey string
}

// writeEtcdCerts makes a CA and server, peer and client certificates for 127.0.0.1 in
// dir, the way kpki lays them out for its embedded etcd.
func writeEtcdCerts(t testing.TB, dir string) etcdCerts {
	t.Helper()
	iss := pki.NewIssuer(nil, nil)
	caKey, err := iss.NewECKey()
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := iss.SelfSignedCA(caKey, "etcd-test-ca", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca := &pki.CA{Cert: caCert, Key: caKey, Bundle: []*x509.Certificate{caCert}, BundlePEM: pki.EncodeCert(caCert)}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leaf := func(name, cn string, usages ...x509.ExtKeyUsage) (string, string) {
		key, err := iss.NewECKey()
		if err != nil {
			t.Fatal(err)
		}
		cert, err := iss.SignLeaf(ca, key.Public(), pki.LeafProfile{
			CommonName: cn, DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: usages,
		}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		keyPEM, err := pki.EncodeKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return write(name+".crt", pki.EncodeCert(cert)), write(name+".key", keyPEM)
	}
	var c etcdCerts
	c.CA = write("ca.crt", ca.BundlePEM)
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	c.ServerCert, c.ServerKey = leaf("server-client", "etcd-server", both...)
	c.PeerCert, c.PeerKey = leaf("peer-server-client", "etcd-peer", both...)
	c.ClientCert, c.ClientKey = leaf("client", "etcd-client", x509.ExtKeyUsageClientAuth)
	return c
}

// clientTLS is what kpki uses to talk to the test etcd.
func (c etcdCerts) clientTLS() ClientTLS {
	return ClientTLS{CAFile: c.CA, CertFile: c.ClientCert, KeyFile: c.ClientKey}
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	return testport.Free(t)
}

// embeddedConfig describes a single-member etcd on loopback with its files under dir.
func embeddedConfig(t testing.TB, dir string, certs etcdCerts) EmbeddedConfig {
	t.Helper()
	return EmbeddedConfig{
		Name:          "test-member",
		DataDir:       filepath.Join(dir, "db", "etcd"),
		LogFile:       filepath.Join(dir, "logs", "etcd.log"),
		BindAddress:   "127.0.0.1",
		Advertise:     "127.0.0.1",
		ClientPort:    freePort(t),
		PeerPort:      freePort(t),
		ServerCert:    certs.ServerCert,
		ServerKey:     certs.ServerKey,
		ServerCA:      certs.CA,
		PeerCert:      certs.PeerCert,
		PeerKey:       certs.PeerKey,
		PeerCA:        certs.CA,
		ClientCert:    certs.ClientCert,
		ClientKey:     certs.ClientKey,
		UnsafeNoFsync: true,
		StartTimeout:  20 * time.Second,
	}
}

// startEtcd starts a fresh embedded etcd member that the caller must Close (exactly
// once: a second Close of an embedded etcd panics).
func startEtcd(t testing.TB) (*Embedded, EmbeddedConfig, etcdCerts) {
	t.Helper()
	dir := t.TempDir()
	certs := writeEtcdCerts(t, dir)
	cfg := embeddedConfig(t, dir, certs)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := StartEmbedded(ctx, cfg)
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	return e, cfg, certs
}

func TestEmbeddedConfigURLs(t *testing.T) {
	tests := []struct {
		name       string
		advertise  string
		client     int
		peer       int
		wantClient string
		wantPeer   string
	}{
		{name: "IPv4", advertise: "10.0.0.1", client: 2379, peer: 2380, wantClient: "https://10.0.0.1:2379", wantPeer: "https://10.0.0.1:2380"},
		{name: "IPv6", advertise: "fd00::1", client: 2379, peer: 2380, wantClient: "https://[fd00::1]:2379", wantPeer: "https://[fd00::1]:2380"},
		{name: "host name", advertise: "server-1.example.com", client: 12379, peer: 12380,
			wantClient: "https://server-1.example.com:12379", wantPeer: "https://server-1.example.com:12380"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := EmbeddedConfig{Advertise: tc.advertise, ClientPort: tc.client, PeerPort: tc.peer}
			if got := c.ClientURL(); got != tc.wantClient {
				t.Errorf("ClientURL = %q, want %q", got, tc.wantClient)
			}
			if got := c.PeerURL(); got != tc.wantPeer {
				t.Errorf("PeerURL = %q, want %q", got, tc.wantPeer)
			}
		})
	}
}

// writeBolt creates a valid bolt database at path holding a few keys.
func writeBolt(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("key"))
		if err != nil {
			return err
		}
		for i := range 500 {
			if err := b.Put([]byte(strconv.Itoa(i)), make([]byte, 200)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCheckDatabase(t *testing.T) {
	random := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	tests := []struct {
		name    string
		setup   func(t *testing.T, db string) // db is <dataDir>/member/snap/db; its directory exists
		noDir   bool                          // do not even create the data directory
		wantErr string
	}{
		{name: "no data directory", noDir: true},
		{name: "no database yet", setup: func(*testing.T, string) {}},
		{name: "valid database", setup: writeBolt},
		{name: "text garbage", setup: func(t *testing.T, db string) { writeFile(t, db, []byte("this is not a bolt database\n")) },
			wantErr: "cannot be opened"},
		{name: "random garbage", setup: func(t *testing.T, db string) { writeFile(t, db, random(64<<10)) },
			wantErr: "cannot be opened"},
		{name: "zeros", setup: func(t *testing.T, db string) { writeFile(t, db, make([]byte, 64<<10)) },
			wantErr: "cannot be opened"},
		{name: "empty file", setup: func(t *testing.T, db string) { writeFile(t, db, nil) },
			wantErr: "cannot be opened"},
		{name: "truncated to one page", setup: func(t *testing.T, db string) {
			writeBolt(t, db)
			if err := os.Truncate(db, 4096); err != nil {
				t.Fatal(err)
			}
		}, wantErr: "cannot be opened"},
		{name: "truncated after the meta pages", setup: func(t *testing.T, db string) {
			writeBolt(t, db)
			if err := os.Truncate(db, 2*int64(os.Getpagesize())); err != nil {
				t.Fatal(err)
			}
		}, wantErr: "the file is truncated"},
		{name: "truncated to half", setup: func(t *testing.T, db string) {
			writeBolt(t, db)
			fi, err := os.Stat(db)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(db, fi.Size()/2); err != nil {
				t.Fatal(err)
			}
		}, wantErr: "the file is truncated"},
		{name: "both meta pages corrupt", setup: func(t *testing.T, db string) {
			writeBolt(t, db)
			f, err := os.OpenFile(db, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			ps := os.Getpagesize()
			for _, off := range []int64{16, int64(ps) + 16} {
				if _, err := f.WriteAt(random(64), off); err != nil {
					t.Fatal(err)
				}
			}
		}, wantErr: "cannot be opened"},
		{name: "directory instead of a file", setup: func(t *testing.T, db string) {
			if err := os.Mkdir(db, 0o700); err != nil {
				t.Fatal(err)
			}
		}, wantErr: "cannot be opened"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "etcd")
			db := filepath.Join(dataDir, "member", "snap", "db")
			if !tc.noDir {
				if err := os.MkdirAll(filepath.Dir(db), 0o700); err != nil {
					t.Fatal(err)
				}
				tc.setup(t, db)
			}
			err := CheckDatabase(dataDir)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckDatabase = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("CheckDatabase accepted a corrupt database")
			}
			if !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), db) {
				t.Errorf("error %q, want it to contain %q and the path %s", err, tc.wantErr, db)
			}
		})
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestStartEmbedded(t *testing.T) {
	e, cfg, certs := startEtcd(t)
	closed := false
	defer func() {
		if !closed {
			e.Close()
		}
	}()
	ctx := context.Background()
	if err := e.Healthy(ctx, 5*time.Second); err != nil {
		t.Fatalf("Healthy: %v", err)
	}
	if len(e.Endpoints) != 1 || e.Endpoints[0] != cfg.ClientURL() {
		t.Errorf("Endpoints = %q, want [%s]", e.Endpoints, cfg.ClientURL())
	}
	members, err := e.Client().MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(members.Members) != 1 || members.Members[0].Name != cfg.Name ||
		len(members.Members[0].PeerURLs) != 1 || members.Members[0].PeerURLs[0] != cfg.PeerURL() {
		t.Errorf("members %v, want one %s at %s", members.Members, cfg.Name, cfg.PeerURL())
	}
	select {
	case err := <-e.Err():
		t.Fatalf("member reported an error: %v", err)
	default:
	}
	if err := e.Put(ctx, "/kpki/test/persist", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "member", "snap", "db")); err != nil {
		t.Errorf("no database in the data directory: %v", err)
	}
	if fi, err := os.Stat(cfg.LogFile); err != nil {
		t.Errorf("log file: %v", err)
	} else if fi.IsDir() {
		t.Error("log file is a directory")
	}

	// Mutual TLS: a client without a certificate is refused, one with it answers.
	tests := []struct {
		name string
		tls  ClientTLS
		ok   bool
	}{
		{name: "client certificate", tls: certs.clientTLS(), ok: true},
		{name: "no client certificate", tls: ClientTLS{CAFile: certs.CA}, ok: false},
		{name: "server not trusted", tls: ClientTLS{CAFile: writeEtcdCerts(t, t.TempDir()).CA, CertFile: certs.ClientCert, KeyFile: certs.ClientKey}, ok: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, err := Connect(ctx, []string{cfg.ClientURL()}, tc.tls, time.Second)
			if (err == nil) != tc.ok {
				t.Fatalf("Connect = %v, want success %v", err, tc.ok)
			}
			if err != nil {
				return
			}
			defer st.Close()
			v, _, err := st.Get(ctx, "/kpki/test/persist")
			if err != nil || string(v) != "v1" {
				t.Errorf("Get = %q, %v", v, err)
			}
		})
	}

	// The data survives a restart on the same directory.
	closed = true
	if err := e.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	e2, err := StartEmbedded(sctx, cfg)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	v, _, err := e2.Get(ctx, "/kpki/test/persist")
	if err != nil || string(v) != "v1" {
		t.Errorf("after restart Get = %q, %v; want v1", v, err)
	}
	if err := e2.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	// A database cut short after its meta pages is refused with a message; etcd itself
	// would fault on the missing pages and take the whole process down.
	db := filepath.Join(cfg.DataDir, "member", "snap", "db")
	if err := os.Truncate(db, 2*int64(os.Getpagesize())); err != nil {
		t.Fatal(err)
	}
	e3, err := StartEmbedded(sctx, cfg)
	if err == nil {
		e3.Close()
		t.Fatal("StartEmbedded accepted a truncated database")
	}
	for _, want := range []string{"etcd database " + db, "the file is truncated"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

func TestStartEmbeddedFailures(t *testing.T) {
	tests := []struct {
		name    string
		modify  func(t *testing.T, c *EmbeddedConfig)
		wantErr []string
	}{
		{name: "garbage database", modify: func(t *testing.T, c *EmbeddedConfig) {
			db := filepath.Join(c.DataDir, "member", "snap", "db")
			if err := os.MkdirAll(filepath.Dir(db), 0o700); err != nil {
				t.Fatal(err)
			}
			writeFile(t, db, []byte("<html>not a database</html>"))
		}, wantErr: []string{"etcd database", "member/snap/db", "cannot be opened"}},
		{name: "malformed peer list for a joining member", modify: func(_ *testing.T, c *EmbeddedConfig) {
			c.JoinExisting, c.InitialPeers = true, "other-member"
		}, wantErr: []string{"start embedded etcd", "(data "}},
		{name: "client port in use", modify: func(t *testing.T, c *EmbeddedConfig) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			c.ClientPort = ln.Addr().(*net.TCPAddr).Port
		}, wantErr: []string{"start embedded etcd", "address already in use"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := embeddedConfig(t, dir, writeEtcdCerts(t, dir))
			tc.modify(t, &cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Now()
			e, err := StartEmbedded(ctx, cfg)
			if err == nil {
				e.Close()
				t.Fatal("StartEmbedded succeeded")
			}
			if errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 15*time.Second {
				t.Errorf("StartEmbedded took %s to fail: %v", time.Since(start), err)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// The client port serves gRPC only, natively: an HTTP/1.1 request for etcd's /health
// on it is not answered as HTTP, while etcd's HTTP endpoints are on a loopback port of
// their own.
func TestEmbeddedClientPortServesGRPCOnly(t *testing.T) {
	e, cfg, certs := startEtcd(t)
	defer e.Close()
	ec, err := cfg.embedConfig()
	if err != nil {
		t.Fatal(err)
	}
	if len(ec.ListenClientHttpUrls) != 1 || !strings.HasPrefix(ec.ListenClientHttpUrls[0].Host, "127.0.0.1:") ||
		ec.ListenClientHttpUrls[0].Host == ec.ListenClientUrls[0].Host {
		t.Fatalf("HTTP endpoints at %v, client URLs %v: want a loopback URL of their own", ec.ListenClientHttpUrls, ec.ListenClientUrls)
	}
	tlsCfg, err := certs.clientTLS().config()
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg.NextProtos = []string{"http/1.1"}
	cli := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: false}, Timeout: 5 * time.Second}
	resp, err := cli.Get(cfg.ClientURL() + "/health")
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatalf("the client port answered HTTP/1.1 GET /health with %s %q: HTTP is still served there", resp.Status, body)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Put(ctx, "/grpc-only", []byte("v")); err != nil {
		t.Fatalf("gRPC on the client port: %v", err)
	}
}

// BenchmarkEmbeddedCreate is a node registration's datastore work, 16 at a time, against
// an embedded member whose client port serves gRPC natively and against one that also
// serves etcd's HTTP endpoints there (gRPC through net/http). cpu-µs/op is the
// process's CPU time (user and system: client, member and WAL) per create.
//
//	go test -run XXX -bench EmbeddedCreate -benchtime 3000x -count 3 ./internal/datastore/
func BenchmarkEmbeddedCreate(b *testing.B) {
	for _, mode := range []struct {
		name   string
		shared bool
	}{{"native-grpc", false}, {"grpc-via-http", true}} {
		b.Run(mode.name, func(b *testing.B) {
			dir := b.TempDir()
			certs := writeEtcdCerts(b, dir)
			cfg := embeddedConfig(b, dir, certs)
			cfg.UnsafeNoFsync = false
			cfg.sharedHTTP = mode.shared
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			e, err := StartEmbedded(ctx, cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			var n atomic.Int64
			b.SetParallelism(8) // 16 goroutines on 2 CPUs
			before := cpuTime(b)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					key := "/bench/" + strconv.FormatInt(n.Add(1), 10)
					if _, _, _, err := e.CreateOrGetRev(ctx, key, []byte("salt:hash")); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64((cpuTime(b)-before).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
