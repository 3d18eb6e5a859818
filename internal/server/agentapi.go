package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
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
	nodeid "github.com/kpki/kpki/internal/node"
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
		s.sup.Handle("POST /v1-kpki/"+leaf.Name+".crt", s.sup.Require(func(w http.ResponseWriter, r *http.Request) {
			s.handleSign(w, r, leaf)
		}, both...))
	}
	s.sup.Handle("GET /v1-kpki/server-ca.crt", s.sup.Require(s.caHandler(certs.ServerCA), both...))
	s.sup.Handle("GET /v1-kpki/client-ca.crt", s.sup.Require(s.caHandler(certs.ClientCA), both...))
	s.sup.Handle("GET /v1-kpki/server-bootstrap", s.sup.Require(s.handleServerBootstrap, supervisor.RoleServer))
	s.sup.Handle("GET /v1-kpki/etcd-members", s.sup.Require(s.handleEtcdMembers, supervisor.RoleServer))
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
// decides subject, SANs, usages and validity from the certificate table.
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
	body, err := io.ReadAll(io.LimitReader(r.Body, maxCSRBody+1))
	if err != nil {
		s.signError(w, r, http.StatusBadRequest, fmt.Errorf("read CSR: %w", err))
		return
	}
	if len(body) > maxCSRBody {
		s.signError(w, r, http.StatusRequestEntityTooLarge, fmt.Errorf("CSR larger than %d bytes", maxCSRBody))
		return
	}
	csr, err := x509.ParseCertificateRequest(body)
	if err != nil {
		s.signError(w, r, http.StatusBadRequest, fmt.Errorf("body is not a DER PKCS#10 certificate request: %v", err))
		return
	}
	if err := acceptableKey(csr); err != nil {
		s.signError(w, r, http.StatusBadRequest, err)
		return
	}
	if err := csr.CheckSignature(); err != nil {
		s.signError(w, r, http.StatusBadRequest, fmt.Errorf("CSR signature does not verify: %v", err))
		return
	}
	ok, err := s.checkNodePassword(r.Context(), node, nodePW)
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
	s.log.Info("issued node certificate", "node", node, "certificate", leaf.Name, "serial", cert.SerialNumber.Text(16), "remote", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Write(certs.BuildCertFile(cert, ca))
}

// acceptableKey allows ECDSA P-256/P-384 and RSA keys of 2048 bits or more.
func acceptableKey(csr *x509.CertificateRequest) error {
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("unsupported ECDSA curve %s: use P-256 or P-384", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits is too small: at least 2048", k.N.BitLen())
		}
	default:
		return fmt.Errorf("unsupported key type %s: use ECDSA P-256/P-384 or RSA 2048+", csr.PublicKeyAlgorithm)
	}
	return nil
}

// checkNodePassword binds a node name to the first node password it was used with.
// The stored value is a salted SHA-256: node passwords are 128-bit random.
func (s *Server) checkNodePassword(ctx context.Context, node, pw string) (bool, error) {
	key := nodePasswordPrefix + node
	var salt [16]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return false, err
	}
	created, stored, err := s.store.CreateOrGet(ctx, key, []byte(hex.EncodeToString(salt[:])+":"+nodeHash(salt[:], pw)))
	if err != nil {
		return false, err
	}
	if created {
		s.log.Info("registered node", "node", node)
		return true, nil
	}
	saltHex, sum, ok := strings.Cut(string(stored), ":")
	storedSalt, err := hex.DecodeString(saltHex)
	if !ok || err != nil {
		return false, fmt.Errorf("node password record %s is malformed", key)
	}
	return subtle.ConstantTimeCompare([]byte(nodeHash(storedSalt, pw)), []byte(sum)) == 1, nil
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
