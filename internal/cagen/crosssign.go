package cagen

import (
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
	"github.com/kpki/kpki/internal/token"
)

// CrossSignResult describes what CrossSignCA wrote.
type CrossSignResult struct {
	// Dir is <dd>/server/rotate-ca, the directory to give to rotate-ca --path.
	Dir string
	// Files are the paths written, all under Dir/tls.
	Files []string
	// Replaced says whether an earlier Dir was removed first.
	Replaced bool
	// CAHash is the SPEC §9 hash of the new server-ca.crt: the SHA-256 of the DER
	// of the new self-signed server root.
	CAHash string
	// ServerToken and AgentToken are the current tokens with the new CA hash.
	ServerToken, AgentToken string
}

// CrossSignCA does what K3s's rotate-default-ca-certs.sh does, for the data dir
// dataDir: for each cluster CA of <dd>/server/tls it takes the current root — the CA
// itself when its .crt holds one certificate; the second certificate and the second
// key of its files when they come from an earlier cross-signing — and makes a new
// P-256 root (self-signed, 20 years), the same root cross-signed by the current root,
// and a new P-256 CA (10 years) under the new root. It writes, in
// <dd>/server/rotate-ca/tls, <ca>.crt = new CA + new root (self-signed) + new root
// (cross-signed) + current root and <ca>.key = new CA key + new root key, and a
// service.key holding a new RSA-2048 key followed by the current keys; an earlier
// rotate-ca directory is replaced. It prints the server and agent tokens with the new
// CA hash, and the rotate-ca command to run.
func CrossSignCA(dataDir string, clk clock.Clock, out io.Writer) (*CrossSignResult, error) {
	if clk == nil {
		clk = clock.Real{}
	}
	l := datadir.Layout{Root: dataDir}
	x := &crossSigning{layout: l, dir: l.Server(RotateCADir), now: clk.Now(), iss: pki.NewIssuer(clk, nil), out: out}
	res := &CrossSignResult{Dir: x.dir}

	// The token passwords, read first so that a data dir that is not a server's fails
	// before any key is made.
	serverPassword, agentPassword, err := tokenPasswords(l)
	if err != nil {
		return nil, err
	}
	svcPath := l.TLS(certs.ServiceKeyFile)
	oldSvc, err := readRequired(svcPath, "current service-account key file")
	if err != nil {
		return nil, fmt.Errorf("%w; cannot continue", err)
	}
	if _, err := pki.ParseKeys(oldSvc); err != nil {
		return nil, fmt.Errorf("service-account keys %s: %w", svcPath, err)
	}

	var serverBundle []byte
	for _, c := range certs.CAs {
		bundle, err := x.crossSign(c)
		if err != nil {
			return nil, err
		}
		if c.ID == certs.ServerCA {
			serverBundle = bundle
		}
	}
	svc, _, err := serviceKeyFile(x.iss, oldSvc, svcPath)
	if err != nil {
		return nil, err
	}
	x.add(certs.ServiceKeyFile, svc)

	if res.CAHash, err = pki.CAHash(serverBundle); err != nil {
		return nil, fmt.Errorf("new %s: %w", certs.CA(certs.ServerCA).CertFile, err)
	}
	res.ServerToken = token.Format(res.CAHash, "server", serverPassword)
	res.AgentToken = token.Format(res.CAHash, "node", agentPassword)

	if res.Replaced, err = removeEarlier(x.dir, out); err != nil {
		return nil, err
	}
	if err := datadir.WriteGroup(x.files); err != nil {
		return nil, err
	}
	for _, f := range x.files {
		res.Files = append(res.Files, f.Path)
	}
	printCrossSigned(out, res)
	return res, nil
}

// crossSigning is the state of one CrossSignCA call: the files computed so far.
type crossSigning struct {
	layout datadir.Layout
	dir    string
	now    time.Time
	iss    *pki.Issuer
	out    io.Writer
	files  []datadir.File
}

// staged is the path of name in the staged tls dir.
func (x *crossSigning) staged(name string) string { return filepath.Join(x.dir, "tls", name) }

// add queues a file of the staged tls dir for writing.
func (x *crossSigning) add(name string, data []byte) {
	x.files = append(x.files, datadir.File{Path: x.staged(name), Data: data, Mode: fileMode})
}

// tokenPasswords returns the passwords of the server and agent token files of l.
func tokenPasswords(l datadir.Layout) (server, agent string, err error) {
	var passwords [2]string
	for i, f := range []string{l.TokenFile(), l.AgentTokenFile()} {
		data, err := readRequired(f, "token file")
		if err != nil {
			return "", "", fmt.Errorf("%w (is %s a kpki server data dir?)", err, l.Root)
		}
		t, err := token.Parse(string(data))
		if err != nil {
			return "", "", fmt.Errorf("%s: %w", f, err)
		}
		passwords[i] = t.Password
	}
	return passwords[0], passwords[1], nil
}

// readCurrentCA reads the current files of c and returns their certificates and the
// root that signs c's replacement (currentRoot).
func (x *crossSigning) readCurrentCA(c certs.CASpec) ([]*x509.Certificate, *pki.CA, error) {
	crtPath, keyPath := x.layout.TLS(c.CertFile), x.layout.TLS(c.KeyFile)
	crtPEM, err := readRequired(crtPath, "current CA certificate")
	if err != nil {
		return nil, nil, fmt.Errorf("%w; cannot continue", err)
	}
	keyPEM, err := readRequired(keyPath, "current CA key")
	if err != nil {
		return nil, nil, fmt.Errorf("%w; cannot continue", err)
	}
	return currentRoot(crtPath, crtPEM, keyPath, keyPEM)
}

// crossSign makes c's new root, its copy cross-signed by the current root and the new
// CA under the new root, checks the bundle, queues c's files and returns the bundle.
func (x *crossSigning) crossSign(c certs.CASpec) ([]byte, error) {
	crtPath := x.layout.TLS(c.CertFile)
	old, cur, err := x.readCurrentCA(c)
	if err != nil {
		return nil, err
	}
	stamp := freeStamp(x.now, old, rootName(c), c.CNPrefix)
	expired := x.now.After(cur.Cert.NotAfter)
	if expired {
		fmt.Fprintf(x.out, "Warning: the current %s root %q expired on %s: the cross-signature gives no continuity, and rotate-ca will need --force\n",
			c.ID, cur.Cert.Subject.String(), cur.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(x.out, "Generating %s root and cross-signed certificate authority key and certificates\n", rootName(c))
	root, crossSigned, err := x.newRoot(c, cur, stamp)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(x.out, "Generating %s intermediate certificate authority key and certificate\n", c.CNPrefix)
	caKey, err := c.Key.NewKey(x.iss)
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", c.ID, err)
	}
	ca, err := x.iss.SignCA(root, caKey.Public(), c.CommonName(stamp), c.Validity)
	if err != nil {
		return nil, err
	}
	bundle := []*x509.Certificate{ca, root.Cert, crossSigned, cur.Cert}
	if err := checkCrossChain(bundle, cur.Cert, !expired, x.now); err != nil {
		return nil, fmt.Errorf("%s: the new CA does not verify against the current CA %s: %w", x.staged(c.CertFile), crtPath, err)
	}
	bundlePEM := pki.EncodeCerts(bundle...)
	keys, err := keyPEMs(caKey, root.Key)
	if err != nil {
		return nil, err
	}
	x.add(c.CertFile, bundlePEM)
	x.add(c.KeyFile, keys)
	return bundlePEM, nil
}

// newRoot makes c's new self-signed root, named at stamp, and its copy cross-signed by
// the current root cur.
func (x *crossSigning) newRoot(c certs.CASpec, cur *pki.CA, stamp time.Time) (*pki.CA, *x509.Certificate, error) {
	rootKey, err := x.iss.NewECKey()
	if err != nil {
		return nil, nil, fmt.Errorf("generate %s root key: %w", c.ID, err)
	}
	selfSigned, err := x.iss.SelfSignedCA(rootKey, cn(rootName(c), stamp), RootValidity)
	if err != nil {
		return nil, nil, err
	}
	crossSigned, err := x.iss.CrossSign(cur, selfSigned, RootValidity)
	if err != nil {
		return nil, nil, fmt.Errorf("cross-sign the new %s root with the current root of %s: %w", c.ID, x.layout.TLS(c.CertFile), err)
	}
	return &pki.CA{Cert: selfSigned, Key: rootKey}, crossSigned, nil
}

// removeEarlier removes an earlier staging dir and reports whether there was one.
func removeEarlier(dir string, out io.Writer) (bool, error) {
	if !datadir.Exists(dir) {
		return false, nil
	}
	fmt.Fprintf(out, "Replacing the earlier %s\n", dir)
	if err := os.RemoveAll(dir); err != nil {
		return false, fmt.Errorf("remove the earlier %s: %w", dir, err)
	}
	return true, nil
}

// printCrossSigned prints the closing message of CrossSignCA.
func printCrossSigned(out io.Writer, res *CrossSignResult) {
	fmt.Fprintln(out)
	fmt.Fprintf(out, "Cross-signed CA certs and keys now available in %s\n", res.Dir)
	fmt.Fprintf(out, "Updated server token:    %s\n", res.ServerToken)
	fmt.Fprintf(out, "Updated agent token:     %s\n", res.AgentToken)
	fmt.Fprintln(out)
	fmt.Fprintln(out, "To update certificates, you may now run:")
	fmt.Fprintf(out, "    kpki certificate rotate-ca --path=%s\n", absPath(res.Dir))
}

// currentRoot returns the certificates of a CA's current file and the root that signs
// the CA's replacement: the CA itself when crtPEM holds one certificate, else (files
// from an earlier cross-signing: CA + root + cross-signed root + older root, and CA
// key + root key) the second certificate with the second key.
func currentRoot(crtPath string, crtPEM []byte, keyPath string, keyPEM []byte) ([]*x509.Certificate, *pki.CA, error) {
	bundle, err := pki.ParseCerts(crtPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("current CA certificate %s: %w", crtPath, err)
	}
	keys, err := pki.ParseKeys(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("current CA key %s: %w", keyPath, err)
	}
	i := 0
	if len(bundle) > 1 {
		if len(keys) < 2 {
			return nil, nil, fmt.Errorf("%s holds a chain of %d certificates but %s holds a single key, so these are not the files of an earlier cross-signing: cross-sign-ca rotates kpki's self-signed CAs; CAs under your own root are rotated with `kpki certificate generate-ca`",
				crtPath, len(bundle), keyPath)
		}
		i = 1
	}
	cur, key := bundle[i], keys[i]
	if !pki.KeyMatchesCert(key, cur) {
		return nil, nil, fmt.Errorf("key %d of %s does not match certificate %d of %s", i+1, keyPath, i+1, crtPath)
	}
	if !cur.BasicConstraintsValid || !cur.IsCA {
		return nil, nil, fmt.Errorf("certificate %d of %s (%q) is not a CA", i+1, crtPath, cur.Subject.String())
	}
	if cur.KeyUsage != 0 && cur.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, fmt.Errorf("certificate %d of %s (%q) may not sign certificates (keyUsage lacks keyCertSign)", i+1, crtPath, cur.Subject.String())
	}
	return bundle, &pki.CA{Cert: cur, Key: key}, nil
}

// checkCrossChain checks a new bundle the way a server loads it — its first
// certificate chains to its own self-signed root — and, when viaOld is set, the way
// rotate-ca does: with only the current root trusted, the new CA chains to it through
// the cross-signed root.
func checkCrossChain(bundle []*x509.Certificate, current *x509.Certificate, viaOld bool, now time.Time) error {
	if _, err := pki.VerifyChain(bundle, now); err != nil {
		return err
	}
	if !viaOld {
		return nil
	}
	roots := x509.NewCertPool()
	roots.AddCert(current)
	inter := x509.NewCertPool()
	for _, c := range bundle[1:] {
		inter.AddCert(c)
	}
	if _, err := bundle[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		var names []string
		for _, c := range bundle {
			names = append(names, fmt.Sprintf("%q", c.Subject.String()))
		}
		return fmt.Errorf("chain %s: %w", strings.Join(names, ", "), err)
	}
	return nil
}

// freeStamp returns now, or the first later second, at which no certificate of taken
// has the common name <name>@<seconds> for any of names: a new root or CA made within
// the same second as the current one must not share its subject, or the issuer names
// of the bundle would no longer tell the old chain from the new one.
func freeStamp(now time.Time, taken []*x509.Certificate, names ...string) time.Time {
	used := map[string]bool{}
	for _, c := range taken {
		used[c.Subject.CommonName] = true
	}
	t := now.Truncate(time.Second)
	for {
		free := true
		for _, n := range names {
			if used[cn(n, t)] {
				free = false
			}
		}
		if free {
			return t
		}
		t = t.Add(time.Second)
	}
}
