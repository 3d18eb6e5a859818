package datastore

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Revision returns the datastore's current revision, from a linearizable read of a key
// kpki never writes: a watch from Revision()+1 misses no change made after the call.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	var resp *clientv3.GetResponse
	err := s.do(ctx, "get", "/kpki-revision", true, func(ctx context.Context, _ bool) (err error) {
		resp, err = s.client().Get(ctx, "/kpki-revision", clientv3.WithCountOnly())
		return err
	})
	if err != nil {
		return 0, wrap("get", "/kpki-revision", err)
	}
	return resp.Header.Revision, nil
}
