package cagen

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
)

// GenerateResult describes what GenerateCA wrote.
type GenerateResult struct {
	// TLSDir is the directory written.
	TLSDir string
	// Files are the paths written.
	Files []string
	// RootGenerated and IntermediateGenerated say whether root-ca.pem/.key and
	// intermediate-ca.pem/.key were created rather than reused.
	RootGenerated, IntermediateGenerated bool
	// CAHash is the hash join tokens pin for the new server-ca.crt (SPEC §9): the
	// SHA-256 of the root certificate's DER.
	CAHash string
	// OffCluster are the root-ca.* and intermediate-ca.* files of TLSDir, which the
	// operator should copy somewhere safe and remove from the cluster nodes.
	OffCluster []string
}

// GenerateCA does in tlsDir what K3s's generate-custom-ca-certs.sh does: it reuses
// root-ca.pem (+ root-ca.key) and intermediate-ca.pem + intermediate-ca.key when they
// are there, else creates them (RSA-4096; root 20 years, intermediate 10 years), then
// creates the five cluster CAs (P-256, 10 years, never past the intermediate's expiry)
// signed by the intermediate, each <ca>.crt holding the CA, the intermediate chain and
// the root, and a service.key holding a new RSA-2048 key followed by the keys of the
// existing service.key, if any.
//
// Unlike the script, it refuses — writing nothing — when tlsDir already holds any of
// the cluster CA files (the script silently replaces them, which on a live data dir
// breaks the cluster), when a provided root or intermediate is unusable (key mismatch,
// not a CA, expired, intermediate not signed by the root), and when a root or
// intermediate key is there without its certificate (the script would overwrite it).
func GenerateCA(tlsDir string, clk clock.Clock, out io.Writer) (*GenerateResult, error) {
	return GenerateCAFrom(tlsDir, tlsDir, clk, out)
}

// GenerateCAFrom is GenerateCA taking the provided root-ca.* and intermediate-ca.* from
// inputDir (the directory K3s's script works in, when it is not tlsDir) and writing the
// result into tlsDir. Its messages name the input files it uses.
func GenerateCAFrom(inputDir, tlsDir string, clk clock.Clock, out io.Writer) (*GenerateResult, error) {
	in := func(name string) string { return filepath.Join(inputDir, name) }
	if clk == nil {
		clk = clock.Real{}
	}
	now := clk.Now()
	iss := pki.NewIssuer(clk, nil)
	path := func(name string) string { return filepath.Join(tlsDir, name) }

	var existing []string
	for _, c := range certs.CAs {
		for _, f := range []string{c.CertFile, c.KeyFile} {
			if datadir.Exists(path(f)) {
				existing = append(existing, f)
			}
		}
	}
	if len(existing) > 0 {
		return nil, fmt.Errorf("refusing to overwrite existing CA files in %s: %s (generate into an empty directory, for a running cluster into another DATA_DIR, and load the result with `kpki certificate rotate-ca`)",
			tlsDir, strings.Join(existing, ", "))
	}

	var inputs [4][]byte
	for i, f := range []string{RootCertFile, RootKeyFile, IntermediateCertFile, IntermediateKeyFile} {
		b, err := datadir.ReadRegular(in(f), datadir.MaxStagedFile)
		if err != nil {
			return nil, err
		}
		inputs[i] = b
	}
	rootPEM, rootKeyPEM, interPEM, interKeyPEM := inputs[0], inputs[1], inputs[2], inputs[3]
	svcPath := path(certs.ServiceKeyFile)
	oldSvc, err := datadir.ReadRegular(svcPath, datadir.MaxStagedFile)
	if err != nil {
		return nil, err
	}
	if oldSvc != nil {
		if _, err := pki.ParseKeys(oldSvc); err != nil {
			return nil, fmt.Errorf("service-account keys %s: %w", svcPath, err)
		}
	}

	res := &GenerateResult{TLSDir: tlsDir}
	var files []datadir.File
	add := func(name string, data []byte) {
		files = append(files, datadir.File{Path: path(name), Data: data, Mode: fileMode})
	}

	// Root.
	var (
		root    *x509.Certificate
		rootKey crypto.Signer
	)
	if rootPEM == nil {
		if rootKeyPEM != nil {
			return nil, fmt.Errorf("%s exists without its certificate %s: provide the root certificate too, or remove the key to have a new root created", in(RootKeyFile), in(RootCertFile))
		}
		if interPEM != nil || interKeyPEM != nil {
			return nil, fmt.Errorf("an intermediate CA (%s) is provided without the root certificate %s that signed it", in(IntermediateCertFile), in(RootCertFile))
		}
		fmt.Fprintf(out, "Generating root certificate authority RSA key and certificate (RSA-%d, %d days)\n", RootKeyBits, int(RootValidity/day))
		k, err := iss.NewRSAKey(RootKeyBits)
		if err != nil {
			return nil, fmt.Errorf("generate root CA key: %w", err)
		}
		if root, err = iss.SelfSignedCA(k, cn(Product+"-root-ca", now), RootValidity); err != nil {
			return nil, err
		}
		rootKey = k
		keyPEM, err := pki.EncodeKey(k)
		if err != nil {
			return nil, err
		}
		add(RootKeyFile, keyPEM)
		add(RootCertFile, pki.EncodeCert(root))
		res.RootGenerated = true
	} else {
		if root, rootKey, err = loadRoot(in(RootCertFile), rootPEM, in(RootKeyFile), rootKeyPEM, now); err != nil {
			return nil, err
		}
		fmt.Fprintf(out, "Using existing root certificate %s (%s)\n", in(RootCertFile), root.Subject.String())
	}

	// Intermediate: the intermediate-ca.pem chain, first certificate signing.
	var (
		interChain []*x509.Certificate
		interKey   crypto.Signer
	)
	if interPEM == nil {
		if interKeyPEM != nil {
			return nil, fmt.Errorf("%s exists without its certificate %s: provide the intermediate certificate too, or remove the key to have a new intermediate created", in(IntermediateKeyFile), in(IntermediateCertFile))
		}
		if rootKey == nil {
			return nil, fmt.Errorf("cannot create an intermediate CA without the root key %s: provide it, or provide %s and %s", in(RootKeyFile), in(IntermediateCertFile), in(IntermediateKeyFile))
		}
		validity := capValidity(IntermediateValidity, now, root.NotAfter)
		fmt.Fprintf(out, "Generating intermediate certificate authority RSA key and certificate (RSA-%d, %d days)\n", IntermediateKeyBits, int(validity/day))
		k, err := iss.NewRSAKey(IntermediateKeyBits)
		if err != nil {
			return nil, fmt.Errorf("generate intermediate CA key: %w", err)
		}
		inter, err := iss.SignCA(&pki.CA{Cert: root, Key: rootKey}, k.Public(), cn(Product+"-intermediate-ca", now), validity)
		if err != nil {
			return nil, err
		}
		interChain, interKey = []*x509.Certificate{inter}, k
		keyPEM, err := pki.EncodeKey(k)
		if err != nil {
			return nil, err
		}
		add(IntermediateKeyFile, keyPEM)
		add(IntermediateCertFile, pki.EncodeCert(inter))
		res.IntermediateGenerated = true
	} else {
		if interKeyPEM == nil {
			return nil, fmt.Errorf("%s exists without its key %s: the cluster CAs cannot be signed without it", in(IntermediateCertFile), in(IntermediateKeyFile))
		}
		if interChain, interKey, err = loadIntermediate(in(IntermediateCertFile), interPEM, in(IntermediateKeyFile), interKeyPEM, in(RootCertFile), root, now); err != nil {
			return nil, err
		}
		fmt.Fprintf(out, "Using existing intermediate certificate %s (%s)\n", in(IntermediateCertFile), interChain[0].Subject.String())
	}

	// The five cluster CAs.
	inter := &pki.CA{Cert: interChain[0], Key: interKey}
	chain := append(append([]*x509.Certificate{}, interChain...), root)
	chainPEM := pki.EncodeCerts(chain...)
	validity := capValidity(CAValidity, now, expiry(chain))
	var serverCA []byte
	if validity < CAValidity {
		fmt.Fprintf(out, "Note: the CA chain expires on %s; the cluster CAs are valid until then only\n", now.Add(validity).UTC().Format(time.RFC3339))
	}
	for _, c := range certs.CAs {
		fmt.Fprintf(out, "Generating %s leaf certificate authority EC key and certificate\n", c.CNPrefix)
		k, err := iss.NewECKey()
		if err != nil {
			return nil, fmt.Errorf("generate %s key: %w", c.ID, err)
		}
		cert, err := iss.SignCA(inter, k.Public(), cn(c.CNPrefix, now), validity)
		if err != nil {
			return nil, err
		}
		if _, err := pki.VerifyChain(append([]*x509.Certificate{cert}, chain...), now); err != nil {
			return nil, fmt.Errorf("%s: the new CA does not verify under %s and %s: %w", path(c.CertFile), in(IntermediateCertFile), in(RootCertFile), err)
		}
		keyPEM, err := pki.EncodeKey(k)
		if err != nil {
			return nil, err
		}
		bundle := append(pki.EncodeCert(cert), chainPEM...)
		if c.ID == certs.ServerCA {
			serverCA = bundle
		}
		add(c.KeyFile, keyPEM)
		add(c.CertFile, bundle)
	}

	// Service-account keys: a new one first, the existing ones kept after it.
	svc, n, err := serviceKeyFile(iss, oldSvc, svcPath)
	if err != nil {
		return nil, err
	}
	if n > 0 {
		fmt.Fprintf(out, "Generating additional Kubernetes service account issuer RSA key (the %s already in %s follow it)\n", plural(n, "key", "keys"), svcPath)
	} else {
		fmt.Fprintln(out, "Generating Kubernetes service account issuer RSA key")
	}
	add(certs.ServiceKeyFile, svc)

	if res.CAHash, err = pki.CAHash(serverCA); err != nil {
		return nil, fmt.Errorf("%s: %w", path(certs.CA(certs.ServerCA).CertFile), err)
	}

	if err := datadir.WriteGroup(files); err != nil {
		return nil, err
	}
	for _, f := range files {
		res.Files = append(res.Files, f.Path)
	}
	for _, pattern := range []string{"root-ca.*", "intermediate-ca.*"} {
		m, _ := filepath.Glob(filepath.Join(tlsDir, pattern))
		sort.Strings(m)
		res.OffCluster = append(res.OffCluster, m...)
	}

	fmt.Fprintln(out)
	fmt.Fprintf(out, "CA certificate generation complete. Required files are now present in: %s\n", tlsDir)
	fmt.Fprintf(out, "Join tokens will pin the CA hash %s (SHA-256 of the root certificate).\n", res.CAHash)
	fmt.Fprintln(out, "For security purposes, you should make a secure copy of the following files and remove them from cluster members:")
	for _, f := range res.OffCluster {
		fmt.Fprintf(out, "\t%s\n", f)
	}
	return res, nil
}

// loadRoot parses and checks a provided root: one self-signed CA certificate, usable
// now, and the key, when given, matching it.
func loadRoot(certPath string, certPEM []byte, keyPath string, keyPEM []byte, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	list, err := pki.ParseCerts(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("root CA %s: %w", certPath, err)
	}
	if len(list) != 1 {
		return nil, nil, fmt.Errorf("root CA %s holds %d certificates, want only the root certificate", certPath, len(list))
	}
	root := list[0]
	if err := pki.CheckCACert(root, now); err != nil {
		return nil, nil, fmt.Errorf("root CA %s: %w", certPath, err)
	}
	if !pki.IsSelfSigned(root) {
		return nil, nil, fmt.Errorf("root CA %s: %q is not self-signed (issuer %q): provide the self-signed root, and any CA between it and the signing intermediate after the intermediate in %s",
			certPath, root.Subject.String(), root.Issuer.String(), IntermediateCertFile)
	}
	if keyPEM == nil {
		return root, nil, nil
	}
	key, err := pki.ParseKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("root CA key %s: %w", keyPath, err)
	}
	if !pki.KeyMatchesCert(key, root) {
		return nil, nil, fmt.Errorf("root CA key %s does not match the certificate in %s", keyPath, certPath)
	}
	return root, key, nil
}

// loadIntermediate parses and checks a provided intermediate: its first certificate
// is a CA usable now whose key is keyPEM's first key, and it chains, through any
// further certificates of the file, to root.
func loadIntermediate(certPath string, certPEM []byte, keyPath string, keyPEM []byte, rootPath string, root *x509.Certificate, now time.Time) ([]*x509.Certificate, crypto.Signer, error) {
	list, err := pki.ParseCerts(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("intermediate CA %s: %w", certPath, err)
	}
	// A file that already ends with the root does not get it twice in the bundles.
	var chain []*x509.Certificate
	for _, c := range list {
		if !bytes.Equal(c.Raw, root.Raw) {
			chain = append(chain, c)
		}
	}
	if len(chain) == 0 {
		return nil, nil, fmt.Errorf("intermediate CA %s holds only the root certificate of %s", certPath, rootPath)
	}
	key, err := pki.ParseKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("intermediate CA key %s: %w", keyPath, err)
	}
	if !pki.KeyMatchesCert(key, chain[0]) {
		return nil, nil, fmt.Errorf("intermediate CA key %s does not match the certificate in %s", keyPath, certPath)
	}
	if err := pki.CheckCACert(chain[0], now); err != nil {
		return nil, nil, fmt.Errorf("intermediate CA %s: %w", certPath, err)
	}
	for _, c := range chain[1:] {
		if err := pki.CheckCACert(c, now); err != nil {
			return nil, nil, fmt.Errorf("intermediate CA %s: %w", certPath, err)
		}
	}
	reached, err := pki.VerifyChain(append(append([]*x509.Certificate{}, chain...), root), now)
	if err == nil && !reached.Equal(root) {
		err = fmt.Errorf("it chains to %q instead", reached.Subject.String())
	}
	if err != nil {
		return nil, nil, fmt.Errorf("intermediate CA %s is not signed by the root CA %s (%q): %w", certPath, rootPath, root.Subject.String(), err)
	}
	return chain, key, nil
}

// capValidity returns want, shortened so that a certificate made at now does not
// outlive notAfter.
func capValidity(want time.Duration, now, notAfter time.Time) time.Duration {
	if left := notAfter.Sub(now); left < want {
		return left
	}
	return want
}

// expiry returns the earliest NotAfter of chain.
func expiry(chain []*x509.Certificate) time.Time {
	t := chain[0].NotAfter
	for _, c := range chain[1:] {
		if c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}
