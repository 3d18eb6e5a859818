package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/kubeconfig"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

// fileMode is the mode of every file the agent writes.
const fileMode fs.FileMode = 0o600

// pass runs one join-or-renew pass. Nothing is written before the server has proved to
// hold the pinned CA and has accepted the token.
func (a *Agent) pass(ctx context.Context) (Result, error) {
	var res Result

	caPEM, err := a.fetchCACerts(ctx)
	if err != nil {
		return res, err
	}
	caList, err := pki.ParseCerts(caPEM)
	if err != nil {
		return res, err
	}
	if err := a.acceptCA(caPEM, caList); err != nil {
		return res, err
	}
	roots := x509.NewCertPool()
	for _, c := range caList {
		roots.AddCert(c)
	}
	h := a.newClient(roots)
	defer h.close()
	serverPEM, serverList, err := a.getBundle(ctx, h, PathServerCA)
	if err != nil {
		return res, err
	}
	if !sameCerts(serverList, caList) {
		return res, fmt.Errorf("the server at %s published different server CA bundles at %s and %s; retry when a CA rotation has settled", h.base, PathCACerts, PathServerCA)
	}
	clientPEM, clientList, err := a.getBundle(ctx, h, PathClientCA)
	if err != nil {
		return res, err
	}
	a.trusted = caPEM

	if err := a.takeLock(); err != nil {
		return res, err
	}
	pw, err := a.ensureNodePassword(&res)
	if err != nil {
		return res, err
	}
	cas := map[certs.CAID]*pki.CA{
		certs.ServerCA: {Cert: serverList[0], Bundle: serverList, BundlePEM: serverPEM},
		certs.ClientCA: {Cert: clientList[0], Bundle: clientList, BundlePEM: clientPEM},
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{ServerCAFile, serverPEM}, {ClientCAFile, clientPEM}} {
		path := a.layout.Agent(f.name)
		changed, err := datadir.WriteIfChanged(path, f.data, fileMode)
		if err != nil {
			return res, err
		}
		if changed {
			res.Written = append(res.Written, path)
			a.log.Info("wrote CA bundle", "file", path, "subject", cas[caOfFile(f.name)].Cert.Subject.String())
		}
	}

	var errs []error
	params := certs.Params{NodeName: a.nodeName, NodeIPs: a.nodeIPs}
	for _, l := range certs.Select(certs.AgentNode, nil) {
		ca := cas[l.Signer]
		if ca == nil {
			errs = append(errs, fmt.Errorf("%s: signer %s is not a CA the agent fetches", l.Name, l.Signer))
			continue
		}
		err := a.ensureLeaf(ctx, h, l, l.Profile(params), ca, pw, &res)
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

	for _, k := range Kubeconfigs {
		path := a.layout.Agent(k.File)
		data, err := kubeconfig.RenderFiles(kubeconfig.Files{
			Server:         a.apiServer,
			CAFile:         a.layout.Agent(ServerCAFile),
			ClientCertFile: a.layout.Agent(k.Leaf + ".crt"),
			ClientKeyFile:  a.layout.Agent(k.Leaf + ".key"),
		})
		if err != nil {
			return res, fmt.Errorf("render %s: %w", path, err)
		}
		changed, err := datadir.WriteIfChanged(path, data, fileMode)
		if err != nil {
			return res, err
		}
		if changed {
			res.Written = append(res.Written, path)
			a.log.Info("wrote kubeconfig", "file", path, "server", a.apiServer)
		}
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

func caOfFile(name string) certs.CAID {
	if name == ServerCAFile {
		return certs.ServerCA
	}
	return certs.ClientCA
}

// acceptCA decides whether the bundle served at /cacerts is the cluster's. A bundle is
// accepted when its hash is the token's; with a short token, on trust (with a warning).
// After a pass of this process has succeeded, a bundle with another hash is also
// accepted when it chains to the bundle trusted then (a cross-signed CA rotation).
func (a *Agent) acceptCA(caPEM []byte, caList []*x509.Certificate) error {
	hash, err := pki.CAHash(caPEM)
	if err != nil {
		return fmt.Errorf("the server at %s is not a kpki server: its CA bundle has no usable root: %v", a.base, err)
	}
	if a.trusted != nil {
		oldHash, err := pki.CAHash(a.trusted)
		if err == nil && oldHash == hash {
			return nil
		}
		if a.tok.Secure() && hash == a.tok.CAHash {
			return nil
		}
		old, err := pki.ParseCerts(a.trusted)
		if err == nil && pki.ChainsTo(caList, old, a.clock.Now()) == nil {
			a.log.Warn("the cluster CA changed and is signed by the CA this agent trusted; accepting it. Its hash is new: give the agent the new token (kpki token show on a server) before it restarts",
				"old-hash", oldHash, "new-hash", hash)
			return nil
		}
		if a.tok.Secure() {
			return a.tok.CheckCAHash(hash)
		}
		return fmt.Errorf("the cluster CA changed (hash %s != %s) and the new one is not signed by the CA this agent trusted; restart the agent to accept it", oldHash, hash)
	}
	if a.tok.Secure() {
		return a.tok.CheckCAHash(hash)
	}
	if !a.warnedShort {
		a.warnedShort = true
		a.log.Warn("the token does not pin the cluster CA (short token): trusting the CA the server presents; use the full token K10<hash>::<user>:<password> to pin it",
			"server", a.base.String(), "ca-hash", hash)
	}
	return nil
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i].Raw, b[i].Raw) {
			return false
		}
	}
	return true
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
func (a *Agent) ensureLeaf(ctx context.Context, h *httpClient, l certs.Leaf, want pki.LeafProfile, ca *pki.CA, nodePassword string, res *Result) error {
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
	body, err := a.sign(ctx, h, l.Name, nodePassword, csr)
	if err != nil {
		return err
	}
	leaf, err := CheckReply(body, key.Public(), ca)
	if err != nil {
		return fmt.Errorf("POST %s at %s: %w", SignPath(l.Name), h.base, err)
	}
	file := certs.BuildCertFile(leaf, ca)
	if err := datadir.WritePair(crt, file, kf, keyOut); err != nil {
		return &planError{err}
	}
	res.Written = append(res.Written, crt)
	if keyOut != nil {
		res.Written = append(res.Written, kf)
	}
	action := "renewed"
	if d.Action == certs.Issue {
		res.Issued = append(res.Issued, crt)
		if d.Cert == nil {
			action = "issued"
		} else {
			action = "renewed with a new key"
		}
	} else {
		res.Renewed = append(res.Renewed, crt)
	}
	attrs := []any{"file", crt, "reason", d.Reason, "new-expiry", leaf.NotAfter.UTC()}
	if d.Cert != nil {
		attrs = append(attrs, "old-expiry", d.Cert.NotAfter.UTC())
	}
	a.log.Info(action+" certificate", attrs...)

	if keyOut == nil {
		keyOut = keyPEM
	}
	if again, err := certs.Plan(want, certs.Existing{CertPEM: file, KeyPEM: keyOut}, ca, pol); err == nil && again.Action != certs.Keep {
		a.log.Warn("the server signed a certificate that the agent will want to renew again at its next pass (is the server's --cert-validity-days longer than the agent's --renew-before-days?)",
			"file", crt, "reason", again.Reason)
	}
	return nil
}
