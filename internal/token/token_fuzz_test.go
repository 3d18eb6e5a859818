package token

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// passwordOf returns the part of the trimmed s that Parse takes as the password,
// whether or not it is valid, and the text before it.
func passwordOf(s string) (prefix, pw string) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, Prefix) {
		return "", s
	}
	_, creds, ok := strings.Cut(s[len(Prefix):], separator)
	if !ok {
		return s, ""
	}
	if _, p, hasUser := strings.Cut(creds, ":"); hasUser {
		pw = p
	} else {
		pw = creds
	}
	return s[:len(s)-len(pw)], pw
}

// otherPassword returns a password unrelated to pw that Parse judges the same way:
// valid when pw is, invalid when pw is.
func otherPassword(pw string) string {
	if checkPassword(pw) == nil {
		return "Zq9"
	}
	return "Zq9 ,"
}

// FuzzParse checks that Parse never panics, that its errors wrap one of the package's
// errors and never depend on the password (so never contain it), and that every token it accepts formats back
// (String, and Format for a secure token) to a text that parses to the same token.
func FuzzParse(f *testing.F) {
	raw, err := os.ReadFile(filepath.Join(fixtureFS, "token"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(raw))
	for _, s := range []string{
		"K10" + hash + "::server:pw",
		"K10" + hash + "::pw",
		"K10" + strings.ToUpper(hash) + "::node:pw\n",
		"K10" + hash + ":::pw",
		"K10" + hash + "::server:a:b",
		"K10" + hash + "::",
		"K10" + hash + "::server:",
		"K10" + hash[:63] + "::server:pw",
		"K10" + hash[:63] + "g::server:pw",
		"K10" + hash,
		"K10",
		"shortpassword",
		"short password",
		"pass,word",
		"pass\x00word",
		"\u00a0pw\u2028",
		"",
		"   ",
	} {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, s string) {
		tok, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidFormat) && !errors.Is(err, ErrInvalidHashLength) {
				t.Fatalf("Parse(%q) error %q wraps neither ErrInvalidFormat nor ErrInvalidHashLength", s, err)
			}
			if tok != (Token{}) {
				t.Fatalf("Parse(%q) returned %+v with its error", s, tok)
			}
			// The error must not depend on the password: the same text with
			// another password of the same validity gives the same error.
			if prefix, pw := passwordOf(s); pw != "" {
				other := prefix + otherPassword(pw)
				_, err2 := Parse(other)
				if err2 == nil || err2.Error() != err.Error() {
					t.Fatalf("Parse(%q) error %q depends on the password: Parse(%q) gives %v", s, err, other, err2)
				}
			}
			if strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("Parse(%q) error %q is not one line", s, err)
			}
			return
		}

		if tok.Password == "" {
			t.Fatalf("Parse(%q) = %+v: empty password accepted", s, tok)
		}
		if !csvSafe(tok.Password) || !csvSafe(tok.Username) {
			t.Fatalf("Parse(%q) = %+v: credentials unfit for the passwd file", s, tok)
		}
		if !tok.Secure() {
			if tok.Password != strings.TrimSpace(s) || tok.Username != "" {
				t.Fatalf("Parse(%q) = %+v: a short token is the whole trimmed text", s, tok)
			}
		} else if len(tok.CAHash) != hashLen || strings.ToLower(tok.CAHash) != tok.CAHash || !isHex(tok.CAHash) {
			t.Fatalf("Parse(%q) = %+v: CA hash is not 64 lowercase hex characters", s, tok)
		}

		formatted := []string{tok.Secret()}
		if tok.Secure() {
			formatted = append(formatted, Format(tok.CAHash, tok.Username, tok.Password))
		}
		for _, text := range formatted {
			again, err := Parse(text)
			if err != nil {
				t.Fatalf("Parse(%q) = %+v, formatted as %q, which does not parse: %v", s, tok, text, err)
			}
			if again != tok {
				t.Fatalf("Parse(%q) = %+v, formatted as %q, which parses to %+v", s, tok, text, again)
			}
		}
	})
}
