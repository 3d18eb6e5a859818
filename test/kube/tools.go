//go:build tools

// Package kube pins the Kubernetes control-plane commands that the end-to-end suite
// builds from the Go module proxy.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
