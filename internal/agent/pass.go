package agent

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/kpki/kpki/internal/api"
	"github.com/kpki/kpki/internal/certapply"
	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/kubeconfig"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
	"github.com/kpki/kpki/internal/trust"
)

// fileMode is the mode of every file the agent writes.
const fileMode fs.FileMode = 0o600

// pass runs one join-or-renew pass. Nothing is written before the server has proved to
// hold the pinned CA (TLS verified against the trust anchor alone) and has accepted the
// token; nothing secret is sent before that TLS is up.
func (a *Agent) pass(ctx context.Context) (Result, error) {
	var res Result
	a.log.Debug("certificate pass", "server", a.base.String(), "node", a.nodeName)
	c, cas, err := a.connect(ctx)
	if err != nil {
		return res, err
	}
	defer c.Close()
	if err := a.takeLock(); err != nil {
		return res, err
	}
	pw, err := a.ensureNodePassword(&res)
	if err != nil {
		return res, err
	}
	for _, step := range []func() error{
		func() error { return a.writeTrust(&res) },
		func() error { return a.writeCABundles(cas, &res) },
		func() error { return a.ensureLeaves(ctx, c, cas, pw, &res) },
		func() error { return a.writeKubeconfigs(&res) },
		a.dropForceRestart,
	} {
		if err := step(); err != nil {
			return res, err
		}
	}
	a.report(ctx, c, pw)
	return res, nil
}

// connect pins, resumes or follows the server CA, opens the verified client and fetches
// the CA bundles; the trust is accepted only once both bundles agree with it. The server
// CA the node keeps is the verified chain to the anchor and the other trusted roots the
// served bundle still holds (trust.TrustedPEM), never its other certificates.
func (a *Agent) connect(ctx context.Context) (*api.Client, map[certs.CAID]caFile, error) {
	tr, err := a.fetchTrust(ctx)
	if err != nil {
		return nil, nil, err
	}
	c, err := a.client(tr)
	if err != nil {
		return nil, nil, err
	}
	_, serverList, err := a.getBundle(ctx, c, api.PathServerCA)
	if err == nil && !trust.SameCerts(serverList, tr.Served) {
		err = fmt.Errorf("the server at %s published different server CA bundles at %s and %s; retry when a CA rotation has settled", c.BaseURL, api.PathCACerts, api.PathServerCA)
	}
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	clientPEM, clientList, err := a.getBundle(ctx, c, api.PathClientCA)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	a.acceptTrust(tr)
	return c, agentCAs(tr, clientPEM, clientList), nil
}

// agentCAs are the CA copies the agent keeps for the trust tr and the client CA bundle
// served as clientPEM (parsed: clientList).
func agentCAs(tr *trust.Trust, clientPEM []byte, clientList []*x509.Certificate) map[certs.CAID]caFile {
	return map[certs.CAID]caFile{
		certs.ServerCA: {certs.CA(certs.ServerCA).CertFile, tr.TrustedPEM(), tr.CA()},
		certs.ClientCA: {certs.CA(certs.ClientCA).CertFile, clientPEM, &pki.CA{Cert: clientList[0], Bundle: clientList, BundlePEM: clientPEM}},
	}
}

// caFile is a CA the agent keeps: its file under <dd>/agent, the bytes written there,
// and the CA its leaves are checked against.
type caFile struct {
	name string
	data []byte
	ca   *pki.CA
}

// writeCABundles writes the copy of each CA of the table that agents keep, when it
// changed.
func (a *Agent) writeCABundles(cas map[certs.CAID]caFile, res *Result) error {
	for _, spec := range certs.CAs {
		if !spec.Agent {
			continue
		}
		f, ok := cas[spec.ID]
		if !ok {
			return fmt.Errorf("%s: not a CA the agent fetches", spec.ID)
		}
		path := a.layout.Agent(f.name)
		changed, err := datadir.WriteIfChanged(path, f.data, fileMode)
		if err != nil {
			return err
		}
		if changed {
			res.Written = append(res.Written, path)
			a.log.Info("wrote CA bundle", "file", path, "subject", f.ca.Cert.Subject.String())
		}
	}
	return nil
}

// ensureLeaves brings every agent leaf up to date. A problem with one leaf's files does
// not stop the others; a failure of the server or the network does, since the other
// leaves would fail alike.
func (a *Agent) ensureLeaves(ctx context.Context, c *api.Client, cas map[certs.CAID]caFile, nodePassword string, res *Result) error {
	var errs []error
	params := certs.Params{NodeName: a.nodeName, NodeIPs: a.nodeIPs}
	for _, l := range certs.Select(certs.AgentNode, nil) {
		f, ok := cas[l.Signer]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: signer %s is not a CA the agent fetches", l.Name, l.Signer))
			continue
		}
		err := a.ensureLeaf(ctx, c, l, l.Profile(params), f.ca, nodePassword, res)
		if err == nil {
			continue
		}
		errs = append(errs, err)
		var fe *certapply.FileError
		if !errors.As(err, &fe) {
			break
		}
	}
	return errors.Join(errs...)
}

// writeKubeconfigs writes the agent's kubeconfigs when they changed.
func (a *Agent) writeKubeconfigs(res *Result) error {
	for _, k := range certs.NodeKubeconfigs(certs.AgentNode) {
		path := a.layout.Agent(k.File)
		data, err := kubeconfig.RenderFiles(kubeconfig.Files{
			Server:         a.apiServer,
			CAFile:         a.layout.Agent(certs.CA(k.CA).CertFile),
			ClientCertFile: a.layout.Agent(k.Leaf + ".crt"),
			ClientKeyFile:  a.layout.Agent(k.Leaf + ".key"),
		})
		if err != nil {
			return fmt.Errorf("render %s: %w", path, err)
		}
		changed, err := datadir.WriteIfChanged(path, data, fileMode)
		if err != nil {
			return err
		}
		if changed {
			res.Written = append(res.Written, path)
			a.log.Info("wrote kubeconfig", "file", path, "server", a.apiServer)
		}
	}
	return nil
}

// dropForceRestart removes the marker `certificate rotate` leaves: the pass has
// re-issued what it removed.
func (a *Agent) dropForceRestart() error {
	marker := a.layout.ForceRestart()
	if !datadir.Exists(marker) {
		return nil
	}
	if err := os.Remove(marker); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", marker, err)
	}
	a.log.Info("removed the force-restart marker", "file", marker)
	return nil
}

// ensureNodePassword reads <dd>/agent/node-password, creating it on the first join.
func (a *Agent) ensureNodePassword(res *Result) (string, error) {
	path := a.layout.Agent(NodePasswordFile)
	data, err := datadir.ReadOptional(path)
	if err != nil {
		return "", err
	}
	if data != nil {
		pw := strings.TrimSpace(string(data))
		if pw == "" || !printable(pw) {
			return "", fmt.Errorf("%s must hold the node password on one line; it identifies this node to the cluster, so restore it from a backup", path)
		}
		if _, err := datadir.WriteIfChanged(path, data, fileMode); err != nil {
			return "", err
		}
		return pw, nil
	}
	pw, err := token.GeneratePassword()
	if err != nil {
		return "", err
	}
	if err := datadir.WriteFile(path, []byte(pw+"\n"), fileMode); err != nil {
		return "", err
	}
	res.Written = append(res.Written, path)
	a.log.Info("created the node password", "file", path)
	return pw, nil
}

func printable(s string) bool {
	for _, r := range s {
		if r < 0x21 || r > 0x7e {
			return false
		}
	}
	return true
}

// ensureLeaf plans one leaf and has the server sign it when it is due.
func (a *Agent) ensureLeaf(ctx context.Context, c *api.Client, l certs.Leaf, want pki.LeafProfile, ca *pki.CA, nodePassword string, res *Result) error {
	crt, kf := a.leafFiles(l)
	app := &certapply.Applier{Issuer: a.issuer, Log: a.log, Clock: a.clock, RenewBefore: a.renewBefore}
	leaf := certapply.Leaf{Row: l, Want: want, CA: ca, CertFile: crt, KeyFile: kf, Actor: a.nodeName}
	out, err := app.Apply(ctx, leaf, func(ctx context.Context, key crypto.Signer, want pki.LeafProfile) (*x509.Certificate, error) {
		csr, err := BuildCSR(key, want)
		if err != nil {
			return nil, err
		}
		body, err := a.sign(ctx, c, l.Name, nodePassword, csr)
		if err != nil {
			return nil, err
		}
		cert, err := CheckReply(body, key.Public(), ca)
		if err != nil {
			return nil, fmt.Errorf("POST %s at %s: %w", api.SignPath(l.Name), c.BaseURL, err)
		}
		return cert, nil
	})
	res.Written = append(res.Written, out.Written...)
	if err != nil {
		return err
	}
	switch {
	case out.Decision.Action == certs.Rebundle:
		res.Rebundled = append(res.Rebundled, crt)
	case out.Decision.Action == certs.Issue:
		res.Issued = append(res.Issued, crt)
	case out.Decision.Action == certs.Renew:
		res.Renewed = append(res.Renewed, crt)
	}
	return nil
}
