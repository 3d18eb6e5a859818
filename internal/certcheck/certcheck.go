// Package certcheck builds the report of `kpki certificate check`: it finds the
// certificate files of the selected services in a data directory (through the
// certificate table of package certs), reads every certificate they hold, decides each
// one's status at an injected time, and renders the report as a table, text, JSON or
// YAML. It only reads files; it never writes, renews or repairs anything.
package certcheck

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/kpki/kpki/internal/certs"
	"github.com/kpki/kpki/internal/datadir"
	"github.com/kpki/kpki/internal/pki"
)

// Status is the verdict on one certificate.
type Status string

// Statuses, from harmless to broken.
const (
	StatusOK          Status = "OK"
	StatusWarning     Status = "WARNING"
	StatusExpired     Status = "EXPIRED"
	StatusNotYetValid Status = "NOT YET VALID"
	// StatusMissing marks an expected certificate file that does not exist.
	StatusMissing Status = "MISSING"
	// StatusError marks a certificate file that could not be read or parsed.
	StatusError Status = "ERROR"
)

// Row is one certificate of the report (or one missing or unreadable file). Its JSON
// and YAML form is the object `-o json` and `-o yaml` print.
type Row struct {
	// File is the certificate file's path relative to the data dir, with slashes.
	File string `json:"filename"`
	// Service is the kpki service the file belongs to (a name --service accepts), or
	// "ca" for a CA file.
	Service string `json:"service"`
	// Index is the certificate's position in its file, from 0; 0 for a MISSING or
	// ERROR row.
	Index int `json:"index"`
	// CA is true for a CA certificate (basicConstraints CA:TRUE).
	CA bool `json:"ca"`
	// SHA256 is the hex SHA-256 fingerprint of the certificate's DER; empty for a
	// MISSING or ERROR row. The same CA certificate held by several files has the same
	// fingerprint.
	SHA256  string   `json:"sha256"`
	Subject string   `json:"subject"`
	Issuer  string   `json:"issuer"`
	Usages  []string `json:"usages"`
	// Expires is NotAfter in RFC 3339, UTC; empty for a MISSING or ERROR row.
	Expires string `json:"expires"`
	// ResidualSeconds is NotAfter minus now, negative once expired.
	ResidualSeconds int64  `json:"residual_seconds"`
	Residual        string `json:"residual"`
	Status          Status `json:"status"`
	// Message explains a MISSING, ERROR or NOT YET VALID row.
	Message string `json:"message,omitempty"`
}

// Options select what a report covers and when it is evaluated.
type Options struct {
	DataDir string
	// Services are names as the user gave them (aliases allowed). Empty means every
	// service plus the CA files.
	Services []string
	// Now is the instant every status is decided at.
	Now time.Time
	// RenewBefore is the renewal window: a leaf certificate expiring within it is WARNING.
	RenewBefore time.Duration
	// CAWarnBefore is the CA warning window: a CA certificate (basicConstraints CA:TRUE,
	// in a CA file or in the bundle of a leaf file) expiring within it, or within
	// RenewBefore when that is longer, is WARNING.
	CAWarnBefore time.Duration
}

// Source is one certificate file the report looks at.
type Source struct {
	// Name is the path relative to the data dir, with slashes.
	Name string
	Path string
	// Service is the service the file belongs to, or ServiceCA for a CA file.
	Service string
}

// ServiceCA is the service of the CA files in a report.
const ServiceCA = "ca"

// ErrNoCertificates is returned when none of the selected certificate files exists.
var ErrNoCertificates = errors.New("no certificate file found")

// Sources lists the certificate files that the selected services have on the node
// type(s) present in dataDir: server files when <dataDir>/server/tls is a directory,
// agent files when <dataDir>/agent is. Without services, each node's CA files come
// first (certs.NodeCAFiles). Files are listed whether or not they exist. An unknown
// service name is an error from certs.ResolveServices.
func Sources(dataDir string, services []string) ([]Source, error) {
	resolved, err := certs.ResolveServices(services)
	if err != nil {
		return nil, err
	}
	l := datadir.Layout{Root: dataDir}
	var out []Source
	add := func(path, service string) {
		rel, err := filepath.Rel(dataDir, path)
		if err != nil {
			rel = path
		}
		out = append(out, Source{Name: filepath.ToSlash(rel), Path: path, Service: service})
	}
	nodes := []struct {
		node certs.Node
		dir  func(...string) string
	}{
		{certs.ServerNode, l.TLS},
		{certs.AgentNode, l.Agent},
	}
	for _, n := range nodes {
		if !isDir(n.dir()) {
			continue
		}
		if len(resolved) == 0 {
			for _, name := range certs.NodeCAFiles(n.node) {
				add(n.dir(filepath.FromSlash(name)), ServiceCA)
			}
		}
		for _, leaf := range certs.Select(n.node, resolved) {
			add(n.dir(filepath.FromSlash(leaf.Name+".crt")), leaf.Service)
		}
	}
	return out, nil
}

func isDir(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}

// Collect reads every certificate of every file of the selection and decides its
// status at o.Now. An expected file that does not exist becomes one MISSING row; a file
// that cannot be read or parsed becomes one ERROR row, with the reason. When no file
// exists at all the error wraps ErrNoCertificates and names the data dir.
func Collect(o Options) ([]Row, error) {
	srcs, err := Sources(o.DataDir, o.Services)
	if err != nil {
		return nil, err
	}
	rows := []Row{}
	found := 0
	for _, s := range srcs {
		data, err := os.ReadFile(s.Path)
		if errors.Is(err, fs.ErrNotExist) {
			rows = append(rows, problemRow(s, StatusMissing, "the file does not exist"))
			continue
		}
		found++
		if err != nil {
			rows = append(rows, problemRow(s, StatusError, err.Error()))
			continue
		}
		cs, err := pki.ParseCerts(data)
		if err != nil {
			rows = append(rows, problemRow(s, StatusError, err.Error()))
			continue
		}
		for i, c := range cs {
			r := Evaluate(s.Name, c, o.Now, o.RenewBefore, o.CAWarnBefore)
			r.Service = s.Service
			r.Index = i
			rows = append(rows, r)
		}
	}
	if found == 0 {
		return nil, noCertificates(o.DataDir, len(o.Services) > 0)
	}
	return rows, nil
}

func noCertificates(dataDir string, selected bool) error {
	l := datadir.Layout{Root: dataDir}
	if !isDir(l.TLS()) && !isDir(l.Agent()) {
		return fmt.Errorf("%w in data dir %s: neither %s nor %s exists (is --data-dir right?)", ErrNoCertificates, dataDir, l.TLS(), l.Agent())
	}
	if selected {
		return fmt.Errorf("%w for the selected services in data dir %s", ErrNoCertificates, dataDir)
	}
	return fmt.Errorf("%w in data dir %s", ErrNoCertificates, dataDir)
}

func problemRow(src Source, s Status, msg string) Row {
	return Row{File: src.Name, Service: src.Service, Usages: []string{}, Status: s, Message: msg}
}

// IsCA reports whether c is a CA certificate (basicConstraints CA:TRUE).
func IsCA(c *x509.Certificate) bool { return c.BasicConstraintsValid && c.IsCA }

// Evaluate builds the row of certificate c of file at time now (Service and Index are
// left for the caller).
//
// The status follows the renewal planner (certs.Plan): EXPIRED once now reaches
// NotAfter, NOT YET VALID before NotBefore, WARNING when the server would renew it
// (certs.Policy.InWindow, the window's edge included), otherwise OK. A CA certificate
// (IsCA) is never renewed: for it WARNING means that it expires within caWarnBefore,
// the CA warning window, or within renewBefore when that is longer (the leaves it
// signs are capped at its expiry and cannot be renewed any more), as the server warns.
func Evaluate(file string, c *x509.Certificate, now time.Time, renewBefore, caWarnBefore time.Duration) Row {
	window := renewBefore
	if IsCA(c) {
		window = max(caWarnBefore, renewBefore)
	}
	residual := c.NotAfter.Sub(now)
	sum := sha256.Sum256(c.Raw)
	r := Row{
		File:            file,
		CA:              IsCA(c),
		SHA256:          hex.EncodeToString(sum[:]),
		Subject:         c.Subject.String(),
		Issuer:          c.Issuer.String(),
		Usages:          Usages(c),
		Expires:         c.NotAfter.UTC().Format(time.RFC3339),
		ResidualSeconds: int64(residual / time.Second),
		Residual:        FormatResidual(residual),
		Status:          StatusOK,
	}
	switch {
	case !now.Before(c.NotAfter):
		r.Status = StatusExpired
	case now.Before(c.NotBefore):
		r.Status = StatusNotYetValid
		r.Message = "not valid before " + c.NotBefore.UTC().Format(time.RFC3339)
	case certs.Policy{Now: now, RenewBefore: window}.InWindow(c.NotAfter):
		r.Status = StatusWarning
	}
	return r
}

var extUsageNames = map[x509.ExtKeyUsage]string{
	x509.ExtKeyUsageAny:                            "Any",
	x509.ExtKeyUsageServerAuth:                     "ServerAuth",
	x509.ExtKeyUsageClientAuth:                     "ClientAuth",
	x509.ExtKeyUsageCodeSigning:                    "CodeSigning",
	x509.ExtKeyUsageEmailProtection:                "EmailProtection",
	x509.ExtKeyUsageIPSECEndSystem:                 "IPSECEndSystem",
	x509.ExtKeyUsageIPSECTunnel:                    "IPSECTunnel",
	x509.ExtKeyUsageIPSECUser:                      "IPSECUser",
	x509.ExtKeyUsageTimeStamping:                   "TimeStamping",
	x509.ExtKeyUsageOCSPSigning:                    "OCSPSigning",
	x509.ExtKeyUsageMicrosoftServerGatedCrypto:     "MicrosoftServerGatedCrypto",
	x509.ExtKeyUsageNetscapeServerGatedCrypto:      "NetscapeServerGatedCrypto",
	x509.ExtKeyUsageMicrosoftCommercialCodeSigning: "MicrosoftCommercialCodeSigning",
	x509.ExtKeyUsageMicrosoftKernelCodeSigning:     "MicrosoftKernelCodeSigning",
}

// Usages names what c may be used for: CertSign for a certificate that may sign
// certificates (keyCertSign, or a CA without a key usage extension), then its
// extended key usages in certificate order (ServerAuth, ClientAuth, …; an unknown one
// as its OID). The result is never nil.
func Usages(c *x509.Certificate) []string {
	out := []string{}
	if c.KeyUsage&x509.KeyUsageCertSign != 0 || (c.KeyUsage == 0 && c.BasicConstraintsValid && c.IsCA) {
		out = append(out, "CertSign")
	}
	for _, u := range c.ExtKeyUsage {
		if n, ok := extUsageNames[u]; ok {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("ExtKeyUsage(%d)", int(u)))
		}
	}
	for _, oid := range c.UnknownExtKeyUsage {
		out = append(out, oid.String())
	}
	return out
}

// FormatResidualShort renders a remaining lifetime in its most significant unit only,
// truncated toward zero: "364d", "5h", "4m", "30s"; "-3d" once expired.
func FormatResidualShort(d time.Duration) string {
	d = d.Truncate(time.Second)
	sign := ""
	if d < 0 {
		sign = "-"
		d = -d
	}
	switch {
	case d >= 24*time.Hour:
		return fmt.Sprintf("%s%dd", sign, d/(24*time.Hour))
	case d >= time.Hour:
		return fmt.Sprintf("%s%dh", sign, d/time.Hour)
	case d >= time.Minute:
		return fmt.Sprintf("%s%dm", sign, d/time.Minute)
	default:
		return fmt.Sprintf("%s%ds", sign, d/time.Second)
	}
}

// FormatResidual renders a remaining lifetime for people, truncated toward zero, with
// its two most significant units: "364d 23h", "5h 12m", "4m 30s"; a negative duration
// (already expired) gets a leading minus: "-3d 2h".
func FormatResidual(d time.Duration) string {
	d = d.Truncate(time.Second)
	sign := ""
	if d < 0 {
		sign = "-"
		d = -d
	}
	days := d / (24 * time.Hour)
	hours := (d % (24 * time.Hour)) / time.Hour
	minutes := (d % time.Hour) / time.Minute
	seconds := (d % time.Minute) / time.Second
	switch {
	case days > 0:
		return fmt.Sprintf("%s%dd %dh", sign, days, hours)
	case hours > 0:
		return fmt.Sprintf("%s%dh %dm", sign, hours, minutes)
	default:
		return fmt.Sprintf("%s%dm %ds", sign, minutes, seconds)
	}
}
