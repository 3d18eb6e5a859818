package handlers

import (
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
	"github.com/kpki/kpki/internal/nodeauth"
	"github.com/kpki/kpki/internal/nodeclaim"
	"github.com/kpki/kpki/internal/server/record"
	"github.com/kpki/kpki/internal/supervisor"
)

// maxCSRBody bounds a CSR upload.
const maxCSRBody = 64 << 10

func (s *API) caHandler(id certs.CAID) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		ca := s.Host.CAs()[id]
		w.Header().Set(api.HeaderContentType, api.ContentTypePEM)
		w.Write(ca.BundlePEM)
	}
}

// signError answers a failed signing request and counts it.
func (s *API) signError(w http.ResponseWriter, r *http.Request, code int, err error) {
	result := map[int]string{http.StatusBadRequest: "bad_request", http.StatusForbidden: "forbidden",
		http.StatusRequestEntityTooLarge: "bad_request"}[code]
	if result == "" {
		result = "error"
	}
	s.Metrics.JoinRequests.WithLabelValues(result).Inc()
	s.datastoreError(w, r, code, err)
}

// handleSign issues an agent leaf for the public key of the CSR in the body. The server
// decides subject, SANs, usages and validity from the certificate table. A node may not
// claim a name or IP of the cluster's servers or services (package nodeclaim), and the
// refusal comes before anything is registered for the node.
func (s *API) handleSign(w http.ResponseWriter, r *http.Request, leaf certs.Leaf) {
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
	servers, err := s.Nodes.ClusterServers(r.Context())
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
	ok, err := s.Nodes.CheckNodePassword(r.Context(), node, nodePW)
	if errors.Is(err, nodeauth.ErrServerNodeName) {
		s.refuseClaim(w, r, node, leaf, &nodeclaim.Refused{Claim: "node name " + node, Reason: err.Error()})
		return
	}
	if err != nil {
		s.signError(w, r, http.StatusInternalServerError, err)
		return
	}
	if !ok {
		s.writeAudit(audit.Entry{Time: s.now().UTC(), Action: "node-password-mismatch", Actor: node, RemoteAddr: r.RemoteAddr,
			Detail: "a request for " + leaf.Name + " claimed a node name registered with another node password"})
		s.signError(w, r, http.StatusForbidden, fmt.Errorf("node %s is registered with another node password; a second host cannot take over its identity", node))
		return
	}
	ca := s.Host.CAs()[leaf.Signer]
	prof := leaf.Profile(certs.Params{NodeName: node, NodeIPs: ips, ClusterDomain: s.ClusterDomain})
	if leaf.SANs == certs.KubeletSANs {
		// The node's own claims; the profile's fixed names (localhost, 127.0.0.1) are not.
		claimed := ips
		if ip := net.ParseIP(node); ip != nil {
			claimed = append([]net.IP{ip}, ips...)
		}
		if err := s.Nodes.RecordIPClaims(r.Context(), node, claimed, r.RemoteAddr); err != nil {
			s.signError(w, r, http.StatusInternalServerError, err)
			return
		}
	}
	cert, err := s.Issuer.SignLeaf(ca, csr.PublicKey, prof, s.Validity)
	if err != nil {
		s.signError(w, r, http.StatusInternalServerError, err)
		return
	}
	s.Metrics.JoinRequests.WithLabelValues("ok").Inc()
	s.Metrics.Issued.WithLabelValues(leaf.Kind).Inc()
	e := audit.CertEntry("issue", node, leaf.Name+".crt", cert, nil)
	e.Time, e.RemoteAddr = s.now().UTC(), r.RemoteAddr
	s.writeAudit(e)
	s.Log.Info("issued node certificate", "node", node, "certificate", leaf.Name, "serial", audit.SerialHex(cert), "remote", r.RemoteAddr)
	w.Header().Set(api.HeaderContentType, api.ContentTypePEM)
	w.Write(certs.BuildCertFile(cert, ca))
}

// refuseClaim answers a request that claims a name or IP the node may not have: 403
// with the reason, counted and audited like a node-password mismatch.
func (s *API) refuseClaim(w http.ResponseWriter, r *http.Request, node string, leaf certs.Leaf, err error) {
	s.writeAudit(audit.Entry{Time: s.now().UTC(), Action: "node-claim-refused", Actor: node, RemoteAddr: r.RemoteAddr,
		File: leaf.Name + ".crt", Detail: err.Error()})
	s.signError(w, r, http.StatusForbidden, fmt.Errorf("refused: %w; a node may not claim the names and addresses of the cluster's servers and services", err))
}

// handleServerBootstrap gives a joining server the bootstrap record in plaintext, over
// TLS the joiner verified against its token's CA hash, to a caller holding the server token.
func (s *API) handleServerBootstrap(w http.ResponseWriter, r *http.Request) {
	rec, _, err := record.Current(r.Context(), s.Store, s.Host.Password())
	if err != nil {
		s.datastoreError(w, r, http.StatusInternalServerError, err)
		return
	}
	plain, err := rec.Marshal()
	if err != nil {
		s.Sup.Error(w, r, http.StatusInternalServerError, err)
		return
	}
	s.writeAudit(audit.Entry{Time: s.now().UTC(), Action: "server-bootstrap", Actor: supervisor.CallerFrom(r.Context()).User,
		RemoteAddr: r.RemoteAddr, Detail: "bootstrap data sent to a joining server"})
	w.Header().Set(api.HeaderContentType, api.ContentTypeJSON)
	w.Write(plain)
}

func (s *API) handleEtcdMembers(w http.ResponseWriter, r *http.Request) {
	if s.Members == nil {
		s.Sup.Error(w, r, http.StatusNotFound, errors.New("this server uses an external datastore"))
		return
	}
	out, err := s.Members(r.Context())
	if err != nil {
		s.datastoreError(w, r, http.StatusInternalServerError, err)
		return
	}
	supervisor.JSON(w, out)
}
