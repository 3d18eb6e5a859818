package datastore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3"
	"go.uber.org/zap"
)

// DiscardUnbootstrapped removes the member data in dataDir when its write-ahead log holds no
// entry and no raft state: the process that created it died before the member's first raft
// write, so it never knew its own cluster membership and can never elect a leader (etcd waits
// forever to publish itself). Such a member can hold no data: nothing can be committed
// without a leader. It reports whether it removed anything. A member with any entry, or whose
// log cannot be read, is left alone.
func DiscardUnbootstrapped(dataDir string) (bool, error) {
	walDir := filepath.Join(dataDir, "member", "wal")
	if _, err := os.Stat(walDir); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if !wal.Exist(walDir) {
		return false, nil
	}
	w, err := wal.OpenForRead(zap.NewNop(), walDir, &walpb.Snapshot{})
	if err != nil {
		return false, nil
	}
	_, st, ents, err := w.ReadAll()
	w.Close()
	if err != nil || len(ents) > 0 || (st != nil && !raft.IsEmptyHardState(st)) {
		return false, nil
	}
	if err := os.RemoveAll(dataDir); err != nil {
		return false, fmt.Errorf("remove the never-started etcd member in %s: %w", dataDir, err)
	}
	return true, nil
}
