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
	now := clk.Now()
	iss := pki.NewIssuer(clk, nil)
	l := datadir.Layout{Root: dataDir}
	dir := l.Server(RotateCADir)
	res := &CrossSignResult{Dir: dir}

	// The token passwords, read first so that a data dir that is not a server's fails
	// before any key is made.
	var passwords [2]string
	for i, f := range []string{l.TokenFile(), l.AgentTokenFile()} {
		data, err := readRequired(f, "token file")
		if err != nil {
			return nil, fmt.Errorf("%w (is %s a kpki server data dir?)", err, dataDir)
		}
		t, err := token.Parse(string(data))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		passwords[i] = t.Password
	}

	svcPath := l.TLS(certs.ServiceKeyFile)
	oldSvc, err := readRequired(svcPath, "current service-account key file")
	if err != nil {
		return nil, fmt.Errorf("%w; cannot continue", err)
	}
	if _, err := pki.ParseKeys(oldSvc); err != nil {
		return nil, fmt.Errorf("service-account keys %s: %w", svcPath, err)
	}

	var files []datadir.File
	add := func(name string, data []byte) {
		files = append(files, datadir.File{Path: filepath.Join(dir, "tls", name), Data: data, Mode: fileMode})
	}
	var serverBundle []byte
	for _, c := range certs.CAs {
		crtPath, keyPath := l.TLS(c.CertFile), l.TLS(c.KeyFile)
		crtPEM, err := readRequired(crtPath, "current CA certificate")
		if err != nil {
			return nil, fmt.Errorf("%w; cannot continue", err)
		}
		keyPEM, err := readRequired(keyPath, "current CA key")
		if err != nil {
			return nil, fmt.Errorf("%w; cannot continue", err)
		}
		old, cur, err := currentRoot(crtPath, crtPEM, keyPath, keyPEM)
		if err != nil {
			return nil, err
		}
		stamp := freeStamp(now, old, rootName(c), c.CNPrefix)
		expired := now.After(cur.Cert.NotAfter)
		if expired {
			fmt.Fprintf(out, "Warning: the current %s root %q expired on %s: the cross-signature gives no continuity, and rotate-ca will need --force\n",
				c.ID, cur.Cert.Subject.String(), cur.Cert.NotAfter.UTC().Format(time.RFC3339))
		}

		fmt.Fprintf(out, "Generating %s root and cross-signed certificate authority key and certificates\n", rootName(c))
		rootKey, err := iss.NewECKey()
		if err != nil {
			return nil, fmt.Errorf("generate %s root key: %w", c.ID, err)
		}
		selfSigned, err := iss.SelfSignedCA(rootKey, cn(rootName(c), stamp), RootValidity)
		if err != nil {
			return nil, err
		}
		crossSigned, err := iss.CrossSign(cur, selfSigned, RootValidity)
		if err != nil {
			return nil, fmt.Errorf("cross-sign the new %s root with the current root of %s: %w", c.ID, crtPath, err)
		}
		fmt.Fprintf(out, "Generating %s intermediate certificate authority key and certificate\n", c.CNPrefix)
		caKey, err := iss.NewECKey()
		if err != nil {
			return nil, fmt.Errorf("generate %s key: %w", c.ID, err)
		}
		ca, err := iss.SignCA(&pki.CA{Cert: selfSigned, Key: rootKey}, caKey.Public(), cn(c.CNPrefix, stamp), CAValidity)
		if err != nil {
			return nil, err
		}

		bundle := []*x509.Certificate{ca, selfSigned, crossSigned, cur.Cert}
		if err := checkCrossChain(bundle, cur.Cert, !expired, now); err != nil {
			return nil, fmt.Errorf("%s: the new CA does not verify against the current CA %s: %w", filepath.Join(dir, "tls", c.CertFile), crtPath, err)
		}
		bundlePEM := pki.EncodeCerts(bundle...)
		keys, err := keyPEMs(caKey, rootKey)
		if err != nil {
			return nil, err
		}
		add(c.CertFile, bundlePEM)
		add(c.KeyFile, keys)
		if c.ID == certs.ServerCA {
			serverBundle = bundlePEM
		}
	}

	svc, _, err := serviceKeyFile(iss, oldSvc, svcPath)
	if err != nil {
		return nil, err
	}
	add(certs.ServiceKeyFile, svc)

	if res.CAHash, err = pki.CAHash(serverBundle); err != nil {
		return nil, fmt.Errorf("new %s: %w", certs.CA(certs.ServerCA).CertFile, err)
	}
	res.ServerToken = token.Format(res.CAHash, "server", passwords[0])
	res.AgentToken = token.Format(res.CAHash, "node", passwords[1])

	if datadir.Exists(dir) {
		fmt.Fprintf(out, "Replacing the earlier %s\n", dir)
		if err := os.RemoveAll(dir); err != nil {
			return nil, fmt.Errorf("remove the earlier %s: %w", dir, err)
		}
		res.Replaced = true
	}
	if err := datadir.WriteGroup(files); err != nil {
		return nil, err
	}
	for _, f := range files {
		res.Files = append(res.Files, f.Path)
	}

	fmt.Fprintln(out)
	fmt.Fprintf(out, "Cross-signed CA certs and keys now available in %s\n", dir)
	fmt.Fprintf(out, "Updated server token:    %s\n", res.ServerToken)
	fmt.Fprintf(out, "Updated agent token:     %s\n", res.AgentToken)
	fmt.Fprintln(out)
	fmt.Fprintln(out, "To update certificates, you may now run:")
	fmt.Fprintf(out, "    kpki certificate rotate-ca --path=%s\n", absPath(dir))
	return res, nil
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
