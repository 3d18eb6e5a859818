// Package token owns the join-token format: parsing and formatting secure
// tokens ("K10<ca-hash>::<user>:<password>") and short tokens (a bare
// password), and generating new token passwords.
package token

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"unicode"
)

// Prefix starts every secure token.
const Prefix = "K10"

// separator divides the CA hash from the credentials in a secure token.
const separator = "::"

// hashLen is the length of the hex-encoded SHA-256 CA hash.
const hashLen = 64

// ErrInvalidHashLength reports a secure token whose CA hash is not 64 hex characters.
var ErrInvalidHashLength = errors.New("invalid token CA hash length")

// ErrInvalidFormat reports a token that is not "K10<ca-hash>::[<user>:]<password>"
// or a valid bare password.
var ErrInvalidFormat = errors.New("invalid token format")

// Token is a join token: "K10<ca-hash>::<user>:<password>" (secure) or a bare
// password (short token).
type Token struct {
	CAHash   string // 64 lowercase hex chars, "" for a short token
	Username string // "" when the token did not name one
	Password string
}

// Parse parses a secure or short token. Surrounding whitespace (such as the
// trailing newline of a token file) is ignored. Errors wrap ErrInvalidHashLength
// or ErrInvalidFormat and never contain the password.
func Parse(s string) (Token, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, Prefix) {
		if err := checkPassword(s); err != nil {
			return Token{}, err
		}
		return Token{Password: s}, nil
	}

	hash, creds, ok := strings.Cut(s[len(Prefix):], separator)
	if !ok {
		return Token{}, fmt.Errorf("%w: secure token has no %q after the CA hash", ErrInvalidFormat, separator)
	}
	if len(hash) != hashLen {
		return Token{}, fmt.Errorf("%w: got %d characters, want %d", ErrInvalidHashLength, len(hash), hashLen)
	}
	if !isHex(hash) {
		return Token{}, fmt.Errorf("%w: CA hash is not hexadecimal", ErrInvalidHashLength)
	}
	if creds == "" {
		return Token{}, fmt.Errorf("%w: secure token has no credentials", ErrInvalidFormat)
	}

	t := Token{CAHash: strings.ToLower(hash)}
	if user, pw, hasUser := strings.Cut(creds, ":"); hasUser {
		if err := checkUsername(user); err != nil {
			return Token{}, err
		}
		t.Username, t.Password = user, pw
	} else {
		t.Password = creds
	}
	if err := checkPassword(t.Password); err != nil {
		return Token{}, err
	}
	return t, nil
}

// Format returns the secure token "K10<caHash>::<user>:<password>".
func Format(caHash, user, password string) string {
	return Prefix + caHash + separator + user + ":" + password
}

// Secure reports whether the token pins a CA hash.
func (t Token) Secure() bool {
	return t.CAHash != ""
}

// Redacted stands for the password wherever a token is shown rather than used.
const Redacted = "********"

// Secret returns the whole token in the form Parse accepts, password included: the
// secure form when the token has a CA hash (without the user part when Username is
// empty and the password holds no ':', which would be read as the end of a user name), else the bare password. Use it only where the token itself must be written
// (token files, a new token printed for the operator, a request's credentials).
func (t Token) Secret() string { return t.render(t.Password) }

// String returns the token with its password replaced by Redacted, so that a token
// printed or logged by accident gives nothing away. Use Secret for the real token.
func (t Token) String() string {
	if t.Password == "" {
		return t.render("")
	}
	return t.render(Redacted)
}

func (t Token) render(pw string) string {
	if !t.Secure() {
		return pw
	}
	if t.Username == "" && !strings.Contains(t.Password, ":") {
		return Prefix + t.CAHash + separator + pw
	}
	return Format(t.CAHash, t.Username, pw)
}

// GoString is the %#v form, with the password redacted.
func (t Token) GoString() string {
	pw := ""
	if t.Password != "" {
		pw = Redacted
	}
	return fmt.Sprintf("token.Token{CAHash:%q, Username:%q, Password:%q}", t.CAHash, t.Username, pw)
}

// Format implements fmt.Formatter: every verb and flag prints the redacted token (%#v
// its GoString), never the password.
func (t Token) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		_, _ = io.WriteString(f, t.GoString())
		return
	}
	_, _ = io.WriteString(f, t.String())
}

// LogValue implements slog.LogValuer: the redacted token.
func (t Token) LogValue() slog.Value { return slog.StringValue(t.String()) }

// GeneratePassword returns 16 random bytes as 32 lowercase hex characters.
func GeneratePassword() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate token password: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// checkPassword rejects passwords that cannot be stored in the passwd CSV file.
func checkPassword(pw string) error {
	if pw == "" {
		return fmt.Errorf("%w: empty password", ErrInvalidFormat)
	}
	if !csvSafe(pw) {
		return fmt.Errorf("%w: password contains whitespace, a comma or a control character", ErrInvalidFormat)
	}
	return nil
}

// checkUsername rejects user names that cannot be stored in the passwd CSV file.
func checkUsername(user string) error {
	if !csvSafe(user) {
		return fmt.Errorf("%w: user name contains whitespace, a comma or a control character", ErrInvalidFormat)
	}
	return nil
}

func csvSafe(s string) bool {
	for _, r := range s {
		if r == ',' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return false
		}
	}
	return true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// ErrCAHashMismatch is wrapped by CheckCAHash when the cluster CA is not the one the
// token pins.
var ErrCAHashMismatch = errors.New("token CA hash does not match the Cluster CA certificate hash")

// CheckCAHash compares the token's CA hash with hash, the hash of the cluster CA the
// caller sees; a short token pins nothing and always passes.
func (t Token) CheckCAHash(hash string) error {
	if t.CAHash == "" || t.CAHash == hash {
		return nil
	}
	return fmt.Errorf("%w: %s != %s", ErrCAHashMismatch, t.CAHash, hash)
}
