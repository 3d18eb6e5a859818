// Package cagen holds kpki's three built-in CA generators, the stdlib counterparts of the
// K3s helper scripts that the RKE2 "Certificate Management" page links to:
//
//   - GenerateCA ("certificate generate-ca", generate-custom-ca-certs.sh): the five
//     cluster CAs signed by an intermediate under a root, both reused when provided;
//   - CrossSignCA ("certificate cross-sign-ca", rotate-default-ca-certs.sh): new CAs
//     under new roots cross-signed by the current roots, staged in <dd>/server/rotate-ca;
//   - GenerateServiceKey ("certificate generate-service-key"): a new service-account
//     key followed by the current ones, staged for rotate-ca.
//
// Each function takes explicit directories, a clock and a writer for its messages,
// computes every file in memory, checks the result, and only then writes, through
// internal/datadir, as one group: on any error nothing is written. Errors name files.
package cagen

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/pki"
)

const day = 24 * time.Hour

// Validity periods and key sizes of the generated material.
const (
	// RootValidity is the lifetime of a generated root CA (generate-ca) and of a new
	// root and its cross-signed copy (cross-sign-ca): 7300 days, as in the K3s scripts.
	RootValidity = 7300 * day
	// IntermediateValidity is the lifetime of a generated intermediate CA. Each cluster
	// CA gets the Validity of its certs.CAs row.
	IntermediateValidity = 3650 * day

	RootKeyBits         = 4096
	IntermediateKeyBits = 4096
	ServiceKeyBits      = 2048
)

// Files of the custom-CA procedure, in <dd>/server/tls.
const (
	RootCertFile         = "root-ca.pem"
	RootKeyFile          = "root-ca.key"
	IntermediateCertFile = "intermediate-ca.pem"
	IntermediateKeyFile  = "intermediate-ca.key"
)

// RotateCADir is the directory, under <dd>/server, where CrossSignCA stages its output.
const RotateCADir = "rotate-ca"

// Product prefixes the common names of generated CAs.
const Product = "kpki"

// fileMode is the mode of every file written here: they are keys, or CA bundles that
// kpki keeps next to their keys.
const fileMode fs.FileMode = 0o600

// cn returns "<name>@<unix seconds>", the common-name form of every generated CA.
func cn(name string, now time.Time) string { return certs.StampedName(name, now) }

// rootName is the common-name prefix of the new root of a cluster CA made by
// CrossSignCA: "kpki-server-ca" gives "kpki-server-root".
func rootName(c certs.CASpec) string {
	return strings.TrimSuffix(c.CNPrefix, "-ca") + "-root"
}

// readRequired reads path, whose absence is an error that says what it is.
func readRequired(path, what string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s %s does not exist", what, path)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

// serviceKeyFile returns a service.key holding a new RSA key first, then the keys of
// old (the current service.key, verbatim) when there is one. It returns how many keys
// old held.
func serviceKeyFile(iss *pki.Issuer, old []byte, oldPath string) ([]byte, int, error) {
	n := 0
	if old != nil {
		keys, err := pki.ParseKeys(old)
		if err != nil {
			return nil, 0, fmt.Errorf("service-account keys %s: %w", oldPath, err)
		}
		n = len(keys)
	}
	key, err := iss.NewRSAKey(ServiceKeyBits)
	if err != nil {
		return nil, 0, fmt.Errorf("generate service-account key: %w", err)
	}
	data, err := pki.EncodeKey(key)
	if err != nil {
		return nil, 0, err
	}
	if n > 0 {
		data = append(data, bytes.TrimRight(old, "\r\n\t ")...)
		data = append(data, '\n')
	}
	return data, n, nil
}

// keyPEMs encodes keys one after the other.
func keyPEMs(keys ...crypto.Signer) ([]byte, error) {
	var b bytes.Buffer
	for _, k := range keys {
		p, err := pki.EncodeKey(k)
		if err != nil {
			return nil, err
		}
		b.Write(p)
	}
	return b.Bytes(), nil
}

// absPath returns p made absolute, or p itself when that fails.
func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// sameFile reports whether a and b name the same file (or, when either does not
// exist, the same cleaned absolute path).
func sameFile(a, b string) bool {
	if absPath(a) == absPath(b) {
		return true
	}
	sa, errA := os.Stat(a)
	sb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(sa, sb)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}
