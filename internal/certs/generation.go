package certs

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"

	"github.com/kpki/kpki/internal/pki"
)

// GenerationLen is the length of a CA generation, in hex characters.
const GenerationLen = 16

// Generation names the CA generation a node holds: a hash of the signing certificate
// (the first certificate of the CA file) of every CA agents keep (the Agent rows of
// CAs: server CA and client CA), in table order. Servers and agents hold the same
// signing certificates after a rotation has reached them, whatever else their bundles
// carry (an agent keeps only the chain to the root it trusts), so both compute the
// same value from their files. signers maps each CA to its signing certificate.
func Generation(signers map[CAID]*x509.Certificate) (string, error) {
	return generation(signers, func(c CASpec) bool { return c.Agent })
}

// ServerGeneration is Generation over every CA of the table: what a server holds, and
// what tells a rotation of a server-only CA (request-header, etcd) apart.
func ServerGeneration(signers map[CAID]*x509.Certificate) (string, error) {
	return generation(signers, func(CASpec) bool { return true })
}

func generation(signers map[CAID]*x509.Certificate, pick func(CASpec) bool) (string, error) {
	h := sha256.New()
	for _, c := range CAs {
		if !pick(c) {
			continue
		}
		cert := signers[c.ID]
		if cert == nil {
			return "", fmt.Errorf("no %s certificate to compute the CA generation from", c.ID)
		}
		sum := sha256.Sum256(cert.Raw)
		h.Write([]byte(c.ID))
		h.Write([]byte{0})
		h.Write(sum[:])
	}
	return hex.EncodeToString(h.Sum(nil))[:GenerationLen], nil
}

// Signers parses the signing certificate, the first one, of each CA file in files.
func Signers(files map[CAID][]byte) (map[CAID]*x509.Certificate, error) {
	out := make(map[CAID]*x509.Certificate, len(files))
	for id, data := range files {
		list, err := pki.ParseCerts(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", CA(id).CertFile, err)
		}
		out[id] = list[0]
	}
	return out, nil
}
