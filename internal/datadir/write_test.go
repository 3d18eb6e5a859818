package datadir

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// oldTime is an mtime no write made by a test can produce.
var oldTime = time.Date(2020, time.January, 2, 3, 4, 5, 0, time.UTC)

func readString(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func perm(t *testing.T, p string) fs.FileMode {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func mtime(t *testing.T, p string) time.Time {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.ModTime()
}

// put writes a file the plain way, with the given mode and an old mtime.
func put(t *testing.T, p, data string, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, oldTime, oldTime); err != nil {
		t.Fatal(err)
	}
}

// leftovers lists the temp, pending and journal files under root.
func leftovers(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		n := d.Name()
		if strings.HasSuffix(n, ".kpki-tmp") || strings.HasSuffix(n, ".kpki-new") || strings.HasPrefix(n, ".kpki-pair-") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func assertNoLeftovers(t *testing.T, root string) {
	t.Helper()
	if l := leftovers(t, root); len(l) > 0 {
		t.Errorf("left behind: %q", l)
	}
}

func TestSuffixesMatchTestHelpers(t *testing.T) {
	if tmpSuffix != ".kpki-tmp" || pendingSuffix != ".kpki-new" || journalPrefix != ".kpki-pair-" {
		t.Fatalf("on-disk names changed (%q %q %q): update leftovers()", tmpSuffix, pendingSuffix, journalPrefix)
	}
}

func TestMkdirAll(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "a", "b", "c")
	if err := MkdirAll(dir); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"a", "a/b", "a/b/c"} {
		if got := perm(t, filepath.Join(root, d)); got != 0o700 {
			t.Errorf("%s: mode %o, want 700", d, got)
		}
	}
	if err := MkdirAll(dir); err != nil {
		t.Errorf("MkdirAll on an existing dir: %v", err)
	}
	file := filepath.Join(root, "file")
	put(t, file, "x", 0o600)
	if err := MkdirAll(filepath.Join(file, "sub")); err == nil || !strings.Contains(err.Error(), file) {
		t.Errorf("MkdirAll under a file: %v, want an error naming the path", err)
	}
}

func TestWriteFile(t *testing.T) {
	tests := []struct {
		name     string
		existing string // "" means no file
		oldMode  fs.FileMode
		data     string
		mode     fs.FileMode
		subdir   string
	}{
		{name: "new key file in new dirs", data: "key", mode: 0o600, subdir: "server/tls/etcd"},
		{name: "new public file", data: "ca", mode: 0o644},
		{name: "empty data", data: "", mode: 0o600},
		{name: "replace, mode tightened", existing: "old", oldMode: 0o644, data: "new", mode: 0o600},
		{name: "replace, mode loosened", existing: "old", oldMode: 0o600, data: "new", mode: 0o644},
		{name: "replace longer with shorter", existing: strings.Repeat("x", 4096), oldMode: 0o600, data: "y", mode: 0o600},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			p := filepath.Join(root, tc.subdir, "f")
			if tc.existing != "" {
				put(t, p, tc.existing, tc.oldMode)
			}
			if err := WriteFile(p, []byte(tc.data), tc.mode); err != nil {
				t.Fatal(err)
			}
			if got := readString(t, p); got != tc.data {
				t.Errorf("content %q, want %q", got, tc.data)
			}
			if got := perm(t, p); got != tc.mode {
				t.Errorf("mode %o, want %o", got, tc.mode)
			}
			if tc.subdir != "" {
				for d := filepath.Dir(p); d != root; d = filepath.Dir(d) {
					if got := perm(t, d); got != 0o700 {
						t.Errorf("dir %s mode %o, want 700", d, got)
					}
				}
			}
			assertNoLeftovers(t, root)
		})
	}
}

func TestWriteFileIsAtomicReplace(t *testing.T) {
	root := t.TempDir()
	p := filepath.Join(root, "server-ca.crt")
	put(t, p, "old content", 0o600)
	before, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	reader, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()

	if err := WriteFile(p, []byte("new content"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A reader that opened the file before sees the whole old file: it was replaced by
	// rename, not truncated and rewritten in place.
	old, err := io.ReadAll(reader)
	if err != nil {
		t.Fatal(err)
	}
	if string(old) != "old content" {
		t.Errorf("open reader saw %q, want the old content", old)
	}
	after, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if os.SameFile(before, after) {
		t.Error("file rewritten in place, not replaced by a new one")
	}
	if got := readString(t, p); got != "new content" {
		t.Errorf("content %q", got)
	}
}

func TestWriteFileModeIgnoresUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := perm(t, p); got != 0o644 {
		t.Errorf("mode %o under umask 077, want 644", got)
	}
}

func TestWriteFileErrors(t *testing.T) {
	root := t.TempDir()
	file := filepath.Join(root, "file")
	put(t, file, "x", 0o600)
	dir := filepath.Join(root, "dir")
	if err := os.MkdirAll(filepath.Join(dir, "child"), 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
	}{
		{"parent is a file", filepath.Join(file, "x.crt")},
		{"target is a non-empty directory", dir},
	}
	for _, tc := range tests {
		err := WriteFile(tc.path, []byte("data"), 0o600)
		if err == nil {
			t.Errorf("%s: WriteFile succeeded", tc.name)
			continue
		}
		if !strings.Contains(err.Error(), tc.path) && !strings.Contains(err.Error(), filepath.Dir(tc.path)) {
			t.Errorf("%s: error %q names neither the path nor its directory", tc.name, err)
		}
	}
	assertNoLeftovers(t, root)
	if got := readString(t, file); got != "x" {
		t.Errorf("unrelated file changed to %q", got)
	}
}

func TestWriteIfChanged(t *testing.T) {
	tests := []struct {
		name        string
		existing    *string
		oldMode     fs.FileMode
		data        string
		mode        fs.FileMode
		wantWritten bool
	}{
		{name: "missing", data: "a", mode: 0o600, wantWritten: true},
		{name: "same content and mode", existing: ptr("a"), oldMode: 0o600, data: "a", mode: 0o600},
		{name: "same content, mode too open", existing: ptr("a"), oldMode: 0o644, data: "a", mode: 0o600},
		{name: "same content, mode too closed", existing: ptr("a"), oldMode: 0o600, data: "a", mode: 0o644},
		{name: "different content", existing: ptr("a"), oldMode: 0o600, data: "b", mode: 0o600, wantWritten: true},
		{name: "different content and mode", existing: ptr("a"), oldMode: 0o644, data: "b", mode: 0o600, wantWritten: true},
		{name: "empty file, empty data", existing: ptr(""), oldMode: 0o600, data: "", mode: 0o600},
		{name: "empty file, new data", existing: ptr(""), oldMode: 0o600, data: "x", mode: 0o600, wantWritten: true},
		{name: "prefix only", existing: ptr("abc"), oldMode: 0o600, data: "ab", mode: 0o600, wantWritten: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			p := filepath.Join(root, "sub", "f")
			var before os.FileInfo
			if tc.existing != nil {
				put(t, p, *tc.existing, tc.oldMode)
				var err error
				if before, err = os.Stat(p); err != nil {
					t.Fatal(err)
				}
			}
			written, err := WriteIfChanged(p, []byte(tc.data), tc.mode)
			if err != nil {
				t.Fatal(err)
			}
			if written != tc.wantWritten {
				t.Errorf("written = %v, want %v", written, tc.wantWritten)
			}
			if got := readString(t, p); got != tc.data {
				t.Errorf("content %q, want %q", got, tc.data)
			}
			if got := perm(t, p); got != tc.mode {
				t.Errorf("mode %o, want %o", got, tc.mode)
			}
			mt := mtime(t, p)
			if tc.wantWritten && mt.Equal(oldTime) {
				t.Error("mtime unchanged although the content was written")
			}
			if !tc.wantWritten {
				if !mt.Equal(oldTime) {
					t.Errorf("mtime changed to %s although nothing was written", mt)
				}
				after, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				if !os.SameFile(before, after) {
					t.Error("file replaced although its content was equal")
				}
			}
			assertNoLeftovers(t, root)
		})
	}

	t.Run("path is a directory", func(t *testing.T) {
		dir := t.TempDir()
		if _, err := WriteIfChanged(dir, []byte("x"), 0o600); err == nil {
			t.Error("WriteIfChanged on a directory succeeded")
		}
	})
}

func ptr(s string) *string { return &s }

func TestWriteFileWithTime(t *testing.T) {
	stamp := time.Date(2025, time.March, 4, 5, 6, 7, 0, time.UTC)
	tests := []struct {
		name     string
		existing bool
		mode     fs.FileMode
	}{
		{"new", false, 0o600},
		{"replace", true, 0o600},
		{"public mode", false, 0o644},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			p := filepath.Join(root, "tls", "server-ca.crt")
			if tc.existing {
				put(t, p, "old", 0o644)
			}
			if err := WriteFileWithTime(p, []byte("data"), tc.mode, stamp); err != nil {
				t.Fatal(err)
			}
			if got := readString(t, p); got != "data" {
				t.Errorf("content %q", got)
			}
			if got := perm(t, p); got != tc.mode {
				t.Errorf("mode %o, want %o", got, tc.mode)
			}
			if got := mtime(t, p); !got.Equal(stamp) {
				t.Errorf("mtime %s, want %s", got, stamp)
			}
			assertNoLeftovers(t, root)
		})
	}
}

func TestReadOptional(t *testing.T) {
	root := t.TempDir()
	full := filepath.Join(root, "full")
	empty := filepath.Join(root, "empty")
	put(t, full, "content", 0o600)
	put(t, empty, "", 0o600)
	tests := []struct {
		name    string
		path    string
		want    []byte
		wantNil bool
		wantErr bool
	}{
		{name: "missing", path: filepath.Join(root, "missing"), wantNil: true},
		{name: "missing dir", path: filepath.Join(root, "no", "such"), wantNil: true},
		{name: "content", path: full, want: []byte("content")},
		{name: "empty file is not missing", path: empty, want: []byte{}},
		{name: "directory", path: root, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadOptional(tc.path)
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), tc.path) {
					t.Errorf("err = %v, want one naming %s", err, tc.path)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantNil != (got == nil) {
				t.Errorf("ReadOptional = %#v, nil wanted: %v", got, tc.wantNil)
			}
			if !tc.wantNil && string(got) != string(tc.want) {
				t.Errorf("ReadOptional = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestExists(t *testing.T) {
	root := t.TempDir()
	file := filepath.Join(root, "f")
	put(t, file, "x", 0o600)
	dangling := filepath.Join(root, "link")
	if err := os.Symlink(filepath.Join(root, "nowhere"), dangling); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
		want bool
	}{
		{"missing", filepath.Join(root, "missing"), false},
		{"missing parent", filepath.Join(root, "a", "b"), false},
		{"file", file, true},
		{"directory", root, true},
		{"dangling symlink", dangling, true},
		{"under a file", filepath.Join(file, "x"), true},
	}
	for _, tc := range tests {
		if got := Exists(tc.path); got != tc.want {
			t.Errorf("%s: Exists = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestWriteGroup(t *testing.T) {
	stamp := time.Date(2024, time.December, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		existing map[string]string
		files    []File
	}{
		{name: "empty group", files: nil},
		{name: "new files in two dirs", files: []File{
			{Path: "tls/server-ca.key", Data: []byte("key"), Mode: 0o600},
			{Path: "tls/server-ca.crt", Data: []byte("crt"), Mode: 0o644, ModTime: stamp},
			{Path: "cred/passwd", Data: []byte("pw"), Mode: 0o600},
		}},
		{name: "replace existing", existing: map[string]string{"tls/a.key": "old key", "tls/a.crt": "old crt"}, files: []File{
			{Path: "tls/a.key", Data: []byte("new key"), Mode: 0o600},
			{Path: "tls/a.crt", Data: []byte("new crt"), Mode: 0o600},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for p, data := range tc.existing {
				put(t, filepath.Join(root, p), data, 0o644)
			}
			files := slices.Clone(tc.files)
			for i := range files {
				files[i].Path = filepath.Join(root, files[i].Path)
			}
			if err := WriteGroup(files); err != nil {
				t.Fatal(err)
			}
			for _, f := range files {
				if got := readString(t, f.Path); got != string(f.Data) {
					t.Errorf("%s: content %q, want %q", f.Path, got, f.Data)
				}
				if got := perm(t, f.Path); got != f.Mode {
					t.Errorf("%s: mode %o, want %o", f.Path, got, f.Mode)
				}
				if !f.ModTime.IsZero() {
					if got := mtime(t, f.Path); !got.Equal(f.ModTime) {
						t.Errorf("%s: mtime %s, want %s", f.Path, got, f.ModTime)
					}
				}
				if got := perm(t, filepath.Dir(f.Path)); tc.existing == nil && got != 0o700 {
					t.Errorf("%s: dir mode %o, want 700", filepath.Dir(f.Path), got)
				}
			}
			assertNoLeftovers(t, root)
		})
	}
}

func TestWritePair(t *testing.T) {
	tests := []struct {
		name            string
		oldCrt, oldKey  string // "" means missing
		newKey          []byte // nil: keep the key
		wantCrt, wantKy string
	}{
		{name: "new pair", newKey: []byte("key-2"), wantCrt: "crt-2", wantKy: "key-2"},
		{name: "replace both", oldCrt: "crt-1", oldKey: "key-1", newKey: []byte("key-2"), wantCrt: "crt-2", wantKy: "key-2"},
		{name: "certificate only on disk", oldCrt: "crt-1", newKey: []byte("key-2"), wantCrt: "crt-2", wantKy: "key-2"},
		{name: "key only on disk", oldKey: "key-1", newKey: []byte("key-2"), wantCrt: "crt-2", wantKy: "key-2"},
		{name: "renewal keeps the key", oldCrt: "crt-1", oldKey: "key-1", newKey: nil, wantCrt: "crt-2", wantKy: "key-1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			crt := filepath.Join(root, "server", "tls", "etcd", "client.crt")
			key := filepath.Join(root, "server", "tls", "etcd", "client.key")
			if tc.oldCrt != "" {
				put(t, crt, tc.oldCrt, 0o644)
			}
			if tc.oldKey != "" {
				put(t, key, tc.oldKey, 0o600)
			}
			if err := WritePair(crt, []byte("crt-2"), key, tc.newKey); err != nil {
				t.Fatal(err)
			}
			if got := readString(t, crt); got != tc.wantCrt {
				t.Errorf("certificate %q, want %q", got, tc.wantCrt)
			}
			if got := readString(t, key); got != tc.wantKy {
				t.Errorf("key %q, want %q", got, tc.wantKy)
			}
			for _, p := range []string{crt, key} {
				if got := perm(t, p); got != 0o600 {
					t.Errorf("%s: mode %o, want 600", filepath.Base(p), got)
				}
			}
			if tc.newKey == nil && !mtime(t, key).Equal(oldTime) {
				t.Error("key file touched although the key was kept")
			}
			if tc.oldCrt == "" && tc.oldKey == "" {
				for d := filepath.Dir(crt); d != root; d = filepath.Dir(d) {
					if got := perm(t, d); got != 0o700 {
						t.Errorf("dir %s mode %o, want 700", d, got)
					}
				}
			}
			assertNoLeftovers(t, root)
		})
	}
}

// crashState lays out, by hand, what WriteGroup leaves for the key+certificate group
// [key, crt] when the process dies after committing the journal: renamed says how many
// of the pending files were already renamed into place.
func crashState(t *testing.T, key, crt string, renamed int, withJournal bool) (journal string) {
	t.Helper()
	for i, f := range []struct{ path, data string }{{key, "new key"}, {crt, "new crt"}} {
		target := f.path + pendingSuffix
		if i < renamed {
			target = f.path
		}
		put(t, target, f.data, 0o600)
	}
	journal = filepath.Join(filepath.Dir(key), journalPrefix+filepath.Base(key))
	if withJournal {
		put(t, journal, key+"\n"+crt+"\n", 0o600)
	}
	return journal
}

func TestRecoverCompletesCommittedGroup(t *testing.T) {
	tests := []struct {
		name    string
		renamed int
		crtDir  string // the certificate's dir, relative to the key's
	}{
		{"crash before any rename", 0, "."},
		{"crash after the key was renamed", 1, "."},
		{"crash after both renames, before the journal was removed", 2, "."},
		{"group across two directories", 0, "other"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "server", "tls")
			key := filepath.Join(dir, "serving-kube-apiserver.key")
			crt := filepath.Join(dir, tc.crtDir, "serving-kube-apiserver.crt")
			put(t, key, "old key", 0o600)
			put(t, crt, "old crt", 0o600)
			journal := crashState(t, key, crt, tc.renamed, true)

			done, err := Recover(root)
			if err != nil {
				t.Fatalf("Recover: %v", err)
			}
			if !slices.Equal(done, []string{journal}) {
				t.Errorf("Recover completed %q, want [%q]", done, journal)
			}
			if got := readString(t, key); got != "new key" {
				t.Errorf("key %q, want the new key", got)
			}
			if got := readString(t, crt); got != "new crt" {
				t.Errorf("certificate %q, want the new certificate", got)
			}
			assertNoLeftovers(t, root)

			done, err = Recover(root)
			if err != nil || len(done) != 0 {
				t.Errorf("second Recover = %q, %v; want nothing to do", done, err)
			}
		})
	}
}

func TestRecoverDiscardsUncommittedWrites(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, key, crt string)
	}{
		{"pending files, no journal", func(t *testing.T, key, crt string) {
			crashState(t, key, crt, 0, false)
		}},
		{"only the key pending", func(t *testing.T, key, _ string) {
			put(t, key+pendingSuffix, "new key", 0o600)
		}},
		{"journal still a temp file", func(t *testing.T, key, crt string) {
			j := crashState(t, key, crt, 0, false)
			put(t, j+tmpSuffix, key+"\n"+crt+"\n", 0o600)
		}},
		{"WriteFile temp file", func(t *testing.T, _, crt string) {
			put(t, crt+tmpSuffix, "half a certi", 0o600)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "server", "tls")
			key := filepath.Join(dir, "client-admin.key")
			crt := filepath.Join(dir, "client-admin.crt")
			put(t, key, "old key", 0o600)
			put(t, crt, "old crt", 0o600)
			tc.setup(t, key, crt)
			if len(leftovers(t, root)) == 0 {
				t.Fatal("setup left nothing to recover")
			}

			done, err := Recover(root)
			if err != nil {
				t.Fatalf("Recover: %v", err)
			}
			if len(done) != 0 {
				t.Errorf("Recover completed %q, want nothing", done)
			}
			if got := readString(t, key); got != "old key" {
				t.Errorf("key %q, want the old key", got)
			}
			if got := readString(t, crt); got != "old crt" {
				t.Errorf("certificate %q, want the old certificate", got)
			}
			assertNoLeftovers(t, root)
		})
	}

	t.Run("pending file of a file that never existed", func(t *testing.T) {
		root := t.TempDir()
		p := filepath.Join(root, "server", "tls", "new.crt")
		put(t, p+pendingSuffix, "x", 0o600)
		if _, err := Recover(root); err != nil {
			t.Fatal(err)
		}
		if Exists(p) {
			t.Error("uncommitted pending file was put in place")
		}
		assertNoLeftovers(t, root)
	})
}

// TestRecoverAfterWriteGroupFailedMidway makes WriteGroup's own renames fail after it
// committed its journal, which leaves the disk as a crash at that instant would.
func TestRecoverAfterWriteGroupFailedMidway(t *testing.T) {
	tests := []struct {
		name     string
		obstacle int // index of the file whose rename fails
	}{
		{"first rename fails", 0},
		{"second rename fails", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "server", "tls")
			paths := []string{filepath.Join(dir, "x.key"), filepath.Join(dir, "x.crt")}
			for i, p := range paths {
				if i == tc.obstacle {
					if err := os.MkdirAll(p, 0o700); err != nil {
						t.Fatal(err)
					}
				} else {
					put(t, p, "old", 0o600)
				}
			}
			err := WriteGroup([]File{{Path: paths[0], Data: []byte("new 0"), Mode: 0o600}, {Path: paths[1], Data: []byte("new 1"), Mode: 0o600}})
			if err == nil {
				t.Fatal("WriteGroup succeeded over a directory")
			}
			journal := filepath.Join(dir, journalPrefix+"x.key")
			if !Exists(journal) {
				t.Fatalf("no committed journal after the failed rename; left: %q", leftovers(t, root))
			}
			if err := os.Remove(paths[tc.obstacle]); err != nil {
				t.Fatal(err)
			}

			done, err := Recover(root)
			if err != nil {
				t.Fatalf("Recover: %v", err)
			}
			if !slices.Equal(done, []string{journal}) {
				t.Errorf("Recover completed %q, want [%q]", done, journal)
			}
			for i, p := range paths {
				if got, want := readString(t, p), []string{"new 0", "new 1"}[i]; got != want {
					t.Errorf("%s = %q, want %q", filepath.Base(p), got, want)
				}
			}
			assertNoLeftovers(t, root)
		})
	}
}

func TestRecoverLeavesDatabaseAndLogsAlone(t *testing.T) {
	root := t.TempDir()
	keep := []string{
		filepath.Join(root, "server", "db", "etcd", "member", "wal", "0.wal.kpki-tmp"),
		filepath.Join(root, "server", "logs", "x.kpki-new"),
	}
	for _, p := range keep {
		put(t, p, "x", 0o600)
	}
	gone := filepath.Join(root, "server", "tls", "y.crt.kpki-tmp")
	put(t, gone, "x", 0o600)
	if _, err := Recover(root); err != nil {
		t.Fatal(err)
	}
	for _, p := range keep {
		if !Exists(p) {
			t.Errorf("%s removed", p)
		}
	}
	if Exists(gone) {
		t.Errorf("%s not removed", gone)
	}

	// The root itself is scanned even when it is called logs.
	logsRoot := filepath.Join(t.TempDir(), "logs")
	stray := filepath.Join(logsRoot, "z.kpki-tmp")
	put(t, stray, "x", 0o600)
	if _, err := Recover(logsRoot); err != nil {
		t.Fatal(err)
	}
	if Exists(stray) {
		t.Error("stray under a root named logs not removed")
	}
}

func TestRecoverEdgeCases(t *testing.T) {
	t.Run("missing root", func(t *testing.T) {
		done, err := Recover(filepath.Join(t.TempDir(), "nope"))
		if err != nil || len(done) != 0 {
			t.Errorf("Recover(missing) = %q, %v", done, err)
		}
	})
	t.Run("journal naming files already gone", func(t *testing.T) {
		root := t.TempDir()
		j := filepath.Join(root, journalPrefix+"a.key")
		put(t, j, filepath.Join(root, "a.key")+"\n", 0o600)
		done, err := Recover(root)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(done, []string{j}) {
			t.Errorf("completed %q", done)
		}
		if Exists(filepath.Join(root, "a.key")) {
			t.Error("a file appeared from nothing")
		}
		assertNoLeftovers(t, root)
	})
	t.Run("empty journal", func(t *testing.T) {
		root := t.TempDir()
		put(t, filepath.Join(root, journalPrefix+"b.key"), "", 0o600)
		if _, err := Recover(root); err != nil {
			t.Fatal(err)
		}
		assertNoLeftovers(t, root)
	})
	t.Run("ordinary files untouched", func(t *testing.T) {
		root := t.TempDir()
		p := filepath.Join(root, "server", "token")
		put(t, p, "K10", 0o600)
		if _, err := Recover(root); err != nil {
			t.Fatal(err)
		}
		if got := readString(t, p); got != "K10" || !mtime(t, p).Equal(oldTime) {
			t.Error("ordinary file changed")
		}
	})
	t.Run("journal whose rename cannot complete", func(t *testing.T) {
		root := t.TempDir()
		target := filepath.Join(root, "c.crt")
		if err := os.MkdirAll(filepath.Join(target, "child"), 0o700); err != nil {
			t.Fatal(err)
		}
		put(t, target+pendingSuffix, "x", 0o600)
		j := filepath.Join(root, journalPrefix+"c.crt")
		put(t, j, target+"\n", 0o600)
		_, err := Recover(root)
		if err == nil {
			t.Fatal("Recover succeeded although the journal could not be completed")
		}
		if !strings.Contains(err.Error(), target) {
			t.Errorf("error %q does not name %s", err, target)
		}
		if !Exists(j) || !Exists(target+pendingSuffix) {
			t.Error("a journal that could not be completed was discarded")
		}
	})
}

func TestTightenDirs(t *testing.T) {
	root := t.TempDir()
	if err := os.Chmod(root, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"tls/etcd", "cred", "db/etcd/member", "logs"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(root, "tls"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "tls", "x.key"), []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	changed, err := TightenDirs(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"tls", "tls/etcd", "cred"} {
		st, err := os.Stat(filepath.Join(root, d))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o700 {
			t.Errorf("%s mode %v, want 0700", d, st.Mode().Perm())
		}
	}
	for _, d := range []string{"db/etcd/member", "logs"} {
		st, _ := os.Stat(filepath.Join(root, d))
		if st.Mode().Perm() != 0o755 {
			t.Errorf("%s mode changed to %v; etcd's data and logs are left alone", d, st.Mode().Perm())
		}
	}
	if len(changed) != 3 {
		t.Errorf("changed %v, want tls, tls/etcd and cred", changed)
	}
	if again, _ := TightenDirs(root); len(again) != 0 {
		t.Errorf("second pass changed %v", again)
	}
}
