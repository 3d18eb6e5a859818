package api

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
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
func wireViolations(fset *token.FileSet, name string, src []byte) ([]string, error) {
	f, err := parser.ParseFile(fset, name, src, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
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
	return out, nil
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
	got, err := wireViolations(token.NewFileSet(), "p.go", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
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

// TestNoWireLiteralsOutsideAPI fails when a non-test Go file of the repository outside
// internal/api spells a supervisor path, header or content type, or builds an error
// body of its own: the wire protocol has one definition.
func TestNoWireLiteralsOutsideAPI(t *testing.T) {
	root := moduleRoot(t)
	self := filepath.Join(root, "internal", "api")
	fset := token.NewFileSet()
	var found []string
	scanned := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path == self || d.Name() == "testdata" || d.Name() == "vendor" || (strings.HasPrefix(d.Name(), ".") && path != root) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		scanned[filepath.ToSlash(rel)] = true
		v, err := wireViolations(fset, rel, src)
		if err != nil {
			return err
		}
		found = append(found, v...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The walk reached the packages that speak the protocol.
	for _, f := range []string{"internal/supervisor/supervisor.go", "internal/server/agentapi.go", "internal/agent/client.go", "internal/load/run.go", "cmd/kpki/main.go"} {
		if !scanned[f] {
			t.Errorf("%s was not scanned", f)
		}
	}
	sort.Strings(found)
	for _, f := range found {
		t.Error(f)
	}
}
