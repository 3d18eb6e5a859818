package server

import (
	"fmt"
	"net"
	"os"
	"strconv"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/kubeconfig"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

func (s *Server) apiServerURL() string {
	return "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(s.cfg.APIServerPort))
}

// writeDerived writes the files computed from the loaded CAs and the leaves:
// *.nochain.crt, kubeconfigs, token files and --write-kubeconfig. Unchanged files are
// not rewritten.
func (s *Server) writeDerived() error { return s.writeDerivedUnder(s.caSet()) }

// writeDerivedUnder writes the derived files for cas.
func (s *Server) writeDerivedUnder(cas map[certs.CAID]*pki.CA) error {
	password, agentPassword := s.secrets()
	for _, c := range certs.CAs {
		if c.NoChainFile == "" {
			continue
		}
		if _, err := datadir.WriteIfChanged(s.layout.TLS(c.NoChainFile), pki.EncodeCert(cas[c.ID].Cert), 0o600); err != nil {
			return err
		}
	}
	for _, k := range certs.NodeKubeconfigs(certs.ServerNode) {
		crt, key := s.leafPaths(certs.ServerNode, k.Leaf)
		data, err := kubeconfig.RenderFiles(kubeconfig.Files{Server: s.apiServerURL(), CAFile: s.layout.TLS(certs.CA(k.CA).CertFile), ClientCertFile: crt, ClientKeyFile: key})
		if err != nil {
			return err
		}
		if _, err := datadir.WriteIfChanged(s.layout.Cred(k.File), data, 0o600); err != nil {
			return err
		}
	}
	hash, err := pki.CAHash(cas[certs.ServerCA].BundlePEM)
	if err != nil {
		return fmt.Errorf("CA hash of %s: %w", s.layout.TLS(certs.CA(certs.ServerCA).CertFile), err)
	}
	if s.firstStart {
		if err := s.tok.CheckCAHash(hash); err != nil {
			return err
		}
	}
	// A password not known yet (a restart whose cred/passwd comes from the datastore)
	// leaves its token files as they are until it is.
	tokens := map[string]string{}
	if password != "" {
		serverToken := token.Format(hash, "server", password) + "\n"
		tokens[s.layout.TokenFile()], tokens[s.layout.NodeTokenFile()] = serverToken, serverToken
	}
	if agentPassword != "" {
		tokens[s.layout.AgentTokenFile()] = token.Format(hash, "node", agentPassword) + "\n"
	}
	for path, data := range tokens {
		if _, err := datadir.WriteIfChanged(path, []byte(data), 0o600); err != nil {
			return err
		}
	}
	if s.cfg.WriteKubeconfig != "" {
		crt, key := s.leafPaths(certs.ServerNode, "client-admin")
		cert, err := os.ReadFile(crt)
		if err != nil {
			return err
		}
		keyPEM, err := os.ReadFile(key)
		if err != nil {
			return err
		}
		data, err := kubeconfig.RenderData(kubeconfig.Data{Server: s.apiServerURL(), CA: cas[certs.ServerCA].BundlePEM, ClientCert: cert, ClientKey: keyPEM})
		if err != nil {
			return err
		}
		if _, err := datadir.WriteIfChanged(s.cfg.WriteKubeconfig, data, 0o600); err != nil {
			return fmt.Errorf("--write-kubeconfig: %w", err)
		}
	}
	return nil
}
