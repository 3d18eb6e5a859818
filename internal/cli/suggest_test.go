package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAddCommandFlags(t *testing.T) {
	const local, sup = " --data-dir=/d", " --server=https://10.0.0.1:9999"
	for _, tc := range []struct{ in, want string }{
		{"x: bad; remove the certificate and key, or run `kpki certificate rotate --service admin`, to have them issued again",
			"x: bad; remove the certificate and key, or run `kpki certificate rotate --service admin --data-dir=/d`, to have them issued again"},
		{"CA expired; rotate the CA (kpki certificate rotate-ca)", "CA expired; rotate the CA (kpki certificate rotate-ca --data-dir=/d --server=https://10.0.0.1:9999)"},
		{"use the cluster's token, or `kpki token rotate` to change it", "use the cluster's token, or `kpki token rotate --data-dir=/d --server=https://10.0.0.1:9999` to change it"},
		{"give the agent the cluster's current token (kpki token show on a server)", "give the agent the cluster's current token (kpki token show on a server)"},
		{"already `kpki certificate rotate --data-dir=/x`", "already `kpki certificate rotate --data-dir=/x`"},
		{"(a running agent or `kpki certificate rotate`) holds the lock", "(a running agent or `kpki certificate rotate --data-dir=/d`) holds the lock"},
		{"restart kpki on all nodes", "restart kpki on all nodes"},
		{"mismatched (kpki certificate rotate`", "mismatched (kpki certificate rotate`"},
	} {
		if got := addCommandFlags(tc.in, local, sup); got != tc.want {
			t.Errorf("addCommandFlags(%q)\n got %q\nwant %q", tc.in, got, tc.want)
		}
	}
	if got := addCommandFlags("(kpki certificate rotate-ca)", "", ""); got != "(kpki certificate rotate-ca)" {
		t.Errorf("no flags: %q", got)
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{"/var/lib/x": "/var/lib/x", "/tmp/a b": "'/tmp/a b'", "it's": `'it'\''s'`, "": "''"} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestSuggestedFlagsInLogs: a server given its data dir and supervisor port on the
// command line logs the commands it suggests with both; from the config file only the data
// dir is added (the printed command reads the same file for the port).
func TestSuggestedFlagsInLogs(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("supervisor-port: 4444\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"server", "--data-dir", "/srv/kpki", "--supervisor-port", "12345", "--bind-address", "10.1.2.3"},
			"(kpki certificate rotate-ca --data-dir=/srv/kpki --config=" + cfg + " --server=https://10.1.2.3:12345)"},
		{[]string{"server", "--data-dir", "/srv/kpki", "--config", cfg},
			"(kpki certificate rotate-ca --data-dir=/srv/kpki --config=" + cfg + ")"},
		{[]string{"server"}, "(kpki certificate rotate-ca --config=" + cfg + ")"},
	} {
		t.Setenv("KPKI_CONFIG", cfg)
		var out, errOut bytes.Buffer
		root := newRoot(&out, &errOut)
		cmd, _, err := root.Find(tc.args)
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.ParseFlags(tc.args[1:]); err != nil {
			t.Fatal(err)
		}
		if err := applySources(cmd); err != nil {
			t.Fatal(err)
		}
		newLogger(cmd).Warn("CA certificate has expired; rotate the CA (kpki certificate rotate-ca)", "file", "x")
		if !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("kpki %v logged %q, want %q", tc.args, errOut.String(), tc.want)
		}
	}
}

// TestSuggestedFlagsInErrors: an error of generate-service-key that names rotate-ca
// carries the data dir the command was given.
func TestSuggestedFlagsInErrors(t *testing.T) {
	dd := filepath.Join(t.TempDir(), "data")
	tls := filepath.Join(dd, "server", "tls")
	if err := os.MkdirAll(tls, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tls, "service.key"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stderr, _ := runIsolated(t, nil, "certificate", "generate-service-key", "--data-dir", dd, "--path", filepath.Join(dd, "server"))
	// runIsolated names its config file in KPKI_CONFIG: the printed command names it too.
	if want := "`kpki certificate rotate-ca --data-dir=" + dd + " --config=" + os.Getenv("KPKI_CONFIG") + "`"; code != 1 || !strings.Contains(stderr, want) {
		t.Errorf("exit %d, stderr %q; want %q", code, stderr, want)
	}
}
