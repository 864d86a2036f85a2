package sdk

import (
	"bytes"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestGoSDKImportsOnlyStd is the rule that lets the builder compile the Go
// SDK as a module with no requirements.
func TestGoSDKImportsOnlyStd(t *testing.T) {
	names, err := GoFiles()
	if err != nil || len(names) == 0 {
		t.Fatalf("GoFiles: %v %v", names, err)
	}
	fset := token.NewFileSet()
	for _, name := range names {
		src, _ := goFiles.ReadFile("go/" + name)
		f, err := parser.ParseFile(fset, name, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if first, _, _ := strings.Cut(path, "/"); strings.Contains(first, ".") {
				t.Errorf("sdk/go/%s imports %s: the Go SDK may import only the standard library", name, path)
			}
		}
	}
}

func TestWriteGoModule(t *testing.T) {
	dir := t.TempDir()
	if err := WriteGoModule(dir, "1.22"); err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil || string(mod) != "module github.com/kilnfaas/kiln\n\ngo 1.22\n" {
		t.Fatalf("go.mod %q %v", mod, err)
	}
	written, err := os.ReadDir(filepath.Join(dir, "sdk", "go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range written {
		if strings.HasSuffix(e.Name(), "_test.go") {
			t.Errorf("test file %s in the stub module", e.Name())
		}
		orig, err := os.ReadFile(filepath.Join("go", e.Name()))
		got, _ := os.ReadFile(filepath.Join(dir, "sdk", "go", e.Name()))
		if err != nil || !bytes.Equal(orig, got) {
			t.Errorf("%s differs from sdk/go/%s (%v)", e.Name(), e.Name(), err)
		}
	}
	if len(written) == 0 {
		t.Fatal("no SDK sources written")
	}
	if err := WriteCHeader(dir); err != nil {
		t.Fatal(err)
	}
	h, _ := os.ReadFile(filepath.Join(dir, "kiln.h"))
	orig, _ := os.ReadFile(filepath.Join("c", "kiln.h"))
	if !bytes.Equal(h, orig) || len(h) == 0 {
		t.Fatal("kiln.h differs from sdk/c/kiln.h")
	}
}
