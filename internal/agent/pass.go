package agent

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/kpki/kpki/internal/api"
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
	tr, err := a.fetchTrust(ctx)
	if err != nil {
		return res, err
	}
	c, err := a.client(tr)
	if err != nil {
		return res, err
	}
	defer c.Close()
	_, serverList, err := a.getBundle(ctx, c, api.PathServerCA)
	if err != nil {
		return res, err
	}
	if !trust.SameCerts(serverList, tr.Served) {
		return res, fmt.Errorf("the server at %s published different server CA bundles at %s and %s; retry when a CA rotation has settled", c.BaseURL, api.PathCACerts, api.PathServerCA)
	}
	clientPEM, clientList, err := a.getBundle(ctx, c, api.PathClientCA)
	if err != nil {
		return res, err
	}
	a.acceptTrust(tr)

	if err := a.takeLock(); err != nil {
		return res, err
	}
	pw, err := a.ensureNodePassword(&res)
	if err != nil {
		return res, err
	}
	// The server CA the node keeps is the verified chain to the anchor, never the other
	// certificates of the served bundle.
	cas := map[certs.CAID]*pki.CA{
		certs.ServerCA: tr.CA(),
		certs.ClientCA: {Cert: clientList[0], Bundle: clientList, BundlePEM: clientPEM},
	}
	if err := a.writeCABundles(cas, &res); err != nil {
		return res, err
	}

	var errs []error
	params := certs.Params{NodeName: a.nodeName, NodeIPs: a.nodeIPs}
	for _, l := range certs.Select(certs.AgentNode, nil) {
		ca := cas[l.Signer]
		if ca == nil {
			errs = append(errs, fmt.Errorf("%s: signer %s is not a CA the agent fetches", l.Name, l.Signer))
			continue
		}
		err := a.ensureLeaf(ctx, c, l, l.Profile(params), ca, pw, &res)
		if err == nil {
			continue
		}
		errs = append(errs, err)
		var pe *planError
		if !errors.As(err, &pe) {
			break // the server or the network failed: the other leaves would fail alike
		}
	}
	if len(errs) > 0 {
		return res, errors.Join(errs...)
	}

	if err := a.writeKubeconfigs(&res); err != nil {
		return res, err
	}

	marker := a.layout.ForceRestart()
	if datadir.Exists(marker) {
		if err := os.Remove(marker); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return res, fmt.Errorf("remove %s: %w", marker, err)
		}
		a.log.Info("removed the force-restart marker", "file", marker)
	}
	return res, nil
}

// writeCABundles writes the copy of each CA of the table that agents keep (its
// BundlePEM in cas) under the CA's file name.
func (a *Agent) writeCABundles(cas map[certs.CAID]*pki.CA, res *Result) error {
	for _, spec := range certs.CAs {
		if !spec.Agent {
			continue
		}
		ca := cas[spec.ID]
		if ca == nil {
			return fmt.Errorf("%s: not a CA the agent fetches", spec.ID)
		}
		path := a.layout.Agent(spec.CertFile)
		changed, err := datadir.WriteIfChanged(path, ca.BundlePEM, fileMode)
		if err != nil {
			return err
		}
		if changed {
			res.Written = append(res.Written, path)
			a.log.Info("wrote CA bundle", "file", path, "subject", ca.Cert.Subject.String())
		}
	}
	return nil
}

// writeKubeconfigs writes the agent's kubeconfigs (certs.Kubeconfigs).
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

// planError is a problem with the files on disk, not with the server.
type planError struct{ err error }

func (e *planError) Error() string { return e.err.Error() }
func (e *planError) Unwrap() error { return e.err }

// ensureLeaf plans one leaf and has the server sign it when it is due.
func (a *Agent) ensureLeaf(ctx context.Context, c *api.Client, l certs.Leaf, want pki.LeafProfile, ca *pki.CA, nodePassword string, res *Result) error {
	crt, kf := a.leafFiles(l)
	certPEM, err := datadir.ReadOptional(crt)
	if err != nil {
		return &planError{err}
	}
	keyPEM, err := datadir.ReadOptional(kf)
	if err != nil {
		return &planError{err}
	}
	pol := certs.Policy{Now: a.clock.Now(), RenewBefore: a.renewBefore}
	d, err := certs.Plan(want, certs.Existing{CertPEM: certPEM, KeyPEM: keyPEM}, ca, pol)
	if err != nil {
		file := crt
		var ce *certs.CorruptError
		if errors.As(err, &ce) && ce.What == "key" {
			file = kf
		}
		return &planError{fmt.Errorf("%s: %w; remove the certificate and key, or run `kpki certificate rotate --service %s`, to have them issued again", file, err, l.Service)}
	}
	switch d.Action {
	case certs.Keep:
		if d.Cert != nil {
			a.log.Debug("certificate is current", "file", crt, "expires", d.Cert.NotAfter.UTC(), "renew-from", d.Cert.NotAfter.Add(-a.renewBefore).UTC())
		}
		return nil
	case certs.Rebundle:
		if err := datadir.WriteFile(crt, certs.BuildCertFile(d.Cert, ca), fileMode); err != nil {
			return &planError{err}
		}
		res.Rebundled = append(res.Rebundled, crt)
		res.Written = append(res.Written, crt)
		a.log.Info("rewrote the CA bundle of certificate", "file", crt, "reason", d.Reason)
		return nil
	}

	var key crypto.Signer = d.Key
	var keyOut []byte
	if d.Action == certs.Issue {
		k, err := a.issuer.NewECKey()
		if err != nil {
			return err
		}
		key = k
		if keyOut, err = pki.EncodeKey(k); err != nil {
			return err
		}
	}
	csr, err := BuildCSR(key, want)
	if err != nil {
		return err
	}
	a.log.Debug("asking the server to sign a certificate", "file", crt, "reason", d.Reason, "new-key", d.Action == certs.Issue, "server", c.BaseURL)
	body, err := a.sign(ctx, c, l.Name, nodePassword, csr)
	if err != nil {
		return err
	}
	leaf, err := CheckReply(body, key.Public(), ca)
	if err != nil {
		return fmt.Errorf("POST %s at %s: %w", api.SignPath(l.Name), c.BaseURL, err)
	}
	file := certs.BuildCertFile(leaf, ca)
	if err := datadir.WritePair(crt, file, kf, keyOut); err != nil {
		return &planError{err}
	}
	res.Written = append(res.Written, crt)
	if keyOut != nil {
		res.Written = append(res.Written, kf)
	}
	if d.Action == certs.Issue {
		res.Issued = append(res.Issued, crt)
	} else {
		res.Renewed = append(res.Renewed, crt)
	}
	attrs := []any{"file", crt, "reason", d.Reason, "new-expiry", leaf.NotAfter.UTC()}
	if d.Cert != nil {
		attrs = append(attrs, "old-expiry", d.Cert.NotAfter.UTC())
	}
	_, message := d.Applied()
	a.log.Info(message, attrs...)

	if keyOut == nil {
		keyOut = keyPEM
	}
	if again, err := certs.Plan(want, certs.Existing{CertPEM: file, KeyPEM: keyOut}, ca, pol); err == nil && again.Action != certs.Keep {
		a.log.Warn("the server signed a certificate that the agent will want to renew again at its next pass (is the server's --cert-validity-days longer than the agent's --renew-before-days?)",
			"file", crt, "reason", again.Reason)
	}
	return nil
}
