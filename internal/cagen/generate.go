package cagen

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"fmt"
	"io"
	"path/filepath"
	"slices"
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
	if clk == nil {
		clk = clock.Real{}
	}
	if existing := existingCAFiles(tlsDir); len(existing) > 0 {
		return nil, fmt.Errorf("refusing to overwrite existing CA files in %s: %s (generate into an empty directory, for a running cluster into another DATA_DIR, and load the result with `kpki certificate rotate-ca`)",
			tlsDir, strings.Join(existing, ", "))
	}
	in, err := readCustomInputs(inputDir)
	if err != nil {
		return nil, err
	}
	g := &generation{inputDir: inputDir, tlsDir: tlsDir, now: clk.Now(), iss: pki.NewIssuer(clk, nil), out: out,
		res: &GenerateResult{TLSDir: tlsDir}}
	svcPath := g.output(certs.ServiceKeyFile)
	oldSvc, err := readServiceKeys(svcPath)
	if err != nil {
		return nil, err
	}
	if p := rootInputProblem(in.present()); p != 0 {
		return nil, &InputError{Problem: p, Dir: inputDir}
	}
	root, rootKey, err := g.root(in)
	if err != nil {
		return nil, err
	}
	if p := intermediateInputProblem(in.present()); p != 0 {
		return nil, &InputError{Problem: p, Dir: inputDir}
	}
	interChain, interKey, err := g.intermediate(in, root, rootKey)
	if err != nil {
		return nil, err
	}
	serverCA, err := g.clusterCAs(&pki.CA{Cert: interChain[0], Key: interKey}, append(slices.Clone(interChain), root))
	if err != nil {
		return nil, err
	}
	if err := g.serviceKeys(oldSvc, svcPath); err != nil {
		return nil, err
	}
	if g.res.CAHash, err = pki.CAHash(serverCA); err != nil {
		return nil, fmt.Errorf("%s: %w", g.output(certs.CA(certs.ServerCA).CertFile), err)
	}
	if err := datadir.WriteGroup(g.files); err != nil {
		return nil, err
	}
	for _, f := range g.files {
		g.res.Files = append(g.res.Files, f.Path)
	}
	g.res.OffCluster = offClusterFiles(tlsDir)
	printGenerated(out, g.res)
	return g.res, nil
}

// generation is the state of one GenerateCAFrom call: the files computed so far and
// what is known of the result.
type generation struct {
	inputDir, tlsDir string
	now              time.Time
	iss              *pki.Issuer
	out              io.Writer
	files            []datadir.File
	res              *GenerateResult
}

func (g *generation) input(name string) string  { return filepath.Join(g.inputDir, name) }
func (g *generation) output(name string) string { return filepath.Join(g.tlsDir, name) }

// add queues a file of tlsDir for writing.
func (g *generation) add(name string, data []byte) {
	g.files = append(g.files, datadir.File{Path: g.output(name), Data: data, Mode: fileMode})
}

// addKey queues the PEM of key for writing as name.
func (g *generation) addKey(name string, key crypto.Signer) error {
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return err
	}
	g.add(name, keyPEM)
	return nil
}

// existingCAFiles lists the cluster CA files of tlsDir that exist, in table order.
func existingCAFiles(tlsDir string) []string {
	var existing []string
	for _, c := range certs.CAs {
		for _, f := range []string{c.CertFile, c.KeyFile} {
			if datadir.Exists(filepath.Join(tlsDir, f)) {
				existing = append(existing, f)
			}
		}
	}
	return existing
}

// customInputs are the contents of the provided root and intermediate files; nil for
// a file that does not exist.
type customInputs struct {
	rootPEM, rootKeyPEM, interPEM, interKeyPEM []byte
}

func readCustomInputs(dir string) (customInputs, error) {
	var in customInputs
	for _, f := range []struct {
		name string
		dst  *[]byte
	}{{RootCertFile, &in.rootPEM}, {RootKeyFile, &in.rootKeyPEM}, {IntermediateCertFile, &in.interPEM}, {IntermediateKeyFile, &in.interKeyPEM}} {
		b, err := datadir.ReadRegular(filepath.Join(dir, f.name), datadir.MaxStagedFile)
		if err != nil {
			return customInputs{}, err
		}
		*f.dst = b
	}
	return in, nil
}

func (in customInputs) present() inputSet {
	return inputSet{Root: in.rootPEM != nil, RootKey: in.rootKeyPEM != nil, Intermediate: in.interPEM != nil, IntermediateKey: in.interKeyPEM != nil}
}

// readServiceKeys reads the current service.key, which must hold keys when it exists.
func readServiceKeys(path string) ([]byte, error) {
	old, err := datadir.ReadRegular(path, datadir.MaxStagedFile)
	if err != nil {
		return nil, err
	}
	if old != nil {
		if _, err := pki.ParseKeys(old); err != nil {
			return nil, fmt.Errorf("service-account keys %s: %w", path, err)
		}
	}
	return old, nil
}

// inputSet says which of the four custom-CA input files are provided.
type inputSet struct{ Root, RootKey, Intermediate, IntermediateKey bool }

// InputProblem is a combination of provided root and intermediate files that
// GenerateCA refuses.
type InputProblem int

// Input problems.
const (
	RootKeyWithoutCert InputProblem = iota + 1
	IntermediateWithoutRoot
	IntermediateKeyWithoutCert
	IntermediateWithoutRootKey
	IntermediateCertWithoutKey
)

// InputError is GenerateCA's error for a refused combination of input files.
type InputError struct {
	Problem InputProblem
	// Dir is the directory the inputs were read from.
	Dir string
}

func (e *InputError) Error() string {
	in := func(name string) string { return filepath.Join(e.Dir, name) }
	switch e.Problem {
	case RootKeyWithoutCert:
		return fmt.Sprintf("%s exists without its certificate %s: provide the root certificate too, or remove the key to have a new root created", in(RootKeyFile), in(RootCertFile))
	case IntermediateWithoutRoot:
		return fmt.Sprintf("an intermediate CA (%s) is provided without the root certificate %s that signed it", in(IntermediateCertFile), in(RootCertFile))
	case IntermediateKeyWithoutCert:
		return fmt.Sprintf("%s exists without its certificate %s: provide the intermediate certificate too, or remove the key to have a new intermediate created", in(IntermediateKeyFile), in(IntermediateCertFile))
	case IntermediateWithoutRootKey:
		return fmt.Sprintf("cannot create an intermediate CA without the root key %s: provide it, or provide %s and %s", in(RootKeyFile), in(IntermediateCertFile), in(IntermediateKeyFile))
	case IntermediateCertWithoutKey:
		return fmt.Sprintf("%s exists without its key %s: the cluster CAs cannot be signed without it", in(IntermediateCertFile), in(IntermediateKeyFile))
	}
	return fmt.Sprintf("unusable custom CA inputs in %s", e.Dir)
}

// rootInputProblem is what is wrong with the inputs before the root is used: a root
// key or an intermediate without the root certificate. 0 when nothing is.
func rootInputProblem(s inputSet) InputProblem {
	switch {
	case s.Root:
		return 0
	case s.RootKey:
		return RootKeyWithoutCert
	case s.Intermediate || s.IntermediateKey:
		return IntermediateWithoutRoot
	}
	return 0
}

// intermediateInputProblem is what is wrong with the inputs, once the root is usable,
// before the intermediate is used or made. 0 when nothing is.
func intermediateInputProblem(s inputSet) InputProblem {
	switch {
	case s.Intermediate && !s.IntermediateKey:
		return IntermediateCertWithoutKey
	case s.Intermediate:
		return 0
	case s.IntermediateKey:
		return IntermediateKeyWithoutCert
	case s.Root && !s.RootKey:
		return IntermediateWithoutRootKey
	}
	return 0
}

// root returns the provided root, checked, or a new one queued for writing. Its key
// is nil when the root is provided without it.
func (g *generation) root(in customInputs) (*x509.Certificate, crypto.Signer, error) {
	if in.rootPEM != nil {
		root, key, err := loadRoot(g.input(RootCertFile), in.rootPEM, g.input(RootKeyFile), in.rootKeyPEM, g.now)
		if err != nil {
			return nil, nil, err
		}
		fmt.Fprintf(g.out, "Using existing root certificate %s (%s)\n", g.input(RootCertFile), root.Subject.String())
		return root, key, nil
	}
	fmt.Fprintf(g.out, "Generating root certificate authority RSA key and certificate (RSA-%d, %d days)\n", RootKeyBits, int(RootValidity/day))
	k, err := g.iss.NewRSAKey(RootKeyBits)
	if err != nil {
		return nil, nil, fmt.Errorf("generate root CA key: %w", err)
	}
	root, err := g.iss.SelfSignedCA(k, cn(Product+"-root-ca", g.now), RootValidity)
	if err != nil {
		return nil, nil, err
	}
	if err := g.addKey(RootKeyFile, k); err != nil {
		return nil, nil, err
	}
	g.add(RootCertFile, pki.EncodeCert(root))
	g.res.RootGenerated = true
	return root, k, nil
}

// intermediate returns the provided intermediate chain (first certificate signing),
// checked against root, or a new intermediate signed by root and queued for writing.
func (g *generation) intermediate(in customInputs, root *x509.Certificate, rootKey crypto.Signer) ([]*x509.Certificate, crypto.Signer, error) {
	if in.interPEM != nil {
		chain, key, err := loadIntermediate(g.input(IntermediateCertFile), in.interPEM, g.input(IntermediateKeyFile), in.interKeyPEM, g.input(RootCertFile), root, g.now)
		if err != nil {
			return nil, nil, err
		}
		fmt.Fprintf(g.out, "Using existing intermediate certificate %s (%s)\n", g.input(IntermediateCertFile), chain[0].Subject.String())
		return chain, key, nil
	}
	validity := capValidity(IntermediateValidity, g.now, root.NotAfter)
	fmt.Fprintf(g.out, "Generating intermediate certificate authority RSA key and certificate (RSA-%d, %d days)\n", IntermediateKeyBits, int(validity/day))
	k, err := g.iss.NewRSAKey(IntermediateKeyBits)
	if err != nil {
		return nil, nil, fmt.Errorf("generate intermediate CA key: %w", err)
	}
	inter, err := g.iss.SignCA(&pki.CA{Cert: root, Key: rootKey}, k.Public(), cn(Product+"-intermediate-ca", g.now), validity)
	if err != nil {
		return nil, nil, err
	}
	if err := g.addKey(IntermediateKeyFile, k); err != nil {
		return nil, nil, err
	}
	g.add(IntermediateCertFile, pki.EncodeCert(inter))
	g.res.IntermediateGenerated = true
	return []*x509.Certificate{inter}, k, nil
}

// clusterCAs makes every CA of the table under inter, whose chain up to the root is
// chain, each valid for its Validity but never past the chain, and queues the files.
// It returns the server CA's bundle.
func (g *generation) clusterCAs(inter *pki.CA, chain []*x509.Certificate) ([]byte, error) {
	end := expiry(chain)
	if slices.ContainsFunc(certs.CAs, func(c certs.CASpec) bool { return capValidity(c.Validity, g.now, end) < c.Validity }) {
		fmt.Fprintf(g.out, "Note: the CA chain expires on %s; the cluster CAs are valid until then only\n", end.UTC().Format(time.RFC3339))
	}
	chainPEM := pki.EncodeCerts(chain...)
	var serverCA []byte
	for _, c := range certs.CAs {
		cert, err := g.clusterCA(c, inter, chain, capValidity(c.Validity, g.now, end))
		if err != nil {
			return nil, err
		}
		bundle := append(pki.EncodeCert(cert), chainPEM...)
		if c.ID == certs.ServerCA {
			serverCA = bundle
		}
		g.add(c.CertFile, bundle)
	}
	return serverCA, nil
}

// clusterCA makes the CA c signed by inter, checks it verifies up chain, queues its
// key and returns its certificate.
func (g *generation) clusterCA(c certs.CASpec, inter *pki.CA, chain []*x509.Certificate, validity time.Duration) (*x509.Certificate, error) {
	fmt.Fprintf(g.out, "Generating %s leaf certificate authority %s key and certificate\n", c.CNPrefix, c.Key)
	k, err := c.Key.NewKey(g.iss)
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", c.ID, err)
	}
	cert, err := g.iss.SignCA(inter, k.Public(), c.CommonName(g.now), validity)
	if err != nil {
		return nil, err
	}
	if _, err := pki.VerifyChain(append([]*x509.Certificate{cert}, chain...), g.now); err != nil {
		return nil, fmt.Errorf("%s: the new CA does not verify under %s and %s: %w", g.output(c.CertFile), g.input(IntermediateCertFile), g.input(RootCertFile), err)
	}
	return cert, g.addKey(c.KeyFile, k)
}

// serviceKeys queues a service.key holding a new key followed by the keys of oldSvc.
func (g *generation) serviceKeys(oldSvc []byte, svcPath string) error {
	svc, n, err := serviceKeyFile(g.iss, oldSvc, svcPath)
	if err != nil {
		return err
	}
	if n > 0 {
		fmt.Fprintf(g.out, "Generating additional Kubernetes service account issuer RSA key (the %s already in %s follow it)\n", plural(n, "key", "keys"), svcPath)
	} else {
		fmt.Fprintln(g.out, "Generating Kubernetes service account issuer RSA key")
	}
	g.add(certs.ServiceKeyFile, svc)
	return nil
}

// offClusterFiles lists, sorted within each group, the root-ca.* and intermediate-ca.*
// files of tlsDir.
func offClusterFiles(tlsDir string) []string {
	var out []string
	for _, pattern := range []string{"root-ca.*", "intermediate-ca.*"} {
		m, _ := filepath.Glob(filepath.Join(tlsDir, pattern))
		sort.Strings(m)
		out = append(out, m...)
	}
	return out
}

// printGenerated prints the closing message of GenerateCA.
func printGenerated(out io.Writer, res *GenerateResult) {
	fmt.Fprintln(out)
	fmt.Fprintf(out, "CA certificate generation complete. Required files are now present in: %s\n", res.TLSDir)
	fmt.Fprintf(out, "Join tokens will pin the CA hash %s (SHA-256 of the root certificate).\n", res.CAHash)
	fmt.Fprintln(out, "For security purposes, you should make a secure copy of the following files and remove them from cluster members:")
	for _, f := range res.OffCluster {
		fmt.Fprintf(out, "\t%s\n", f)
	}
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
