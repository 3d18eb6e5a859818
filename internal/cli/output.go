package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/kpki/kpki/internal/rotation"
)

// Output formats of rotate-ca, token show and token rotate.
const (
	outputText = "text"
	outputJSON = "json"
	outputYAML = "yaml"
)

// outputFlag registers -o/--output for a command that prints a report object.
func outputFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVarP(p, "output", "o", outputText, "output format: text, json or yaml (the objects are described in docs/operations.md)")
}

// checkOutput validates an -o value.
func checkOutput(s string) error {
	switch s {
	case outputText, outputJSON, outputYAML:
		return nil
	}
	return fmt.Errorf("unknown output format %q; valid formats: %s, %s, %s", s, outputText, outputJSON, outputYAML)
}

// writeReport prints v as indented JSON or as YAML (the same field names).
func writeReport(w io.Writer, format string, v any) error {
	var b []byte
	var err error
	if format == outputYAML {
		b, err = yaml.Marshal(v)
	} else {
		b, err = json.MarshalIndent(v, "", "  ")
		b = append(b, '\n')
	}
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// certInfo describes the first certificate of a CA file in a rotate-ca report.
type certInfo struct {
	Subject string `json:"subject"`
	Issuer  string `json:"issuer"`
	SHA256  string `json:"sha256"`
	// Expires is NotAfter in RFC 3339, UTC.
	Expires string `json:"expires"`
}

func certInfoOf(s *rotation.CertSummary) *certInfo {
	if s == nil {
		return nil
	}
	return &certInfo{Subject: s.Subject, Issuer: s.Issuer, SHA256: s.Fingerprint, Expires: s.NotAfter.UTC().Format(time.RFC3339)}
}

// rotateCAChange is one file rotate-ca changed (or would change).
type rotateCAChange struct {
	File string    `json:"file"`
	Old  *certInfo `json:"old"`
	New  *certInfo `json:"new"`
	// KeyCount is the number of keys a changed key file holds, 0 for a certificate file.
	KeyCount int `json:"key_count"`
}

// rotateCAReport is what `rotate-ca -o json|yaml` prints on success.
type rotateCAReport struct {
	DryRun       bool             `json:"dry_run"`
	Saved        bool             `json:"saved"`
	Changes      []rotateCAChange `json:"changes"`
	Unchanged    []string         `json:"unchanged"`
	NotStaged    []string         `json:"not_staged"`
	TokensChange bool             `json:"tokens_change"`
	OldCAHash    string           `json:"old_ca_hash"`
	NewCAHash    string           `json:"new_ca_hash"`
	// ServerToken and AgentToken are the new tokens, set only when the rotation was saved
	// and changed the CA hash (when the text output prints them); "" otherwise.
	ServerToken string `json:"server_token"`
	AgentToken  string `json:"agent_token"`
}

// tokenShowReport is what `token show -o json|yaml` prints.
type tokenShowReport struct {
	CAHash          string `json:"ca_hash"`
	CAFile          string `json:"ca_file"`
	ServerToken     string `json:"server_token"`
	ServerTokenFile string `json:"server_token_file"`
	AgentToken      string `json:"agent_token"`
	AgentTokenFile  string `json:"agent_token_file"`
}

// tokenRotateReport is what `token rotate -o json|yaml` prints.
type tokenRotateReport struct {
	ServerToken string `json:"server_token"`
	// CAHash is the CA hash the new token carries.
	CAHash string `json:"ca_hash"`
	// Warnings name files of the answering server that could not be written although
	// the rotation was stored (also printed on stderr).
	Warnings []string `json:"warnings"`
}
