package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/bootstrap"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datastore"
	"github.com/kpki/kpki/internal/membership"
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
	var members []membership.Member
	if err := c.Do(ctx, http.MethodGet, api.PathEtcdMembers, nil, nil, &members); err != nil {
		return fmt.Errorf("list etcd members at %s: %w", s.cfg.ServerURL, err)
	}
	if err := membership.CheckName(members, s.r.nodeName, s.etcdConfig().PeerURL()); err != nil {
		return err
	}
	if _, err := s.applyRecord(rec); err != nil {
		return err
	}
	if err := s.buildPKI("join"); err != nil {
		return err
	}
	endpoints := membership.ClientURLs(members)
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
	return membership.Adder{Cluster: st.Client(), Log: s.log, Clock: s.clock, Name: s.r.nodeName, PeerURL: s.etcdConfig().PeerURL()}.Add(ctx)
}

// hasEtcdMember reports whether this node already holds etcd member data.
func (s *Server) hasEtcdMember() bool {
	_, err := os.Stat(filepath.Join(s.layout.EtcdDir(), "member"))
	return err == nil
}
