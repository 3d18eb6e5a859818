package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/audit"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/csrcheck"
	nodeid "github.com/kpki/kpki/internal/node"
	"github.com/kpki/kpki/internal/nodeclaim"
	"github.com/kpki/kpki/internal/supervisor"
)

// Node password records live under this datastore prefix, one key per node name.
const nodePasswordPrefix = "/kpki/node-passwords/"

// maxCSRBody bounds a CSR upload.
const maxCSRBody = 64 << 10

func (s *Server) registerAgentAPI() {
	both := []supervisor.Role{supervisor.RoleServer, supervisor.RoleAgent}
	for _, l := range certs.Select(certs.AgentNode, nil) {
		leaf := l
		s.sup.Handle("POST "+api.SignPath(leaf.Name), s.sup.Require(func(w http.ResponseWriter, r *http.Request) {
			s.handleSign(w, r, leaf)
		}, both...))
	}
	s.sup.Handle("GET "+api.PathServerCA, s.sup.Require(s.caHandler(certs.ServerCA), both...))
	s.sup.Handle("GET "+api.PathClientCA, s.sup.Require(s.caHandler(certs.ClientCA), both...))
	s.sup.Handle("GET "+api.PathServerBootstrap, s.sup.Require(s.handleServerBootstrap, supervisor.RoleServer))
	s.sup.Handle("GET "+api.PathEtcdMembers, s.sup.Require(s.handleEtcdMembers, supervisor.RoleServer))
}

func (s *Server) caHandler(id certs.CAID) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		ca := s.cas[id]
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(ca.BundlePEM)
	}
}

// signError answers a failed signing request and counts it.
func (s *Server) signError(w http.ResponseWriter, r *http.Request, code int, err error) {
	result := map[int]string{http.StatusBadRequest: "bad_request", http.StatusForbidden: "forbidden",
		http.StatusRequestEntityTooLarge: "bad_request"}[code]
	if result == "" {
		result = "error"
	}
	s.metrics.JoinRequests.WithLabelValues(result).Inc()
	s.datastoreError(w, r, code, err)
}

// handleSign issues an agent leaf for the public key of the CSR in the body. The server
// decides subject, SANs, usages and validity from the certificate table. A node may not
// claim a name or IP of the cluster's servers or services (package nodeclaim), and the
// refusal comes before anything is registered for the node.
func (s *Server) handleSign(w http.ResponseWriter, r *http.Request, leaf certs.Leaf) {
	node := strings.ToLower(strings.TrimSpace(r.Header.Get(api.HeaderNodeName)))
	nodePW := r.Header.Get(api.HeaderNodePassword)
	if node == "" || nodePW == "" {
		s.signError(w, r, http.StatusBadRequest, fmt.Errorf("headers %s and %s are required", api.HeaderNodeName, api.HeaderNodePassword))
		return
	}
	if !nodeid.ValidName(node) {
		s.signError(w, r, http.StatusBadRequest, fmt.Errorf("node name %q is not a valid DNS name", node))
		return
	}
	var ips []net.IP
	if v := strings.TrimSpace(r.Header.Get(api.HeaderNodeIP)); v != "" {
		for _, part := range strings.Split(v, ",") {
			ip := net.ParseIP(strings.TrimSpace(part))
			if ip == nil {
				s.signError(w, r, http.StatusBadRequest, fmt.Errorf("%s entry %q is not an IP address", api.HeaderNodeIP, part))
				return
			}
			ips = append(ips, ip)
		}
	}
	servers, err := s.clusterServers(r.Context())
	if err != nil {
		s.signError(w, r, http.StatusInternalServerError, err)
		return
	}
	if err := nodeclaim.Check(servers, node, ips); err != nil {
		s.refuseClaim(w, r, node, leaf, err)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxCSRBody+1))
	if err != nil {
		s.signError(w, r, http.StatusBadRequest, fmt.Errorf("read CSR: %w", err))
		return
	}
	if len(body) > maxCSRBody {
		s.signError(w, r, http.StatusRequestEntityTooLarge, fmt.Errorf("CSR larger than %d bytes", maxCSRBody))
		return
	}
	csr, err := csrcheck.Check(body)
	if err != nil {
		s.signError(w, r, http.StatusBadRequest, err)
		return
	}
	ok, err := s.checkNodePassword(r.Context(), node, nodePW)
	if errors.Is(err, errServerNodeName) {
		s.refuseClaim(w, r, node, leaf, &nodeclaim.Refused{Claim: "node name " + node, Reason: err.Error()})
		return
	}
	if err != nil {
		s.signError(w, r, http.StatusInternalServerError, err)
		return
	}
	if !ok {
		s.writeAudit(audit.Entry{Time: s.clock.Now().UTC(), Action: "node-password-mismatch", Actor: node, RemoteAddr: r.RemoteAddr,
			Detail: "a request for " + leaf.Name + " claimed a node name registered with another node password"})
		s.signError(w, r, http.StatusForbidden, fmt.Errorf("node %s is registered with another node password; a second host cannot take over its identity", node))
		return
	}
	s.mu.Lock()
	ca := s.cas[leaf.Signer]
	s.mu.Unlock()
	prof := leaf.Profile(certs.Params{NodeName: node, NodeIPs: ips, ClusterDomain: s.cfg.ClusterDomain})
	if leaf.SANs == certs.KubeletSANs {
		// The node's own claims; the profile's fixed names (localhost, 127.0.0.1) are not.
		claimed := ips
		if ip := net.ParseIP(node); ip != nil {
			claimed = append([]net.IP{ip}, ips...)
		}
		if err := s.recordIPClaims(r.Context(), node, claimed, r.RemoteAddr); err != nil {
			s.signError(w, r, http.StatusInternalServerError, err)
			return
		}
	}
	cert, err := s.issuer.SignLeaf(ca, csr.PublicKey, prof, s.r.validity)
	if err != nil {
		s.signError(w, r, http.StatusInternalServerError, err)
		return
	}
	s.metrics.JoinRequests.WithLabelValues("ok").Inc()
	s.metrics.Issued.WithLabelValues(leaf.Kind).Inc()
	e := audit.CertEntry("issue", node, leaf.Name+".crt", cert, nil)
	e.Time, e.RemoteAddr = s.clock.Now().UTC(), r.RemoteAddr
	s.writeAudit(e)
	s.log.Info("issued node certificate", "node", node, "certificate", leaf.Name, "serial", audit.SerialHex(cert), "remote", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Write(certs.BuildCertFile(cert, ca))
}

// refuseClaim answers a request that claims a name or IP the node may not have: 403
// with the reason, counted and audited like a node-password mismatch.
func (s *Server) refuseClaim(w http.ResponseWriter, r *http.Request, node string, leaf certs.Leaf, err error) {
	s.writeAudit(audit.Entry{Time: s.clock.Now().UTC(), Action: "node-claim-refused", Actor: node, RemoteAddr: r.RemoteAddr,
		File: leaf.Name + ".crt", Detail: err.Error()})
	s.signError(w, r, http.StatusForbidden, fmt.Errorf("refused: %w; a node may not claim the names and addresses of the cluster's servers and services", err))
}

// checkNodePassword binds a node name to the first node password it was used with.
// The stored value is a salted SHA-256: node passwords are 128-bit random. A node name
// a server registered (serverNodeMarker) gives errServerNodeName.
func (s *Server) checkNodePassword(ctx context.Context, node, pw string) (bool, error) {
	if hit, serverName := s.nodes.check(node, pw); serverName {
		return false, errServerNodeName
	} else if hit {
		return true, nil
	}
	key := nodePasswordPrefix + node
	var salt [16]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return false, err
	}
	record := hex.EncodeToString(salt[:]) + ":" + nodeHash(salt[:], pw)
	created, stored, rev, err := s.store.CreateOrGetRev(ctx, key, []byte(record))
	if err != nil {
		return false, err
	}
	if created {
		s.nodes.put(node, record, rev)
		s.log.Info("registered node", "node", node)
		return true, nil
	}
	s.nodes.put(node, string(stored), rev)
	if string(stored) == serverNodeMarker {
		return false, errServerNodeName
	}
	match, wellFormed := recordMatches(string(stored), pw)
	if !wellFormed {
		return false, fmt.Errorf("node password record %s is malformed", key)
	}
	return match, nil
}

func nodeHash(salt []byte, pw string) string {
	h := sha256.New()
	h.Write(salt)
	h.Write([]byte(pw))
	return hex.EncodeToString(h.Sum(nil))
}

// handleServerBootstrap gives a joining server the bootstrap record in plaintext, over
// TLS the joiner verified against its token's CA hash, to a caller holding the server token.
func (s *Server) handleServerBootstrap(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	rec, _, err := s.currentRecord(r.Context())
	s.mu.Unlock()
	if err != nil {
		s.datastoreError(w, r, http.StatusInternalServerError, err)
		return
	}
	plain, err := rec.Marshal()
	if err != nil {
		s.sup.Error(w, r, http.StatusInternalServerError, err)
		return
	}
	s.writeAudit(audit.Entry{Time: s.clock.Now().UTC(), Action: "server-bootstrap", Actor: supervisor.CallerFrom(r.Context()).User,
		RemoteAddr: r.RemoteAddr, Detail: "bootstrap data sent to a joining server"})
	w.Header().Set("Content-Type", "application/json")
	w.Write(plain)
}

// EtcdMember is one member of the embedded etcd cluster.
type EtcdMember struct {
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peer_urls"`
	ClientURLs []string `json:"client_urls"`
}

func (s *Server) handleEtcdMembers(w http.ResponseWriter, r *http.Request) {
	if s.embedded == nil {
		s.sup.Error(w, r, http.StatusNotFound, errors.New("this server uses an external datastore"))
		return
	}
	resp, err := s.store.Client().MemberList(r.Context())
	if err != nil {
		s.datastoreError(w, r, http.StatusInternalServerError, err)
		return
	}
	var out []EtcdMember
	for _, m := range resp.Members {
		out = append(out, EtcdMember{Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs})
	}
	supervisor.JSON(w, out)
}
