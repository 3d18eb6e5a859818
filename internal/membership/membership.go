// Package membership is etcd cluster membership for a joining server: the members the
// supervisor lists, the check that a node name is not another member's, adding this
// node's peer URL (replacing a stale member left by an earlier attempt, retrying while
// etcd still counts a just-started member as unhealthy) and the initial-cluster string
// the new member starts with.
package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kpki/kpki/internal/clock"
)

// Member is one member of the embedded etcd cluster, as GET /v1-kpki/etcd-members
// answers it.
type Member struct {
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peer_urls"`
	ClientURLs []string `json:"client_urls"`
}

// Cluster is the part of etcd's cluster API membership uses (clientv3.Cluster).
type Cluster interface {
	MemberList(ctx context.Context, opts ...clientv3.OpOption) (*clientv3.MemberListResponse, error)
	MemberAdd(ctx context.Context, peerAddrs []string) (*clientv3.MemberAddResponse, error)
	MemberRemove(ctx context.Context, id uint64) (*clientv3.MemberRemoveResponse, error)
}

// List returns the members of c.
func List(ctx context.Context, c Cluster) ([]Member, error) {
	resp, err := c.MemberList(ctx)
	if err != nil {
		return nil, err
	}
	var out []Member
	for _, m := range resp.Members {
		out = append(out, Member{Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs})
	}
	return out, nil
}

// CheckName refuses a node name that another member (one with other peer URLs) uses.
func CheckName(members []Member, name, peerURL string) error {
	for _, m := range members {
		if m.Name == name && !slices.Contains(m.PeerURLs, peerURL) {
			return fmt.Errorf("node name %s is already used by etcd member %s; give this server another --node-name", name, strings.Join(m.PeerURLs, ","))
		}
	}
	return nil
}

// ClientURLs lists the client URLs of every member.
func ClientURLs(members []Member) []string {
	var out []string
	for _, m := range members {
		out = append(out, m.ClientURLs...)
	}
	return out
}

// Unhealthy reports whether err is etcd refusing a new member because the cluster is
// not healthy yet (a member started moments ago is not counted as up).
// The client gives etcd's answer as an rpctypes.EtcdError (code and message), a
// forwarded answer may still be a gRPC status; a bare error with the same text is not
// etcd's answer.
func Unhealthy(err error) bool {
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee == rpctypes.ErrUnhealthy
	}
	if st, ok := status.FromError(err); ok && err != nil {
		return st.Code() == codes.Unavailable && st.Message() == rpctypes.ErrorDesc(rpctypes.ErrGRPCUnhealthy)
	}
	return false
}

// Adder adds one member to a cluster.
type Adder struct {
	Cluster Cluster
	Log     *slog.Logger
	Clock   clock.Clock
	// Name and PeerURL are the new member's.
	Name    string
	PeerURL string
	// Patience bounds how long an unhealthy cluster is waited for (90 s when 0), Retry
	// is the wait between attempts (2 s when 0), Attempt bounds each attempt (15 s).
	Patience, Retry, Attempt time.Duration
}

// Add removes a member already registered with the new member's peer URL (left by an
// earlier attempt whose data is gone), adds the new member, and returns the initial
// cluster it starts with.
func (a Adder) Add(ctx context.Context) (string, error) {
	patience, retry, attempt := a.Patience, a.Retry, a.Attempt
	if patience == 0 {
		patience = 90 * time.Second
	}
	if retry == 0 {
		retry = 2 * time.Second
	}
	if attempt == 0 {
		attempt = 15 * time.Second
	}
	list, err := a.Cluster.MemberList(ctx)
	if err != nil {
		return "", fmt.Errorf("etcd member list: %w", err)
	}
	for _, m := range list.Members {
		if slices.Contains(m.PeerURLs, a.PeerURL) {
			a.Log.Warn("removing a stale etcd member with this node's peer URL", "member", m.Name, "peer-url", a.PeerURL)
			if _, err := a.Cluster.MemberRemove(ctx, m.ID); err != nil {
				return "", fmt.Errorf("remove stale etcd member %s: %w", a.PeerURL, err)
			}
		}
	}
	deadline := a.Clock.Now().Add(patience)
	var resp *clientv3.MemberAddResponse
	for {
		cctx, cancel := context.WithTimeout(ctx, attempt)
		resp, err = a.Cluster.MemberAdd(cctx, []string{a.PeerURL})
		cancel()
		if err == nil {
			break
		}
		if !Unhealthy(err) || a.Clock.Now().After(deadline) {
			return "", fmt.Errorf("add etcd member %s: %w", a.PeerURL, err)
		}
		a.Log.Info("etcd cluster not ready for a new member yet; retrying", "error", err)
		if err := clock.Sleep(ctx, a.Clock, retry); err != nil {
			return "", err
		}
	}
	a.Log.Info("added this server to the etcd cluster", "peer-url", a.PeerURL, "members", len(resp.Members))
	return InitialCluster(resp.Members, resp.Member.ID, a.Name), nil
}

// InitialCluster is etcd's initial-cluster string for members: name=peer-url pairs, the
// member self (whose name is not known to the cluster yet) named selfName, members
// without a name (added, not started) left out.
func InitialCluster(members []*etcdserverpb.Member, self uint64, selfName string) string {
	var parts []string
	for _, m := range members {
		name := m.Name
		if m.ID == self {
			name = selfName
		}
		if name == "" {
			continue
		}
		for _, u := range m.PeerURLs {
			parts = append(parts, name+"="+u)
		}
	}
	return strings.Join(parts, ",")
}
