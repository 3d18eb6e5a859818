package e2e

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The tests of this file walk every procedure of the seed page (seed/certificate-management.txt,
// with kpki in place of rke2) against real kpki servers, and check the outcome after each step
// with openssl and an etcd client of their own.

// seedServices is the list of certificates the seed page says can be rotated.
const seedServices = "admin,api-server,controller-manager,scheduler,rke2-controller,rke2-server,cloud-controller,etcd,auth-proxy,kubelet,kube-proxy"

var backedUpRE = regexp.MustCompile(`certificates backed up to (.+); restart kpki to rotate them`)

// TestSeedRotateLeafCertificates walks "Rotating Client and Server Certificates Manually":
// stop, `kpki certificate rotate [--service …]`, start.
func TestSeedRotateLeafCertificates(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	dd := filepath.Join(t.TempDir(), "data")
	tlsDir := filepath.Join(dd, "server", "tls")
	marker := filepath.Join(dd, "force-restart")
	s := startServer(t, dd)
	s.WaitReady(t)
	rec, _ := currentRecord(t, s)
	assertLeavesChainToRecord(t, s, rec)

	t.Run("refused while the server runs", func(t *testing.T) {
		b := takeBaseline(t, s)
		for _, args := range [][]string{
			{"certificate", "rotate", "--data-dir", dd},
			{"certificate", "rotate", "--data-dir", dd, "--service", "admin,api-server"},
		} {
			r := runKpki(t, nil, args...)
			assertRefused(t, r, anyOf("stop"))
			b.assertUnchanged(t, s, "certificate rotate while the server runs")
		}
		if code, _ := s.MustGet(t, "/readyz"); code != 200 {
			t.Errorf("GET /readyz after the refused rotate: %d", code)
		}
	})
	s.Stop(t)

	t.Run("dry run changes nothing", func(t *testing.T) {
		before := hashTree(t, dd)
		r := kpkiOK(t, "certificate", "rotate", "--data-dir", dd, "--dry-run")
		assertTreeUnchanged(t, "certificate rotate --dry-run", before, hashTree(t, dd))
		for _, l := range serverLeaves(s.IP) {
			if !strings.Contains(r.stdout, l.file+".crt") {
				t.Errorf("the dry run does not say it would delete %s.crt:\n%s", l.file, r)
			}
		}
		for _, line := range strings.Split(r.stdout, "\n") {
			line = strings.TrimSpace(line)
			if strings.Contains(line, "delete") && (strings.HasSuffix(line, "-ca.crt") || strings.HasSuffix(line, "-ca.key") || strings.HasSuffix(line, "service.key")) {
				t.Errorf("the dry run would delete a CA file: %q", line)
			}
		}
		for _, services := range []string{seedServices, "k3s-server,rke2-controller"} {
			kpkiOK(t, "certificate", "rotate", "--data-dir", dd, "--dry-run", "--service", services)
			assertTreeUnchanged(t, "certificate rotate --dry-run --service "+services, before, hashTree(t, dd))
		}
	})

	t.Run("unknown service", func(t *testing.T) {
		before := hashTree(t, dd)
		r := runKpki(t, nil, "certificate", "rotate", "--data-dir", dd, "--service", "bogus")
		assertRefused(t, r, anyOf("service bogus is not recognized"))
		for _, name := range []string{"admin", "api-server", "kpki-server", "kubelet"} {
			if !strings.Contains(r.stderr, name) {
				t.Errorf("the error does not list the valid service %s:\n%s", name, r)
			}
		}
		assertTreeUnchanged(t, "certificate rotate --service bogus", before, hashTree(t, dd))
	})

	// Every leaf.
	oldLeaves := snapshotLeaves(t, s)
	oldTLS := hashTree(t, tlsDir)
	oldCAs := readAll(t, tlsDir, customCAFiles)
	from := time.Now()
	r := kpkiOK(t, "certificate", "rotate", "--data-dir", dd)
	backup := checkBackup(t, r, dd, from, time.Now())
	t.Run("rotate: backup, deletion, marker", func(t *testing.T) {
		if d := treeDiff(oldTLS, hashTree(t, backup)); len(d) > 0 {
			t.Errorf("backup %s is not a copy of the old server/tls:\n  %s", backup, strings.Join(d, "\n  "))
		}
		for _, l := range serverLeaves(s.IP) {
			for _, ext := range []string{".crt", ".key"} {
				if _, err := os.Stat(filepath.Join(tlsDir, l.file+ext)); err == nil {
					t.Errorf("%s%s still exists after certificate rotate", l.file, ext)
				}
			}
		}
		if info, err := os.Stat(marker); err != nil || info.Size() != 0 {
			t.Errorf("%s: want an empty marker file after certificate rotate (%v)", marker, err)
		}
		for f, b := range readAll(t, tlsDir, customCAFiles) {
			if !bytes.Equal(b, oldCAs[f]) {
				t.Errorf("certificate rotate changed the CA file %s", f)
			}
		}
	})
	s = startServerOn(t, s.Ports, dd)
	s.WaitReady(t)
	t.Run("start after rotate: new keys, same CAs", func(t *testing.T) {
		if _, err := os.Stat(marker); err == nil {
			t.Errorf("%s still exists after the start", marker)
		}
		for _, l := range serverLeaves(s.IP) {
			leaf := checkLeaf(t, tlsDir, l)
			if samePublicKey(leaf, oldLeaves[l.file].cert) {
				t.Errorf("%s was re-issued with its old key; certificate rotate must make a new key", l.file)
			}
		}
		for f, b := range readAll(t, tlsDir, customCAFiles) {
			if !bytes.Equal(b, oldCAs[f]) {
				t.Errorf("the CA file %s changed", f)
			}
		}
		rec, _ := currentRecord(t, s)
		assertDiskMatchesRecord(t, dd, rec)
		assertLeavesChainToRecord(t, s, rec)
		assertServesNewCA(t, s)
	})
	s.Stop(t)

	s = rotateSelected(t, s, "admin,api-server", []string{"client-admin", "client-kube-apiserver", "serving-kube-apiserver"})
	s.Stop(t)
	s = rotateSelected(t, s, "rke2-server,k3s-controller", []string{"serving-supervisor", "client-kpki-controller"})
	s.Stop(t)
}

// checkBackup checks the output of a certificate rotate run between from and to and returns the
// backup dir it names, which must be <dd>/server/tls-<unix seconds>.
func checkBackup(t *testing.T, r cmdResult, dd string, from, to time.Time) string {
	t.Helper()
	m := backedUpRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("stdout does not say %q:\n%s", "certificates backed up to <dir>; restart kpki to rotate them", r)
	}
	dir := m[1]
	if filepath.Dir(dir) != filepath.Join(dd, "server") {
		t.Errorf("backup dir %s is not in %s", dir, filepath.Join(dd, "server"))
	}
	bm := regexp.MustCompile(`^tls-([0-9]+)(-[0-9]+)?$`).FindStringSubmatch(filepath.Base(dir))
	if bm == nil {
		t.Errorf("backup dir %s is not named tls-<unix seconds>", dir)
	} else if secs, _ := strconv.ParseInt(bm[1], 10, 64); secs < from.Unix() || secs > to.Unix() {
		t.Errorf("backup dir %s: %d is not the time of the rotation (%d … %d)", dir, secs, from.Unix(), to.Unix())
	}
	if info, err := os.Stat(dir); err != nil || !info.IsDir() {
		t.Fatalf("backup dir %s: %v", dir, err)
	}
	return dir
}

// rotateSelected runs `certificate rotate --service services` on the stopped server s, checks
// that exactly the files of the leaves want were deleted, restarts s and checks that exactly
// those were re-issued with new keys. It returns the running server.
func rotateSelected(t *testing.T, s *kpkiServer, services string, want []string) *kpkiServer {
	t.Helper()
	dd := s.DataDir
	before := hashTree(t, dd)
	old := snapshotLeaves(t, s)
	from := time.Now()
	r := kpkiOK(t, "certificate", "rotate", "--data-dir", dd, "--service", services)
	backup := checkBackup(t, r, dd, from, time.Now())
	backupRel := filepath.ToSlash(strings.TrimPrefix(backup, dd+string(filepath.Separator)))
	isBackup := func(diff string) bool {
		return strings.HasPrefix(diff, "added "+backupRel+"/") || diff == "added "+backupRel
	}
	wantFile := func(rel string) bool {
		for _, w := range want {
			if rel == "server/tls/"+w+".crt" || rel == "server/tls/"+w+".key" {
				return true
			}
		}
		return false
	}
	t.Run("rotate --service "+services, func(t *testing.T) {
		removed := 0
		for _, d := range treeDiff(before, hashTree(t, dd)) {
			switch {
			case isBackup(d), d == "added force-restart":
			case strings.HasPrefix(d, "removed ") && wantFile(strings.TrimPrefix(d, "removed ")):
				removed++
			default:
				t.Errorf("certificate rotate --service %s: unexpected change %s", services, d)
			}
		}
		if removed != 2*len(want) {
			t.Errorf("certificate rotate --service %s removed %d files, want the %d of %v", services, removed, 2*len(want), want)
		}
	})
	s = startServerOn(t, s.Ports, dd)
	s.WaitReady(t)
	t.Run("start after rotate --service "+services, func(t *testing.T) {
		changed := 0
		for _, d := range treeDiff(before, hashTree(t, dd)) {
			switch {
			case isBackup(d):
			case strings.HasPrefix(d, "changed ") && wantFile(strings.Fields(d)[1]):
				changed++
			default:
				t.Errorf("after certificate rotate --service %s and a start: unexpected change %s", services, d)
			}
		}
		if changed != 2*len(want) {
			t.Errorf("%d files were re-issued, want the %d of %v", changed, 2*len(want), want)
		}
		for _, l := range serverLeaves(s.IP) {
			if !slices.Contains(want, l.file) {
				continue
			}
			leaf := checkLeaf(t, s.TLSDir(), l)
			if samePublicKey(leaf, old[l.file].cert) {
				t.Errorf("%s was re-issued with its old key", l.file)
			}
		}
		rec, _ := currentRecord(t, s)
		assertLeavesChainToRecord(t, s, rec)
	})
	return s
}

// TestSeedCustomCA walks "Using Custom CA Certificates" (an existing root; an existing root and
// intermediate) and then "Rotating Custom CA Certificates" under the same root, with a dry run
// first.
func TestSeedCustomCA(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "bash")
	for _, v := range []struct {
		name         string
		intermediate bool
	}{
		{"existing root", false},
		{"existing root and intermediate", true},
	} {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			dd, root := customCADataDir(t, v.intermediate)
			const pw = "seed-custom-ca-secret"
			args := []string{"--token", pw}
			metrics := ""
			if !v.intermediate {
				metrics = net.JoinHostPort(loopback, strconv.Itoa(freePort(t, loopback)))
				args = append(args, "--metrics-address", metrics)
			}
			s := startServer(t, dd, args...)
			s.WaitReady(t)

			t.Run("first start", func(t *testing.T) {
				want := "K10" + derHash(root) + "::server:" + pw
				if got := readTokenFile(t, dd, "token"); got != want {
					t.Errorf("token %q, want K10<sha256 of the root's DER>::server:<password> (hash %s)", redact(got), derHash(root))
				}
				for _, l := range serverLeaves(s.IP) {
					certs := readCerts(t, filepath.Join(s.TLSDir(), l.file+".crt"))
					if !certs[len(certs)-1].Equal(root) {
						t.Errorf("%s.crt does not end with the existing root", l.file)
					}
				}
				rec, _ := currentRecord(t, s)
				assertDiskMatchesRecord(t, dd, rec)
				assertLeavesChainToRecord(t, s, rec)
			})

			// The seed page: cp root-ca.* intermediate-ca.* and service.key to the staging
			// dir, run the script with DATA_DIR=<stage>, rotate-ca --path=<stage>/server.
			stage := stageFrom(t, dd, "root-ca.*", "intermediate-ca.*", "service.key")
			runGenCustomCA(t, stage)
			s = rotateCustomCA(t, s, "same intermediate", stage, root, metrics, args)

			if !v.intermediate {
				// A new intermediate under the same root: only root-ca.* and service.key copied.
				stage := stageFrom(t, dd, "root-ca.*", "service.key")
				runGenCustomCA(t, stage)
				inter := readCerts(t, filepath.Join(stage, "server", "tls", "intermediate-ca.pem"))[0]
				if inter.Equal(readCerts(t, filepath.Join(dd, "server", "tls", "intermediate-ca.pem"))[0]) {
					t.Fatalf("gen-custom-ca.sh did not make a new intermediate")
				}
				s = rotateCustomCA(t, s, "new intermediate", stage, root, metrics, args)
			}
			s.Stop(t)
		})
	}
}

// rotateCustomCA loads the CAs staged in <stage>/server into the running server s with
// rotate-ca (a dry run first, then for real, without --force), restarts s with args and checks
// the outcome; name labels the subtests. metrics is the server's --metrics-address ("" when
// off). It returns the restarted server.
func rotateCustomCA(t *testing.T, s *kpkiServer, name, stage string, root *x509.Certificate, metrics string, args []string) *kpkiServer {
	t.Helper()
	dd := s.DataDir
	stageServer := filepath.Join(stage, "server")
	tokenBefore := readTokenFile(t, dd, "token")
	oldLeaves := snapshotLeaves(t, s)
	oldFirst := firstCerts(t, dd)
	recBefore, _ := currentRecord(t, s)

	t.Run(name+": rotate-ca dry run", func(t *testing.T) {
		b := takeBaseline(t, s)
		r := rotateCA(t, s, stageServer, "--dry-run")
		if r.code != 0 {
			t.Fatalf("want exit code 0:\n%s", r)
		}
		if strings.Contains(r.stdout, rotateCASaved) {
			t.Errorf("the dry run says it saved the certificates:\n%s", r)
		}
		for _, ca := range caFiles {
			staged := readCerts(t, filepath.Join(stageServer, "tls", ca+".crt"))[0]
			for what, want := range map[string]string{
				"file name":           ca + ".crt",
				"new fingerprint":     derHash(staged),
				"old fingerprint":     derHash(oldFirst[ca]),
				"new subject":         staged.Subject.CommonName,
				"old subject":         oldFirst[ca].Subject.CommonName,
				"new issuer":          staged.Issuer.CommonName,
				"new expiry (year)":   strconv.Itoa(staged.NotAfter.UTC().Year()),
				"old expiry (year)":   strconv.Itoa(oldFirst[ca].NotAfter.UTC().Year()),
				"whether tokens move": "token",
			} {
				if !strings.Contains(strings.ToLower(r.stdout), strings.ToLower(want)) {
					t.Errorf("the dry run output lacks the %s of %s (%q):\n%s", what, ca, want, r)
				}
			}
		}
		b.assertUnchanged(t, s, "rotate-ca --dry-run")
	})

	if metrics != "" {
		if v := metricValue(t, metrics, "kpki_restart_required"); v != "0" {
			t.Errorf("kpki_restart_required %q before rotate-ca, want 0", v)
		}
	}
	from := time.Now()
	r := rotateCA(t, s, stageServer)
	to := time.Now()
	assertRotateCASaved(t, r)
	t.Run(name+": rotate-ca saved and applied live", func(t *testing.T) {
		rec, keys := currentRecord(t, s)
		if len(keys) != 1 {
			t.Errorf("bootstrap keys %v, want one", keyNames(keys))
		}
		assertRecordHoldsStaged(t, rec, stageServer, from, to)
		if !bytes.Equal(rec["PasswdFile"].Content, recBefore["PasswdFile"].Content) || rec["PasswdFile"].Timestamp != recBefore["PasswdFile"].Timestamp {
			t.Errorf("rotate-ca changed PasswdFile in the record")
		}
		waitLiveApplied(t, s, rec)
		assertDiskMatchesRecord(t, dd, rec)
		assertLeavesChainToRecord(t, s, rec)
		if metrics != "" {
			if v := metricValue(t, metrics, "kpki_restart_required"); v != "0" {
				t.Errorf("kpki_restart_required %q after rotate-ca applied live, want 0", v)
			}
		}
	})

	s = restartServer(t, s, args...)
	t.Run(name+": restart after rotate-ca", func(t *testing.T) {
		for _, f := range customCAFiles {
			if !bytes.Equal(readFile(t, filepath.Join(dd, "server", "tls", f)), readFile(t, filepath.Join(stageServer, "tls", f))) {
				t.Errorf("%s on disk is not the staged file after the restart", f)
			}
		}
		rec, _ := currentRecord(t, s)
		assertDiskMatchesRecord(t, dd, rec)
		assertReissuedUnderNewCAs(t, s, oldLeaves, true)
		assertLeavesChainToRecord(t, s, rec)
		if got := readTokenFile(t, dd, "token"); got != tokenBefore {
			t.Errorf("token changed from %q to %q; a rotation under the same root keeps it", redact(tokenBefore), redact(got))
		}
		if got := tokenCAHash(t, readTokenFile(t, dd, "token")); got != derHash(root) {
			t.Errorf("token CA hash %s, want sha256 of the root's DER %s", got, derHash(root))
		}
		assertServesNewCA(t, s)
		if metrics != "" {
			if v := metricValue(t, metrics, "kpki_restart_required"); v != "0" {
				t.Errorf("kpki_restart_required %q after the restart, want 0", v)
			}
		}
	})
	return s
}

// TestSeedRotateSelfSignedCA walks "Rotating Self-Signed CA Certificates": new CAs cross-signed
// by the current ones, staged in <dd>/server/rotate-ca by `kpki certificate cross-sign-ca` (twice,
// the second time from the cross-signed CAs) or by the K3s script's openssl version, then
// rotate-ca without --force and a restart.
func TestSeedRotateSelfSignedCA(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "bash")

	t.Run("kpki certificate cross-sign-ca", func(t *testing.T) {
		t.Parallel()
		dd := filepath.Join(t.TempDir(), "data")
		s := startServer(t, dd)
		s.WaitReady(t)
		for round := 1; round <= 2; round++ {
			r := kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", dd)
			if want := "rotate-ca --path=" + filepath.Join(dd, "server", "rotate-ca"); !strings.Contains(r.stdout, want) {
				t.Errorf("cross-sign-ca does not print the command %q:\n%s", want, r)
			}
			s = rotateCrossSigned(t, s, fmt.Sprintf("round %d", round), r.stdout)
		}
		s.Stop(t)
	})

	t.Run("testdata/rotate-default-ca.sh", func(t *testing.T) {
		t.Parallel()
		script, err := filepath.Abs("testdata/rotate-default-ca.sh")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(script); err != nil {
			t.Fatalf("the openssl version of K3s's rotate-default-ca-certs.sh is missing, so the seed page's procedure cannot be walked: %v", err)
		}
		dd := filepath.Join(t.TempDir(), "data")
		s := startServer(t, dd)
		s.WaitReady(t)
		// Twice (the second time from the script's own cross-signed CAs), then
		// cross-sign-ca on top of the script's files.
		for round := 1; round <= 2; round++ {
			name := fmt.Sprintf("script round %d", round)
			out := string(run(t, t.TempDir(), []string{"DATA_DIR=" + dd, "PRODUCT=kpki"}, "bash", script))
			checkStagedRotation(t, dd, name, out)
			s = rotateCrossSigned(t, s, name, out)
		}
		if !stagedFileExists(t, dd, "server-root-old.key") {
			t.Fatal("the script left no working files in the staging dir; the check below would prove nothing")
		}
		r := kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", dd)
		if stagedFileExists(t, dd, "server-root-old.key") {
			t.Error("cross-sign-ca did not replace the staging dir the script wrote")
		}
		checkStagedRotation(t, dd, "cross-sign-ca after the script", r.stdout)
		s = rotateCrossSigned(t, s, "cross-sign-ca after the script", r.stdout)
		s.Stop(t)
	})
}

// rotateCrossSigned loads <dd>/server/rotate-ca, staged by a cross-signing tool whose output
// (with the new tokens) is out, into the running server s, restarts it and checks the outcome.
func rotateCrossSigned(t *testing.T, s *kpkiServer, name, out string) *kpkiServer {
	t.Helper()
	dd := s.DataDir
	stageServer := filepath.Join(dd, "server", "rotate-ca")
	newServerToken := printedServerTokenRE.FindString(out)
	newAgentToken := printedAgentTokenRE.FindString(out)
	if newServerToken == "" || newAgentToken == "" {
		t.Errorf("%s: the cross-signing output does not print the new server and agent tokens:\n%s", name, out)
	}
	oldLeaves := snapshotLeaves(t, s)
	oldBundles := map[string][]*x509.Certificate{}
	previousRoots := map[string]*x509.Certificate{} // keyed by CA file name with .crt
	for _, ca := range caFiles {
		b := readCerts(t, filepath.Join(dd, "server", "tls", ca+".crt"))
		oldBundles[ca] = b
		previousRoots[ca+".crt"] = b[0]
		if len(b) > 1 {
			previousRoots[ca+".crt"] = b[1]
		}
	}

	t.Run(name+": staged files", func(t *testing.T) {
		for _, ca := range caFiles {
			crt := filepath.Join(stageServer, "tls", ca+".crt")
			bundle := readCerts(t, crt)
			if len(bundle) != 4 {
				t.Errorf("%s: %d certificates, want new CA, new root, new root cross-signed, current root", crt, len(bundle))
				continue
			}
			current := previousRoots[ca+".crt"]
			if !bundle[3].Equal(current) {
				t.Errorf("%s: the last certificate is not the current root %s", crt, current.Subject)
			}
			if err := bundle[2].CheckSignatureFrom(current); err != nil {
				t.Errorf("%s: the third certificate is not cross-signed by the current root: %v", crt, err)
			}
			if !selfSigned(bundle[1]) || !samePublicKey(bundle[1], bundle[2]) {
				t.Errorf("%s: the second and third certificates are not the new root, self-signed and cross-signed", crt)
			}
			keys := readKeys(t, filepath.Join(stageServer, "tls", ca+".key"))
			if len(keys) != 2 || !keyMatches(bundle[0].PublicKey, keys[0].signer) || !keyMatches(bundle[1].PublicKey, keys[1].signer) {
				t.Errorf("%s.key: want the new CA key followed by the new root key", ca)
			}
		}
	})

	r := rotateCA(t, s, stageServer)
	assertRotateCASaved(t, r)
	if newServerToken != "" && !strings.Contains(r.stdout, newServerToken) {
		t.Errorf("%s: rotate-ca does not print the new server token printed by the cross-signing step:\n%s", name, r)
	}
	staged := readAll(t, filepath.Join(stageServer, "tls"), customCAFiles)

	s = restartServer(t, s)
	t.Run(name+": restart after rotate-ca", func(t *testing.T) {
		tok := readTokenFile(t, dd, "token")
		if tok != newServerToken {
			t.Errorf("token after the restart %q, want the one printed by the cross-signing step %q", redact(tok), redact(newServerToken))
		}
		if got := readTokenFile(t, dd, "agent-token"); got != newAgentToken {
			t.Errorf("agent-token after the restart %q, want the one printed by the cross-signing step %q", redact(got), redact(newAgentToken))
		}
		if got := readTokenFile(t, dd, "node-token"); got != tok {
			t.Errorf("node-token differs from token")
		}
		bundle := readCerts(t, filepath.Join(dd, "server", "tls", "server-ca.crt"))
		hash := tokenCAHash(t, tok)
		if !slices.ContainsFunc(bundle, func(c *x509.Certificate) bool { return selfSigned(c) && derHash(c) == hash }) {
			t.Errorf("token CA hash %s is not the SHA-256 of a root of the new server-ca.crt", hash)
		}
		if show := kpkiOK(t, "token", "show", "--data-dir", dd); !strings.Contains(show.stdout, tok) {
			t.Errorf("token show does not print the token %q:\n%s", redact(tok), show)
		}
		for f, b := range staged {
			if !bytes.Equal(readFile(t, filepath.Join(dd, "server", "tls", f)), b) {
				t.Errorf("%s on disk is not the staged file after the restart", f)
			}
		}
		rec, _ := currentRecord(t, s)
		assertDiskMatchesRecord(t, dd, rec)
		assertReissuedUnderNewCAs(t, s, oldLeaves, false)
		assertLeavesChainToRecord(t, s, rec)
		assertServesNewCA(t, s)

		// The continuous chain of trust of the seed page: a client that trusts only the
		// previous root verifies every new leaf through the cross-signed new root.
		assertTrustedByPreviousRoots(t, s, previousRoots)
	})
	return s
}

// TestSeedRotateCANewRoot loads CAs under a new, unrelated root (gen-custom-ca.sh into an
// empty staging dir): refused without --force, accepted with it; the token follows the new root.
func TestSeedRotateCANewRoot(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "bash")
	dd := filepath.Join(t.TempDir(), "data")
	stage := filepath.Join(t.TempDir(), "opt-kpki")
	runGenCustomCA(t, stage)
	stageServer := filepath.Join(stage, "server")
	newRoot := readCerts(t, filepath.Join(stageServer, "tls", "root-ca.pem"))[0]
	s := startServer(t, dd)
	s.WaitReady(t)
	tokenBefore := readTokenFile(t, dd, "token")

	t.Run("refused without --force", func(t *testing.T) {
		b := takeBaseline(t, s)
		r := rotateCA(t, s, stageServer)
		// Every failed check is reported together: the five CAs and service.key.
		wants := [][]string{anyOf("chain"), anyOf("service.key")}
		for _, ca := range caFiles {
			wants = append(wants, anyOf(ca+".crt"))
		}
		assertRefused(t, r, wants...)
		b.assertUnchanged(t, s, "rotate-ca with a new root without --force")
		rec, _ := currentRecord(t, s)
		assertLeavesChainToRecord(t, s, rec)
	})

	t.Run("dry run with --force", func(t *testing.T) {
		b := takeBaseline(t, s)
		r := rotateCA(t, s, stageServer, "--force", "--dry-run")
		if r.code != 0 {
			t.Fatalf("want exit code 0:\n%s", r)
		}
		if !strings.Contains(r.stdout, derHash(newRoot)) {
			t.Errorf("the dry run does not say that the token CA hash becomes %s:\n%s", derHash(newRoot), r)
		}
		b.assertUnchanged(t, s, "rotate-ca --force --dry-run")
		rec, _ := currentRecord(t, s)
		assertLeavesChainToRecord(t, s, rec)
	})

	oldLeaves := snapshotLeaves(t, s)
	from := time.Now()
	r := rotateCA(t, s, stageServer, "--force")
	to := time.Now()
	assertRotateCASaved(t, r)
	newToken := "K10" + derHash(newRoot) + "::server:" + passphrase(tokenBefore)
	if !strings.Contains(r.stdout, newToken) {
		t.Errorf("rotate-ca --force does not print the new server token K10<new root hash>::server:<password>:\n%s", r)
	}
	rec, _ := currentRecord(t, s)
	assertRecordHoldsStaged(t, rec, stageServer, from, to)
	t.Run("rotate-ca --force applied live, as disruptive", func(t *testing.T) {
		waitLiveApplied(t, s, rec)
		assertDiskMatchesRecord(t, dd, rec)
		if !waitUntil(t, 60*time.Second, func() (bool, string) {
			return strings.Contains(s.Stderr(), "breaks continuity"), "no warning that the new CA set breaks continuity"
		}) {
			return
		}
		var warning string
		for _, line := range strings.Split(s.Stderr(), "\n") {
			if strings.Contains(line, "breaks continuity") {
				warning = line
			}
		}
		for _, want := range []string{"level=WARN", "disruptive", "re-join", "new agent token", derHash(newRoot)} {
			if !strings.Contains(warning, want) {
				t.Errorf("the warning about the forced new root lacks %q: %s", want, warning)
			}
		}
	})

	s = restartServer(t, s)
	t.Run("restart after rotate-ca --force", func(t *testing.T) {
		if got := readTokenFile(t, dd, "token"); got != newToken {
			t.Errorf("token %q, want %q (hash of the new root)", redact(got), redact(newToken))
		}
		if got := tokenCAHash(t, readTokenFile(t, dd, "agent-token")); got != derHash(newRoot) {
			t.Errorf("agent-token CA hash %s, want the new root's %s", got, derHash(newRoot))
		}
		rec, _ := currentRecord(t, s)
		assertDiskMatchesRecord(t, dd, rec)
		assertReissuedUnderNewCAs(t, s, oldLeaves, true)
		assertLeavesChainToRecord(t, s, rec)
		for _, l := range serverLeaves(s.IP) {
			certs := readCerts(t, filepath.Join(s.TLSDir(), l.file+".crt"))
			if !certs[len(certs)-1].Equal(newRoot) {
				t.Errorf("%s.crt does not end with the new root", l.file)
			}
		}
		assertServesNewCA(t, s)
	})
	s.Stop(t)
}

// TestSeedRotateServiceAccountKey walks "Service-Account Issuer Key Rotation" command for
// command, after checking that a service.key without the current key is refused.
func TestSeedRotateServiceAccountKey(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	dd := filepath.Join(t.TempDir(), "data")
	current := filepath.Join(dd, "server", "tls", "service.key")
	s := startServer(t, dd)
	s.WaitReady(t)

	t.Run("refused without the current key", func(t *testing.T) {
		stage := filepath.Join(t.TempDir(), "opt-kpki")
		opensslGenRSA(t, filepath.Join(stage, "server", "tls", "service.key"))
		b := takeBaseline(t, s)
		r := rotateCA(t, s, filepath.Join(stage, "server"))
		assertRefused(t, r, anyOf("service.key"), anyOf("current", "old", "existing", "previous"))
		b.assertUnchanged(t, s, "rotate-ca with a service.key lacking the current key")
		rec, _ := currentRecord(t, s)
		assertLeavesChainToRecord(t, s, rec)
	})

	oldKeys := readKeys(t, current)
	oldLeaves := snapshotLeaves(t, s)
	oldCAs := readAll(t, filepath.Join(dd, "server", "tls"), customCAFiles[:len(customCAFiles)-1])
	tokenBefore := readTokenFile(t, dd, "token")
	stage := filepath.Join(t.TempDir(), "opt-kpki")
	staged := filepath.Join(stage, "server", "tls", "service.key")
	opensslGenRSA(t, staged)
	appendFile(t, staged, current)
	before := hashTree(t, dd)
	from := time.Now()
	r := rotateCA(t, s, filepath.Join(stage, "server"))
	to := time.Now()
	assertRotateCASaved(t, r)
	rec, _ := currentRecord(t, s)
	assertRecordHoldsStaged(t, rec, filepath.Join(stage, "server"), from, to)
	waitServiceKeyApplied(t, s, rec)
	// The live apply changed service.key and service.current.key, nothing else.
	for _, d := range treeDiff(before, hashTree(t, dd)) {
		if !strings.HasPrefix(d, "changed server/tls/service.key ") && !strings.HasPrefix(d, "changed server/tls/service.current.key ") {
			t.Errorf("rotate-ca of service.key changed more than the service-account keys: %s", d)
		}
	}

	s = restartServer(t, s)
	t.Run("restart after rotate-ca", func(t *testing.T) {
		if !bytes.Equal(readFile(t, current), readFile(t, staged)) {
			t.Errorf("service.key on disk is not the staged file")
		}
		keys := readKeys(t, current)
		newKey := readKeys(t, staged)[0]
		if len(keys) != len(oldKeys)+1 || !keyMatches(keys[0].signer.Public(), newKey.signer) || !keyMatches(keys[1].signer.Public(), oldKeys[0].signer) {
			t.Errorf("service.key holds %d keys, want the new key followed by the %d old one(s)", len(keys), len(oldKeys))
		}
		cur := readKeys(t, filepath.Join(dd, "server", "tls", "service.current.key"))
		if len(cur) != 1 || !keyMatches(cur[0].signer.Public(), newKey.signer) {
			t.Errorf("service.current.key is not the new first key of service.key")
		}
		for f, b := range readAll(t, filepath.Join(dd, "server", "tls"), customCAFiles[:len(customCAFiles)-1]) {
			if !bytes.Equal(b, oldCAs[f]) {
				t.Errorf("the CA file %s changed", f)
			}
		}
		for name, o := range snapshotLeaves(t, s) {
			if !bytes.Equal(o.crt, oldLeaves[name].crt) || !bytes.Equal(o.key, oldLeaves[name].key) {
				t.Errorf("%s changed; a service-account key rotation leaves the leaves alone", name)
			}
		}
		if got := readTokenFile(t, dd, "token"); got != tokenBefore {
			t.Errorf("the token changed")
		}
		rec, _ := currentRecord(t, s)
		assertDiskMatchesRecord(t, dd, rec)
		assertLeavesChainToRecord(t, s, rec)
	})
	s.Stop(t)
}

// TestSeedTokenRotate rotates the server token with `kpki token rotate` (generated, then
// --new-token) and checks the token files, the bootstrap key and a restart.
func TestSeedTokenRotate(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	dd := filepath.Join(t.TempDir(), "data")
	s := startServer(t, dd)
	s.WaitReady(t)
	agentBefore := readTokenFile(t, dd, "agent-token")
	hash := tokenCAHash(t, readTokenFile(t, dd, "token"))

	rotate := func(t *testing.T, extra ...string) string {
		t.Helper()
		oldToken := readTokenFile(t, dd, "token")
		oldKey := bootstrapKey(passphrase(oldToken))
		recBefore, _ := currentRecord(t, s)
		r := kpkiOK(t, append([]string{"token", "rotate", "--server", s.SupervisorURL(), "--data-dir", dd}, extra...)...)
		newToken := printedServerTokenRE.FindString(r.stdout)
		if newToken == "" {
			t.Fatalf("token rotate does not print the new server token:\n%s", r)
		}
		if newToken == oldToken {
			t.Fatalf("token rotate printed the old token")
		}
		if got := readTokenFile(t, dd, "token"); got != newToken {
			t.Errorf("%s/server/token %q, want the printed token %q", dd, redact(got), redact(newToken))
		}
		if got := readTokenFile(t, dd, "node-token"); got != newToken {
			t.Errorf("node-token %q, want the printed token %q", redact(got), redact(newToken))
		}
		if got := readTokenFile(t, dd, "agent-token"); got != agentBefore {
			t.Errorf("token rotate changed the agent token")
		}
		if got := tokenCAHash(t, newToken); got != hash {
			t.Errorf("the new token's CA hash %s, want the unchanged %s", got, hash)
		}
		newPass := passphrase(newToken)
		keys := bootstrapKeys(t, s)
		if _, ok := keys[oldKey]; ok {
			t.Errorf("the bootstrap record is still under the old key %s", oldKey)
		}
		newKey := bootstrapKey(newPass)
		v, ok := keys[newKey]
		if !ok || len(keys) != 1 {
			t.Fatalf("bootstrap keys %v, want only %s", keyNames(keys), newKey)
		}
		if _, err := decryptBootstrap(passphrase(oldToken), v.value); err == nil {
			t.Errorf("the new record still decrypts with the old password")
		}
		rec := decodeRecord(t, newPass, v.value)
		for field, e := range recBefore {
			if field != "PasswdFile" && !bytes.Equal(e.Content, rec[field].Content) {
				t.Errorf("token rotate changed %s in the record", field)
			}
		}
		passwd := readFile(t, filepath.Join(dd, "server", "cred", "passwd"))
		if !bytes.Equal(rec["PasswdFile"].Content, passwd) {
			t.Errorf("the record's PasswdFile is not cred/passwd")
		}
		if !slices.Contains(strings.Split(strings.TrimSpace(string(passwd)), "\n"), newPass+",server,server,kpki:server") {
			t.Errorf("cred/passwd has no line <new password>,server,server,kpki:server")
		}
		if show := kpkiOK(t, "token", "show", "--data-dir", dd); !strings.Contains(show.stdout, newToken) || !strings.Contains(show.stdout, agentBefore) {
			t.Errorf("token show does not print the new server token and the agent token:\n%s", show)
		}
		assertLeavesChainToRecord(t, s, rec)

		// The old password no longer authenticates.
		stale := filepath.Join(t.TempDir(), "stale")
		writeFile(t, filepath.Join(stale, "server", "token"), []byte(oldToken+"\n"), 0o600)
		writeFile(t, filepath.Join(stale, "server", "tls", "server-ca.crt"), readFile(t, filepath.Join(dd, "server", "tls", "server-ca.crt")), 0o600)
		b := takeBaseline(t, s)
		r = runKpki(t, nil, "token", "rotate", "--server", s.SupervisorURL(), "--data-dir", stale, "--new-token", "seed-stale-attempt")
		assertRefused(t, r, anyOf("401", "nauthorized", "authenticat", "credential", "password", "token"))
		b.assertUnchanged(t, s, "token rotate with the old token")
		return newToken
	}

	t.Run("generated", func(t *testing.T) { rotate(t) })
	var chosen string
	t.Run("--new-token", func(t *testing.T) {
		const pw = "seed-chosen-token-secret"
		chosen = rotate(t, "--new-token", pw)
		if want := "K10" + hash + "::server:" + pw; chosen != want {
			t.Errorf("token %q, want %q", redact(chosen), redact(want))
		}
	})

	tok := readTokenFile(t, dd, "token")
	s = restartServer(t, s)
	t.Run("restart", func(t *testing.T) {
		if got := readTokenFile(t, dd, "token"); got != tok {
			t.Errorf("the restart changed the token")
		}
		rec, keys := currentRecord(t, s)
		if len(keys) != 1 {
			t.Errorf("bootstrap keys %v, want one", keyNames(keys))
		}
		assertDiskMatchesRecord(t, dd, rec)
		assertLeavesChainToRecord(t, s, rec)
		if show := kpkiOK(t, "token", "show", "--data-dir", dd); !strings.Contains(show.stdout, tok) {
			t.Errorf("token show does not print the token:\n%s", show)
		}
	})
	s.Stop(t)
}

// TestSeedRotateCABadInput feeds rotate-ca staging dirs that must be refused, each with an error
// naming the file and the failed check, and nothing changed on disk or in the datastore.
func TestSeedRotateCABadInput(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "bash")
	dd, _ := customCADataDir(t, true)
	s := startServer(t, dd, "--token", "seed-bad-input-secret")
	s.WaitReady(t)

	good := stageFrom(t, dd, "root-ca.*", "intermediate-ca.*", "service.key")
	runGenCustomCA(t, good)
	goodServer := filepath.Join(good, "server")
	goodFile := func(rel string) []byte { return readFile(t, filepath.Join(goodServer, rel)) }
	if r := rotateCA(t, s, goodServer, "--dry-run"); r.code != 0 {
		t.Fatalf("the unmodified staging dir is not accepted by a dry run, so the cases below would prove nothing:\n%s", r)
	}

	loneCrt, loneKey, _, _ := selfSignedCAPEM(t, "seed-lone-server-ca")
	otherRootPEM, _, otherRoot, otherRootKey := selfSignedCAPEM(t, "seed-unrelated-root")
	now := time.Now()
	otherCA, otherCAKey := issueUnder(t, otherRoot, otherRootKey, x509.Certificate{
		Subject:               pkix.Name{CommonName: "seed-unrelated-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(5, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
	})
	newServiceKey := filepath.Join(t.TempDir(), "service.key")
	opensslGenRSA(t, newServiceKey)
	peer := goodFile("tls/etcd/peer-ca.crt")

	cases := []struct {
		name  string
		files map[string][]byte
		flags []string
		wants [][]string
	}{
		{
			name:  "lone self-signed CA",
			files: map[string][]byte{"tls/server-ca.crt": loneCrt, "tls/server-ca.key": loneKey},
			wants: [][]string{anyOf("server-ca.crt"), anyOf("single", "one certificate")},
		},
		{
			name:  "key does not match",
			files: map[string][]byte{"tls/client-ca.crt": goodFile("tls/client-ca.crt"), "tls/client-ca.key": newECKeyPEM(t)},
			wants: [][]string{anyOf("client-ca.key", "client-ca.crt"), anyOf("match")},
		},
		{
			name: "chain does not reach the old root",
			files: map[string][]byte{
				"tls/request-header-ca.crt": append(otherCA, otherRootPEM...),
				"tls/request-header-ca.key": otherCAKey,
			},
			wants: [][]string{anyOf("request-header-ca.crt"), anyOf("chain", "verify", "unknown authority")},
		},
		{
			name:  "service.key without the old first key",
			files: map[string][]byte{"tls/service.key": readFile(t, newServiceKey)},
			wants: [][]string{anyOf("service.key"), anyOf("current", "old", "existing", "previous")},
		},
		{
			name:  "truncated PEM",
			files: map[string][]byte{"tls/etcd/peer-ca.crt": peer[:len(peer)/2], "tls/etcd/peer-ca.key": goodFile("tls/etcd/peer-ca.key")},
			wants: [][]string{anyOf("etcd/peer-ca.crt"), anyOf("PEM", "pem", "parse", "truncated", "malformed", "decode", "no certificate")},
		},
		{
			name:  "truncated PEM with --force",
			files: map[string][]byte{"tls/etcd/peer-ca.crt": peer[:len(peer)/2], "tls/etcd/peer-ca.key": goodFile("tls/etcd/peer-ca.key")},
			flags: []string{"--force"},
			wants: [][]string{anyOf("etcd/peer-ca.crt"), anyOf("PEM", "pem", "parse", "truncated", "malformed", "decode", "no certificate")},
		},
		{
			name: "every failed check reported together",
			files: map[string][]byte{
				"tls/client-ca.crt": goodFile("tls/client-ca.crt"),
				"tls/client-ca.key": newECKeyPEM(t),
				"tls/service.key":   readFile(t, newServiceKey),
			},
			wants: [][]string{anyOf("client-ca.key", "client-ca.crt"), anyOf("match"), anyOf("service.key")},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stageServer := writeStaged(t, tc.files)
			b := takeBaseline(t, s)
			r := rotateCA(t, s, stageServer, tc.flags...)
			assertRefused(t, r, tc.wants...)
			b.assertUnchanged(t, s, "refused rotate-ca ("+tc.name+")")
			rec, _ := currentRecord(t, s)
			assertLeavesChainToRecord(t, s, rec)
		})
	}

	t.Run("wrong token", func(t *testing.T) {
		wrong := filepath.Join(t.TempDir(), "wrong")
		tok := readTokenFile(t, dd, "token")
		writeFile(t, filepath.Join(wrong, "server", "token"), []byte(strings.TrimSuffix(tok, passphrase(tok))+"not-the-password\n"), 0o600)
		writeFile(t, filepath.Join(wrong, "server", "tls", "server-ca.crt"), readFile(t, filepath.Join(dd, "server", "tls", "server-ca.crt")), 0o600)
		b := takeBaseline(t, s)
		r := runKpki(t, nil, "certificate", "rotate-ca", "--path="+goodServer, "--server", s.SupervisorURL(), "--data-dir", wrong)
		assertRefused(t, r, anyOf("401", "nauthorized", "authenticat", "credential", "password", "token"))
		b.assertUnchanged(t, s, "rotate-ca with a wrong token")
	})

	t.Run("server down", func(t *testing.T) {
		port := freePort(t, loopback)
		url := "https://" + net.JoinHostPort(loopback, strconv.Itoa(port))
		b := takeBaseline(t, s)
		r := runKpki(t, nil, "certificate", "rotate-ca", "--path="+goodServer, "--server", url, "--data-dir", dd)
		assertRefused(t, r, anyOf("cannot reach", "connection refused", "unreachable", "not reachable"), anyOf(net.JoinHostPort(loopback, strconv.Itoa(port))))
		b.assertUnchanged(t, s, "rotate-ca against a server that is down")
	})
	s.Stop(t)
}
