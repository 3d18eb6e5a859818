package bootstrap

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpki/kpki/internal/token"
)

// checkDecryptError fails unless err is one of the two errors Decrypt documents and
// plaintext is nil with it.
func checkDecryptError(t *testing.T, what string, plaintext []byte, err error) {
	t.Helper()
	if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("%s: error %q is neither ErrMalformed nor ErrWrongPassphrase", what, err)
	}
	if plaintext != nil {
		t.Fatalf("%s: plaintext returned with error %q", what, err)
	}
	if strings.ContainsAny(err.Error(), "\n\r") {
		t.Fatalf("%s: error %q is not one line", what, err)
	}
}

// FuzzDecrypt feeds arbitrary passphrases and datastore values to the value decoder
// and decryptor. Decrypt must never panic; it fails with ErrMalformed or
// ErrWrongPassphrase, with an error that is the same whatever the passphrase (so it
// never holds it); a value it opens opens with no other passphrase and comes back
// from Encrypt unchanged.
func FuzzDecrypt(f *testing.F) {
	fixturePass := fixturePassphraseTB(f)
	value := strings.TrimSpace(string(readFixtureTB(f, "value")))
	f.Add(fixturePass, value)
	f.Add("wrong", value)
	salt, enc, _ := strings.Cut(value, ":")
	f.Add(fixturePass, salt+":"+enc[:len(enc)-4])
	f.Add(fixturePass, salt+"::"+enc)
	f.Add(fixturePass, ":"+enc)
	f.Add(fixturePass, salt+":")
	f.Add(fixturePass, salt)
	f.Add(fixturePass, salt+":"+strings.ReplaceAll(enc, "+", "-"))
	f.Add(fixturePass, salt+":"+enc[:40]+"\r\n"+enc[40:])
	f.Add("pw", "0123456789abcdef:"+base64.StdEncoding.EncodeToString(make([]byte, 28)))
	f.Add("pw", "0123456789abcdef:"+base64.StdEncoding.EncodeToString(make([]byte, 27)))
	f.Add("", "")

	f.Fuzz(func(t *testing.T, passphrase, value string) {
		plaintext, err := Decrypt(passphrase, value)
		other := passphrase + "\x00other"
		if err != nil {
			checkDecryptError(t, "Decrypt", plaintext, err)
			_, err2 := Decrypt(other, value)
			if err2 == nil || err2.Error() != err.Error() {
				t.Fatalf("Decrypt error %q depends on the passphrase: with another one, %v", err, err2)
			}
			return
		}
		if _, err := Decrypt(other, value); !errors.Is(err, ErrWrongPassphrase) {
			t.Fatalf("a value that opens with %q also opens with %q (error %v)", passphrase, other, err)
		}
		if passphrase == "" {
			return // Encrypt refuses an empty passphrase
		}
		again, err := Encrypt(passphrase, plaintext)
		if err != nil {
			t.Fatalf("Encrypt of a decrypted value: %v", err)
		}
		back, err := Decrypt(passphrase, again)
		if err != nil || !bytes.Equal(back, plaintext) {
			t.Fatalf("re-encrypted value does not decrypt to the same plaintext (error %v)", err)
		}
	})
}

// FuzzEncryptDecrypt checks that every value Encrypt produces decrypts to its
// plaintext with its passphrase and with no other one, and that a value changed in any
// way that alters its salt or its decoded bytes (a flipped ciphertext bit, an edited
// character, a truncation) never decrypts.
func FuzzEncryptDecrypt(f *testing.F) {
	plain := readFixtureTB(f, "plaintext.json")
	pass := fixturePassphraseTB(f)
	f.Add(pass, plain, uint(0), byte(1), uint(0), byte('0'))
	f.Add(pass, plain, uint(12), byte(0x80), uint(17), byte('A'))
	f.Add("pw", []byte(`{"a":1}`), uint(1<<31), byte(0xff), uint(16), byte(':'))
	f.Add("pw", []byte{}, uint(27), byte(1), uint(1000), byte('='))
	f.Add("p:w", []byte("\x00\xff"), uint(5), byte(0), uint(3), byte('\n'))

	f.Fuzz(func(t *testing.T, passphrase string, plaintext []byte, pos uint, mask byte, textPos uint, textByte byte) {
		value, err := Encrypt(passphrase, plaintext)
		if passphrase == "" {
			if err == nil {
				t.Fatal("Encrypt accepted an empty passphrase")
			}
			return
		}
		if err != nil {
			t.Fatalf("Encrypt: %v", err)
		}
		salt, enc, ok := strings.Cut(value, ":")
		if !ok || len(salt) != 2*saltBytes || !isLowerHex(salt) {
			t.Fatalf("Encrypt value %q is not <16 hex salt>:<base64>", value)
		}
		sealed, err := base64.StdEncoding.Strict().DecodeString(enc)
		if err != nil || len(sealed) != nonceBytes+len(plaintext)+tagBytes {
			t.Fatalf("Encrypt value is not base64 of nonce||ciphertext||tag: %v", err)
		}

		got, err := Decrypt(passphrase, value)
		if err != nil || !bytes.Equal(got, plaintext) {
			t.Fatalf("Decrypt(Encrypt(p)) = %q, %v; want the plaintext back", got, err)
		}
		got, err = Decrypt(passphrase+"x", value)
		if !errors.Is(err, ErrWrongPassphrase) || got != nil {
			t.Fatalf("value opened with another passphrase: %q, %v", got, err)
		}

		// One flipped bit or more in nonce, ciphertext or tag.
		if mask == 0 {
			mask = 1
		}
		flipped := bytes.Clone(sealed)
		flipped[pos%uint(len(flipped))] ^= mask
		tampered := salt + ":" + base64.StdEncoding.EncodeToString(flipped)
		got, err = Decrypt(passphrase, tampered)
		if !errors.Is(err, ErrWrongPassphrase) || got != nil {
			t.Fatalf("ciphertext with byte %d xor %#x: Decrypt = %q, %v; want ErrWrongPassphrase", pos%uint(len(flipped)), mask, got, err)
		}

		// One character of the value text replaced.
		i := textPos % uint(len(value))
		edited := value[:i] + string([]byte{textByte}) + value[i+1:]
		if edited != value {
			got, err = Decrypt(passphrase, edited)
			if err != nil {
				checkDecryptError(t, "edited value", got, err)
			} else {
				// Only an edit that changes neither the salt nor the decoded bytes
				// (non-canonical base64 padding bits) may still open.
				s2, e2, _ := strings.Cut(edited, ":")
				d2, _ := base64.StdEncoding.DecodeString(e2)
				if s2 != salt || !bytes.Equal(d2, sealed) {
					t.Fatalf("edited value (byte %d set to %q) decrypts", i, textByte)
				}
				if !bytes.Equal(got, plaintext) {
					t.Fatalf("edited value decrypts to other plaintext")
				}
			}
		}

		// Any strict prefix.
		got, err = Decrypt(passphrase, value[:i])
		if err == nil {
			t.Fatalf("value truncated to %d of %d characters decrypts", i, len(value))
		}
		checkDecryptError(t, "truncated value", got, err)
	})
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// readFixtureTB and fixturePassphraseTB are readFixture and fixturePassphrase for
// fuzz targets.
func readFixtureTB(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(fixtureDir, filepath.FromSlash(name)))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func fixturePassphraseTB(tb testing.TB) string {
	tb.Helper()
	tok, err := token.Parse(string(readFixtureTB(tb, "token")))
	if err != nil {
		tb.Fatalf("parse fixture token: %v", err)
	}
	return tok.Password
}
