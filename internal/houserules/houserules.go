// Package houserules checks, as an ordinary `go test`, the rules of the
// house that a reviewer would otherwise have to remember (Pebble's habit):
// unsafe code lives in *_unsafe.go files and says why it is sound, no
// package runs code at init, the roles reach each other only through
// proto/, test helpers stay out of production code, and every package says
// what it is for.
//
// The checks read the source with go/parser; they build nothing and run
// nothing, so they are fast enough to run with every `go test ./...`.
// Check returns every violation in a tree, so the test can show them all at
// once and a test of the checks can feed it a tree with planted ones.
package houserules

import (
	"bufio"
	"fmt"
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
)

// A Violation is one broken rule at one place.
type Violation struct {
	Pos  string // file:line, relative to the tree's root
	Rule string // short name of the rule, e.g. "unsafe-file"
	Msg  string
}

func (v Violation) String() string { return v.Pos + ": [" + v.Rule + "] " + v.Msg }

// A Layer rule forbids packages under From, other than those under
// NotFrom, to import packages under To, other than those under NotTo.
// Patterns are import paths relative to the module: "x" is x alone, "x/..."
// is x and everything below it, "..." is every package.
type Layer struct {
	From, NotFrom []string
	To, NotTo     []string
	Why           string
	// TestsToo applies the rule to _test.go files as well; by default a
	// test may import what its package may not (an end-to-end test of the
	// gateway legitimately starts a scheduler).
	TestsToo bool
}

// Layers are Kiln's import rules. The three roles (gateway, scheduler,
// node-agent) talk only through the gRPC contracts in proto/, so each can
// run in its own process; the stores know nothing of the roles that use
// them; the unikernel knows nothing of the platform around it; test
// helpers never reach production code.
var Layers = []Layer{
	{
		From: []string{"gateway/..."}, To: []string{"scheduler/...", "node-agent/..."},
		Why: "the gateway reaches the scheduler and agents through proto/kiln/v1 only",
	},
	{
		From: []string{"scheduler/..."}, To: []string{"gateway/...", "node-agent/..."},
		Why: "the scheduler reaches gateways and agents through proto/kiln/v1 only",
	},
	{
		From: []string{"node-agent/..."}, To: []string{"gateway/...", "scheduler/..."},
		Why: "the node-agent reaches the scheduler through proto/kiln/v1 only",
	},
	{
		From: []string{"store/...", "builder/...", "proto/...", "sdk/...", "unikernel/...", "internal/boltfile/...", "internal/tracing/...", "internal/netpolicy/..."},
		To:   []string{"gateway/...", "scheduler/...", "node-agent/...", "cmd/..."},
		Why:  "stores, the builder, contracts, the SDK, the unikernel and shared plumbing are used by the roles, never the other way round",
	},
	{
		From: []string{"unikernel/..."}, To: []string{"store/...", "builder/...", "internal/tracing/..."},
		Why: "the VMM and guest know only the ABI; what surrounds them is the node-agent's business",
	},
	{
		From: []string{"proto/...", "sdk/..."}, To: []string{"..."}, NotTo: []string{"proto/...", "sdk/..."},
		Why: "contracts and the SDK stand alone: a function links the SDK, and every role links proto",
	},
	{
		From:    []string{"..."},
		To:      testHelpers,
		NotFrom: testHelpers,
		Why:     "test helpers are for _test.go files and other test helpers, never for code a user runs",
	},
	{
		From: []string{"..."}, NotFrom: append([]string{"cmd/..."}, testHelpers...), To: []string{"cmd/..."},
		Why: "cmd/ is the top: nothing below it imports it (tests and test helpers may, to run what the user runs)",
	},
}

// testHelpers are the packages that exist only for tests.
var testHelpers = []string{
	"internal/teststack/...", "internal/kvmtest/...", "internal/redistest/...", "internal/cctest/...",
	"store/registry/registrytest/...", "store/logstore/logstoretest/...", "store/slaledger/ledgertest/...",
	"internal/rolecert/rolecerttest/...",
}

// Check walks the Go module rooted at root (the directory holding go.mod)
// and returns every violation of the house rules, sorted by position.
// Directories named testdata, vendor or build, hidden ones, and nested
// modules (a directory with its own go.mod) are not part of the module and
// are skipped.
func Check(root string, layers []Layer) ([]Violation, error) {
	module, err := modulePath(filepath.Join(root, "go.mod"))
	if err != nil {
		return nil, err
	}
	pkgs, err := parseTree(root)
	if err != nil {
		return nil, err
	}
	var vs []Violation
	for _, p := range pkgs {
		vs = append(vs, checkDoc(p)...)
		for _, f := range p.files {
			vs = append(vs, checkUnsafe(f)...)
			vs = append(vs, checkInit(f)...)
			vs = append(vs, checkLayers(p.rel, f, module, layers)...)
		}
	}
	sort.Slice(vs, func(i, j int) bool {
		if vs[i].Pos != vs[j].Pos {
			return vs[i].Pos < vs[j].Pos
		}
		return vs[i].Rule < vs[j].Rule
	})
	return vs, nil
}

// pkg is the parsed files of one directory (one package and its tests).
type pkg struct {
	rel   string // directory relative to the module root, "/"-separated; "" for the root
	files []*file
}

type file struct {
	rel       string // path relative to the module root
	ast       *ast.File
	fset      *token.FileSet
	generated bool
	test      bool
}

func (f *file) pos(p token.Pos) string {
	return fmt.Sprintf("%s:%d", f.rel, f.fset.Position(p).Line)
}

func parseTree(root string) ([]*pkg, error) {
	byDir := map[string]*pkg{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			name := d.Name()
			if rel != "." && (name == "testdata" || name == "vendor" || name == "build" || name == "bin" ||
				name == "node_modules" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			if rel != "." {
				if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
					return filepath.SkipDir // another module
				}
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") {
			return nil
		}
		af, err := parser.ParseFile(fset, p, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		dir := path.Dir(rel)
		if dir == "." {
			dir = ""
		}
		pk := byDir[dir]
		if pk == nil {
			pk = &pkg{rel: dir}
			byDir[dir] = pk
		}
		pk.files = append(pk.files, &file{
			rel: rel, ast: af, fset: fset,
			generated: ast.IsGenerated(af),
			test:      strings.HasSuffix(p, "_test.go"),
		})
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []*pkg
	for _, p := range byDir {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].rel < out[j].rel })
	return out, nil
}

func modulePath(gomod string) (string, error) {
	f, err := os.Open(gomod)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(m), `"`), nil
		}
	}
	return "", fmt.Errorf("houserules: no module line in %s", gomod)
}

// checkDoc: every package says what it is for in a package doc comment. A
// package made only of tests (an end-to-end suite, the benchmarks) may say
// it in a test file; any other must say it where `go doc` looks.
func checkDoc(p *pkg) []Violation {
	var prod, all []*file
	for _, f := range p.files {
		if f.test && strings.HasSuffix(f.ast.Name.Name, "_test") {
			continue // the external test package documents nothing
		}
		all = append(all, f)
		if !f.test {
			prod = append(prod, f)
		}
	}
	look := prod
	if len(prod) == 0 {
		look = all
	}
	if len(look) == 0 {
		return nil
	}
	for _, f := range look {
		if f.ast.Doc != nil && strings.TrimSpace(f.ast.Doc.Text()) != "" {
			return nil
		}
	}
	where := p.rel
	if where == "" {
		where = "."
	}
	return []Violation{{
		Pos: where, Rule: "package-doc",
		Msg: fmt.Sprintf("package %s has no doc comment: write `// Package %s …` above the package clause of one file (a doc.go) saying what it provides",
			look[0].ast.Name.Name, look[0].ast.Name.Name),
	}}
}

// checkUnsafe: the unsafe package is imported only by files named
// *_unsafe.go (gVisor's habit, so a reviewer knows where to look), and each
// use of it carries a SAFETY: comment (Firecracker's habit) in the doc
// comment of its declaration or in a comment above it in the same
// declaration, at most safetyReach lines away.
func checkUnsafe(f *file) []Violation {
	if f.generated {
		return nil
	}
	name := ""
	for _, is := range f.ast.Imports {
		if p, _ := strconv.Unquote(is.Path.Value); p == "unsafe" {
			name = "unsafe"
			if is.Name != nil {
				name = is.Name.Name
			}
			break
		}
	}
	if name == "" {
		return nil
	}
	var vs []Violation
	base := path.Base(f.rel)
	if !strings.HasSuffix(base, "_unsafe.go") && !strings.HasSuffix(base, "_unsafe_test.go") {
		vs = append(vs, Violation{Pos: f.rel, Rule: "unsafe-file",
			Msg: "imports unsafe: move the code that needs it into a file named *_unsafe.go (or *_unsafe_test.go)"})
	}
	var safety []int // lines holding a comment with SAFETY:
	for _, cg := range f.ast.Comments {
		for _, c := range cg.List {
			if strings.Contains(c.Text, "SAFETY:") {
				safety = append(safety, f.fset.Position(c.End()).Line)
			}
		}
	}
	for _, d := range f.ast.Decls {
		start := f.fset.Position(d.Pos()).Line
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Doc != nil {
			start = f.fset.Position(fd.Doc.Pos()).Line
		} else if gd, ok := d.(*ast.GenDecl); ok && gd.Doc != nil {
			start = f.fset.Position(gd.Doc.Pos()).Line
		}
		docEnd := start
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Doc != nil {
			docEnd = f.fset.Position(fd.Doc.End()).Line
		}
		ast.Inspect(d, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if id, ok := sel.X.(*ast.Ident); !ok || id.Name != name {
				return true
			}
			if sel.Sel.Name == "Sizeof" || sel.Sel.Name == "Alignof" || sel.Sel.Name == "Offsetof" {
				return true // compile-time constants: nothing to justify
			}
			line := f.fset.Position(sel.Pos()).Line
			for _, s := range safety {
				if (s >= start && s <= docEnd) || (s >= start && s <= line && line-s <= safetyReach) {
					return true
				}
			}
			vs = append(vs, Violation{Pos: f.pos(sel.Pos()), Rule: "unsafe-safety",
				Msg: "use of unsafe." + sel.Sel.Name + " without a // SAFETY: comment saying why it is sound (in its function's doc or just above it)"})
			return true
		})
	}
	return vs
}

// safetyReach is how far above a use of unsafe its SAFETY: comment may be:
// close enough that a reader sees both at once.
const safetyReach = 12

// checkInit: no package runs code when it is imported. A func init, or a
// package-level `var _ = f()`, makes every binary that links the package do
// something nobody asked for (the VM worker hook once hid in one); generated
// code (protobuf registration) is exempt. Test files may use init.
func checkInit(f *file) []Violation {
	if f.generated || f.test {
		return nil
	}
	var vs []Violation
	for _, d := range f.ast.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			if d.Recv == nil && d.Name.Name == "init" {
				vs = append(vs, Violation{Pos: f.pos(d.Pos()), Rule: "init",
					Msg: "func init runs on import: make it an explicit call from main (or a constructor)"})
			}
		case *ast.GenDecl:
			if d.Tok != token.VAR {
				continue
			}
			for _, s := range d.Specs {
				vspec := s.(*ast.ValueSpec)
				if vspec.Type != nil {
					continue // `var _ Iface = (*T)(nil)`: a compile-time assertion, no call
				}
				for i, n := range vspec.Names {
					if n.Name != "_" || i >= len(vspec.Values) {
						continue
					}
					if _, call := vspec.Values[i].(*ast.CallExpr); call {
						vs = append(vs, Violation{Pos: f.pos(n.Pos()), Rule: "init",
							Msg: "`var _ = f()` runs f on import: make it an explicit call"})
					}
				}
			}
		}
	}
	return vs
}

func checkLayers(dir string, f *file, module string, layers []Layer) []Violation {
	var vs []Violation
	for _, is := range f.ast.Imports {
		p, _ := strconv.Unquote(is.Path.Value)
		var target string
		switch {
		case p == module:
			target = ""
		case strings.HasPrefix(p, module+"/"):
			target = strings.TrimPrefix(p, module+"/")
		default:
			continue
		}
		if target == dir {
			continue // an external test package importing its own package
		}
		for _, l := range layers {
			if f.test && !l.TestsToo {
				continue
			}
			if under(dir, l.From) && !under(dir, l.NotFrom) && under(target, l.To) && !under(target, l.NotTo) {
				vs = append(vs, Violation{Pos: f.pos(is.Pos()), Rule: "layering",
					Msg: fmt.Sprintf("%s imports %s: %s", orRoot(dir), target, l.Why)})
			}
		}
	}
	return vs
}

// under reports whether the package at rel matches one of the patterns:
// "x" is exactly x, "x/..." is x and everything below it, "..." is
// everything.
func under(rel string, patterns []string) bool {
	for _, pat := range patterns {
		if pat == "..." {
			return true
		}
		if base, ok := strings.CutSuffix(pat, "/..."); ok {
			if rel == base || strings.HasPrefix(rel, base+"/") {
				return true
			}
		} else if rel == pat {
			return true
		}
	}
	return false
}

func orRoot(dir string) string {
	if dir == "" {
		return "the module root"
	}
	return dir
}
