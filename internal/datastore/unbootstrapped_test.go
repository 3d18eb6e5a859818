package datastore

import (
	"os"
	"path/filepath"
	"testing"

	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.uber.org/zap"
)

// TestDiscardUnbootstrapped removes a member whose log is empty (its first start died before
// the first raft write) and keeps one that started, and a dir without member data.
func TestDiscardUnbootstrapped(t *testing.T) {
	t.Run("empty log", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "etcd")
		w, err := wal.Create(zap.NewNop(), filepath.Join(dir, "member", "wal"), nil)
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
		if err := os.MkdirAll(filepath.Join(dir, "member", "snap"), 0o700); err != nil {
			t.Fatal(err)
		}
		gone, err := DiscardUnbootstrapped(dir)
		if err != nil || !gone {
			t.Fatalf("DiscardUnbootstrapped = %v, %v; want true, nil", gone, err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s still exists: %v", dir, err)
		}
	})
	t.Run("started member", func(t *testing.T) {
		e, cfg, _ := startEtcd(t)
		e.Close()
		gone, err := DiscardUnbootstrapped(cfg.DataDir)
		if err != nil || gone {
			t.Fatalf("DiscardUnbootstrapped = %v, %v; want false, nil", gone, err)
		}
		if !wal.Exist(filepath.Join(cfg.DataDir, "member", "wal")) {
			t.Errorf("the member's log was removed")
		}
	})
	t.Run("no member", func(t *testing.T) {
		dir := t.TempDir()
		gone, err := DiscardUnbootstrapped(filepath.Join(dir, "etcd"))
		if err != nil || gone {
			t.Fatalf("DiscardUnbootstrapped = %v, %v; want false, nil", gone, err)
		}
	})
}
