package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Live CA rotation: a running server takes the record rotate-ca stored, without a
// restart.

// waitUntil polls cond every 200ms until it holds or within runs out; it returns the last
// reason cond gave.
func waitUntil(t *testing.T, within time.Duration, cond func() (bool, string)) bool {
	t.Helper()
	deadline := time.Now().Add(within)
	why := ""
	for time.Now().Before(deadline) {
		ok, reason := cond()
		if ok {
			return true
		}
		why = reason
		time.Sleep(200 * time.Millisecond)
	}
	t.Errorf("not reached within %s: %s", within, why)
	return false
}

// liveApplied reports whether s's disk holds rec's CA files, its supervisor leaf is signed by
// the new server CA, and the supervisor serves that leaf.
func liveApplied(s *kpkiServer, rec bootstrapRecord) (bool, string) {
	for _, ca := range caFiles {
		field := caRecordField[ca+".crt"]
		data, err := os.ReadFile(filepath.Join(s.TLSDir(), ca+".crt"))
		if err != nil || !bytes.Equal(data, rec[field].Content) {
			return false, fmt.Sprintf("%s on %s is not the record's yet", ca, s.IP)
		}
	}
	data, err := os.ReadFile(filepath.Join(s.TLSDir(), "serving-supervisor.crt"))
	if err != nil {
		return false, err.Error()
	}
	leafs, err := parseCertsPEM(data)
	if err != nil {
		return false, err.Error()
	}
	ca, err := parseCertsPEM(rec[caRecordField["server-ca.crt"]].Content)
	if err != nil {
		return false, err.Error()
	}
	if leafs[0].CheckSignatureFrom(ca[0]) != nil {
		return false, "serving-supervisor.crt on " + s.IP + " is not under the new server CA yet"
	}
	served, err := servedLeaf(s)
	if err != nil || !served.Equal(leafs[0]) {
		return false, fmt.Sprintf("the supervisor of %s does not serve the new certificate yet (%v)", s.IP, err)
	}
	return true, ""
}

// liveApplyOK is the sample of successful live applies.
const liveApplyOK = `kpki_bootstrap_live_apply_total{result="ok"}`

// liveDone is liveApplied, and the server counted the apply as finished (after any etcd
// restart).
func liveDone(t *testing.T, s *kpkiServer, metrics string, rec bootstrapRecord) (bool, string) {
	if ok, why := liveApplied(s, rec); !ok {
		return false, why
	}
	if v := metricValue(t, metrics, liveApplyOK); v == "" || v == "0" {
		return false, "the live apply of " + s.IP + " has not finished"
	}
	return true, ""
}

// servedLeaf is the first certificate the supervisor of s sends, unverified.
func servedLeaf(s *kpkiServer) (*x509.Certificate, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", net.JoinHostPort(s.IP, strconv.Itoa(s.Ports.Supervisor)), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // inspected, then verified by the caller
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

// assertAdminKubeconfigWorks connects to the supervisor of s with what the admin kubeconfig
// holds: its CA must verify the served certificate, and the supervisor accepts its client
// certificate, which must chain to the client CA on disk.
func assertAdminKubeconfigWorks(t *testing.T, s *kpkiServer) {
	t.Helper()
	kc := kubectlConfig(t, filepath.Join(s.DataDir, "server", "cred", "admin.kubeconfig"), true)
	if len(kc.Clusters) != 1 || len(kc.Users) != 1 {
		t.Fatalf("admin.kubeconfig: %d clusters, %d users", len(kc.Clusters), len(kc.Users))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(kc.Clusters[0].Cluster.CertificateAuthorityData) {
		t.Fatal("admin.kubeconfig: no CA certificate")
	}
	pair, err := tls.X509KeyPair(kc.Users[0].User.ClientCertificateData, kc.Users[0].User.ClientKeyData)
	if err != nil {
		t.Fatalf("admin.kubeconfig: client certificate and key: %v", err)
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, ServerName: s.IP, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(s.SupervisorURL() + "/ping")
	if err != nil {
		t.Fatalf("the admin kubeconfig's CA does not verify the supervisor of %s: %v", s.IP, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /ping with the admin kubeconfig: %d", resp.StatusCode)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for i, c := range readCerts(t, filepath.Join(s.TLSDir(), "client-ca.crt")) {
		if i == 0 {
			inter.AddCert(c)
		}
		if selfSigned(c) {
			roots.AddCert(c)
		} else {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the admin client certificate does not chain to client-ca.crt: %v", err)
	}
}

// TestLiveCARotationOneServer: cross-sign-ca and rotate-ca on a running server; without a
// restart, its disk, its supervisor, its kubeconfigs and tokens are under the new CAs and
// kpki_restart_required stays 0. A restart then changes nothing.
func TestLiveCARotationOneServer(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "kubectl")
	dd := filepath.Join(t.TempDir(), "data")
	metrics := "127.0.0.1:" + strconv.Itoa(freePort(t, "127.0.0.1"))
	s := startServer(t, dd, "--metrics-address", metrics)
	s.WaitReady(t)
	pid := s.cmd.Process.Pid
	oldLeaves := snapshotLeaves(t, s)
	previousRoots := map[string]*x509.Certificate{}
	for _, ca := range caFiles {
		previousRoots[ca+".crt"] = readCerts(t, filepath.Join(s.TLSDir(), ca+".crt"))[0]
	}
	cross := kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", dd)
	newServerToken, newAgentToken := printedServerTokenRE.FindString(cross.stdout), printedAgentTokenRE.FindString(cross.stdout)
	assertRotateCASaved(t, rotateCA(t, s, filepath.Join(dd, "server", "rotate-ca")))
	rec, _ := currentRecord(t, s)
	if !waitUntil(t, 90*time.Second, func() (bool, string) { return liveDone(t, s, metrics, rec) }) {
		t.Fatalf("the server did not apply the rotation live:\n%s", s.tail(40))
	}
	if s.exited() || s.cmd.Process.Pid != pid {
		t.Fatal("the server process did not keep running")
	}
	// The derived files are written in the same apply, before the supervisor swaps.
	assertDiskMatchesRecord(t, dd, rec)
	assertReissuedUnderNewCAs(t, s, oldLeaves, false)
	assertLeavesChainToRecord(t, s, rec)
	assertServesNewCA(t, s)
	served := s.ServedChain(t, "")
	if err := served[0].CheckSignatureFrom(readCerts(t, filepath.Join(s.TLSDir(), "server-ca.crt"))[0]); err != nil {
		t.Errorf("the served supervisor certificate is not signed by the new server CA: %v", err)
	}
	// A client that trusts only the previous root still verifies every new leaf, with openssl.
	assertTrustedByPreviousRoots(t, s, previousRoots)
	for _, ca := range []string{"server-ca", "client-ca"} {
		nochain := readCerts(t, filepath.Join(s.TLSDir(), ca+".nochain.crt"))
		if len(nochain) != 1 || !nochain[0].Equal(readCerts(t, filepath.Join(s.TLSDir(), ca+".crt"))[0]) {
			t.Errorf("%s.nochain.crt is not the new CA alone", ca)
		}
	}
	assertAdminKubeconfigWorks(t, s)
	if got := readTokenFile(t, dd, "token"); got != newServerToken {
		t.Errorf("token file %q, want the new token %q", redact(got), redact(newServerToken))
	}
	if got := readTokenFile(t, dd, "agent-token"); got != newAgentToken {
		t.Errorf("agent-token file %q, want the new token %q", redact(got), redact(newAgentToken))
	}
	for name, want := range map[string]string{"kpki_restart_required": "0", "kpki_ca_rotation_disruptive": "0"} {
		if v := metricValue(t, metrics, name); v != want {
			t.Errorf("%s = %q, want %s", name, v, want)
		}
	}
	if !strings.Contains(s.Stderr(), "applied the new bootstrap data live") {
		t.Errorf("no log line of the live apply:\n%s", s.tail(30))
	}
	if strings.Contains(s.Stderr(), "restart kpki to use") {
		t.Errorf("the server asked for a restart:\n%s", s.tail(30))
	}

	// The seed page's restart procedure still works, and changes nothing: a warm start.
	before := hashTree(t, dd)
	s = restartServer(t, s, "--metrics-address", metrics)
	assertTreeUnchanged(t, "a restart after the live apply", before, hashTree(t, dd))
	assertServesNewCA(t, s)
	if v := metricValue(t, metrics, "kpki_restart_required"); v != "0" {
		t.Errorf("kpki_restart_required %q after the restart, want 0", v)
	}
	s.Stop(t)
}

// TestLiveCARotationKilledMidApply: rotate-ca, then SIGKILL the server while it applies the
// new record live (right after rotate-ca returns, and a little later, in the middle of the
// leaves or of the etcd restart). Started again, it converges: every certificate matches its
// key and chains to the new CAs of the record, the disk holds the record's files, the
// supervisor serves the new certificate, and kpki_restart_required is 0.
func TestLiveCARotationKilledMidApply(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	dd := filepath.Join(t.TempDir(), "data")
	metrics := "127.0.0.1:" + strconv.Itoa(freePort(t, "127.0.0.1"))
	s := startServer(t, dd, "--metrics-address", metrics)
	s.WaitReady(t)
	midApply := 0
	for round, delay := range []time.Duration{0, 300 * time.Millisecond, 1500 * time.Millisecond} {
		kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", dd)
		staged := stagedCAs(t, filepath.Join(dd, "server", "rotate-ca", "tls"))
		assertRotateCASaved(t, rotateCA(t, s, filepath.Join(dd, "server", "rotate-ca")))
		time.Sleep(delay) // the kill instant, not a wait for a state
		s.Kill(t)
		finished := strings.Contains(s.Stderr(), "applied the new bootstrap data live")
		if !finished {
			midApply++
		}
		t.Logf("round %d: SIGKILL %v after rotate-ca returned; the live apply had finished: %v", round+1, delay, finished)

		s = startServerOn(t, s.Ports, dd, "--metrics-address", metrics)
		s.WaitReady(t)
		rec, _ := currentRecord(t, s)
		got := map[string][]byte{}
		for _, f := range caFiles {
			got[f] = rec[caRecordField[f+".crt"]].Content
		}
		if !oneOfCASets(got, []map[string][]byte{staged}) {
			t.Fatalf("round %d: the record does not hold the rotated CAs", round+1)
		}
		assertDiskMatchesRecord(t, dd, rec)
		checkServerLeaves(t, s, rec)
		assertLeavesChainToRecord(t, s, rec)
		assertServesNewCA(t, s)
		if v := metricValue(t, metrics, "kpki_restart_required"); v != "0" {
			t.Errorf("round %d: kpki_restart_required %q after the restart, want 0", round+1, v)
		}
	}
	if midApply == 0 {
		t.Error("no kill landed inside the live apply; the test proved nothing")
	}
	s.Stop(t)
}

// waitLiveApplied waits until s has applied the record rec live (liveApplied): every file
// the apply writes is written by then; only an etcd restart may still follow.
func waitLiveApplied(t *testing.T, s *kpkiServer, rec bootstrapRecord) {
	t.Helper()
	if !waitUntil(t, 90*time.Second, func() (bool, string) { return liveApplied(s, rec) }) {
		t.Fatalf("the server did not apply the new bootstrap data live:\n%s", s.tail(40))
	}
}

// waitServiceKeyApplied waits until s's service.key is the record's and service.current.key
// its first key, written by the live apply.
func waitServiceKeyApplied(t *testing.T, s *kpkiServer, rec bootstrapRecord) {
	t.Helper()
	tls := s.TLSDir()
	ok := waitUntil(t, 60*time.Second, func() (bool, string) {
		data, err := os.ReadFile(filepath.Join(tls, "service.key"))
		if err != nil || !bytes.Equal(data, rec["ServiceKey"].Content) {
			return false, "service.key is not the record's yet"
		}
		keys, err := parseKeysPEM(data)
		if err != nil || len(keys) == 0 {
			return false, fmt.Sprintf("service.key: %v", err)
		}
		cur, err := os.ReadFile(filepath.Join(tls, "service.current.key"))
		if err != nil {
			return false, err.Error()
		}
		ck, err := parseKeysPEM(cur)
		if err != nil || len(ck) != 1 || !keyMatches(ck[0].signer.Public(), keys[0].signer) {
			return false, "service.current.key is not the new first key yet"
		}
		return true, ""
	})
	if !ok {
		t.Fatalf("the server did not apply the new service.key live:\n%s", s.tail(40))
	}
}

// liveApplyChange reports whether a treeDiff entry is a file a live apply rewrites: the
// server's tls and cred files and its token files.
func liveApplyChange(d string) bool {
	for _, p := range []string{"changed server/tls/", "changed server/cred/", "changed server/token ", "changed server/agent-token ", "changed server/node-token "} {
		if strings.HasPrefix(d, p) {
			return true
		}
	}
	return false
}

// TestLiveCARotationWriteFailure: a file the live apply must write cannot be written (the
// admin kubeconfig's path is a directory). The apply fails: the error is logged,
// kpki_restart_required is 1, the CA files are the new ones and every leaf still matches
// its key. Once the path is writable again, the bounded retry finishes the apply and the
// gauge goes back to 0, without a restart.
func TestLiveCARotationWriteFailure(t *testing.T) {
	t.Parallel()
	dd := filepath.Join(t.TempDir(), "data")
	metrics := "127.0.0.1:" + strconv.Itoa(freePort(t, "127.0.0.1"))
	s := startServer(t, dd, "--metrics-address", metrics)
	s.WaitReady(t)
	kubeconfig := filepath.Join(dd, "server", "cred", "admin.kubeconfig")
	if err := os.Remove(kubeconfig); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(kubeconfig, "blocker"), 0o700); err != nil {
		t.Fatal(err)
	}
	kpkiOK(t, "certificate", "cross-sign-ca", "--data-dir", dd)
	assertRotateCASaved(t, rotateCA(t, s, filepath.Join(dd, "server", "rotate-ca")))
	rec, _ := currentRecord(t, s)
	if !waitUntil(t, 60*time.Second, func() (bool, string) {
		return metricValue(t, metrics, "kpki_restart_required") == "1", "kpki_restart_required is not 1"
	}) {
		t.Fatalf("the failed apply did not set kpki_restart_required:\n%s", s.tail(30))
	}
	if !strings.Contains(s.Stderr(), "applying the new bootstrap data failed") {
		t.Errorf("the failure is not logged as an error:\n%s", s.tail(30))
	}
	if v := metricValue(t, metrics, `kpki_bootstrap_live_apply_total{result="failed"}`); v == "" || v == "0" {
		t.Errorf("failed applies counted %q", v)
	}
	// Every file is old or new: the CA files are the record's, each leaf matches its key.
	for _, ca := range caFiles {
		if !bytes.Equal(readFile(t, filepath.Join(s.TLSDir(), ca+".crt")), rec[caRecordField[ca+".crt"]].Content) {
			t.Errorf("%s.crt is not the record's after the failed apply", ca)
		}
	}
	for _, l := range serverLeaves(s.IP) {
		base := filepath.Join(s.TLSDir(), l.file)
		if !keyMatches(readCerts(t, base+".crt")[0].PublicKey, readKeys(t, base+".key")[0].signer) {
			t.Errorf("%s.crt does not match its key after the failed apply", base)
		}
	}

	if err := os.RemoveAll(kubeconfig); err != nil {
		t.Fatal(err)
	}
	if !waitUntil(t, 90*time.Second, func() (bool, string) { return liveDone(t, s, metrics, rec) }) {
		t.Fatalf("the retry did not finish the apply:\n%s", s.tail(30))
	}
	if v := metricValue(t, metrics, "kpki_restart_required"); v != "0" {
		t.Errorf("kpki_restart_required %q after the retry succeeded, want 0", v)
	}
	if _, err := os.Stat(kubeconfig); err != nil {
		t.Errorf("admin.kubeconfig was not written by the retry: %v", err)
	}
	assertDiskMatchesRecord(t, dd, rec)
	checkServerLeaves(t, s, rec)
	s.Stop(t)
}

// assertTrustedByPreviousRoots checks the continuous chain of trust of a cross-signed
// rotation: `openssl verify`, trusting only the previous root of each leaf's CA
// (previousRoots, by CA file name), accepts every leaf of s through the cross-signed new root.
func assertTrustedByPreviousRoots(t *testing.T, s *kpkiServer, previousRoots map[string]*x509.Certificate) {
	t.Helper()
	dir := t.TempDir()
	for i, l := range serverLeaves(s.IP) {
		crt := filepath.Join(s.TLSDir(), l.file+".crt")
		certs := readCerts(t, crt)
		var untrusted []*x509.Certificate
		for _, c := range certs[1:] {
			if !selfSigned(c) {
				untrusted = append(untrusted, c)
			}
		}
		for _, purpose := range leafPurposes(l) {
			opensslVerifyWith(t, filepath.Join(dir, strconv.Itoa(i)+"-"+purpose), crt, certs[0], []*x509.Certificate{previousRoots[l.ca]}, untrusted, purpose)
		}
	}
}
