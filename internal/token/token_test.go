package token

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	hash      = "6177c4f95a6031e1acb0a174670830e395335c8730c119128ab59e857e166931"
	fixtureFS = "../bootstrap/testdata/k3s-bootstrap"
)

func TestParse(t *testing.T) {
	upper := strings.ToUpper(hash)
	tests := []struct {
		name    string
		in      string
		want    Token
		wantErr error
	}{
		{name: "secure with user", in: "K10" + hash + "::server:s3cret",
			want: Token{CAHash: hash, Username: "server", Password: "s3cret"}},
		{name: "secure agent token", in: "K10" + hash + "::node:abc",
			want: Token{CAHash: hash, Username: "node", Password: "abc"}},
		{name: "secure without user", in: "K10" + hash + "::s3cret",
			want: Token{CAHash: hash, Password: "s3cret"}},
		{name: "secure with empty user", in: "K10" + hash + ":::s3cret",
			want: Token{CAHash: hash, Password: "s3cret"}},
		{name: "password split on first colon", in: "K10" + hash + "::server:a:b:c",
			want: Token{CAHash: hash, Username: "server", Password: "a:b:c"}},
		{name: "upper-case hash is lower-cased", in: "K10" + upper + "::server:pw",
			want: Token{CAHash: hash, Username: "server", Password: "pw"}},
		{name: "surrounding whitespace trimmed", in: "  K10" + hash + "::server:pw\n",
			want: Token{CAHash: hash, Username: "server", Password: "pw"}},
		{name: "short token", in: "abc123",
			want: Token{Password: "abc123"}},
		{name: "short token with trailing newline", in: "abc123\r\n",
			want: Token{Password: "abc123"}},
		{name: "short token with colon is all password", in: "server:abc",
			want: Token{Password: "server:abc"}},
		{name: "short token lookalike k10 lower-case", in: "k10abc",
			want: Token{Password: "k10abc"}},

		{name: "hash too short", in: "K10" + hash[:63] + "::server:pw", wantErr: ErrInvalidHashLength},
		{name: "hash too long", in: "K10" + hash + "0::server:pw", wantErr: ErrInvalidHashLength},
		{name: "hash empty", in: "K10::server:pw", wantErr: ErrInvalidHashLength},
		{name: "hash not hex", in: "K10" + hash[:63] + "g::server:pw", wantErr: ErrInvalidHashLength},
		{name: "secure without separator", in: "K10" + hash + ":server:pw", wantErr: ErrInvalidFormat},
		{name: "secure prefix only", in: "K10", wantErr: ErrInvalidFormat},
		{name: "secure empty credentials", in: "K10" + hash + "::", wantErr: ErrInvalidFormat},
		{name: "secure empty password", in: "K10" + hash + "::server:", wantErr: ErrInvalidFormat},
		{name: "secure password with comma", in: "K10" + hash + "::server:pw,admin", wantErr: ErrInvalidFormat},
		{name: "secure password with space", in: "K10" + hash + "::server:pw x", wantErr: ErrInvalidFormat},
		{name: "secure password with tab", in: "K10" + hash + "::server:pw\tx", wantErr: ErrInvalidFormat},
		{name: "secure password with control char", in: "K10" + hash + "::server:pw\x00x", wantErr: ErrInvalidFormat},
		{name: "user with comma", in: "K10" + hash + "::a,b:pw", wantErr: ErrInvalidFormat},
		{name: "user with space", in: "K10" + hash + "::a b:pw", wantErr: ErrInvalidFormat},
		{name: "empty string", in: "", wantErr: ErrInvalidFormat},
		{name: "whitespace only", in: " \n\t", wantErr: ErrInvalidFormat},
		{name: "short token with comma", in: "pw,x", wantErr: ErrInvalidFormat},
		{name: "short token with inner space", in: "pw x", wantErr: ErrInvalidFormat},
		{name: "short token with non-ascii space", in: "pw\u00a0x", wantErr: ErrInvalidFormat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.in)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Parse(%q) error = %v, want %v", tc.in, err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr.Error()) {
					t.Errorf("error %q does not contain %q", err, tc.wantErr)
				}
				if got != (Token{}) {
					t.Errorf("Parse(%q) returned %+v with an error", tc.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Fatalf("Parse(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseErrorsDoNotLeakPassword(t *testing.T) {
	const pw = "Sup3rS3cretValue"
	inputs := []string{
		"K10" + hash[:10] + "::server:" + pw,
		"K10" + hash[:63] + "z::server:" + pw,
		"K10" + pw,
		"K10" + hash + "::server:" + pw + ",x",
		"K10" + hash + "::server:" + pw + " x",
		pw + ",x",
		pw + " " + pw,
	}
	for _, in := range inputs {
		_, err := Parse(in)
		if err == nil {
			t.Fatalf("Parse(%q) succeeded, want an error", in)
		}
		if strings.Contains(err.Error(), pw) {
			t.Errorf("error for %q leaks the password: %v", in, err)
		}
	}
}

func TestErrorMessages(t *testing.T) {
	if got := ErrInvalidHashLength.Error(); got != "invalid token CA hash length" {
		t.Errorf("ErrInvalidHashLength = %q", got)
	}
	if got := ErrInvalidFormat.Error(); got != "invalid token format" {
		t.Errorf("ErrInvalidFormat = %q", got)
	}
}

func TestFixtureToken(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(fixtureFS, "token"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Parse(string(raw))
	if err != nil {
		t.Fatalf("Parse(fixture token): %v", err)
	}
	want := Token{CAHash: hash, Username: "server", Password: "7f3c9a1e5b2d4c6f8a0b1c2d3e4f5a6b"}
	if tok != want {
		t.Fatalf("Parse(fixture token) = %+v, want %+v", tok, want)
	}
	if !tok.Secure() {
		t.Error("fixture token is not secure")
	}
	if got := tok.Secret(); got != strings.TrimSpace(string(raw)) {
		t.Errorf("Secret() = %q, want the fixture token %q", got, strings.TrimSpace(string(raw)))
	}
}

func TestFormat(t *testing.T) {
	got := Format(hash, "server", "pw")
	if want := "K10" + hash + "::server:pw"; got != want {
		t.Fatalf("Format = %q, want %q", got, want)
	}
}

func TestSecret(t *testing.T) {
	tests := []struct {
		name string
		tok  Token
		want string
	}{
		{"secure with user", Token{CAHash: hash, Username: "node", Password: "pw"}, "K10" + hash + "::node:pw"},
		{"secure without user", Token{CAHash: hash, Password: "pw"}, "K10" + hash + "::pw"},
		{"short", Token{Password: "pw"}, "pw"},
		{"short ignores user", Token{Username: "server", Password: "pw"}, "pw"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.tok.Secret(); got != tc.want {
				t.Fatalf("Secret() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSecretParseRoundTrip(t *testing.T) {
	toks := []Token{
		{CAHash: hash, Username: "server", Password: "a:b"},
		{CAHash: hash, Password: "pw"},
		{Password: "pw"},
		{Password: "server:pw"},
	}
	for _, tok := range toks {
		got, err := Parse(tok.Secret())
		if err != nil {
			t.Fatalf("Parse(%#v.Secret()): %v", tok, err)
		}
		if got != tok {
			t.Errorf("Parse(%#v.Secret()) = %#v", tok, got)
		}
	}
}

func TestSecure(t *testing.T) {
	if (Token{Password: "pw"}).Secure() {
		t.Error("short token reports Secure")
	}
	if !(Token{CAHash: hash, Password: "pw"}).Secure() {
		t.Error("secure token reports not Secure")
	}
}

func TestGeneratePassword(t *testing.T) {
	seen := map[string]bool{}
	for range 16 {
		pw, err := GeneratePassword()
		if err != nil {
			t.Fatal(err)
		}
		if len(pw) != 32 || strings.ToLower(pw) != pw {
			t.Fatalf("GeneratePassword() = %q, want 32 lowercase hex chars", pw)
		}
		if _, err := hex.DecodeString(pw); err != nil {
			t.Fatalf("GeneratePassword() = %q: %v", pw, err)
		}
		if seen[pw] {
			t.Fatalf("GeneratePassword() repeated %q", pw)
		}
		seen[pw] = true
		if tok, err := Parse(Format(hash, "server", pw)); err != nil || tok.Password != pw {
			t.Fatalf("generated password does not survive a token round trip: %+v, %v", tok, err)
		}
	}
}

func TestCheckCAHash(t *testing.T) {
	h1, h2 := strings.Repeat("a", 64), strings.Repeat("b", 64)
	if err := (Token{CAHash: h1}).CheckCAHash(h1); err != nil {
		t.Errorf("same hash: %v", err)
	}
	if err := (Token{Password: "pw"}).CheckCAHash(h2); err != nil {
		t.Errorf("short token: %v", err)
	}
	err := Token{CAHash: h1}.CheckCAHash(h2)
	if !errors.Is(err, ErrCAHashMismatch) || err.Error() != "token CA hash does not match the Cluster CA certificate hash: "+h1+" != "+h2 {
		t.Errorf("mismatch: %v", err)
	}
}

// TestPrintingRedactsPassword prints tokens every way fmt and slog can and checks that
// the password never shows while the rest of the token does.
func TestPrintingRedactsPassword(t *testing.T) {
	const pw = "5ecre7passw0rd5ecre7passw0rd0000"
	toks := []struct {
		name string
		tok  Token
		want string // the String form
	}{
		{"secure with user", Token{CAHash: hash, Username: "server", Password: pw}, "K10" + hash + "::server:" + Redacted},
		{"secure without user", Token{CAHash: hash, Password: pw}, "K10" + hash + "::" + Redacted},
		{"short", Token{Password: pw}, Redacted},
	}
	for _, tc := range toks {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.tok.String(); got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
			if !strings.Contains(tc.tok.Secret(), pw) {
				t.Fatalf("Secret() = %q lost the password", tc.tok.Secret())
			}
			type holder struct {
				Tok  Token
				Ptr  *Token
				Rest string
			}
			h := holder{Tok: tc.tok, Ptr: &tc.tok, Rest: "x"}
			outputs := map[string]string{}
			for _, f := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%10.3s", "%T %v"} {
				outputs[f] = fmt.Sprintf(f, tc.tok)
				outputs[f+" pointer"] = fmt.Sprintf(f, &tc.tok)
				outputs[f+" in a struct"] = fmt.Sprintf(f, h)
				outputs[f+" in a slice"] = fmt.Sprintf(f, []Token{tc.tok})
			}
			outputs["Sprint"] = fmt.Sprint(tc.tok)
			outputs["Sprintln"] = fmt.Sprintln(tc.tok)
			outputs["Errorf %w-free"] = fmt.Errorf("bad token %v", tc.tok).Error()
			for _, json := range []bool{false, true} {
				var buf bytes.Buffer
				var hd slog.Handler = slog.NewTextHandler(&buf, nil)
				if json {
					hd = slog.NewJSONHandler(&buf, nil)
				}
				l := slog.New(hd)
				l.Info("token", "token", tc.tok, "ptr", &tc.tok, "any", any(tc.tok))
				l.Info("group", slog.Group("g", "token", tc.tok))
				outputs[fmt.Sprintf("slog json=%v", json)] = buf.String()
			}
			for what, out := range outputs {
				if strings.Contains(out, pw) {
					t.Errorf("%s shows the password: %s", what, out)
				}
				if strings.Contains(out, strings.ToUpper(pw)) || strings.Contains(out, hex.EncodeToString([]byte(pw))) {
					t.Errorf("%s shows the password encoded: %s", what, out)
				}
			}
			for _, what := range []string{"%v", "%+v", "%s", "Sprint", "slog json=false", "slog json=true"} {
				if !strings.Contains(outputs[what], tc.want) {
					t.Errorf("%s = %q, want it to show the redacted token %q", what, outputs[what], tc.want)
				}
			}
			if want := `Password:"` + Redacted + `"`; !strings.Contains(outputs["%#v"], want) || !strings.Contains(outputs["%#v"], "token.Token{") {
				t.Errorf("%%#v = %q, want a Go-syntax value with %s", outputs["%#v"], want)
			}
		})
	}
	if got := (Token{}).String(); got != "" {
		t.Errorf("zero Token String() = %q, want empty", got)
	}
}
