// Package e2e holds the end-to-end tests of the kpki binary: they build cmd/kpki, run
// `kpki server` as a real process, and check its data directory, its supervisor API and its
// datastore with real tools (openssl, kubectl, Debian's etcd, an etcd v3 client).
//
// Requirements on the machine: openssl, kubectl, bash, and /usr/bin/etcd (Debian packages
// etcd-server and etcd-client, etcd 3.4).
package e2e
