package node

import (
	"regexp"
	"strings"
	"testing"
)

// reference is the definition ValidName implements, as a regular expression.
var reference = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

func TestValidName(t *testing.T) {
	cases := []string{
		"", "a", "node-1", "node-1.example", "a.b.c", "-a", "a-", "a..b", ".a", "a.", "A", "node_1", "nöde",
		"a b", "1", "1.2.3.4", "x-" + strings.Repeat("y", 60) + "z", strings.Repeat("a", 63), strings.Repeat("a", 64),
		strings.Repeat("a.", 126) + "a", strings.Repeat("a.", 126) + "ab", "a.-b", "a.b-", "a/b",
	}
	for _, c := range cases {
		want := len(c) <= 253 && reference.MatchString(c)
		if got := ValidName(c); got != want {
			t.Errorf("ValidName(%q) = %v, want %v", c, got, want)
		}
	}
}

func FuzzValidName(f *testing.F) {
	for _, s := range []string{"a", "node-1.example", "-a", "a..b", strings.Repeat("a", 64)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := len(s) <= 253 && len(s) > 0 && reference.MatchString(s)
		if got := ValidName(s); got != want {
			t.Errorf("ValidName(%q) = %v, want %v", s, got, want)
		}
	})
}
