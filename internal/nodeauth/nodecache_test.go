package nodeauth

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/datastore/memstore"
)

func TestNodeCacheRules(t *testing.T) {
	var c nodeCache
	rec := "00ff:" + nodeHash([]byte{0, 0xff}, "pw")
	c.put("n", rec, 10)
	if hit, _ := c.check("n", "pw"); hit {
		t.Fatal("cached while no watch runs")
	}
	c.reset(true, 20)
	c.put("n", rec, 19)
	if hit, _ := c.check("n", "pw"); hit {
		t.Fatal("cached a record read before the watch started")
	}
	c.put("n", rec, 20)
	if hit, _ := c.check("n", "pw"); !hit {
		t.Fatal("record read at the watch's start not cached")
	}
	if hit, _ := c.check("n", "other"); hit {
		t.Fatal("a mismatch was answered from the cache")
	}
	c.changed("n", 20) // the watch reports the write that was cached
	if hit, _ := c.check("n", "pw"); !hit {
		t.Fatal("the event of the cached write itself dropped it")
	}
	c.changed("n", 25)
	if hit, _ := c.check("n", "pw"); hit {
		t.Fatal("a later change did not drop the record")
	}
	c.put("n", rec, 24) // a read that raced with the change at 25
	if hit, _ := c.check("n", "pw"); hit {
		t.Fatal("a record older than a seen change was cached")
	}
	c.put("n", ServerNodeMarker, 26)
	if hit, server := c.check("n", "pw"); !hit || !server {
		t.Fatal("the server marker is not answered as a server's name")
	}
	c.put("bad", "not-a-record", 26)
	if hit, _ := c.check("bad", "pw"); hit {
		t.Fatal("a malformed record matched")
	}
	c.reset(false, 0)
	if hit, _ := c.check("n", "pw"); hit {
		t.Fatal("the end of the watch kept the cache")
	}
}

// TestNodeCacheFollowsDatastore checks that a registered node is answered from memory,
// and that a record changed in the datastore behind this server's back (another server,
// an operator) is what decides as soon as the watch has seen it.
func TestNodeCacheFollowsDatastore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := memstore.New()
	g := newRegistry(st, &auditSink{})
	done := make(chan struct{})
	go func() { g.WatchNodes(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("after 10 s: %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("the node password watch runs", func() bool {
		g.nodes.mu.Lock()
		defer g.nodes.mu.Unlock()
		return g.nodes.watching
	})
	if ok, err := g.CheckNodePassword(ctx, "agent-1", "pw-1"); !ok || err != nil {
		t.Fatalf("first registration: %v %v", ok, err)
	}
	if hit, _ := g.nodes.check("agent-1", "pw-1"); !hit {
		t.Fatal("a registered node is not answered from memory")
	}
	creates := st.Calls("create")
	if ok, err := g.CheckNodePassword(ctx, "agent-1", "pw-1"); !ok || err != nil {
		t.Fatalf("a renewing node: %v %v", ok, err)
	}
	if n := st.Calls("create"); n != creates {
		t.Errorf("a renewing node's check reached the datastore (%d create calls, want %d)", n, creates)
	}
	if ok, err := g.CheckNodePassword(ctx, "agent-1", "pw-2"); ok || err != nil {
		t.Fatalf("another password for a registered node: %v %v", ok, err)
	}
	if n := st.Calls("create"); n != creates+1 {
		t.Errorf("a mismatch was not decided by the datastore (%d create calls, want %d)", n, creates+1)
	}

	// Another host's record replaces the node's in the datastore.
	salt := []byte{1, 2, 3, 4}
	other := "01020304:" + nodeHash(salt, "pw-other")
	if err := st.Put(ctx, NodePasswordPrefix+"agent-1", []byte(other)); err != nil {
		t.Fatal(err)
	}
	waitFor("the cache drops the replaced record", func() bool { hit, _ := g.nodes.check("agent-1", "pw-1"); return !hit })
	if ok, err := g.CheckNodePassword(ctx, "agent-1", "pw-1"); ok || err != nil {
		t.Errorf("the old password after the record was replaced: %v %v", ok, err)
	}
	if ok, err := g.CheckNodePassword(ctx, "agent-1", "pw-other"); !ok || err != nil {
		t.Errorf("the new record's password: %v %v", ok, err)
	}

	// A server takes the name.
	if err := st.Put(ctx, NodePasswordPrefix+"agent-1", []byte(ServerNodeMarker)); err != nil {
		t.Fatal(err)
	}
	waitFor("the cache drops the record a server took", func() bool { hit, _ := g.nodes.check("agent-1", "pw-other"); return !hit })
	if ok, err := g.CheckNodePassword(ctx, "agent-1", "pw-other"); ok || !errors.Is(err, ErrServerNodeName) {
		t.Errorf("a node name a server took: %v %v", ok, err)
	}
}
