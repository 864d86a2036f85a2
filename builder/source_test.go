package builder

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnfaas/kiln/proto/wire"
)

// These tests run the real compilers (go, musl-gcc) and then the programs
// they built, as plain processes.

func writeFiles(t *testing.T, dir string, files map[string]string) string {
	t.Helper()
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func buildDir(t *testing.T, dir string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var steps []string
	elf, err := BuildSource(ctx, dir, func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatalf("BuildSource(%s): %v", dir, err)
	}
	if len(steps) == 0 {
		t.Errorf("BuildSource(%s) reported no progress", dir)
	}
	return elf
}

// runELF runs a built program natively with stdin and returns its stdout.
func runELF(t *testing.T, elf, stdin []byte) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fn")
	if err := os.WriteFile(p, elf, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(p)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("running the built program: %v\n%s", err, stderr.String())
	}
	return out
}

// serveOnce sends one request to a built serve function and returns its
// response.
func serveOnce(t *testing.T, elf []byte, req *wire.Request) *wire.Response {
	t.Helper()
	var in bytes.Buffer
	if err := wire.WriteRequest(&in, req); err != nil {
		t.Fatal(err)
	}
	out := runELF(t, elf, in.Bytes())
	resp, err := wire.ReadResponse(bytes.NewReader(out), 0)
	if err != nil {
		t.Fatalf("reading the response: %v (output %q)", err, out)
	}
	return resp
}

func examplesDir(t *testing.T) string {
	t.Helper()
	d, err := filepath.Abs(filepath.Join("..", "examples"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestBuildSourceExamples(t *testing.T) {
	ex := examplesDir(t)
	post := func(body string) *wire.Request {
		return &wire.Request{ID: 1, Method: "POST", Path: "/", Body: []byte(body)}
	}
	sum := sha256.Sum256([]byte("abc"))
	cases := []struct {
		dir  string
		req  *wire.Request
		want string
	}{
		{"hello-go", post("kiln"), "hello, kiln"},
		{"hello-c", post("kiln"), "hello, kiln"},
		{"sha256", post("abc"), hex.EncodeToString(sum[:]) + "\n"},
		{"json-echo", post(`{"a":[1,2]}`), `{"a":[1,2],"echoed_by":"kiln json-echo"}` + "\n"},
		{"fanout", &wire.Request{ID: 1, Method: "GET", Path: "/", Query: "n=1000&workers=3"}, `"primes":168`},
	}
	for _, c := range cases {
		t.Run(c.dir, func(t *testing.T) {
			dir := filepath.Join(ex, c.dir)
			goMod, _ := os.ReadFile(filepath.Join(dir, "go.mod"))
			elf := buildDir(t, dir)
			after, _ := os.ReadFile(filepath.Join(dir, "go.mod"))
			if !bytes.Equal(goMod, after) {
				t.Fatal("the build changed the user's go.mod")
			}
			resp := serveOnce(t, elf, c.req)
			if resp.Status != 200 || !strings.Contains(string(resp.Body), c.want) {
				t.Fatalf("%d %q, want 200 with %q", resp.Status, resp.Body, c.want)
			}
		})
	}
	t.Run("wordcount-exec", func(t *testing.T) {
		elf := buildDir(t, filepath.Join(ex, "wordcount-exec"))
		if out := runELF(t, elf, []byte("one two\nthree\n")); string(out) != "2 3 14\n" {
			t.Fatalf("wordcount: %q, want \"2 3 14\\n\"", out)
		}
	})
}

// TestBuildSourceSDKWithoutCheckout is a user's module outside this
// repository: it requires the Kiln module with no replace, and the build
// must succeed with the module proxy switched off.
func TestBuildSourceSDKWithoutCheckout(t *testing.T) {
	t.Setenv("GOPROXY", "off")
	dir := writeFiles(t, t.TempDir(), map[string]string{
		"go.mod": "module example.com/mine\n\ngo 1.22\n\nrequire github.com/kilnfaas/kiln v0.0.0\n",
		"main.go": `package main

import (
	"context"

	"github.com/kilnfaas/kiln/sdk/go"
)

func main() {
	kiln.Serve(func(ctx context.Context, r *kiln.Request) (*kiln.Response, error) {
		return kiln.Text(202, r.Method+" "+r.Path+" "+r.Query.Get("q")), nil
	})
}
`,
	})
	elf := buildDir(t, dir)
	resp := serveOnce(t, elf, &wire.Request{ID: 9, Method: "PATCH", Path: "/x", Query: "q=yes"})
	if resp.Status != 202 || string(resp.Body) != "PATCH /x yes" || resp.ID != 9 {
		t.Fatalf("%+v", resp)
	}
}

// TestBuildSourceRelativeReplace: a replace to a sibling directory must
// still resolve when the module is built in a scratch copy.
func TestBuildSourceRelativeReplace(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"lib/go.mod":   "module example.com/lib\n\ngo 1.22\n",
		"lib/lib.go":   "package lib\n\nconst Greeting = \"from the sibling\"\n",
		"app/go.mod":   "module example.com/app\n\ngo 1.22\n\nrequire example.com/lib v0.0.0\n\nreplace example.com/lib => ../lib\n",
		"app/main.go":  "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/lib\"\n)\n\nfunc main() { fmt.Println(lib.Greeting) }\n",
		"app/.git/x":   "not copied",
		"app/README":   "copied",
		"app/sub/a.go": "package sub\n",
	})
	elf := buildDir(t, filepath.Join(root, "app"))
	if out := runELF(t, elf, nil); string(out) != "from the sibling\n" {
		t.Fatalf("output %q", out)
	}
}

func TestBuildSourceErrors(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name  string
		files map[string]string
		is    error
		says  []string
	}{
		{"go syntax error", map[string]string{
			"go.mod":  "module example.com/bad\n\ngo 1.22\n",
			"main.go": "package main\n\nfunc main() {\n\tx := \n}\n",
		}, ErrBuild, []string{"main.go:5:1", "syntax error"}},
		{"go type error", map[string]string{
			"go.mod":  "module example.com/bad\n\ngo 1.22\n",
			"main.go": "package main\n\nfunc main() {\n\tvar s string = 3\n\t_ = s\n}\n",
		}, ErrBuild, []string{"main.go:4:17", "cannot use 3"}},
		{"c syntax error", map[string]string{
			"main.c": "int main(void) {\n\treturn 0\n}\n",
		}, ErrBuild, []string{"main.c:2", "error"}},
		{"neither", map[string]string{"README.md": "hello\n", "x.py": "print(1)\n"}, ErrNoSource,
			[]string{"neither a go.mod", "*.c files"}},
		{"library package", map[string]string{
			"go.mod": "module example.com/lib\n\ngo 1.22\n",
			"lib.go": "package lib\n",
		}, ErrNoSource, []string{"package lib", "main package"}},
		{"go.mod without go files", map[string]string{"go.mod": "module example.com/empty\n"}, ErrNoSource,
			[]string{"no Go files"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := writeFiles(t, t.TempDir(), c.files)
			_, err := BuildSource(ctx, dir, nil)
			if !errors.Is(err, c.is) {
				t.Fatalf("err = %v, want %v", err, c.is)
			}
			for _, s := range c.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error does not say %q:\n%v", s, err)
				}
			}
			if strings.Contains(err.Error(), "kiln-build-") {
				t.Errorf("error leaks the scratch directory:\n%v", err)
			}
		})
	}
	t.Run("a file", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "prog")
		os.WriteFile(f, []byte("x"), 0o644)
		if _, err := BuildSource(ctx, f, nil); !errors.Is(err, ErrNoSource) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestBuildSourceCancelled(t *testing.T) {
	dir := writeFiles(t, t.TempDir(), map[string]string{
		"go.mod":  "module example.com/slow\n\ngo 1.22\n",
		"main.go": "package main\n\nfunc main() {}\n",
	})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := BuildSource(ctx, dir, nil)
	if !errors.Is(err, ErrBuild) || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want ErrBuild and context.Canceled", err)
	}
}

func TestDetect(t *testing.T) {
	goDir := writeFiles(t, t.TempDir(), map[string]string{"go.mod": "module m\n", "x.c": ""})
	cDir := writeFiles(t, t.TempDir(), map[string]string{"a.c": "", "a.h": ""})
	if l, err := Detect(goDir); l != LangGo || err != nil {
		t.Errorf("go.mod and a .c file: %q %v, want go (go.mod decides)", l, err)
	}
	if l, err := Detect(cDir); l != LangC || err != nil {
		t.Errorf("C dir: %q %v", l, err)
	}
	if _, err := Detect(filepath.Join(cDir, "missing")); !errors.Is(err, ErrNoSource) {
		t.Errorf("missing dir: %v", err)
	}
}

// TestBuildSourceScratchInside: a scratch directory inside the source tree
// (TMPDIR under the function's directory) is not copied into itself.
func TestBuildSourceScratchInside(t *testing.T) {
	dir := writeFiles(t, t.TempDir(), map[string]string{"main.c": "int main(void) { return 0; }\n"})
	scratch := filepath.Join(dir, "tmp")
	if err := os.Mkdir(scratch, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", scratch)
	elf := buildDir(t, dir)
	if err := CheckELF(elf, 0); err != nil {
		t.Fatal(err)
	}
}
