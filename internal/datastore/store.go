// Package datastore is kpki's access to etcd: the embedded single-member etcd a server
// runs by default and external etcd clusters, both through the etcd v3 client, with the
// few operations kpki needs (get, create-only put, compare-and-swap update, atomic
// replace, prefix listing, watch). It holds no PKI logic.
package datastore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Sentinel errors callers branch on.
var (
	ErrNotFound = errors.New("key not found")
	ErrExists   = errors.New("key already exists")
	ErrConflict = errors.New("key was changed concurrently")
)

// Store is a key-value datastore with revisions.
type Store struct {
	cli *clientv3.Client
	// Endpoints is what the client connects to, for messages.
	Endpoints []string
}

// ClientTLS names the files for mutual TLS to etcd; empty fields mean none.
type ClientTLS struct {
	CAFile, CertFile, KeyFile string
}

func (c ClientTLS) config() (*tls.Config, error) {
	if c.CAFile == "" && c.CertFile == "" && c.KeyFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("datastore CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("datastore CA file %s: no certificate found", c.CAFile)
		}
		cfg.RootCAs = pool
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, errors.New("datastore client certificate and key must be given together")
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("datastore client certificate %s / key %s: %w", c.CertFile, c.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Connect opens a client to endpoints and checks that the cluster answers within timeout.
func Connect(ctx context.Context, endpoints []string, t ClientTLS, timeout time.Duration) (*Store, error) {
	tlsCfg, err := t.config()
	if err != nil {
		return nil, err
	}
	for i, e := range endpoints {
		endpoints[i] = strings.TrimSpace(e)
		if tlsCfg != nil && strings.HasPrefix(endpoints[i], "http://") {
			return nil, fmt.Errorf("datastore endpoint %s is plain http but TLS files were given", e)
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		TLS:         tlsCfg,
		DialTimeout: timeout,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("datastore %s: %w", strings.Join(endpoints, ","), err)
	}
	s := &Store{cli: cli, Endpoints: endpoints}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := cli.Get(cctx, "/kpki-health"); err != nil {
		cli.Close()
		return nil, fmt.Errorf("datastore %s does not answer: %w", strings.Join(endpoints, ","), err)
	}
	return s, nil
}

// Close closes the client.
func (s *Store) Close() error { return s.cli.Close() }

// Client exposes the etcd client for membership operations.
func (s *Store) Client() *clientv3.Client { return s.cli }

// Get returns the value of key and its modification revision.
func (s *Store) Get(ctx context.Context, key string) ([]byte, int64, error) {
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return nil, 0, fmt.Errorf("datastore get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, ErrNotFound
	}
	return resp.Kvs[0].Value, resp.Kvs[0].ModRevision, nil
}

// Keys lists the keys under prefix.
func (s *Store) Keys(ctx context.Context, prefix string) ([]string, error) {
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("datastore list %s: %w", prefix, err)
	}
	out := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, string(kv.Key))
	}
	return out, nil
}

// KV is one key and its value.
type KV struct {
	Key   string
	Value []byte
}

// GetPrefix returns every key under prefix with its value, and the revision of the
// datastore the read saw (a watch from rev+1 misses no later change).
func (s *Store) GetPrefix(ctx context.Context, prefix string) ([]KV, int64, error) {
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("datastore list %s: %w", prefix, err)
	}
	out := make([]KV, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, KV{Key: string(kv.Key), Value: kv.Value})
	}
	return out, resp.Header.Revision, nil
}

// Create writes key only if it does not exist (ErrExists otherwise).
func (s *Store) Create(ctx context.Context, key string, value []byte) error {
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(value))).
		Commit()
	if err != nil {
		return fmt.Errorf("datastore create %s: %w", key, err)
	}
	if !resp.Succeeded {
		return ErrExists
	}
	return nil
}

// CreateOrGet writes key if it does not exist, else returns its current value, in one
// transaction.
func (s *Store) CreateOrGet(ctx context.Context, key string, value []byte) (created bool, existing []byte, err error) {
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(value))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return false, nil, fmt.Errorf("datastore create %s: %w", key, err)
	}
	if resp.Succeeded {
		return true, nil, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return false, nil, ErrConflict
	}
	return false, kvs[0].Value, nil
}

// Update replaces key's value if its modification revision is still rev (ErrConflict
// otherwise) and returns the new revision.
func (s *Store) Update(ctx context.Context, key string, value []byte, rev int64) (int64, error) {
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpPut(key, string(value))).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("datastore update %s: %w", key, err)
	}
	if !resp.Succeeded {
		return 0, ErrConflict
	}
	return resp.Header.Revision, nil
}

// Replace atomically deletes oldKey (which must still be at rev) and creates newKey,
// returning the new revision.
func (s *Store) Replace(ctx context.Context, oldKey string, rev int64, newKey string, value []byte) (int64, error) {
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(oldKey), "=", rev), clientv3.Compare(clientv3.CreateRevision(newKey), "=", 0)).
		Then(clientv3.OpDelete(oldKey), clientv3.OpPut(newKey, string(value))).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("datastore replace %s: %w", oldKey, err)
	}
	if !resp.Succeeded {
		return 0, ErrConflict
	}
	return resp.Header.Revision, nil
}

// Put writes key unconditionally.
func (s *Store) Put(ctx context.Context, key string, value []byte) error {
	if _, err := s.cli.Put(ctx, key, string(value)); err != nil {
		return fmt.Errorf("datastore put %s: %w", key, err)
	}
	return nil
}

// Event is one change under a watched prefix.
type Event struct {
	Key      string
	Revision int64
	Deleted  bool
}

// WatchPrefix sends every change of a key under prefix from revision fromRev on (from
// now when fromRev is 0) until ctx ends. The channel closes when the watch ends, also
// when etcd refuses it (for instance because fromRev was compacted away).
func (s *Store) WatchPrefix(ctx context.Context, prefix string, fromRev int64) <-chan Event {
	out := make(chan Event, 16)
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if fromRev > 0 {
		opts = append(opts, clientv3.WithRev(fromRev))
	}
	wc := s.cli.Watch(clientv3.WithRequireLeader(ctx), prefix, opts...)
	go func() {
		defer close(out)
		for resp := range wc {
			if resp.Err() != nil {
				return
			}
			for _, ev := range resp.Events {
				e := Event{Key: string(ev.Kv.Key), Revision: ev.Kv.ModRevision, Deleted: ev.Type == clientv3.EventTypeDelete}
				select {
				case out <- e:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

// Healthy checks that the datastore answers a read within timeout.
func (s *Store) Healthy(ctx context.Context, timeout time.Duration) error {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := s.cli.Get(cctx, "/kpki-health")
	return err
}
