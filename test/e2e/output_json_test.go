package e2e

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// The documented -o json objects of token show, token rotate and certificate rotate-ca.
type tokenShowJSON struct {
	CAHash          string `json:"ca_hash"`
	CAFile          string `json:"ca_file"`
	ServerToken     string `json:"server_token"`
	ServerTokenFile string `json:"server_token_file"`
	AgentToken      string `json:"agent_token"`
	AgentTokenFile  string `json:"agent_token_file"`
}

type tokenRotateJSON struct {
	ServerToken string   `json:"server_token"`
	CAHash      string   `json:"ca_hash"`
	Warnings    []string `json:"warnings"`
}

type certInfoJSON struct {
	Subject string `json:"subject"`
	Issuer  string `json:"issuer"`
	SHA256  string `json:"sha256"`
	Expires string `json:"expires"`
}

type rotateCAJSON struct {
	DryRun  bool `json:"dry_run"`
	Saved   bool `json:"saved"`
	Changes []struct {
		File     string        `json:"file"`
		Old      *certInfoJSON `json:"old"`
		New      *certInfoJSON `json:"new"`
		KeyCount int           `json:"key_count"`
	} `json:"changes"`
	Unchanged    []string `json:"unchanged"`
	NotStaged    []string `json:"not_staged"`
	TokensChange bool     `json:"tokens_change"`
	OldCAHash    string   `json:"old_ca_hash"`
	NewCAHash    string   `json:"new_ca_hash"`
	ServerToken  string   `json:"server_token"`
	AgentToken   string   `json:"agent_token"`
}

// decodeStrict decodes a JSON document that must hold only the documented fields.
func decodeStrict(t *testing.T, what, doc string, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s does not follow the documented schema: %v\n%s", what, err, doc)
	}
}

// TestOutputJSON: token show, rotate-ca (dry run and real) and token rotate print their
// documented objects with -o json (and the same with -o yaml); what they hold agrees with
// the files and with the text output, tokens appear only where the text prints them, and a
// dry run changes nothing.
func TestOutputJSON(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "data")
	s := startServer(t, dd)
	s.WaitReady(t)
	tokenFile := func(name string) string {
		return strings.TrimSpace(string(readFile(t, filepath.Join(dd, "server", name))))
	}

	var show tokenShowJSON
	decodeStrict(t, "token show -o json", kpkiOK(t, "token", "show", "-o", "json", "--data-dir", dd).stdout, &show)
	text := kpkiOK(t, "token", "show", "--data-dir", dd).stdout
	if want := "server token: " + show.ServerToken + "\nagent token: " + show.AgentToken + "\n"; text != want {
		t.Errorf("token show text %q, json tokens %q %q", text, show.ServerToken, show.AgentToken)
	}
	if show.ServerToken != tokenFile("token") || show.AgentToken != tokenFile("agent-token") ||
		!strings.HasPrefix(show.ServerToken, "K10"+show.CAHash+"::server:") || len(show.CAHash) != 64 ||
		show.ServerTokenFile != filepath.Join(dd, "server", "token") || show.AgentTokenFile != filepath.Join(dd, "server", "agent-token") ||
		show.CAFile != filepath.Join(dd, "server", "tls", "server-ca.crt") {
		t.Errorf("token show -o json = %+v", show)
	}
	var showYAML tokenShowJSON
	if err := yaml.UnmarshalStrict([]byte(kpkiOK(t, "token", "show", "-o", "yaml", "--data-dir", dd).stdout), &showYAML); err != nil || showYAML != show {
		t.Errorf("token show -o yaml = %+v, %v; want the json object %+v", showYAML, err, show)
	}
	r := runKpki(t, nil, "token", "show", "-o", "wide", "--data-dir", dd)
	assertRefused(t, r, anyOf(`unknown output format "wide"; valid formats: text, json, yaml`))
	if r.stdout != "" {
		t.Errorf("a refused -o printed %q", r.stdout)
	}

	// rotate-ca of cross-signed CAs: a dry run first.
	cross := kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", dd)
	stage := filepath.Join(dd, "server", "rotate-ca")
	before := hashTree(t, dd)
	r = rotateCA(t, s, stage, "--dry-run", "-o", "json")
	if r.code != 0 {
		t.Fatalf("rotate-ca --dry-run -o json:\n%s", r)
	}
	var dry rotateCAJSON
	decodeStrict(t, "rotate-ca --dry-run -o json", r.stdout, &dry)
	assertTreeUnchanged(t, "rotate-ca --dry-run -o json", before, hashTree(t, dd))
	if !dry.DryRun || dry.Saved || !dry.TokensChange || dry.OldCAHash != show.CAHash || dry.NewCAHash == show.CAHash ||
		dry.ServerToken != "" || dry.AgentToken != "" || dry.Unchanged == nil || dry.NotStaged == nil {
		t.Errorf("dry run object = %+v", dry)
	}
	// The CA files as they were before the rotation: the server applies it live, so the
	// disk may hold the new ones by the time rotate-ca's output is checked.
	previous := map[string]*x509.Certificate{}
	for _, ca := range caFiles {
		previous["tls/"+ca+".crt"] = readCerts(t, filepath.Join(dd, "server", "tls", ca+".crt"))[0]
	}
	checkChanges := func(what string, rep rotateCAJSON) {
		t.Helper()
		files := map[string]bool{}
		for _, ch := range rep.Changes {
			files[ch.File] = true
			if strings.HasSuffix(ch.File, ".key") {
				// A key file: its count of keys (service.key: the new one and the current).
				if least := map[bool]int{true: 2, false: 1}[strings.HasSuffix(ch.File, "service.key")]; ch.KeyCount < least || ch.New != nil || ch.Old != nil {
					t.Errorf("%s: key file change %+v", what, ch)
				}
				continue
			}
			if ch.Old == nil || ch.New == nil {
				t.Errorf("%s: %s lacks old or new", what, ch.File)
				continue
			}
			base := strings.TrimPrefix(ch.File, "server/")
			staged := readCerts(t, filepath.Join(stage, base))[0]
			current, ok := previous[base]
			if !ok {
				current = readCerts(t, filepath.Join(dd, "server", base))[0]
			}
			sum := sha256.Sum256(staged.Raw)
			old := sha256.Sum256(current.Raw)
			if !strings.EqualFold(strings.ReplaceAll(ch.New.SHA256, ":", ""), hex.EncodeToString(sum[:])) ||
				!strings.EqualFold(strings.ReplaceAll(ch.Old.SHA256, ":", ""), hex.EncodeToString(old[:])) ||
				ch.New.Expires != staged.NotAfter.UTC().Format(time.RFC3339) || ch.New.Subject != staged.Subject.String() {
				t.Errorf("%s: %s: %+v / %+v, want the staged %s and the current %s", what, ch.File, ch.Old, ch.New, staged.Subject, current.Subject)
			}
		}
		for _, ca := range caFiles {
			if !files["tls/"+ca+".crt"] && !files["server/tls/"+ca+".crt"] {
				t.Errorf("%s: no change listed for %s.crt: %v", what, ca, files)
			}
		}
	}
	checkChanges("dry run", dry)

	r = rotateCA(t, s, stage, "-o", "json")
	if r.code != 0 {
		t.Fatalf("rotate-ca -o json:\n%s", r)
	}
	var done rotateCAJSON
	decodeStrict(t, "rotate-ca -o json", r.stdout, &done)
	checkChanges("rotation", done)
	newServer, newAgent := printedServerTokenRE.FindString(cross.stdout), printedAgentTokenRE.FindString(cross.stdout)
	if done.DryRun || !done.Saved || !done.TokensChange || done.NewCAHash != dry.NewCAHash ||
		done.ServerToken == "" || done.ServerToken != newServer || done.AgentToken != newAgent ||
		!strings.HasPrefix(done.ServerToken, "K10"+done.NewCAHash+"::server:") {
		t.Errorf("rotation object = %+v; cross-sign-ca printed %q %q", done, newServer, newAgent)
	}

	// After the restart token show carries the new hash, and token rotate's object the new
	// token, as written to the token file.
	s.Stop(t)
	s = startServerOn(t, s.Ports, dd)
	s.WaitReady(t)
	decodeStrict(t, "token show -o json", kpkiOK(t, "token", "show", "-o", "json", "--data-dir", dd).stdout, &show)
	if show.CAHash != done.NewCAHash || show.ServerToken != done.ServerToken {
		t.Errorf("after the restart token show = %+v, want the rotation's %s", show, done.NewCAHash)
	}
	r = kpkiOK(t, "token", "rotate", "-o", "json", "--server", s.SupervisorURL(), "--data-dir", dd)
	var rot tokenRotateJSON
	decodeStrict(t, "token rotate -o json", r.stdout, &rot)
	if rot.ServerToken != tokenFile("token") || rot.ServerToken == show.ServerToken || rot.CAHash != show.CAHash ||
		!strings.HasPrefix(rot.ServerToken, "K10"+rot.CAHash+"::server:") || rot.Warnings == nil || len(rot.Warnings) != 0 {
		t.Errorf("token rotate -o json = %+v, token file %q", rot, tokenFile("token"))
	}
	var rotYAML tokenRotateJSON
	r = kpkiOK(t, "token", "rotate", "-o", "yaml", "--server", s.SupervisorURL(), "--data-dir", dd)
	if err := yaml.UnmarshalStrict([]byte(r.stdout), &rotYAML); err != nil || rotYAML.ServerToken != tokenFile("token") || rotYAML.CAHash != rot.CAHash {
		t.Errorf("token rotate -o yaml = %+v, %v\n%s", rotYAML, err, r.stdout)
	}
	s.Stop(t)
}
