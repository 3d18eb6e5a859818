package agent

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/rollout"
)

// reportTimeout bounds the status report that ends a pass.
const reportTimeout = 10 * time.Second

// certFiles are the node's certificate files: the CA copies the agent keeps, then its
// leaves.
func (a *Agent) certFiles() []string {
	var files []string
	for _, c := range certs.CAs {
		if c.Agent {
			files = append(files, a.layout.Agent(c.CertFile))
		}
	}
	for _, l := range certs.Select(certs.AgentNode, nil) {
		crt, _ := a.leafFiles(l)
		files = append(files, crt)
	}
	return files
}

// report tells the server which CA generation and certificates the node holds once a
// pass has written them. A failure is logged: it never fails the pass.
func (a *Agent) report(ctx context.Context, c *api.Client, nodePassword string) {
	if err := a.sendReport(ctx, c, nodePassword); err != nil {
		a.log.Warn("could not report this node's CA generation to the server; the certificates are up to date", "server", c.BaseURL, "error", err)
	}
}

func (a *Agent) sendReport(ctx context.Context, c *api.Client, nodePassword string) error {
	rep, err := a.status()
	if err != nil {
		return err
	}
	body, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, reportTimeout)
	defer cancel()
	h := http.Header{}
	h.Set(api.HeaderNodeName, a.nodeName)
	h.Set(api.HeaderNodePassword, nodePassword)
	r, err := c.Send(ctx, api.Request{Method: http.MethodPut, Path: api.PathNodeStatus, Body: body, ContentType: api.ContentTypeJSON, Header: h})
	if err != nil {
		return err
	}
	if r.Status/100 != 2 {
		return statusError(c.BaseURL, http.MethodPut, api.PathNodeStatus, r)
	}
	a.log.Debug("reported the CA generation", "generation", rep.Generation)
	return nil
}

// status is the node's report, from its files as they are on disk.
func (a *Agent) status() (api.NodeStatus, error) {
	rep := api.NodeStatus{Node: a.nodeName}
	signers := map[certs.CAID]*x509.Certificate{}
	for _, spec := range certs.CAs {
		if !spec.Agent {
			continue
		}
		f := a.layout.Agent(spec.CertFile)
		c := datadir.FirstCert(f)
		if c == nil {
			return rep, fmt.Errorf("%s is missing or holds no certificate", f)
		}
		signers[spec.ID] = c
	}
	g, err := certs.Generation(signers)
	if err != nil {
		return rep, err
	}
	rep.Generation = g
	rep.Certificates = rollout.Certificates(a.layout.Root, a.certFiles(), datadir.FirstCert)
	return rep, nil
}
