package nodeauth

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datastore/memstore"
	"github.com/kpki/kpki/internal/nodeclaim"
)

type auditSink struct{ entries []audit.Entry }

func (a *auditSink) write(e audit.Entry) { a.entries = append(a.entries, e) }

func (a *auditSink) actions() []string {
	var out []string
	for _, e := range a.entries {
		out = append(out, e.Action+"/"+e.Actor)
	}
	return out
}

func newRegistry(st *memstore.Store, sink *auditSink) *Registry {
	return &Registry{
		Store: st,
		Self:  nodeclaim.Server{NodeName: "srv-1", AdvertiseAddress: "10.0.0.1", NodeIPs: []string{"10.0.0.1", "::ffff:10.0.0.2"}, TLSSANs: []string{"api.test", "10.0.0.3"}},
		Log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Clock: clock.NewFake(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)),
		Audit: sink.write,
	}
}

func TestCheckNodePasswordBindsFirstPassword(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	g := newRegistry(st, &auditSink{})
	ok, err := g.CheckNodePassword(ctx, "worker", "pw-1")
	if err != nil || !ok {
		t.Fatalf("first use = %v, %v", ok, err)
	}
	stored, _ := st.Value(NodePasswordPrefix + "worker")
	if strings.Contains(string(stored), "pw-1") || !strings.Contains(string(stored), ":") {
		t.Errorf("stored record %q: want salt:hash, never the password", stored)
	}
	for pw, want := range map[string]bool{"pw-1": true, "pw-2": false, "": false, "pw-": false} {
		if ok, err := g.CheckNodePassword(ctx, "worker", pw); err != nil || ok != want {
			t.Errorf("CheckNodePassword(%q) = %v, %v; want %v", pw, ok, err, want)
		}
	}
	if after, _ := st.Value(NodePasswordPrefix + "worker"); string(after) != string(stored) {
		t.Error("a later check replaced the record")
	}
	if err := st.Put(ctx, NodePasswordPrefix+"broken", []byte("nocolon")); err != nil {
		t.Fatal(err)
	}
	if _, err := g.CheckNodePassword(ctx, "broken", "x"); err == nil || !strings.Contains(err.Error(), "malformed") {
		t.Errorf("malformed record: %v", err)
	}
}

func TestRegisterServerClosesItsNameAndReportsSquatters(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	sink := &auditSink{}
	g := newRegistry(st, sink)
	if err := st.Put(ctx, NodePasswordPrefix+"srv-1", []byte("00:agenthash")); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, NodeIPPrefix+"10.0.0.2", []byte("squatter")); err != nil {
		t.Fatal(err)
	}
	if err := g.RegisterServer(ctx); err != nil {
		t.Fatal(err)
	}
	raw, ok := st.Value(ServersPrefix + "srv-1")
	var rec nodeclaim.Server
	if !ok || json.Unmarshal(raw, &rec) != nil || rec.NodeName != "srv-1" || !slices.Equal(rec.TLSSANs, g.Self.TLSSANs) {
		t.Errorf("server record %s", raw)
	}
	if v, _ := st.Value(NodePasswordPrefix + "srv-1"); string(v) != ServerNodeMarker {
		t.Errorf("node-password record of the server's name = %q", v)
	}
	want := []string{"server-node-name-taken-back/srv-1", "server-ip-claimed-by-agent/squatter"}
	if got := sink.actions(); !slices.Equal(got, want) {
		t.Errorf("audit %v, want %v", got, want)
	}
	for _, e := range sink.entries {
		if !e.Time.Equal(g.Clock.Now()) {
			t.Errorf("audit time %s, want the injected clock's", e.Time)
		}
	}
	for _, pw := range []string{"", ServerNodeMarker, "00:agenthash"} {
		if ok, err := g.CheckNodePassword(ctx, "srv-1", pw); ok || !errors.Is(err, ErrServerNodeName) {
			t.Errorf("node password %q for the server's name: %v %v", pw, ok, err)
		}
	}
	// A restart registers again: the name is the server's already, nothing is audited.
	sink.entries = nil
	if err := st.Put(ctx, NodeIPPrefix+"10.0.0.2", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := g.RegisterServer(ctx); err != nil {
		t.Fatal(err)
	}
	if got := sink.actions(); !slices.Equal(got, []string{"server-ip-claimed-by-agent/x"}) {
		t.Errorf("audit of a restart %v, want only the address still claimed", got)
	}
}

func TestOwnedIPs(t *testing.T) {
	got := ownedIPs(nodeclaim.Server{AdvertiseAddress: "10.0.0.1", NodeIPs: []string{"::ffff:10.0.0.1", "fd00::1"}, TLSSANs: []string{"name", " 10.0.0.9 "}})
	if want := []string{"10.0.0.1", "fd00::1", "10.0.0.9"}; !slices.Equal(got, want) {
		t.Errorf("ownedIPs = %v, want %v", got, want)
	}
}

func TestClusterServersCacheFollowsTheWatch(t *testing.T) {
	st := memstore.New()
	g := newRegistry(st, &auditSink{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	other, _ := json.Marshal(nodeclaim.Server{NodeName: "srv-2", AdvertiseAddress: "10.0.1.1"})
	if err := st.Put(ctx, ServersPrefix+"srv-2", other); err != nil {
		t.Fatal(err)
	}
	names := func() []string {
		t.Helper()
		list, err := g.ClusterServers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, s := range list {
			out = append(out, s.NodeName)
		}
		return out
	}
	// Without a watch every call reads the datastore.
	lists := st.Calls("list")
	names()
	names()
	if got := st.Calls("list") - lists; got != 2 {
		t.Errorf("%d reads for two calls without a watch, want 2", got)
	}
	done := make(chan struct{})
	go func() { g.WatchServers(ctx); close(done) }()
	waitFor(t, func() bool { return g.Watching() && st.Watchers() > 0 })
	names() // fills the cache
	lists = st.Calls("list")
	if got := names(); !slices.Equal(got, []string{"srv-1", "srv-2"}) {
		t.Fatalf("servers %v", got)
	}
	if st.Calls("list") != lists {
		t.Error("a cached call read the datastore")
	}
	third, _ := json.Marshal(nodeclaim.Server{NodeName: "srv-3"})
	if err := st.Put(ctx, ServersPrefix+"srv-3", third); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(names()) == 3 })
	if err := st.Put(ctx, ServersPrefix+"bad", []byte("{")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, err := g.ClusterServers(ctx); return err != nil })
	if _, err := g.ClusterServers(ctx); err == nil || !strings.Contains(err.Error(), ServersPrefix+"bad") {
		t.Errorf("a malformed record: %v", err)
	}
	cancel()
	<-done
	if g.Watching() {
		t.Error("the cache is still marked as watched after the watch ended")
	}
}

func TestRecordIPClaims(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	sink := &auditSink{}
	g := newRegistry(st, sink)
	ip := []net.IP{net.ParseIP("::ffff:10.0.0.5"), net.ParseIP("10.0.0.5")}
	for range 2 {
		if err := g.RecordIPClaims(ctx, "w1", ip, "r"); err != nil {
			t.Fatal(err)
		}
	}
	if v, _ := st.Value(NodeIPPrefix + "10.0.0.5"); string(v) != "w1" {
		t.Fatalf("index = %q", v)
	}
	if len(sink.entries) != 0 {
		t.Errorf("audit %v before another node claimed the IP", sink.actions())
	}
	if err := g.RecordIPClaims(ctx, "w2", ip[:1], "r"); err != nil {
		t.Fatal(err)
	}
	if v, _ := st.Value(NodeIPPrefix + "10.0.0.5"); string(v) != "w2" {
		t.Errorf("index = %q after w2", v)
	}
	if got := sink.actions(); !slices.Equal(got, []string{"node-ip-reclaimed/w2"}) || !strings.Contains(sink.entries[0].Detail, "by node w1") {
		t.Errorf("audit %v", sink.entries)
	}
	st.Hook("update", func(context.Context, string) error { return errors.New("etcd down") })
	if err := g.RecordIPClaims(ctx, "w3", ip[:1], "r"); err == nil || !strings.Contains(err.Error(), "etcd down") {
		t.Errorf("a failing datastore: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
