package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzConfig feeds arbitrary files to the config file parser and to applySources
// reading them with --config. Neither panics; a file that is not YAML is an error;
// every error and every warning names the file, on one line; a string flag set from
// the file holds the value as written.
func FuzzConfig(f *testing.F) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "KPKI_") {
			f.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	for _, s := range []string{
		"token: K10106177c4f95a6031e1acb0a174670830e395335c8730c119128ab59e857e166931::server:7f3c9a1e5b2d4c6f8a0b1c2d3e4f5a6b\n" +
			"data-dir: /var/lib/kpki\ntls-san:\n  - kpki.example\n  - 10.0.0.1\nsupervisor-port: 9345\n" +
			"renew-interval: 1h\netcd-unsafe-no-fsync: false\nmetrics-address: \"\"\n",
		"tls-san: [a.example, null, b.example]\nnode-ip: 10.0.0.5,10.0.0.6\n",
		"token: 0123\ntls-san: [1e3, 0x1F, yes, ~]\n",
		"token: \"K10abc::server:secret\"\nserver: 'https://127.0.0.1:9345'\n",
		"token: |\n  multi\n  line\n",
		"token: &a x\nserver: *a\n",
		"<<: {token: x}\n",
		"token: a\ntoken: b\n",
		"token: null\ntoken: c\n",
		"? [a, b]\n: c\n",
		"token: [unclosed\n",
		"token: a\n  data-dir: b\n",
		"- token\n- data-dir\n",
		"token: {a: 1}\n",
		"tls-san: [[a]]\n",
		"supervisor-port: abc\n",
		"renew-interval: soon\n",
		"tls-san: '\"a'\n",
		"unknown-key: 1\n\"weird\\nkey\": 2\n",
		"--- \ntoken: a\n---\ntoken: b\n",
		"%YAML 1.2\n---\ntoken: !!binary aGVsbG8=\n",
		"token: !custom x\n",
		"\t token: tab\n",
		"\ufefftoken: bom\n",
		"token: \"\\xff\"\n",
		"",
		"# comment only\n",
		"\x00",
	} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		values, parseErr := parseConfig(data)
		var doc yaml.Node
		if yamlErr := yaml.Unmarshal(data, &doc); yamlErr != nil && parseErr == nil {
			t.Fatalf("parseConfig accepted a file that is not YAML (%v)", yamlErr)
		}

		path := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd, stderr := newTestCmd()
		if err := cmd.ParseFlags([]string{"--config", path}); err != nil {
			t.Fatal(err)
		}
		err := applySources(cmd)
		if parseErr != nil && err == nil {
			t.Fatalf("parseConfig failed (%v) but applySources did not", parseErr)
		}
		if err != nil {
			msg := err.Error()
			if !strings.HasPrefix(msg, "config file "+path+": ") {
				t.Fatalf("error %q does not start by naming the file %s", msg, path)
			}
			if strings.ContainsAny(msg, "\n\r") {
				t.Fatalf("error %q is not one line", msg)
			}
		}
		for _, line := range strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n") {
			if line != "" && (!strings.Contains(line, "warning: config file "+path+": ") || strings.Contains(line, "\r")) {
				t.Fatalf("output line %q is not a warning naming the file", line)
			}
		}
		if err != nil {
			return
		}

		// A string flag takes the last value of the first entry of its key that has
		// a value (once set from the file, a flag is not set again).
		for _, name := range []string{"token", "server", "data-dir", "metrics-address"} {
			want, found := "", false
			for _, kv := range values {
				if kv.key == name && len(kv.values) > 0 {
					want, found = kv.values[len(kv.values)-1], true
					break
				}
			}
			fl := cmd.Flags().Lookup(name)
			if !found {
				if fl.Changed || fl.Value.String() != fl.DefValue {
					t.Fatalf("flag %s = %q though the file gives it no value", name, fl.Value)
				}
				continue
			}
			if got := fl.Value.String(); got != want {
				t.Fatalf("flag %s = %q, the file says %q", name, got, want)
			}
		}
	})
}
