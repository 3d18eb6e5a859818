package api

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// wireTokens are the strings of the wire protocol that only this package may spell:
// the paths (and the prefix of the authenticated ones), the headers and the content
// types. Paths match case-sensitively, headers and types case-insensitively.
var (
	wirePaths = []string{
		PathCACerts, PathPing, PathReadyz, PathServerCA, PathClientCA, PathServerBootstrap,
		PathEtcdMembers, PathRotateCA, PathTokenRotate, strings.TrimSuffix(PathPrefix, "/"),
	}
	wireWords = []string{
		HeaderNodeName, HeaderNodePassword, HeaderNodeIP, HeaderContentType, HeaderRetryAfter,
		HeaderWWWAuthenticate, BasicChallenge,
		ContentTypeCSR, ContentTypeJSON, ContentTypePEM, ContentTypeText,
	}
)

// pathChar reports whether c can continue a URL path segment.
func pathChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~", c) >= 0
}

// wireLiteral returns the wire token s spells, or "".
func wireLiteral(s string) string {
	for _, p := range wirePaths {
		for i := 0; ; {
			j := strings.Index(s[i:], p)
			if j < 0 {
				break
			}
			end := i + j + len(p)
			if end == len(s) || !pathChar(s[end]) {
				return p
			}
			i = end
		}
	}
	lower := strings.ToLower(s)
	for _, w := range wireWords {
		if strings.Contains(lower, strings.ToLower(w)) {
			return w
		}
	}
	return ""
}

// wireViolations parses the Go source src (named name) and describes every string
// literal spelling a wire token, every struct tag naming the "error" field of an error
// body and every map literal with an "error" key: what ErrorBody is for.
func wireViolations(fset *token.FileSet, f *ast.File) []string {
	var out []string
	report := func(n ast.Node, what string) {
		out = append(out, fset.Position(n.Pos()).String()+": "+what)
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.Field:
			if n.Tag != nil {
				if tag, err := strconv.Unquote(n.Tag.Value); err == nil && (strings.Contains(tag, `json:"error"`) || strings.Contains(tag, `json:"error,`)) {
					report(n.Tag, "an error-body type of its own (use api.ErrorBody)")
				}
			}
		case *ast.CompositeLit:
			if _, ok := n.Type.(*ast.MapType); ok {
				for _, e := range n.Elts {
					if kv, ok := e.(*ast.KeyValueExpr); ok {
						if k, ok := kv.Key.(*ast.BasicLit); ok && k.Kind == token.STRING && k.Value == `"error"` {
							report(n, `a map with an "error" key as an error body (use api.ErrorBody)`)
						}
					}
				}
			}
		case *ast.BasicLit:
			if n.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(n.Value)
			if err != nil {
				return true
			}
			if w := wireLiteral(s); w != "" {
				report(n, "literal "+strconv.Quote(w)+" (use the internal/api constant)")
			}
		}
		return true
	})
	return out
}

// moduleRoot is the directory of the go.mod above the working directory.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(b), "module github.com/kpki/kpki\n") {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod of github.com/kpki/kpki above the working directory")
		}
		dir = parent
	}
}

func TestWireLiteralDetection(t *testing.T) {
	src := `package p

type body struct {
	Msg string ` + "`json:\"error\"`" + `
}

var (
	a = "GET /cacerts"
	b = base + "/v1-kpki/client-kubelet.crt"
	c = "kpki-node-password"
	d = map[string]any{"error": "x", "id": "y"}
	e = "application/x-pem-file"
	f = "/readyz"
	g = fmt.Sprintf("%s/ping", base)
	h = ` + "`Basic realm=\"kpki\"`" + `
)

var fine = []string{"/pingpong", "server/cacerts-old", "error", "/metrics", "/v1-kpkix"}

func g() { slog.Warn("failed", "error", err) }
`
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "p.go", src, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	got := wireViolations(fset, f)
	wantLines := []string{"p.go:4:", "p.go:8:", "p.go:9:", "p.go:10:", "p.go:11:", "p.go:12:", "p.go:13:", "p.go:14:", "p.go:15:"}
	if len(got) != len(wantLines) {
		t.Fatalf("%d findings, want %d:\n%s", len(got), len(wantLines), strings.Join(got, "\n"))
	}
	for i, w := range wantLines {
		if !strings.HasPrefix(got[i], w) {
			t.Errorf("finding %d is %q, want one at %s", i, got[i], w)
		}
	}
}

// walkSource parses every non-test Go file of the repository (testdata, vendor and
// hidden directories left out) and hands it to fn with its path relative to the root, in
// slash form. It fails the test unless the files in mustScan were among them.
func walkSource(t *testing.T, fn func(fset *token.FileSet, rel string, f *ast.File), mustScan ...string) {
	t.Helper()
	root := moduleRoot(t)
	fset := token.NewFileSet()
	scanned := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == "testdata" || d.Name() == "vendor" || (strings.HasPrefix(d.Name(), ".") && path != root) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		f, err := parser.ParseFile(fset, rel, src, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		scanned[rel] = true
		fn(fset, rel, f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range mustScan {
		if !scanned[f] {
			t.Errorf("%s was not scanned", f)
		}
	}
}

// TestNoWireLiteralsOutsideAPI fails when a non-test Go file of the repository outside
// internal/api spells a supervisor path, header or content type, or builds an error
// body of its own: the wire protocol has one definition.
func TestNoWireLiteralsOutsideAPI(t *testing.T) {
	var found []string
	walkSource(t, func(fset *token.FileSet, rel string, f *ast.File) {
		if !strings.HasPrefix(rel, "internal/api/") {
			found = append(found, wireViolations(fset, f)...)
		}
	}, "internal/supervisor/supervisor.go", "internal/server/handlers/node.go", "internal/agent/client.go", "internal/load/run.go", "cmd/kpki/main.go")
	sort.Strings(found)
	for _, f := range found {
		t.Error(f)
	}
}

// defaultViolations describes the places of f that spell a default of kpki defined
// elsewhere: the data dir and config file paths (internal/datadir), the supervisor port
// (this package) and the renewal window (internal/certs). pkg is f's directory.
func defaultViolations(fset *token.FileSet, pkg string, f *ast.File) []string {
	var out []string
	report := func(n ast.Node, what string) {
		out = append(out, fset.Position(n.Pos()).String()+": "+what)
	}
	isPort := func(s string) bool {
		for i := 0; ; {
			j := strings.Index(s[i:], "9345")
			if j < 0 {
				return false
			}
			start, end := i+j, i+j+4
			if (start == 0 || s[start-1] < '0' || s[start-1] > '9') && (end == len(s) || s[end] < '0' || s[end] > '9') {
				return true
			}
			i = end
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.BasicLit:
			v := n.Value
			if n.Kind == token.STRING {
				if u, err := strconv.Unquote(v); err == nil {
					v = u
				}
			}
			switch {
			case pkg != "internal/datadir" && (strings.Contains(v, "/var/lib/rancher") || strings.Contains(v, "/etc/rancher")):
				report(n, "a default path (use datadir.DefaultRoot or datadir.DefaultConfigFile)")
			case pkg != "internal/api" && (n.Kind == token.STRING || n.Kind == token.INT) && isPort(v):
				report(n, "the supervisor port (use api.DefaultSupervisorPort)")
			}
		case *ast.KeyValueExpr:
			if k, ok := n.Key.(*ast.Ident); ok && k.Name == "RenewBeforeDays" && pkg != "internal/certs" {
				if lit, ok := n.Value.(*ast.BasicLit); ok && lit.Kind == token.INT {
					report(n, "a renewal window of its own (use certs.DefaultRenewBeforeDays)")
				}
			}
		case *ast.CallExpr:
			named, number := false, ast.Node(nil)
			for _, a := range n.Args {
				if lit, ok := a.(*ast.BasicLit); ok {
					named = named || lit.Kind == token.STRING && lit.Value == `"renew-before-days"`
					if lit.Kind == token.INT {
						number = lit
					}
				}
			}
			if named && number != nil {
				report(number, "a --renew-before-days default of its own (use certs.DefaultRenewBeforeDays)")
			}
		}
		return true
	})
	return out
}

func TestDefaultDetection(t *testing.T) {
	src := `package p

var (
	a = "/var/lib/rancher/kpki"
	b = "see /etc/rancher/kpki/config.yaml"
	c = "https://host:9345"
	d = 9345
	e = Config{RenewBeforeDays: 90}
)

func f() { fs.IntVar(&x, "renew-before-days", 30, "window") }

var fine = []string{"93450", "19345", "/var/lib/kpki", "127.0.0.1:9346"}
var alsoFine = Config{RenewBeforeDays: certs.DefaultRenewBeforeDays, Port: 93455}
`
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "p.go", src, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	got := defaultViolations(fset, "internal/p", f)
	wantLines := []string{"p.go:4:", "p.go:5:", "p.go:6:", "p.go:7:", "p.go:8:", "p.go:11:"}
	if len(got) != len(wantLines) {
		t.Fatalf("%d findings, want %d:\n%s", len(got), len(wantLines), strings.Join(got, "\n"))
	}
	for i, w := range wantLines {
		if !strings.HasPrefix(got[i], w) {
			t.Errorf("finding %d is %q, want one at %s", i, got[i], w)
		}
	}
	if got := defaultViolations(fset, "internal/datadir", f); len(got) != 4 {
		t.Errorf("in internal/datadir: %d findings, want the 4 that are not paths:\n%s", len(got), strings.Join(got, "\n"))
	}
}

// TestDefaultsDefinedOnce fails when a non-test Go file of the repository spells the data
// dir, the config file path, the supervisor port or the renewal window outside the one
// place each is defined.
func TestDefaultsDefinedOnce(t *testing.T) {
	var found []string
	walkSource(t, func(fset *token.FileSet, rel string, f *ast.File) {
		found = append(found, defaultViolations(fset, path.Dir(rel), f)...)
	}, "internal/datadir/layout.go", "internal/server/config.go", "internal/agent/agent.go", "internal/cli/check.go", "internal/cli/cagen.go")
	sort.Strings(found)
	for _, f := range found {
		t.Error(f)
	}
}
