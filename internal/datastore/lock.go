package datastore

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kpki/kpki/internal/clock"
)

// LockPrefix holds kpki's lease-backed locks.
const LockPrefix = "/kpki/locks/"

// ErrLockTimeout is Lock's answer when another holder kept the lock past the wait.
var ErrLockTimeout = errors.New("lock still held by another server")

// Lock is a held lock: a key under LockPrefix bound to a lease. The lease is not kept
// alive: the lock ends by Unlock, or when the lease runs out (a holder that died, or
// one whose datastore was down for longer than the TTL).
type Lock struct {
	s     *Store
	Key   string
	lease clientv3.LeaseID
}

// Lock takes the lock name for owner with a lease of ttl, waiting while another owner
// holds it: it polls every poll (on clk) for at most wait, then answers ErrLockTimeout
// naming the holder.
func (s *Store) Lock(ctx context.Context, name, owner string, ttl, wait, poll time.Duration, clk clock.Clock) (*Lock, error) {
	key := LockPrefix + name
	deadline := clk.Now().Add(wait)
	for {
		held, holder, err := s.tryLock(ctx, key, owner, ttl)
		if err != nil {
			return nil, err
		}
		if held != nil {
			return held, nil
		}
		if !clk.Now().Before(deadline) {
			return nil, fmt.Errorf("%w: %s holds %s", ErrLockTimeout, holder, key)
		}
		if err := clock.Sleep(ctx, clk, poll); err != nil {
			return nil, err
		}
	}
}

// tryLock makes one attempt: the held lock, or the current holder.
func (s *Store) tryLock(ctx context.Context, key, owner string, ttl time.Duration) (*Lock, string, error) {
	cli := s.client()
	lease, err := cli.Grant(ctx, int64(ttl/time.Second))
	if err != nil {
		return nil, "", wrap("lease", key, err)
	}
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, owner, clientv3.WithLease(lease.ID))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err == nil && resp.Succeeded {
		return &Lock{s: s, Key: key, lease: lease.ID}, "", nil
	}
	_, _ = cli.Revoke(context.WithoutCancel(ctx), lease.ID)
	if err != nil {
		return nil, "", wrap("lock", key, err)
	}
	holder := "another server"
	if kv := rangeKV(resp, 0); kv != nil {
		holder = string(kv.Value)
	}
	return nil, holder, nil
}

// Unlock releases the lock (revokes its lease), through the Store's current client.
func (l *Lock) Unlock(ctx context.Context) error {
	_, err := l.s.client().Revoke(ctx, l.lease)
	return wrap("unlock", l.Key, err)
}

// Holder returns the owner of the lock name, "" when nobody holds it.
func (s *Store) Holder(ctx context.Context, name string) (string, error) {
	v, _, err := s.Get(ctx, LockPrefix+name)
	if errors.Is(err, ErrNotFound) {
		return "", nil
	}
	return string(v), err
}
