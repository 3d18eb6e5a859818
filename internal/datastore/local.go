package datastore

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.uber.org/zap"
)

// ErrNoLocalData is returned by StartLocal when the data dir holds no member to read.
var ErrNoLocalData = errors.New("the etcd data dir holds no member data")

// Local is an existing embedded member started to read its own copy of the data. It has
// no client, peer or metrics listener, so nothing outside this process reaches it and it
// needs no certificate file, and its reads are serializable: answered from this member's
// data without asking the other members, which a member of a multi-member cluster can do
// without quorum. Its Store is for reading.
type Local struct {
	*Store
	etcd *embed.Etcd
	// Members is the number of cluster members this member knows of.
	Members int
}

// StartLocal starts the member found in c.DataDir with no listeners and returns once it has
// applied every entry its log had committed when it stopped, so that reads see everything it
// had stored. It returns ErrNoLocalData when the data dir holds no member log.
func StartLocal(ctx context.Context, c EmbeddedConfig) (*Local, error) {
	walDir := filepath.Join(c.DataDir, "member", "wal")
	if !wal.Exist(walDir) {
		return nil, ErrNoLocalData
	}
	if err := CheckDatabase(c.DataDir); err != nil {
		return nil, err
	}
	commit, snapIndex, err := walProgress(walDir)
	if err != nil {
		return nil, fmt.Errorf("etcd log %s: %w", walDir, err)
	}
	// The member keeps its identity (advertised URLs, as published to the cluster) but
	// listens nowhere and uses no TLS file: a missing etcd CA or certificate does not stop it.
	c.ServerCert, c.ServerKey, c.ServerCA, c.PeerCert, c.PeerKey, c.PeerCA = "", "", "", "", "", ""
	cfg, err := c.embedConfig()
	if err != nil {
		return nil, err
	}
	cfg.ListenClientUrls = []url.URL{}
	cfg.ListenPeerUrls = []url.URL{}
	cfg.ListenClientHttpUrls = nil
	cfg.ClusterState = embed.ClusterStateFlagExisting
	cfg.ClientTLSInfo.ClientCertAuth, cfg.PeerTLSInfo.ClientCertAuth = false, false
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd for local reading (data %s): %w", c.DataDir, err)
	}
	timeout := c.StartTimeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	members := len(e.Server.Cluster().Members())
	for !caughtUp(e, members, commit, snapIndex) {
		select {
		case <-tick.C:
		case err := <-e.Err():
			e.Close()
			return nil, fmt.Errorf("embedded etcd failed (log %s): %w", c.LogFile, err)
		case <-deadline.C:
			e.Close()
			return nil, fmt.Errorf("embedded etcd did not apply its log (index %d of %d) within %s (log %s)", e.Server.AppliedIndex(), commit, timeout, c.LogFile)
		case <-ctx.Done():
			e.Close()
			return nil, ctx.Err()
		}
	}
	cli := v3client.New(e.Server)
	cli.KV = serializableKV{cli.KV}
	return &Local{
		Store:   newStore(cli, []string{"local member " + c.DataDir}),
		etcd:    e,
		Members: members,
	}, nil
}

// Close stops the member; its data dir can then be used by StartEmbedded.
func (l *Local) Close() {
	// The in-process client holds no connection; closing it only cancels its context.
	_ = l.client().Close()
	l.etcd.Close()
}

// caughtUp reports whether the member's data holds everything it had stored. The commit
// index a log records can lag behind entries that were committed and acknowledged (it is
// saved with the next entry): a single member is its own quorum and commits them again
// once it has elected itself, which it has when it is ready (it then has also applied its
// own first entry, after all others). A member of a multi-member cluster cannot get a
// quorum without listeners; it has applied what its log records as committed.
func caughtUp(e *embed.Etcd, members int, commit, snapIndex uint64) bool {
	if members == 1 {
		select {
		case <-e.Server.ReadyNotify():
			return true
		default:
			return false
		}
	}
	// Entries up to the newest snapshot are in the database already; the ones after it, up
	// to the commit index, are applied again when the member starts.
	return commit <= snapIndex || e.Server.AppliedIndex() >= commit
}

// walProgress returns the commit index the member's log records and the index of the
// newest snapshot in it.
func walProgress(walDir string) (commit, snapIndex uint64, err error) {
	lg := zap.NewNop()
	snaps, err := wal.ValidSnapshotEntries(lg, walDir)
	if err != nil {
		return 0, 0, err
	}
	if len(snaps) == 0 {
		return 0, 0, errors.New("no snapshot entry")
	}
	last := snaps[len(snaps)-1]
	st, err := wal.Verify(lg, walDir, last)
	if err != nil {
		return 0, 0, err
	}
	return st.GetCommit(), last.GetIndex(), nil
}

// serializableKV makes every read a serializable one and refuses writes.
type serializableKV struct{ clientv3.KV }

var errReadOnly = errors.New("the local etcd member is read-only")

func (kv serializableKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	return kv.KV.Get(ctx, key, append(opts, clientv3.WithSerializable())...)
}

func (kv serializableKV) Put(context.Context, string, string, ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	return nil, errReadOnly
}

func (kv serializableKV) Delete(context.Context, string, ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	return nil, errReadOnly
}

func (kv serializableKV) Txn(context.Context) clientv3.Txn { return readOnlyTxn{} }

func (kv serializableKV) Do(context.Context, clientv3.Op) (clientv3.OpResponse, error) {
	return clientv3.OpResponse{}, errReadOnly
}

// readOnlyTxn is a transaction whose commit always fails.
type readOnlyTxn struct{}

func (t readOnlyTxn) If(...clientv3.Cmp) clientv3.Txn      { return t }
func (t readOnlyTxn) Then(...clientv3.Op) clientv3.Txn     { return t }
func (t readOnlyTxn) Else(...clientv3.Op) clientv3.Txn     { return t }
func (readOnlyTxn) Commit() (*clientv3.TxnResponse, error) { return nil, errReadOnly }
