package cagen

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/clock"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
)

// GenerateServiceKey writes stageDir/tls/service.key: a new RSA-2048 service-account
// key followed by the current keys of <dataDir>/server/tls/service.key, so that tokens
// signed by the current keys stay valid. It refuses to write over the live file;
// an existing staged service.key is replaced. It returns the path written.
func GenerateServiceKey(dataDir, stageDir string, clk clock.Clock, out io.Writer) (string, error) {
	if clk == nil {
		clk = clock.Real{}
	}
	if stageDir == "" {
		return "", fmt.Errorf("no staging directory given (--path)")
	}
	l := datadir.Layout{Root: dataDir}
	src := l.TLS(certs.ServiceKeyFile)
	dst := filepath.Join(stageDir, "tls", certs.ServiceKeyFile)
	if sameFile(src, dst) {
		return "", fmt.Errorf("%s is the live service-account key file: stage the new key into another directory (--path) and load it with `kpki certificate rotate-ca`", dst)
	}
	old, err := readRequired(src, "current service-account key file")
	if err != nil {
		return "", fmt.Errorf("%w (is %s a kpki server data dir?)", err, dataDir)
	}
	data, n, err := serviceKeyFile(pki.NewIssuer(clk, nil), old, src)
	if err != nil {
		return "", err
	}
	if datadir.Exists(dst) {
		fmt.Fprintf(out, "Replacing the earlier %s\n", dst)
	}
	if err := datadir.WriteFile(dst, data, fileMode); err != nil {
		return "", err
	}
	fmt.Fprintf(out, "Wrote %s: a new service-account key followed by the %s of %s\n", dst, plural(n, "current key", "current keys"), src)
	fmt.Fprintln(out)
	fmt.Fprintln(out, "To load it, you may now run:")
	fmt.Fprintf(out, "    kpki certificate rotate-ca --path=%s\n", absPath(stageDir))
	return dst, nil
}
