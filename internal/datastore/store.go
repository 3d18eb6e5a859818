// Package datastore is kpki's access to etcd: the embedded single-member etcd a server
// runs by default and external etcd clusters, both through the etcd v3 client, with the
// few operations kpki needs (get, create-only put, compare-and-swap update, atomic
// replace, each of these two with side writes in the same transaction, prefix listing,
// watch). It holds no PKI logic.
package datastore

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/kpki/kpki/internal/clock"
)

// Sentinel errors callers branch on.
var (
	ErrNotFound = errors.New("key not found")
	ErrExists   = errors.New("key already exists")
	ErrConflict = errors.New("key was changed concurrently")
)

// Store is a key-value datastore with revisions.
type Store struct {
	// cli is replaced when the embedded member restarts with new certificates (see
	// reconnect); every call takes the current one.
	cli atomic.Pointer[clientv3.Client]
	// Endpoints is what the client connects to, for messages.
	Endpoints []string

	policy retryPolicy
	clock  clock.Clock
	sleep  func(ctx context.Context, d time.Duration) error
}

// newStore wraps cli with the default retry policy on the wall clock.
func newStore(cli *clientv3.Client, endpoints []string) *Store {
	s := &Store{Endpoints: endpoints, policy: defaultRetry, clock: clock.Real{}}
	s.cli.Store(cli)
	s.sleep = func(ctx context.Context, d time.Duration) error { return clock.Sleep(ctx, s.clock, d) }
	return s
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
	cli, err := dial(ctx, endpoints, t, timeout)
	if err != nil {
		return nil, err
	}
	return newStore(cli, endpoints), nil
}

// dial opens a client to endpoints and checks that the cluster answers within timeout.
func dial(ctx context.Context, endpoints []string, t ClientTLS, timeout time.Duration) (*clientv3.Client, error) {
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
		// One try per call: the Store retries itself, and needs to see etcd's own answer
		// (no leader, timeout) rather than the client giving up at the deadline.
		MaxUnaryRetries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("datastore %s: %w", strings.Join(endpoints, ","), err)
	}
	probe := newStore(cli, endpoints)
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := probe.do(cctx, "get", "/kpki-health", true, func(ctx context.Context, _ bool) error {
		_, err := cli.Get(ctx, "/kpki-health")
		return err
	}); err != nil {
		cli.Close()
		return nil, fmt.Errorf("datastore %s does not answer: %w", strings.Join(endpoints, ","), err)
	}
	return cli, nil
}

// reconnect replaces the client with one that uses the TLS files t as they are now (a
// member that restarted with new certificates); the old client is closed, which ends
// its watches (their channels close, as when etcd ends a watch).
func (s *Store) reconnect(ctx context.Context, t ClientTLS, timeout time.Duration) error {
	cli, err := dial(ctx, append([]string(nil), s.Endpoints...), t, timeout)
	if err != nil {
		return err
	}
	if old := s.cli.Swap(cli); old != nil {
		old.Close()
	}
	return nil
}

// Close closes the client.
func (s *Store) Close() error { return s.client().Close() }

// Client exposes the etcd client for membership operations.
func (s *Store) Client() *clientv3.Client { return s.client() }

func (s *Store) client() *clientv3.Client { return s.cli.Load() }

// Every operation below that is safe to repeat is retried across a leader election
// (see do): reads, and writes guarded by a compare that recognise their own earlier
// write when an attempt timed out after it may have been applied.

// wrap names the operation in an error, unless it is a sentinel or already names it.
func wrap(op, key string, err error) error {
	var ue *UnavailableError
	if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrExists) || errors.Is(err, ErrConflict) || errors.As(err, &ue) {
		return err
	}
	return fmt.Errorf("datastore %s %s: %w", op, key, err)
}

// Get returns the value of key and its modification revision.
func (s *Store) Get(ctx context.Context, key string) ([]byte, int64, error) {
	var resp *clientv3.GetResponse
	err := s.do(ctx, "get", key, true, func(ctx context.Context, _ bool) (err error) {
		resp, err = s.client().Get(ctx, key)
		return err
	})
	if err != nil {
		return nil, 0, wrap("get", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, ErrNotFound
	}
	return resp.Kvs[0].Value, resp.Kvs[0].ModRevision, nil
}

// Keys lists the keys under prefix.
func (s *Store) Keys(ctx context.Context, prefix string) ([]string, error) {
	var resp *clientv3.GetResponse
	err := s.do(ctx, "list", prefix, true, func(ctx context.Context, _ bool) (err error) {
		resp, err = s.client().Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		return err
	})
	if err != nil {
		return nil, wrap("list", prefix, err)
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
	var resp *clientv3.GetResponse
	err := s.do(ctx, "list", prefix, true, func(ctx context.Context, _ bool) (err error) {
		resp, err = s.client().Get(ctx, prefix, clientv3.WithPrefix())
		return err
	})
	if err != nil {
		return nil, 0, wrap("list", prefix, err)
	}
	out := make([]KV, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, KV{Key: string(kv.Key), Value: kv.Value})
	}
	return out, resp.Header.Revision, nil
}

// rangeKV returns the single key-value of the i-th response of a transaction, nil when
// the key did not exist.
func rangeKV(resp *clientv3.TxnResponse, i int) *mvccpb.KeyValue {
	if i >= len(resp.Responses) {
		return nil
	}
	r := resp.Responses[i].GetResponseRange()
	if r == nil || len(r.Kvs) == 0 {
		return nil
	}
	return r.Kvs[0]
}

// holds reports whether kv exists with value.
func holds(kv *mvccpb.KeyValue, value []byte) bool {
	return kv != nil && bytes.Equal(kv.Value, value)
}

// Create writes key only if it does not exist (ErrExists otherwise).
func (s *Store) Create(ctx context.Context, key string, value []byte) error {
	return wrap("create", key, s.do(ctx, "create", key, true, func(ctx context.Context, again bool) error {
		return s.createAttempt(ctx, key, value, again)
	}))
}

// createAttempt is one attempt of Create. After an ambiguous attempt (again), a key that
// holds value was written by that attempt.
func (s *Store) createAttempt(ctx context.Context, key string, value []byte, again bool) error {
	resp, err := s.client().Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(value))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return err
	}
	if resp.Succeeded || (again && holds(rangeKV(resp, 0), value)) {
		return nil
	}
	return ErrExists
}

// CreateOrGet writes key if it does not exist, else returns its current value, in one
// transaction.
func (s *Store) CreateOrGet(ctx context.Context, key string, value []byte) (created bool, existing []byte, err error) {
	created, existing, _, err = s.CreateOrGetRev(ctx, key, value)
	return created, existing, err
}

// CreateOrGetRev is CreateOrGet that also returns the revision of the datastore the
// transaction saw: the value returned (written or found) is current at rev.
func (s *Store) CreateOrGetRev(ctx context.Context, key string, value []byte) (created bool, existing []byte, rev int64, err error) {
	err = s.do(ctx, "create", key, true, func(ctx context.Context, again bool) (err error) {
		created, existing, rev, err = s.createOrGetAttempt(ctx, key, value, again)
		return err
	})
	if err != nil {
		return false, nil, 0, wrap("create", key, err)
	}
	return created, existing, rev, nil
}

// createOrGetAttempt is one attempt of CreateOrGet. After an ambiguous attempt (again),
// a key that holds value was created by that attempt.
func (s *Store) createOrGetAttempt(ctx context.Context, key string, value []byte, again bool) (bool, []byte, int64, error) {
	resp, err := s.client().Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(value))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return false, nil, 0, err
	}
	rev := resp.Header.Revision
	if resp.Succeeded {
		return true, nil, rev, nil
	}
	kv := rangeKV(resp, 0)
	if kv == nil {
		return false, nil, 0, ErrConflict
	}
	if again && holds(kv, value) {
		return true, nil, rev, nil
	}
	return false, kv.Value, rev, nil
}

// Side is what an UpdateWith or a ReplaceWith writes besides its key, in the same
// transaction and only when its compare holds: the keys of Delete are deleted (a key
// that does not exist is no error), then every Put is written. No key may appear
// twice in one transaction.
type Side struct {
	Delete []string
	Put    []KV
}

// ops are the operations of side.
func (side Side) ops() []clientv3.Op {
	var out []clientv3.Op
	for _, k := range side.Delete {
		out = append(out, clientv3.OpDelete(k))
	}
	for _, kv := range side.Put {
		out = append(out, clientv3.OpPut(kv.Key, string(kv.Value)))
	}
	return out
}

// Update replaces key's value if its modification revision is still rev (ErrConflict
// otherwise) and returns the new revision.
func (s *Store) Update(ctx context.Context, key string, value []byte, rev int64) (int64, error) {
	return s.UpdateWith(ctx, key, value, rev, Side{})
}

// UpdateWith is Update that also writes side in the same transaction.
func (s *Store) UpdateWith(ctx context.Context, key string, value []byte, rev int64, side Side) (int64, error) {
	var newRev int64
	err := s.do(ctx, "update", key, true, func(ctx context.Context, again bool) (err error) {
		newRev, err = s.updateAttempt(ctx, key, value, rev, side, again)
		return err
	})
	if err != nil {
		return 0, wrap("update", key, err)
	}
	return newRev, nil
}

// updateAttempt is one attempt of UpdateWith. After an ambiguous attempt (again), a key
// that moved on from rev and holds value was written by that attempt (and side with it).
// Values kpki updates are encrypted with a fresh salt, so no other writer stores the
// same bytes.
func (s *Store) updateAttempt(ctx context.Context, key string, value []byte, rev int64, side Side, again bool) (int64, error) {
	resp, err := s.client().Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(append([]clientv3.Op{clientv3.OpPut(key, string(value))}, side.ops()...)...).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return 0, err
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	if kv := rangeKV(resp, 0); again && holds(kv, value) {
		return kv.ModRevision, nil
	}
	return 0, ErrConflict
}

// Replace atomically deletes oldKey (which must still be at rev) and creates newKey,
// returning the new revision.
func (s *Store) Replace(ctx context.Context, oldKey string, rev int64, newKey string, value []byte) (int64, error) {
	return s.ReplaceWith(ctx, oldKey, rev, newKey, value, Side{})
}

// ReplaceWith is Replace that also writes side in the same transaction.
func (s *Store) ReplaceWith(ctx context.Context, oldKey string, rev int64, newKey string, value []byte, side Side) (int64, error) {
	var newRev int64
	err := s.do(ctx, "replace", oldKey, true, func(ctx context.Context, again bool) (err error) {
		newRev, err = s.replaceAttempt(ctx, oldKey, rev, newKey, value, side, again)
		return err
	})
	if err != nil {
		return 0, wrap("replace", oldKey, err)
	}
	return newRev, nil
}

// replaceAttempt is one attempt of ReplaceWith. After an ambiguous attempt (again),
// oldKey gone and newKey holding value mean that attempt was applied.
func (s *Store) replaceAttempt(ctx context.Context, oldKey string, rev int64, newKey string, value []byte, side Side, again bool) (int64, error) {
	resp, err := s.client().Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(oldKey), "=", rev), clientv3.Compare(clientv3.CreateRevision(newKey), "=", 0)).
		Then(append([]clientv3.Op{clientv3.OpDelete(oldKey), clientv3.OpPut(newKey, string(value))}, side.ops()...)...).
		Else(clientv3.OpGet(newKey), clientv3.OpGet(oldKey)).
		Commit()
	if err != nil {
		return 0, err
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	if kv := rangeKV(resp, 0); again && holds(kv, value) && rangeKV(resp, 1) == nil {
		return kv.ModRevision, nil
	}
	return 0, ErrConflict
}

// Put writes key unconditionally. An unconditional write that timed out may still be
// applied later, over a newer value, so Put repeats only a request the member refused
// unprocessed for want of a leader.
func (s *Store) Put(ctx context.Context, key string, value []byte) error {
	return wrap("put", key, s.do(ctx, "put", key, false, func(ctx context.Context, _ bool) error {
		_, err := s.client().Put(ctx, key, string(value))
		return err
	}))
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
	wc := s.client().Watch(clientv3.WithRequireLeader(ctx), prefix, opts...)
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

// Healthy checks that the datastore answers a read within timeout. It makes one
// attempt: a member without a leader fails it at once with ErrNoQuorum.
func (s *Store) Healthy(ctx context.Context, timeout time.Duration) error {
	cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), timeout)
	defer cancel()
	_, err := s.client().Get(cctx, "/kpki-health")
	if errors.Is(err, rpctypes.ErrNoLeader) {
		return fmt.Errorf("%w: the etcd member has no leader", ErrNoQuorum)
	}
	return err
}
