package cli

import (
	"bytes"
	"testing"
)

func TestVersionFlagMatchesVersionCommand(t *testing.T) {
	out := func(args ...string) string {
		var stdout, stderr bytes.Buffer
		if code := Execute(args, &stdout, &stderr); code != 0 {
			t.Fatalf("kpki %v: exit code %d, stderr %q", args, code, stderr.String())
		}
		return stdout.String()
	}
	want := out("version")
	if want != "kpki "+version()+"\n" {
		t.Fatalf("kpki version printed %q", want)
	}
	if got := out("--version"); got != want {
		t.Fatalf("kpki --version printed %q, kpki version %q", got, want)
	}
}
