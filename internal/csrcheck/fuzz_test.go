package csrcheck

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// FuzzCheckCSR feeds arbitrary bodies to Check. It must never panic, and whatever it
// accepts must satisfy every rule, checked here independently of Check's own code paths:
// a parseable request, a key of an accepted type and size, a SHA-2 or Ed25519 signature
// algorithm, and a signature that verifies. The seed corpus (testdata/fuzz/FuzzCheckCSR)
// holds accepted requests of each key type and refused ones of each kind.
func FuzzCheckCSR(f *testing.F) {
	for _, name := range []string{"dsa-2048.der", "rsa-2048-sha1.der", "rsa-2048-md5.der", "p256-sha1.der"} {
		f.Add(testdata(f, name))
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := Check(der)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || err.Error() == "" {
				t.Fatalf("refusal %T %q is not a non-empty *Error", err, err)
			}
			if csr != nil {
				t.Fatalf("a request was returned with the error %v", err)
			}
			return
		}
		parsed, perr := x509.ParseCertificateRequest(der)
		if perr != nil {
			t.Fatalf("accepted a body that does not parse: %v", perr)
		}
		switch k := parsed.PublicKey.(type) {
		case *ecdsa.PublicKey:
			if n := k.Curve.Params().Name; n != "P-256" && n != "P-384" && n != "P-521" {
				t.Fatalf("accepted ECDSA curve %s", n)
			}
		case ed25519.PublicKey:
		case *rsa.PublicKey:
			if b := k.N.BitLen(); b < 2048 || b > 8192 {
				t.Fatalf("accepted an RSA key of %d bits", b)
			}
		default:
			t.Fatalf("accepted key type %T", parsed.PublicKey)
		}
		switch parsed.SignatureAlgorithm {
		case x509.SHA256WithRSA, x509.SHA384WithRSA, x509.SHA512WithRSA,
			x509.SHA256WithRSAPSS, x509.SHA384WithRSAPSS, x509.SHA512WithRSAPSS,
			x509.ECDSAWithSHA256, x509.ECDSAWithSHA384, x509.ECDSAWithSHA512, x509.PureEd25519:
		default:
			t.Fatalf("accepted signature algorithm %s", parsed.SignatureAlgorithm)
		}
		if err := parsed.CheckSignature(); err != nil {
			t.Fatalf("accepted a request whose signature does not verify: %v", err)
		}
	})
}

// TestFuzzSeedsCoverEveryKind checks that the committed seed corpus still holds
// accepted requests of each key type and refused ones, so the fuzzer starts from both.
func TestFuzzSeedsCoverEveryKind(t *testing.T) {
	kinds := map[string]bool{}
	for name, der := range readCorpus(t) {
		csr, err := Check(der)
		if err == nil {
			kinds["accepted "+KeyTypeName(csr)] = true
			continue
		}
		t.Logf("%s: refused: %v", name, err)
		kinds["refused"] = true
	}
	for _, want := range []string{"accepted ECDSA", "accepted RSA", "accepted Ed25519", "refused"} {
		if !kinds[want] {
			t.Errorf("the seed corpus has no %s request (kinds: %v)", want, kinds)
		}
	}
}

// readCorpus reads testdata/fuzz/FuzzCheckCSR, files of the form
// "go test fuzz v1\n[]byte(<Go string literal>)".
func readCorpus(t *testing.T) map[string][]byte {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", "FuzzCheckCSR")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		head, body, ok := strings.Cut(string(data), "\n")
		body = strings.TrimSpace(body)
		if !ok || head != "go test fuzz v1" || !strings.HasPrefix(body, "[]byte(") || !strings.HasSuffix(body, ")") {
			t.Fatalf("%s is not a Go fuzz corpus file of one []byte", e.Name())
		}
		v, err := strconv.Unquote(body[len("[]byte(") : len(body)-1])
		if err != nil {
			t.Fatalf("%s: %v", e.Name(), err)
		}
		out[e.Name()] = []byte(v)
	}
	return out
}
