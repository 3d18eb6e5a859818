package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datastore"
)

// joinCluster is a new server's first start with --server: take the cluster's bootstrap
// data from that server (over TLS verified against the CA the token's hash names, alone),
// issue this node's own leaves, add this node to the etcd cluster and start its member.
func (s *Server) joinCluster(ctx context.Context) error {
	// First contact: /cacerts unverified, pinned with the token; then only TLS verified
	// against the anchor the token names, before the token's password is sent.
	tr, err := api.FetchPinnedCA(ctx, s.cfg.ServerURL, s.tok, api.FetchOptions{Clock: s.clock})
	if err != nil {
		return err
	}
	if !tr.Pinned {
		s.log.Warn("the token holds no CA hash, so the server's CA is not pinned; use the full K10 token from the first server's token file")
	}
	c, err := api.NewClient(s.cfg.ServerURL, tr, "server", s.tok.Password)
	if err != nil {
		return err
	}
	defer c.Close()
	var raw json.RawMessage
	if err := c.Do(ctx, http.MethodGet, api.PathServerBootstrap, nil, nil, &raw); err != nil {
		return fmt.Errorf("fetch bootstrap data from %s: %w", s.cfg.ServerURL, err)
	}
	rec, err := bootstrap.ParseRecord(raw)
	if err != nil {
		return fmt.Errorf("bootstrap data from %s: %w", s.cfg.ServerURL, err)
	}
	var members []EtcdMember
	if err := c.Do(ctx, http.MethodGet, api.PathEtcdMembers, nil, nil, &members); err != nil {
		return fmt.Errorf("list etcd members at %s: %w", s.cfg.ServerURL, err)
	}
	peerURL := s.etcdConfig().PeerURL()
	for _, m := range members {
		if m.Name == s.r.nodeName && !contains(m.PeerURLs, peerURL) {
			return fmt.Errorf("node name %s is already used by etcd member %s; give this server another --node-name", s.r.nodeName, strings.Join(m.PeerURLs, ","))
		}
	}
	if _, err := s.applyRecord(rec); err != nil {
		return err
	}
	if err := s.buildPKI("join"); err != nil {
		return err
	}
	var endpoints []string
	for _, m := range members {
		endpoints = append(endpoints, m.ClientURLs...)
	}
	if len(endpoints) == 0 {
		return fmt.Errorf("%s reported no etcd members", s.cfg.ServerURL)
	}
	initial, err := s.addEtcdMember(ctx, endpoints)
	if err != nil {
		return err
	}
	return s.startEtcdMember(ctx, true, initial)
}

// addEtcdMember registers this node's peer URL with the cluster and returns the
// initial-cluster string the new member starts with.
func (s *Server) addEtcdMember(ctx context.Context, endpoints []string) (string, error) {
	ccrt, ckey := s.leafPaths(certs.ServerNode, "etcd/client")
	st, err := datastore.Connect(ctx, endpoints, datastore.ClientTLS{
		CAFile: s.layout.TLS(certs.CA(certs.ETCDServerCA).CertFile), CertFile: ccrt, KeyFile: ckey,
	}, 15*time.Second)
	if err != nil {
		return "", err
	}
	defer st.Close()
	cli := st.Client()
	peerURL := s.etcdConfig().PeerURL()
	list, err := cli.MemberList(ctx)
	if err != nil {
		return "", fmt.Errorf("etcd member list: %w", err)
	}
	for _, m := range list.Members {
		for _, u := range m.PeerURLs {
			if u == peerURL {
				// A member left by an earlier attempt whose data is gone: replace it.
				s.log.Warn("removing a stale etcd member with this node's peer URL", "member", m.Name, "peer-url", peerURL)
				if _, err := cli.MemberRemove(ctx, m.ID); err != nil {
					return "", fmt.Errorf("remove stale etcd member %s: %w", peerURL, err)
				}
			}
		}
	}
	// etcd refuses a new member while a recently started one is not yet counted as
	// healthy; that passes within seconds, so retry for a while.
	deadline := time.Now().Add(90 * time.Second)
	var resp *clientv3.MemberAddResponse
	for {
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		resp, err = cli.MemberAdd(cctx, []string{peerURL})
		cancel()
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "unhealthy cluster") || time.Now().After(deadline) {
			return "", fmt.Errorf("add etcd member %s: %w", peerURL, err)
		}
		s.log.Info("etcd cluster not ready for a new member yet; retrying", "error", err)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	s.log.Info("added this server to the etcd cluster", "peer-url", peerURL, "members", len(resp.Members))
	return initialCluster(resp.Members, resp.Member.ID, s.r.nodeName), nil
}

func initialCluster(members []*etcdMember, self uint64, selfName string) string {
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

type etcdMember = etcdserverpb.Member

// hasEtcdMember reports whether this node already holds etcd member data.
func (s *Server) hasEtcdMember() bool {
	_, err := os.Stat(filepath.Join(s.layout.EtcdDir(), "member"))
	return err == nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
