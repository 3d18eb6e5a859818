// Package bootstrap owns the cluster bootstrap data kept in the datastore:
// the key it is stored under, its encrypted value format, the plaintext
// record of CA files it holds, and the plan that reconciles that record with
// the files in a server's data dir. Every format is byte-compatible with the
// one RKE2 and K3s use.
package bootstrap

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// KeyPrefix starts the datastore key of every bootstrap record.
const KeyPrefix = "/bootstrap/"

// PreviousKeyPrefix starts the datastore key of the CA files a rotate-ca (or a rollback)
// replaced, kept for rotate-ca --rollback. It lies outside KeyPrefix: the kept record is
// not a cluster's bootstrap data, and watches of KeyPrefix do not see it change.
const PreviousKeyPrefix = "/kpki/bootstrap-previous/"

const (
	saltBytes   = 8
	kdfRounds   = 4096
	aesKeyBytes = 32
	nonceBytes  = 12
	tagBytes    = 16
)

// ErrWrongPassphrase reports a value that does not decrypt with the given
// passphrase (the GCM authentication failed: another token, or a damaged value).
var ErrWrongPassphrase = errors.New("bootstrap data cannot be decrypted with this token")

// ErrMalformed reports a value that is not "<salt>:<base64>" holding at least
// a nonce and a tag.
var ErrMalformed = errors.New("malformed bootstrap value")

// KeyName returns the datastore key of the bootstrap record encrypted with
// passphrase: KeyPrefix followed by the first 12 hex characters of
// SHA-256(passphrase).
func KeyName(passphrase string) string {
	return KeyPrefix + keyHash(passphrase)
}

// PreviousKeyName returns the datastore key of the kept record of passphrase's
// bootstrap record: PreviousKeyPrefix followed by the same 12 hex characters as KeyName.
func PreviousKeyName(passphrase string) string {
	return PreviousKeyPrefix + keyHash(passphrase)
}

// keyHash is the first 12 hex characters of SHA-256(passphrase).
func keyHash(passphrase string) string {
	sum := sha256.Sum256([]byte(passphrase))
	return hex.EncodeToString(sum[:])[:12]
}

// Encrypt seals plaintext with a key derived from passphrase and returns the
// datastore value "<salt>:<base64(nonce||ciphertext||tag)>".
func Encrypt(passphrase string, plaintext []byte) (string, error) {
	if passphrase == "" {
		return "", errors.New("encrypt bootstrap data: empty passphrase")
	}
	var salt [saltBytes]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return "", fmt.Errorf("encrypt bootstrap data: %w", err)
	}
	saltHex := hex.EncodeToString(salt[:])
	aead, err := newAEAD(passphrase, saltHex)
	if err != nil {
		return "", fmt.Errorf("encrypt bootstrap data: %w", err)
	}
	nonce := make([]byte, nonceBytes, nonceBytes+len(plaintext)+tagBytes)
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("encrypt bootstrap data: %w", err)
	}
	sealed := aead.Seal(nonce, nonce, plaintext, nil)
	return saltHex + ":" + base64.StdEncoding.EncodeToString(sealed), nil
}

// Decrypt opens a value written by Encrypt (or by RKE2/K3s). A value that does
// not authenticate under passphrase gives ErrWrongPassphrase; a value that is
// not in the expected shape gives an error wrapping ErrMalformed.
func Decrypt(passphrase, value string) ([]byte, error) {
	salt, encoded, ok := strings.Cut(value, ":")
	if !ok {
		return nil, fmt.Errorf("%w: no ':' between salt and ciphertext", ErrMalformed)
	}
	if salt == "" {
		return nil, fmt.Errorf("%w: empty salt", ErrMalformed)
	}
	sealed, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		return nil, fmt.Errorf("%w: ciphertext is not standard base64: %v", ErrMalformed, err)
	}
	if len(sealed) < nonceBytes+tagBytes {
		return nil, fmt.Errorf("%w: ciphertext is %d bytes, shorter than nonce and tag (%d bytes)", ErrMalformed, len(sealed), nonceBytes+tagBytes)
	}
	aead, err := newAEAD(passphrase, salt)
	if err != nil {
		return nil, fmt.Errorf("decrypt bootstrap data: %w", err)
	}
	nonce, ciphertext := sealed[:nonceBytes], sealed[nonceBytes:]
	plaintext, err := aead.Open(nil, nonce, ciphertext, nil)
	if err != nil {
		return nil, ErrWrongPassphrase
	}
	return plaintext, nil
}

// newAEAD derives the AES-256 key from passphrase and the salt's hex text and
// returns AES-GCM with a 12-byte nonce and a 16-byte tag.
func newAEAD(passphrase, salt string) (cipher.AEAD, error) {
	key, err := pbkdf2.Key(sha1.New, passphrase, []byte(salt), kdfRounds, aesKeyBytes)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
