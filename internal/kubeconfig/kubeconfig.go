// Package kubeconfig renders the kubeconfig files kpki writes: ones that point at
// certificate and key files on disk, and self-contained ones with the data embedded.
// Output is deterministic, so an unchanged kubeconfig is never rewritten.
package kubeconfig

import (
	"sigs.k8s.io/yaml"
)

// Files describes a kubeconfig whose credentials are files on disk.
type Files struct {
	Server         string
	CAFile         string
	ClientCertFile string
	ClientKeyFile  string
}

// Data describes a self-contained kubeconfig.
type Data struct {
	Server     string
	CA         []byte
	ClientCert []byte
	ClientKey  []byte
}

type config struct {
	APIVersion     string         `json:"apiVersion"`
	Kind           string         `json:"kind"`
	Clusters       []namedCluster `json:"clusters"`
	Contexts       []namedContext `json:"contexts"`
	CurrentContext string         `json:"current-context"`
	Preferences    struct{}       `json:"preferences"`
	Users          []namedUser    `json:"users"`
}

type namedCluster struct {
	Name    string  `json:"name"`
	Cluster cluster `json:"cluster"`
}

type cluster struct {
	Server                   string `json:"server"`
	CertificateAuthority     string `json:"certificate-authority,omitempty"`
	CertificateAuthorityData []byte `json:"certificate-authority-data,omitempty"`
}

type namedContext struct {
	Name    string  `json:"name"`
	Context context `json:"context"`
}

type context struct {
	Cluster   string `json:"cluster"`
	User      string `json:"user"`
	Namespace string `json:"namespace,omitempty"`
}

type namedUser struct {
	Name string `json:"name"`
	User user   `json:"user"`
}

type user struct {
	ClientCertificate     string `json:"client-certificate,omitempty"`
	ClientKey             string `json:"client-key,omitempty"`
	ClientCertificateData []byte `json:"client-certificate-data,omitempty"`
	ClientKeyData         []byte `json:"client-key-data,omitempty"`
}

func render(c cluster, u user) ([]byte, error) {
	return yaml.Marshal(config{
		APIVersion:     "v1",
		Kind:           "Config",
		Clusters:       []namedCluster{{Name: "default", Cluster: c}},
		Contexts:       []namedContext{{Name: "default", Context: context{Cluster: "default", User: "default"}}},
		CurrentContext: "default",
		Users:          []namedUser{{Name: "default", User: u}},
	})
}

// RenderFiles renders a kubeconfig that references files.
func RenderFiles(f Files) ([]byte, error) {
	return render(cluster{Server: f.Server, CertificateAuthority: f.CAFile},
		user{ClientCertificate: f.ClientCertFile, ClientKey: f.ClientKeyFile})
}

// RenderData renders a self-contained kubeconfig.
func RenderData(d Data) ([]byte, error) {
	return render(cluster{Server: d.Server, CertificateAuthorityData: d.CA},
		user{ClientCertificateData: d.ClientCert, ClientKeyData: d.ClientKey})
}
