package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// promptly is how long a refused rotate-ca may take: it reads nothing large and never
// blocks, so a few seconds is plenty even on a loaded machine.
const promptly = 20 * time.Second

// timedResult is a cmdResult with how long the command ran and its peak memory.
type timedResult struct {
	cmdResult
	took     time.Duration
	maxRSSKB int64
}

// runKpkiWithin runs kpki and fails the test if it has not exited within limit (it is
// killed then): the hostile staging cases must not hang.
func runKpkiWithin(t *testing.T, limit time.Duration, args ...string) timedResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	argv, err := json.Marshal(append([]string{binary(t)}, args...))
	if err != nil {
		t.Fatal(err)
	}
	rssFile := filepath.Join(t.TempDir(), "maxrss")
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = cleanEnv([]string{measureEnv + "=" + string(argv), measureOutEnv + "=" + rssFile})
	cmd.WaitDelay = time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err = cmd.Run()
	r := timedResult{cmdResult: cmdResult{args: args, stdout: stdout.String(), stderr: stderr.String()}, took: time.Since(start)}
	if ctx.Err() != nil {
		t.Fatalf("kpki %s did not return within %v (killed)\n%s", strings.Join(quoteArgs(args), " "), limit, r.cmdResult)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run kpki: %v", err)
	}
	r.code = cmd.ProcessState.ExitCode()
	kb, err := os.ReadFile(rssFile)
	if err != nil {
		t.Fatalf("peak RSS of kpki %s: %v", strings.Join(quoteArgs(args), " "), err)
	}
	if r.maxRSSKB, err = strconv.ParseInt(string(kb), 10, 64); err != nil {
		t.Fatal(err)
	}
	t.Logf("kpki %s: exit code %d in %v, max RSS %d KB", strings.Join(quoteArgs(args), " "), r.code, r.took.Round(time.Millisecond), r.maxRSSKB)
	return r
}

// holesCert signs tmpl (NotBefore/NotAfter set by the caller) for key by parent, or
// self-signed when parent is nil, and returns the certificate and its PEM.
func holesCert(t *testing.T, tmpl x509.Certificate, key crypto.Signer, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, []byte) {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial.Add(serial, big.NewInt(1))
	if parent == nil {
		parent, parentKey = &tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func holesECKey(t *testing.T) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return k, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

func holesCATemplate(cn string, from, to time.Time) x509.Certificate {
	return x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             from,
		NotAfter:              to,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
	}
}

// TestHolesRotateCA attacks `kpki certificate rotate-ca` on a running server: with --force
// (and --force --dry-run), CAs the server would refuse at start and CAs sharing a key with
// another CA; then staging dirs holding a symlink to /dev/zero, a FIFO, a 100 MB sparse file
// and a dangling symlink; then an interrupt while the server does not answer. Each is refused
// with the file named and one clear line, returns promptly, and leaves the data dir and every
// bootstrap key in etcd as they were.
func TestHolesRotateCA(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "data")
	s := startServer(t, dd)
	s.WaitReady(t)
	tlsDir := s.TLSDir()
	now := time.Now()
	year := 365 * 24 * time.Hour

	t.Run("forced bad CAs", func(t *testing.T) {
		clientKeyPEM := readFile(t, filepath.Join(tlsDir, "client-ca.key"))
		clientKey := readKeys(t, filepath.Join(tlsDir, "client-ca.key"))[0].signer
		_, sharedCrt := holesCert(t, holesCATemplate("holes-server-ca-with-client-key", now.Add(-time.Hour), now.Add(year)), clientKey, nil, nil)

		expKey, expKeyPEM := holesECKey(t)
		_, expiredCrt := holesCert(t, holesCATemplate("holes-expired-ca", now.Add(-2*year), now.Add(-year)), expKey, nil, nil)

		rootKey, _ := holesECKey(t)
		root, rootPEM := holesCert(t, holesCATemplate("holes-root", now.Add(-time.Hour), now.Add(year)), rootKey, nil, nil)
		leafKey, leafKeyPEM := holesECKey(t)
		_, leafCrt := holesCert(t, x509.Certificate{
			Subject: pkix.Name{CommonName: "holes-not-a-ca"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(year),
			BasicConstraintsValid: true, IsCA: false, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}, leafKey, root, rootKey)

		goodKey, goodKeyPEM := holesECKey(t)
		_, goodCrt := holesCert(t, holesCATemplate("holes-good-ca", now.Add(-time.Hour), now.Add(year)), goodKey, nil, nil)
		_, otherKeyPEM := holesECKey(t)

		usageKey, usageKeyPEM := holesECKey(t)
		usage := holesCATemplate("holes-no-certsign", now.Add(-time.Hour), now.Add(year))
		usage.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
		_, usageCrt := holesCert(t, usage, usageKey, nil, nil)

		interKey, interKeyPEM := holesECKey(t)
		_, interCrt := holesCert(t, holesCATemplate("holes-intermediate-without-root", now.Add(-time.Hour), now.Add(year)), interKey, root, rootKey)

		cases := []struct {
			name  string
			files map[string][]byte
			wants [][]string
		}{
			{"server-ca with client-ca's key", map[string][]byte{"tls/server-ca.crt": sharedCrt, "tls/server-ca.key": clientKeyPEM},
				[][]string{anyOf("tls/server-ca.key"), anyOf("the same key as tls/client-ca.key")}},
			{"expired CA", map[string][]byte{"tls/client-ca.crt": expiredCrt, "tls/client-ca.key": expKeyPEM},
				[][]string{anyOf("tls/client-ca.crt"), anyOf("expired")}},
			{"not a CA", map[string][]byte{"tls/request-header-ca.crt": append(leafCrt, rootPEM...), "tls/request-header-ca.key": leafKeyPEM},
				[][]string{anyOf("tls/request-header-ca.crt"), anyOf("not a CA")}},
			{"certificate and key do not match", map[string][]byte{"tls/etcd/server-ca.crt": goodCrt, "tls/etcd/server-ca.key": otherKeyPEM},
				[][]string{anyOf("tls/etcd/server-ca.key"), anyOf("does not match")}},
			{"self-signed without keyCertSign", map[string][]byte{"tls/etcd/peer-ca.crt": usageCrt, "tls/etcd/peer-ca.key": usageKeyPEM},
				[][]string{anyOf("tls/etcd/peer-ca.crt"), anyOf("keyCertSign")}},
			{"chain without its root", map[string][]byte{"tls/server-ca.crt": interCrt, "tls/server-ca.key": interKeyPEM},
				[][]string{anyOf("tls/server-ca.crt"), anyOf("chain does not verify")}},
		}
		for _, tc := range cases {
			for _, flags := range [][]string{{"--force"}, {"--force", "--dry-run"}} {
				t.Run(tc.name+" "+strings.Join(flags, " "), func(t *testing.T) {
					stage := writeStaged(t, tc.files)
					b := takeBaseline(t, s)
					r := rotateCA(t, s, stage, flags...)
					assertRefused(t, r, tc.wants...)
					b.assertUnchanged(t, s, "rotate-ca "+strings.Join(flags, " ")+" ("+tc.name+")")
				})
			}
		}

		// The control: the same kind of forced rotation with a sound CA passes the dry run,
		// so the refusals above are for the defects they name.
		t.Run("a sound forced CA passes the dry run", func(t *testing.T) {
			stage := writeStaged(t, map[string][]byte{"tls/etcd/server-ca.crt": goodCrt, "tls/etcd/server-ca.key": goodKeyPEM})
			b := takeBaseline(t, s)
			r := rotateCA(t, s, stage, "--force", "--dry-run")
			if r.code != 0 || !strings.Contains(r.stdout, "would change: tls/etcd/server-ca.crt") {
				t.Fatalf("want exit 0 and the change listed:\n%s", r)
			}
			b.assertUnchanged(t, s, "rotate-ca --force --dry-run of a sound CA")
		})
	})

	t.Run("hostile staging files", func(t *testing.T) {
		goodKey, goodKeyPEM := holesECKey(t)
		_, goodCrt := holesCert(t, holesCATemplate("holes-staged-ca", now.Add(-time.Hour), now.Add(year)), goodKey, nil, nil)
		cases := []struct {
			name  string
			plant func(t *testing.T, crt string)
			wants [][]string
		}{
			{"symlink to /dev/zero", func(t *testing.T, crt string) {
				if err := os.Symlink("/dev/zero", crt); err != nil {
					t.Fatal(err)
				}
			}, [][]string{anyOf("character device")}},
			{"FIFO", func(t *testing.T, crt string) {
				if err := syscall.Mkfifo(crt, 0o600); err != nil {
					t.Fatal(err)
				}
			}, [][]string{anyOf("named pipe")}},
			{"100 MB sparse file", func(t *testing.T, crt string) {
				f, err := os.Create(crt)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if err := f.Truncate(100 << 20); err != nil {
					t.Fatal(err)
				}
			}, [][]string{anyOf("larger than 1 MiB")}},
			{"dangling symlink", func(t *testing.T, crt string) {
				if err := os.Symlink(filepath.Join(filepath.Dir(crt), "moved-away.crt"), crt); err != nil {
					t.Fatal(err)
				}
			}, [][]string{anyOf("is a dangling symlink")}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				// A sound key next to the hostile certificate file: only the latter is wrong.
				stage := writeStaged(t, map[string][]byte{"tls/server-ca.key": goodKeyPEM})
				crt := filepath.Join(stage, "tls", "server-ca.crt")
				tc.plant(t, crt)
				b := takeBaseline(t, s)
				r := runKpkiWithin(t, promptly, "certificate", "rotate-ca", "--path="+stage, "--force", "--server", s.SupervisorURL(), "--data-dir", dd)
				assertRefused(t, r.cmdResult, append(tc.wants, anyOf(crt))...)
				if strings.Contains(r.stdout, "not staged") && strings.Contains(r.stdout, "server-ca.crt") {
					t.Errorf("a hostile server-ca.crt was taken for a missing one:\n%s", r.cmdResult)
				}
				// Reading the 100 MB file whole (and sending it) takes hundreds of MB.
				if r.maxRSSKB > 64<<10 {
					t.Errorf("rotate-ca peaked at %d KB of memory: it read the staged file", r.maxRSSKB)
				}
				b.assertUnchanged(t, s, "rotate-ca with a staged "+tc.name)
			})
		}

		t.Run("symlinks to regular files are read", func(t *testing.T) {
			elsewhere := t.TempDir()
			writeFile(t, filepath.Join(elsewhere, "ca.crt"), goodCrt, 0o600)
			writeFile(t, filepath.Join(elsewhere, "ca.key"), goodKeyPEM, 0o600)
			stage := writeStaged(t, nil)
			for name, target := range map[string]string{"server-ca.crt": "ca.crt", "server-ca.key": "ca.key"} {
				if err := os.Symlink(filepath.Join(elsewhere, target), filepath.Join(stage, "tls", name)); err != nil {
					t.Fatal(err)
				}
			}
			b := takeBaseline(t, s)
			r := runKpkiWithin(t, promptly, "certificate", "rotate-ca", "--path="+stage, "--force", "--dry-run", "--server", s.SupervisorURL(), "--data-dir", dd)
			if r.code != 0 || !strings.Contains(r.stdout, "would change: tls/server-ca.crt") {
				t.Fatalf("want exit 0 and the change listed:\n%s", r.cmdResult)
			}
			b.assertUnchanged(t, s, "rotate-ca --dry-run through symlinks")
		})

		t.Run("a symlinked service.key with a new key and the current one", func(t *testing.T) {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				t.Fatal(err)
			}
			content := append(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}),
				readFile(t, filepath.Join(tlsDir, "service.key"))...)
			target := filepath.Join(t.TempDir(), "service.key")
			writeFile(t, target, content, 0o600)
			stage := writeStaged(t, nil)
			if err := os.Symlink(target, filepath.Join(stage, "tls", "service.key")); err != nil {
				t.Fatal(err)
			}
			b := takeBaseline(t, s)
			r := runKpkiWithin(t, promptly, "certificate", "rotate-ca", "--path="+stage, "--dry-run", "--server", s.SupervisorURL(), "--data-dir", dd)
			if r.code != 0 || !strings.Contains(r.stdout, "would change: tls/service.key (2 key(s))") {
				t.Fatalf("want exit 0 and the service.key change listed:\n%s", r.cmdResult)
			}
			b.assertUnchanged(t, s, "rotate-ca --dry-run of a symlinked service.key")
		})
	})

	t.Run("SIGINT while the server does not answer", func(t *testing.T) {
		// A listener that accepts and never speaks: the TLS handshake waits for ever.
		ln, err := net.Listen("tcp", net.JoinHostPort(loopback, "0"))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			if c, err := ln.Accept(); err == nil {
				accepted <- c
			}
		}()
		goodKey, goodKeyPEM := holesECKey(t)
		_, goodCrt := holesCert(t, holesCATemplate("holes-interrupted-ca", now.Add(-time.Hour), now.Add(year)), goodKey, nil, nil)
		stage := writeStaged(t, map[string][]byte{"tls/server-ca.crt": goodCrt, "tls/server-ca.key": goodKeyPEM})
		b := takeBaseline(t, s)
		cmd := exec.Command(binary(t), "certificate", "rotate-ca", "--path="+stage, "--force", "--server", "https://"+ln.Addr().String(), "--data-dir", dd)
		cmd.Env = cleanEnv(nil)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case c := <-accepted:
			defer c.Close()
		case err := <-done:
			t.Fatalf("rotate-ca exited before connecting: %v\n%s", err, stderr.String())
		case <-time.After(promptly):
			_ = cmd.Process.Kill()
			<-done
			t.Fatal("rotate-ca never connected to the listener")
		}
		if err := cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
		case <-time.After(promptly):
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("rotate-ca ignored SIGINT for %v\n%s", promptly, stderr.String())
		}
		assertFailure(t, cmd.ProcessState.ExitCode(), stderr.String(), "interrupted")
		b.assertUnchanged(t, s, "interrupted rotate-ca")
	})
	s.Stop(t)
}

// TestHolesSupervisorLogBounded sends failed requests with a 60 KB URL (path, path and query),
// a 40 KB user name and a 40 KB node-name header to a running server: each is answered with an
// error, and the line the server logs for it (found by the error id of the answer) is under
// 1 KB and says how long the clipped value was; no line the server wrote meanwhile is longer.
func TestHolesSupervisorLogBounded(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "data")
	s := startServer(t, dd)
	s.WaitReady(t)
	cfg, err := s.clientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
	agentPW := agentToken(t, s)
	agentPW = agentPW[strings.LastIndex(agentPW, ":")+1:]
	huge := strings.Repeat("A", 60<<10)

	cases := []struct {
		name   string
		method string
		path   string
		setup  func(*http.Request)
		marker string
	}{
		{"60 KB path", http.MethodGet, "/" + huge, nil, "(61441 bytes)"},
		{"30 KB path and 30 KB query", http.MethodGet, "/" + huge[:30<<10] + "?q=" + huge[:30<<10], nil, "(30722 bytes)"},
		{"40 KB user name", http.MethodGet, "/v1-kpki/server-bootstrap", func(r *http.Request) { r.SetBasicAuth(huge[:40<<10], "not-the-password") }, "(40960 bytes)"},
		{"40 KB node name header", http.MethodPost, "/v1-kpki/client-kubelet.crt", func(r *http.Request) {
			r.SetBasicAuth("node", agentPW)
			r.Header.Set("Kpki-Node-Name", huge[:40<<10])
			r.Header.Set("Kpki-Node-Password", "holes-node-password")
		}, "bytes)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(s.Stderr())
			req, err := http.NewRequest(tc.method, s.SupervisorURL()+tc.path, strings.NewReader("not a CSR"))
			if err != nil {
				t.Fatal(err)
			}
			if tc.setup != nil {
				tc.setup(req)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode/100 != 4 {
				t.Fatalf("status %d, want a refusal: %.300s", resp.StatusCode, body)
			}
			var eb struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal(body, &eb); err != nil || eb.ID == "" {
				t.Fatalf("answer %.300q is not a JSON error with an id: %v", body, err)
			}
			logged := s.Stderr()[before:]
			var line string
			for _, l := range strings.Split(logged, "\n") {
				if len(l) > 1024 {
					t.Errorf("the server logged a line of %d bytes: %.300s…", len(l), l)
				}
				if strings.Contains(l, eb.ID) {
					line = l
				}
			}
			if line == "" {
				t.Fatalf("no log line with the error id %s; logged:\n%.2000s", eb.ID, logged)
			}
			if !strings.Contains(line, tc.marker) {
				t.Errorf("the log line does not say how long the clipped value was (%q): %s", tc.marker, line)
			}
		})
	}
	s.Stop(t)
}
