package membership

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kpki/kpki/internal/clock"
)

// fakeCluster answers MemberAdd with the errors of addErrs, one a call, then success.
type fakeCluster struct {
	members []*etcdserverpb.Member
	addErrs []error
	adds    int
	removed []uint64
}

func (f *fakeCluster) MemberList(context.Context, ...clientv3.OpOption) (*clientv3.MemberListResponse, error) {
	return &clientv3.MemberListResponse{Members: f.members}, nil
}

func (f *fakeCluster) MemberRemove(_ context.Context, id uint64) (*clientv3.MemberRemoveResponse, error) {
	f.removed = append(f.removed, id)
	return &clientv3.MemberRemoveResponse{}, nil
}

func (f *fakeCluster) MemberAdd(_ context.Context, peers []string) (*clientv3.MemberAddResponse, error) {
	f.adds++
	if len(f.addErrs) > 0 {
		err := f.addErrs[0]
		f.addErrs = f.addErrs[1:]
		return nil, err
	}
	self := &etcdserverpb.Member{ID: 99, PeerURLs: peers}
	var all []*etcdserverpb.Member
	for _, m := range f.members {
		if !containsID(f.removed, m.ID) {
			all = append(all, m)
		}
	}
	return &clientv3.MemberAddResponse{Member: self, Members: append(all, self)}, nil
}

func containsID(ids []uint64, id uint64) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestUnhealthyIsMatchedByCodeNotText(t *testing.T) {
	for name, c := range map[string]struct {
		err  error
		want bool
	}{
		"client error":                   {rpctypes.ErrUnhealthy, true},
		"gRPC status":                    {rpctypes.ErrGRPCUnhealthy, true},
		"no leader":                      {rpctypes.ErrNoLeader, false},
		"a text that reads like it":      {errors.New("etcdserver: unhealthy cluster"), false},
		"unavailable with another cause": {status.Error(codes.Unavailable, "connection refused"), false},
		"nil":                            {nil, false},
	} {
		if got := Unhealthy(c.err); got != c.want {
			t.Errorf("%s: Unhealthy = %v, want %v", name, got, c.want)
		}
	}
}

func TestAddRetriesAnUnhealthyClusterOnTheInjectedClock(t *testing.T) {
	fc := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	c := &fakeCluster{
		members: []*etcdserverpb.Member{{ID: 1, Name: "a", PeerURLs: []string{"https://10.0.0.1:2380"}}, {ID: 2, Name: "", PeerURLs: []string{"https://10.0.0.9:2380"}}},
		addErrs: []error{rpctypes.ErrUnhealthy, rpctypes.ErrGRPCUnhealthy},
	}
	a := Adder{Cluster: c, Log: quiet(), Clock: fc, Name: "b", PeerURL: "https://10.0.0.2:2380"}
	done := make(chan struct{})
	var initial string
	var err error
	go func() { initial, err = a.Add(context.Background()); close(done) }()
	advanceUntil(t, fc, done)
	if err != nil {
		t.Fatal(err)
	}
	if c.adds != 3 {
		t.Errorf("%d MemberAdd calls, want 3", c.adds)
	}
	if want := "a=https://10.0.0.1:2380,b=https://10.0.0.2:2380"; initial != want {
		t.Errorf("initial cluster %q, want %q", initial, want)
	}
}

func TestAddGivesUpOnOtherErrorsAndAfterThePatience(t *testing.T) {
	fc := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	c := &fakeCluster{addErrs: []error{rpctypes.ErrPeerURLExist}}
	a := Adder{Cluster: c, Log: quiet(), Clock: fc, Name: "b", PeerURL: "https://10.0.0.2:2380"}
	if _, err := a.Add(context.Background()); !errors.Is(err, rpctypes.ErrPeerURLExist) || c.adds != 1 {
		t.Errorf("Add = %v after %d calls, want the peer-URL error at once", err, c.adds)
	}
	c = &fakeCluster{addErrs: []error{rpctypes.ErrUnhealthy, rpctypes.ErrUnhealthy, rpctypes.ErrUnhealthy, rpctypes.ErrUnhealthy}}
	var err error
	a = Adder{Cluster: c, Log: quiet(), Clock: fc, Name: "b", PeerURL: "https://10.0.0.2:2380", Patience: 3 * time.Second}
	done := make(chan struct{})
	go func() { _, err = a.Add(context.Background()); close(done) }()
	advanceUntil(t, fc, done)
	// Attempts at 0 s, 2 s and 4 s: the third is past the 3 s patience.
	if !Unhealthy(errors.Unwrap(err)) || !strings.Contains(err.Error(), "add etcd member https://10.0.0.2:2380") || c.adds != 3 {
		t.Errorf("Add = %v after %d calls, want the unhealthy error once the patience is spent", err, c.adds)
	}
}

func TestAddReplacesAStaleMemberWithItsPeerURL(t *testing.T) {
	c := &fakeCluster{members: []*etcdserverpb.Member{{ID: 1, Name: "a", PeerURLs: []string{"https://10.0.0.1:2380"}}, {ID: 7, Name: "b", PeerURLs: []string{"https://10.0.0.2:2380"}}}}
	a := Adder{Cluster: c, Log: quiet(), Clock: clock.NewFake(time.Now()), Name: "b", PeerURL: "https://10.0.0.2:2380"}
	initial, err := a.Add(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(c.removed) != 1 || c.removed[0] != 7 {
		t.Errorf("removed %v, want the stale member 7", c.removed)
	}
	if want := "a=https://10.0.0.1:2380,b=https://10.0.0.2:2380"; initial != want {
		t.Errorf("initial cluster %q, want %q", initial, want)
	}
}

func TestCheckNameAndClientURLs(t *testing.T) {
	members := []Member{{Name: "a", PeerURLs: []string{"https://10.0.0.1:2380"}, ClientURLs: []string{"https://10.0.0.1:2379"}},
		{Name: "b", PeerURLs: []string{"https://10.0.0.2:2380"}, ClientURLs: []string{"https://10.0.0.2:2379"}}}
	if err := CheckName(members, "a", "https://10.0.0.3:2380"); err == nil || !strings.Contains(err.Error(), "node name a is already used by etcd member https://10.0.0.1:2380") {
		t.Errorf("CheckName of a taken name: %v", err)
	}
	if err := CheckName(members, "b", "https://10.0.0.2:2380"); err != nil {
		t.Errorf("CheckName of this node's own member: %v", err)
	}
	if err := CheckName(members, "c", "https://10.0.0.3:2380"); err != nil {
		t.Errorf("CheckName of a new name: %v", err)
	}
	if got := strings.Join(ClientURLs(members), ","); got != "https://10.0.0.1:2379,https://10.0.0.2:2379" {
		t.Errorf("ClientURLs = %s", got)
	}
}

// advanceUntil moves the fake clock 2 s whenever Add waits on it, until done.
func advanceUntil(t *testing.T, fc *clock.Fake, done <-chan struct{}) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			return
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("Add did not return within 10s")
		}
		if fc.Tickers() > 0 {
			fc.Advance(2 * time.Second)
		}
		time.Sleep(time.Millisecond)
	}
}
