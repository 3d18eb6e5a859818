package bootstrap

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kpki/kpki/internal/token"
)

const fixtureDir = "testdata/k3s-bootstrap"

func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtureDir, filepath.FromSlash(name)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fixturePassphrase is the password part of the fixture's server token.
func fixturePassphrase(t *testing.T) string {
	t.Helper()
	tok, err := token.Parse(string(readFixture(t, "token")))
	if err != nil {
		t.Fatalf("parse fixture token: %v", err)
	}
	return tok.Password
}

func TestKeyName(t *testing.T) {
	tests := []struct{ passphrase, want string }{
		// SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
		{"abc", "/bootstrap/ba7816bf8f01"},
		// SHA-256("") = e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
		{"", "/bootstrap/e3b0c44298fc"},
	}
	for _, tc := range tests {
		if got := KeyName(tc.passphrase); got != tc.want {
			t.Errorf("KeyName(%q) = %q, want %q", tc.passphrase, got, tc.want)
		}
		prev := PreviousKeyName(tc.passphrase)
		if want := PreviousKeyPrefix + strings.TrimPrefix(tc.want, KeyPrefix); prev != want {
			t.Errorf("PreviousKeyName(%q) = %q, want %q", tc.passphrase, prev, want)
		}
		if strings.HasPrefix(prev, KeyPrefix) {
			t.Errorf("PreviousKeyName(%q) = %q lies under %s: watches of the bootstrap data would see it", tc.passphrase, prev, KeyPrefix)
		}
	}
}

func TestKeyNameFixture(t *testing.T) {
	want := strings.TrimSpace(string(readFixture(t, "etcd-key")))
	got := KeyName(fixturePassphrase(t))
	if got != want {
		t.Fatalf("KeyName(fixture passphrase) = %q, want %q", got, want)
	}
	if !strings.HasPrefix(got, KeyPrefix) {
		t.Fatalf("%q does not start with %q", got, KeyPrefix)
	}
}

func TestDecryptFixture(t *testing.T) {
	plaintext, err := Decrypt(fixturePassphrase(t), string(readFixture(t, "value")))
	if err != nil {
		t.Fatalf("Decrypt(fixture): %v", err)
	}
	wantJSON := readFixture(t, "plaintext.json")

	var gotAny, wantAny map[string]any
	if err := json.Unmarshal(plaintext, &gotAny); err != nil {
		t.Fatalf("decrypted value is not JSON: %v", err)
	}
	if err := json.Unmarshal(wantJSON, &wantAny); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotAny, wantAny) {
		t.Fatal("decrypted value differs from plaintext.json")
	}

	got, err := ParseRecord(plaintext)
	if err != nil {
		t.Fatalf("ParseRecord(decrypted): %v", err)
	}
	want, err := ParseRecord(wantJSON)
	if err != nil {
		t.Fatalf("ParseRecord(plaintext.json): %v", err)
	}
	for _, spec := range Files {
		g, gok := got.Get(spec.Field)
		w, wok := want.Get(spec.Field)
		if !gok || !wok {
			t.Errorf("%s: present in decrypted=%v, in plaintext.json=%v; want both", spec.Field, gok, wok)
			continue
		}
		if !g.Timestamp.Equal(w.Timestamp) {
			t.Errorf("%s: Timestamp %v, want %v", spec.Field, g.Timestamp, w.Timestamp)
		}
		if !bytes.Equal(g.Content, w.Content) {
			t.Errorf("%s: Content differs", spec.Field)
		}
	}
	if len(got.unknown) != len(want.unknown) {
		t.Errorf("unknown fields: got %d, want %d", len(got.unknown), len(want.unknown))
	}
	for name, w := range want.unknown {
		if !jsonEqual(t, got.unknown[name], w) {
			t.Errorf("unknown field %s: got %s, want %s", name, got.unknown[name], w)
		}
	}
	if _, ok := want.unknown["IPSECKey"]; !ok {
		t.Error("fixture IPSECKey not kept as an unknown field")
	}
}

func TestDecryptFixtureWrongPassphrase(t *testing.T) {
	value := string(readFixture(t, "value"))
	for _, pass := range []string{"", "wrong", fixturePassphrase(t) + "x", strings.ToUpper(fixturePassphrase(t))} {
		got, err := Decrypt(pass, value)
		if !errors.Is(err, ErrWrongPassphrase) {
			t.Errorf("Decrypt(%q) error = %v, want ErrWrongPassphrase", pass, err)
		}
		if got != nil {
			t.Errorf("Decrypt(%q) returned plaintext with an error", pass)
		}
	}
	if ErrWrongPassphrase.Error() != "bootstrap data cannot be decrypted with this token" {
		t.Errorf("ErrWrongPassphrase = %q", ErrWrongPassphrase)
	}
}

func TestFixtureFileContents(t *testing.T) {
	plaintext, err := Decrypt(fixturePassphrase(t), string(readFixture(t, "value")))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := ParseRecord(plaintext)
	if err != nil {
		t.Fatal(err)
	}
	for _, spec := range Files {
		f, ok := rec.Get(spec.Field)
		if !ok {
			t.Errorf("%s missing from the fixture record", spec.Field)
			continue
		}
		// The fixture lays the files out as <dd>/server does.
		want := readFixture(t, strings.TrimPrefix(spec.Path, "server/"))
		if !bytes.Equal(f.Content, want) {
			t.Errorf("%s: Content differs from %s", spec.Field, spec.Path)
		}
		if wantTS := time.Date(2026, 1, 15, 10, 20, 30, 123456789, time.UTC); !f.Timestamp.Equal(wantTS) {
			t.Errorf("%s: Timestamp %v, want %v", spec.Field, f.Timestamp, wantTS)
		}
	}
}

func TestEncryptDecryptRoundTrip(t *testing.T) {
	tests := []struct {
		name       string
		passphrase string
		plaintext  []byte
	}{
		{"json", "7f3c9a1e5b2d4c6f8a0b1c2d3e4f5a6b", []byte(`{"ServerCA":{"Timestamp":"2026-01-15T10:20:30Z","Content":"AA=="}}`)},
		{"empty plaintext", "pw", []byte{}},
		{"binary", "a:b", []byte{0, 1, 2, 0xff, 0xfe}},
		{"large", "pw", bytes.Repeat([]byte("0123456789"), 10000)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			value, err := Encrypt(tc.passphrase, tc.plaintext)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decrypt(tc.passphrase, value)
			if err != nil {
				t.Fatalf("Decrypt: %v", err)
			}
			if !bytes.Equal(got, tc.plaintext) {
				t.Fatal("round trip changed the plaintext")
			}
			if _, err := Decrypt(tc.passphrase+"x", value); !errors.Is(err, ErrWrongPassphrase) {
				t.Fatalf("Decrypt with another passphrase: %v, want ErrWrongPassphrase", err)
			}
		})
	}
}

func TestEncryptIsRandomized(t *testing.T) {
	a, err := Encrypt("pw", []byte("same"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Encrypt("pw", []byte("same"))
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Fatal("two encryptions of the same plaintext are identical")
	}
	saltA, _, _ := strings.Cut(a, ":")
	saltB, _, _ := strings.Cut(b, ":")
	if saltA == saltB {
		t.Fatal("two encryptions share a salt")
	}
}

func TestEncryptEmptyPassphrase(t *testing.T) {
	if _, err := Encrypt("", []byte("x")); err == nil {
		t.Fatal("Encrypt with an empty passphrase succeeded")
	}
}

// TestEncryptFormat decrypts Encrypt's output with a decoder written here
// from the format description alone: salt = 16 lowercase hex chars used as
// text, key = PBKDF2-HMAC-SHA1(passphrase, salt, 4096, 32), AES-256-GCM,
// base64(nonce(12) || ciphertext || tag(16)), no AAD.
func TestEncryptFormat(t *testing.T) {
	const passphrase = "7f3c9a1e5b2d4c6f8a0b1c2d3e4f5a6b"
	plaintext := []byte(`{"PasswdFile":{"Timestamp":"2026-01-15T10:20:30.123456789Z","Content":"cHc="}}`)
	value, err := Encrypt(passphrase, plaintext)
	if err != nil {
		t.Fatal(err)
	}

	m := regexp.MustCompile(`^([0-9a-f]{16}):([A-Za-z0-9+/]+={0,2})$`).FindStringSubmatch(value)
	if m == nil {
		t.Fatalf("value %q is not <16 lowercase hex>:<standard base64>", value)
	}
	salt, sealed := m[1], m[2]
	raw, err := base64.StdEncoding.DecodeString(sealed)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != 12+len(plaintext)+16 {
		t.Fatalf("sealed length %d, want nonce(12)+plaintext(%d)+tag(16)", len(raw), len(plaintext))
	}

	key := testPBKDF2SHA1([]byte(passphrase), []byte(salt), 4096, 32)
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCMWithNonceSize(block, 12)
	if err != nil {
		t.Fatal(err)
	}
	got, err := gcm.Open(nil, raw[:12], raw[12:], nil)
	if err != nil {
		t.Fatalf("hand-written decoder cannot open Encrypt's output: %v", err)
	}
	if !bytes.Equal(got, plaintext) {
		t.Fatal("hand-written decoder recovered different plaintext")
	}

	// The salt is used as its hex text, not as the 8 bytes it encodes.
	saltBytes, _ := hex.DecodeString(salt)
	wrongKey := testPBKDF2SHA1([]byte(passphrase), saltBytes, 4096, 32)
	wb, _ := aes.NewCipher(wrongKey)
	wg, _ := cipher.NewGCM(wb)
	if _, err := wg.Open(nil, raw[:12], raw[12:], nil); err == nil {
		t.Fatal("value also opens with the decoded salt bytes; salt must be used as hex text")
	}
}

// testPBKDF2SHA1 is RFC 8018 PBKDF2 with HMAC-SHA1, written independently of
// crypto/pbkdf2.
func testPBKDF2SHA1(password, salt []byte, iter, keyLen int) []byte {
	var out []byte
	for block := uint32(1); len(out) < keyLen; block++ {
		mac := hmac.New(sha1.New, password)
		mac.Write(salt)
		mac.Write(binary.BigEndian.AppendUint32(nil, block))
		u := mac.Sum(nil)
		t := bytes.Clone(u)
		for i := 1; i < iter; i++ {
			mac = hmac.New(sha1.New, password)
			mac.Write(u)
			u = mac.Sum(nil)
			for j := range t {
				t[j] ^= u[j]
			}
		}
		out = append(out, t...)
	}
	return out[:keyLen]
}

func TestTestPBKDF2SHA1(t *testing.T) {
	// RFC 6070 test vectors.
	tests := []struct {
		p, s string
		c, l int
		want string
	}{
		{"password", "salt", 1, 20, "0c60c80f961f0e71f3a9b524af6012062fe037a6"},
		{"password", "salt", 4096, 20, "4b007901b765489abead49d926f721d065a429c1"},
		{"passwordPASSWORDpassword", "saltSALTsaltSALTsaltSALTsaltSALTsalt", 4096, 25, "3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038"},
	}
	for _, tc := range tests {
		if got := hex.EncodeToString(testPBKDF2SHA1([]byte(tc.p), []byte(tc.s), tc.c, tc.l)); got != tc.want {
			t.Errorf("PBKDF2(%q, %q, %d, %d) = %s, want %s", tc.p, tc.s, tc.c, tc.l, got, tc.want)
		}
	}
}

func TestDecryptTampered(t *testing.T) {
	const passphrase = "pw"
	value, err := Encrypt(passphrase, []byte(`{"a":1}`))
	if err != nil {
		t.Fatal(err)
	}
	salt, enc, _ := strings.Cut(value, ":")
	raw, _ := base64.StdEncoding.DecodeString(enc)

	flip := func(i int) string {
		b := bytes.Clone(raw)
		b[i] ^= 0x01
		return salt + ":" + base64.StdEncoding.EncodeToString(b)
	}
	otherSalt := []byte(salt)
	otherSalt[0] ^= 0x01
	tests := map[string]string{
		"nonce":      flip(0),
		"ciphertext": flip(12),
		"tag":        flip(len(raw) - 1),
		"salt":       string(otherSalt) + ":" + enc,
		"truncated":  salt + ":" + base64.StdEncoding.EncodeToString(raw[:len(raw)-1]),
	}
	for name, v := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := Decrypt(passphrase, v)
			if !errors.Is(err, ErrWrongPassphrase) {
				t.Fatalf("Decrypt(tampered %s) error = %v, want ErrWrongPassphrase", name, err)
			}
			if got != nil {
				t.Fatal("tampered value returned plaintext")
			}
		})
	}
}

func TestDecryptMalformed(t *testing.T) {
	short := base64.StdEncoding.EncodeToString(make([]byte, 27))
	tests := []struct {
		name, value, wantMsg string
	}{
		{"empty", "", "no ':' between salt and ciphertext"},
		{"no colon", "0123456789abcdef", "no ':' between salt and ciphertext"},
		{"empty salt", ":" + short, "empty salt"},
		{"bad base64", "0123456789abcdef:not base64!", "not standard base64"},
		{"url base64", "0123456789abcdef:" + strings.Repeat("-_", 20), "not standard base64"},
		{"too short", "0123456789abcdef:" + short, "ciphertext is 27 bytes, shorter than nonce and tag (28 bytes)"},
		{"empty ciphertext", "0123456789abcdef:", "ciphertext is 0 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decrypt("pw", tc.value)
			if err == nil {
				t.Fatal("Decrypt succeeded")
			}
			if !errors.Is(err, ErrMalformed) || errors.Is(err, ErrWrongPassphrase) {
				t.Fatalf("error %v: want ErrMalformed, not ErrWrongPassphrase", err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("error %q does not contain %q", err, tc.wantMsg)
			}
		})
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		return false
	}
	if err := json.Unmarshal(b, &y); err != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}
