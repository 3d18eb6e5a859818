// Package datadir owns kpki's on-disk layout: where every file lives, and how files are
// written. Every write is atomic (temp file in the same directory, fsync, rename, fsync
// of the directory); a certificate and a new key for it are replaced through a small
// journal so that a crash never leaves a certificate next to a key it does not match.
// Key files are 0600 and their directories 0700. The package knows nothing about
// certificates' contents.
package datadir

import "path/filepath"

// Defaults of every kpki command, RKE2's conventions with the product name kpki: the
// data dir (where K3s's generate-custom-ca-certs.sh with PRODUCT=kpki writes too) and
// the config file.
const (
	DefaultRoot       = "/var/lib/rancher/kpki"
	DefaultConfigFile = "/etc/rancher/kpki/config.yaml"
)

// Layout resolves the paths of one data directory.
type Layout struct {
	Root string
}

// Server returns <root>/server joined with elem.
func (l Layout) Server(elem ...string) string {
	return filepath.Join(append([]string{l.Root, "server"}, elem...)...)
}

// TLS returns <root>/server/tls joined with elem.
func (l Layout) TLS(elem ...string) string { return l.Server(append([]string{"tls"}, elem...)...) }

// Cred returns <root>/server/cred joined with elem.
func (l Layout) Cred(elem ...string) string { return l.Server(append([]string{"cred"}, elem...)...) }

// Agent returns <root>/agent joined with elem.
func (l Layout) Agent(elem ...string) string {
	return filepath.Join(append([]string{l.Root, "agent"}, elem...)...)
}

// Fixed files of a server data dir.
func (l Layout) TokenFile() string      { return l.Server("token") }
func (l Layout) AgentTokenFile() string { return l.Server("agent-token") }
func (l Layout) NodeTokenFile() string  { return l.Server("node-token") }
func (l Layout) PasswdFile() string     { return l.Cred("passwd") }
func (l Layout) LockFile() string       { return l.Server("kpki.lock") }
func (l Layout) AuditLog() string       { return l.Server("audit.log") }
func (l Layout) EtcdDir() string        { return l.Server("db", "etcd") }
func (l Layout) LogDir() string         { return l.Server("logs") }
func (l Layout) ForceRestart() string   { return filepath.Join(l.Root, "force-restart") }
